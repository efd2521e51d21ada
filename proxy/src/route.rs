//! Route: the request path, normalized, looked up in the gateway's router.
//!
//! The router matches bytes, so the path is first brought to its one normal form
//! ([`shardgate_core::path`]: escapes, merged slashes, dot segments, the encoded-slash
//! policy). The normal form is also what is forwarded, so the gateway and the upstream agree
//! on what was requested: `//admin/x` or `/%61dmin/x` cannot reach a public `/*` rule while
//! the upstream serves `/admin/x`.

pub use shardgate_core::path::normalize;
