//! Refusals: every answer the gateway gives itself instead of an upstream's, named by what
//! went wrong ([`Refusal`]), and the one mapping from that to a status, headers and the
//! `{"error": "..."}` body (DESIGN.md §4) in [`Refusal::response`]. No other module picks
//! a status for the gateway's own answers; stages return a `Refusal`, and
//! [`crate::respond::reject`] / [`crate::respond::refuse`] (or the connection loop, before a
//! request exists) send its response.
//!
//! A leaf of the request flow: it names the stages' outcomes but imports none of them.

use std::fmt::Write as _;

use shardgate_core::http1::{ChunkError, HeadError};
use shardgate_core::metrics::Cause;
use shardgate_core::path::PathError;
use shardgate_core::plugins::Rejection;

use crate::tls::TlsFailure;
use crate::wire::reason;

/// Why the gateway answers a request itself.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The worker is at `--max-connections`.
    TooManyConnections,
    /// The request head did not arrive within `--header-timeout`.
    HeadTimeout,
    /// The request head is malformed or over a limit.
    BadHead(HeadError),
    /// No gateway has the Host's subdomain.
    GatewayNotFound,
    GatewayInactive,
    /// The gateway's configuration did not compile (the admin log says why).
    GatewayBroken,
    /// The request-target is not UTF-8.
    TargetNotText,
    /// The path cannot be normalized (see `shardgate_core::path`).
    BadPath(PathError),
    /// No key, or a key that is not valid now.
    Key {
        missing: bool,
        why: &'static str,
    },
    /// A valid key outside its scopes (rules, services, methods).
    KeyOutOfScope,
    /// A method the router has no name for.
    MethodNotSupported,
    /// No rule matches (told only to callers with a valid key).
    NoRoute,
    /// A rule matches the path but not the method.
    MethodNotAllowed {
        allow: String,
    },
    /// The request body is over the body limit.
    BodyTooLarge {
        limit: u64,
    },
    /// The chunked request body is malformed.
    BadChunkedBody(ChunkError),
    /// The rule's services are all unavailable.
    NoService,
    /// The upstream could not give an answer to relay.
    Upstream(UpstreamFailure),
    /// A `pre_request` plugin refused the request; `headers` are what the plugin stage
    /// promised with it (the rate limiter's `X-RateLimit-*`).
    Plugin {
        rejection: Rejection,
        headers: Vec<(&'static str, String)>,
    },
    /// The answer to an allowed CORS preflight (204 with its `Access-Control-*` headers):
    /// the gateway's own answer, not a refusal, but sent the same way.
    Preflight {
        headers: Vec<(&'static str, String)>,
    },
}

/// Why no upstream answer could be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Every target refused the connection or was unreachable.
    ConnectFailed,
    /// No target of the service's upstreams is healthy.
    NoHealthyTarget,
    /// The TLS handshake with the target failed (certificate or protocol).
    Tls(TlsFailure),
    /// The response head (or the start of its body) is malformed.
    InvalidResponse,
    ClosedWithoutAnswer,
    /// The upstream did not answer within its read timeout.
    TimedOut,
    /// The service's whole-request deadline (`timeout`) passed.
    DeadlineExceeded,
    FailedWhileAnswering,
    FailedReceivingBody,
    /// The last attempt's upstream answered 502 or 503 and no retry is left.
    AnsweredWithError(u16),
    /// A `101` the client did not ask for, or to another protocol.
    UnsolicitedSwitch,
    /// Every target's circuit breaker is open.
    CircuitOpen,
    /// Every target is at its `max_connections`, and none freed a place in time.
    Saturated,
    /// HTTP/2 upstreams refused the stream unprocessed (REFUSED_STREAM, GOAWAY) and it
    /// could not go again: resends or the retry budget used up, or its body not kept.
    Refused,
}

impl UpstreamFailure {
    /// The metrics cause (`shardgate_upstream_failures_total{cause}`).
    pub fn cause(self) -> Cause {
        match self {
            UpstreamFailure::ConnectFailed | UpstreamFailure::NoHealthyTarget => Cause::Connect,
            UpstreamFailure::Tls(_) => Cause::Tls,
            UpstreamFailure::TimedOut | UpstreamFailure::DeadlineExceeded => Cause::Timeout,
            UpstreamFailure::InvalidResponse | UpstreamFailure::UnsolicitedSwitch => {
                Cause::InvalidResponse
            }
            UpstreamFailure::ClosedWithoutAnswer
            | UpstreamFailure::FailedWhileAnswering
            | UpstreamFailure::FailedReceivingBody => Cause::Reset,
            UpstreamFailure::AnsweredWithError(_) => Cause::Status5xx,
            UpstreamFailure::CircuitOpen => Cause::CircuitOpen,
            UpstreamFailure::Refused => Cause::Refused,
            UpstreamFailure::Saturated => Cause::Saturated,
        }
    }

    fn status_and_message(self) -> (u16, &'static str) {
        match self {
            UpstreamFailure::ConnectFailed => (502, "upstream connection failed"),
            UpstreamFailure::NoHealthyTarget => (503, "no healthy upstream target"),
            UpstreamFailure::Tls(failure) => (502, failure.message()),
            UpstreamFailure::InvalidResponse => (502, "invalid response from upstream"),
            UpstreamFailure::ClosedWithoutAnswer => {
                (502, "upstream closed the connection without answering")
            }
            UpstreamFailure::TimedOut => (504, "upstream timed out"),
            UpstreamFailure::DeadlineExceeded => (504, "service timeout exceeded"),
            UpstreamFailure::FailedWhileAnswering => {
                (502, "upstream connection failed while answering")
            }
            UpstreamFailure::FailedReceivingBody => {
                (502, "upstream failed while receiving the request body")
            }
            UpstreamFailure::AnsweredWithError(status) => {
                (status, "upstream answered with an error")
            }
            UpstreamFailure::UnsolicitedSwitch => {
                (502, "upstream switched protocols without being asked to")
            }
            UpstreamFailure::CircuitOpen => (
                503,
                "every upstream target's circuit breaker is open; try again later",
            ),
            UpstreamFailure::Saturated => (
                503,
                "every upstream target is at its connection limit; try again later",
            ),
            UpstreamFailure::Refused => (
                503,
                "the upstream refused the request without processing it; try again later",
            ),
        }
    }
}

impl Refusal {
    /// A plugin's rejection with no headers of its own.
    pub fn plugin(rejection: Rejection) -> Refusal {
        Refusal::Plugin {
            rejection,
            headers: Vec::new(),
        }
    }

    /// The one mapping from a refusal to what the client receives.
    pub fn response(&self) -> ErrorResponse {
        match self {
            Refusal::TooManyConnections => {
                ErrorResponse::new(503, "too many connections; try again later")
                    .header("Retry-After", "1")
            }
            Refusal::HeadTimeout => ErrorResponse::new(408, "request head not received in time"),
            Refusal::BadHead(e) => {
                let error = ErrorResponse::new(e.status(), e.to_string());
                if *e == HeadError::ConnectUnsupported {
                    error.header("Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")
                } else {
                    error
                }
            }
            Refusal::GatewayNotFound => ErrorResponse::new(404, "gateway not found"),
            Refusal::GatewayInactive => ErrorResponse::new(503, "gateway is inactive"),
            Refusal::GatewayBroken => {
                ErrorResponse::new(503, "gateway configuration is invalid; see the admin log")
            }
            Refusal::TargetNotText => ErrorResponse::new(400, "invalid request target"),
            Refusal::BadPath(e) => ErrorResponse::new(400, e.to_string()),
            Refusal::Key { missing, why } => {
                let challenge = if *missing {
                    "Bearer realm=\"shardgate\""
                } else {
                    "Bearer realm=\"shardgate\", error=\"invalid_token\""
                };
                ErrorResponse::new(401, *why).header("WWW-Authenticate", challenge)
            }
            Refusal::KeyOutOfScope => ErrorResponse::new(403, "key not allowed for this route"),
            Refusal::MethodNotSupported => {
                ErrorResponse::new(501, "request method not supported by this gateway")
            }
            Refusal::NoRoute => ErrorResponse::new(404, "no route matches this request"),
            Refusal::MethodNotAllowed { allow } => {
                ErrorResponse::new(405, "method not allowed for this path")
                    .header("Allow", allow.clone())
            }
            Refusal::BodyTooLarge { limit } => {
                ErrorResponse::new(413, format!("request body exceeds {limit} bytes"))
            }
            Refusal::BadChunkedBody(e) => {
                ErrorResponse::new(e.status(), format!("invalid chunked body: {e}"))
            }
            Refusal::NoService => ErrorResponse::new(503, "no service available for this route"),
            Refusal::Upstream(failure) => {
                let (status, message) = failure.status_and_message();
                ErrorResponse::new(status, message)
            }
            Refusal::Plugin { rejection, headers } => {
                let status = match rejection {
                    Rejection::HeadTooLarge { .. } => 431,
                    Rejection::LengthRequired => 411,
                    Rejection::BodyTooLarge { .. } => 413,
                    Rejection::IpNotAllowed | Rejection::Preflight(_) => 403,
                    Rejection::RateLimited { .. } => 429,
                };
                let mut answer = ErrorResponse::new(status, rejection.to_string());
                if let Rejection::RateLimited {
                    retry_after_secs, ..
                } = rejection
                {
                    answer = answer.header("Retry-After", retry_after_secs.to_string());
                    answer.extra_json = format!(",\"retry_after\":{retry_after_secs}");
                }
                answer.headers.extend(headers.iter().cloned());
                answer
            }
            Refusal::Preflight { headers } => {
                let mut answer = ErrorResponse::new(204, "");
                answer.headers.extend(headers.iter().cloned());
                answer
            }
        }
    }
}

/// An answer the gateway gives without calling an upstream, ready to encode.
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
    /// Private: every status the gateway answers with is chosen in [`Refusal::response`].
    fn new(status: u16, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            status,
            message: message.into(),
            headers: Vec::new(),
            extra_json: String::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> ErrorResponse {
        self.headers.push((name, value.into()));
        self
    }

    /// Serializes the whole response. `close`: add `Connection: close`. `head`: HEAD
    /// request, no body. `request_id` (header-safe bytes, see `observe::RequestId`) goes
    /// into `X-Request-Id` and the body's `request_id`.
    pub fn encode(&self, close: bool, head: bool, request_id: &[u8], out: &mut Vec<u8>) {
        let request_id = std::str::from_utf8(request_id).unwrap_or("");
        // 204 (a CORS preflight answer) has no body and no framing headers.
        let body = (self.status != 204).then(|| {
            let mut body = String::with_capacity(self.message.len() + 16);
            body.push_str("{\"error\":");
            body.push_str(&serde_json::Value::String(self.message.clone()).to_string());
            body.push_str(&self.extra_json);
            if !request_id.is_empty() {
                body.push_str(",\"request_id\":\"");
                body.push_str(request_id);
                body.push('"');
            }
            body.push('}');
            body
        });
        let mut head_text = String::with_capacity(160);
        let _ = write!(
            head_text,
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason(self.status)
        );
        if let Some(body) = &body {
            let _ = write!(
                head_text,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        for (name, value) in &self.headers {
            let _ = write!(head_text, "{name}: {value}\r\n");
        }
        if !request_id.is_empty() {
            let _ = write!(head_text, "X-Request-Id: {request_id}\r\n");
        }
        if close {
            head_text.push_str("Connection: close\r\n");
        }
        head_text.push_str("\r\n");
        out.extend_from_slice(head_text.as_bytes());
        if let (Some(body), false) = (body, head) {
            out.extend_from_slice(body.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_are_json_with_exact_length() {
        let mut out = Vec::new();
        Refusal::MethodNotAllowed {
            allow: "GET, HEAD".into(),
        }
        .response()
        .encode(true, false, b"", &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        assert_eq!(body, r#"{"error":"method not allowed for this path"}"#);
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let status = |f| Refusal::Upstream(f).response().status;
        assert_eq!(status(UpstreamFailure::ConnectFailed), 502);
        assert_eq!(status(UpstreamFailure::NoHealthyTarget), 503);
        assert_eq!(status(UpstreamFailure::TimedOut), 504);
        assert_eq!(status(UpstreamFailure::DeadlineExceeded), 504);
        assert_eq!(status(UpstreamFailure::AnsweredWithError(503)), 503);
    }
}
