//! shardgate-admin: the admin thread.
//!
//! Owns: the REST API ([`api`], served by the small HTTP/1.1 server in [`http`], bodies
//! parsed by [`strict_json`]), the
//! durable [`store`] (journal + checkpoint), snapshot compilation after each write and its
//! [`broadcast`] to the workers, and the admin thread's life cycle ([`server`]).
//!
//! Never does: forward client traffic. The admin thread is the only writer of configuration;
//! workers only ever see immutable snapshots it publishes.

pub mod api;
pub mod broadcast;
pub mod health;
pub mod http;
pub mod resolve;
pub mod server;
pub mod store;
pub mod strict_json;
