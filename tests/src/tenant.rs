//! A tenant of the proxy: one gateway with one API key, and shorthands that wire upstream
//! servers to a path (upstream → service → rule) through the admin API, the way a user
//! would with curl. Its clients reach the gateway through the proxy with
//! `Host: <subdomain>.localhost:<proxy port>`.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{Client, Shardgate, children, id_of};

/// A gateway and its API key on a running [`Shardgate`].
#[derive(Debug, Clone)]
pub struct Tenant {
    pub admin: Client,
    pub proxy: SocketAddr,
    pub gateway_id: String,
    pub subdomain: String,
    /// The key's plaintext, from its create response.
    pub key: String,
    pub key_id: String,
}

/// What [`Tenant::route`] created.
#[derive(Debug, Clone)]
pub struct Route {
    pub upstream_id: String,
    pub service_id: String,
    pub rule_id: String,
}

impl Tenant {
    /// Creates the gateway `<subdomain>` (no plugins) and a key that never expires.
    pub fn create(sg: &Shardgate, subdomain: &str) -> Tenant {
        let admin = sg.admin();
        let gateway = admin
            .post_json(
                crate::GATEWAYS,
                &json!({"name": format!("gw-{subdomain}"), "subdomain": subdomain}),
            )
            .expect_status(201)
            .json();
        let gateway_id = id_of(&gateway);
        let key = admin
            .post_json(&children(&gateway_id, "keys"), &json!({"name": "test-key"}))
            .expect_status(201)
            .json();
        Tenant {
            admin,
            proxy: sg.proxy_addr(),
            gateway_id,
            subdomain: subdomain.to_owned(),
            key: key["key"]
                .as_str()
                .unwrap_or_else(|| panic!("no plaintext key in {key}"))
                .to_owned(),
            key_id: id_of(&key),
        }
    }

    /// `<subdomain>.localhost:<proxy port>`.
    pub fn host(&self) -> String {
        format!("{}.localhost:{}", self.subdomain, self.proxy.port())
    }

    /// A proxy client with the gateway's Host and no key.
    pub fn anonymous(&self) -> Client {
        Client::new(self.proxy).host(&self.host())
    }

    /// A proxy client with the gateway's Host and `X-API-Key`.
    pub fn client(&self) -> Client {
        self.anonymous().header("X-API-Key", &self.key)
    }

    /// `/api/v1/gateways/<id>/<collection>`.
    pub fn collection(&self, collection: &str) -> String {
        children(&self.gateway_id, collection)
    }

    /// `/api/v1/gateways/<id>/<collection>/<item>`.
    pub fn item(&self, collection: &str, id: &str) -> String {
        format!("{}/{id}", self.collection(collection))
    }

    /// POSTs `body` to `collection`, expects 201, returns the new id.
    pub fn create_child(&self, collection: &str, body: &Value) -> String {
        id_of(
            &self
                .admin
                .post_json(&self.collection(collection), body)
                .expect_status(201)
                .json(),
        )
    }

    /// An upstream named `name` over `targets` (see
    /// [`upstream::target_json`](crate::upstream::target_json)) with `extra` fields
    /// (algorithm, timeouts, ...).
    pub fn upstream(&self, name: &str, targets: Vec<Value>, extra: Value) -> String {
        let mut body = json!({"name": name, "targets": targets});
        merge(&mut body, extra);
        self.create_child("upstreams", &body)
    }

    /// A service named `name` on `upstream_id` with `extra` fields (fallbacks, retries).
    pub fn service(&self, name: &str, upstream_id: &str, extra: Value) -> String {
        let mut body = json!({"name": name, "upstream_id": upstream_id});
        merge(&mut body, extra);
        self.create_child("services", &body)
    }

    /// A rule: `body` as given (it names the path and the service).
    pub fn rule(&self, body: Value) -> String {
        self.create_child("rules", &body)
    }

    /// Upstream `name` over `targets` (with `upstream_extra`), a service on it, and a rule
    /// for `path` (any method) with `rule_extra` fields.
    pub fn route(
        &self,
        name: &str,
        path: &str,
        targets: Vec<Value>,
        upstream_extra: Value,
        rule_extra: Value,
    ) -> Route {
        let upstream_id = self.upstream(name, targets, upstream_extra);
        let service_id = self.service(name, &upstream_id, json!({}));
        let mut rule = json!({"path": path, "service_id": service_id});
        merge(&mut rule, rule_extra);
        let rule_id = self.rule(rule);
        Route {
            upstream_id,
            service_id,
            rule_id,
        }
    }

    /// PUTs `body` over the gateway itself (a full replacement), expecting 200.
    pub fn update_gateway(&self, body: &Value) {
        self.admin
            .put_json(&format!("{}/{}", crate::GATEWAYS, self.gateway_id), body)
            .expect_status(200);
    }
}

/// Adds the fields of `extra` (an object) to `base` (an object).
pub fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        b.extend(e);
    }
}
