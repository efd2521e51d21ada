//! shardgate-core: the domain model and everything on the hot path that is pure computation.
//!
//! Owns: entities and their validation ([`model`]), the plugin catalogue and typed plugin
//! settings ([`plugins`]), duration parsing ([`duration`]), the admin state machine
//! ([`state`]: one [`state::Mutation`] enum, one `apply`), the compiled immutable
//! [`snapshot::Snapshot`] that workers read, the [`router`] and the API [`keys`] table.
//!
//! Never does: any I/O, threads, sockets or files. Everything here is deterministic given
//! its inputs (time is passed in), which is what lets the admin thread replay a journal and
//! lets benchmarks measure the data structures in isolation.

pub mod balance;
pub mod duration;
pub mod http1;
pub mod keys;
pub mod model;
pub mod net;
pub mod path;
pub mod plugins;
pub mod ratelimit;
pub mod router;
pub mod snapshot;
pub mod state;
