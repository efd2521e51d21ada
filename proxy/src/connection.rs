//! Serving one accepted client connection: the entry of the request flow (DESIGN.md §4).
//!
//! The worker's accept loop calls [`serve_connection`] on its own task for every accepted
//! socket, counted in the worker's in-flight set and with panics caught at the task
//! boundary. Everything per connection starts here, so the data plane replaces this file's
//! body, not the worker.
//!
//! Until the data plane lands, every request is answered with
//! `503 {"error":"proxy data plane not implemented yet"}` and the connection is closed.
//! Even this placeholder is careful HTTP/1.1: it reads the whole request head before
//! answering (answering earlier and closing with unread data makes the kernel send RST,
//! which can destroy the response before the client reads it), omits the body for HEAD,
//! and lingers briefly after its FIN for the same reason.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::worker::WorkerContext;

/// Largest request head (request line + headers) read before answering 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers a request may carry before it is answered 431.
const MAX_HEADERS: usize = 100;
/// A client must deliver its request head within this (slowloris bound).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long and how much of an unread request body is drained before
/// closing, so the close does not turn into an RST that races the response.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// Serves one client connection until it is done (or broken). Errors are the
/// connection's own I/O errors; the caller logs them at debug level.
pub async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Rc<WorkerContext>,
) -> io::Result<()> {
    // A request keeps the snapshot it started with, even if a newer one arrives mid-way.
    let snapshot = ctx.snapshot();
    let head = match monoio::time::timeout(HEAD_TIMEOUT, read_request_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_elapsed) => {
            tracing::debug!(worker = ctx.id(), %peer, "request head timed out");
            return Ok(());
        }
    };
    let response = match head {
        RequestHead::Closed => return Ok(()),
        RequestHead::Complete { head_only } => json_error(
            503,
            "Service Unavailable",
            "proxy data plane not implemented yet",
            head_only,
        ),
        RequestHead::Malformed => json_error(400, "Bad Request", "malformed request", false),
        RequestHead::TooLarge => json_error(
            431,
            "Request Header Fields Too Large",
            "request head too large",
            false,
        ),
    };
    tracing::trace!(worker = ctx.id(), %peer, snapshot = snapshot.version, "answering placeholder response");
    drop(snapshot);

    let (written, _) = stream.write_all(response).await;
    written?;
    stream.shutdown().await?;
    linger(&mut stream).await;
    Ok(())
}

/// What the client sent before we answer.
enum RequestHead {
    /// A complete, parseable request head; `head_only` for HEAD requests.
    Complete { head_only: bool },
    /// Not HTTP/1.x.
    Malformed,
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    TooLarge,
    /// The client closed before sending a complete head.
    Closed,
}

async fn read_request_head(stream: &mut TcpStream) -> io::Result<RequestHead> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Ok(RequestHead::TooLarge);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(MAX_HEAD_BYTES - buf.len()));
        }
        let (start, end) = (buf.len(), buf.capacity().min(MAX_HEAD_BYTES));
        let (read, slice) = stream.read(buf.slice_mut(start..end)).await;
        buf = slice.into_inner();
        if read? == 0 {
            return Ok(RequestHead::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let head_only = request.method == Some("HEAD");
                return Ok(RequestHead::Complete { head_only });
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(RequestHead::TooLarge),
            Err(_) => return Ok(RequestHead::Malformed),
        }
    }
}

/// A complete `Connection: close` response with a JSON `{"error": ...}` body.
fn json_error(status: u16, reason: &str, message: &str, head_only: bool) -> Vec<u8> {
    let body = format!("{{\"error\":{}}}", serde_json::Value::from(message));
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// Reads and discards what the client still sends (a request body we did not want), up
/// to a bound, so that closing the socket sends FIN rather than RST.
async fn linger(stream: &mut TcpStream) {
    let drain = async {
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            let (read, returned) = stream.read(buf).await;
            buf = returned;
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = monoio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_response_is_complete_http_1_1() {
        let response = json_error(
            503,
            "Service Unavailable",
            "proxy data plane not implemented yet",
            false,
        );
        let text = String::from_utf8_lossy(&response);
        let body = r#"{"error":"proxy data plane not implemented yet"}"#;
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
    }

    #[test]
    fn head_response_has_length_but_no_body() {
        let response = json_error(503, "Service Unavailable", "x", true);
        let text = String::from_utf8_lossy(&response);
        assert!(text.contains("Content-Length: 13\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
