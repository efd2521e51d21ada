//! The client side of the proxy's TLS listener, and the certificate facts tests assert on.
//!
//! - [`TlsClient`]: a rustls client (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`) that
//!   trusts what the test says ([`Trust`]): a test CA with name checks as curl
//!   `--cacert` does, one pinned certificate, or anything (to ask *which* certificate a
//!   server picked for an SNI name). Its [`TlsClient::handshake`] reports what was served
//!   ([`Served`]); [`Client::tls`](crate::Client::tls) sends requests through it.
//! - [`fingerprint_sha256`], [`has_dns_san`]: what the admin API reports about a
//!   certificate, recomputed independently from its DER.
//! - [`no_san_cert`]: a certificate shape [`tls`](crate::tls) does not make (a subject
//!   name but no SAN), for the admin API's validation.
//! - [`client_hello`]: the first flight of a real handshake, to cut in half or trickle.
//! - [`upload`], [`CERTIFICATES`]: the admin API's certificate collection.
//!
//! Nothing here trusts the system's root store: a test always names what it trusts.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned, SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};

use crate::tls::{Issued, Validity};
use crate::{Client, IO_TIMEOUT, Value, json};

/// The admin API's certificate collection.
pub const CERTIFICATES: &str = "/api/v1/certificates";

/// The JSON body that uploads `issued` under `name` (`cert_pem` is `issued`'s leaf).
pub fn upload_body(name: &str, issued: &Issued) -> Value {
    json!({"name": name, "cert_pem": issued.cert_pem(), "key_pem": issued.key_pem()})
}

/// POSTs `issued` as certificate `name`, expects 201, returns the created certificate.
pub fn upload(admin: &Client, name: &str, issued: &Issued) -> Value {
    admin
        .post_json(CERTIFICATES, &upload_body(name, issued))
        .expect_status(201)
        .json()
}

/// What a [`TlsClient`] accepts as the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A chain to one of these roots (PEM), valid now and naming the server name: what a
    /// browser or `curl --cacert` checks.
    Roots(Vec<String>),
    /// Exactly this certificate (DER), whatever name it carries: trust on first use, for a
    /// self-signed development certificate whose `*.localhost` webpki will not match.
    Pinned(Vec<u8>),
    /// Any certificate (the handshake signature is still checked against its key): for
    /// tests that only ask which certificate the server presented.
    Any,
}

/// A rustls client configuration; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    trust: Trust,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trust = match &self.trust {
            Trust::Roots(roots) => format!("{} root(s)", roots.len()),
            Trust::Pinned(der) => format!("pinned {}", &fingerprint_sha256(der)[..16]),
            Trust::Any => "any".to_owned(),
        };
        f.debug_struct("TlsClient").field("trust", &trust).finish()
    }
}

/// What one handshake negotiated and which certificate the server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The leaf certificate, DER.
    pub leaf: Vec<u8>,
    /// Every certificate the server sent, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: String,
    /// The ALPN protocol the server chose, if any.
    pub alpn: Option<String>,
}

impl Served {
    pub fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.leaf)
    }
}

impl TlsClient {
    /// TLS 1.2 and 1.3, offering ALPN `http/1.1`.
    pub fn new(trust: Trust) -> TlsClient {
        TlsClient::with(
            trust,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &["http/1.1"],
        )
    }

    /// Only these protocol versions, offering these ALPN protocols (none: no ALPN
    /// extension at all).
    pub fn with(
        trust: Trust,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&str],
    ) -> TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let verifier: Arc<dyn ServerCertVerifier> = match &trust {
            Trust::Roots(pems) => {
                let mut roots = RootCertStore::empty();
                for pem in pems {
                    for der in pem_certificates(pem) {
                        roots.add(der).expect("a root certificate parses");
                    }
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .expect("build the webpki verifier")
            }
            Trust::Pinned(der) => Arc::new(Lenient {
                pinned: Some(der.clone()),
                provider: provider.clone(),
            }),
            Trust::Any => Arc::new(Lenient {
                pinned: None,
                provider: provider.clone(),
            }),
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        TlsClient {
            config: Arc::new(config),
            trust,
        }
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Connects to `addr` and completes a handshake for `server_name`: a DNS name is sent
    /// as SNI; an IP address (or an empty name) sends none. Errors carry rustls' reason.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> io::Result<TlsStream> {
        let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        self.wrap(sock, server_name)
    }

    /// Completes a handshake over an open TCP connection (e.g. one bound to another
    /// loopback source address).
    pub fn wrap(&self, sock: TcpStream, server_name: &str) -> io::Result<TlsStream> {
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = if server_name.is_empty() {
            // No SNI: rustls sends none for an IP address.
            ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into())
        } else {
            ServerName::try_from(server_name.to_owned())
                .map_err(|e| io::Error::other(format!("server name {server_name:?}: {e}")))?
        };
        let conn = ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsStream(Box::new(stream)))
    }

    /// Like [`TlsClient::connect`], but `first` (plaintext) leaves in the same TCP write as
    /// the client's Finished, as an eager client's first request can (TLS 1.3: the
    /// client's flight is the handshake's last). The server gets both in one read.
    pub fn connect_sending(
        &self,
        addr: SocketAddr,
        server_name: &str,
        first: &[u8],
    ) -> io::Result<TlsStream> {
        let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::other(format!("server name {server_name:?}: {e}")))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            // While handshaking, only the hello goes out on its own; the last flight (the
            // Finished) waits below for `first`.
            while conn.wants_write() {
                conn.write_tls(&mut sock)?;
            }
            if conn.read_tls(&mut sock)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            conn.process_new_packets().map_err(io::Error::other)?;
        }
        conn.writer().write_all(first)?;
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        sock.write_all(&out)?;
        Ok(TlsStream(Box::new(StreamOwned::new(conn, sock))))
    }

    /// One handshake for `server_name` (see [`TlsClient::connect`]) and what it served.
    pub fn handshake(&self, addr: SocketAddr, server_name: &str) -> Result<Served, String> {
        let stream = self
            .connect(addr, server_name)
            .map_err(|e| format!("TLS handshake with {addr} for {server_name:?}: {e}"))?;
        Ok(stream.served())
    }
}

/// A client connection whose handshake has completed.
pub struct TlsStream(Box<StreamOwned<ClientConnection, TcpStream>>);

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.0.sock.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// What the handshake negotiated and which certificate the server presented.
    pub fn served(&self) -> Served {
        let conn = &self.0.conn;
        let chain: Vec<Vec<u8>> = conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect();
        Served {
            leaf: chain.first().cloned().unwrap_or_default(),
            chain,
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }

    /// The TCP socket underneath (for timeouts; writing to it would corrupt the stream).
    pub fn socket(&self) -> &TcpStream {
        &self.0.sock
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            // A TCP close without close_notify ends the stream too (the server closing a
            // connection it gave up on looks like that).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// [`Trust::Pinned`] and [`Trust::Any`]: no chain or name checks, but the handshake
/// signature must verify against the presented key.
#[derive(Debug)]
struct Lenient {
    pinned: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pin) if pin.as_slice() != end_entity.as_ref() => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate facts

/// Lowercase hex of the SHA-256 of `der`: the `fingerprint_sha256` the admin API reports
/// (and what `openssl x509 -fingerprint -sha256` prints, without colons, in lowercase).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `der` carries `name` as a DNS subjectAltName: a context-specific `[2]`
/// IA5String (`0x82 <len> <name>`), which is how every DER encoder writes a dNSName.
/// Enough to tell `localhost` from `*.localhost` without an X.509 parser.
pub fn has_dns_san(der: &[u8], name: &str) -> bool {
    let Ok(len) = u8::try_from(name.len()) else {
        return false;
    };
    if len >= 0x80 {
        return false;
    }
    let mut needle = vec![0x82, len];
    needle.extend_from_slice(name.as_bytes());
    crate::contains_bytes(der, &needle)
}

/// The certificates (DER) of a PEM bundle, in order.
pub fn pem_certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => body = Some(String::new()),
            "-----END CERTIFICATE-----" => {
                if let Some(b64) = body.take() {
                    out.push(CertificateDer::from(base64_decode(&b64)));
                }
            }
            _ => {
                if let Some(b) = body.as_mut() {
                    b.push_str(line);
                }
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in group.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

/// A self-signed certificate with a subject common name (`common_name`) but no
/// subjectAltName extension at all, valid now; returns `(cert_pem, key_pem)`.
pub fn no_san_cert(common_name: &str) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters without SANs");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.to_owned());
    let validity = Validity::current();
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid");
    params.not_before = now + time::Duration::seconds(validity.not_before_secs);
    params.not_after = now + time::Duration::seconds(validity.not_after_secs);
    let key = KeyPair::generate().expect("generate a key pair");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// The bytes a rustls client sends first for `server_name` (its whole ClientHello
/// record), for tests that send part of a handshake and stop.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let client = TlsClient::new(Trust::Any);
    let name = ServerName::try_from(server_name.to_owned()).expect("a DNS name");
    let mut conn = ClientConnection::new(client.config.clone(), name).expect("a client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TestCa;

    #[test]
    fn fingerprint_is_lowercase_hex_sha256() {
        assert_eq!(
            fingerprint_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pem_bundles_decode_to_the_issued_der() {
        let ca = TestCa::new("unit-ca");
        let issued = ca.server_cert(&["a.localhost", "*.localhost"]);
        let bundle = format!("{}{}", issued.cert_pem(), ca.cert_pem());
        let ders = pem_certificates(&bundle);
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0].as_ref(), issued.cert_der());
        assert!(has_dns_san(issued.cert_der(), "*.localhost"));
        assert!(has_dns_san(issued.cert_der(), "a.localhost"));
        assert!(!has_dns_san(issued.cert_der(), "localhost"));
    }

    #[test]
    fn a_no_san_certificate_has_its_name_only_in_the_subject() {
        let (pem, key) = no_san_cert("nosan.localhost");
        let der = pem_certificates(&pem).remove(0);
        assert!(!has_dns_san(&der, "nosan.localhost"));
        assert!(crate::contains_bytes(&der, b"nosan.localhost"));
        assert!(key.contains("PRIVATE KEY"));
    }

    #[test]
    fn https_clients_send_the_hosts_name_as_sni_and_report_what_was_served() {
        use crate::tls::TlsUpstream;
        use crate::{Client, KeepAlive};

        let ca = TestCa::new("unit-ca");
        let cert = ca.server_cert(&["api.localhost"]);
        let up = TlsUpstream::start("unit", &cert);
        let by_ca = TlsClient::new(Trust::Roots(vec![ca.cert_pem()]));
        let client = Client::new(up.addr())
            .host("api.localhost:8443")
            .tls(by_ca.clone());
        let resp = client.get("/one").expect_status(200);
        assert_eq!(resp.text(), "unit GET /one");
        assert_eq!(
            up.handshakes()[0].server_name.as_deref(),
            Some("api.localhost")
        );

        let mut conn = client.keep_alive();
        assert!(matches!(conn, KeepAlive::Tls { .. }));
        assert_eq!(conn.get("/a").text(), "unit GET /a");
        assert_eq!(conn.get("/b").text(), "unit GET /b");
        let served = conn.served().expect("a TLS connection");
        assert_eq!(served.leaf, cert.cert_der());
        assert_eq!(served.fingerprint(), fingerprint_sha256(cert.cert_der()));
        assert_eq!(up.connections(), 2, "one per request, one kept alive");

        // The CA does not vouch for another name; a pin ignores names but not the key.
        let misnamed = client.clone().host("other.localhost");
        assert!(misnamed.try_request("GET", "/", &[], b"").is_err());
        let pinned = TlsClient::new(Trust::Pinned(cert.cert_der().to_vec()));
        let served = pinned.handshake(up.addr(), "").expect("pinned, no SNI");
        assert_eq!(served.leaf, cert.cert_der());
        let other = TlsClient::new(Trust::Pinned(ca.server_cert(&["x"]).cert_der().to_vec()));
        assert!(other.handshake(up.addr(), "api.localhost").is_err());
        assert!(
            client.try_connect().is_err(),
            "no plain stream from a TLS client"
        );
    }

    #[test]
    fn client_hello_is_one_handshake_record() {
        let hello = client_hello("api.localhost");
        assert_eq!(hello[0], 0x16, "a handshake record");
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(hello.len(), 5 + len);
        assert!(crate::contains_bytes(&hello, b"api.localhost"), "SNI");
    }
}
