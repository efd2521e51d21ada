//! The process shell around the data plane: the command line ([`cli`]), host checks
//! ([`doctor`]) and the process lifecycle ([`process`]: start-up, signals, shutdown, exit
//! codes); [`docs`] renders the README's reference tables from the flags and the plugin
//! catalogue. Nothing on the request path imports from here; the shell builds the data
//! plane's settings and starts its workers.

pub mod cli;
pub mod docs;
pub mod doctor;
pub mod process;
