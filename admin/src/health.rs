//! Active health checks, run on the admin thread (DESIGN.md §1: the admin thread owns
//! health-check probes).
//!
//! Every upstream with `health_checks.active` has each of its targets probed every
//! `interval`: `tcp` connects; `http` sends `GET <path>` and expects a 2xx or 3xx status
//! line within `timeout` — except on `https` targets, where it only connects for now (the
//! admin thread has no TLS client yet; a plain `GET` to a TLS port would take every https
//! target down), and says so in the log once per target. `unhealthy_threshold` consecutive failures take a target down,
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

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_core::model::{ActiveHealthCheck, HealthCheckKind};
use uuid::Uuid;

use crate::api::Api;

/// How often the prober looks for due probes and finished ones.
const TICK: Duration = Duration::from_millis(100);

struct Probe {
    gateway: Uuid,
    addr: SocketAddr,
    host_header: String,
    /// An `https` target: probed by connecting only (see the module docs).
    https: bool,
    check: ActiveHealthCheck,
    healthy: bool,
    successes: u32,
    failures: u32,
    next_due: Instant,
    in_flight: bool,
}

/// Runs until `stop` is set.
pub async fn run(api: Rc<RefCell<Api>>, stop: Arc<AtomicBool>) {
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
                for target in &upstream.targets {
                    let Some(addr) = target.addr else { continue };
                    seen.insert(target.key);
                    let probe = probes.entry(target.key).or_insert_with(|| {
                        if target.https && check.kind == HealthCheckKind::Http {
                            tracing::warn!(
                                target = %target.host_header,
                                "http health check on an https target: probing by TCP connect \
                                 only (TLS health probes are not built yet)"
                            );
                        }
                        Probe {
                            gateway: gateway.id,
                            addr,
                            host_header: target.host_header.to_string(),
                            https: target.https,
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
            let (key, addr, host, https, check) = (
                *key,
                probe.addr,
                probe.host_header.clone(),
                probe.https,
                probe.check.clone(),
            );
            let results = results.clone();
            monoio::spawn(async move {
                let ok = probe_once(addr, &host, https, &check).await;
                results.borrow_mut().push((key, ok));
            });
        }
    }
}

/// One probe: true when the target answered as configured within the timeout.
async fn probe_once(addr: SocketAddr, host: &str, https: bool, check: &ActiveHealthCheck) -> bool {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        if check.kind == HealthCheckKind::Tcp || https {
            return Some(true);
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shardgate-health-check\r\nConnection: close\r\n\r\n",
            check.path
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
    };
    matches!(
        monoio::time::timeout(check.timeout.as_duration(), work).await,
        Ok(Some(true))
    )
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
    fn only_2xx_and_3xx_status_lines_are_healthy() {
        assert!(status_is_healthy(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_healthy(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"));
        assert!(!status_is_healthy(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_is_healthy(b"garbage"));
        assert!(!status_is_healthy(b""));
    }
}
