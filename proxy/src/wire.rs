//! Bytes on the wire that several stages write: reason phrases, `100 Continue`, decimal
//! numbers, chunk-size lines and header lines, all appended to a `Vec<u8>` without an
//! intermediate `String`. A leaf: it imports nothing from the request flow.

use std::fmt::Write as _;

/// The reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match shardgate_core::http1::reason_phrase(status) {
        "" => "Unknown",
        phrase => phrase,
    }
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends a decimal number without allocating.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    // Digits are written left-aligned into a fixed buffer that is appended whole and the
    // tail cut off: a fixed-size copy is a few inline moves, where a copy of a length
    // known only at run time is a call to `memcpy` (measurable at one per log field).
    let len = decimal_len(n);
    let mut digits = [0u8; 20];
    let mut rest = n;
    for d in digits[..len].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let start = out.len();
    out.extend_from_slice(&digits);
    out.truncate(start + len);
}

/// How many decimal digits `n` has (1 for 0).
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends a chunk-size line (`{len:x}\r\n`).
pub fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let _ = write!(ByteWriter(out), "{len:x}\r\n");
}

/// Appends `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The connection preface a client with prior knowledge opens with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` (the first bytes of a plain connection) is, or may still become, the
/// HTTP/2 preface: `Some(true)` complete, `Some(false)` a prefix of it so far, `None` not.
pub fn h2_preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(H2_PREFACE.len());
    (buf[..n] == H2_PREFACE[..n]).then_some(n == H2_PREFACE.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_chunk_sizes_format_like_std() {
        let powers = (0..20).map(|e| 10u64.pow(e));
        let edges = powers.flat_map(|p| [p - 1, p, p + 1]);
        for n in edges.chain([7, 12345, u64::MAX - 1, u64::MAX]) {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
        let mut out = Vec::new();
        push_chunk_size(&mut out, 255);
        assert_eq!(out, b"ff\r\n");
    }

    #[test]
    fn the_h2_preface_is_told_apart_from_an_http11_head_byte_by_byte() {
        assert_eq!(h2_preface(b""), Some(false));
        assert_eq!(h2_preface(b"PRI * HT"), Some(false));
        assert_eq!(h2_preface(H2_PREFACE), Some(true));
        assert_eq!(
            h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(true)
        );
        assert_eq!(h2_preface(b"POST / HTTP/1.1\r\n"), None);
        assert_eq!(h2_preface(b"PRI * HTTP/1.1\r\n"), None);
    }
}
