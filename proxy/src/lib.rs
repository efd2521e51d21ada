//! shardgate-proxy: the `shardgate` binary's library: CLI, process start-up and shutdown,
//! and the shard-per-core data plane.
//!
//! Owns (DESIGN.md §1): the command line ([`cli`]), the process lifecycle ([`process`]),
//! worker threads with one monoio runtime per core ([`worker`]), and the request flow,
//! one module per stage in order: [`accept`] → [`connection`] → … (the HTTP/1.1 server,
//! upstream client, plugins and per-core pools and limiter buckets land here next).
//! Graceful-shutdown primitives local to a worker live in [`shutdown`].
//!
//! Never does: persist anything (the admin crate owns the store), or block a worker on a
//! lock: workers share nothing on the hot path and learn about config changes only through
//! `shardgate_admin::broadcast`.
//!
//! Lint policy: the workspace's (`unsafe_code` denied, clippy `all` + `unwrap_used`).

// In the order a request meets them (STYLE.md §5).
pub mod accept;
pub mod auth;
pub mod connection;
pub mod forward;
pub mod pick;
pub mod plugins;
pub mod request;
pub mod resolve;
pub mod respond;
pub mod route;
pub mod tunnel;

// What the request flow stands on.
pub mod buffer;
pub mod plane;
pub mod pool;
pub mod settings;
pub mod shutdown;
pub mod worker;

// The process around it: CLI, host checks, start-up and shutdown.
pub mod shell;
