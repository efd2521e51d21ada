//! `ip_restriction`: allow and deny lists of IP networks.

use std::net::IpAddr;

use serde::Deserialize;

use super::{PluginDef, Rejection, SettingDoc, typed};
use crate::model::{Invalid, Stage};
use crate::net::CidrSet;

pub(super) const DEF: PluginDef = PluginDef {
    name: "ip_restriction",
    description: "Admits or refuses clients by IP address with allow and deny lists of CIDR \
                  blocks (IPv4 and IPv6). Deny wins; when allow is non-empty only its \
                  clients pass. Refused requests get 403 without calling the upstream. The \
                  client IP is the one rate_limiter uses: the socket peer, or the \
                  X-Forwarded-For client when the peer is in --trusted-proxies.",
    stages: &[Stage::PreRequest],
    settings: &[
        SettingDoc {
            path: "allow",
            ty: "array of CIDR blocks or addresses (\"10.0.0.0/8\", \"2001:db8::/32\", \
                 \"192.0.2.7\")",
            default: "[] (everyone not denied)",
            description: "When non-empty, only clients inside one of these blocks pass. Host bits \
                          must be zero (\"10.1.0.0/16\", not \"10.1.2.3/16\"). IPv4 clients on a \
                          dual-stack listener (::ffff:a.b.c.d) match IPv4 blocks; IPv6 blocks \
                          never match IPv4 clients.",
        },
        SettingDoc {
            path: "deny",
            ty: "array of CIDR blocks or addresses",
            default: "[]",
            description: "Clients inside any of these blocks are refused with 403, even when \
                          allow also lists them. Lookups are a binary search, so long lists \
                          (thousands of blocks) cost little per request.",
        },
    ],
};

/// `ip_restriction` settings. Each setting's default and trade-off are
/// documented in its [`CATALOGUE`](super::CATALOGUE) entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionSettings {
    /// Non-empty: only these pass. Default empty.
    #[serde(default)]
    pub allow: CidrSet,
    /// Always refused (deny wins over allow). Default empty.
    #[serde(default)]
    pub deny: CidrSet,
}

impl IpRestrictionSettings {
    pub(super) fn parse(settings: &serde_json::Value) -> Result<Self, Invalid> {
        let parsed: Self = typed(settings)?;
        if parsed.allow.is_empty() && parsed.deny.is_empty() {
            return Err(Invalid::new("", "set allow, deny or both"));
        }
        Ok(parsed)
    }

    /// Whether `client` may pass: not in `deny`, and in `allow` when `allow` is non-empty.
    pub fn permits(&self, client: IpAddr) -> bool {
        !self.deny.contains(client) && (self.allow.is_empty() || self.allow.contains(client))
    }

    /// [`permits`](Self::permits) as the plugin's verdict: `Ok` to pass, else
    /// [`Rejection::IpNotAllowed`].
    pub fn check_client(&self, client: IpAddr) -> Result<(), Rejection> {
        if self.permits(client) {
            Ok(())
        } else {
            Err(Rejection::IpNotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{PluginSettings, parse_settings};
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<IpRestrictionSettings, Invalid> {
        match parse_settings("ip_restriction", &v)? {
            PluginSettings::IpRestriction(s) => Ok(s),
            other => panic!("parsed as another plugin: {other:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn settings_parse_with_defaults() {
        let s = parse(json!({"deny": ["203.0.113.0/24"]})).expect("valid");
        assert!(s.allow.is_empty());
        assert_eq!(s.deny.len(), 1);
    }

    #[test]
    fn invalid_settings_are_refused_at_their_path() {
        assert_eq!(parse(json!({})).expect_err("no-op").path, "");
        assert_eq!(
            parse(json!({"allow": [], "deny": []}))
                .expect_err("no-op")
                .path,
            ""
        );
        let err = parse(json!({"allow": ["10.0.0.0/8", "10.1.2.3/16"]})).expect_err("host bits");
        assert_eq!(err.path, "allow[1]");
        assert!(err.message.contains("10.1.0.0/16"), "{err}");
        assert_eq!(
            parse(json!({"deny": ["2001:db8::/129"]}))
                .expect_err("prefix")
                .path,
            "deny[0]"
        );
        assert_eq!(
            parse(json!({"deny": "10.0.0.0/8"}))
                .expect_err("not a list")
                .path,
            "deny"
        );
        assert_eq!(
            parse(json!({"deny": [10]})).expect_err("not a string").path,
            "deny[0]"
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let s = parse(json!({"allow": ["10.0.0.0/8"], "deny": ["10.0.0.7"]})).expect("valid");
        assert!(s.permits(ip("10.0.0.6")));
        assert!(!s.permits(ip("10.0.0.7")));
        assert_eq!(s.check_client(ip("10.0.0.6")), Ok(()));
        assert_eq!(s.check_client(ip("10.0.0.7")), Err(Rejection::IpNotAllowed));
        assert!(
            !s.permits(ip("::ffff:10.0.0.7")),
            "mapped form is the same client"
        );
    }

    #[test]
    fn a_non_empty_allow_list_admits_only_its_members() {
        let s = parse(json!({"allow": ["192.168.0.0/16", "2001:db8::/32"]})).expect("valid");
        assert!(s.permits(ip("192.168.255.255")));
        assert!(s.permits(ip("2001:db8::1")));
        assert!(!s.permits(ip("192.169.0.0")));
        assert!(!s.permits(ip("2001:db9::1")));
        assert!(!s.permits(ip("::1")));
    }

    #[test]
    fn a_deny_only_list_admits_everyone_else_in_both_families() {
        let s = parse(json!({"deny": ["0.0.0.0/0"]})).expect("valid");
        assert!(!s.permits(ip("127.0.0.1")));
        assert!(s.permits(ip("::1")), "an IPv4 block never matches IPv6");
        let s = parse(json!({"deny": ["::/0"]})).expect("valid");
        assert!(
            s.permits(ip("127.0.0.1")),
            "an IPv6 block never matches IPv4"
        );
        assert!(!s.permits(ip("2001:db8::1")));
    }
}
