//! TLS for the proxy tests: a throwaway certificate authority and the certificates it
//! issues, and a real HTTPS/1.1 upstream server that uses them.
//!
//! - [`TestCa`]: a CA made per test (ECDSA P-256, generated with rcgen) that issues server
//!   certificates for given SANs (DNS names and IP addresses) and client certificates for
//!   mTLS. Every validity window is computed from now ([`Validity`]), so an expired
//!   certificate never depends on a date written into a test.
//! - [`Issued`]: a certificate and its private key, as PEM (what the admin API takes) and
//!   DER; [`Issued::self_signed`] makes one that no [`TestCa`] vouches for.
//! - [`TlsUpstream`]: an HTTPS/1.1 server on a free `127.0.0.1` port, std threads over
//!   `rustls::StreamOwned` (no async runtime), answering every request `200` with
//!   `"<identity> <METHOD> <target>"`. It keeps connections alive and records what a test
//!   asks about: each request ([`Seen`]), accepted TCP connections, completed handshakes
//!   ([`Handshake`]: SNI, protocol version, the client certificate) and failed ones (the
//!   rustls error, e.g. the alert the proxy sent). Optionally it *requires* a client
//!   certificate signed by a given CA, speaks TLS 1.2 only, or closes after each answer.
//!   Stopped on drop, like the servers in [`upstream`](crate::upstream).
//!
//! The server uses the ring provider explicitly (never the process-wide default), so it
//! works whichever rustls backends the rest of the workspace enables.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde_json::{Value, json};

use crate::DAY_SECS;
use crate::connection::find;
use crate::upstream::{Handler, Seen, Server, lock, target_json};

/// The largest request head the server reads; a bigger one ends the connection.
const MAX_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate's validity window, in seconds relative to now (negative: in the past).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_secs: i64,
    pub not_after_secs: i64,
}

impl Validity {
    /// Valid since a day ago, for 30 more days: what a healthy certificate looks like.
    pub fn current() -> Validity {
        Validity::from_now(-DAY_SECS, 30 * DAY_SECS)
    }

    /// Valid from 30 days ago until a day ago: expired.
    pub fn expired() -> Validity {
        Validity::from_now(-30 * DAY_SECS, -DAY_SECS)
    }

    /// Valid from `not_before_secs` to `not_after_secs` seconds from now.
    pub fn from_now(not_before_secs: i64, not_after_secs: i64) -> Validity {
        Validity {
            not_before_secs,
            not_after_secs,
        }
    }

    fn apply(self, params: &mut CertificateParams) {
        params.not_before = seconds_from_now(self.not_before_secs);
        params.not_after = seconds_from_now(self.not_after_secs);
    }
}

fn seconds_from_now(secs: i64) -> time::OffsetDateTime {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    at.replace_nanosecond(0).expect("zero nanoseconds is valid")
}

/// A certificate and its private key. The key is a test key, but [`Issued`]'s `Debug`
/// still leaves it out, so that a failing assertion never prints it where a leak test
/// searches for it.
#[derive(Clone)]
pub struct Issued {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// A self-signed server certificate for `sans` (valid now) that no [`TestCa`] issued.
    pub fn self_signed(sans: &[&str]) -> Issued {
        let mut params = server_params(sans);
        Validity::current().apply(&mut params);
        let key = KeyPair::generate().expect("generate a key pair for a self-signed cert");
        let cert = params
            .self_signed(&key)
            .expect("self-sign a server certificate");
        Issued::new(&cert, &key, sans.first().copied().unwrap_or("self-signed"))
    }

    fn new(cert: &rcgen::Certificate, key: &KeyPair, subject: &str) -> Issued {
        Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            subject: subject.to_owned(),
        }
    }

    /// The certificate as PEM (what `tls.client_cert_pem` takes).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate as DER (what a [`Handshake`] records for a client certificate).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key as PKCS#8 PEM (what `tls.client_key_pem` takes).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Pieces of the private key that must never show up where the key could leak (API
    /// answers, logs): each base64 line of its PEM body, which survives JSON escaping and
    /// any re-wrapping that keeps lines, and the whole body joined on one line.
    pub fn key_fragments(&self) -> Vec<String> {
        let lines: Vec<&str> = self
            .key_pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        let mut fragments: Vec<String> = lines
            .iter()
            .filter(|l| l.len() >= 16)
            .map(|l| (*l).to_owned())
            .collect();
        fragments.push(lines.concat());
        fragments
    }

    fn server_config_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn server_params(sans: &[&str]) -> CertificateParams {
    let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names)
        .unwrap_or_else(|e| panic!("SANs {sans:?} are not DNS names or IP addresses: {e}"));
    if let Some(first) = sans.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, (*first).to_owned());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A certificate authority made for one test: its certificate is trusted only where a test
/// passes [`TestCa::cert_pem`] (e.g. as `tls.ca_pem`), never by the system's root store.
pub struct TestCa {
    name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A CA whose certificate's common name is `name`, valid since a day ago for a year.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_owned());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Validity::from_now(-DAY_SECS, 365 * DAY_SECS).apply(&mut params);
        let key = KeyPair::generate().expect("generate the test CA's key pair");
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("self-sign the test CA {name}: {e}"));
        TestCa {
            name: name.to_owned(),
            cert,
            key,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate as PEM (what `tls.ca_pem` takes).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `sans` (DNS names and IP addresses, e.g. `"127.0.0.1"`),
    /// valid now.
    pub fn server_cert(&self, sans: &[&str]) -> Issued {
        self.server_cert_valid(sans, Validity::current())
    }

    /// A server certificate for `sans` with the given validity window (e.g.
    /// [`Validity::expired`]).
    pub fn server_cert_valid(&self, sans: &[&str], validity: Validity) -> Issued {
        let mut params = server_params(sans);
        validity.apply(&mut params);
        let subject = sans.first().copied().unwrap_or("server");
        self.sign(params, subject)
    }

    /// A client certificate (for mTLS) with common name `common_name`, valid now.
    pub fn client_cert(&self, common_name: &str) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name.to_owned());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        Validity::current().apply(&mut params);
        self.sign(params, common_name)
    }

    fn sign(&self, params: CertificateParams, subject: &str) -> Issued {
        let key = KeyPair::generate().expect("generate a leaf key pair");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .unwrap_or_else(|e| panic!("{} signs a certificate for {subject}: {e}", self.name));
        Issued::new(&cert, &key, subject)
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTPS upstream

/// One completed TLS handshake, as the server saw it.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The proxy's side of the connection.
    pub peer: SocketAddr,
    /// The SNI the client sent (none for an IP address, which SNI cannot carry).
    pub server_name: Option<String>,
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: String,
    /// The client certificate (its DER), when one was presented.
    pub client_cert: Option<Vec<u8>>,
}

/// How a [`TlsUpstream`] runs; see [`TlsUpstream::builder`].
#[derive(Debug, Clone)]
pub struct TlsUpstreamBuilder {
    identity: String,
    cert: Issued,
    client_ca: Option<CertificateDer<'static>>,
    tls12_only: bool,
    close_each: bool,
}

impl TlsUpstreamBuilder {
    /// Require a client certificate signed by `ca`; a handshake without one fails.
    pub fn require_client_cert(mut self, ca: &TestCa) -> TlsUpstreamBuilder {
        self.client_ca = Some(ca.cert_der());
        self
    }

    /// Speak TLS 1.2 only (default: 1.2 and 1.3).
    pub fn tls12_only(mut self) -> TlsUpstreamBuilder {
        self.tls12_only = true;
        self
    }

    /// Answer every request with `Connection: close` and close after it, so that each
    /// request through the proxy needs a fresh handshake.
    pub fn close_after_each_response(mut self) -> TlsUpstreamBuilder {
        self.close_each = true;
        self
    }

    pub fn start(self) -> TlsUpstream {
        let config = Arc::new(self.server_config());
        let records = Arc::new(Records::default());
        let settings = ConnSettings {
            identity: self.identity.clone(),
            close_each: self.close_each,
        };
        // The plain upstreams' accept loop, stop and drain; only the connection is TLS.
        let handler: Handler = {
            let records = records.clone();
            Arc::new(move |stream, peer| {
                records.connections.fetch_add(1, Ordering::SeqCst);
                let _ = serve_connection(stream, peer, config.clone(), &settings, &records);
            })
        };
        TlsUpstream {
            server: Server::start(&format!("tls-{}", self.identity), handler),
            identity: self.identity,
            records,
        }
    }

    fn server_config(&self) -> ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)),
        };
        builder
            .with_single_cert(
                vec![self.cert.cert_der.clone()],
                self.cert.server_config_key(),
            )
            .expect("the HTTPS upstream's certificate and key match")
    }
}

fn client_verifier(
    ca: &CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .expect("the client CA certificate parses");
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("build the client certificate verifier")
}

/// What the server records, shared with its connection threads.
#[derive(Debug, Default)]
struct Records {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    handshakes: Mutex<Vec<Handshake>>,
    failures: Mutex<Vec<String>>,
}

#[derive(Debug, Clone)]
struct ConnSettings {
    identity: String,
    close_each: bool,
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    settings: &ConnSettings,
    records: &Records,
) -> io::Result<()> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    // Finish the handshake before reading a request, so that it is recorded (or its
    // failure is) even when no request follows.
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            lock(&records.failures).push(e.to_string());
            return Err(e);
        }
    }
    lock(&records.handshakes).push(Handshake {
        peer,
        server_name: tls.conn.server_name().map(str::to_owned),
        version: tls
            .conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        client_cert: tls
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.to_vec()),
    });

    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut tls, &mut buf)? {
        let keep_alive = request.keep_alive() && !settings.close_each;
        let body = format!(
            "{} {} {}",
            settings.identity, request.method, request.target
        );
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nX-Upstream: {}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n",
            settings.identity,
            body.len()
        );
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if request.method != "HEAD" {
            bytes.extend_from_slice(body.as_bytes());
        }
        lock(&records.seen).push(Seen {
            method: request.method,
            target: request.target,
            headers: request.headers,
            body: request.body,
            chunked: false,
            peer,
            at: Instant::now(),
        });
        tls.write_all(&bytes)?;
        tls.flush()?;
        if !keep_alive {
            break;
        }
    }
    tls.conn.send_close_notify();
    tls.flush()
}

/// A request as read off a TLS stream.
struct Request {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let connection = self
            .header("connection")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if self.minor_version == 0 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads more bytes into `buf`; `Ok(0)` at the end of the stream. A peer that closes the
/// TCP connection without `close_notify` (rustls reports `UnexpectedEof`) has ended the
/// stream too: the proxy closing an idle pooled connection looks like that.
fn fill(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// The next request (a `Content-Length` body at most; a chunked one is refused as invalid
/// data, which ends the connection); `None` when the peer closed between requests. Bytes
/// past the request stay in `buf` for the next one.
fn read_request(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        if fill(stream, buf)? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or_else(|| invalid("empty head"))?;
    let mut parts = request_line.split(' ');
    let method = parts.next().ok_or_else(|| invalid("no method"))?.to_owned();
    let target = parts.next().ok_or_else(|| invalid("no target"))?.to_owned();
    let minor_version = match parts.next() {
        Some("HTTP/1.1") => 1,
        Some("HTTP/1.0") => 0,
        _ => return Err(invalid("not HTTP/1.x")),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| invalid("bad header line"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut request = Request {
        method,
        target,
        minor_version,
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        return Err(invalid("chunked request bodies are not supported here"));
    }
    let len: usize = match request.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| invalid("bad Content-Length"))?,
    };
    while buf.len() < len {
        if fill(stream, buf)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    request.body = buf.drain(..len).collect();
    Ok(Some(request))
}

/// A real HTTPS/1.1 upstream on loopback; see the [module docs](self). Dropping it stops
/// accepting, shuts every open connection down and waits (boundedly) for their threads.
pub struct TlsUpstream {
    identity: String,
    records: Arc<Records>,
    server: Server,
}

impl std::fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("identity", &self.identity)
            .field("addr", &self.server.addr)
            .field("connections", &self.connections())
            .field("requests", &self.count())
            .finish()
    }
}

impl TlsUpstream {
    /// A server presenting `cert`, with no client authentication, TLS 1.2 and 1.3.
    pub fn start(identity: &str, cert: &Issued) -> TlsUpstream {
        TlsUpstream::builder(identity, cert).start()
    }

    pub fn builder(identity: &str, cert: &Issued) -> TlsUpstreamBuilder {
        TlsUpstreamBuilder {
            identity: identity.to_owned(),
            cert: cert.clone(),
            client_ca: None,
            tls12_only: false,
            close_each: false,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `{"host": "127.0.0.1", "port": <port>, "protocol": "https"}`.
    pub fn target(&self) -> Value {
        target_json(self.server.addr.port(), json!({"protocol": "https"}))
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.records.seen).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.records.seen).len()
    }

    /// TCP connections accepted so far (whether or not their handshake succeeded).
    pub fn connections(&self) -> usize {
        self.records.connections.load(Ordering::SeqCst)
    }

    /// Handshakes completed so far, in order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.records.handshakes).clone()
    }

    /// Handshakes that failed so far: the server's error for each (e.g. `received fatal
    /// alert: UnknownCA` when the proxy refused its certificate).
    pub fn handshake_failures(&self) -> Vec<String> {
        lock(&self.records.failures).clone()
    }

    /// Waits until at least `n` handshakes failed (the server may record a failure just
    /// after the proxy has answered); false after `limit`.
    pub fn wait_for_handshake_failures(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while lock(&self.records.failures).len() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection};

    /// A rustls client trusting `ca` (and presenting `client`, if any) on a fresh connection.
    fn connect(
        up: &TlsUpstream,
        ca: &TestCa,
        server_name: &str,
        client: Option<&Issued>,
    ) -> StreamOwned<ClientConnection, TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der()).expect("add the CA");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(vec![c.cert_der.clone()], c.server_config_key())
                .expect("client cert and key match"),
        };
        let name = ServerName::try_from(server_name.to_owned()).expect("a server name");
        let conn = ClientConnection::new(Arc::new(config), name).expect("a client connection");
        let sock = TcpStream::connect(up.addr()).expect("connect to the upstream");
        sock.set_read_timeout(Some(crate::upstream::UPSTREAM_IO_TIMEOUT))
            .expect("set a read timeout");
        StreamOwned::new(conn, sock)
    }

    fn get(tls: &mut StreamOwned<ClientConnection, TcpStream>, path: &str) -> io::Result<String> {
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
        tls.flush()?;
        let mut buf = Vec::new();
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| invalid("no Content-Length"))?;
                while buf.len() < end + 4 + len {
                    if fill(tls, &mut buf)? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                return Ok(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
            if fill(tls, &mut buf)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    #[test]
    fn upstream_answers_keep_alive_requests_over_one_handshake() {
        let ca = TestCa::new("unit-ca");
        let up = TlsUpstream::start("unit", &ca.server_cert(&["127.0.0.1", "unit.test"]));
        let mut tls = connect(&up, &ca, "unit.test", None);
        assert_eq!(get(&mut tls, "/a").expect("first"), "unit GET /a");
        assert_eq!(get(&mut tls, "/b?x=1").expect("second"), "unit GET /b?x=1");
        assert_eq!(up.connections(), 1);
        let handshakes = up.handshakes();
        assert_eq!(handshakes.len(), 1);
        assert_eq!(handshakes[0].server_name.as_deref(), Some("unit.test"));
        assert!(handshakes[0].client_cert.is_none());
        assert_eq!(handshakes[0].version, "TLSv1_3");
        let targets: Vec<String> = up.requests().into_iter().map(|s| s.target).collect();
        assert_eq!(targets, ["/a", "/b?x=1"]);
    }

    #[test]
    fn a_client_trusting_another_ca_fails_the_handshake() {
        let (ca, other) = (TestCa::new("unit-ca"), TestCa::new("other-ca"));
        let up = TlsUpstream::start("unit", &ca.server_cert(&["127.0.0.1"]));
        let mut tls = connect(&up, &other, "127.0.0.1", None);
        let err = get(&mut tls, "/").expect_err("the client refuses the certificate");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(up.wait_for_handshake_failures(1, Duration::from_secs(5)));
        assert!(up.handshake_failures()[0].contains("UnknownCA"), "{:?}", up);
        assert_eq!(up.count(), 0);
    }

    #[test]
    fn expired_certificates_are_refused_by_webpki() {
        let ca = TestCa::new("unit-ca");
        let up = TlsUpstream::start(
            "unit",
            &ca.server_cert_valid(&["127.0.0.1"], Validity::expired()),
        );
        let mut tls = connect(&up, &ca, "127.0.0.1", None);
        let err = get(&mut tls, "/").expect_err("the certificate has expired");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn required_client_certificate_is_recorded_and_its_absence_fails() {
        let (ca, clients) = (TestCa::new("unit-ca"), TestCa::new("clients"));
        let up = TlsUpstream::builder("unit", &ca.server_cert(&["127.0.0.1"]))
            .require_client_cert(&clients)
            .start();
        let client = clients.client_cert("proxy");
        let mut tls = connect(&up, &ca, "127.0.0.1", Some(&client));
        assert_eq!(get(&mut tls, "/m").expect("mTLS request"), "unit GET /m");
        assert_eq!(
            up.handshakes()[0].client_cert.as_deref(),
            Some(client.cert_der())
        );

        let mut anonymous = connect(&up, &ca, "127.0.0.1", None);
        assert!(get(&mut anonymous, "/m").is_err());
        assert!(up.wait_for_handshake_failures(1, Duration::from_secs(5)));
        assert_eq!(
            up.count(),
            1,
            "only the request with a certificate was served"
        );
    }

    #[test]
    fn tls12_only_and_close_after_each_response_do_what_they_say() {
        let ca = TestCa::new("unit-ca");
        let up = TlsUpstream::builder("unit", &ca.server_cert(&["127.0.0.1"]))
            .tls12_only()
            .close_after_each_response()
            .start();
        let mut tls = connect(&up, &ca, "127.0.0.1", None);
        assert_eq!(get(&mut tls, "/a").expect("first"), "unit GET /a");
        assert!(get(&mut tls, "/b").is_err(), "the server closed after /a");
        assert_eq!(up.handshakes()[0].version, "TLSv1_2");
        assert_eq!(up.count(), 1);
    }

    #[test]
    fn key_fragments_are_the_base64_body_of_the_key() {
        let issued = TestCa::new("unit-ca").client_cert("c");
        let fragments = issued.key_fragments();
        assert!(fragments.len() >= 2, "{fragments:?}");
        for f in &fragments {
            assert!(issued.key_pem().contains(f.as_str()) || f.len() > 64);
            assert!(!f.contains("PRIVATE KEY"));
        }
        assert!(!format!("{issued:?}").contains(&fragments[0]));
    }
}
