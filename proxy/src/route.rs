//! Route: the request path, normalized, looked up in the gateway's router.
//!
//! The router matches bytes, so the path is first brought to its one normal form
//! ([`shardgate_core::path`]: escapes, merged slashes, dot segments, the encoded-slash
//! policy). The normal form is also what is forwarded, so the gateway and the upstream agree
//! on what was requested: `//admin/x` or `/%61dmin/x` cannot reach a public `/*` rule while
//! the upstream serves `/admin/x`.

use shardgate_core::http1::RequestHead;
use shardgate_core::path::{EncodedSlashes, NormalPath, PathError};
use shardgate_core::router::{Lookup, Method, Router};

/// The request path in normal form (routed and forwarded). An absolute-form target
/// without a path (`GET http://host HTTP/1.1`) means `/`.
pub fn normalize(raw: &str, policy: EncodedSlashes) -> Result<NormalPath<'_>, PathError> {
    let raw = if raw.is_empty() { "/" } else { raw };
    shardgate_core::path::normalize(raw, policy)
}

/// The rule `method` on `path` selects, header conditions read from the request.
pub fn lookup<'r>(
    router: &'r Router,
    method: Method,
    path: &NormalPath<'_>,
    head: &RequestHead,
    buf: &[u8],
) -> Lookup<'r> {
    router.lookup(method, &path.route, |name| {
        head.header(buf, name)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
}
