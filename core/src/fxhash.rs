//! FxHash for maps keyed by ids and small integers, looked up on every request: the
//! metrics' and usage's series, the snapshot's gateways, services, upstreams and budgets by
//! id, and each worker's balancer state, connection pools and shutdown waiters by target
//! key or id. SipHash's resistance to hash flooding buys nothing for these keys (ids
//! are made by the gateway, and a client can only look them up, never insert one) and
//! costs several times more per lookup.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;

/// A map hashed with [`Fx`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
/// A set hashed with [`Fx`].
pub type FxSet<K> = HashSet<K, BuildHasherDefault<Fx>>;
/// A map from ids, hashed with [`Fx`].
pub type IdMap<V> = FxMap<Uuid, V>;

/// FxHash (rustc's): one multiply and rotate per word.
#[derive(Default, Debug)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}
