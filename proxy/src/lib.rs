//! shardgate-proxy: the `shardgate` binary's library: the shard-per-core data plane and the
//! process shell around it.
//!
//! Owns (DESIGN.md §1): worker threads with one monoio runtime per core ([`worker`]), the
//! HTTP/1.1 server and upstream client, plugin execution, per-core connection pools and
//! rate-limit buckets, graceful shutdown; and the process shell ([`shell`]: CLI, `doctor`,
//! start-up, signals, exit codes).
//!
//! Never does: persist anything (the admin crate owns the store), or block a worker on a
//! lock: workers share nothing on the hot path and learn about config changes only through
//! `shardgate_admin::broadcast`. Never imports a module that imports it back:
//! `proxy/tests/module_graph.rs` fails on a cycle.
//!
//! Lint policy: the workspace's (`unsafe_code` denied, clippy `all` + `unwrap_used`).
//!
//! The modules below are in the order a request meets them (STYLE.md §5); the comment
//! lines keep rustfmt from sorting them.

// The process: CLI, host checks, start-up and shutdown; starts the workers.
pub mod shell;
// One thread per core: its runtime, listener, snapshot pick-up and pool sweeps.
pub mod worker;
// The accept loop: one task per client connection.
pub mod accept;
// One client connection: read a head, hand it on, repeat while keep-alive allows.
pub mod connection;
// One request: the table of contents of the stages below.
pub mod request;
// Host → gateway.
pub mod resolve;
// The API key.
pub mod auth;
// The plugin chain's stages.
pub mod plugins;
// The path in normal form, looked up in the gateway's router.
pub mod route;
// Service, upstream and target.
pub mod pick;
// The request as the upstream receives it.
pub mod rewrite;
// Attempts, retries and fallbacks; the request body upstream.
pub mod forward;
// The retry policy, as both upstream protocols apply it.
pub mod retry;
// AI services: the provider APIs, translation, metering, guardrails (issue 15).
pub mod ai;
pub mod ai_call;
pub mod ai_stream;
// The response to the client: relayed, or the gateway's own.
pub mod respond;
// What each request leaves behind: metrics, request ids, the access log.
pub mod access_log;
pub mod observe;
// After a 101: a byte pipe both ways.
pub mod tunnel;

// What the stages stand on: the types one exchange shares, the gateway's own answers,
// bytes on the wire, timed socket I/O, one worker's state and its parts.
pub mod exchange;
// (refusals: every status the gateway answers itself, mapped in one place)
pub mod refusal;
// (bytes on the wire)
pub mod wire;
// (socket I/O bounded in time, by per-connection deadlines on a per-worker wheel)
pub mod deadline;
pub mod timed;
#[allow(unsafe_code)]
pub mod vectored;
// (TLS to upstreams: the client configuration and the upstream connection type)
pub mod tls;
// (the client's stream, plain or TLS, and the listener's TLS configuration)
pub mod downstream;
// (HTTP/2: a client connection, its streams as one-request clients of the flow above, their
// bytes, and HTTP/2 upstreams)
pub mod h2io;
#[allow(unsafe_code)]
mod h2rent;
pub mod h2server;
pub mod h2stream;
pub mod h2upstream;
// (a spawned task's panic, contained)
pub mod unwind;
// (one worker's state, its snapshot and clock)
pub mod buffer;
pub mod clock;
pub mod plane;
pub mod pool;
pub mod settings;
pub mod shutdown;
