//! TLS to upstreams: targets with `"protocol": "https"` are reached over rustls.
//!
//! [`init`] builds the process's client configuration once at start-up: the system's root
//! store (`SSL_CERT_FILE` / `SSL_CERT_DIR` point it elsewhere), TLS 1.2 and 1.3 with
//! rustls's safe defaults, ALPN `http/1.1`, the ring provider. It serves every upstream
//! whose `tls` settings are the defaults. An upstream with settings of its own (trusted
//! roots, a server name, a client certificate, a minimum version, `verify: false`) is
//! reached with a configuration built from them: each worker builds one per distinct
//! settings the first time a request needs it ([`dial`]) and keeps it while an upstream of
//! its snapshot has those settings, so nothing is parsed or built per request.
//!
//! Every configuration a worker uses has a session cache of its own: resuming never takes a
//! lock another core holds, and a session verified under one upstream's settings is never
//! resumed under another's. Pooled connections are kept apart for the same reason: a target
//! reached with an upstream's own settings is pooled under a key that mixes in its client's
//! id ([`Dial::target`]), so a connection verified leniently for one upstream is never handed
//! to another that verifies strictly, though both name the same address.
//!
//! The server name sent (SNI) and verified is `tls.server_name`, or else the target's host
//! (a DNS name, or an IP address, which sends no SNI). Handshake failures are told apart
//! ([`TlsFailure`]) so the 502 names the cause, and are logged at warn with the target.
//! `verify: false` accepts any certificate; the first worker to pick up a snapshot that
//! (re)compiled an upstream with it says so at warn ([`warn_unverified`]).
//!
//! An upstream connection is a [`Conn`]: plain TCP or TLS over it, one type for the pool,
//! the relay and the tunnel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};
use shardgate_admin::health::{ProbeTls, ProbeTlsMaker, TlsClient as ProbeClient};
use shardgate_core::balance::hash_bytes;
use shardgate_core::model::{Record, TlsSettings, TlsVersion, UpstreamSpec};
use shardgate_core::snapshot::{CompiledTarget, CompiledUpstream, Snapshot};

/// Why a TLS handshake with an upstream failed, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate chain does not lead to a trusted root.
    UnknownCa,
    /// The certificate is not valid for the target's host.
    NameMismatch,
    /// The certificate's validity period is over.
    Expired,
    /// Any other certificate defect (bad signature, not yet valid, wrong purpose, revoked).
    InvalidCertificate,
    /// The target's host is neither a DNS name nor an IP address rustls accepts.
    BadServerName,
    /// Anything else (protocol alert, no common version or cipher, connection reset).
    Handshake,
    /// An upstream that speaks HTTP/2 did not agree to it (ALPN `h2`).
    NoHttp2,
}

impl TlsFailure {
    pub fn message(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "upstream TLS certificate: unknown CA",
            TlsFailure::NameMismatch => "upstream TLS certificate: name mismatch",
            TlsFailure::Expired => "upstream TLS certificate: expired",
            TlsFailure::InvalidCertificate => "upstream TLS certificate: invalid",
            TlsFailure::BadServerName => "upstream TLS: the target host is not a valid server name",
            TlsFailure::Handshake => "upstream TLS handshake failed",
            TlsFailure::NoHttp2 => "upstream TLS: the target did not agree to HTTP/2 (ALPN h2)",
        }
    }

    fn of(error: &rustls::Error) -> TlsFailure {
        match error {
            rustls::Error::InvalidCertificate(e) => match e {
                CertificateError::UnknownIssuer => TlsFailure::UnknownCa,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    TlsFailure::Expired
                }
                _ => TlsFailure::InvalidCertificate,
            },
            _ => TlsFailure::Handshake,
        }
    }
}

/// What [`init`] builds once for the process.
struct Process {
    /// The configuration for default settings; each worker copies it.
    config: Arc<ClientConfig>,
    /// The system's roots, for settings that change something else but keep them.
    roots: Arc<RootCertStore>,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

/// Session tickets and ids kept per worker and configuration for resumption.
const SESSIONS_PER_WORKER: usize = 256;

/// One TLS client configuration as a worker uses it.
pub struct Client {
    /// Mixed into the pool key of the connections made with it; 0 for the worker's copy of
    /// the process configuration, whose connections keep their targets' own keys.
    id: u64,
    /// `None` when the settings did not build (logged when that happened): every handshake
    /// with them is refused.
    connector: Option<TlsConnector>,
    /// The same configuration offering ALPN `h2` only, for upstreams that speak HTTP/2.
    connector_h2: Option<TlsConnector>,
    /// `tls.server_name`: sent and verified instead of the target's host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("built", &self.connector.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// How one worker reaches the targets of one upstream with TLS settings of its own.
#[derive(Debug)]
struct Route {
    client: Rc<Client>,
    /// The upstream's targets as this worker's pool keys them: `https` ones under a key
    /// that mixes in the client's id, plain ones unchanged.
    targets: Vec<CompiledTarget>,
}

/// The clients a worker built for upstreams with settings of their own.
#[derive(Default)]
struct Custom {
    /// One per distinct settings in use.
    clients: HashMap<TlsSettings, Rc<Client>>,
    /// Keyed by the address of the upstream's record in the snapshot. The entry holds the
    /// record, so the address cannot be reused by another while the entry exists; a
    /// recompiled gateway has new records, so its upstreams get new entries (sharing the
    /// clients of settings that did not change).
    routes: HashMap<usize, (Arc<Record<UpstreamSpec>>, Rc<Route>)>,
    last_id: u64,
}

impl Custom {
    /// Drops the routes of upstreams no snapshot holds any more (only this map holds
    /// their record), then the clients no route uses. Called before each insertion, so
    /// the maps hold at most what one insertion ago was in use.
    fn forget_unused(&mut self) {
        self.routes
            .retain(|_, (record, _)| Arc::strong_count(record) > 1);
        self.clients
            .retain(|_, client| Rc::strong_count(client) > 1);
    }
}

/// One worker's upstream TLS clients.
pub struct UpstreamTls {
    /// The process configuration with this worker's session cache.
    base: Client,
    custom: RefCell<Custom>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let custom = self.custom.borrow();
        f.debug_struct("UpstreamTls")
            .field("custom_clients", &custom.clients.len())
            .field("routes", &custom.routes.len())
            .finish()
    }
}

/// How one attempt reaches its target: with which client, under which pool key.
#[derive(Debug)]
pub struct Dial<'a> {
    base: Option<&'a Client>,
    route: Option<Rc<Route>>,
    target: &'a CompiledTarget,
    index: usize,
}

impl Dial<'_> {
    /// The target as the pool keys it (its host, port and address are the configured ones).
    pub fn target(&self) -> &CompiledTarget {
        self.route
            .as_deref()
            .and_then(|route| route.targets.get(self.index))
            .unwrap_or(self.target)
    }

    /// The client for an `https` target; `None` before [`init`].
    pub fn client(&self) -> Option<&Client> {
        match &self.route {
            Some(route) => Some(&route.client),
            None => self.base,
        }
    }
}

impl UpstreamTls {
    /// The process configuration with a session cache of this worker's own (rustls's cache
    /// is a mutex: one per worker is never contended). `None` before [`init`].
    pub fn for_worker() -> Option<UpstreamTls> {
        let mut config = (*PROCESS.get()?.config).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS_PER_WORKER);
        Some(UpstreamTls {
            base: Client {
                id: 0,
                connector_h2: Some(h2_connector(&config)),
                connector: Some(TlsConnector::from(Arc::new(config))),
                server_name: None,
            },
            custom: RefCell::default(),
        })
    }

    fn route(&self, upstream: &CompiledUpstream, settings: &TlsSettings) -> Rc<Route> {
        let address = Arc::as_ptr(&upstream.spec) as usize;
        if let Some((_, route)) = self.custom.borrow().routes.get(&address) {
            return route.clone();
        }
        let mut custom = self.custom.borrow_mut();
        custom.forget_unused();
        let client = match custom.clients.get(settings) {
            Some(client) => client.clone(),
            None => {
                custom.last_id += 1;
                let client = Rc::new(build_client(custom.last_id, settings, upstream));
                custom.clients.insert(settings.clone(), client.clone());
                client
            }
        };
        let targets = upstream
            .targets
            .iter()
            .map(|t| {
                let mut keyed = t.clone();
                if t.https {
                    keyed.key = pool_key(t.key, client.id);
                }
                keyed
            })
            .collect();
        let route = Rc::new(Route { client, targets });
        custom
            .routes
            .insert(address, (upstream.spec.clone(), route.clone()));
        route
    }
}

/// How to reach `target`, entry `index` of `upstream`'s targets. The process
/// configuration unless the target is `https` and the upstream has settings of its own;
/// their client is built here the first time this worker needs it.
pub fn dial<'a>(
    tls: Option<&'a UpstreamTls>,
    upstream: &CompiledUpstream,
    target: &'a CompiledTarget,
    index: usize,
) -> Dial<'a> {
    let settings = upstream.spec.spec.tls.as_ref();
    let route = match (tls, settings) {
        (Some(tls), Some(settings)) if target.https && !settings.is_default() => {
            Some(tls.route(upstream, settings))
        }
        _ => None,
    };
    Dial {
        base: tls.map(|tls| &tls.base),
        route,
        target,
        index,
    }
}

/// The pool key of a connection to the target keyed `target_key` made by the client `id`.
/// A hash, like the target key itself: two keys of different (target, client) pairs are
/// equal with probability 2^-64.
fn pool_key(target_key: u64, client_id: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&target_key.to_le_bytes());
    bytes[8..].copy_from_slice(&client_id.to_le_bytes());
    hash_bytes(&bytes)
}

/// The client for `settings` (validated when they were written; a journal from another
/// version may still hold some that do not build, which refuse every handshake).
fn build_client(id: u64, settings: &TlsSettings, upstream: &CompiledUpstream) -> Client {
    let built = PROCESS
        .get()
        .ok_or_else(|| "upstream TLS used before tls::init()".to_owned())
        .and_then(|process| {
            let server_name = settings.server_name().map_err(|e| e.to_string())?;
            Ok((custom_config(settings, process)?, server_name))
        });
    match built {
        Ok((config, server_name)) => Client {
            id,
            connector_h2: Some(h2_connector(&config)),
            connector: Some(TlsConnector::from(Arc::new(config))),
            server_name,
        },
        Err(why) => {
            tracing::error!(
                upstream = %upstream.spec.spec.name, upstream_id = %upstream.id, %why,
                "the upstream's tls settings do not build; its https targets are refused"
            );
            Client {
                id,
                connector: None,
                connector_h2: None,
                server_name: None,
            }
        }
    }
}

/// A configuration from an upstream's `tls` settings: its own session cache, ALPN
/// `http/1.1`, the ring provider. Errors never quote the private key (nor do the model's).
fn custom_config(settings: &TlsSettings, process: &Process) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = if settings.verify {
        let roots = match settings.trusted_roots().map_err(|e| e.to_string())? {
            Some(certs) => {
                let mut roots = RootCertStore::empty();
                for cert in certs {
                    roots.add(cert).map_err(|e| format!("tls.ca_pem: {e}"))?;
                }
                Arc::new(roots)
            }
            None => process.roots.clone(),
        };
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let mut config = match settings.client_identity().map_err(|e| e.to_string())? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("tls.client_key_pem: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS_PER_WORKER);
    Ok(config)
}

/// `verify: false`: any certificate, for any name, at any time. The handshake's signature is
/// still checked against the certificate presented, so the peer holds that certificate's
/// key; nothing says whose key it is.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Warns about every upstream with `tls.verify: false` in the gateways `next` compiled anew
/// (all of them when `previous` is `None`, at start-up): their certificates are not
/// checked. Called by each worker as it picks a snapshot up; only the first to pick up a
/// version speaks, so each compile that has such an upstream is logged once, never per
/// request.
pub fn warn_unverified(previous: Option<&Snapshot>, next: &Snapshot) {
    static WARNED_UP_TO: AtomicU64 = AtomicU64::new(0);
    if WARNED_UP_TO.fetch_max(next.version, Ordering::Relaxed) >= next.version {
        return;
    }
    for gateway in next.gateways() {
        let unchanged = previous
            .and_then(|p| p.gateway_by_id(gateway.id))
            .is_some_and(|old| Arc::ptr_eq(old, gateway));
        if unchanged {
            continue;
        }
        for upstream in gateway.upstreams.values() {
            let spec = &upstream.spec.spec;
            if spec.tls.as_ref().is_some_and(|tls| !tls.verify) {
                tracing::warn!(
                    gateway = %gateway.subdomain, gateway_id = %gateway.id,
                    upstream = %spec.name, upstream_id = %upstream.id, version = next.version,
                    "tls.verify is false: this upstream's https targets are reached without \
                     checking their certificates"
                );
            }
        }
    }
}

/// Loads the system's root store and builds the client configuration. Called once at
/// start-up, before the workers run, so no worker reads certificate files on a request.
/// Returns how many root certificates were loaded.
pub fn init() -> usize {
    let mut loaded = 0;
    PROCESS.get_or_init(|| {
        let (process, count) = build();
        loaded = count;
        process
    });
    loaded
}

fn build() -> (Process, usize) {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "reading the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "unparsable system root certificates skipped");
    }
    if added == 0 {
        tracing::warn!(
            "no system root certificates found: https upstreams will fail verification \
             (install ca-certificates, or set SSL_CERT_FILE)"
        );
    }
    // ring as the process's provider (an error only means one is installed already), so the
    // builder never has to choose between providers another dependency might compile in;
    // its safe protocol versions are TLS 1.2 and 1.3.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = Arc::new(roots);
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let process = Process {
        config: Arc::new(config),
        roots,
    };
    (process, added)
}

/// `config` offering ALPN `h2` alone (its session cache is shared with `config`'s).
fn h2_connector(config: &ClientConfig) -> TlsConnector {
    let mut h2 = config.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(h2))
}

/// Runs the TLS handshake with `host` over `tcp` with `client` (`None` when the process
/// never called [`init`]: refused rather than reading the root store on a worker). The name
/// sent and verified is the client's `tls.server_name`, or else `host`.
pub async fn connect(
    client: Option<&Client>,
    host: &str,
    tcp: TcpStream,
) -> Result<Conn, TlsFailure> {
    handshake(client, host, tcp, false)
        .await
        .map(|stream| Conn::Tls(Box::new(stream)))
}

/// Like [`connect`] for an upstream that speaks HTTP/2: ALPN `h2`, which the target must
/// choose.
pub async fn connect_h2(
    client: Option<&Client>,
    host: &str,
    tcp: TcpStream,
) -> Result<ClientTlsStream<TcpStream>, TlsFailure> {
    let stream = handshake(client, host, tcp, true).await?;
    if stream.alpn_protocol().as_deref() != Some(b"h2") {
        tracing::warn!(%host, "upstream TLS: the target did not agree to HTTP/2 (ALPN h2)");
        return Err(TlsFailure::NoHttp2);
    }
    Ok(stream)
}

async fn handshake(
    client: Option<&Client>,
    host: &str,
    tcp: TcpStream,
    h2: bool,
) -> Result<ClientTlsStream<TcpStream>, TlsFailure> {
    let Some(client) = client else {
        tracing::error!("upstream TLS used before tls::init(); refusing the handshake");
        return Err(TlsFailure::Handshake);
    };
    let connector = if h2 {
        &client.connector_h2
    } else {
        &client.connector
    };
    let Some(connector) = connector else {
        tracing::debug!(%host, "the upstream's tls settings did not build; refusing the handshake");
        return Err(TlsFailure::Handshake);
    };
    let name = server_name(client, host)?;
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok(stream),
        Err(error) => {
            let failure = match &error {
                TlsError::Rustls(e) => TlsFailure::of(e),
                TlsError::Io(e) => failure_in(e).unwrap_or(TlsFailure::Handshake),
            };
            let detail = match &error {
                TlsError::Rustls(e) => e.to_string(),
                TlsError::Io(e) => e.to_string(),
            };
            tracing::warn!(%host, cause = failure.message(), %detail, "upstream TLS handshake failed");
            Err(failure)
        }
    }
}

/// The name `client` sends and verifies for a target at `host`: its `tls.server_name`, or
/// else the host (an IP address sends no SNI).
fn server_name(client: &Client, host: &str) -> Result<ServerName<'static>, TlsFailure> {
    match (&client.server_name, host.parse::<IpAddr>()) {
        (Some(name), _) => Ok(name.clone()),
        (None, Ok(ip)) => Ok(ServerName::IpAddress(ip.into())),
        (None, Err(_)) => {
            ServerName::try_from(host.to_owned()).map_err(|_| TlsFailure::BadServerName)
        }
    }
}

/// The admin thread's health probes to `https` targets: a set of clients of its own, as a
/// worker has, handed out per target exactly as that target's requests use them.
struct Probes(UpstreamTls);

impl ProbeTls for Probes {
    fn client(&self, upstream: &CompiledUpstream, index: usize) -> Option<ProbeClient> {
        let target = upstream.targets.get(index)?;
        let dial = dial(Some(&self.0), upstream, target, index);
        let client = dial.client()?;
        Some(ProbeClient {
            http1: client.connector.clone()?,
            h2: client.connector_h2.clone()?,
            name: server_name(client, &target.host).ok()?,
        })
    }
}

/// Makes, on the admin thread, the TLS clients its health probes use (after [`init`]).
pub fn probe_tls() -> ProbeTlsMaker {
    Box::new(|| UpstreamTls::for_worker().map(|tls| Box::new(Probes(tls)) as Box<dyn ProbeTls>))
}

/// The TLS failure behind an I/O error on an upstream connection, if it is one. In TLS 1.3
/// the server judges the client's certificate after the client's side of the handshake is
/// done, so a refused (or missing) client certificate shows up as an alert on the first read.
pub fn failure_in(error: &io::Error) -> Option<TlsFailure> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(TlsFailure::of)
}

/// An upstream connection: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    /// Boxed: the TLS session is kilobytes, and most upstream connections are plain.
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

impl AsyncReadRent for Conn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.readv(buf).await,
            Conn::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Conn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.write(buf).await,
            Conn::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.writev(buf).await,
            Conn::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush().await,
            Conn::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shardgate_core::balance::Balancer;
    use uuid::Uuid;

    use super::*;

    /// An upstream as a snapshot compiles it: an https target and a plain one on the same
    /// address, with `tls` settings. Each call is a new record, as a recompile makes.
    fn upstream(tls: serde_json::Value) -> CompiledUpstream {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format now");
        let record: Record<UpstreamSpec> = serde_json::from_value(json!({
            "id": Uuid::now_v7(),
            "created_at": now,
            "updated_at": now,
            "spec": {
                "name": "u",
                "targets": [
                    {"host": "127.0.0.1", "port": 8443, "protocol": "https"},
                    {"host": "127.0.0.1", "port": 8080},
                ],
                "tls": tls,
            },
        }))
        .expect("a valid upstream record");
        let target = |https: bool, key: u64| CompiledTarget {
            host: "127.0.0.1".into(),
            port: if https { 8443 } else { 8080 },
            https,
            addr: None,
            down: false,
            host_header: "127.0.0.1".into(),
            key,
        };
        CompiledUpstream {
            id: record.id,
            balancer: Balancer::for_upstream(&record.spec),
            spec: Arc::new(record),
            targets: vec![target(true, 11), target(false, 22)],
        }
    }

    fn worker() -> UpstreamTls {
        init();
        UpstreamTls::for_worker().expect("init() ran")
    }

    /// The pool keys and client id `upstream`'s targets get on `tls`.
    fn keys(tls: &UpstreamTls, upstream: &CompiledUpstream) -> (u64, u64, u64) {
        let https = dial(Some(tls), upstream, &upstream.targets[0], 0);
        let plain = dial(Some(tls), upstream, &upstream.targets[1], 1);
        let id = https.client().map_or(u64::MAX, |c| c.id);
        (https.target().key, plain.target().key, id)
    }

    #[test]
    fn default_settings_use_the_workers_process_client_and_the_targets_own_keys() {
        let tls = worker();
        for settings in [
            json!(null),
            json!({}),
            json!({"verify": true, "min_version": "1.2"}),
        ] {
            let up = upstream(settings.clone());
            assert_eq!(keys(&tls, &up), (11, 22, 0), "{settings}");
        }
        assert!(tls.custom.borrow().clients.is_empty(), "nothing was built");
    }

    #[test]
    fn equal_settings_share_a_client_and_pool_keys_and_other_settings_do_not() {
        let tls = worker();
        let lax = upstream(json!({"verify": false}));
        let lax_again = upstream(json!({"verify": false}));
        let strict = upstream(json!({"min_version": "1.3"}));

        let (https, plain, id) = keys(&tls, &lax);
        assert_ne!(id, 0, "its own client");
        assert_ne!(https, 11, "its own pool key");
        assert_eq!(plain, 22, "a plain target is pooled as it always was");
        assert_eq!(keys(&tls, &lax_again), (https, plain, id), "shared");
        let (strict_https, _, strict_id) = keys(&tls, &strict);
        assert_ne!(strict_id, id);
        assert_ne!(strict_https, https);
        assert!(
            tls.custom
                .borrow()
                .clients
                .values()
                .all(|c| c.connector.is_some()),
            "both built"
        );
    }

    #[test]
    fn clients_of_upstreams_that_left_every_snapshot_are_forgotten() {
        let tls = worker();
        let gone = upstream(json!({"verify": false}));
        keys(&tls, &gone);
        drop(gone);
        let kept = upstream(json!({"min_version": "1.3"}));
        keys(&tls, &kept);
        let custom = tls.custom.borrow();
        assert_eq!(custom.routes.len(), 1, "only the live upstream's route");
        assert_eq!(custom.clients.len(), 1, "only the live settings' client");
    }

    #[test]
    fn a_tls_alert_inside_an_io_error_is_told_apart() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, alert);
        assert_eq!(failure_in(&wrapped), Some(TlsFailure::Handshake));
        assert_eq!(failure_in(&io::Error::other("reset")), None);
    }
}
