//! One persistent client connection, for what [`Client`](crate::Client) (one request per
//! connection) cannot show: keep-alive, pipelining, interim responses, bytes after a
//! `101`, when each byte arrives, and whether the server closed the connection.
//!
//! Responses are read incrementally: bytes past the end of one response stay buffered for
//! the next, so pipelined answers are split exactly where their framing says.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::{Client, Resp, parse_response};

/// How a read that waits for the peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed (EOF) or reset the connection.
    Yes,
    /// Nothing more arrived within the wait and the connection is still open.
    No,
}

/// A keep-alive connection that sends the [`Client`]'s `Host` and default headers with
/// every request (but never `Connection: close` unless told to).
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    client: Client,
}

impl Client {
    /// Opens a persistent connection; panics when it cannot connect.
    pub fn open(&self) -> Connection {
        Connection {
            stream: self.connect(),
            buf: Vec::new(),
            client: self.clone(),
        }
    }

    /// One serialized keep-alive request: request line, `Host`, this client's headers,
    /// `headers`, a `Content-Length` when there is a body (or the method is
    /// POST/PUT/PATCH) and `headers` do not frame it, then the body.
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        self.encode_request(method, path, headers, body, false)
    }

    /// The one request serializer of the harness; `close` adds `Connection: close`.
    pub(crate) fn encode_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) -> Vec<u8> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.host_header()
        );
        for (n, v) in self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(headers.iter().copied())
        {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        let framed = headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        if !framed && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

impl Connection {
    /// See [`Client::request_bytes`].
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        self.client.request_bytes(method, path, headers, body)
    }

    /// Writes one request (see [`Connection::request_bytes`]).
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let bytes = self.request_bytes(method, path, headers, body);
        self.write(&bytes);
    }

    /// Sends one request and reads its (final or interim) response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.send(method, path, headers, body);
        self.read_response(method == "HEAD")
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    /// Writes `bytes` as they are; panics on failure.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Writes `bytes`; the error when the peer has gone.
    pub fn try_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The socket, e.g. to stream a big body or to change its timeouts.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes received but not consumed by a read of a response (the start of a body
    /// after [`Connection::read_head`], bytes after a `101`).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one response head and returns it with an empty body; the body's bytes stay
    /// buffered (see [`Connection::take_buffered`]). Panics on EOF, timeout or garbage.
    pub fn read_head(&mut self) -> Resp {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = parse_response(&self.buf[..end + 4], true).unwrap_or_else(|e| {
                    panic!("bad response head ({e}): {:?}", lossy(&self.buf[..end + 4]))
                });
                self.buf.drain(..end + 4);
                return head;
            }
            match self.fill() {
                Ok(0) => panic!(
                    "connection closed before a response head; got {:?}",
                    lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!("read a response head: {e}; got {:?}", lossy(&self.buf)),
            }
        }
    }

    /// Reads one whole response (an interim 1xx counts as one); panics when none arrives.
    pub fn read_response(&mut self, head_request: bool) -> Resp {
        self.try_read_response(head_request)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Connection::read_response`], with the failure as an `Err`.
    pub fn try_read_response(&mut self, head_request: bool) -> Result<Resp, String> {
        loop {
            if let Some(len) = complete_response_len(&self.buf, head_request)? {
                let resp = parse_response(&self.buf[..len], head_request)?;
                self.buf.drain(..len);
                return Ok(resp);
            }
            match self.fill() {
                Ok(0) => {
                    // A close-delimited body ends here.
                    if find(&self.buf, b"\r\n\r\n").is_some() {
                        let resp = parse_response(&self.buf, head_request)?;
                        self.buf.clear();
                        return Ok(resp);
                    }
                    return Err(format!(
                        "connection closed before a whole response; got {:?}",
                        lossy(&self.buf)
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!("read a response: {e}; got {:?}", lossy(&self.buf)));
                }
            }
        }
    }

    /// Reads whatever arrives within `wait` (buffered bytes first); empty when nothing did.
    pub fn read_available(&mut self, wait: Duration) -> Vec<u8> {
        if !self.buf.is_empty() {
            return self.take_buffered();
        }
        let old = self.stream.read_timeout().ok().flatten();
        let _ = self.stream.set_read_timeout(Some(wait));
        let _ = self.fill();
        let _ = self.stream.set_read_timeout(old);
        self.take_buffered()
    }

    /// Reads until `n` bytes are buffered or `wait` passes, and returns them (at most `n`).
    pub fn read_exact_within(&mut self, n: usize, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        while self.buf.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.fill() {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// Reads and discards until the peer closes or `wait` passes; returns whether it
    /// closed and everything read (after what was buffered).
    pub fn wait_for_close(&mut self, wait: Duration) -> (Closed, Vec<u8>) {
        let deadline = Instant::now() + wait;
        let mut seen = self.take_buffered();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (Closed::No, seen);
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.fill() {
                Ok(0) => return (Closed::Yes, seen),
                Ok(_) => seen.append(&mut self.buf),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return (Closed::No, seen);
                }
                // Reset: closed, too.
                Err(_) => return (Closed::Yes, seen),
            }
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.chars().take(2000).collect()
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the first whole response in `buf`, `None` when more bytes are needed
/// (or the body is close-delimited: it ends at EOF).
fn complete_response_len(buf: &[u8], head_request: bool) -> Result<Option<usize>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_len = end + 4;
    let head = parse_response(&buf[..head_len], true)?;
    if head_request || matches!(head.status, 204 | 304) || (100..200).contains(&head.status) {
        return Ok(Some(head_len));
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Ok(chunked_len(&buf[head_len..])?.map(|n| head_len + n));
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        return Ok((buf.len() >= head_len + len).then_some(head_len + len));
    }
    Ok(None)
}

/// The length of a whole chunked body (with trailers) at the start of `rest`, if whole.
fn chunked_len(rest: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(line_end) = find(&rest[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[at..at + line_end]).map_err(|_| "chunk size")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        at += line_end + 2;
        if size == 0 {
            // Trailer lines up to an empty line.
            loop {
                let Some(line_end) = find(&rest[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += line_end + 2;
                if line_end == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if rest.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}
