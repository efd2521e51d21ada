//! API keys: generation, hashing, and the [`KeyTable`] workers authenticate against.
//!
//! A key is `sgk_` + 43 URL-safe base64 characters (256 bits from the OS CSPRNG). Only its
//! SHA-256 is ever stored. Because the digest is already uniformly random, the table hashes
//! by taking its first 8 bytes ([`DigestHasher`]) instead of running SipHash again.
//!
//! Why SHA-256 and not a password hash: keys carry 256 bits of entropy, so a slow hash adds
//! no protection against brute force and would cost microseconds on every request. Why a
//! hash lookup is not a timing leak: the attacker controls the key, not its digest, and
//! learning digest bytes does not help find a preimage.
//!
//! [`KeyTable`] is persistent in the cheap sense: a large `base` map shared by `Arc`, and a
//! small `delta` of recent changes. A write clones only the delta; when the delta grows past
//! a bound (about 8·√n) it is folded into a new base. With 100 000 keys a write costs a copy
//! of at most ~2 500 entries, and a fold happens once every ~2 500 writes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::KeyScopes;
use crate::router::{Method, MethodSet};

/// What every generated key starts with, so leaked keys are recognisable (secret scanners).
pub const KEY_PREFIX: &str = "sgk_";
/// How many leading characters of a key are kept to tell keys apart.
pub const SHOWN_PREFIX_LEN: usize = 12;

/// SHA-256 of a key's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyHash(pub [u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the digest in full: it identifies the key in logs.
        write!(f, "KeyHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Passes a [`KeyHash`]'s first 8 bytes through: they are already uniformly distributed.
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than KeyHash is hashed; stay correct anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = HashMap<KeyHash, V, BuildHasherDefault<DigestHasher>>;

/// Hashes a presented key.
pub fn hash_key(plaintext: &[u8]) -> KeyHash {
    KeyHash(Sha256::digest(plaintext).into())
}

/// A freshly generated key. `plaintext` is shown to the client once and then dropped.
#[derive(Debug)]
pub struct NewKey {
    pub plaintext: String,
    pub prefix: String,
    pub hash: KeyHash,
}

/// Generates a key from the OS CSPRNG.
pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let plaintext = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let prefix = plaintext.chars().take(SHOWN_PREFIX_LEN).collect();
    let hash = hash_key(plaintext.as_bytes());
    Ok(NewKey {
        plaintext,
        prefix,
        hash,
    })
}

/// What a worker needs to know about a key at request time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyEntry {
    pub id: Uuid,
    /// Unix seconds; `None` never expires. For a rotated-out secret: the end of its grace
    /// period, or the key's own expiry if that comes first.
    pub expires_at: Option<i64>,
    pub active: bool,
    /// The key's own expiry (unix seconds), what `X-API-Key-Expires-In` counts down to.
    pub key_expires_at: Option<i64>,
    /// The key's scopes; `None` when it may reach everything.
    pub scope: Option<Arc<Scope>>,
    /// This digest is the secret a rotation replaced.
    pub rotated_out: bool,
}

impl KeyEntry {
    /// A current secret without scopes.
    pub fn new(id: Uuid, expires_at: Option<i64>, active: bool) -> KeyEntry {
        KeyEntry {
            id,
            expires_at,
            active,
            key_expires_at: expires_at,
            scope: None,
            rotated_out: false,
        }
    }

    /// Whether the key admits a request at `now` (unix seconds).
    pub fn admits(&self, now: i64) -> bool {
        self.active && self.expires_at.is_none_or(|at| now < at)
    }
}

/// A key's scopes, compiled: sorted ids (binary search) and a method set. An empty list
/// (`None` set) restricts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    pub rules: Box<[Uuid]>,
    pub services: Box<[Uuid]>,
    pub methods: Option<MethodSet>,
}

impl Scope {
    /// Compiles a key's `scopes`; `None` when they restrict nothing. Method names were
    /// validated when the key was written; one that no longer parses admits nothing.
    pub fn compile(scopes: &KeyScopes) -> Option<Arc<Scope>> {
        if scopes.is_empty() {
            return None;
        }
        let sorted = |ids: &[Uuid]| {
            let mut v = ids.to_vec();
            v.sort_unstable();
            v.dedup();
            v.into_boxed_slice()
        };
        let methods = (!scopes.methods.is_empty())
            .then(|| MethodSet::parse(&scopes.methods).unwrap_or(MethodSet::EMPTY));
        Some(Arc::new(Scope {
            rules: sorted(&scopes.rules),
            services: sorted(&scopes.services),
            methods,
        }))
    }

    /// Whether a request for `rule`, which may be sent to each of `services`, with
    /// `method`, is in scope. A rule that may send to a service outside the scope is refused
    /// as a whole, so a weighted split never refuses at random.
    pub fn admits(
        &self,
        rule: Uuid,
        mut services: impl Iterator<Item = Uuid>,
        method: Option<Method>,
    ) -> bool {
        if !self.rules.is_empty() && self.rules.binary_search(&rule).is_err() {
            return false;
        }
        if !self.services.is_empty() && !services.all(|s| self.services.binary_search(&s).is_ok()) {
            return false;
        }
        match (self.methods, method) {
            (None, _) => true,
            (Some(set), Some(m)) => set.contains(m),
            (Some(_), None) => false,
        }
    }
}

/// Key digest → entry, cheap to clone and to change one entry at a time.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    base: Arc<DigestMap<Arc<KeyEntry>>>,
    /// `None` is a tombstone for a key removed since the base was built.
    delta: Arc<DigestMap<Option<Arc<KeyEntry>>>>,
    len: usize,
}

impl KeyTable {
    pub fn get(&self, hash: &KeyHash) -> Option<&KeyEntry> {
        match self.delta.get(hash) {
            Some(Some(entry)) => Some(entry),
            Some(None) => None,
            None => self.base.get(hash).map(|e| &**e),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, hash: KeyHash, entry: KeyEntry) {
        if self.get(&hash).is_none() {
            self.len += 1;
        }
        Arc::make_mut(&mut self.delta).insert(hash, Some(Arc::new(entry)));
        self.maybe_fold();
    }

    pub fn remove(&mut self, hash: &KeyHash) {
        if self.get(hash).is_none() {
            return;
        }
        self.len -= 1;
        if self.base.contains_key(hash) {
            Arc::make_mut(&mut self.delta).insert(*hash, None);
        } else {
            Arc::make_mut(&mut self.delta).remove(hash);
        }
        self.maybe_fold();
    }

    /// Builds a table from scratch (recovery, tests, benchmarks).
    pub fn from_entries(entries: impl IntoIterator<Item = (KeyHash, KeyEntry)>) -> KeyTable {
        let base: DigestMap<Arc<KeyEntry>> =
            entries.into_iter().map(|(h, e)| (h, Arc::new(e))).collect();
        KeyTable {
            len: base.len(),
            base: Arc::new(base),
            delta: Arc::default(),
        }
    }

    fn delta_bound(&self) -> usize {
        let root = (self.base.len() as f64).sqrt() as usize;
        (8 * root).max(256)
    }

    fn maybe_fold(&mut self) {
        if self.delta.len() <= self.delta_bound() {
            return;
        }
        let mut base: DigestMap<Arc<KeyEntry>> = (*self.base).clone();
        for (hash, change) in self.delta.iter() {
            match change {
                Some(entry) => {
                    base.insert(*hash, entry.clone());
                }
                None => {
                    base.remove(hash);
                }
            }
        }
        self.base = Arc::new(base);
        self.delta = Arc::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u128) -> KeyEntry {
        KeyEntry::new(Uuid::from_u128(n), None, true)
    }

    #[test]
    fn generated_keys_are_prefixed_url_safe_and_hash_to_their_digest() {
        let k = generate().expect("os rng");
        assert!(k.plaintext.starts_with(KEY_PREFIX));
        assert_eq!(k.plaintext.len(), KEY_PREFIX.len() + 43);
        assert!(
            k.plaintext[KEY_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(k.plaintext.starts_with(&k.prefix));
        assert_eq!(hash_key(k.plaintext.as_bytes()), k.hash);
        assert_ne!(generate().expect("os rng").plaintext, k.plaintext);
    }

    #[test]
    fn table_survives_many_inserts_and_removes_across_folds() {
        let mut table = KeyTable::default();
        let hashes: Vec<KeyHash> = (0..5_000u32).map(|i| hash_key(&i.to_le_bytes())).collect();
        for (i, h) in hashes.iter().enumerate() {
            table.insert(*h, entry(i as u128));
        }
        assert_eq!(table.len(), 5_000);
        for h in hashes.iter().step_by(2) {
            table.remove(h);
        }
        assert_eq!(table.len(), 2_500);
        for (i, h) in hashes.iter().enumerate() {
            let found = table.get(h).map(|e| e.id);
            if i % 2 == 0 {
                assert_eq!(found, None, "key {i} was removed");
            } else {
                assert_eq!(found, Some(Uuid::from_u128(i as u128)));
            }
        }
        // Re-adding a removed key works whether its tombstone is in the delta or folded.
        table.insert(hashes[0], entry(42));
        assert_eq!(
            table.get(&hashes[0]).map(|e| e.id),
            Some(Uuid::from_u128(42))
        );
        assert_eq!(table.len(), 2_501);
    }

    #[test]
    fn clones_do_not_see_later_changes() {
        let mut table = KeyTable::from_entries([(hash_key(b"a"), entry(1))]);
        let before = table.clone();
        table.insert(hash_key(b"b"), entry(2));
        table.remove(&hash_key(b"a"));
        assert!(before.get(&hash_key(b"a")).is_some());
        assert!(before.get(&hash_key(b"b")).is_none());
        assert!(table.get(&hash_key(b"a")).is_none());
    }

    #[test]
    fn expired_or_inactive_keys_do_not_admit() {
        let mut e = entry(1);
        e.expires_at = Some(100);
        assert!(e.admits(99));
        assert!(!e.admits(100));
        e.expires_at = None;
        e.active = false;
        assert!(!e.admits(0));
    }
}
