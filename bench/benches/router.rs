//! `Router::lookup` against the naive alternative: a linear scan that matches every rule's
//! pattern segment by segment and keeps the most specific match.
//!
//! Rule sets of 10, 1 000 and 10 000 rules: 80 % exact (`/api/svc{i}/items`), 10 % parameter
//! (`/p{i}/users/{id}/posts/{post_id}`), 10 % prefix (`/pre{i}/*`). Queries: an exact hit, a
//! parameter hit, a prefix hit and a miss, each aimed at the last rule of its kind. Before
//! measuring, both routers must agree on every query.
//!
//! `cargo bench -p shardgate-bench --bench router -- --warm-up-time 1 --measurement-time 2`

use std::cmp::Reverse;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shardgate_core::router::{
    Lookup, Method, MethodSet, PatternKind, RouteSpec, Router, parse_pattern,
};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn pattern_for(i: usize) -> String {
    match i % 10 {
        0 => format!("/p{i}/users/{{id}}/posts/{{post_id}}"),
        5 => format!("/pre{i}/*"),
        _ => format!("/api/svc{i}/items"),
    }
}

fn rule_set(n: usize) -> Vec<RouteSpec> {
    (0..n)
        .map(|i| {
            let methods = if i % 10 == 5 {
                MethodSet::ANY
            } else {
                MethodSet::parse(&["GET", "POST"]).expect("valid methods")
            };
            RouteSpec {
                id: u32::try_from(i).expect("rule index fits u32"),
                pattern: parse_pattern(&pattern_for(i)).expect("generated pattern is valid"),
                methods,
                headers: Vec::new(),
                priority: 0,
            }
        })
        .collect()
}

/// `(name, path)` for the four query kinds, aimed at the last rule of each kind.
fn queries(n: usize) -> [(&'static str, String); 4] {
    let last = |want: &dyn Fn(usize) -> bool| (0..n).rev().find(|&i| want(i)).unwrap_or(0);
    let exact = last(&|i| i % 10 != 0 && i % 10 != 5);
    let param = last(&|i| i % 10 == 0);
    let prefix = last(&|i| i % 10 == 5);
    [
        ("exact_hit", format!("/api/svc{exact}/items")),
        ("param_hit", format!("/p{param}/users/42/posts/7")),
        ("prefix_hit", format!("/pre{prefix}/v1/chat/completions")),
        ("miss", "/nothing/routes/here".to_owned()),
    ]
}

fn no_headers(_: &str) -> Option<&'static str> {
    None
}

// --- the naive router --------------------------------------------------------------------

enum NaiveSegment {
    Static(String),
    Param,
}

struct NaiveRule {
    id: u32,
    kind: PatternKind,
    /// Exact and parameter: every segment. Prefix: the base's segments.
    segments: Vec<NaiveSegment>,
    base_len: usize,
    methods: MethodSet,
    headers: Vec<(String, String)>,
    priority: i32,
}

/// Smaller is better: kind, then static-before-param per segment (segment 0 is the most
/// significant bit), then longer prefix, then priority, then insertion order.
type Rank = (PatternKind, u64, Reverse<usize>, i32, usize);

struct NaiveRouter {
    rules: Vec<NaiveRule>,
}

impl NaiveRouter {
    fn build(specs: &[RouteSpec]) -> NaiveRouter {
        let rules = specs
            .iter()
            .map(|spec| {
                let kind = spec.pattern.kind();
                let text = spec.pattern.prefix().unwrap_or(spec.pattern.as_str());
                let segments = match text.strip_prefix('/') {
                    Some(rest) => rest
                        .split('/')
                        .map(|s| {
                            if s.starts_with('{') {
                                NaiveSegment::Param
                            } else {
                                NaiveSegment::Static(s.to_owned())
                            }
                        })
                        .collect(),
                    None => Vec::new(), // "/*": base "" has no segments
                };
                NaiveRule {
                    id: spec.id,
                    kind,
                    segments,
                    base_len: text.len(),
                    methods: spec.methods,
                    headers: spec.headers.clone(),
                    priority: spec.priority,
                }
            })
            .collect();
        NaiveRouter { rules }
    }

    /// `(id, matched_prefix_len)` of the best rule.
    fn lookup<'h>(
        &self,
        method: Method,
        path: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Option<(u32, usize)> {
        let rest = path.strip_prefix('/')?;
        let mut best: Option<(Rank, u32, usize)> = None;
        for (seq, rule) in self.rules.iter().enumerate() {
            let mut param_mask = 0u64;
            let mut path_segments = rest.split('/');
            let mut matched = true;
            for (i, segment) in rule.segments.iter().enumerate() {
                match (segment, path_segments.next()) {
                    (NaiveSegment::Static(s), Some(p)) if s == p => {}
                    (NaiveSegment::Param, Some(p)) if !p.is_empty() => {
                        param_mask |= 1u64 << (63 - i.min(63));
                    }
                    _ => {
                        matched = false;
                        break;
                    }
                }
            }
            let whole_path = path_segments.next().is_none();
            if !matched || (rule.kind != PatternKind::Prefix && !whole_path) {
                continue;
            }
            if !rule.methods.contains(method)
                || !rule
                    .headers
                    .iter()
                    .all(|(n, v)| header(n) == Some(v.as_str()))
            {
                continue;
            }
            let consumed = match rule.kind {
                PatternKind::Prefix => rule.base_len,
                _ => path.len(),
            };
            let rank = (
                rule.kind,
                param_mask,
                Reverse(rule.base_len),
                rule.priority,
                seq,
            );
            if best.as_ref().is_none_or(|(b, _, _)| rank < *b) {
                best = Some((rank, rule.id, consumed));
            }
        }
        best.map(|(_, id, consumed)| (id, consumed))
    }
}

// --- benchmarks --------------------------------------------------------------------------

fn lookup(c: &mut Criterion) {
    for (case_index, case) in ["exact_hit", "param_hit", "prefix_hit", "miss"]
        .into_iter()
        .enumerate()
    {
        let mut group = c.benchmark_group(case);
        for n in SIZES {
            let specs = rule_set(n);
            let naive = NaiveRouter::build(&specs);
            let router = Router::build(specs);
            let (_, path) = &queries(n)[case_index];

            let fast = match router.lookup(Method::Get, path, no_headers) {
                Lookup::Matched(m) => Some((m.id, m.matched_prefix_len)),
                _ => None,
            };
            assert_eq!(
                fast,
                naive.lookup(Method::Get, path, no_headers),
                "{case} n={n}"
            );
            assert_eq!(fast.is_some(), case != "miss", "{case} n={n}");

            group.bench_with_input(BenchmarkId::new("router", n), path, |b, path| {
                b.iter(
                    || match router.lookup(Method::Get, black_box(path.as_str()), no_headers) {
                        Lookup::Matched(m) => m.id,
                        _ => u32::MAX,
                    },
                )
            });
            group.bench_with_input(BenchmarkId::new("naive", n), path, |b, path| {
                b.iter(|| naive.lookup(Method::Get, black_box(path.as_str()), no_headers))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
