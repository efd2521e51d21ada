//! shardgate-core: the domain model and everything on the hot path that is pure computation.
//!
//! Owns: entities, their validation and bounds ([`model`]), the plugin catalogue and typed
//! plugin settings ([`plugins`]), duration parsing ([`duration`]), the admin state machine
//! ([`state`]: one [`state::Mutation`] enum, one `apply`, and `mutations()` to regenerate
//! them), the compiled immutable [`snapshot::Snapshot`] that workers read, request-path
//! normalization ([`path`]), the [`router`], the API [`keys`] table, load balancing
//! ([`balance`]), HTTP/1.1 framing ([`http1`]), CIDR sets ([`net`]) and the cross-core rate
//! limiter ([`ratelimit`]), the id hasher of per-request maps ([`fxhash`]), what workers count for the usage export ([`usage`]), and the AI
//! gateway's model, stream codec, API facts, OpenAI ⇄ Anthropic translation, guardrails and
//! budgets ([`ai`]).
//!
//! Never does: any I/O, threads, sockets or files, and never chooses an HTTP status for the
//! gateway's own answers (it returns typed errors; `http1`'s parse errors carry the status
//! HTTP itself assigns them). Everything here is deterministic given its inputs (time is
//! passed in), which is what lets the admin thread replay a journal and lets benchmarks
//! measure the data structures in isolation.
//!
//! Lint policy: the workspace's (`unsafe_code` denied, clippy `all` + `unwrap_used`).

pub mod ai;
pub mod balance;
pub mod certs;
pub mod duration;
pub mod fxhash;
pub mod http1;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod net;
pub mod path;
pub mod plugins;
pub mod ratelimit;
pub mod router;
pub mod snapshot;
pub mod state;
pub mod usage;
