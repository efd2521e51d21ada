//! Request-path normalization: the one form of a path that the router matches and the
//! upstream receives, so that the gateway and the upstream always agree on what was asked.
//!
//! A router that matches the raw target while the upstream normalizes it (nginx merges
//! slashes and decodes `%2F`; most frameworks resolve `..`) can be walked around:
//! `//admin/x` or `/%2Fadmin/x` matched a public `/*` rule while the upstream served
//! `/admin/x`, which a key-protected `/admin/*` rule was meant to guard. So the path is
//! normalized **before routing**, and the normalized path is **what is forwarded**.
//!
//! The normalization (applied in this order; docs/SECURITY.md states it for operators):
//!
//! 1. The target must be origin-form (`/...`; `*` is passed through for `OPTIONS *`).
//! 2. Percent-escapes: a malformed escape (`%zz`, `%4`) or an encoded NUL is refused.
//!    `%2F` (`/`), `%5C` (`\`) and a raw `\` are refused too under the default
//!    [`EncodedSlashes::Reject`] (like Envoy's `REJECT_REQUEST`): a decoding upstream would see
//!    a segment boundary the router did not. [`EncodedSlashes::Keep`] forwards them encoded,
//!    for upstreams that need them. Escapes of unreserved characters are decoded
//!    (RFC 3986 §6.2.2.2: `%61dmin` is `admin`); every other escape keeps its encoding,
//!    with uppercase hex (§6.2.2.1).
//! 3. Empty segments are merged (`//a///b` is `/a/b`), as nginx's `merge_slashes` does.
//! 4. Dot segments are removed (RFC 3986 §5.2.4): `/a/./b/../c` is `/a/c`, and `..` never
//!    climbs above `/`. A dot segment carrying a parameter (`..;x`, `.;x`, also as
//!    `..%3Bx`) is refused: Tomcat-style servers read it as `..`.
//!
//! That gives the **forward** form. Escapes of reserved characters are kept there because
//! decoding them changes meaning for some upstreams (`%3B` is data, `;` starts a path
//! parameter). Most upstreams decode them before matching all the same, so the router is
//! given a **route** form of the same path in which the escapes of the other characters that
//! may stand raw in a path segment (sub-delims, `:`, `@`) are decoded too; a rule literal
//! such as `/v1/models/m:predict` is then matched whether the client wrote `:` or `%3A`. The
//! two forms have the same segments (no escape of `/` is ever decoded), which is how
//! [`NormalPath::forward_after`] maps a prefix the router stripped onto the forward form.
//!
//! Paths that are already normal (no `%`, no `\`, no `//`, no dot segment: almost every
//! request) are borrowed untouched: no allocation, one pass over the bytes.

use std::borrow::Cow;
use std::fmt;

/// What to do with an encoded slash or backslash (`%2F`, `%5C`) or a raw `\` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlashes {
    /// Refuse the request with 400 (default): a decoding upstream would split the segment
    /// where the router did not, so no rule could be relied on to guard a path.
    #[default]
    Reject,
    /// Forward them encoded (uppercase hex), for upstreams that need `%2F` in a segment
    /// (artifact stores, some object APIs). Only safe when the upstream does not decode them
    /// before its own routing: a protected rule can be bypassed otherwise.
    Keep,
}

impl EncodedSlashes {
    pub fn as_str(self) -> &'static str {
        match self {
            EncodedSlashes::Reject => "reject",
            EncodedSlashes::Keep => "keep",
        }
    }
}

impl std::str::FromStr for EncodedSlashes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(EncodedSlashes::Reject),
            "keep" => Ok(EncodedSlashes::Keep),
            other => Err(format!("{other:?}: use \"reject\" or \"keep\"")),
        }
    }
}

/// Why a request path was refused (each is a 400 at the proxy's edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not `/...` (nor `*`).
    NotOriginForm,
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// `%00`.
    EncodedNul,
    /// `%2F`, `%5C` or a raw `\` under [`EncodedSlashes::Reject`].
    EncodedSlash,
    /// `..;x`, `.;x` (or with `%3B`).
    DotSegmentParameter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "request target must be an absolute path",
            PathError::MalformedEscape => "malformed percent-encoding in the request path",
            PathError::EncodedNul => "encoded NUL in the request path",
            PathError::EncodedSlash => {
                "encoded slash or backslash in the request path (%2F, %5C or \\) is not accepted"
            }
            PathError::DotSegmentParameter => "dot segment with a parameter in the request path",
        })
    }
}

impl std::error::Error for PathError {}

/// A normalized request path in its two forms (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// What the router matches.
    pub route: Cow<'a, str>,
    /// What is forwarded upstream.
    pub forward: Cow<'a, str>,
}

impl NormalPath<'_> {
    /// The forward form with the first `route_prefix_len` bytes of the route form removed:
    /// what `strip_path` forwards after the router consumed that prefix. Always starts with
    /// `/`; `/` when the prefix is the whole path.
    pub fn forward_after(&self, route_prefix_len: usize) -> &str {
        let route = &*self.route;
        let forward = &*self.forward;
        let Some(consumed) = route.get(..route_prefix_len) else {
            return "/";
        };
        if route_prefix_len >= route.len() {
            return "/";
        }
        if route == forward {
            return match forward.get(route_prefix_len..) {
                Some(rest) if rest.starts_with('/') => rest,
                _ => "/",
            };
        }
        // Both forms have the same `/`s: the rest starts at the same slash in each.
        let slashes = consumed.bytes().filter(|&b| b == b'/').count();
        match forward.match_indices('/').nth(slashes) {
            Some((at, _)) => &forward[at..],
            None => "/",
        }
    }
}

/// Normalizes a raw request path (no query). Borrowed when already normal.
pub fn normalize(path: &str, slashes: EncodedSlashes) -> Result<NormalPath<'_>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        if path == "*" {
            return Ok(NormalPath {
                route: Cow::Borrowed(path),
                forward: Cow::Borrowed(path),
            });
        }
        return Err(PathError::NotOriginForm);
    }
    if is_normal(bytes) {
        return Ok(NormalPath {
            route: Cow::Borrowed(path),
            forward: Cow::Borrowed(path),
        });
    }
    let forward = normalize_slow(bytes, slashes)?;
    let route = if forward.contains('%') {
        decode_pchars(&forward)
    } else {
        forward.clone()
    };
    Ok(NormalPath {
        route: Cow::Owned(route),
        forward: Cow::Owned(forward),
    })
}

/// Whether a rule's path literal is in normal form: what a request path becomes after
/// [`normalize`], in its route form. `Err` says what is wrong (for the admin API's 400).
pub fn check_rule_path(path: &str) -> Result<(), RulePathError> {
    if let Some(ch) = path.chars().find(|c| !c.is_ascii()) {
        return Err(RulePathError::NonAscii(ch));
    }
    // The router's own syntax stands as written: a `{name}` segment matches any one
    // segment, so only the literal segments around it must be normal.
    let is_param =
        |segment: &str| segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}');
    let literal: Vec<&str> = path
        .split('/')
        .map(|segment| if is_param(segment) { "p" } else { segment })
        .collect();
    let literal = literal.join("/");
    match normalize(&literal, EncodedSlashes::Reject) {
        Err(e) => Err(RulePathError::Request(e)),
        Ok(normal) if normal.route != literal => {
            // Put the parameters back where they were, when no segment moved.
            let original: Vec<&str> = path.split('/').collect();
            let mut fixed: Vec<&str> = normal.route.split('/').collect();
            if fixed.len() == original.len() {
                for (slot, segment) in fixed.iter_mut().zip(&original) {
                    if is_param(segment) {
                        *slot = segment;
                    }
                }
            }
            Err(RulePathError::NotNormal {
                normal: fixed.join("/"),
            })
        }
        Ok(_) => Ok(()),
    }
}

/// Why a rule path is not in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePathError {
    /// Request paths are ASCII: percent-encode other characters (uppercase hex).
    NonAscii(char),
    /// A shape every request with it is refused for.
    Request(PathError),
    /// Requests are normalized before routing, so this literal could never match as written.
    NotNormal { normal: String },
}

impl fmt::Display for RulePathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulePathError::NonAscii(ch) => write!(
                f,
                "contains {ch:?}: request paths are ASCII, percent-encode it with uppercase hex \
                 (e.g. \"%C3%A4\" for \"ä\")"
            ),
            RulePathError::Request(e) => write!(f, "{e}; no request with it is routed"),
            RulePathError::NotNormal { normal } => write!(
                f,
                "not in normal form (requests are normalized before routing: merged slashes, \
                 no dot segments, unreserved and sub-delim characters unescaped, uppercase hex); \
                 write it as {normal:?}"
            ),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` other than `unreserved` and `%`: sub-delims, `:` and `@`.
fn is_reserved_pchar(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

/// A segment that an upstream may read as `.` or `..`: exactly that, or followed by a
/// `;parameter` (raw or as `%3B`).
fn dot_segment(segment: &[u8]) -> Option<DotSegment> {
    let dots = segment.iter().take_while(|&&b| b == b'.').count();
    if dots == 0 || dots > 2 {
        return None;
    }
    let rest = &segment[dots..];
    if rest.is_empty() {
        Some(DotSegment::Plain(dots))
    } else if rest.starts_with(b";") || rest.starts_with(b"%3B") || rest.starts_with(b"%3b") {
        Some(DotSegment::WithParameter)
    } else {
        None
    }
}

enum DotSegment {
    Plain(usize),
    WithParameter,
}

/// A byte that stands raw in the normal form: `/` and RFC 3986 `pchar` other than `%`.
/// Every other byte (`"`, `<`, `>`, `[`, `\\`, `]`, `^`, `` ` ``, `{`, `|`, `}`, controls,
/// non-ASCII) is written as an escape, so each path has one spelling: a client cannot
/// reach a rule by writing raw what the rule has escaped, or the other way round.
fn stands_raw(b: u8) -> bool {
    b == b'/' || is_unreserved(b) || is_reserved_pchar(b)
}

/// One pass: nothing to decode, encode, merge or resolve.
fn is_normal(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => return false,
            b if !stands_raw(b) => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                let rest = &bytes[i..];
                let end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                if dot_segment(&rest[..end]).is_some() {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

fn push_escape(out: &mut Vec<u8>, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'%');
    out.push(HEX[usize::from(value >> 4)]);
    out.push(HEX[usize::from(value & 0xF)]);
}

fn normalize_slow(bytes: &[u8], slashes: EncodedSlashes) -> Result<String, PathError> {
    // Escapes first, so that `%2e%2e` is a dot segment and `%2F` never becomes a `/`.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::MalformedEscape);
            };
            let value = hi << 4 | lo;
            match value {
                0 => return Err(PathError::EncodedNul),
                b'/' | b'\\' if slashes == EncodedSlashes::Reject => {
                    return Err(PathError::EncodedSlash);
                }
                v if is_unreserved(v) => decoded.push(v),
                v => push_escape(&mut decoded, v),
            }
            i += 3;
            continue;
        }
        if b == b'\\' && slashes == EncodedSlashes::Reject {
            return Err(PathError::EncodedSlash);
        }
        if stands_raw(b) {
            decoded.push(b);
        } else {
            push_escape(&mut decoded, b);
        }
        i += 1;
    }

    // Segments: merge empty ones, resolve dot segments (RFC 3986 §5.2.4).
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let segments = decoded.get(1..).unwrap_or_default();
    let count = segments.split(|&b| b == b'/').count();
    for (index, segment) in segments.split(|&b| b == b'/').enumerate() {
        let last = index + 1 == count;
        match dot_segment(segment) {
            Some(DotSegment::WithParameter) => return Err(PathError::DotSegmentParameter),
            Some(DotSegment::Plain(2)) => {
                kept.pop();
                trailing_slash = last;
            }
            Some(DotSegment::Plain(_)) => trailing_slash = last,
            None if segment.is_empty() => trailing_slash = last,
            None => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for segment in &kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    // Every byte is ASCII now (others were escaped), so this cannot fail.
    String::from_utf8(out).map_err(|_| PathError::MalformedEscape)
}

/// The route form: escapes of sub-delims, `:` and `@` decoded (input is in forward form).
fn decode_pchars(forward: &str) -> String {
    let bytes = forward.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
            && is_reserved_pchar(hi << 4 | lo)
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| forward.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(p: &str) -> Result<String, PathError> {
        normalize(p, EncodedSlashes::Reject).map(|n| n.route.into_owned())
    }

    fn forward(p: &str) -> Result<String, PathError> {
        normalize(p, EncodedSlashes::Reject).map(|n| n.forward.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed_untouched() {
        for p in [
            "/",
            "/v1/chat",
            "/a/b/",
            "/users/42",
            "/a.b/c..d/.e",
            "/m:predict",
            "*",
        ] {
            let n = normalize(p, EncodedSlashes::Reject).expect("normal");
            assert!(matches!(n.route, Cow::Borrowed(_)), "{p}");
            assert!(matches!(n.forward, Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn merged_slashes_and_dot_segments_cannot_dodge_a_rule() {
        for (raw, want) in [
            ("//admin/x", "/admin/x"),
            ("///admin/x", "/admin/x"),
            ("/.//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/public/../admin/x", "/admin/x"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/%2E/admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/a/./b/.", "/a/b/"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a//", "/a/"),
            ("//", "/"),
        ] {
            assert_eq!(forward(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(route(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused_by_default_and_kept_encoded_on_request() {
        for raw in [
            "/%2Fadmin/x",
            "/%2F%2Fadmin/x",
            "/admin%2Fx",
            "/admin%2fx",
            "/x/..%2Fadmin/x",
            "/a%5Cb",
            "/a\\b",
        ] {
            assert_eq!(route(raw), Err(PathError::EncodedSlash), "{raw}");
        }
        let kept = normalize("/a%2fb/%5c", EncodedSlashes::Keep).expect("kept");
        assert_eq!(kept.forward, "/a%2Fb/%5C");
        assert_eq!(kept.route, "/a%2Fb/%5C");
    }

    #[test]
    fn malformed_escapes_nul_and_dot_parameters_are_refused() {
        assert_eq!(route("/a%zz"), Err(PathError::MalformedEscape));
        assert_eq!(route("/a%4"), Err(PathError::MalformedEscape));
        assert_eq!(route("/a%00b"), Err(PathError::EncodedNul));
        assert_eq!(
            route("/public/..;/admin"),
            Err(PathError::DotSegmentParameter)
        );
        assert_eq!(
            route("/public/..%3Bx/admin"),
            Err(PathError::DotSegmentParameter)
        );
        assert_eq!(route("/.;/admin"), Err(PathError::DotSegmentParameter));
        assert_eq!(route("admin"), Err(PathError::NotOriginForm));
        assert_eq!(route(""), Err(PathError::NotOriginForm));
    }

    #[test]
    fn characters_that_cannot_stand_raw_are_escaped_so_each_path_has_one_spelling() {
        for (raw, want) in [
            ("/files/[id]/x", "/files/%5Bid%5D/x"),
            ("/files/%5bid%5d/x", "/files/%5Bid%5D/x"),
            ("/a|b/{c}/\"d\"", "/a%7Cb/%7Bc%7D/%22d%22"),
            ("/a^b`c<d>", "/a%5Eb%60c%3Cd%3E"),
        ] {
            assert_eq!(route(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(forward(raw).as_deref(), Ok(want), "{raw}");
        }
        let kept = normalize("/a\\b", EncodedSlashes::Keep).expect("kept");
        assert_eq!(
            kept.forward, "/a%5Cb",
            "a raw backslash is forwarded encoded"
        );
    }

    #[test]
    fn reserved_escapes_are_forwarded_encoded_and_routed_decoded() {
        let n = normalize("/v1/m%3apredict/a%3Bb/%20x", EncodedSlashes::Reject).expect("ok");
        assert_eq!(n.forward, "/v1/m%3Apredict/a%3Bb/%20x");
        assert_eq!(n.route, "/v1/m:predict/a;b/%20x");
    }

    #[test]
    fn forward_after_maps_a_stripped_route_prefix_onto_the_forward_form() {
        let n = normalize("/v1//m%3Ax/c", EncodedSlashes::Reject).expect("ok");
        assert_eq!(n.route, "/v1/m:x/c");
        assert_eq!(n.forward_after(3), "/m%3Ax/c");
        assert_eq!(n.forward_after(n.route.len()), "/");
        let plain = normalize("/v1/chat", EncodedSlashes::Reject).expect("ok");
        assert_eq!(plain.forward_after(3), "/chat");
        assert_eq!(plain.forward_after(8), "/");
        assert_eq!(plain.forward_after(99), "/");
    }

    /// What nginx (default settings, the upstream most users put behind a gateway) does to a
    /// path before matching its `location`s: decode every escape, merge slashes, resolve dot
    /// segments (clamped at `/`).
    fn nginx_view(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                )
            {
                decoded.push(hi << 4 | lo);
                i += 3;
            } else {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
        let text = String::from_utf8(decoded).expect("the generator only escapes ASCII");
        let mut kept: Vec<&str> = Vec::new();
        let segments: Vec<&str> = text.split('/').skip(1).collect();
        let mut trailing = false;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            match *segment {
                "" | "." => trailing = last,
                ".." => {
                    kept.pop();
                    trailing = last;
                }
                other => {
                    kept.push(other);
                    trailing = false;
                }
            }
        }
        let mut out = String::new();
        for segment in kept {
            out.push('/');
            out.push_str(segment);
        }
        if trailing || out.is_empty() {
            out.push('/');
        }
        out
    }

    /// The one spelling of a decoded path: bytes that cannot stand raw escaped, uppercase.
    fn canonical(decoded: &str) -> String {
        let mut out = Vec::new();
        for &b in decoded.as_bytes() {
            if stands_raw(b) {
                out.push(b);
            } else {
                push_escape(&mut out, b);
            }
        }
        String::from_utf8(out).expect("ASCII")
    }

    /// Property: whatever path a client sends, if the gateway routes it to rule R, the
    /// upstream (nginx semantics) receives a path that R also matches, and the same resource
    /// the raw path would have named. Random paths from the shapes attackers use.
    #[test]
    fn a_routed_path_is_the_path_the_upstream_serves() {
        use crate::router::{Lookup, Method, MethodSet, RouteSpec, Router, parse_rule_path};
        let rules = [
            "/admin/*",
            "/admin",
            "/a:b/*",
            "/users/{id}/x",
            "/v1/chat",
            "/~u/*",
            "/files/%5Bid%5D/*",
            "/*",
        ];
        let routes = rules
            .iter()
            .enumerate()
            .map(|(id, path)| RouteSpec {
                id: id as u32,
                pattern: parse_rule_path(path).expect("test rules are normal"),
                methods: MethodSet::ANY,
                headers: Vec::new(),
                priority: 0,
            })
            .collect();
        let router = Router::build(routes);
        let route_of = |path: &str| match router.lookup(Method::Get, path, |_| None) {
            Lookup::Matched(m) => Some(m.id),
            _ => None,
        };
        const TOKENS: [&str; 32] = [
            "/", "/", "//", ".", "..", "%2F", "%2f", "%2e", "%2E", "%2e%2e", "%61", "a", "admin",
            "users", "x", ":", "%3A", "%3a", "b", ";", "%3B", "%20", "%25", "%5C", "\\", "%zz",
            "%00", "v1", "chat", "%7E", "~", "u",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let mut path = String::from("/");
            for _ in 0..1 + next(8) {
                path.push_str(TOKENS[next(TOKENS.len())]);
            }
            let Ok(normal) = normalize(&path, EncodedSlashes::Reject) else {
                refused += 1;
                continue;
            };
            accepted += 1;
            let served = nginx_view(&normal.forward);
            assert_eq!(
                normal.route,
                canonical(&served),
                "{path:?}: the router's form is not what the upstream serves"
            );
            assert_eq!(
                route_of(&normal.route),
                route_of(&served),
                "{path:?} routed as {:?}, upstream serves {served:?}",
                normal.route
            );
            assert_eq!(
                nginx_view(&path),
                served,
                "{path:?}: forwarding {:?} changed what the upstream serves",
                normal.forward
            );
        }
        assert!(
            accepted > 10_000 && refused > 1_000,
            "{accepted} / {refused}"
        );
    }

    #[test]
    fn rule_paths_must_be_in_normal_form() {
        assert_eq!(check_rule_path("/v1/chat"), Ok(()));
        assert_eq!(check_rule_path("/v1/{id}/x"), Ok(()));
        assert_eq!(check_rule_path("/v1/*"), Ok(()));
        assert_eq!(check_rule_path("/m:predict"), Ok(()));
        assert_eq!(check_rule_path("/my%20file"), Ok(()));
        assert_eq!(check_rule_path("/files/%5Bid%5D/{name}/*"), Ok(()));
        assert_eq!(
            check_rule_path("/files/[id]/{name}"),
            Err(RulePathError::NotNormal {
                normal: "/files/%5Bid%5D/{name}".into()
            })
        );
        assert!(matches!(
            check_rule_path("/ä"),
            Err(RulePathError::NonAscii('ä'))
        ));
        for bad in [
            "//a",
            "/a/../b",
            "/a/./b",
            "/%61",
            "/my%3Ax",
            "/my%20file%2a",
        ] {
            assert!(
                matches!(check_rule_path(bad), Err(RulePathError::NotNormal { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            check_rule_path("/%zz"),
            Err(RulePathError::Request(PathError::MalformedEscape))
        );
        assert_eq!(
            check_rule_path("/a%2Fb"),
            Err(RulePathError::Request(PathError::EncodedSlash))
        );
    }
}
