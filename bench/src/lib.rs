//! shardgate-bench: benchmarks that compare against a baseline in the same run.
//!
//! * `benches/` — criterion micro-benchmarks of the hot-path data structures, each beside
//!   the naive alternative (router, key table, balancer, HTTP head parse, snapshot compile).
//! * `src/bin/admin_write.rs` — admin write-to-live latency through the real binary, with
//!   100 000 keys present.
//! * `src/bin/tls_load.rs` — the HTTPS load generator of `bench/run`'s TLS scenarios
//!   (keep-alive requests, or one full handshake per request), with [`tls`]'s certificates
//!   and client configuration.
//!
//! [`fixture`] builds realistic configurations (many rules, many keys) without going
//! through the API, so benchmarks start in milliseconds.

pub mod cli;
pub mod client;
pub mod cpu;
pub mod cpus;
pub mod fixture;
pub mod ready;
pub mod summary;
pub mod tls;
