//! The admin state machine: every configuration change is one [`Mutation`], and
//! [`State::apply`] is the only way to change [`State`] — used alike by the API (after the
//! mutation is journaled) and by recovery (replaying the journal).
//!
//! `apply` checks what depends on the rest of the configuration (unique subdomains and
//! names, references that must resolve, references that block a delete) and leaves the
//! state unchanged when it refuses. Shape checks of a single spec (`validate`) happen at the
//! API edge before a mutation is built, because some of them depend on the wall clock
//! (a key's expiry) and must not be re-judged when an old journal is replayed. For the same
//! reason the collection bounds ([`crate::model::limits`]) are checked by
//! [`State::check_capacity`], which the API calls and `apply` does not: a journal written
//! under other bounds still replays.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::certs::{
    CertificateInfo, CertificateSpec, CompiledCertificate, MAX_CERTIFICATES, ServerCertificates,
};
use crate::keys::{KeyEntry, KeyHash, KeyTable, Scope};
use crate::model::limits::{
    MAX_GATEWAYS, MAX_KEYS_PER_GATEWAY, MAX_RULES_PER_GATEWAY, MAX_SERVICES_PER_GATEWAY,
    MAX_UPSTREAMS_PER_GATEWAY,
};
use crate::model::{
    GatewaySpec, Invalid, KeyScopes, Record, RuleSpec, ServiceSpec, StoredKey, UpstreamSpec,
};
use crate::router::MethodSet;

/// One configuration change, as journaled.
// Variants differ in size, but a mutation is built once per admin write and journaled at
// once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Mutation {
    /// Create or replace a gateway.
    PutGateway(Record<GatewaySpec>),
    /// Delete a gateway and everything in it.
    DeleteGateway { id: Uuid },
    /// Create or replace an entity inside a gateway.
    Put { gateway_id: Uuid, entity: Child },
    /// Delete an entity inside a gateway.
    Delete {
        gateway_id: Uuid,
        kind: Kind,
        id: Uuid,
    },
    /// Create or replace a server certificate (server-wide, not in a gateway).
    PutCertificate(Record<CertificateSpec>),
    /// Delete a server certificate.
    DeleteCertificate { id: Uuid },
}

impl Mutation {
    /// The gateway whose compiled view this mutation changes; `None` for certificates,
    /// which change the snapshot's TLS table only.
    pub fn gateway_id(&self) -> Option<Uuid> {
        match self {
            Mutation::PutGateway(r) => Some(r.id),
            Mutation::DeleteGateway { id } => Some(*id),
            Mutation::Put { gateway_id, .. } | Mutation::Delete { gateway_id, .. } => {
                Some(*gateway_id)
            }
            Mutation::PutCertificate(_) | Mutation::DeleteCertificate { .. } => None,
        }
    }
}

/// An entity that lives inside a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Child {
    Upstream(Record<UpstreamSpec>),
    Service(Record<ServiceSpec>),
    Rule(Record<RuleSpec>),
    Key(Record<StoredKey>),
}

impl Child {
    pub fn kind(&self) -> Kind {
        match self {
            Child::Upstream(_) => Kind::Upstream,
            Child::Service(_) => Kind::Service,
            Child::Rule(_) => Kind::Rule,
            Child::Key(_) => Kind::Key,
        }
    }
}

/// The kinds of [`Child`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Upstream,
    Service,
    Rule,
    Key,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upstream => "upstream",
            Kind::Service => "service",
            Kind::Rule => "rule",
            Kind::Key => "api key",
        }
    }

    /// The collection's name in messages: `gateway … already has 10000 rules`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Upstream => "upstreams",
            Kind::Service => "services",
            Kind::Rule => "rules",
            Kind::Key => "API keys",
        }
    }

    /// How many entities of this kind one gateway may hold ([`crate::model::limits`]).
    pub fn max_per_gateway(self) -> usize {
        match self {
            Kind::Upstream => MAX_UPSTREAMS_PER_GATEWAY,
            Kind::Service => MAX_SERVICES_PER_GATEWAY,
            Kind::Rule => MAX_RULES_PER_GATEWAY,
            Kind::Key => MAX_KEYS_PER_GATEWAY,
        }
    }
}

/// Why `apply` refused a mutation. The state is unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyError {
    /// The entity (or its gateway) does not exist.
    NotFound(String),
    /// A uniqueness rule, or a reference that blocks a delete.
    Conflict(String),
    /// A reference that does not resolve, with the field that holds it.
    Invalid(Invalid),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::NotFound(m) | ApplyError::Conflict(m) => f.write_str(m),
            ApplyError::Invalid(i) => i.fmt(f),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Why [`State::check_capacity`] refused a mutation: it would add an entity to a collection
/// that is already at its bound. Nothing was changed; deleting an entity makes room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The server already holds `max` gateways.
    Gateways { max: usize },
    /// The server already holds `max` certificates.
    Certificates { max: usize },
    /// The gateway already holds `max` entities of `kind`.
    Children {
        gateway_id: Uuid,
        kind: Kind,
        max: usize,
    },
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Full::Gateways { max } => write!(
                f,
                "there are already {max} gateways (the maximum); delete one to make room"
            ),
            Full::Certificates { max } => write!(
                f,
                "there are already {max} certificates (the maximum); delete one to make room"
            ),
            Full::Children {
                gateway_id,
                kind,
                max,
            } => write!(
                f,
                "gateway {gateway_id} already has {max} {} (the maximum); delete one to make room",
                kind.plural()
            ),
        }
    }
}

impl std::error::Error for Full {}

/// One gateway and everything that belongs to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayState {
    pub gateway: Record<GatewaySpec>,
    pub upstreams: BTreeMap<Uuid, Record<UpstreamSpec>>,
    pub services: BTreeMap<Uuid, Record<ServiceSpec>>,
    pub rules: BTreeMap<Uuid, Record<RuleSpec>>,
    pub keys: BTreeMap<Uuid, Record<StoredKey>>,
    /// Derived from `keys`; rebuilt on load, kept in step by `apply`.
    #[serde(skip)]
    key_table: KeyTable,
    /// Derived: (kind, name) → id, so uniqueness checks stay O(1) with 100 000 keys.
    #[serde(skip)]
    names: HashMap<(Kind, String), Uuid>,
}

impl GatewayState {
    fn new(gateway: Record<GatewaySpec>) -> GatewayState {
        GatewayState {
            gateway,
            upstreams: BTreeMap::new(),
            services: BTreeMap::new(),
            rules: BTreeMap::new(),
            keys: BTreeMap::new(),
            key_table: KeyTable::default(),
            names: HashMap::new(),
        }
    }

    /// The authentication table for this gateway's keys.
    pub fn key_table(&self) -> &KeyTable {
        &self.key_table
    }

    /// Rebuilds what is derived from the stored records (after loading a checkpoint).
    fn rebuild_indexes(&mut self) {
        self.key_table = KeyTable::from_entries(self.keys.values().flat_map(key_entries));
        let names = self
            .upstreams
            .values()
            .map(|r| ((Kind::Upstream, r.spec.name.clone()), r.id))
            .chain(
                self.services
                    .values()
                    .map(|r| ((Kind::Service, r.spec.name.clone()), r.id)),
            )
            .chain(
                self.keys
                    .values()
                    .map(|r| ((Kind::Key, r.spec.spec.name.clone()), r.id)),
            );
        self.names = names.collect();
    }

    /// The id of the `kind` entity named `name`, if any. Rules have no names.
    pub fn id_by_name(&self, kind: Kind, name: &str) -> Option<Uuid> {
        self.names.get(&(kind, name.to_owned())).copied()
    }

    /// Removes a deleted rule or service from every key's scopes (one list, chosen by
    /// `list`). A key whose list this empties is deactivated: an empty list means
    /// "everything", and deleting what a key was limited to must never widen it.
    fn unscope(&mut self, id: Uuid, list: fn(&mut KeyScopes) -> &mut Vec<Uuid>) {
        for record in self.keys.values_mut() {
            let ids = list(&mut record.spec.spec.scopes);
            if !ids.contains(&id) {
                continue;
            }
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                record.spec.spec.active = false;
            }
            for (hash, entry) in key_entries(record) {
                self.key_table.insert(hash, entry);
            }
        }
    }

    fn rename(&mut self, kind: Kind, id: Uuid, old: Option<&str>, new: Option<&str>) {
        if let Some(old) = old {
            self.names.remove(&(kind, old.to_owned()));
        }
        if let Some(new) = new {
            self.names.insert((kind, new.to_owned()), id);
        }
    }
}

/// The same configuration: every record, and the tables derived from them (`apply` keeps
/// those in step, so a state whose indexes drifted is not equal to one that is right). The
/// key table is compared by what it answers for each stored key, and by its size.
impl PartialEq for GatewayState {
    fn eq(&self, other: &GatewayState) -> bool {
        self.gateway == other.gateway
            && self.upstreams == other.upstreams
            && self.services == other.services
            && self.rules == other.rules
            && self.keys == other.keys
            && self.names == other.names
            && self.key_table.len() == other.key_table.len()
            && self
                .keys
                .values()
                .flat_map(key_entries)
                .all(|(hash, _)| self.key_table.get(&hash) == other.key_table.get(&hash))
    }
}

/// The key table's entries for one key: its secret, and the secret its last rotation
/// replaced (accepted until the end of the grace period, or the key's expiry if sooner).
fn key_entries(record: &Record<StoredKey>) -> impl Iterator<Item = (KeyHash, KeyEntry)> + '_ {
    let spec = &record.spec.spec;
    let expires_at = spec.expires_at.map(|t| t.unix_timestamp());
    let current = KeyEntry {
        id: record.id,
        expires_at,
        active: spec.active,
        key_expires_at: expires_at,
        scope: Scope::compile(&spec.scopes),
        rotated_out: false,
    };
    let previous = record.spec.previous.as_ref().map(|p| {
        let until = p.valid_until.unix_timestamp();
        let entry = KeyEntry {
            expires_at: Some(expires_at.map_or(until, |e| e.min(until))),
            rotated_out: true,
            ..current.clone()
        };
        (p.hash, entry)
    });
    std::iter::once((record.spec.hash, current)).chain(previous)
}

/// The digests a stored key answers to.
fn key_hashes(record: &Record<StoredKey>) -> impl Iterator<Item = KeyHash> + '_ {
    std::iter::once(record.spec.hash).chain(record.spec.previous.as_ref().map(|p| p.hash))
}

/// All configuration. Ids are UUIDv7, so `BTreeMap` order is creation order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Persisted")]
pub struct State {
    gateways: BTreeMap<Uuid, GatewayState>,
    /// Server certificates for the HTTPS listener; not in any gateway.
    certificates: BTreeMap<Uuid, Record<CertificateSpec>>,
    #[serde(skip)]
    subdomains: HashMap<String, Uuid>,
    /// Derived from `certificates` (and the default certificate the process sets).
    #[serde(skip)]
    tls: TlsTable,
}

#[derive(Deserialize)]
struct Persisted {
    gateways: BTreeMap<Uuid, GatewayState>,
    /// Absent in checkpoints written before certificates existed.
    #[serde(default)]
    certificates: BTreeMap<Uuid, Record<CertificateSpec>>,
}

impl From<Persisted> for State {
    fn from(p: Persisted) -> State {
        let mut gateways = p.gateways;
        let mut subdomains = HashMap::with_capacity(gateways.len());
        for (id, g) in gateways.iter_mut() {
            g.rebuild_indexes();
            subdomains.insert(g.gateway.spec.subdomain.clone(), *id);
        }
        let mut state = State {
            gateways,
            certificates: p.certificates,
            subdomains,
            tls: TlsTable::default(),
        };
        let ids: Vec<Uuid> = state.certificates.keys().copied().collect();
        for id in ids {
            state.compile_certificate(id);
        }
        state.tls.rebuild();
        state
    }
}

/// The certificates compiled for handshakes (parsed once, on the admin thread) and the
/// SNI table built from them, which snapshots share.
#[derive(Debug, Clone, Default)]
struct TlsTable {
    compiled: HashMap<Uuid, Arc<CompiledCertificate>>,
    /// `*.<base-domain>`: the newest certificate with this name is the default.
    base_wildcard: Option<String>,
    /// The default when no certificate has `base_wildcard` (the development certificate).
    fallback: Option<Arc<CompiledCertificate>>,
    server: Arc<ServerCertificates>,
}

impl TlsTable {
    fn rebuild(&mut self) {
        let mut ids: Vec<&Uuid> = self.compiled.keys().collect();
        ids.sort();
        let certs: Vec<&CompiledCertificate> = ids
            .into_iter()
            .filter_map(|id| self.compiled.get(id))
            .map(|c| &**c)
            .collect();
        let covering = self.base_wildcard.as_ref().and_then(|wildcard| {
            certs
                .iter()
                .rev()
                .find(|c| c.info.sans.contains(wildcard))
                .copied()
        });
        let default = covering.or(self.fallback.as_deref());
        self.server = Arc::new(ServerCertificates::build(certs, default));
    }
}

/// Derived: equal when the same certificates are compiled and a default is set alike.
impl PartialEq for TlsTable {
    fn eq(&self, other: &TlsTable) -> bool {
        self.compiled.len() == other.compiled.len()
            && self
                .compiled
                .keys()
                .all(|id| other.compiled.contains_key(id))
            && self.base_wildcard == other.base_wildcard
            && self.fallback.is_some() == other.fallback.is_some()
    }
}

fn not_found_gateway(id: Uuid) -> ApplyError {
    ApplyError::NotFound(format!("gateway {id} not found"))
}

impl State {
    pub fn gateways(&self) -> impl ExactSizeIterator<Item = &GatewayState> {
        self.gateways.values()
    }

    /// Server certificates, in creation order.
    pub fn certificates(&self) -> impl ExactSizeIterator<Item = &Record<CertificateSpec>> {
        self.certificates.values()
    }

    pub fn certificate(&self, id: Uuid) -> Option<&Record<CertificateSpec>> {
        self.certificates.get(&id)
    }

    /// What the certificate `id` is (names, validity, fingerprint); `None` when it is
    /// unknown or did not compile (logged when it was loaded).
    pub fn certificate_info(&self, id: Uuid) -> Option<&CertificateInfo> {
        self.tls.compiled.get(&id).map(|c| &c.info)
    }

    /// The SNI table for the HTTPS listener (shared, immutable).
    pub fn server_certificates(&self) -> Arc<ServerCertificates> {
        self.tls.server.clone()
    }

    /// Decides the default certificate (served to a handshake without SNI, or for a name
    /// no certificate covers): the newest uploaded certificate for `*.<base_domain>`, else
    /// `fallback` (the development certificate), else none (the handshake fails).
    pub fn set_tls_default(
        &mut self,
        base_domain: &str,
        fallback: Option<Arc<CompiledCertificate>>,
    ) {
        self.tls.base_wildcard = Some(format!("*.{}", base_domain.to_ascii_lowercase()));
        self.tls.fallback = fallback;
        self.tls.rebuild();
    }

    /// The development certificate, when one was set by [`State::set_tls_default`].
    pub fn fallback_certificate(&self) -> Option<&CompiledCertificate> {
        self.tls.fallback.as_deref()
    }

    /// Parses certificate `id` for handshakes. A stored certificate that no longer
    /// compiles (it passed validation when it was written) is logged and not served.
    fn compile_certificate(&mut self, id: Uuid) {
        let Some(record) = self.certificates.get(&id) else {
            self.tls.compiled.remove(&id);
            return;
        };
        match CompiledCertificate::compile(&record.spec) {
            Ok(c) => {
                self.tls.compiled.insert(id, Arc::new(c));
            }
            Err(e) => {
                self.tls.compiled.remove(&id);
                tracing::error!(
                    certificate = %record.spec.name, %id, error = %e,
                    "a stored certificate does not load; it is not served"
                );
            }
        }
    }

    pub fn gateway(&self, id: Uuid) -> Option<&GatewayState> {
        self.gateways.get(&id)
    }

    pub fn gateway_by_subdomain(&self, subdomain: &str) -> Option<&GatewayState> {
        self.subdomains
            .get(subdomain)
            .and_then(|id| self.gateways.get(id))
    }

    /// The mutations that rebuild this state from [`State::default`] through
    /// [`State::apply`], in order: for each gateway (by id), the gateway, then its upstreams,
    /// services, rules and keys (each by id). That order meets every check `apply` makes:
    /// a service's upstreams and a rule's services are put before it, and names, subdomains
    /// and rule routes are already unique in `self`, so any prefix of them is too. Records
    /// are put whole, timestamps included, so the rebuilt state equals `self`. A checkpoint
    /// or a diff can be expressed in the same values the journal holds.
    pub fn mutations(&self) -> Vec<Mutation> {
        let mut out = Vec::with_capacity(
            self.certificates.len()
                + self
                    .gateways
                    .values()
                    .map(|g| {
                        1 + g.upstreams.len() + g.services.len() + g.rules.len() + g.keys.len()
                    })
                    .sum::<usize>(),
        );
        out.extend(
            self.certificates
                .values()
                .cloned()
                .map(Mutation::PutCertificate),
        );
        for g in self.gateways.values() {
            out.push(Mutation::PutGateway(g.gateway.clone()));
            let gateway_id = g.gateway.id;
            let put = |entity| Mutation::Put { gateway_id, entity };
            out.extend(g.upstreams.values().cloned().map(Child::Upstream).map(put));
            out.extend(g.services.values().cloned().map(Child::Service).map(put));
            out.extend(g.rules.values().cloned().map(Child::Rule).map(put));
            out.extend(g.keys.values().cloned().map(Child::Key).map(put));
        }
        out
    }

    /// Applies one mutation, or refuses it and leaves the state unchanged.
    pub fn apply(&mut self, m: &Mutation) -> Result<(), ApplyError> {
        self.check(m)?;
        match m {
            Mutation::PutGateway(record) => match self.gateways.get_mut(&record.id) {
                Some(existing) => {
                    self.subdomains.remove(&existing.gateway.spec.subdomain);
                    existing.gateway = record.clone();
                    self.subdomains
                        .insert(record.spec.subdomain.clone(), record.id);
                }
                None => {
                    self.subdomains
                        .insert(record.spec.subdomain.clone(), record.id);
                    self.gateways
                        .insert(record.id, GatewayState::new(record.clone()));
                }
            },
            Mutation::DeleteGateway { id } => {
                if let Some(g) = self.gateways.remove(id) {
                    self.subdomains.remove(&g.gateway.spec.subdomain);
                }
            }
            Mutation::Put { gateway_id, entity } => {
                let g = self
                    .gateways
                    .get_mut(gateway_id)
                    .ok_or_else(|| not_found_gateway(*gateway_id))?;
                match entity {
                    Child::Upstream(r) => {
                        let old = g.upstreams.insert(r.id, r.clone());
                        let old_name = old.as_ref().map(|o| o.spec.name.as_str());
                        g.rename(Kind::Upstream, r.id, old_name, Some(&r.spec.name));
                    }
                    Child::Service(r) => {
                        let old = g.services.insert(r.id, r.clone());
                        let old_name = old.as_ref().map(|o| o.spec.name.as_str());
                        g.rename(Kind::Service, r.id, old_name, Some(&r.spec.name));
                    }
                    Child::Rule(r) => {
                        g.rules.insert(r.id, r.clone());
                    }
                    Child::Key(r) => {
                        let old = g.keys.insert(r.id, r.clone());
                        if let Some(old) = &old {
                            for hash in key_hashes(old) {
                                if !key_hashes(r).any(|h| h == hash) {
                                    g.key_table.remove(&hash);
                                }
                            }
                        }
                        for (hash, entry) in key_entries(r) {
                            g.key_table.insert(hash, entry);
                        }
                        let old_name = old.as_ref().map(|o| o.spec.spec.name.as_str());
                        g.rename(Kind::Key, r.id, old_name, Some(&r.spec.spec.name));
                    }
                }
            }
            Mutation::Delete {
                gateway_id,
                kind,
                id,
            } => {
                let g = self
                    .gateways
                    .get_mut(gateway_id)
                    .ok_or_else(|| not_found_gateway(*gateway_id))?;
                match kind {
                    Kind::Upstream => {
                        if let Some(old) = g.upstreams.remove(id) {
                            g.rename(Kind::Upstream, *id, Some(&old.spec.name), None);
                        }
                    }
                    Kind::Service => {
                        if let Some(old) = g.services.remove(id) {
                            g.rename(Kind::Service, *id, Some(&old.spec.name), None);
                            g.unscope(*id, |s| &mut s.services);
                        }
                    }
                    Kind::Rule => {
                        if g.rules.remove(id).is_some() {
                            g.unscope(*id, |s| &mut s.rules);
                        }
                    }
                    Kind::Key => {
                        if let Some(old) = g.keys.remove(id) {
                            for hash in key_hashes(&old) {
                                g.key_table.remove(&hash);
                            }
                            g.rename(Kind::Key, *id, Some(&old.spec.spec.name), None);
                        }
                    }
                }
            }
            Mutation::PutCertificate(record) => {
                self.certificates.insert(record.id, record.clone());
                self.compile_certificate(record.id);
                self.tls.rebuild();
            }
            Mutation::DeleteCertificate { id } => {
                self.certificates.remove(id);
                self.tls.compiled.remove(id);
                self.tls.rebuild();
            }
        }
        #[cfg(debug_assertions)]
        self.assert_invariants();
        Ok(())
    }

    /// Refuses a mutation that would add a gateway, or an entity to a gateway, beyond the
    /// bounds in [`crate::model::limits`]. Replacing or deleting is never refused. A missing
    /// gateway passes here and is reported by [`State::check`].
    ///
    /// The admin API calls this before journaling; `apply` does not, so recovery replays a
    /// journal written under other bounds.
    pub fn check_capacity(&self, m: &Mutation) -> Result<(), Full> {
        match m {
            Mutation::PutGateway(record) => {
                if !self.gateways.contains_key(&record.id) && self.gateways.len() >= MAX_GATEWAYS {
                    return Err(Full::Gateways { max: MAX_GATEWAYS });
                }
                Ok(())
            }
            Mutation::Put { gateway_id, entity } => {
                let Some(g) = self.gateways.get(gateway_id) else {
                    return Ok(());
                };
                let (len, exists) = match entity {
                    Child::Upstream(r) => (g.upstreams.len(), g.upstreams.contains_key(&r.id)),
                    Child::Service(r) => (g.services.len(), g.services.contains_key(&r.id)),
                    Child::Rule(r) => (g.rules.len(), g.rules.contains_key(&r.id)),
                    Child::Key(r) => (g.keys.len(), g.keys.contains_key(&r.id)),
                };
                let kind = entity.kind();
                let max = kind.max_per_gateway();
                if !exists && len >= max {
                    return Err(Full::Children {
                        gateway_id: *gateway_id,
                        kind,
                        max,
                    });
                }
                Ok(())
            }
            Mutation::PutCertificate(record) => {
                if !self.certificates.contains_key(&record.id)
                    && self.certificates.len() >= MAX_CERTIFICATES
                {
                    return Err(Full::Certificates {
                        max: MAX_CERTIFICATES,
                    });
                }
                Ok(())
            }
            Mutation::DeleteGateway { .. }
            | Mutation::Delete { .. }
            | Mutation::DeleteCertificate { .. } => Ok(()),
        }
    }

    /// Everything `apply` refuses, without changing anything.
    pub fn check(&self, m: &Mutation) -> Result<(), ApplyError> {
        match m {
            Mutation::PutGateway(record) => {
                if let Some(&owner) = self.subdomains.get(&record.spec.subdomain)
                    && owner != record.id
                {
                    return Err(ApplyError::Conflict(format!(
                        "subdomain {:?} is already used by gateway {owner}",
                        record.spec.subdomain
                    )));
                }
                Ok(())
            }
            Mutation::DeleteGateway { id } => self
                .gateways
                .get(id)
                .map(drop)
                .ok_or_else(|| not_found_gateway(*id)),
            Mutation::Put { gateway_id, entity } => {
                let g = self
                    .gateways
                    .get(gateway_id)
                    .ok_or_else(|| not_found_gateway(*gateway_id))?;
                check_put(g, entity)
            }
            Mutation::Delete {
                gateway_id,
                kind,
                id,
            } => {
                let g = self
                    .gateways
                    .get(gateway_id)
                    .ok_or_else(|| not_found_gateway(*gateway_id))?;
                check_delete(g, *kind, *id)
            }
            Mutation::PutCertificate(record) => {
                let taken = self
                    .certificates
                    .values()
                    .find(|c| c.spec.name == record.spec.name && c.id != record.id);
                if let Some(other) = taken {
                    return Err(ApplyError::Conflict(format!(
                        "certificate name {:?} is already used by certificate {}",
                        record.spec.name, other.id
                    )));
                }
                Ok(())
            }
            Mutation::DeleteCertificate { id } => {
                if self.certificates.contains_key(id) {
                    Ok(())
                } else {
                    Err(ApplyError::NotFound(format!("certificate {id} not found")))
                }
            }
        }
    }

    #[cfg(debug_assertions)]
    fn assert_invariants(&self) {
        assert_eq!(self.subdomains.len(), self.gateways.len());
        for (id, g) in &self.gateways {
            assert_eq!(self.subdomains.get(&g.gateway.spec.subdomain), Some(id));
            assert_eq!(
                g.key_table.len(),
                g.keys
                    .values()
                    .map(|k| key_hashes(k).count())
                    .sum::<usize>()
            );
            assert_eq!(
                g.names.len(),
                g.upstreams.len() + g.services.len() + g.keys.len()
            );
            for s in g.services.values() {
                assert!(s.spec.upstream_ids().all(|u| g.upstreams.contains_key(&u)));
            }
            for r in g.rules.values() {
                assert!(r.spec.service_ids().all(|s| g.services.contains_key(&s)));
            }
        }
    }
}

fn unique_name(g: &GatewayState, kind: Kind, id: Uuid, name: &str) -> Result<(), ApplyError> {
    match g.id_by_name(kind, name) {
        Some(other) if other != id => Err(ApplyError::Conflict(format!(
            "{} named {name:?} already exists in this gateway ({other})",
            kind.as_str()
        ))),
        _ => Ok(()),
    }
}

fn check_put(g: &GatewayState, entity: &Child) -> Result<(), ApplyError> {
    match entity {
        Child::Upstream(r) => unique_name(g, Kind::Upstream, r.id, &r.spec.name),
        Child::Service(r) => {
            unique_name(g, Kind::Service, r.id, &r.spec.name)?;
            let fields = std::iter::once("upstream_id".to_owned()).chain(
                (0..r.spec.fallback_upstream_ids.len())
                    .map(|i| format!("fallback_upstream_ids[{i}]")),
            );
            for (field, upstream) in fields.zip(r.spec.upstream_ids()) {
                if !g.upstreams.contains_key(&upstream) {
                    return Err(ApplyError::Invalid(Invalid::new(
                        field,
                        format!("upstream {upstream} does not exist in this gateway"),
                    )));
                }
            }
            Ok(())
        }
        Child::Rule(r) => {
            let fields = r
                .spec
                .service_id
                .iter()
                .map(|_| "service_id".to_owned())
                .chain((0..r.spec.services.len()).map(|i| format!("services[{i}].service_id")));
            for (field, service) in fields.zip(r.spec.service_ids()) {
                if !g.services.contains_key(&service) {
                    return Err(ApplyError::Invalid(Invalid::new(
                        field,
                        format!("service {service} does not exist in this gateway"),
                    )));
                }
            }
            for (other_id, other) in &g.rules {
                if *other_id != r.id && rules_collide(&r.spec, &other.spec) {
                    return Err(ApplyError::Conflict(format!(
                        "rule {other_id} already routes {} with the same headers and priority \
                         and overlapping methods",
                        other.spec.path
                    )));
                }
            }
            Ok(())
        }
        Child::Key(r) => {
            unique_name(g, Kind::Key, r.id, &r.spec.spec.name)?;
            let scopes = &r.spec.spec.scopes;
            for (i, rule) in scopes.rules.iter().enumerate() {
                if !g.rules.contains_key(rule) {
                    return Err(ApplyError::Invalid(Invalid::new(
                        format!("scopes.rules[{i}]"),
                        format!("rule {rule} does not exist in this gateway"),
                    )));
                }
            }
            for (i, service) in scopes.services.iter().enumerate() {
                if !g.services.contains_key(service) {
                    return Err(ApplyError::Invalid(Invalid::new(
                        format!("scopes.services[{i}]"),
                        format!("service {service} does not exist in this gateway"),
                    )));
                }
            }
            Ok(())
        }
    }
}

/// Two active rules that no request could tell apart.
fn rules_collide(a: &RuleSpec, b: &RuleSpec) -> bool {
    if !(a.active && b.active)
        || a.path != b.path
        || a.headers != b.headers
        || a.priority != b.priority
    {
        return false;
    }
    match (MethodSet::parse(&a.methods), MethodSet::parse(&b.methods)) {
        (Ok(x), Ok(y)) => x.iter().any(|m| y.contains(m)),
        _ => false,
    }
}

fn check_delete(g: &GatewayState, kind: Kind, id: Uuid) -> Result<(), ApplyError> {
    let exists = match kind {
        Kind::Upstream => g.upstreams.contains_key(&id),
        Kind::Service => g.services.contains_key(&id),
        Kind::Rule => g.rules.contains_key(&id),
        Kind::Key => g.keys.contains_key(&id),
    };
    if !exists {
        return Err(ApplyError::NotFound(format!(
            "{} {id} not found in gateway {}",
            kind.as_str(),
            g.gateway.id
        )));
    }
    match kind {
        Kind::Upstream => {
            if let Some(s) = g
                .services
                .values()
                .find(|s| s.spec.upstream_ids().any(|u| u == id))
            {
                return Err(ApplyError::Conflict(format!(
                    "upstream {id} is used by service {:?} ({}); change or delete that service first",
                    s.spec.name, s.id
                )));
            }
        }
        Kind::Service => {
            if let Some(r) = g
                .rules
                .values()
                .find(|r| r.spec.service_ids().any(|s| s == id))
            {
                return Err(ApplyError::Conflict(format!(
                    "service {id} is used by rule {} ({}); change or delete that rule first",
                    r.id, r.spec.path
                )));
            }
        }
        Kind::Rule | Kind::Key => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hash_key;
    use crate::model::{GatewayStatus, KeySpec};
    use serde_json::json;
    use time::OffsetDateTime;

    fn record<T>(spec: T) -> Record<T> {
        Record {
            id: Uuid::now_v7(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            spec,
        }
    }

    fn certificate(name: &str, san: &str) -> Record<CertificateSpec> {
        let mut params = rcgen::CertificateParams::new(vec![san.to_owned()]).expect("params");
        params.not_before = OffsetDateTime::now_utc();
        params.not_after = params.not_before + time::Duration::days(3);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        record(CertificateSpec {
            name: name.into(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    #[test]
    fn certificates_are_put_replaced_and_deleted_with_their_sni_table() {
        let mut state = State::default();
        let empty = state.server_certificates();
        assert!(empty.is_empty());
        let a = certificate("a", "a.example.com");
        state
            .apply(&Mutation::PutCertificate(a.clone()))
            .expect("put");
        let table = state.server_certificates();
        assert!(!Arc::ptr_eq(&empty, &table));
        assert!(table.select(Some("a.example.com")).is_some());
        assert!(table.select(Some("b.example.com")).is_none());
        assert_eq!(
            state.certificate_info(a.id).map(|i| i.sans.clone()),
            Some(vec!["a.example.com".to_owned()])
        );
        // A second certificate may not take the name.
        let clash = certificate("a", "b.example.com");
        assert!(matches!(
            state.apply(&Mutation::PutCertificate(clash)),
            Err(ApplyError::Conflict(_))
        ));
        // Replacing keeps the name, changes the names served.
        let mut replaced = certificate("a", "b.example.com");
        replaced.id = a.id;
        state
            .apply(&Mutation::PutCertificate(replaced))
            .expect("replace");
        let table = state.server_certificates();
        assert!(table.select(Some("a.example.com")).is_none());
        assert!(table.select(Some("b.example.com")).is_some());
        // Rebuilt from its mutations (a checkpoint), the state is the same.
        let mut rebuilt = State::default();
        for m in state.mutations() {
            rebuilt.apply(&m).expect("replay");
        }
        assert_eq!(rebuilt, state);
        let json = serde_json::to_string(&state).expect("serialize");
        let back: State = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, state);
        assert!(
            back.server_certificates()
                .select(Some("b.example.com"))
                .is_some()
        );
        state
            .apply(&Mutation::DeleteCertificate { id: a.id })
            .expect("delete");
        assert!(state.server_certificates().is_empty());
        assert!(matches!(
            state.apply(&Mutation::DeleteCertificate { id: a.id }),
            Err(ApplyError::NotFound(_))
        ));
    }

    fn gateway(subdomain: &str) -> Record<GatewaySpec> {
        record(GatewaySpec {
            name: subdomain.into(),
            subdomain: subdomain.into(),
            status: GatewayStatus::Active,
            required_plugins: Vec::new(),
            key_expiry_warning: crate::duration::Span::from_secs(7 * 86_400),
            anomaly_detection: crate::model::AnomalySettings::default(),
        })
    }

    fn upstream(name: &str) -> Record<UpstreamSpec> {
        record(
            serde_json::from_value(json!({
                "name": name,
                "targets": [{"host": "127.0.0.1", "port": 9000}],
                "health_checks": {"active": {"interval": "5s"}, "passive": {}},
                "pool": {"max_idle": 8, "idle_timeout": "30s"}
            }))
            .expect("upstream"),
        )
    }

    fn service(name: &str, upstream_id: Uuid) -> Record<ServiceSpec> {
        record(
            serde_json::from_value(json!({
                "name": name, "type": "ai", "upstream_id": upstream_id,
                "timeout": "30s", "metadata": {"owner": "ml"}
            }))
            .expect("service"),
        )
    }

    fn rule(path: &str, service_id: Uuid) -> Record<RuleSpec> {
        record(
            serde_json::from_value(json!({
                "path": path, "service_id": service_id, "methods": ["GET"],
                "headers": {"x-version": "2"}
            }))
            .expect("rule"),
        )
    }

    fn key(name: &str) -> Record<StoredKey> {
        record(StoredKey {
            spec: KeySpec {
                name: name.into(),
                expires_at: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::days(30_000)),
                active: true,
                scopes: Default::default(),
                budget: None,
            },
            prefix: "sgk_test".into(),
            hash: hash_key(name.as_bytes()),
            rotated_at: None,
            previous: None,
        })
    }

    fn put(gateway_id: Uuid, entity: Child) -> Mutation {
        Mutation::Put { gateway_id, entity }
    }

    /// A gateway with one of everything; returns (state, gateway, upstream, service, rule, key).
    fn populated() -> (State, [Uuid; 5]) {
        let mut state = State::default();
        let g = gateway("api");
        let u = upstream("origin");
        let s = service("chat", u.id);
        let r = rule("/v1/*", s.id);
        let k = key("ci");
        let ids = [g.id, u.id, s.id, r.id, k.id];
        for m in [
            Mutation::PutGateway(g),
            put(ids[0], Child::Upstream(u)),
            put(ids[0], Child::Service(s)),
            put(ids[0], Child::Rule(r)),
            put(ids[0], Child::Key(k)),
        ] {
            state.apply(&m).expect("valid mutation");
        }
        (state, ids)
    }

    #[test]
    fn duplicate_subdomain_is_a_conflict_and_changes_nothing() {
        let (mut state, _) = populated();
        let err = state
            .apply(&Mutation::PutGateway(gateway("api")))
            .expect_err("duplicate");
        assert!(matches!(err, ApplyError::Conflict(_)), "{err}");
        assert_eq!(state.gateways().len(), 1);
    }

    #[test]
    fn renaming_frees_the_old_name_and_duplicate_names_conflict() {
        let (mut state, [g, u, ..]) = populated();
        let other = upstream("other");
        state
            .apply(&put(g, Child::Upstream(other.clone())))
            .expect("new name");
        let mut clash = upstream("origin");
        clash.id = other.id;
        assert!(matches!(
            state.apply(&put(g, Child::Upstream(clash))),
            Err(ApplyError::Conflict(_))
        ));
        let mut renamed = upstream("renamed");
        renamed.id = u;
        state
            .apply(&put(g, Child::Upstream(renamed)))
            .expect("rename");
        let mut takes_old = upstream("origin");
        takes_old.id = other.id;
        state
            .apply(&put(g, Child::Upstream(takes_old)))
            .expect("the old name is free again");
    }

    #[test]
    fn references_must_resolve_in_the_same_gateway() {
        let (mut state, [g, ..]) = populated();
        let other = gateway("other");
        let other_id = other.id;
        state.apply(&Mutation::PutGateway(other)).expect("gateway");
        let foreign_upstream = state
            .gateway(g)
            .and_then(|gs| gs.upstreams.keys().next().copied())
            .expect("upstream");
        let err = state
            .apply(&put(
                other_id,
                Child::Service(service("s", foreign_upstream)),
            ))
            .expect_err("upstream of another gateway");
        assert!(
            matches!(&err, ApplyError::Invalid(i) if i.path == "upstream_id"),
            "{err}"
        );
    }

    #[test]
    fn deleting_what_is_referenced_conflicts_and_cascade_removes_everything() {
        let (mut state, [g, u, s, r, k]) = populated();
        let del = |kind, id| Mutation::Delete {
            gateway_id: g,
            kind,
            id,
        };
        assert!(matches!(
            state.apply(&del(Kind::Upstream, u)),
            Err(ApplyError::Conflict(_))
        ));
        assert!(matches!(
            state.apply(&del(Kind::Service, s)),
            Err(ApplyError::Conflict(_))
        ));
        state.apply(&del(Kind::Rule, r)).expect("rule");
        state
            .apply(&del(Kind::Service, s))
            .expect("service now unused");
        assert!(matches!(
            state.apply(&del(Kind::Rule, r)),
            Err(ApplyError::NotFound(_))
        ));
        let hash = hash_key(b"ci");
        assert!(
            state
                .gateway(g)
                .is_some_and(|gs| gs.key_table().get(&hash).is_some())
        );
        state.apply(&del(Kind::Key, k)).expect("key");
        assert!(
            state
                .gateway(g)
                .is_some_and(|gs| gs.key_table().get(&hash).is_none())
        );
        state
            .apply(&Mutation::DeleteGateway { id: g })
            .expect("cascade");
        assert!(state.gateway_by_subdomain("api").is_none());
        state
            .apply(&Mutation::PutGateway(gateway("api")))
            .expect("subdomain is free again");
    }

    #[test]
    fn conflicting_rules_are_refused_but_different_methods_coexist() {
        let (mut state, [g, _, s, ..]) = populated();
        assert!(matches!(
            state.apply(&put(g, Child::Rule(rule("/v1/*", s)))),
            Err(ApplyError::Conflict(_))
        ));
        let mut post = rule("/v1/*", s);
        post.spec.methods = vec!["POST".into()];
        state
            .apply(&put(g, Child::Rule(post)))
            .expect("other method");
    }

    #[test]
    fn state_roundtrips_through_bincode_with_indexes_rebuilt() {
        let (state, [g, ..]) = populated();
        let bytes =
            bincode::serde::encode_to_vec(&state, bincode::config::standard()).expect("encode");
        let (back, _): (State, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        let gs = back.gateway(g).expect("gateway");
        assert!(back.gateway_by_subdomain("api").is_some());
        assert!(gs.key_table().get(&hash_key(b"ci")).is_some());
        assert!(gs.id_by_name(Kind::Upstream, "origin").is_some());
        let original = state.gateway(g).expect("gateway");
        assert_eq!(gs.upstreams, original.upstreams);
        assert_eq!(gs.services, original.services);
        assert_eq!(gs.rules, original.rules);
        assert_eq!(gs.keys, original.keys);
    }

    #[test]
    fn every_mutation_roundtrips_through_bincode() {
        let (state, [g, ..]) = populated();
        let gs = state.gateway(g).expect("gateway");
        let mutations = [
            Mutation::PutGateway(gs.gateway.clone()),
            put(
                g,
                Child::Upstream(gs.upstreams.values().next().cloned().expect("u")),
            ),
            put(
                g,
                Child::Service(gs.services.values().next().cloned().expect("s")),
            ),
            put(
                g,
                Child::Rule(gs.rules.values().next().cloned().expect("r")),
            ),
            put(g, Child::Key(gs.keys.values().next().cloned().expect("k"))),
            Mutation::Delete {
                gateway_id: g,
                kind: Kind::Key,
                id: g,
            },
            Mutation::DeleteGateway { id: g },
        ];
        for m in mutations {
            let bytes =
                bincode::serde::encode_to_vec(&m, bincode::config::standard()).expect("encode");
            let (back, _): (Mutation, usize) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                    .expect("decode");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn a_full_rule_collection_refuses_one_more_but_replacing_and_replaying_still_work() {
        let (mut state, [g, _, s, r, _]) = populated();
        let template = state
            .gateway(g)
            .and_then(|gs| gs.rules.get(&r).cloned())
            .expect("rule");
        // Filled directly: going through `apply` would cost 10 000 collision scans.
        let gs = state.gateways.get_mut(&g).expect("gateway");
        while gs.rules.len() < MAX_RULES_PER_GATEWAY {
            let mut extra = template.clone();
            extra.id = Uuid::now_v7();
            gs.rules.insert(extra.id, extra);
        }
        let one_more = put(g, Child::Rule(rule("/v2/*", s)));
        let err = state.check_capacity(&one_more).expect_err("full");
        assert_eq!(
            err,
            Full::Children {
                gateway_id: g,
                kind: Kind::Rule,
                max: MAX_RULES_PER_GATEWAY
            }
        );
        assert_eq!(
            err.to_string(),
            format!("gateway {g} already has 10000 rules (the maximum); delete one to make room")
        );
        let mut replacement = rule("/v3/*", s);
        replacement.id = r;
        state
            .check_capacity(&put(g, Child::Rule(replacement)))
            .expect("replacing an existing rule adds nothing");
        // Recovery replays through `apply`, which does not judge capacity.
        state.apply(&one_more).expect("replay is not bounded");
    }

    #[test]
    fn a_full_server_refuses_another_gateway_but_not_an_update() {
        let mut state = State::default();
        let first = gateway("first");
        let first_id = first.id;
        state
            .apply(&Mutation::PutGateway(first.clone()))
            .expect("gateway");
        while state.gateways.len() < MAX_GATEWAYS {
            let extra = gateway("x");
            state.gateways.insert(extra.id, GatewayState::new(extra));
        }
        let err = state
            .check_capacity(&Mutation::PutGateway(gateway("another")))
            .expect_err("full");
        assert_eq!(err, Full::Gateways { max: MAX_GATEWAYS });
        assert!(
            err.to_string()
                .contains("already 10000 gateways (the maximum)"),
            "{err}"
        );
        let mut renamed = first;
        renamed.spec.name = "renamed".into();
        assert_eq!(renamed.id, first_id);
        state
            .check_capacity(&Mutation::PutGateway(renamed))
            .expect("an update adds nothing");
    }

    #[test]
    fn every_child_kind_is_bounded_by_its_documented_limit_and_deletes_are_never_refused() {
        assert_eq!(Kind::Upstream.max_per_gateway(), MAX_UPSTREAMS_PER_GATEWAY);
        assert_eq!(Kind::Service.max_per_gateway(), MAX_SERVICES_PER_GATEWAY);
        assert_eq!(Kind::Rule.max_per_gateway(), MAX_RULES_PER_GATEWAY);
        assert_eq!(Kind::Key.max_per_gateway(), MAX_KEYS_PER_GATEWAY);
        let (mut state, [g, ..]) = populated();
        let gs = state.gateways.get_mut(&g).expect("gateway");
        while gs.upstreams.len() < MAX_UPSTREAMS_PER_GATEWAY {
            let extra = upstream("x");
            gs.upstreams.insert(extra.id, extra);
        }
        let err = state
            .check_capacity(&put(g, Child::Upstream(upstream("one-more"))))
            .expect_err("full");
        assert!(
            err.to_string().contains("already has 1000 upstreams"),
            "{err}"
        );
        state
            .check_capacity(&put(g, Child::Key(key("still-room"))))
            .expect("keys are counted separately");
        let victim = *state
            .gateway(g)
            .and_then(|gs| gs.upstreams.keys().last())
            .expect("an upstream");
        state
            .check_capacity(&Mutation::Delete {
                gateway_id: g,
                kind: Kind::Upstream,
                id: victim,
            })
            .expect("a delete makes room");
        state
            .check_capacity(&put(Uuid::now_v7(), Child::Key(key("k"))))
            .expect("a missing gateway is check()'s 404, not a capacity error");
    }

    #[test]
    fn mutations_put_each_gateway_before_its_children_in_dependency_order() {
        let (state, [g, u, s, r, k]) = populated();
        let order: Vec<(Uuid, Option<Kind>, Uuid)> = state
            .mutations()
            .iter()
            .map(|m| match m {
                Mutation::PutGateway(record) => (record.id, None, record.id),
                Mutation::Put { gateway_id, entity } => {
                    let id = match entity {
                        Child::Upstream(r) => r.id,
                        Child::Service(r) => r.id,
                        Child::Rule(r) => r.id,
                        Child::Key(r) => r.id,
                    };
                    (*gateway_id, Some(entity.kind()), id)
                }
                other => panic!("a rebuild never deletes: {other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (g, None, g),
                (g, Some(Kind::Upstream), u),
                (g, Some(Kind::Service), s),
                (g, Some(Kind::Rule), r),
                (g, Some(Kind::Key), k),
            ]
        );
        assert!(State::default().mutations().is_empty());
    }

    /// xorshift64* (Vigna): a few lines, deterministic, good enough to pick test cases; a
    /// failing case is reproduced from its case number alone.
    struct Rng(u64);

    impl Rng {
        fn for_case(case: u64) -> Rng {
            // splitmix64 of the case number: neighbouring cases start far apart, never at 0.
            let mut z = case.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            Rng((z ^ (z >> 31)) | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        fn id(&mut self) -> Uuid {
            Uuid::from_u64_pair(self.next(), self.next())
        }

        /// Mostly an id from `ids`, sometimes a fresh one (a dangling reference, a missing
        /// entity); always a fresh one when `ids` is empty.
        fn existing(&mut self, ids: &[Uuid]) -> Uuid {
            self.existing_or_new(ids, 10)
        }

        /// Half the time a fresh id (a create), else one from `ids` (a replace).
        fn new_or_replaced(&mut self, ids: &[Uuid]) -> Uuid {
            self.existing_or_new(ids, 50)
        }

        fn existing_or_new(&mut self, ids: &[Uuid], new_percent: u64) -> Uuid {
            if ids.is_empty() || self.chance(new_percent) {
                self.id()
            } else {
                ids[self.below(ids.len())]
            }
        }

        fn record<T>(&mut self, id: Uuid, spec: T) -> Record<T> {
            let at = |secs: u64| {
                OffsetDateTime::UNIX_EPOCH + time::Duration::seconds((secs % 4_000_000_000) as i64)
            };
            Record {
                id,
                created_at: at(self.next()),
                updated_at: at(self.next()),
                spec,
            }
        }
    }

    /// One random mutation against `state`, valid or not: small pools of subdomains, names
    /// and paths make conflicts, dangling references and blocked deletes common, so `apply`
    /// refuses a good share of them. `serial` makes every key hash unique, as real keys are.
    fn random_mutation(rng: &mut Rng, state: &State, serial: &mut u64) -> Mutation {
        let gateway_ids: Vec<Uuid> = state.gateways.keys().copied().collect();
        let gateway_id = rng.existing(&gateway_ids);
        let g = state.gateways.get(&gateway_id);
        let ids = |pick: fn(&GatewayState) -> Vec<Uuid>| g.map(pick).unwrap_or_default();
        let upstreams = ids(|g| g.upstreams.keys().copied().collect());
        let services = ids(|g| g.services.keys().copied().collect());
        let rules = ids(|g| g.rules.keys().copied().collect());
        let keys = ids(|g| g.keys.keys().copied().collect());
        let put = |entity| Mutation::Put { gateway_id, entity };
        // Out of 20: gateway puts 3, upstream puts 4 (one in ten of those slots deletes a
        // gateway instead), service and rule puts 3 each, key puts 4, child deletes 3. An
        // empty state gets a gateway first: children need one.
        let choice = if gateway_ids.is_empty() {
            0
        } else {
            rng.below(20)
        };
        match choice {
            0..=2 => {
                let plugins = if rng.chance(30) {
                    json!([{"name": "rate_limiter", "stage": "pre_request", "priority": 1,
                            "settings": {"limits": {"per_ip": {"limit": 5, "window": "1m"}}}}])
                } else {
                    json!([])
                };
                let spec = serde_json::from_value(json!({
                    "name": rng.pick(&["one", "two"]),
                    "subdomain": rng.pick(&["api", "web", "ml", "ops", "edge"]),
                    "status": rng.pick(&["active", "inactive"]),
                    "required_plugins": plugins
                }))
                .expect("gateway spec");
                Mutation::PutGateway(rng.record(gateway_id, spec))
            }
            // Rare: a delete takes a whole gateway's children with it.
            3 if rng.chance(10) => Mutation::DeleteGateway { id: gateway_id },
            3..=6 => {
                let id = rng.new_or_replaced(&upstreams);
                let spec = serde_json::from_value(json!({
                    "name": rng.pick(&["u1", "u2", "u3", "u4", "u5", "u6"]),
                    "targets": [{"host": "127.0.0.1", "port": 9000 + rng.below(3)}]
                }))
                .expect("upstream spec");
                put(Child::Upstream(rng.record(id, spec)))
            }
            7..=9 => {
                let id = rng.new_or_replaced(&services);
                let primary = rng.existing(&upstreams);
                let fallbacks: Vec<Uuid> = (0..rng.below(3))
                    .map(|_| rng.existing(&upstreams))
                    .collect();
                let spec = serde_json::from_value(json!({
                    "name": rng.pick(&["s1", "s2", "s3", "s4", "s5", "s6"]),
                    "type": rng.pick(&["ai", "rest"]),
                    "upstream_id": primary,
                    "fallback_upstream_ids": fallbacks,
                    "retries": rng.below(3)
                }))
                .expect("service spec");
                put(Child::Service(rng.record(id, spec)))
            }
            10..=12 => {
                let id = rng.new_or_replaced(&rules);
                let methods: Vec<&str> = ["GET", "POST", "PUT"]
                    .into_iter()
                    .filter(|_| rng.chance(50))
                    .collect();
                let mut spec = json!({
                    "path": rng.pick(&["/a", "/b", "/b/*", "/c/{id}", "/d/{id}/e"]),
                    "methods": methods,
                    "priority": rng.below(2),
                    "active": rng.chance(80)
                });
                if rng.chance(70) {
                    spec["service_id"] = json!(rng.existing(&services));
                } else {
                    let weighted: Vec<serde_json::Value> = (0..1 + rng.below(2))
                        .map(|_| {
                            json!({"service_id": rng.existing(&services),
                                   "weight": 1 + rng.below(9)})
                        })
                        .collect();
                    spec["services"] = json!(weighted);
                }
                let spec = serde_json::from_value(spec).expect("rule spec");
                put(Child::Rule(rng.record(id, spec)))
            }
            13..=16 => {
                let id = rng.new_or_replaced(&keys);
                let kept_hash = g
                    .and_then(|g| g.keys.get(&id))
                    .map(|k| k.spec.hash)
                    .filter(|_| rng.chance(50));
                let hash = kept_hash.unwrap_or_else(|| {
                    *serial += 1;
                    hash_key(&serial.to_le_bytes())
                });
                let expires_at = rng.chance(50).then(|| {
                    OffsetDateTime::UNIX_EPOCH + time::Duration::days(rng.below(40_000) as i64)
                });
                let spec = StoredKey {
                    spec: KeySpec {
                        name: rng
                            .pick(&["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"])
                            .into(),
                        expires_at,
                        active: rng.chance(80),
                        scopes: Default::default(),
                        budget: None,
                    },
                    prefix: "sgk_test".into(),
                    hash,
                    rotated_at: None,
                    // A rotation: the previous secret is a fresh digest (never one in use).
                    previous: rng.chance(30).then(|| {
                        *serial += 1;
                        crate::model::PreviousSecret {
                            prefix: "sgk_old".into(),
                            hash: hash_key(&serial.to_le_bytes()),
                            valid_until: OffsetDateTime::UNIX_EPOCH
                                + time::Duration::days(rng.below(40_000) as i64),
                        }
                    }),
                };
                put(Child::Key(rng.record(id, spec)))
            }
            _ => {
                let (kind, candidates) = match rng.below(4) {
                    0 => (Kind::Upstream, upstreams),
                    1 => (Kind::Service, services),
                    2 => (Kind::Rule, rules),
                    _ => (Kind::Key, keys),
                };
                Mutation::Delete {
                    gateway_id,
                    kind,
                    id: rng.existing(&candidates),
                }
            }
        }
    }

    fn replay(mutations: &[Mutation]) -> Result<State, (usize, ApplyError)> {
        let mut state = State::default();
        for (i, m) in mutations.iter().enumerate() {
            state.apply(m).map_err(|e| (i, e))?;
        }
        Ok(state)
    }

    /// Sozu's "a state can regenerate the requests that rebuild it", as a property: for
    /// every state reachable through `apply`, replaying `mutations()` into an empty state
    /// is accepted step by step and gives an equal state (records and derived tables). On
    /// the way, every refused mutation must have left the state unchanged.
    #[test]
    fn any_state_built_through_apply_is_rebuilt_equal_by_replaying_its_mutations() {
        const CASES: u64 = 256;
        let (mut accepted, mut refused) = (0usize, 0usize);
        // Entities of each kind in the final states: gateways, upstreams, services, rules, keys.
        let mut built = [0usize; 5];
        let mut serial = 0;
        for case in 0..CASES {
            let mut rng = Rng::for_case(case);
            let mut state = State::default();
            for _ in 0..10 + rng.below(150) {
                let m = random_mutation(&mut rng, &state, &mut serial);
                let before = state.clone();
                match state.apply(&m) {
                    Ok(()) => accepted += 1,
                    Err(e) => {
                        refused += 1;
                        assert!(
                            state == before,
                            "case {case}: refused ({e}) but changed the state: {m:?}"
                        );
                    }
                }
            }
            for g in state.gateways() {
                let counts = [
                    1,
                    g.upstreams.len(),
                    g.services.len(),
                    g.rules.len(),
                    g.keys.len(),
                ];
                for (total, n) in built.iter_mut().zip(counts) {
                    *total += n;
                }
            }

            let mutations = state.mutations();
            let rebuilt = replay(&mutations).unwrap_or_else(|(i, e)| {
                panic!("case {case}: mutation {i} of the rebuild was refused ({e}): {mutations:#?}")
            });
            assert!(
                rebuilt == state,
                "case {case}: rebuilt {rebuilt:#?}\ndiffers from {state:#?}"
            );
            assert_eq!(
                rebuilt.mutations(),
                mutations,
                "case {case}: regenerating from the rebuilt state gives other mutations"
            );
        }
        // The generator must exercise both sides of `apply` and leave every kind of entity
        // in the states it builds, or the property says little.
        let cases = CASES as usize;
        assert!(
            accepted > 20 * cases && refused > 10 * cases,
            "accepted {accepted}, refused {refused}"
        );
        assert!(
            built.iter().all(|&n| n > cases),
            "gateways, upstreams, services, rules, keys built: {built:?}"
        );
    }
}
