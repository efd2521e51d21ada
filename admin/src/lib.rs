//! shardgate-admin: the admin thread.
//!
//! Owns: the REST API ([`api`]: routes, the status-code contract, the one write path) served
//! by a small HTTP/1.1 server ([`http`]: connection loop and owned-request adapter over
//! `shardgate_core::http1`), JSON bodies checked for duplicate keys and depth
//! ([`strict_json`]), the durable [`store`] (journal + checkpoint), snapshot compilation after
//! each write and its [`broadcast`] to the workers, upstream name resolution ([`resolve`]),
//! active health checks ([`health`]), the development certificate ([`devcert`]), usage buckets, their export and the anomaly
//! detector ([`usage`]) and the admin thread's life cycle ([`server`]).
//!
//! Never does: forward client traffic. The admin thread is the only writer of configuration;
//! workers only ever see immutable snapshots it publishes.
//!
//! Lint policy: the workspace's (`unsafe_code` denied, clippy `all` + `unwrap_used`).

pub mod api;
pub mod broadcast;
pub mod devcert;
pub mod health;
pub mod http;
pub mod resolve;
pub mod server;
pub mod store;
pub mod strict_json;
pub mod usage;
