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
use std::sync::Arc;

use uuid::Uuid;

use crate::keys::KeyTable;
use crate::model::{
    GatewayStatus, PluginConfig, Record, RuleSpec, ServiceSpec, Stage, UpstreamSpec,
};
use crate::plugins::{self, PluginSettings};
use crate::router::{self, MethodSet, RouteSpec, Router};
use crate::state::{GatewayState, State};

/// An immutable, versioned view of the whole configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Monotonic version; workers report the version they applied.
    pub version: u64,
    by_id: HashMap<Uuid, Arc<CompiledGateway>>,
    by_subdomain: HashMap<Box<str>, Arc<CompiledGateway>>,
}

impl Snapshot {
    /// Compiles every gateway (start-up and recovery).
    pub fn compile(version: u64, state: &State) -> Snapshot {
        let by_id = state
            .gateways()
            .map(|g| (g.gateway.id, Arc::new(CompiledGateway::compile(g))))
            .collect();
        Snapshot::from_parts(version, by_id)
    }

    /// The next snapshot after a mutation of one gateway: that gateway is recompiled from
    /// `state` (or dropped if it no longer exists), the others are shared with `self`.
    pub fn next(&self, version: u64, state: &State, changed: Uuid) -> Snapshot {
        let mut by_id = self.by_id.clone();
        match state.gateway(changed) {
            Some(g) => {
                by_id.insert(changed, Arc::new(CompiledGateway::compile(g)));
            }
            None => {
                by_id.remove(&changed);
            }
        }
        Snapshot::from_parts(version, by_id)
    }

    fn from_parts(version: u64, by_id: HashMap<Uuid, Arc<CompiledGateway>>) -> Snapshot {
        let by_subdomain = by_id
            .values()
            .map(|g| (g.subdomain.clone(), g.clone()))
            .collect();
        Snapshot {
            version,
            by_id,
            by_subdomain,
        }
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

/// One gateway, ready for requests.
#[derive(Debug)]
pub struct CompiledGateway {
    pub id: Uuid,
    pub subdomain: Box<str>,
    pub active: bool,
    /// Set when stored configuration no longer compiles (e.g. after a downgrade): the
    /// gateway then fails closed with 503 rather than running without its plugins.
    pub broken: Option<String>,
    pub keys: KeyTable,
    pub router: Router,
    /// Indexed by the router's route id.
    pub rules: Vec<CompiledRule>,
    /// The gateway's `required_plugins`, by stage.
    pub plugins: Chains,
    pub services: HashMap<Uuid, Arc<Record<ServiceSpec>>>,
    pub upstreams: HashMap<Uuid, Arc<Record<UpstreamSpec>>>,
}

/// A routing rule with its plugin chain resolved.
#[derive(Debug)]
pub struct CompiledRule {
    pub id: Uuid,
    pub spec: Arc<RuleSpec>,
    pub plugins: Chains,
}

/// A plugin ready to run: settings parsed, position fixed.
#[derive(Debug, Clone)]
pub struct CompiledPlugin {
    pub name: &'static str,
    pub priority: i32,
    pub settings: Arc<PluginSettings>,
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

    fn compile(configs: &[PluginConfig], field: &str) -> Result<Chains, String> {
        let mut chains = Chains::default();
        for (i, config) in configs.iter().enumerate() {
            if !config.enabled {
                continue;
            }
            let def = plugins::find(&config.name)
                .ok_or_else(|| format!("{field}[{i}]: unknown plugin {:?}", config.name))?;
            let settings = plugins::parse_settings(def.name, &config.settings.0)
                .map_err(|e| format!("{field}[{i}].settings: {e}"))?;
            chains.by_stage[config.stage as usize].push(CompiledPlugin {
                name: def.name,
                priority: config.priority,
                settings: Arc::new(settings),
            });
        }
        for list in &mut chains.by_stage {
            list.sort_by_key(|p| p.priority);
        }
        Ok(chains)
    }
}

impl CompiledGateway {
    pub fn compile(g: &GatewayState) -> CompiledGateway {
        let spec = &g.gateway.spec;
        let mut broken = None;
        let plugins =
            Chains::compile(&spec.required_plugins, "required_plugins").unwrap_or_else(|e| {
                broken = Some(e);
                Chains::default()
            });

        let mut rules = Vec::with_capacity(g.rules.len());
        let mut routes = Vec::with_capacity(g.rules.len());
        for record in g.rules.values().filter(|r| r.spec.active) {
            let compiled = router::parse_pattern(&record.spec.path)
                .map_err(|e| e.to_string())
                .and_then(|pattern| {
                    let methods =
                        MethodSet::parse(&record.spec.methods).map_err(|e| e.to_string())?;
                    let chains = Chains::compile(&record.spec.plugin_chain, "plugin_chain")?;
                    Ok((pattern, methods, chains))
                });
            match compiled {
                Ok((pattern, methods, chains)) => {
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
                    });
                }
                Err(e) => {
                    broken.get_or_insert_with(|| format!("rule {}: {e}", record.id));
                }
            }
        }

        CompiledGateway {
            id: g.gateway.id,
            subdomain: spec.subdomain.as_str().into(),
            active: spec.status == GatewayStatus::Active,
            broken,
            keys: g.key_table().clone(),
            router: Router::build(routes),
            rules,
            plugins,
            services: g
                .services
                .iter()
                .map(|(id, s)| (*id, Arc::new(s.clone())))
                .collect(),
            upstreams: g
                .upstreams
                .iter()
                .map(|(id, u)| (*id, Arc::new(u.clone())))
                .collect(),
        }
    }
}
