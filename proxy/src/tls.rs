//! TLS to upstreams: targets with `"protocol": "https"` are reached over rustls.
//!
//! One client configuration serves the process: the system's root store (loaded once at
//! start-up by [`init`]; `SSL_CERT_FILE` / `SSL_CERT_DIR` point it elsewhere), TLS 1.2 and
//! 1.3 with rustls's safe defaults, ALPN `http/1.1`. Each worker gets its own copy with its
//! own in-memory session cache ([`UpstreamTls::for_worker`]), so new connections to a target
//! resume without a lock shared between cores. The server name sent (SNI) and verified is the
//! target's host, a DNS name or an IP address. Handshake failures are told apart
//! ([`TlsFailure`]) so the 502 names the cause, and are logged at warn with the target.
//!
//! An upstream connection is a [`Conn`]: plain TCP or TLS over it, one type for the pool,
//! the relay and the tunnel. Per-upstream settings (a private CA, `verify: false`, mTLS,
//! `min_version`) are not built yet.

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector, TlsError};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};

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

/// The process's upstream TLS client configuration.
static BASE: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Session tickets and ids kept per worker for resumption.
const SESSIONS_PER_WORKER: usize = 256;

/// One worker's upstream TLS client.
#[derive(Clone)]
pub struct UpstreamTls(TlsConnector);

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamTls")
    }
}

impl UpstreamTls {
    /// The process configuration with a session cache of this worker's own (rustls's cache
    /// is a mutex: one per worker is never contended). `None` before [`init`].
    pub fn for_worker() -> Option<UpstreamTls> {
        let mut config = (**BASE.get()?).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(SESSIONS_PER_WORKER);
        Some(UpstreamTls(TlsConnector::from(Arc::new(config))))
    }
}

/// Loads the system's root store and builds the client configuration. Called once at
/// start-up, before the workers run, so no worker reads certificate files on a request.
/// Returns how many root certificates were loaded.
pub fn init() -> usize {
    let mut loaded = 0;
    BASE.get_or_init(|| {
        let (config, count) = build();
        loaded = count;
        config
    });
    loaded
}

fn build() -> (Arc<ClientConfig>, usize) {
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
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), added)
}

/// Runs the TLS handshake with `host` over `tcp`, with this worker's client (`None` when
/// the process never called [`init`]: refused rather than reading the root store on a
/// worker).
pub async fn connect(
    client: Option<&UpstreamTls>,
    host: &str,
    tcp: TcpStream,
) -> Result<Conn, TlsFailure> {
    let Some(UpstreamTls(connector)) = client else {
        tracing::error!("upstream TLS used before tls::init(); refusing the handshake");
        return Err(TlsFailure::Handshake);
    };
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_owned()).map_err(|_| TlsFailure::BadServerName)?,
    };
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok(Conn::Tls(Box::new(stream))),
        Err(error) => {
            let failure = match &error {
                TlsError::Rustls(e) => TlsFailure::of(e),
                TlsError::Io(e) => e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map_or(TlsFailure::Handshake, TlsFailure::of),
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
