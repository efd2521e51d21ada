//! The per-gateway request router: compiled once per config snapshot, queried per request.
//!
//! A rule's path is one of three [`Pattern`] forms, parsed by [`parse_pattern`] (which the
//! model validator reuses, so the admin API rejects exactly what the router cannot compile):
//! exact `/v1/chat`, parameter `/users/{id}/posts/{post_id}`, prefix `/v1/*` (or `/*`).
//!
//! # Data structure
//!
//! ```text
//! Router
//! ├── exact:    HashMap<path, [route]>        one probe: hash the whole path
//! ├── nodes:    segment trie for parameter patterns
//! │             node = { statics: segment -> node, param: Option<node>, routes: [route],
//! │                      parent }   (statics: a short list scanned linearly, or a HashMap)
//! ├── prefixes: HashMap<base, [route]>        base = pattern without "/*" ("" for "/*")
//! │   prefix_lens: which base lengths exist, so only those `/`-boundaries are hashed
//! └── routes:   [Route]                       method set, header conditions, param names
//! ```
//!
//! Every bucket (`[route]`) is sorted by `(priority, insertion order)`, so the first route in
//! a bucket whose methods and headers match is the winner for that pattern shape. Lookup
//! tries the three tiers in order of specificity and stops at the first full match:
//!
//! 1. **exact** — one hash of the path. Cost does not depend on the number of rules.
//! 2. **parameter** — walk the trie one segment at a time, static child before parameter
//!    child, backtracking when a static branch dead-ends. That order *is* the contract "at
//!    each segment a static segment beats a parameter". A parameter edge consumes exactly one
//!    segment, so every trie node sits at one fixed path offset and is visited at most once:
//!    worst case O(trie nodes), typical O(path depth). The walk is a loop with parent links,
//!    not recursion, so a deep pattern cannot exhaust a worker's stack.
//! 3. **prefix** — hash the whole path, then each `/`-boundary prefix of it, longest first
//!    (only lengths some rule uses). O(path depth), independent of the number of rules.
//!
//! A linear scan would be simpler, but it costs O(rules) per request and the proxy's CPU
//! budget per request is below nginx's; `bench/benches/router.rs` compares the two.
//!
//! # Semantics worth knowing
//!
//! * **Raw bytes.** The router matches the path exactly as given: no percent-decoding, no
//!   `.`/`..` or `//` normalisation, and the query string must already be cut off. Decoding
//!   (or rejecting) `%2F` and friends is the caller's job, done once before routing.
//!   Paths that do not start with `/` (`*`, absolute-form) match nothing.
//! * **Trailing slash is significant** for exact and parameter patterns (`/a` ≠ `/a/`);
//!   a prefix `/v1/*` matches `/v1`, `/v1/` and `/v1/...` but not `/v1x`.
//! * **A parameter matches one non-empty segment**: `/users/{id}` does not match `/users/`.
//! * **Fall-through.** A candidate (a rule whose pattern matches the path) wins only if its
//!   methods contain the request method *and* all its header conditions hold; otherwise the
//!   next candidate is tried, down to less specific shapes (a POST-only `/v1/chat` lets a
//!   GET fall through to `/v1/*`). Specificity always beats `priority`; `priority` (lower
//!   wins) and then insertion order only break ties between equally specific patterns.
//! * **405 vs 404.** If no candidate matches fully, the result is
//!   [`Lookup::MethodNotAllowed`] with the union of the methods of the candidates whose
//!   *headers* matched; when there are none (every candidate's header conditions failed,
//!   or no pattern matched the path), it is [`Lookup::NotFound`]. Header conditions select
//!   a route just as the path does (e.g. an API version header), so a request that selects
//!   no route learns nothing about which methods some other variant would accept.
//! * **Headers.** Rule header names are lowercased at build; the `header` callback passed to
//!   [`Router::lookup`] receives the lowercase name and must look it up case-insensitively
//!   (HTTP field names are). Values are compared byte for byte. If a request repeats a
//!   header, the callback decides which value counts (the proxy passes the first).
//!
//! # Allocation
//!
//! [`Router::lookup`] does not allocate: hash probes use the borrowed `&str` (no owned key),
//! the trie walk keeps its state in a few locals, the 405 union is a `u16`, and
//! [`RouteMatch`] stores up to [`INLINE_PARAMS`] parameter ranges inline. Only a match on a
//! route with more than four parameters allocates (one `Vec` for the ranges).
//!
//! The hash maps use a small multiplicative hasher (`PathHasher`) instead of SipHash,
//! because path hashing is on every request. HashDoS does not apply: the keys *in* the maps
//! come from admin configuration; a client only probes, and a probe's cost is bounded by the
//! table's layout, which the client cannot influence.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

/// The request methods a rule can name (RFC 9110 §9). Extension methods are not routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Trace,
    Connect,
}

impl Method {
    /// Every method, in the order an `Allow` header lists them.
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Patch,
        Method::Options,
        Method::Trace,
        Method::Connect,
    ];

    /// Parses a request-line method token. Case-sensitive: methods are (RFC 9110 §9.1).
    pub fn from_bytes(token: &[u8]) -> Option<Method> {
        Some(match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => return None,
        })
    }

    /// The method token as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::from_bytes(s.as_bytes()).ok_or_else(|| UnknownMethod(s.to_owned()))
    }
}

/// A rule named a method that is not one of [`Method::ALL`] (matching is case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMethod(pub String);

impl fmt::Display for UnknownMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown HTTP method {:?} (expected one of {}; methods are case-sensitive)",
            self.0,
            MethodSet::ANY
        )
    }
}

impl std::error::Error for UnknownMethod {}

/// A set of [`Method`]s as a bitset.
///
/// Every constructor keeps one invariant: a set containing GET also contains HEAD
/// (RFC 9110 §9.3.2: HEAD is GET without the body), so a GET rule serves HEAD requests and
/// the `Allow` header built from the set lists HEAD. A HEAD-only set does not imply GET.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MethodSet(u16);

impl MethodSet {
    /// No methods.
    pub const EMPTY: MethodSet = MethodSet(0);
    /// Every method: what a rule that lists none accepts.
    pub const ANY: MethodSet = MethodSet((1 << Method::ALL.len()) - 1);

    /// Parses a rule's `methods` list; an empty list means [`MethodSet::ANY`].
    pub fn parse<S: AsRef<str>>(methods: &[S]) -> Result<MethodSet, UnknownMethod> {
        if methods.is_empty() {
            return Ok(MethodSet::ANY);
        }
        methods.iter().try_fold(MethodSet::EMPTY, |set, name| {
            Ok(set.with(name.as_ref().parse::<Method>()?))
        })
    }

    /// The set holding `method` (and HEAD, if `method` is GET).
    pub const fn single(method: Method) -> MethodSet {
        MethodSet::EMPTY.with(method)
    }

    /// This set plus `method` (and HEAD, if `method` is GET).
    #[must_use]
    pub const fn with(self, method: Method) -> MethodSet {
        let mut bits = self.0 | method.bit();
        if matches!(method, Method::Get) {
            bits |= Method::Head.bit();
        }
        MethodSet(bits)
    }

    #[must_use]
    pub const fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    pub const fn contains(self, method: Method) -> bool {
        self.0 & method.bit() != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The methods in `Allow` order (GET, HEAD, POST, ...).
    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl FromIterator<Method> for MethodSet {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> Self {
        iter.into_iter().fold(MethodSet::EMPTY, MethodSet::with)
    }
}

/// Formats as an `Allow` header value: `GET, HEAD, POST`.
impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, method) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(method.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

// ---------------------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------------------

/// A validated path pattern; the only way to get one is [`parse_pattern`] (or `str::parse`),
/// which is what lets [`Router::build`] be infallible.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: Box<str>,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    Exact,
    Param(Box<[Segment]>),
    Prefix,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Static(Box<str>),
    Param(Box<str>),
}

/// Which of the three forms a [`Pattern`] is, from most to least specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternKind {
    /// `/v1/chat`: the path must equal the pattern.
    Exact,
    /// `/users/{id}`: same number of segments, static segments equal, `{name}` captures one.
    Param,
    /// `/v1/*`: the path is the base (`/v1`) or continues it with `/`.
    Prefix,
}

impl Pattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn kind(&self) -> PatternKind {
        match self.shape {
            Shape::Exact => PatternKind::Exact,
            Shape::Param(_) => PatternKind::Param,
            Shape::Prefix => PatternKind::Prefix,
        }
    }

    /// For a prefix pattern, the part before `/*` (`"/v1"` for `/v1/*`, `""` for `/*`).
    pub fn prefix(&self) -> Option<&str> {
        match self.shape {
            Shape::Prefix => self.source.strip_suffix("/*"),
            _ => None,
        }
    }

    /// The parameter names, in path order (empty unless [`PatternKind::Param`]).
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        let segments: &[Segment] = match &self.shape {
            Shape::Param(segments) => segments,
            _ => &[],
        };
        segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(&**name),
            Segment::Static(_) => None,
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pattern(s)
    }
}

/// Why a path pattern was rejected. The `Display` text is meant for the admin API's 400
/// body, after the field name (`path: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    Empty,
    MissingLeadingSlash {
        pattern: String,
    },
    /// Whitespace, control characters, `?` or `#`: never part of a request path as the
    /// router sees it (the query is cut off before routing), so almost certainly a mistake.
    InvalidChar {
        pattern: String,
        ch: char,
    },
    /// `*` anywhere but a final `/*` segment.
    MisplacedWildcard {
        pattern: String,
    },
    /// `{name}` and `/*` in one pattern.
    ParamInPrefix {
        pattern: String,
    },
    /// A segment containing `{` or `}` that is not exactly `{name}`.
    InvalidParamSegment {
        segment: String,
    },
    DuplicateParam {
        name: String,
    },
    /// Not in the normal form requests are routed in ([`crate::path`]): such a literal
    /// would never match, or would match only some spellings of the same path.
    NotNormal {
        pattern: String,
        why: crate::path::RulePathError,
    },
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Empty => f.write_str("path pattern is empty; it must start with \"/\""),
            PatternError::MissingLeadingSlash { pattern } => {
                write!(f, "path pattern {pattern:?} must start with \"/\"")
            }
            PatternError::InvalidChar { pattern, ch } => write!(
                f,
                "path pattern {pattern:?} contains {ch:?}, which cannot occur in a routed path"
            ),
            PatternError::MisplacedWildcard { pattern } => write!(
                f,
                "\"*\" in {pattern:?} is only allowed as the final segment of a prefix \
                 pattern, as in \"/v1/*\""
            ),
            PatternError::ParamInPrefix { pattern } => write!(
                f,
                "prefix pattern {pattern:?} cannot contain parameters; use either \
                 \"/a/{{id}}\" or \"/a/*\""
            ),
            PatternError::InvalidParamSegment { segment } => write!(
                f,
                "{segment:?} is not a valid parameter segment; a parameter is a whole segment \
                 \"{{name}}\" with a name matching [A-Za-z_][A-Za-z0-9_]*"
            ),
            PatternError::DuplicateParam { name } => {
                write!(f, "parameter {name:?} appears more than once")
            }
            PatternError::NotNormal { pattern, why } => {
                write!(f, "path pattern {pattern:?} {why}")
            }
        }
    }
}

impl std::error::Error for PatternError {}

/// A rule's `path` as the admin API accepts it: a valid pattern ([`parse_pattern`]) whose
/// literal is in the normal form request paths are routed in ([`crate::path`]), so that
/// every spelling of a path a client may send reaches the rule, or none does.
pub fn parse_rule_path(path: &str) -> Result<Pattern, PatternError> {
    crate::path::check_rule_path(path).map_err(|why| PatternError::NotNormal {
        pattern: path.to_owned(),
        why,
    })?;
    parse_pattern(path)
}

/// Parses and validates a path pattern's syntax. See [`PatternKind`] for the three forms.
pub fn parse_pattern(pattern: &str) -> Result<Pattern, PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    let Some(after_slash) = pattern.strip_prefix('/') else {
        return Err(PatternError::MissingLeadingSlash {
            pattern: pattern.to_owned(),
        });
    };
    if let Some(ch) = pattern
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#'))
    {
        return Err(PatternError::InvalidChar {
            pattern: pattern.to_owned(),
            ch,
        });
    }
    let with_shape = |shape| {
        Ok(Pattern {
            source: pattern.into(),
            shape,
        })
    };
    let has_brace = |s: &str| s.contains(['{', '}']);

    if let Some(base) = pattern.strip_suffix("/*") {
        if base.contains('*') {
            return Err(PatternError::MisplacedWildcard {
                pattern: pattern.to_owned(),
            });
        }
        if has_brace(base) {
            return Err(PatternError::ParamInPrefix {
                pattern: pattern.to_owned(),
            });
        }
        return with_shape(Shape::Prefix);
    }
    if pattern.contains('*') {
        return Err(PatternError::MisplacedWildcard {
            pattern: pattern.to_owned(),
        });
    }
    if !has_brace(pattern) {
        return with_shape(Shape::Exact);
    }

    let mut segments = Vec::new();
    for segment in after_slash.split('/') {
        if !has_brace(segment) {
            segments.push(Segment::Static(segment.into()));
            continue;
        }
        let name = segment
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|name| is_param_name(name))
            .ok_or_else(|| PatternError::InvalidParamSegment {
                segment: segment.to_owned(),
            })?;
        if segments
            .iter()
            .any(|s| matches!(s, Segment::Param(seen) if **seen == *name))
        {
            return Err(PatternError::DuplicateParam {
                name: name.to_owned(),
            });
        }
        segments.push(Segment::Param(name.into()));
    }
    with_shape(Shape::Param(segments.into()))
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ---------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------

/// One routing rule, as the snapshot compiler hands it over.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The caller's handle for the rule (e.g. its index in the snapshot's rule table);
    /// returned in [`RouteMatch::id`].
    pub id: u32,
    pub pattern: Pattern,
    /// [`MethodSet::ANY`] when the rule lists none.
    pub methods: MethodSet,
    /// `(name, value)` conditions, all of which must hold. Names are compared
    /// case-insensitively (lowercased at build), values exactly.
    pub headers: Vec<(String, String)>,
    /// Breaks ties between equally specific patterns; lower wins.
    pub priority: i32,
}

/// Parameter ranges a [`RouteMatch`] keeps without allocating.
pub const INLINE_PARAMS: usize = 4;

/// The outcome of [`Router::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'r> {
    Matched(RouteMatch<'r>),
    /// Some rule matches the path and headers, none the method: answer 405 with
    /// `Allow: {allow}`.
    MethodNotAllowed {
        allow: MethodSet,
    },
    NotFound,
}

/// The winning rule and what it consumed of the path.
///
/// Captured parameters are stored as byte ranges, not slices, so a match does not borrow the
/// request; pass the same path that was looked up to [`RouteMatch::param`] and
/// [`RouteMatch::stripped_path`]. Given another string they return `None`/`"/"` rather
/// than panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'r> {
    /// [`RouteSpec::id`] of the winning rule.
    pub id: u32,
    /// Bytes of the path the pattern consumed: the whole path for exact and parameter
    /// patterns, the base (`/v1` of `/v1/*`) for prefixes. What `strip_path` removes.
    pub matched_prefix_len: usize,
    param_names: &'r [Box<str>],
    param_ranges: ParamRanges,
}

impl<'r> RouteMatch<'r> {
    /// The value of parameter `name` in `path` (the path that was looked up).
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let index = self.param_names.iter().position(|n| **n == *name)?;
        let &(start, end) = self.param_ranges.as_slice().get(index)?;
        path.get(start..end)
    }

    /// Every `(name, value)` pair, in path order.
    pub fn params<'p>(&self, path: &'p str) -> impl Iterator<Item = (&'r str, &'p str)> {
        let names = self.param_names;
        let ranges = self.param_ranges.clone();
        (0..names.len()).filter_map(move |i| {
            let name = names.get(i)?;
            let &(start, end) = ranges.as_slice().get(i)?;
            Some((&**name, path.get(start..end)?))
        })
    }

    pub fn param_count(&self) -> usize {
        self.param_names.len()
    }

    /// The rest of `path` after the matched prefix, always starting with `/`: `/chat` for
    /// `/v1/*` on `/v1/chat`, `/` for `/v1/*` on `/v1`, and `/` for exact and parameter
    /// matches (they consume the whole path).
    pub fn stripped_path<'p>(&self, path: &'p str) -> &'p str {
        match path.get(self.matched_prefix_len..) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => "/",
        }
    }
}

/// `(start, end)` byte ranges of parameter values; inline up to [`INLINE_PARAMS`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParamRanges {
    Inline {
        len: u8,
        slots: [(usize, usize); INLINE_PARAMS],
    },
    Spilled(Vec<(usize, usize)>),
}

impl ParamRanges {
    fn with_capacity(count: usize) -> ParamRanges {
        if count <= INLINE_PARAMS {
            ParamRanges::Inline {
                len: 0,
                slots: [(0, 0); INLINE_PARAMS],
            }
        } else {
            ParamRanges::Spilled(Vec::with_capacity(count))
        }
    }

    fn push(&mut self, range: (usize, usize)) {
        match self {
            ParamRanges::Inline { len, slots } => {
                if let Some(slot) = slots.get_mut(usize::from(*len)) {
                    *slot = range;
                    *len += 1;
                }
            }
            ParamRanges::Spilled(ranges) => ranges.push(range),
        }
    }

    fn as_slice(&self) -> &[(usize, usize)] {
        match self {
            ParamRanges::Inline { len, slots } => slots.get(..usize::from(*len)).unwrap_or(&[]),
            ParamRanges::Spilled(ranges) => ranges,
        }
    }
}

type PathMap<V> = HashMap<Box<str>, V, BuildHasherDefault<PathHasher>>;

/// Indices into `Router::routes`, sorted by `(priority, insertion order)`.
type Bucket = Box<[usize]>;

/// The compiled routing table of one gateway. Immutable; cheap to share across workers.
#[derive(Debug)]
pub struct Router {
    routes: Box<[Route]>,
    exact: PathMap<Bucket>,
    prefixes: PathMap<Bucket>,
    /// `prefix_lens[n]`: some prefix rule's base is `n` bytes long.
    prefix_lens: Box<[bool]>,
    /// The parameter trie; `nodes[ROOT]` always exists.
    nodes: Box<[Node]>,
}

#[derive(Debug)]
struct Route {
    id: u32,
    methods: MethodSet,
    priority: i32,
    headers: Box<[(Box<str>, Box<str>)]>,
    /// For parameter routes: the names, and the segment index each captures.
    param_names: Box<[Box<str>]>,
    param_segments: Box<[usize]>,
}

impl Route {
    fn headers_match<'h>(&self, header: &impl Fn(&str) -> Option<&'h str>) -> bool {
        self.headers
            .iter()
            .all(|(name, value)| header(name) == Some(&**value))
    }
}

const ROOT: usize = 0;

#[derive(Debug)]
struct Node {
    /// Where the walk backtracks to; `ROOT`'s parent is itself (never followed).
    parent: usize,
    statics: StaticChildren,
    param: Option<usize>,
    /// Parameter routes whose last segment ends at this node.
    routes: Bucket,
}

/// A trie node while [`Router::build`] is still adding routes.
#[derive(Default)]
struct NodeDraft {
    parent: usize,
    statics: PathMap<usize>,
    param: Option<usize>,
    routes: Vec<usize>,
}

/// Up to this many static children are scanned linearly: comparing a few short strings is
/// cheaper than hashing the segment, and most nodes below the root have one or two children.
const LINEAR_CHILDREN: usize = 8;

#[derive(Debug)]
enum StaticChildren {
    Linear(Box<[(Box<str>, usize)]>),
    Hashed(PathMap<usize>),
}

impl StaticChildren {
    fn new(children: PathMap<usize>) -> StaticChildren {
        if children.len() <= LINEAR_CHILDREN {
            StaticChildren::Linear(children.into_iter().collect())
        } else {
            StaticChildren::Hashed(children)
        }
    }

    #[inline]
    fn get(&self, segment: &str) -> Option<usize> {
        match self {
            StaticChildren::Linear(children) => children
                .iter()
                .find(|(text, _)| **text == *segment)
                .map(|&(_, node)| node),
            StaticChildren::Hashed(children) => children.get(segment).copied(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            StaticChildren::Linear(children) => children.is_empty(),
            StaticChildren::Hashed(children) => children.is_empty(),
        }
    }
}

/// Lookup state threaded through the tiers.
struct Probe<'f, F> {
    method: Method,
    header: &'f F,
    /// Union of the methods of candidates whose path and headers matched but method did not.
    allow: MethodSet,
}

impl Router {
    /// Compiles the rules. Infallible: patterns were validated by [`parse_pattern`].
    /// `routes`' order is the insertion order that breaks the last ties.
    pub fn build(routes: Vec<RouteSpec>) -> Router {
        let mut exact: PathMap<Vec<usize>> = PathMap::default();
        let mut prefixes: PathMap<Vec<usize>> = PathMap::default();
        let mut nodes: Vec<NodeDraft> = vec![NodeDraft::default()];
        let mut compiled = Vec::with_capacity(routes.len());

        for (index, spec) in routes.into_iter().enumerate() {
            let mut param_names = Vec::new();
            let mut param_segments = Vec::new();
            match &spec.pattern.shape {
                Shape::Exact => exact
                    .entry(spec.pattern.source.clone())
                    .or_default()
                    .push(index),
                Shape::Prefix => {
                    let base = spec.pattern.prefix().unwrap_or_default();
                    prefixes.entry(base.into()).or_default().push(index);
                }
                Shape::Param(segments) => {
                    let mut node = ROOT;
                    for (position, segment) in segments.iter().enumerate() {
                        let next = nodes.len();
                        let existing = match segment {
                            Segment::Static(text) => nodes[node].statics.get(text).copied(),
                            Segment::Param(_) => nodes[node].param,
                        };
                        node = existing.unwrap_or_else(|| {
                            match segment {
                                Segment::Static(text) => {
                                    nodes[node].statics.insert(text.clone(), next);
                                }
                                Segment::Param(_) => nodes[node].param = Some(next),
                            }
                            nodes.push(NodeDraft {
                                parent: node,
                                ..NodeDraft::default()
                            });
                            next
                        });
                        if let Segment::Param(name) = segment {
                            param_names.push(name.clone());
                            param_segments.push(position);
                        }
                    }
                    nodes[node].routes.push(index);
                }
            }
            compiled.push(Route {
                id: spec.id,
                methods: spec.methods,
                priority: spec.priority,
                headers: spec
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name.to_ascii_lowercase().into(), value.into()))
                    .collect(),
                param_names: param_names.into(),
                param_segments: param_segments.into(),
            });
        }

        let seal = |mut bucket: Vec<usize>| -> Bucket {
            bucket.sort_by_key(|&i| (compiled[i].priority, i));
            bucket.into()
        };
        let longest_base = prefixes.keys().map(|base| base.len() + 1).max();
        let mut prefix_lens = vec![false; longest_base.unwrap_or(0)];
        for base in prefixes.keys() {
            prefix_lens[base.len()] = true;
        }
        Router {
            exact: exact.into_iter().map(|(k, v)| (k, seal(v))).collect(),
            prefixes: prefixes.into_iter().map(|(k, v)| (k, seal(v))).collect(),
            prefix_lens: prefix_lens.into(),
            nodes: nodes
                .into_iter()
                .map(|draft| Node {
                    parent: draft.parent,
                    statics: StaticChildren::new(draft.statics),
                    param: draft.param,
                    routes: seal(draft.routes),
                })
                .collect(),
            routes: compiled.into(),
        }
    }

    /// Number of rules compiled in.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Routes one request. `path` is the raw path without the query string; `header` returns
    /// the value of a request header given its lowercase name (see the module doc).
    pub fn lookup<'h>(
        &self,
        method: Method,
        path: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Lookup<'_> {
        if !path.starts_with('/') {
            return Lookup::NotFound;
        }
        let mut probe = Probe {
            method,
            header: &header,
            allow: MethodSet::EMPTY,
        };

        if let Some(bucket) = self.exact.get(path)
            && let Some(index) = self.pick(bucket, &mut probe)
        {
            return self.matched(index, path, path.len());
        }
        if let Some(index) = self.match_params(path, &mut probe) {
            return self.matched(index, path, path.len());
        }
        if let Some((index, base_len)) = self.match_prefix(path, &mut probe) {
            return self.matched(index, path, base_len);
        }

        if probe.allow.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed { allow: probe.allow }
        }
    }

    /// The first route in `bucket` whose methods and headers match; records near misses.
    fn pick<'h, F>(&self, bucket: &[usize], probe: &mut Probe<'_, F>) -> Option<usize>
    where
        F: Fn(&str) -> Option<&'h str>,
    {
        for &index in bucket {
            let Some(route) = self.routes.get(index) else {
                continue;
            };
            if route.methods.contains(probe.method) {
                if route.headers_match(probe.header) {
                    return Some(index);
                }
            } else if route.headers_match(probe.header) {
                probe.allow = probe.allow.union(route.methods);
            }
        }
        None
    }

    /// Depth-first walk of the parameter trie, static child before parameter child.
    ///
    /// State: `node` and `start`, the offset of the path segment to match against `node`'s
    /// children; `static_tried` when we came back to `node` after its static child failed.
    /// Backtracking follows parent links and moves `start` back one segment per level.
    fn match_params<'h, F>(&self, path: &str, probe: &mut Probe<'_, F>) -> Option<usize>
    where
        F: Fn(&str) -> Option<&'h str>,
    {
        let root = self.nodes.get(ROOT)?;
        if root.statics.is_empty() && root.param.is_none() {
            return None;
        }
        let mut node = ROOT;
        let mut start = 1; // just after the leading '/'
        let mut static_tried = false;
        loop {
            let end = segment_end(path, start);
            let segment = path.get(start..end)?;
            let is_last = end == path.len();
            let here = self.nodes.get(node)?;
            let static_child = if static_tried {
                None
            } else {
                here.statics.get(segment)
            };
            let child = static_child.or(here.param.filter(|_| !segment.is_empty()));

            // On failure: the node that failed, and the offset of the segment its edge matched.
            let (mut failed, mut failed_start) = match child {
                Some(child) if !is_last => {
                    node = child;
                    start += segment.len() + 1;
                    static_tried = false;
                    continue;
                }
                Some(child) => {
                    if let Some(index) = self.pick(&self.nodes.get(child)?.routes, probe) {
                        return Some(index);
                    }
                    (child, start)
                }
                None if node == ROOT => return None,
                None => (node, previous_segment_start(path, start)),
            };
            // Climb until an ancestor still has its parameter child to try.
            loop {
                let parent = self.nodes.get(failed)?.parent;
                if self.nodes.get(parent)?.param != Some(failed) {
                    node = parent;
                    start = failed_start;
                    static_tried = true;
                    break;
                }
                if parent == ROOT {
                    return None;
                }
                failed = parent;
                failed_start = previous_segment_start(path, failed_start);
            }
        }
    }

    /// Longest `/`-boundary prefix of `path` that some prefix rule's base equals.
    fn match_prefix<'h, F>(&self, path: &str, probe: &mut Probe<'_, F>) -> Option<(usize, usize)>
    where
        F: Fn(&str) -> Option<&'h str>,
    {
        let bytes = path.as_bytes();
        // Base lengths are < prefix_lens.len(), so boundaries past that need no look.
        let scan_end = bytes.len().min(self.prefix_lens.len());
        let boundaries = (0..scan_end).rev().filter(|&i| bytes.get(i) == Some(&b'/'));
        for base_len in std::iter::once(bytes.len()).chain(boundaries) {
            if self.prefix_lens.get(base_len) != Some(&true) {
                continue;
            }
            let Some(bucket) = path
                .get(..base_len)
                .and_then(|base| self.prefixes.get(base))
            else {
                continue;
            };
            if let Some(index) = self.pick(bucket, probe) {
                return Some((index, base_len));
            }
        }
        None
    }

    fn matched(&self, index: usize, path: &str, consumed: usize) -> Lookup<'_> {
        let Some(route) = self.routes.get(index) else {
            return Lookup::NotFound;
        };
        let mut param_ranges = ParamRanges::with_capacity(route.param_segments.len());
        let (mut position, mut start) = (0, 1);
        for &wanted in &route.param_segments {
            while position < wanted {
                start = segment_end(path, start) + 1;
                position += 1;
            }
            param_ranges.push((start, segment_end(path, start)));
        }
        Lookup::Matched(RouteMatch {
            id: route.id,
            matched_prefix_len: consumed,
            param_names: &route.param_names,
            param_ranges,
        })
    }
}

impl Default for Router {
    fn default() -> Router {
        Router::build(Vec::new())
    }
}

/// End offset of the segment starting at `start`: the next '/' or the end of the path.
/// A byte loop: segments are short, and this beats `str::find`'s general searcher here.
#[inline]
fn segment_end(path: &str, start: usize) -> usize {
    let bytes = path.as_bytes();
    bytes
        .get(start..)
        .and_then(|rest| rest.iter().position(|&b| b == b'/'))
        .map_or(bytes.len(), |slash| start + slash)
}

/// Offset of the segment before the one starting at `start` (`start` is past a '/').
fn previous_segment_start(path: &str, start: usize) -> usize {
    path.get(..start.saturating_sub(1))
        .and_then(|before| before.rfind('/'))
        .map_or(1, |slash| slash + 1)
}

// ---------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------

/// A fast, unkeyed hasher for path strings (FxHash's word loop, murmur3's finaliser so
/// hashbrown's bucket and tag bits are well mixed). Unkeyed is fine here: see the module doc.
#[derive(Debug, Default, Clone, Copy)]
struct PathHasher(u64);

impl PathHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for PathHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.add(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, pattern: &str) -> RouteSpec {
        RouteSpec {
            id,
            pattern: parse_pattern(pattern).expect("test pattern is valid"),
            methods: MethodSet::ANY,
            headers: Vec::new(),
            priority: 0,
        }
    }

    fn with_methods(mut route: RouteSpec, methods: &[&str]) -> RouteSpec {
        route.methods = MethodSet::parse(methods).expect("test methods are valid");
        route
    }

    fn with_priority(mut route: RouteSpec, priority: i32) -> RouteSpec {
        route.priority = priority;
        route
    }

    fn with_header(mut route: RouteSpec, name: &str, value: &str) -> RouteSpec {
        route.headers.push((name.to_owned(), value.to_owned()));
        route
    }

    fn no_headers(_: &str) -> Option<&'static str> {
        None
    }

    /// The id that `method path` routes to, or `None` when it does not match.
    fn route_id(router: &Router, method: Method, path: &str) -> Option<u32> {
        match router.lookup(method, path, no_headers) {
            Lookup::Matched(m) => Some(m.id),
            _ => None,
        }
    }

    fn matched<'r>(router: &'r Router, method: Method, path: &str) -> RouteMatch<'r> {
        match router.lookup(method, path, no_headers) {
            Lookup::Matched(m) => m,
            other => panic!("{method} {path}: expected a match, got {other:?}"),
        }
    }

    // --- exact -------------------------------------------------------------------------

    #[test]
    fn exact_pattern_matches_only_the_identical_path_and_consumes_it_all() {
        let router = Router::build(vec![spec(7, "/v1/chat")]);
        let m = matched(&router, Method::Get, "/v1/chat");
        assert_eq!(m.id, 7);
        assert_eq!(m.matched_prefix_len, "/v1/chat".len());
        assert_eq!(m.stripped_path("/v1/chat"), "/");
        assert_eq!(m.param_count(), 0);
        assert_eq!(route_id(&router, Method::Get, "/v1/cha"), None);
        assert_eq!(route_id(&router, Method::Get, "/v1/chats"), None);
        assert_eq!(route_id(&router, Method::Get, "/v1/chat/x"), None);
    }

    #[test]
    fn trailing_slash_is_significant_for_exact_paths() {
        let router = Router::build(vec![spec(1, "/v1/chat"), spec(2, "/v1/chat/")]);
        assert_eq!(route_id(&router, Method::Get, "/v1/chat"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/v1/chat/"), Some(2));
        let only_without = Router::build(vec![spec(1, "/v1/chat")]);
        assert_eq!(route_id(&only_without, Method::Get, "/v1/chat/"), None);
    }

    #[test]
    fn root_exact_pattern_matches_only_root() {
        let router = Router::build(vec![spec(1, "/")]);
        assert_eq!(route_id(&router, Method::Get, "/"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/a"), None);
    }

    #[test]
    fn router_matches_raw_bytes_without_percent_decoding() {
        let encoded = Router::build(vec![spec(1, "/caf%C3%A9")]);
        assert_eq!(route_id(&encoded, Method::Get, "/caf%C3%A9"), Some(1));
        assert_eq!(route_id(&encoded, Method::Get, "/café"), None);
        assert_eq!(route_id(&encoded, Method::Get, "/caf%c3%a9"), None);
        let decoded = Router::build(vec![spec(1, "/café")]);
        assert_eq!(route_id(&decoded, Method::Get, "/café"), Some(1));
        assert_eq!(route_id(&decoded, Method::Get, "/caf%C3%A9"), None);
    }

    #[test]
    fn path_without_leading_slash_matches_nothing_not_even_catch_all() {
        let router = Router::build(vec![spec(1, "/*")]);
        assert_eq!(
            router.lookup(Method::Options, "*", no_headers),
            Lookup::NotFound
        );
        assert_eq!(router.lookup(Method::Get, "", no_headers), Lookup::NotFound);
    }

    // --- parameters --------------------------------------------------------------------

    #[test]
    fn parameter_pattern_captures_each_parameter_by_name() {
        let router = Router::build(vec![spec(3, "/users/{id}/posts/{post_id}")]);
        let path = "/users/42/posts/abc-9";
        let m = matched(&router, Method::Get, path);
        assert_eq!(m.id, 3);
        assert_eq!(m.param(path, "id"), Some("42"));
        assert_eq!(m.param(path, "post_id"), Some("abc-9"));
        assert_eq!(m.param(path, "nope"), None);
        assert_eq!(
            m.params(path).collect::<Vec<_>>(),
            vec![("id", "42"), ("post_id", "abc-9")]
        );
        assert_eq!(m.matched_prefix_len, path.len());
        assert_eq!(m.stripped_path(path), "/");
    }

    #[test]
    fn deep_parameter_patterns_capture_more_than_the_inline_four() {
        let pattern = "/t/{a}/x/{b}/{c}/y/{d}/{e}/{f}";
        let router = Router::build(vec![spec(1, "/t/{a}/{b}"), spec(2, pattern)]);
        let path = "/t/1/x/2/3/y/4/5/6";
        let m = matched(&router, Method::Get, path);
        assert_eq!(m.id, 2);
        let values: Vec<_> = m.params(path).map(|(_, v)| v).collect();
        assert_eq!(values, ["1", "2", "3", "4", "5", "6"]);
        assert_eq!(m.param(path, "f"), Some("6"));
        // Four parameters still fit inline.
        let four = Router::build(vec![spec(1, "/{a}/{b}/{c}/{d}")]);
        let m = matched(&four, Method::Get, "/w/x/y/z");
        assert!(matches!(m.param_ranges, ParamRanges::Inline { len: 4, .. }));
        assert_eq!(m.param("/w/x/y/z", "d"), Some("z"));
    }

    #[test]
    fn parameter_matches_one_non_empty_segment() {
        let router = Router::build(vec![spec(1, "/users/{id}")]);
        assert_eq!(route_id(&router, Method::Get, "/users/1"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/users/"), None);
        assert_eq!(route_id(&router, Method::Get, "/users"), None);
        assert_eq!(route_id(&router, Method::Get, "/users/1/2"), None);
        assert_eq!(route_id(&router, Method::Get, "/users/1/"), None);
    }

    #[test]
    fn static_segment_beats_parameter_at_each_segment() {
        let router = Router::build(vec![
            spec(1, "/users/{id}/{x}"),
            spec(2, "/users/me/{x}"),
            spec(3, "/users/{id}/settings"),
        ]);
        // Segment 2 decides first: static "me" beats {id}, even though rule 3 has a static
        // segment later.
        assert_eq!(
            route_id(&router, Method::Get, "/users/me/settings"),
            Some(2)
        );
        assert_eq!(route_id(&router, Method::Get, "/users/me/1"), Some(2));
        assert_eq!(route_id(&router, Method::Get, "/users/7/settings"), Some(3));
        assert_eq!(route_id(&router, Method::Get, "/users/7/1"), Some(1));
    }

    #[test]
    fn static_branch_that_dead_ends_falls_back_to_the_parameter_branch() {
        let router = Router::build(vec![
            spec(1, "/users/me/posts"),
            spec(2, "/users/{id}/comments"),
            spec(3, "/a/b/c/{x}"),
            spec(4, "/a/{p}/{q}/{r}"),
        ]);
        let path = "/users/me/comments";
        let m = matched(&router, Method::Get, path);
        assert_eq!(m.id, 2);
        assert_eq!(m.param(path, "id"), Some("me"));
        // Backtracking over more than one level.
        let path = "/a/b/z/9";
        let m = matched(&router, Method::Get, path);
        assert_eq!(m.id, 4);
        assert_eq!(
            m.params(path).collect::<Vec<_>>(),
            [("p", "b"), ("q", "z"), ("r", "9")]
        );
        assert_eq!(route_id(&router, Method::Get, "/a/b/c/9"), Some(3));
        assert_eq!(route_id(&router, Method::Get, "/a/b/c"), None);
    }

    #[test]
    fn parameter_routes_differing_only_in_names_share_a_trie_path() {
        let router = Router::build(vec![
            with_methods(spec(1, "/items/{id}"), &["GET"]),
            with_methods(spec(2, "/items/{item}"), &["DELETE"]),
        ]);
        let path = "/items/5";
        let get = matched(&router, Method::Get, path);
        assert_eq!((get.id, get.param(path, "id")), (1, Some("5")));
        let delete = matched(&router, Method::Delete, path);
        assert_eq!((delete.id, delete.param(path, "item")), (2, Some("5")));
    }

    #[test]
    fn param_given_a_different_path_returns_none_instead_of_panicking() {
        let router = Router::build(vec![spec(1, "/users/{id}/x")]);
        let m = matched(&router, Method::Get, "/users/123456/x");
        assert_eq!(m.param("/u", "id"), None);
        assert_eq!(m.param("/users/é", "id"), None); // range splits a UTF-8 character
        assert_eq!(m.stripped_path("/u"), "/");
    }

    // --- prefixes ----------------------------------------------------------------------

    #[test]
    fn prefix_matches_its_base_with_or_without_slash_and_anything_deeper() {
        let router = Router::build(vec![spec(1, "/v1/*")]);
        for (path, stripped) in [
            ("/v1", "/"),
            ("/v1/", "/"),
            ("/v1/chat", "/chat"),
            ("/v1/anything/deeper", "/anything/deeper"),
        ] {
            let m = matched(&router, Method::Get, path);
            assert_eq!(m.id, 1, "{path}");
            assert_eq!(m.matched_prefix_len, 3, "{path}");
            assert_eq!(m.stripped_path(path), stripped, "{path}");
        }
    }

    #[test]
    fn prefix_does_not_match_across_a_segment_boundary() {
        let router = Router::build(vec![spec(1, "/v1/*")]);
        assert_eq!(route_id(&router, Method::Get, "/v1x"), None);
        assert_eq!(route_id(&router, Method::Get, "/v1x/chat"), None);
        assert_eq!(route_id(&router, Method::Get, "/v"), None);
        assert_eq!(route_id(&router, Method::Get, "/"), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let router = Router::build(vec![spec(1, "/*"), spec(2, "/v1/*"), spec(3, "/v1/chat/*")]);
        let m = matched(&router, Method::Get, "/v1/chat/completions");
        assert_eq!(m.id, 3);
        assert_eq!(m.stripped_path("/v1/chat/completions"), "/completions");
        assert_eq!(route_id(&router, Method::Get, "/v1/models"), Some(2));
        assert_eq!(route_id(&router, Method::Get, "/v2/models"), Some(1));
    }

    #[test]
    fn catch_all_matches_every_path_and_strips_nothing() {
        let router = Router::build(vec![spec(1, "/*")]);
        for path in ["/", "/a", "/a/b/c/", "//x"] {
            let m = matched(&router, Method::Get, path);
            assert_eq!((m.id, m.matched_prefix_len), (1, 0), "{path}");
            assert_eq!(m.stripped_path(path), path);
        }
    }

    #[test]
    fn catch_all_loses_to_every_other_rule() {
        let router = Router::build(vec![
            with_priority(spec(0, "/*"), i32::MIN),
            spec(1, "/v1/chat"),
            spec(2, "/users/{id}"),
            spec(3, "/v1/*"),
        ]);
        assert_eq!(route_id(&router, Method::Get, "/v1/chat"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/users/9"), Some(2));
        assert_eq!(route_id(&router, Method::Get, "/v1/other"), Some(3));
        assert_eq!(route_id(&router, Method::Get, "/other"), Some(0));
    }

    // --- specificity and ties ----------------------------------------------------------

    #[test]
    fn exact_beats_parameter_beats_prefix_regardless_of_priority() {
        let router = Router::build(vec![
            with_priority(spec(1, "/users/*"), -100),
            with_priority(spec(2, "/users/{id}"), -50),
            with_priority(spec(3, "/users/me"), 100),
        ]);
        assert_eq!(route_id(&router, Method::Get, "/users/me"), Some(3));
        assert_eq!(route_id(&router, Method::Get, "/users/42"), Some(2));
        assert_eq!(route_id(&router, Method::Get, "/users/42/x"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/users"), Some(1));
    }

    #[test]
    fn lower_priority_value_wins_between_equally_specific_rules() {
        let router = Router::build(vec![
            with_priority(spec(1, "/v1/chat"), 10),
            with_priority(spec(2, "/v1/chat"), -1),
            with_priority(spec(3, "/v1/chat"), 0),
            with_priority(spec(4, "/p/{a}"), 5),
            with_priority(spec(5, "/p/{b}"), 1),
            with_priority(spec(6, "/x/*"), 2),
            with_priority(spec(7, "/x/*"), 1),
        ]);
        assert_eq!(route_id(&router, Method::Get, "/v1/chat"), Some(2));
        assert_eq!(route_id(&router, Method::Get, "/p/1"), Some(5));
        assert_eq!(route_id(&router, Method::Get, "/x/1"), Some(7));
    }

    #[test]
    fn insertion_order_breaks_priority_ties() {
        let router = Router::build(vec![
            spec(10, "/v1/chat"),
            spec(11, "/v1/chat"),
            spec(20, "/p/{a}"),
            spec(21, "/p/{b}"),
            spec(30, "/x/*"),
            spec(31, "/x/*"),
        ]);
        assert_eq!(route_id(&router, Method::Get, "/v1/chat"), Some(10));
        assert_eq!(route_id(&router, Method::Get, "/p/1"), Some(20));
        assert_eq!(route_id(&router, Method::Get, "/x/1"), Some(30));
    }

    // --- methods -----------------------------------------------------------------------

    #[test]
    fn head_request_matches_a_get_rule() {
        let router = Router::build(vec![with_methods(spec(1, "/doc"), &["GET"])]);
        assert_eq!(route_id(&router, Method::Head, "/doc"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/doc"), Some(1));
        let head_only = Router::build(vec![with_methods(spec(1, "/doc"), &["HEAD"])]);
        assert_eq!(
            head_only.lookup(Method::Get, "/doc", no_headers),
            Lookup::MethodNotAllowed {
                allow: MethodSet::single(Method::Head)
            }
        );
    }

    #[test]
    fn method_mismatch_returns_405_with_the_union_of_candidate_methods() {
        let router = Router::build(vec![
            with_methods(spec(1, "/items/{id}"), &["GET"]),
            with_methods(spec(2, "/items/{id}"), &["PUT"]),
            with_methods(spec(3, "/items/*"), &["DELETE"]),
            with_methods(spec(4, "/other"), &["PATCH"]),
        ]);
        let Lookup::MethodNotAllowed { allow } =
            router.lookup(Method::Post, "/items/1", no_headers)
        else {
            panic!("expected 405");
        };
        assert_eq!(allow.to_string(), "GET, HEAD, PUT, DELETE");
        assert_eq!(
            router.lookup(Method::Post, "/nowhere", no_headers),
            Lookup::NotFound
        );
    }

    #[test]
    fn method_mismatch_on_a_specific_rule_falls_through_to_a_less_specific_one() {
        let router = Router::build(vec![
            with_methods(spec(1, "/v1/chat"), &["POST"]),
            with_methods(spec(2, "/v1/*"), &["GET"]),
        ]);
        assert_eq!(route_id(&router, Method::Post, "/v1/chat"), Some(1));
        assert_eq!(route_id(&router, Method::Get, "/v1/chat"), Some(2));
        let Lookup::MethodNotAllowed { allow } = router.lookup(Method::Put, "/v1/chat", no_headers)
        else {
            panic!("expected 405");
        };
        assert_eq!(allow.to_string(), "GET, HEAD, POST");
    }

    // --- headers -----------------------------------------------------------------------

    #[test]
    fn all_header_conditions_must_match_exactly() {
        let router = Router::build(vec![
            with_header(
                with_header(spec(1, "/api"), "X-Version", "2"),
                "x-tenant",
                "a",
            ),
            spec(2, "/api"),
        ]);
        let lookup = |headers: &'static [(&'static str, &'static str)]| {
            router.lookup(Method::Get, "/api", |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            })
        };
        let id = |l: Lookup<'_>| match l {
            Lookup::Matched(m) => Some(m.id),
            _ => None,
        };
        assert_eq!(
            id(lookup(&[("x-version", "2"), ("X-Tenant", "a")])),
            Some(1)
        );
        assert_eq!(id(lookup(&[("x-version", "2")])), Some(2));
        assert_eq!(
            id(lookup(&[("x-version", "2 "), ("x-tenant", "a")])),
            Some(2)
        );
        assert_eq!(
            id(lookup(&[("x-version", "2"), ("x-tenant", "A")])),
            Some(2)
        );
    }

    #[test]
    fn header_callback_is_asked_with_lowercase_names() {
        let router = Router::build(vec![with_header(spec(1, "/api"), "X-Version", "2")]);
        let lookup = router.lookup(Method::Get, "/api", |name: &str| {
            (name == "x-version").then_some("2")
        });
        assert!(matches!(lookup, Lookup::Matched(RouteMatch { id: 1, .. })));
    }

    #[test]
    fn header_mismatch_is_404_not_405() {
        let router = Router::build(vec![with_methods(
            with_header(spec(1, "/api"), "x-version", "2"),
            &["POST"],
        )]);
        // Headers do not match: the rule is not a candidate, whatever the method.
        assert_eq!(
            router.lookup(Method::Get, "/api", no_headers),
            Lookup::NotFound
        );
        assert_eq!(
            router.lookup(Method::Post, "/api", no_headers),
            Lookup::NotFound
        );
        // Headers match, method does not: 405.
        assert_eq!(
            router.lookup(Method::Get, "/api", |_: &str| Some("2")),
            Lookup::MethodNotAllowed {
                allow: MethodSet::single(Method::Post)
            }
        );
    }

    #[test]
    fn empty_router_finds_nothing() {
        let router = Router::default();
        assert!(router.is_empty());
        assert_eq!(
            router.lookup(Method::Get, "/", no_headers),
            Lookup::NotFound
        );
    }

    #[test]
    fn many_static_siblings_are_found_whether_scanned_or_hashed() {
        let mut specs: Vec<_> = (0..20)
            .map(|i| spec(i, &format!("/n/s{i}/{{id}}")))
            .collect();
        specs.push(spec(100, "/n/{any}/{id}"));
        specs.push(spec(101, "/few/a/{id}"));
        let router = Router::build(specs);
        for i in 0..20 {
            assert_eq!(
                route_id(&router, Method::Get, &format!("/n/s{i}/1")),
                Some(i)
            );
        }
        assert_eq!(route_id(&router, Method::Get, "/n/s20/1"), Some(100));
        assert_eq!(route_id(&router, Method::Get, "/few/a/1"), Some(101));
        assert_eq!(route_id(&router, Method::Get, "/few/b/1"), None);
    }

    /// Brute force over a small universe: the router must agree with the contract applied
    /// literally (every rule tested, candidates ranked, first full match wins, else 405
    /// with the union over header-matching candidates, else 404).
    #[test]
    fn router_agrees_with_a_literal_reading_of_the_contract() {
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: usize) -> usize {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 33) % n as u64) as usize
            }
        }

        /// Rank of `pattern` as a candidate for `path`, smaller is more specific; `None` when
        /// the pattern does not match the path.
        fn rank(pattern: &str, path: &str) -> Option<(u8, Vec<bool>, usize, usize)> {
            let segments = |s: &str| s.split('/').skip(1).map(str::to_owned).collect::<Vec<_>>();
            if let Some(base) = pattern.strip_suffix("/*") {
                let ok = path == base || path.starts_with(&format!("{base}/"));
                return ok.then(|| (2, Vec::new(), usize::MAX - base.len(), base.len()));
            }
            if !pattern.contains('{') {
                return (pattern == path).then(|| (0, Vec::new(), 0, path.len()));
            }
            let (pat, got) = (segments(pattern), segments(path));
            if pat.len() != got.len() {
                return None;
            }
            let mut shape = Vec::new();
            for (p, g) in pat.iter().zip(&got) {
                let is_param = p.starts_with('{');
                if (is_param && g.is_empty()) || (!is_param && p != g) {
                    return None;
                }
                shape.push(is_param);
            }
            Some((1, shape, 0, path.len()))
        }

        let mut rng = Rng(0x5eed);
        let words = ["a", "b", ""];
        let methods = [Method::Get, Method::Post, Method::Put, Method::Head];
        for round in 0..300 {
            let mut specs = Vec::new();
            for id in 0..rng.below(12) + 1 {
                let depth = rng.below(3) + 1;
                let mut pattern = String::new();
                let mut params = 0;
                for _ in 0..depth {
                    pattern.push('/');
                    if rng.below(3) == 0 {
                        pattern.push_str(&format!("{{p{params}}}"));
                        params += 1;
                    } else {
                        pattern.push_str(words[rng.below(words.len())]);
                    }
                }
                if params == 0 && rng.below(3) == 0 {
                    pattern.push_str("/*");
                }
                let method_set = match rng.below(3) {
                    0 => MethodSet::ANY,
                    _ => MethodSet::single(methods[rng.below(methods.len())])
                        .with(methods[rng.below(methods.len())]),
                };
                let mut route = spec(id as u32, &pattern);
                route.methods = method_set;
                route.priority = rng.below(2) as i32;
                if rng.below(4) == 0 {
                    route.headers.push(("X-H".to_owned(), "1".to_owned()));
                }
                specs.push(route);
            }
            let router = Router::build(specs.clone());
            for _ in 0..40 {
                let mut path = String::new();
                for _ in 0..rng.below(4) {
                    path.push('/');
                    path.push_str(["a", "b", "c", ""][rng.below(4)]);
                }
                if path.is_empty() {
                    path.push('/');
                }
                let method = methods[rng.below(methods.len())];
                let has_header = rng.below(2) == 0;
                let header = |name: &str| (has_header && name == "x-h").then_some("1");

                let mut candidates: Vec<_> = specs
                    .iter()
                    .enumerate()
                    .filter_map(|(seq, s)| {
                        let (kind, shape, len_key, consumed) = rank(s.pattern.as_str(), &path)?;
                        Some(((kind, shape, len_key, s.priority, seq), consumed, s))
                    })
                    .collect();
                candidates.sort_by(|a, b| a.0.cmp(&b.0));
                let headers_ok =
                    |s: &RouteSpec| s.headers.iter().all(|(_, v)| header("x-h") == Some(v));
                let expected = match candidates
                    .iter()
                    .find(|(_, _, s)| s.methods.contains(method) && headers_ok(s))
                {
                    Some((_, consumed, s)) => Ok((s.id, *consumed)),
                    None => Err(candidates
                        .iter()
                        .filter(|(_, _, s)| headers_ok(s))
                        .fold(MethodSet::EMPTY, |all, (_, _, s)| all.union(s.methods))),
                };
                let actual = match router.lookup(method, &path, header) {
                    Lookup::Matched(m) => Ok((m.id, m.matched_prefix_len)),
                    Lookup::MethodNotAllowed { allow } => Err(allow),
                    Lookup::NotFound => Err(MethodSet::EMPTY),
                };
                let patterns: Vec<_> = specs.iter().map(|s| s.pattern.as_str()).collect();
                assert_eq!(
                    actual, expected,
                    "round {round}: {method} {path} over {patterns:?}"
                );
            }
        }
    }

    // --- MethodSet / Method ------------------------------------------------------------

    #[test]
    fn rule_without_methods_accepts_any_method() {
        let set = MethodSet::parse::<String>(&[]).expect("empty list is valid");
        assert_eq!(set, MethodSet::ANY);
        assert!(Method::ALL.iter().all(|m| set.contains(*m)));
        assert_eq!(
            set.to_string(),
            "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT"
        );
    }

    #[test]
    fn method_set_parse_is_case_sensitive_and_rejects_unknown_methods() {
        let set = MethodSet::parse(&["POST".to_owned(), "GET".to_owned()]).expect("valid");
        assert_eq!(set.to_string(), "GET, HEAD, POST");
        assert!(!set.contains(Method::Put));
        let err = MethodSet::parse(&["get"]).expect_err("lowercase is not a method");
        assert_eq!(err, UnknownMethod("get".to_owned()));
        assert!(err.to_string().contains("unknown HTTP method \"get\""));
        assert!(MethodSet::parse(&["PROPFIND"]).is_err());
    }

    #[test]
    fn method_from_bytes_round_trips_every_method() {
        for method in Method::ALL {
            assert_eq!(Method::from_bytes(method.as_str().as_bytes()), Some(method));
        }
        assert_eq!(Method::from_bytes(b"get"), None);
        assert_eq!(Method::from_bytes(b""), None);
        let set: MethodSet = [Method::Delete, Method::Get].into_iter().collect();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Method::Get, Method::Head, Method::Delete]
        );
    }

    // --- parse_pattern -----------------------------------------------------------------

    #[test]
    fn parse_pattern_accepts_the_three_forms() {
        let kind = |p: &str| parse_pattern(p).expect("valid pattern").kind();
        assert_eq!(kind("/"), PatternKind::Exact);
        assert_eq!(kind("/v1/chat"), PatternKind::Exact);
        assert_eq!(kind("/v1/chat/"), PatternKind::Exact);
        assert_eq!(kind("/users/{id}"), PatternKind::Param);
        assert_eq!(kind("/users/{_id}/posts/{post_id2}"), PatternKind::Param);
        assert_eq!(kind("/v1/*"), PatternKind::Prefix);
        assert_eq!(kind("/*"), PatternKind::Prefix);
        let p = parse_pattern("/a/{x}/b/{y}").expect("valid");
        assert_eq!(p.param_names().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(p.to_string(), "/a/{x}/b/{y}");
        assert_eq!(parse_pattern("/v1/*").expect("valid").prefix(), Some("/v1"));
        assert_eq!(parse_pattern("/*").expect("valid").prefix(), Some(""));
    }

    #[test]
    fn parse_pattern_rejects_everything_else_with_a_typed_error() {
        let err = |p: &str| parse_pattern(p).expect_err(p);
        assert_eq!(err(""), PatternError::Empty);
        assert!(matches!(
            err("v1"),
            PatternError::MissingLeadingSlash { .. }
        ));
        assert!(matches!(
            err("v1/*"),
            PatternError::MissingLeadingSlash { .. }
        ));
        assert!(matches!(
            err("/a/*/b"),
            PatternError::MisplacedWildcard { .. }
        ));
        assert!(matches!(err("/a*"), PatternError::MisplacedWildcard { .. }));
        assert!(matches!(
            err("/*/*"),
            PatternError::MisplacedWildcard { .. }
        ));
        assert!(matches!(
            err("/a/*x"),
            PatternError::MisplacedWildcard { .. }
        ));
        assert!(matches!(
            err("/a/{id}/*"),
            PatternError::ParamInPrefix { .. }
        ));
        for bad in [
            "{}", "{1x}", "{id", "id}", "x{id}", "{id}x", "{a-b}", "{{id}}",
        ] {
            assert_eq!(
                err(&format!("/a/{bad}")),
                PatternError::InvalidParamSegment {
                    segment: bad.to_owned()
                },
                "{bad}"
            );
        }
        assert_eq!(
            err("/a/{id}/{id}"),
            PatternError::DuplicateParam {
                name: "id".to_owned()
            }
        );
        assert!(matches!(
            err("/a?b=1"),
            PatternError::InvalidChar { ch: '?', .. }
        ));
        assert!(matches!(
            err("/a#top"),
            PatternError::InvalidChar { ch: '#', .. }
        ));
        assert!(matches!(
            err("/a\n"),
            PatternError::InvalidChar { ch: '\n', .. }
        ));
    }

    #[test]
    fn pattern_errors_name_the_problem() {
        let message = |p: &str| parse_pattern(p).expect_err(p).to_string();
        assert_eq!(
            message("/a/{id"),
            "\"{id\" is not a valid parameter segment; a parameter is a whole segment \
             \"{name}\" with a name matching [A-Za-z_][A-Za-z0-9_]*"
        );
        assert_eq!(message("v1"), "path pattern \"v1\" must start with \"/\"");
        assert!(message("/a/*/b").contains("\"/a/*/b\""));
        assert!(message("/a/{id}/*").contains("cannot contain parameters"));
        assert!(message("").contains("empty"));
    }
}
