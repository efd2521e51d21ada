//! Respond: the responses the gateway writes itself (errors, `100 Continue`) and the
//! helpers that write response heads. Every error body is `{"error": "..."}` (DESIGN.md §4),
//! built here and nowhere else.

use std::fmt::Write as _;

/// The reason phrase for the statuses the gateway produces.
pub fn reason(status: u16) -> &'static str {
    match shardgate_core::http1::reason_phrase(status) {
        "" => "Unknown",
        phrase => phrase,
    }
}

/// An answer the gateway gives without calling an upstream.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    pub status: u16,
    pub message: String,
    /// Extra headers (`Allow`, `WWW-Authenticate`, `Retry-After`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// Extra JSON fields beside `error` (e.g. `retry_after`), already serialized as
    /// `"name":value` pairs.
    pub extra_json: String,
}

impl ErrorResponse {
    pub fn new(status: u16, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            status,
            message: message.into(),
            headers: Vec::new(),
            extra_json: String::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> ErrorResponse {
        self.headers.push((name, value.into()));
        self
    }

    /// Serializes the whole response. `close`: add `Connection: close`. `head`: HEAD
    /// request, no body.
    pub fn encode(&self, close: bool, head: bool, out: &mut Vec<u8>) {
        if self.status == 204 {
            // No content (a CORS preflight answer): no body, no framing headers.
            let mut head_text = format!("HTTP/1.1 204 {}\r\n", reason(204));
            for (name, value) in &self.headers {
                let _ = write!(head_text, "{name}: {value}\r\n");
            }
            if close {
                head_text.push_str("Connection: close\r\n");
            }
            head_text.push_str("\r\n");
            out.extend_from_slice(head_text.as_bytes());
            return;
        }
        let mut body = String::with_capacity(self.message.len() + 16);
        body.push_str("{\"error\":");
        body.push_str(&serde_json::Value::String(self.message.clone()).to_string());
        body.push_str(&self.extra_json);
        body.push('}');
        let mut head_text = String::with_capacity(160);
        let _ = write!(
            head_text,
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(head_text, "{name}: {value}\r\n");
        }
        if close {
            head_text.push_str("Connection: close\r\n");
        }
        head_text.push_str("\r\n");
        out.extend_from_slice(head_text.as_bytes());
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
    }
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends a decimal number without allocating.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a chunk-size line (`{len:x}\r\n`).
pub fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let _ = write!(ByteWriter(out), "{len:x}\r\n");
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_json_with_exact_length() {
        let mut out = Vec::new();
        ErrorResponse::new(405, "method not allowed")
            .header("Allow", "GET, HEAD")
            .encode(true, false, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        assert_eq!(body, r#"{"error":"method not allowed"}"#);
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn decimals_and_chunk_sizes_format_like_std() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        let mut out = Vec::new();
        push_chunk_size(&mut out, 255);
        assert_eq!(out, b"ff\r\n");
    }
}
