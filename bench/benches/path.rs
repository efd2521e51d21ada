//! Request-path normalization (`shardgate_core::path::normalize`, on every request since
//! issue 8) beside the normalization it replaced, which decoded unreserved escapes and
//! removed dot segments but left `//` and `%2F` for the upstream to interpret.
//!
//! Cases: an already-normal path (almost every request: borrowed, one pass), one with
//! escapes, one with dot segments and doubled slashes. Before measuring, each case's output
//! is checked. `route+normalize` adds the router lookup of the result (10 000 rules).
//!
//! `cargo bench -p shardgate-bench --bench path -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shardgate_core::path::{EncodedSlashes, normalize};
use shardgate_core::router::{Lookup, Method, MethodSet, RouteSpec, Router, parse_rule_path};

const CASES: [(&str, &str, &str); 3] = [
    ("normal", "/v1/chat/completions", "/v1/chat/completions"),
    (
        "escaped",
        "/v1/models/%61bc%2Dx/m%3apredict",
        "/v1/models/abc-x/m%3Apredict",
    ),
    (
        "dotted",
        "/v1//chat/./x/../completions",
        "/v1/chat/completions",
    ),
];

fn lookup(c: &mut Criterion) {
    let routes = (0..10_000usize)
        .map(|i| RouteSpec {
            id: u32::try_from(i).expect("fits"),
            pattern: parse_rule_path(&if i == 9_999 {
                "/v1/*".to_owned()
            } else {
                format!("/api/svc{i}/items")
            })
            .expect("valid"),
            methods: MethodSet::ANY,
            headers: Vec::new(),
            priority: 0,
        })
        .collect();
    let router = Router::build(routes);
    for (name, raw, want) in CASES {
        let normal = normalize(raw, EncodedSlashes::Reject).expect("valid path");
        assert_eq!(normal.forward, want, "{name}");
        let mut group = c.benchmark_group(format!("path {name}"));
        group.bench_function("normalize", |b| {
            b.iter(|| normalize(black_box(raw), EncodedSlashes::Reject).map(|n| n.route.len()))
        });
        group.bench_function("old_normalize", |b| {
            b.iter(|| old::normalize(black_box(raw)).len())
        });
        group.bench_function("route+normalize", |b| {
            b.iter(|| {
                let n = normalize(black_box(raw), EncodedSlashes::Reject).expect("valid");
                matches!(
                    router.lookup(Method::Get, &n.route, |_| None),
                    Lookup::Matched(_)
                )
            })
        });
        group.bench_function("route+old_normalize", |b| {
            b.iter(|| {
                let n = old::normalize(black_box(raw));
                matches!(router.lookup(Method::Get, &n, |_| None), Lookup::Matched(_))
            })
        });
        group.finish();
    }
}

/// The normalization of `proxy/src/route.rs` before issue 8, verbatim.
mod old {
    use std::borrow::Cow;

    /// The normalized form of a raw path (no query). Borrowed when already normal.
    pub fn normalize(path: &str) -> Cow<'_, str> {
        let needs_work = path.contains('%')
            || path
                .split('/')
                .any(|segment| segment == "." || segment == "..");
        if !needs_work {
            return Cow::Borrowed(path);
        }
        let decoded = decode_unreserved(path);
        Cow::Owned(remove_dot_segments(&decoded))
    }

    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }

    fn is_unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }

    fn decode_unreserved(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut out = String::with_capacity(path.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                )
            {
                let value = hi * 16 + lo;
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
            out.push(bytes[i] as char);
            i += 1;
        }
        out
    }

    /// RFC 3986 §5.2.4 on a path that starts with `/`.
    fn remove_dot_segments(path: &str) -> String {
        let mut out: Vec<&str> = Vec::new();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let last = segments.len().saturating_sub(1);
        let mut trailing_slash = false;
        for (i, segment) in segments.iter().enumerate() {
            match *segment {
                "." => trailing_slash = i == last,
                ".." => {
                    out.pop();
                    trailing_slash = i == last;
                }
                other => {
                    out.push(other);
                    trailing_slash = false;
                }
            }
        }
        let mut result = String::with_capacity(path.len());
        for segment in &out {
            result.push('/');
            result.push_str(segment);
        }
        if trailing_slash || result.is_empty() {
            result.push('/');
        }
        result
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
