//! Active health checks, run on the admin thread (DESIGN.md §1: the admin thread owns
//! health-check probes).
//!
//! Every upstream with `health_checks.active` has each of its targets probed every
//! `interval`: `tcp` connects; `http` sends `GET <path>` and expects a 2xx or 3xx status
//! line within `timeout`; `grpc` speaks the gRPC health checking protocol over h2c
//! (`grpc.health.v1.Health/Check` for `grpc_service`) and expects `grpc-status: 0` with
//! the status SERVING. On `https` targets both go over TLS with the client requests to the
//! target use ([`ProbeTls`], given by the proxy: the same roots, `tls` settings, client
//! certificate and server name, ALPN `http/1.1` or `h2`), so a target whose certificate a
//! request would refuse fails its probes too. `unhealthy_threshold` consecutive failures take a target down,
//! `healthy_threshold` consecutive successes bring it back. New targets start healthy.
//!
//! A flip is published as a new snapshot (only the affected gateway is recompiled), through
//! the same path as an admin write: workers then read a plain `down` flag per target and
//! never touch a shared atomic when they pick one.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use monoio_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use shardgate_core::model::{ActiveHealthCheck, HealthCheckKind};
use shardgate_core::snapshot::CompiledUpstream;
use uuid::Uuid;

use crate::api::Api;

/// How often the prober looks for due probes and finished ones.
const TICK: Duration = Duration::from_millis(100);

/// The TLS clients of `https` targets, as the proxy's requests use them. Made on the admin
/// thread (it may keep per-thread state, as the proxy's per-worker clients do).
pub trait ProbeTls {
    /// The client for `upstream`'s target `index`; `None` when the upstream's `tls`
    /// settings do not build (its requests are refused, and so are its probes).
    fn client(&self, upstream: &CompiledUpstream, index: usize) -> Option<TlsClient>;
}

/// Makes the prober's [`ProbeTls`] on the admin thread (`None`: none can be made there).
pub type ProbeTlsMaker = Box<dyn FnOnce() -> Option<Box<dyn ProbeTls>> + Send>;

/// One TLS client configuration, as the probes of a target use it.
#[derive(Clone)]
pub struct TlsClient {
    /// ALPN `http/1.1`: `http` checks.
    pub http1: TlsConnector,
    /// ALPN `h2`: `grpc` checks.
    pub h2: TlsConnector,
    /// The name sent and verified (the upstream's `tls.server_name`, else the host).
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How a probe reaches its target.
#[derive(Clone)]
enum Way {
    Plain,
    /// An `https` target with its client (`None`: the settings do not build).
    Tls(Option<TlsClient>),
    /// An `https` target and no TLS client to probe it with (a prober started without
    /// [`ProbeTls`]): connecting is all it can check.
    ConnectOnly,
}

struct Probe {
    gateway: Uuid,
    addr: SocketAddr,
    host_header: String,
    way: Way,
    check: ActiveHealthCheck,
    healthy: bool,
    successes: u32,
    failures: u32,
    next_due: Instant,
    in_flight: bool,
}

/// Runs until `stop` is set; `tls` probes the `https` targets.
pub async fn run(api: Rc<RefCell<Api>>, stop: Arc<AtomicBool>, tls: Option<Box<dyn ProbeTls>>) {
    let mut probes: HashMap<u64, Probe> = HashMap::new();
    let results: Rc<RefCell<Vec<(u64, bool)>>> = Rc::default();
    while !stop.load(Ordering::Acquire) {
        monoio::time::sleep(TICK).await;
        let snapshot = api.borrow().snapshot();

        // Follow the configuration: add new targets, refresh settings, drop removed ones.
        let mut seen = HashSet::new();
        for gateway in snapshot.gateways() {
            for upstream in gateway.upstreams.values() {
                let Some(check) = &upstream.spec.spec.health_checks.active else {
                    continue;
                };
                for (index, target) in upstream.targets.iter().enumerate() {
                    let Some(addr) = target.addr else { continue };
                    seen.insert(target.key);
                    // Looked up each turn: the upstream's `tls` settings may change.
                    let way = match &tls {
                        _ if !target.https || check.kind == HealthCheckKind::Tcp => Way::Plain,
                        Some(tls) => Way::Tls(tls.client(upstream, index)),
                        None => Way::ConnectOnly,
                    };
                    let probe = probes.entry(target.key).or_insert_with(|| {
                        if matches!(way, Way::ConnectOnly) {
                            tracing::warn!(
                                target = %target.host_header,
                                "http or grpc health check on an https target: probing by TCP \
                                 connect only (no TLS client for probes)"
                            );
                        }
                        Probe {
                            gateway: gateway.id,
                            addr,
                            host_header: target.host_header.to_string(),
                            way: way.clone(),
                            check: check.clone(),
                            healthy: !target.down,
                            successes: 0,
                            failures: 0,
                            next_due: Instant::now(),
                            in_flight: false,
                        }
                    });
                    probe.gateway = gateway.id;
                    probe.check = check.clone();
                    probe.way = way;
                }
            }
        }
        let mut flipped: HashSet<Uuid> = HashSet::new();
        probes.retain(|key, probe| {
            let keep = seen.contains(key);
            if !keep && !probe.healthy {
                // A target that left the configuration must not stay down if it returns.
                api.borrow_mut().set_target_down(*key, false);
                flipped.insert(probe.gateway);
            }
            keep
        });

        for (key, healthy) in results.borrow_mut().drain(..) {
            let Some(probe) = probes.get_mut(&key) else {
                continue;
            };
            probe.in_flight = false;
            if healthy {
                probe.successes += 1;
                probe.failures = 0;
            } else {
                probe.failures += 1;
                probe.successes = 0;
            }
            let flip = if probe.healthy {
                probe.failures >= probe.check.unhealthy_threshold
            } else {
                probe.successes >= probe.check.healthy_threshold
            };
            if flip {
                probe.healthy = !probe.healthy;
                tracing::warn!(
                    target = %probe.host_header, addr = %probe.addr,
                    healthy = probe.healthy, "active health check changed a target's state"
                );
                api.borrow_mut().set_target_down(key, !probe.healthy);
                flipped.insert(probe.gateway);
            }
        }
        if !flipped.is_empty() {
            api.borrow_mut().republish(flipped.into_iter());
        }

        let now = Instant::now();
        for (key, probe) in probes.iter_mut() {
            if probe.in_flight || probe.next_due > now {
                continue;
            }
            probe.in_flight = true;
            probe.next_due = now + probe.check.interval.as_duration();
            let (key, addr, host, way, check) = (
                *key,
                probe.addr,
                probe.host_header.clone(),
                probe.way.clone(),
                probe.check.clone(),
            );
            let results = results.clone();
            monoio::spawn(async move {
                let ok = probe_once(addr, &host, way, &check).await;
                results.borrow_mut().push((key, ok));
            });
        }
    }
}

/// One probe: true when the target answered as configured within the timeout.
async fn probe_once(addr: SocketAddr, host: &str, way: Way, check: &ActiveHealthCheck) -> bool {
    let work = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let _ = tcp.set_nodelay(true);
        if check.kind == HealthCheckKind::Tcp {
            return Some(true);
        }
        let grpc = check.kind == HealthCheckKind::Grpc;
        match way {
            Way::ConnectOnly => Some(true),
            // As a request would be: refused.
            Way::Tls(None) => Some(false),
            Way::Plain if grpc => {
                use monoio::io::IntoPollIo;
                let io = tcp.into_poll_io().ok()?;
                grpc_check(io, "http", host, &check.grpc_service).await
            }
            Way::Plain => http_check(tcp, host, &check.path).await,
            Way::Tls(Some(client)) if grpc => {
                let tls = client.h2.connect(client.name, tcp).await.ok()?;
                if tls.alpn_protocol().as_deref() != Some(b"h2") {
                    // A gRPC target that does not speak HTTP/2 cannot serve a call.
                    return Some(false);
                }
                let (read, write) = tls.into_split();
                let io = tokio::io::join(
                    StreamWrapper::new_with_buffer_size(read, 16 * 1024, 0),
                    StreamWrapper::new_with_buffer_size(write, 0, 16 * 1024),
                );
                grpc_check(io, "https", host, &check.grpc_service).await
            }
            Way::Tls(Some(client)) => {
                let tls = client.http1.connect(client.name, tcp).await.ok()?;
                http_check(tls, host, &check.path).await
            }
        }
    };
    matches!(
        monoio::time::timeout(check.timeout.as_duration(), work).await,
        Ok(Some(true))
    )
}

/// `GET <path>` on `stream`: `Some(true)` when the status line says 2xx or 3xx.
async fn http_check<S: AsyncReadRent + AsyncWriteRent>(
    mut stream: S,
    host: &str,
    path: &str,
) -> Option<bool> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shardgate-health-check\r\nConnection: close\r\n\r\n"
    );
    let (written, _) = stream.write_all(request.into_bytes()).await;
    written.ok()?;
    let mut head = Vec::with_capacity(512);
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let (len, cap) = (head.len(), head.capacity());
        use monoio::buf::IoBufMut;
        let (read, buf) = stream.read(head.slice_mut(len..cap)).await;
        head = buf.into_inner();
        if read.ok()? == 0 {
            break;
        }
        if head.len() == head.capacity() {
            head.reserve(512);
        }
    }
    Some(status_is_healthy(&head))
}

/// The largest health answer read (a `HealthCheckResponse` is a few bytes).
const MAX_GRPC_ANSWER: usize = 4096;

/// One `grpc.health.v1.Health/Check` call over HTTP/2 on `io` (h2c, or TLS that chose
/// `h2`): `Some(true)` when the answer is `grpc-status: 0` with the status SERVING
/// (`None`: the exchange failed).
async fn grpc_check<T>(io: T, scheme: &str, host: &str, service: &str) -> Option<bool>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (sender, connection) = h2::client::handshake(io).await.ok()?;
    let call = async {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("{scheme}://{host}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "shardgate-health-check")
            .body(())
            .ok()?;
        let mut sender = sender.ready().await.ok()?;
        let (response, mut body) = sender.send_request(request, false).ok()?;
        body.send_data(bytes::Bytes::from(health_request(service)), true)
            .ok()?;
        let response = response.await.ok()?;
        if response.status() != http::StatusCode::OK
            || response.headers().contains_key("grpc-status")
        {
            // Trailers-only: an error status (UNIMPLEMENTED, NOT_FOUND, ...), no answer.
            return Some(false);
        }
        let mut answer = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = answer.data().await {
            let chunk = chunk.ok()?;
            let _ = answer.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
            if data.len() > MAX_GRPC_ANSWER {
                return Some(false);
            }
        }
        let trailers = answer.trailers().await.ok()?;
        let ok = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s.as_bytes() == b"0");
        Some(ok && health_status(&data) == Some(SERVING))
    };
    let connection = std::pin::pin!(connection);
    monoio::select! {
        checked = call => checked,
        // The connection ended before the answer.
        _ = connection => None,
    }
}

/// `HealthCheckResponse.status` SERVING.
const SERVING: u64 = 1;

/// A gRPC message (uncompressed) holding a `HealthCheckRequest` for `service` (field 1,
/// a string; empty: the server as a whole, sent as an empty message).
fn health_request(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        push_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The `status` (field 1, an enum) of the one uncompressed `HealthCheckResponse` in
/// `data` (a gRPC message: flag byte, 4-byte length, protobuf). Absent: 0, UNKNOWN.
fn health_status(data: &[u8]) -> Option<u64> {
    let (&flag, rest) = data.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let (len, mut message) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    if message.len() != len {
        return None;
    }
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        match key & 7 {
            // varint: field 1 is the status, others are skipped.
            0 => {
                let value = read_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            // 64-bit, length-delimited, 32-bit fields of a newer version: skipped.
            1 => message = message.get(8..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            5 => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

/// `HTTP/1.x 2xx|3xx ...` at the start of `head`.
fn status_is_healthy(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let version_ok = parts.next().is_some_and(|v| v.starts_with(b"HTTP/1."));
    let status = parts
        .next()
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    version_ok && matches!(status, Some(200..=399))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages_are_framed_and_read_as_protobuf() {
        // The whole server: an empty message.
        assert_eq!(health_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            health_request("test.Echo"),
            [&[0u8, 0, 0, 0, 11, 0x0a, 9][..], b"test.Echo"].concat()
        );
        // A length over 127 takes a two-byte varint.
        let long = "s".repeat(200);
        assert_eq!(&health_request(&long)[5..8], &[0x0a, 0xc8, 0x01]);
        let framed = |m: &[u8]| [&[0u8][..], &(m.len() as u32).to_be_bytes(), m].concat();
        assert_eq!(health_status(&framed(&[0x08, 0x01])), Some(SERVING));
        assert_eq!(health_status(&framed(&[0x08, 0x02])), Some(2));
        // Absent field: UNKNOWN; unknown fields of other types are skipped.
        assert_eq!(health_status(&framed(&[])), Some(0));
        assert_eq!(
            health_status(&framed(&[0x12, 0x02, b'h', b'i', 0x08, 0x01])),
            Some(SERVING)
        );
        // Compressed, truncated or trailing bytes: not an answer.
        assert_eq!(health_status(&[1, 0, 0, 0, 2, 0x08, 0x01]), None);
        assert_eq!(health_status(&[0, 0, 0, 0, 3, 0x08, 0x01]), None);
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08]), None);
    }

    #[test]
    fn only_2xx_and_3xx_status_lines_are_healthy() {
        assert!(status_is_healthy(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_healthy(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"));
        assert!(!status_is_healthy(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_healthy(b"garbage"));
        assert!(!status_is_healthy(b""));
    }
}
