//! Route: the request path, normalized, looked up in the gateway's router.
//!
//! The router matches raw bytes, so the path is normalized first (RFC 3986 §6.2.2):
//! percent-encoded unreserved characters are decoded (`%61dmin` is `admin`), other escapes
//! get uppercase hex, and `.`/`..` segments are removed. Without this, `/%61dmin/x` or
//! `/public/../admin` could dodge a rule that protects `/admin/*` while the upstream,
//! decoding them, serves `/admin`. The normalized path is also what is forwarded, so the
//! gateway and the upstream agree on what was requested. `%2F` stays encoded: decoding it
//! would change the path's segments.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_untouched() {
        for p in ["/", "/v1/chat", "/a/b/", "/a//b", "/users/42"] {
            assert!(matches!(normalize(p), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn escapes_and_dot_segments_cannot_dodge_a_rule() {
        assert_eq!(normalize("/%61dmin/x"), "/admin/x");
        assert_eq!(normalize("/public/../admin"), "/admin");
        assert_eq!(normalize("/public/%2e%2e/admin"), "/admin");
        assert_eq!(normalize("/a/./b/."), "/a/b/");
        assert_eq!(normalize("/../../etc"), "/etc");
        assert_eq!(normalize("/a/.."), "/");
    }

    #[test]
    fn reserved_escapes_stay_encoded_with_uppercase_hex() {
        assert_eq!(normalize("/a%2fb"), "/a%2Fb");
        assert_eq!(normalize("/a%20b%zz"), "/a%20b%zz");
    }
}
