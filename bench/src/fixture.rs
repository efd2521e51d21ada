//! Configurations for benchmarks, built straight through [`State::apply`] — the same path
//! the admin API and recovery use — so they are valid by construction.

use shardgate_core::keys::hash_key;
use shardgate_core::model::{
    GatewaySpec, GatewayStatus, Json, KeySpec, Record, RuleSpec, ServiceSpec, StoredKey,
    UpstreamSpec,
};
use shardgate_core::state::{Child, Mutation, State};
use time::OffsetDateTime;
use uuid::Uuid;

/// A gateway `bench` with one upstream, one service, `rules` rules and `keys` API keys.
/// Returns the state, the gateway id, and the mutations that built it (for journaling).
pub fn gateway_with(rules: usize, keys: usize) -> (State, Uuid, Vec<Mutation>) {
    let mut state = State::default();
    let mut log = Vec::with_capacity(3 + rules + keys);
    let gateway_id = Uuid::now_v7();
    let mut apply = |state: &mut State, m: Mutation| {
        if let Err(e) = state.apply(&m) {
            panic!("fixture mutation refused: {e}");
        }
        log.push(m);
    };
    apply(
        &mut state,
        Mutation::PutGateway(record(
            gateway_id,
            GatewaySpec {
                name: "bench".into(),
                subdomain: "bench".into(),
                status: GatewayStatus::Active,
                required_plugins: Vec::new(),
                key_expiry_warning: shardgate_core::duration::Span::from_secs(7 * 86_400),
                anomaly_detection: shardgate_core::model::AnomalySettings::default(),
            },
        )),
    );
    let upstream_id = Uuid::now_v7();
    let upstream: UpstreamSpec = serde_json::from_value(serde_json::json!({
        "name": "origin",
        "targets": [{"host": "127.0.0.1", "port": 9000}]
    }))
    .unwrap_or_else(|e| panic!("fixture upstream: {e}"));
    apply(
        &mut state,
        Mutation::Put {
            gateway_id,
            entity: Child::Upstream(record(upstream_id, upstream)),
        },
    );
    let service_id = Uuid::now_v7();
    apply(
        &mut state,
        Mutation::Put {
            gateway_id,
            entity: Child::Service(record(
                service_id,
                ServiceSpec {
                    name: "svc".into(),
                    kind: Default::default(),
                    upstream_id,
                    fallback_upstream_ids: Vec::new(),
                    description: String::new(),
                    metadata: Json(serde_json::json!({})),
                    timeout: None,
                    retries: 2,
                    retry_policy: Default::default(),
                    tags: Vec::new(),
                    ai: None,
                },
            )),
        },
    );
    for i in 0..rules {
        let path = match i % 10 {
            0 => format!("/p{i}/*"),
            1 => format!("/users{i}/{{id}}"),
            _ => format!("/api/v1/r{i}"),
        };
        apply(
            &mut state,
            Mutation::Put {
                gateway_id,
                entity: Child::Rule(record(Uuid::now_v7(), rule(&path, service_id))),
            },
        );
    }
    for i in 0..keys {
        apply(
            &mut state,
            Mutation::Put {
                gateway_id,
                entity: Child::Key(record(Uuid::now_v7(), stored_key(i))),
            },
        );
    }
    (state, gateway_id, log)
}

/// A rule routing `path` to `service_id`, all methods, no plugins.
pub fn rule(path: &str, service_id: Uuid) -> RuleSpec {
    RuleSpec {
        path: path.into(),
        methods: Vec::new(),
        headers: Default::default(),
        service_id: Some(service_id),
        services: Vec::new(),
        strip_path: false,
        preserve_host: false,
        priority: 0,
        plugin_chain: Vec::new(),
        active: true,
        public: false,
    }
}

/// The `i`th synthetic key: plaintext `bench-key-<i>` (benchmarks only).
pub fn stored_key(i: usize) -> StoredKey {
    let plaintext = format!("bench-key-{i}");
    StoredKey {
        spec: KeySpec {
            name: format!("k{i}"),
            expires_at: None,
            active: true,
            scopes: Default::default(),
            budget: None,
        },
        prefix: plaintext.chars().take(12).collect(),
        hash: hash_key(plaintext.as_bytes()),
        rotated_at: None,
        previous: None,
    }
}

pub fn record<T>(id: Uuid, spec: T) -> Record<T> {
    let now = OffsetDateTime::now_utc();
    Record {
        id,
        created_at: now,
        updated_at: now,
        spec,
    }
}
