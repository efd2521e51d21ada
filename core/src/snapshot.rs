//! The compiled, immutable view of all configuration that proxy workers read.
//!
//! The admin thread compiles a new [`Snapshot`] after every mutation and hands workers an
//! `Arc` of it. Compilation is incremental: only the gateway a mutation touched is
//! recompiled, every other gateway's [`CompiledGateway`] is shared by `Arc` with the previous
//! snapshot, and a gateway's [`KeyTable`] is itself cheap to clone (see [`crate::keys`]).
//! So a write costs O(size of one gateway's routing config + recent key changes), not
//! O(all configuration).
//!
//! Everything a request needs is resolved here, once: the router, plugin chains split by
//! stage and sorted by priority with disabled plugins dropped and settings parsed, and the
//! services and upstreams behind each rule.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use uuid::Uuid;

use crate::ai::budget::{BudgetBook, KeyBudget};
use crate::ai::guard::PromptGuard;
use crate::ai::pii::PiiMasker;
use crate::balance::{Balancer, TargetWeight, hash_bytes};
use crate::certs::ServerCertificates;
use crate::fxhash::IdMap;
use crate::keys::KeyTable;
use crate::model::{
    Algorithm, GatewayStatus, Invalid, PluginConfig, Protocol, Record, RuleSpec, ServiceSpec,
    Stage, UpstreamSpec,
};
use crate::plugins::{self, PluginSettings};
use crate::ratelimit::{LimiterSet, Registry};
use crate::router::{self, MethodSet, PatternError, RouteSpec, Router, UnknownMethod};
use crate::state::{GatewayState, State};

/// An immutable, versioned view of the whole configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Monotonic version; workers report the version they applied.
    pub version: u64,
    by_id: IdMap<Arc<CompiledGateway>>,
    by_subdomain: HashMap<Box<str>, Arc<CompiledGateway>>,
    /// The HTTPS listener's SNI table (shared with the state that built it).
    pub certificates: Arc<ServerCertificates>,
}

/// Turns a target's host into an address. The admin thread passes one that may block on
/// DNS; core itself never does I/O. `None` leaves the target unusable (503) until the next
/// compile resolves it.
pub trait Resolve {
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr>;

    /// Whether active health checks currently hold the target with this
    /// [`CompiledTarget::key`] down. Health flips are published as new snapshots, so
    /// workers read a plain bool instead of a shared atomic per pick.
    fn is_down(&self, _target_key: u64) -> bool {
        false
    }

    /// Where `rate_limiter` plugins get their shared counters. `None` (tests, benchmarks)
    /// compiles rate limiters without limiters, so they admit everything.
    fn rate_limits(&self) -> Option<&Registry> {
        None
    }

    /// Where key budgets keep their spending across snapshots. `None` (tests, benchmarks)
    /// gives each compile fresh cells.
    fn budgets(&self) -> Option<&BudgetBook> {
        None
    }
}

/// Resolves IP literals only; hostnames stay unresolved. For tests and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiteralOnly;

impl Resolve for LiteralOnly {
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse().ok().map(|ip| SocketAddr::new(ip, port))
    }
}

impl Snapshot {
    /// Compiles every gateway (start-up and recovery).
    pub fn compile(version: u64, state: &State, resolver: &dyn Resolve) -> Snapshot {
        let by_id = state
            .gateways()
            .map(|g| {
                (
                    g.gateway.id,
                    Arc::new(CompiledGateway::compile(g, resolver)),
                )
            })
            .collect();
        Snapshot::from_parts(version, by_id, state.server_certificates())
    }

    /// The next snapshot after a mutation of one gateway (`changed`), or of the
    /// certificates only (`None`): that gateway is recompiled from `state` (or dropped if it
    /// no longer exists), the others are shared with `self`; the SNI table is `state`'s.
    pub fn next(
        &self,
        version: u64,
        state: &State,
        changed: Option<Uuid>,
        resolver: &dyn Resolve,
    ) -> Snapshot {
        let mut by_id = self.by_id.clone();
        if let Some(changed) = changed {
            match state.gateway(changed) {
                Some(g) => {
                    by_id.insert(changed, Arc::new(CompiledGateway::compile(g, resolver)));
                }
                None => {
                    by_id.remove(&changed);
                }
            }
        }
        Snapshot::from_parts(version, by_id, state.server_certificates())
    }

    fn from_parts(
        version: u64,
        by_id: IdMap<Arc<CompiledGateway>>,
        certificates: Arc<ServerCertificates>,
    ) -> Snapshot {
        let by_subdomain = by_id
            .values()
            .map(|g| (g.subdomain.clone(), g.clone()))
            .collect();
        Snapshot {
            version,
            by_id,
            by_subdomain,
            certificates,
        }
    }

    /// Every gateway (admin-side tasks such as health checks walk them).
    pub fn gateways(&self) -> impl Iterator<Item = &Arc<CompiledGateway>> {
        self.by_id.values()
    }

    /// The gateway serving `<subdomain>.<base-domain>`.
    pub fn gateway(&self, subdomain: &str) -> Option<&Arc<CompiledGateway>> {
        self.by_subdomain.get(subdomain)
    }

    pub fn gateway_by_id(&self, id: Uuid) -> Option<&Arc<CompiledGateway>> {
        self.by_id.get(&id)
    }

    pub fn gateway_count(&self) -> usize {
        self.by_id.len()
    }
}

/// Why stored configuration does not compile into a working gateway (validation at the
/// API edge makes this rare: a journal written by another version, a plugin since
/// removed). `Display` names the entity and field for the admin log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// The gateway's `required_plugins`.
    GatewayPlugins(PluginChainError),
    /// One rule; the rule is left out of the router.
    Rule { id: Uuid, why: RuleError },
}

/// Why a plugin list (`required_plugins`, a rule's `plugin_chain`) does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginChainError {
    /// `field[index]` names a plugin the catalogue does not know.
    UnknownPlugin {
        field: &'static str,
        index: usize,
        name: String,
    },
    /// `field[index].settings` no longer parse for the plugin.
    Settings {
        field: &'static str,
        index: usize,
        invalid: Invalid,
    },
}

/// Why one rule does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    Path(PatternError),
    Methods(UnknownMethod),
    Plugins(PluginChainError),
    /// A service the rule sends traffic to is not in the gateway.
    MissingService(Uuid),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::GatewayPlugins(why) => why.fmt(f),
            CompileError::Rule { id, why } => write!(f, "rule {id}: {why}"),
        }
    }
}

impl fmt::Display for PluginChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginChainError::UnknownPlugin { field, index, name } => {
                write!(f, "{field}[{index}]: unknown plugin {name:?}")
            }
            PluginChainError::Settings {
                field,
                index,
                invalid,
            } => write!(f, "{field}[{index}].settings: {invalid}"),
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::Path(why) => why.fmt(f),
            RuleError::Methods(why) => why.fmt(f),
            RuleError::Plugins(why) => why.fmt(f),
            RuleError::MissingService(id) => write!(f, "service {id} does not exist"),
        }
    }
}

impl std::error::Error for CompileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CompileError::GatewayPlugins(why) => Some(why),
            CompileError::Rule { why, .. } => Some(why),
        }
    }
}

impl std::error::Error for PluginChainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PluginChainError::UnknownPlugin { .. } => None,
            PluginChainError::Settings { invalid, .. } => Some(invalid),
        }
    }
}

impl std::error::Error for RuleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuleError::Path(why) => Some(why),
            RuleError::Methods(why) => Some(why),
            RuleError::Plugins(why) => Some(why),
            RuleError::MissingService(_) => None,
        }
    }
}

/// One gateway, ready for requests.
#[derive(Debug)]
pub struct CompiledGateway {
    pub id: Uuid,
    pub subdomain: Box<str>,
    pub active: bool,
    /// Set when stored configuration no longer compiles (e.g. after a downgrade): the
    /// gateway then fails closed rather than running without its plugins. The first
    /// failure found; the admin thread logs it.
    pub broken: Option<CompileError>,
    pub keys: KeyTable,
    /// `key_expiry_warning` in seconds: a key expiring sooner gets `X-API-Key-Expires-In`.
    pub key_expiry_warning: i64,
    pub router: Router,
    /// Indexed by the router's route id.
    pub rules: Vec<CompiledRule>,
    /// The gateway's `required_plugins`, by stage.
    pub plugins: Chains,
    pub services: IdMap<Arc<CompiledService>>,
    pub upstreams: IdMap<Arc<CompiledUpstream>>,
    /// Keys with a `budget`, by key id.
    pub budgets: IdMap<Arc<KeyBudget>>,
}

/// An upstream ready for target selection.
#[derive(Debug)]
pub struct CompiledUpstream {
    pub id: Uuid,
    pub spec: Arc<Record<UpstreamSpec>>,
    pub balancer: Balancer,
    /// Indexed like `spec.targets` and the balancer's picks.
    pub targets: Vec<CompiledTarget>,
}

/// One target: its address resolved at compile time, and what the proxy sends it.
#[derive(Debug, Clone)]
pub struct CompiledTarget {
    pub host: Box<str>,
    pub port: u16,
    pub https: bool,
    /// `None` when the host did not resolve: the target is unusable.
    pub addr: Option<SocketAddr>,
    /// Held down by active health checks when this snapshot was compiled.
    pub down: bool,
    /// The Host header value for this target (`host`, or `host:port` off the default port).
    pub host_header: Box<str>,
    /// Stable identity across snapshots (protocol, host, port, address): keys per-worker
    /// connection pools and health, so a config change keeps warm connections.
    pub key: u64,
}

/// A service with its upstreams resolved: the primary first, then the fallbacks in order.
#[derive(Debug)]
pub struct CompiledService {
    pub id: Uuid,
    pub spec: Arc<Record<ServiceSpec>>,
    pub upstreams: Vec<Arc<CompiledUpstream>>,
}

/// Where a rule sends traffic.
#[derive(Debug)]
pub enum RuleTarget {
    One(Arc<CompiledService>),
    /// Traffic shifting: services picked by smooth weighted round-robin per worker.
    Weighted {
        services: Vec<Arc<CompiledService>>,
        balancer: Balancer,
    },
}

/// A routing rule with its plugin chain resolved.
#[derive(Debug)]
pub struct CompiledRule {
    pub id: Uuid,
    pub spec: Arc<RuleSpec>,
    pub plugins: Chains,
    pub target: RuleTarget,
}

/// A plugin ready to run: settings parsed, position fixed.
#[derive(Debug, Clone)]
pub struct CompiledPlugin {
    pub name: &'static str,
    pub priority: i32,
    pub settings: Arc<PluginSettings>,
    /// Stable identity across snapshots: scope (gateway or rule id), name, settings, and
    /// which occurrence of that pair it is. Counters keyed by it survive config changes
    /// that leave the plugin alone.
    pub instance: u64,
    /// `rate_limiter` and `token_rate_limiter`: the shared counters of each configured
    /// dimension.
    pub limiters: Option<LimiterSet>,
    /// `prompt_guard` and `pii_masking`: their patterns, compiled once per snapshot.
    pub guardrail: Option<Guardrail>,
}

/// A compiled guardrail plugin.
#[derive(Debug, Clone)]
pub enum Guardrail {
    Prompt(Arc<PromptGuard>),
    Pii(Arc<PiiMasker>),
}

/// Enabled plugins split by stage, each list sorted by priority (stable: ties keep
/// configuration order).
#[derive(Debug, Default)]
pub struct Chains {
    by_stage: [Vec<CompiledPlugin>; 4],
}

impl Chains {
    pub fn stage(&self, stage: Stage) -> &[CompiledPlugin] {
        &self.by_stage[stage as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.by_stage.iter().all(Vec::is_empty)
    }

    fn compile(
        configs: &[PluginConfig],
        field: &'static str,
        scope: Uuid,
        env: &dyn Resolve,
    ) -> Result<Chains, PluginChainError> {
        let mut chains = Chains::default();
        let mut seen: HashMap<u64, u64> = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            if !config.enabled {
                continue;
            }
            let def =
                plugins::find(&config.name).ok_or_else(|| PluginChainError::UnknownPlugin {
                    field,
                    index: i,
                    name: config.name.clone(),
                })?;
            let settings =
                plugins::parse_settings(def.name, &config.settings.0).map_err(|invalid| {
                    PluginChainError::Settings {
                        field,
                        index: i,
                        invalid,
                    }
                })?;
            let identity = format!("{scope}/{}/{}", def.name, config.settings.0);
            let base = hash_bytes(identity.as_bytes());
            let occurrence = seen.entry(base).or_default();
            let instance = base ^ occurrence.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            *occurrence += 1;
            let limiters = match (&settings, env.rate_limits()) {
                (PluginSettings::RateLimiter(rl), Some(registry)) => {
                    Some(registry.limiter_set(instance, &rl.limits))
                }
                (PluginSettings::TokenRateLimiter(tl), Some(registry)) => {
                    Some(registry.limiter_set(instance, &tl.limits))
                }
                _ => None,
            };
            let invalid = |invalid| PluginChainError::Settings {
                field,
                index: i,
                invalid,
            };
            let guardrail = match &settings {
                PluginSettings::PromptGuard(g) => Some(Guardrail::Prompt(Arc::new(
                    PromptGuard::new(g).map_err(invalid)?,
                ))),
                PluginSettings::PiiMasking(p) => Some(Guardrail::Pii(Arc::new(
                    PiiMasker::new(p).map_err(invalid)?,
                ))),
                _ => None,
            };
            chains.by_stage[config.stage as usize].push(CompiledPlugin {
                name: def.name,
                priority: config.priority,
                settings: Arc::new(settings),
                instance,
                limiters,
                guardrail,
            });
        }
        for list in &mut chains.by_stage {
            list.sort_by_key(|p| p.priority);
        }
        Ok(chains)
    }
}

fn compile_upstream(record: &Record<UpstreamSpec>, resolver: &dyn Resolve) -> CompiledUpstream {
    let targets = record
        .spec
        .targets
        .iter()
        .map(|t| {
            let port = u16::try_from(t.port).unwrap_or(0);
            let https = t.protocol == Protocol::Https;
            let addr = if port == 0 {
                None
            } else {
                resolver.resolve(&t.host, port)
            };
            let default_port = if https { 443 } else { 80 };
            let host_header: Box<str> = if port == default_port {
                t.host.as_str().into()
            } else if t.host.contains(':') && !t.host.starts_with('[') {
                format!("[{}]:{port}", t.host).into()
            } else {
                format!("{}:{port}", t.host).into()
            };
            let identity = format!(
                "{}://{}:{port}@{}",
                if https { "https" } else { "http" },
                t.host,
                addr.map(|a| a.to_string()).unwrap_or_default()
            );
            let key = hash_bytes(identity.as_bytes());
            CompiledTarget {
                host: t.host.as_str().into(),
                port,
                https,
                addr,
                down: resolver.is_down(key),
                host_header,
                key,
            }
        })
        .collect();
    CompiledUpstream {
        id: record.id,
        spec: Arc::new(record.clone()),
        balancer: Balancer::for_upstream(&record.spec),
        targets,
    }
}

impl CompiledGateway {
    pub fn compile(g: &GatewayState, resolver: &dyn Resolve) -> CompiledGateway {
        let spec = &g.gateway.spec;
        let mut broken = None;
        let plugins = Chains::compile(
            &spec.required_plugins,
            "required_plugins",
            g.gateway.id,
            resolver,
        )
        .unwrap_or_else(|why| {
            broken = Some(CompileError::GatewayPlugins(why));
            Chains::default()
        });

        let upstreams: IdMap<Arc<CompiledUpstream>> = g
            .upstreams
            .iter()
            .map(|(id, u)| (*id, Arc::new(compile_upstream(u, resolver))))
            .collect();
        let services: IdMap<Arc<CompiledService>> = g
            .services
            .iter()
            .map(|(id, s)| {
                let compiled = CompiledService {
                    id: *id,
                    spec: Arc::new(s.clone()),
                    // State::apply guarantees these resolve.
                    upstreams: s
                        .spec
                        .upstream_ids()
                        .filter_map(|u| upstreams.get(&u).cloned())
                        .collect(),
                };
                (*id, Arc::new(compiled))
            })
            .collect();

        let mut rules = Vec::with_capacity(g.rules.len());
        let mut routes = Vec::with_capacity(g.rules.len());
        for record in g.rules.values().filter(|r| r.spec.active) {
            let compiled = router::parse_rule_path(&record.spec.path)
                .map_err(RuleError::Path)
                .and_then(|pattern| {
                    let methods =
                        MethodSet::parse(&record.spec.methods).map_err(RuleError::Methods)?;
                    let chains = Chains::compile(
                        &record.spec.plugin_chain,
                        "plugin_chain",
                        record.id,
                        resolver,
                    )
                    .map_err(RuleError::Plugins)?;
                    let target = rule_target(&record.spec, &services)?;
                    Ok((pattern, methods, chains, target))
                });
            match compiled {
                Ok((pattern, methods, chains, target)) => {
                    routes.push(RouteSpec {
                        id: rules.len() as u32,
                        pattern,
                        methods,
                        headers: record
                            .spec
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect(),
                        priority: record.spec.priority,
                    });
                    rules.push(CompiledRule {
                        id: record.id,
                        spec: Arc::new(record.spec.clone()),
                        plugins: chains,
                        target,
                    });
                }
                Err(why) => {
                    broken.get_or_insert(CompileError::Rule { id: record.id, why });
                }
            }
        }

        let budgets = g
            .keys
            .iter()
            .filter_map(|(id, record)| {
                let budget = record.spec.spec.budget.clone()?;
                let cell = match resolver.budgets() {
                    Some(book) => book.cell(*id),
                    None => Arc::default(),
                };
                let compiled = KeyBudget {
                    key: *id,
                    budget,
                    created: record.created_at.unix_timestamp(),
                    cell,
                };
                Some((*id, Arc::new(compiled)))
            })
            .collect();
        CompiledGateway {
            id: g.gateway.id,
            subdomain: spec.subdomain.as_str().into(),
            active: spec.status == GatewayStatus::Active,
            broken,
            keys: g.key_table().clone(),
            key_expiry_warning: spec.key_expiry_warning.as_duration().as_secs() as i64,
            router: Router::build(routes),
            rules,
            plugins,
            services,
            upstreams,
            budgets,
        }
    }
}

fn rule_target(
    spec: &RuleSpec,
    services: &IdMap<Arc<CompiledService>>,
) -> Result<RuleTarget, RuleError> {
    let lookup = |id: Uuid| {
        services
            .get(&id)
            .cloned()
            .ok_or(RuleError::MissingService(id))
    };
    if let Some(id) = spec.service_id {
        return Ok(RuleTarget::One(lookup(id)?));
    }
    let weights: Vec<TargetWeight> = spec
        .services
        .iter()
        .map(|s| TargetWeight {
            weight: s.weight,
            priority: 0,
        })
        .collect();
    Ok(RuleTarget::Weighted {
        services: spec
            .services
            .iter()
            .map(|s| lookup(s.service_id))
            .collect::<Result<_, _>>()?,
        balancer: Balancer::new(Algorithm::WeightedRoundRobin, &weights),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Child, Mutation};
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

    fn spec<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid spec")
    }

    /// A state as a journal written by another version could leave it: `apply` does not
    /// judge plugin names or settings (the API edge does), so these compile only here.
    fn stored(required_plugins: serde_json::Value, rule: serde_json::Value) -> (State, Uuid) {
        let gateway = record::<crate::model::GatewaySpec>(spec(json!({
            "name": "old", "subdomain": "old", "required_plugins": required_plugins
        })));
        let upstream = record::<UpstreamSpec>(spec(json!({
            "name": "u", "targets": [{"host": "127.0.0.1", "port": 9000}]
        })));
        let service = record::<ServiceSpec>(spec(json!({
            "name": "s", "type": "ai", "upstream_id": upstream.id
        })));
        let mut rule_json = json!({"path": "/x", "service_id": service.id});
        if let (Some(r), Some(extra)) = (rule_json.as_object_mut(), rule.as_object()) {
            r.extend(extra.clone());
        }
        let rule = record::<RuleSpec>(spec(rule_json));
        let (g, rule_id) = (gateway.id, rule.id);
        let mut state = State::default();
        for m in [
            Mutation::PutGateway(gateway),
            Mutation::Put {
                gateway_id: g,
                entity: Child::Upstream(upstream),
            },
            Mutation::Put {
                gateway_id: g,
                entity: Child::Service(service),
            },
            Mutation::Put {
                gateway_id: g,
                entity: Child::Rule(rule),
            },
        ] {
            state.apply(&m).expect("apply");
        }
        (state, rule_id)
    }

    fn broken(state: &State) -> Option<CompileError> {
        let snapshot = Snapshot::compile(1, state, &LiteralOnly);
        let gateway = snapshot.gateway("old").expect("compiled");
        gateway.broken.clone()
    }

    #[test]
    fn a_gateway_plugin_the_catalogue_no_longer_knows_breaks_the_gateway_naming_the_field() {
        let (state, _) = stored(
            json!([{"name": "gone_plugin", "stage": "pre_request"}]),
            json!({}),
        );
        let why = broken(&state).expect("broken");
        assert_eq!(
            why,
            CompileError::GatewayPlugins(PluginChainError::UnknownPlugin {
                field: "required_plugins",
                index: 0,
                name: "gone_plugin".into(),
            })
        );
        assert_eq!(
            why.to_string(),
            "required_plugins[0]: unknown plugin \"gone_plugin\""
        );
    }

    #[test]
    fn rule_plugin_settings_that_no_longer_parse_break_the_gateway_naming_rule_and_field() {
        let (state, rule) = stored(
            json!([]),
            json!({"plugin_chain": [
                {"name": "cors", "stage": "pre_request", "settings": {"allowed_origins": ["*"]}},
                {"name": "ip_restriction", "stage": "pre_request", "settings": {}}
            ]}),
        );
        let why = broken(&state).expect("broken");
        let CompileError::Rule {
            id,
            why: RuleError::Plugins(PluginChainError::Settings { field, index, .. }),
        } = &why
        else {
            panic!("not a rule's plugin settings: {why:?}");
        };
        assert_eq!((*id, *field, *index), (rule, "plugin_chain", 1));
        assert_eq!(
            why.to_string(),
            format!("rule {rule}: plugin_chain[1].settings: set allow, deny or both")
        );
        assert!(std::error::Error::source(&why).is_some());
    }

    #[test]
    fn a_rule_path_out_of_normal_form_breaks_the_gateway_with_the_pattern_error() {
        let (state, rule) = stored(json!([]), json!({"path": "/a//b"}));
        let why = broken(&state).expect("broken");
        assert!(
            matches!(&why, CompileError::Rule { id, why: RuleError::Path(_) } if *id == rule),
            "{why:?}"
        );
        assert!(
            why.to_string()
                .starts_with(&format!("rule {rule}: path pattern")),
            "{why}"
        );
    }

    #[test]
    fn a_valid_gateway_is_not_broken() {
        let (state, _) = stored(json!([]), json!({}));
        assert_eq!(broken(&state), None);
    }
}
