//! Data-plane settings shared (read-only) by every worker.

use std::sync::Arc;
use std::time::Duration;

use shardgate_core::http1::Limits;
use shardgate_core::metrics::Telemetry;
use shardgate_core::net::CidrSet;
use shardgate_core::path::EncodedSlashes;
use shardgate_core::ratelimit::Registry;

use crate::access_log::AccessLog;

/// Limits and timeouts of the proxy listener. Every field documents its default and why.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Requests are for `<subdomain>.<base_domain>`; lowercase.
    pub base_domain: Box<str>,
    /// Request head limits: 16 KiB head (431), 8 KiB URI (414), 100 fields (431) — the
    /// common proxy defaults; real clients stay far below them.
    pub head_limits: Limits,
    /// A client must deliver a whole request head within this once it starts sending one.
    /// Default 10 s: slow mobile clients finish well within it, and a slowloris connection
    /// is cut after it whatever its trickle rate.
    pub header_timeout: Duration,
    /// How long an idle keep-alive client connection is kept. Default 60 s.
    pub keepalive_timeout: Duration,
    /// Longest a client read (request body) or write (response) may make no progress
    /// while a request is in flight. Default 60 s.
    pub client_io_timeout: Duration,
    /// Client connections per worker beyond which new ones are answered 503 and closed.
    /// Default 16 384 per worker.
    pub max_connections: usize,
    /// Largest request body accepted (413 beyond it). Default unlimited: bodies stream and
    /// cost no memory; per-gateway limits belong to the `request_size_limiter` plugin.
    pub max_body: u64,
    /// Peers whose `X-Forwarded-For` is believed: for them the client address (for
    /// `per_ip` limits and `ip_restriction`) is the rightmost untrusted address of the
    /// header. Default empty: the socket peer is the client.
    pub trusted_proxies: CidrSet,
    /// `%2F`, `%5C` and `\` in request paths: refused (400, the default) or forwarded
    /// encoded. See [`shardgate_core::path`].
    pub encoded_slashes: EncodedSlashes,
    /// The rate limiters' shared counters (the admin thread compiles limiters from the
    /// same registry).
    pub rate_limits: Arc<Registry>,
    /// HTTP/2 limits per client connection (see [`H2Limits`]' fields for each default).
    pub h2: H2Limits,
    /// Every worker's traffic counters (the admin thread renders them on `/metrics`).
    pub telemetry: Arc<Telemetry>,
    /// The access log's writer, when `--access-log` is set.
    pub access_log: Option<AccessLog>,
    /// Count requests in the workers' metrics (`--request-metrics`). Default on.
    pub request_metrics: bool,
    /// Count requests per key and gateway for the usage export (`--usage`). Default on.
    pub usage: bool,
}

impl ProxySettings {
    /// Default of [`header_timeout`](Self::header_timeout). The `shardgate run` flags take
    /// their defaults from these constants (and `CidrSet`'s and `EncodedSlashes`' own
    /// `Default`), and the README's table from the flags: each value is written once.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`keepalive_timeout`](Self::keepalive_timeout).
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default of [`max_connections`](Self::max_connections).
    pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

    /// Defaults for `base_domain`.
    pub fn new(base_domain: &str) -> ProxySettings {
        ProxySettings {
            base_domain: base_domain.to_ascii_lowercase().into(),
            head_limits: Limits::default(),
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: Self::DEFAULT_KEEPALIVE_TIMEOUT,
            client_io_timeout: Duration::from_secs(60),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_body: u64::MAX,
            trusted_proxies: CidrSet::default(),
            encoded_slashes: EncodedSlashes::default(),
            rate_limits: Arc::new(Registry::default()),
            h2: H2Limits::default(),
            telemetry: Arc::new(Telemetry::default()),
            access_log: None,
            request_metrics: true,
            usage: true,
        }
    }
}

/// HTTP/2 limits per client connection. Every field documents its default and why.
#[derive(Debug, Clone)]
pub struct H2Limits {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). Default
    /// 128, nginx's: h2load's 100 fit, and 128 requests in flight per connection is
    /// already more than any browser uses.
    pub max_concurrent_streams: u32,
    /// Largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE), CONTINUATION frames
    /// included. Default: the HTTP/1.1 head limit (16 KiB), so both protocols accept the
    /// same requests.
    pub max_header_list_size: u32,
    /// Request body bytes a client may send on one stream ahead of the flow
    /// (SETTINGS_INITIAL_WINDOW_SIZE). Default 128 KiB: a 16 KiB frame in flight and room
    /// for a bandwidth-delay product of ~1 Mbit at 1 s, without letting one stream hold
    /// much.
    pub stream_window: u32,
    /// Request body bytes a client may send ahead on the whole connection: what one
    /// connection can make the gateway buffer. Default 512 KiB.
    pub connection_window: u32,
    /// Response bytes buffered per stream ahead of the client's window. Default 64 KiB.
    pub send_buffer: usize,
    /// Rapid reset: streams a client may reset before they are answered beyond the number
    /// it lets finish, before GOAWAY. Default 100: a browser cancelling a page's requests
    /// stays far below, an attack crosses it within milliseconds.
    pub reset_allowance: u64,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            stream_window: 128 * 1024,
            connection_window: 512 * 1024,
            send_buffer: 64 * 1024,
            reset_allowance: 100,
        }
    }
}
