//! Name resolution for upstream targets, done on the admin thread at snapshot compile time
//! so that proxy workers never block on DNS.
//!
//! Results are cached for [`TTL`]; a failed lookup is cached briefly too, so a burst of
//! writes does not repeat a slow failing lookup. A target whose host does not resolve is
//! unusable (the proxy answers 503) until a later compile resolves it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_core::ai::budget::BudgetBook;
use shardgate_core::ratelimit::Registry;
use shardgate_core::snapshot::Resolve;

/// How long a successful lookup is reused.
pub const TTL: Duration = Duration::from_secs(60);
/// How long a failed lookup is remembered before it is tried again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// (host, port) → (address or failure, when it was looked up).
type Cache = HashMap<(String, u16), (Option<SocketAddr>, Instant)>;

/// The system resolver (`getaddrinfo`, so `/etc/hosts` applies), with a small cache.
#[derive(Debug, Default)]
pub struct SystemResolver {
    cache: RefCell<Cache>,
}

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse() {
            return Some(SocketAddr::new(ip, port));
        }
        let key = (host.to_ascii_lowercase(), port);
        if let Some((addr, at)) = self.cache.borrow().get(&key) {
            let ttl = if addr.is_some() { TTL } else { NEGATIVE_TTL };
            if at.elapsed() < ttl {
                return *addr;
            }
        }
        let started = Instant::now();
        let found = match (host, port).to_socket_addrs() {
            // Prefer IPv4 for `localhost`-style names that map to both, as curl does first.
            Ok(addrs) => {
                let all: Vec<SocketAddr> = addrs.collect();
                all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
            }
            Err(e) => {
                tracing::warn!(host, port, error = %e, "upstream target does not resolve; it stays unusable");
                None
            }
        };
        tracing::debug!(
            host,
            port,
            ?found,
            micros = started.elapsed().as_micros() as u64,
            "resolved upstream target"
        );
        self.cache.borrow_mut().insert(key, (found, Instant::now()));
        found
    }
}

/// Everything snapshot compilation needs from outside `core`: name resolution, the targets
/// active health checks hold down, and the rate limiters' shared counters.
#[derive(Debug)]
pub struct CompileEnv {
    resolver: SystemResolver,
    down: HashSet<u64>,
    rate_limits: Arc<Registry>,
    /// Key budgets' spending, kept across snapshots (and seeded from the usage store).
    pub budgets: BudgetBook,
}

impl CompileEnv {
    pub fn new(rate_limits: Arc<Registry>) -> CompileEnv {
        CompileEnv {
            resolver: SystemResolver::default(),
            down: HashSet::new(),
            rate_limits,
            budgets: BudgetBook::default(),
        }
    }

    /// Records an active health check's verdict for the next compile.
    pub fn set_down(&mut self, target_key: u64, down: bool) {
        if down {
            self.down.insert(target_key);
        } else {
            self.down.remove(&target_key);
        }
    }
}

impl Resolve for CompileEnv {
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.resolver.resolve(host, port)
    }

    fn is_down(&self, target_key: u64) -> bool {
        self.down.contains(&target_key)
    }

    fn rate_limits(&self) -> Option<&Registry> {
        Some(&self.rate_limits)
    }

    fn budgets(&self) -> Option<&BudgetBook> {
        Some(&self.budgets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_localhost_resolve_and_garbage_does_not() {
        let r = SystemResolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 80),
            Some(SocketAddr::from(([127, 0, 0, 1], 80)))
        );
        assert!(r.resolve("::1", 8080).is_some_and(|a| a.is_ipv6()));
        assert!(r.resolve("localhost", 8080).is_some());
        assert_eq!(r.resolve("no-such-host.invalid", 80), None);
    }
}
