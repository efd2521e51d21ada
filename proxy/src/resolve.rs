//! Resolve: which gateway a request is for, from its Host (or absolute-form authority):
//! `<subdomain>.<base-domain>[:port]`, compared case-insensitively.

use std::sync::Arc;

use shardgate_core::snapshot::{CompiledGateway, Snapshot};

/// The subdomain label of `authority` under `base_domain`, lowercased into `scratch`.
/// `None` when the host is not exactly one label under the base domain.
pub fn subdomain<'s>(
    authority: &[u8],
    base_domain: &str,
    scratch: &'s mut [u8; 63],
) -> Option<&'s str> {
    // Strip the port; an IPv6 literal is never one of our names.
    if authority.first() == Some(&b'[') {
        return None;
    }
    let host = match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => &authority[..colon],
        None => authority,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    let base = base_domain.as_bytes();
    if host.len() <= base.len() + 1 {
        return None;
    }
    let (label, rest) = host.split_at(host.len() - base.len() - 1);
    if rest[0] != b'.'
        || !rest[1..].eq_ignore_ascii_case(base)
        || label.len() > 63
        || label.contains(&b'.')
    {
        return None;
    }
    let out = &mut scratch[..label.len()];
    for (dst, src) in out.iter_mut().zip(label) {
        *dst = src.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// The gateway for `authority`, if any.
pub fn gateway<'a>(
    snapshot: &'a Snapshot,
    authority: Option<&[u8]>,
    base_domain: &str,
) -> Option<&'a Arc<CompiledGateway>> {
    let mut scratch = [0u8; 63];
    let sub = subdomain(authority?, base_domain, &mut scratch)?;
    snapshot.gateway(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(authority: &str) -> Option<String> {
        let mut scratch = [0u8; 63];
        subdomain(authority.as_bytes(), "localhost", &mut scratch).map(str::to_owned)
    }

    #[test]
    fn host_with_or_without_port_and_any_case_resolves_to_the_label() {
        assert_eq!(sub("api.localhost:8081").as_deref(), Some("api"));
        assert_eq!(sub("API.LocalHost").as_deref(), Some("api"));
        assert_eq!(sub("api.localhost.").as_deref(), Some("api"));
    }

    #[test]
    fn other_hosts_do_not_resolve() {
        for host in [
            "localhost",
            "api.example.com",
            "a.api.localhost",
            ".localhost",
            "[::1]:8081",
            "apilocalhost",
            "127.0.0.1:8081",
        ] {
            assert_eq!(sub(host), None, "{host}");
        }
    }
}
