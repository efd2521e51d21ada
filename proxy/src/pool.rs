//! Per-worker pools of idle upstream connections, keyed by target identity
//! ([`CompiledTarget::key`](shardgate_core::snapshot::CompiledTarget)), so they survive
//! configuration changes that keep the target. A TLS connection made with an upstream's own
//! `tls` settings is keyed by the target *and* those settings ([`crate::tls::Dial::target`]
//! gives the key): it was verified (or not) and authenticated for them, and is never handed
//! to an upstream with other settings.
//!
//! Most recently used first (LIFO): the warmest connection is the least likely to have been
//! closed by the upstream. Each idle connection carries its own expiry (the upstream's
//! `pool.idle_timeout`); expired ones are dropped when met and by a periodic sweep, which
//! also forgets targets whose list stayed empty and unused since the sweep before.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use shardgate_core::fxhash::FxMap;

use crate::tls::Conn;

struct Idle {
    stream: Conn,
    expires: Instant,
}

/// The idle connections to one target.
#[derive(Default)]
struct Parked {
    conns: Vec<Idle>,
    /// Taken from or parked in since the last sweep: an empty list in use is kept, so
    /// parking a connection never allocates the list again.
    used: bool,
}

/// Idle upstream connections of one worker.
#[derive(Default)]
pub struct ConnPool {
    idle: RefCell<FxMap<u64, Parked>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnPool {
    /// The most recently parked, unexpired connection to `key`.
    pub fn take(&self, key: u64) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        list.used = true;
        let now = crate::clock::now();
        while let Some(conn) = list.conns.pop() {
            if conn.expires > now {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Parks a connection whose last exchange ended cleanly.
    pub fn put(&self, key: u64, stream: Conn, max_idle: usize, idle_timeout: Duration) {
        if max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        list.used = true;
        let list = &mut list.conns;
        if list.len() >= max_idle {
            // Drop the oldest: it is the most likely to be closed by the upstream soon.
            list.remove(0);
        }
        list.push(Idle {
            stream,
            expires: crate::clock::now() + idle_timeout,
        });
    }

    /// Closes expired connections; called periodically by the worker.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            list.conns.retain(|c| c.expires > now);
            let keep = !list.conns.is_empty() || list.used;
            list.used = false;
            keep
        });
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .borrow()
            .values()
            .map(|list| list.conns.len())
            .sum()
    }
}

/// How long an HTTP/2 upstream connection may go unused before the sweep closes it (its
/// last sender dropped, `h2` ends the connection with GOAWAY once its streams are done):
/// a removed target's connection does not stay open for the worker's life.
pub const H2_IDLE: Duration = Duration::from_secs(60);

/// One worker's HTTP/2 connections to upstream targets, by target key.
#[derive(Default)]
pub struct H2Pool {
    conns: RefCell<FxMap<u64, (SendRequest<Bytes>, Instant)>>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("targets", &self.conns.borrow().len())
            .finish()
    }
}

impl H2Pool {
    /// A sender on the connection to the target keyed `key` (clones share the connection);
    /// marks it used.
    pub fn get(&self, key: u64) -> Option<SendRequest<Bytes>> {
        let mut conns = self.conns.borrow_mut();
        let (sender, used) = conns.get_mut(&key)?;
        *used = crate::clock::now();
        Some(sender.clone())
    }

    pub fn insert(&self, key: u64, sender: SendRequest<Bytes>) {
        self.conns
            .borrow_mut()
            .insert(key, (sender, crate::clock::now()));
    }

    /// Forgets a connection that failed (its task ends on its own).
    pub fn remove(&self, key: u64) {
        self.conns.borrow_mut().remove(&key);
    }

    /// HTTP/2 connections held.
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.borrow().is_empty()
    }

    /// Forgets connections unused for [`H2_IDLE`].
    pub fn sweep(&self) {
        let now = Instant::now();
        self.conns
            .borrow_mut()
            .retain(|_, (_, used)| now.duration_since(*used) < H2_IDLE);
    }
}
