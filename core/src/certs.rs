//! Server certificates: the `/api/v1/certificates` entity, its validation, and the SNI
//! table the HTTPS listener answers handshakes from.
//!
//! A certificate is uploaded as PEM (`cert_pem`: the leaf first, then its intermediates;
//! `key_pem`: PKCS#8, PKCS#1 or SEC1). [`CertificateSpec::validate`] refuses what would
//! fail at the first handshake (unparsable PEM, a key that is not the certificate's, an
//! expired certificate, no subjectAltName) with the field in the message and never a byte
//! of the key. [`CompiledCertificate`] holds what the listener needs, parsed once on the
//! admin thread: the signing key and the names. [`ServerCertificates`] is the immutable
//! table a snapshot carries; workers give it to rustls as the certificate resolver, so a
//! new table takes effect for new handshakes while open connections keep theirs.
//!
//! Selection (RFC 6125 §6.4.3): an exact DNS name beats a wildcard `*.example.com`, which
//! covers exactly one more label; among certificates with the same name the newest wins
//! (ids are UUIDv7, so it is the last in id order). A handshake without SNI, or with a
//! name nothing covers, gets the default certificate (`State::set_tls_default`: the newest
//! certificate for `*.<base-domain>`, else the development certificate); without one the
//! handshake fails with an alert.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::model::Invalid;

/// Certificates the server holds at most (each is a handshake key kept in memory).
pub const MAX_CERTIFICATES: usize = 10_000;
/// Longest `cert_pem` or `key_pem` accepted: a leaf with a long chain fits many times over.
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// Certificates in one chain at most.
const MAX_CHAIN: usize = 10;
/// Longest certificate name.
const MAX_NAME: usize = 128;

/// A certificate and its private key, as uploaded and as journaled. The data directory's
/// files are 0600 (DESIGN: secrets protected at rest by the file system, as nginx keeps
/// its key files); the key never leaves the admin thread except as a signing key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// Unique among certificates; the label of its metrics.
    pub name: String,
    /// The leaf certificate first, then intermediates.
    pub cert_pem: String,
    /// The leaf's private key. Never returned, logged or quoted.
    pub key_pem: String,
}

/// Never the key.
impl fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSpec")
            .field("name", &self.name)
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What the API shows of a certificate (and what metrics and `doctor` read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// DNS names and IP addresses from subjectAltName, lowercase, in certificate order.
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub fingerprint_sha256: String,
}

impl CertificateSpec {
    /// Checks the certificate as of `now`, at the API edge (never on replay: a journaled
    /// certificate that has since expired still loads). Returns what the API shows.
    pub fn validate(&self, now: OffsetDateTime) -> Result<CertificateInfo, Invalid> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_NAME || name != self.name {
            return Err(Invalid::new(
                "name",
                format!("must be 1..={MAX_NAME} characters without surrounding spaces"),
            ));
        }
        if self.name.starts_with('<')
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            return Err(Invalid::new(
                "name",
                "must not start with '<' nor contain control characters, quotes or backslashes",
            ));
        }
        let compiled = CompiledCertificate::compile(self)?;
        let info = compiled.info;
        if info.not_after <= now {
            return Err(Invalid::new(
                "cert_pem",
                format!(
                    "the certificate expired at {} (not_after)",
                    rfc3339(info.not_after)
                ),
            ));
        }
        if info.sans.is_empty() {
            return Err(Invalid::new(
                "cert_pem",
                "the certificate has no subjectAltName DNS name or IP address; clients \
                 match names against subjectAltName only (RFC 6125)",
            ));
        }
        Ok(info)
    }
}

/// A certificate ready for handshakes: its signing key and its names.
#[derive(Debug)]
pub struct CompiledCertificate {
    pub info: CertificateInfo,
    pub key: Arc<CertifiedKey>,
}

impl CompiledCertificate {
    /// Parses the PEM, loads the signing key and checks that it belongs to the leaf.
    /// No clock checks (see [`CertificateSpec::validate`]).
    pub fn compile(spec: &CertificateSpec) -> Result<CompiledCertificate, Invalid> {
        let chain = parse_chain(&spec.cert_pem)?;
        let Some(leaf) = chain.first() else {
            return Err(Invalid::new(
                "cert_pem",
                "no PEM CERTIFICATE block found (expected -----BEGIN CERTIFICATE-----)",
            ));
        };
        let info = inspect(leaf)?;
        let key = parse_key(&spec.key_pem)?;
        let certified = CertifiedKey::new(chain, key);
        certified.keys_match().map_err(|_| {
            Invalid::new(
                "key_pem",
                "the private key does not match the certificate's public key",
            )
        })?;
        Ok(CompiledCertificate {
            info,
            key: Arc::new(certified),
        })
    }
}

/// Whether PEM text holds a private key block (of any kind: `PRIVATE KEY`, `RSA PRIVATE
/// KEY`, `EC PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`). Certificate fields refuse it, so a key
/// pasted with its certificate is never stored where it would be shown or journaled as a
/// certificate.
pub fn holds_private_key(pem: &str) -> bool {
    pem.lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains("PRIVATE KEY"))
}

fn parse_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(Invalid::new(
            "cert_pem",
            format!("longer than {MAX_PEM_BYTES} bytes"),
        ));
    }
    if holds_private_key(pem) {
        return Err(Invalid::new(
            "cert_pem",
            "holds a PRIVATE KEY block: the certificate chain only (the key goes in key_pem)",
        ));
    }
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert =
            cert.map_err(|e| Invalid::new("cert_pem", format!("unparsable PEM certificate: {e}")))?;
        if chain.len() == MAX_CHAIN {
            return Err(Invalid::new(
                "cert_pem",
                format!("more than {MAX_CHAIN} certificates in the chain"),
            ));
        }
        chain.push(cert);
    }
    Ok(chain)
}

/// The key's errors never say more than what kind of block was expected: a message that
/// quotes a line of a PEM key would leak it.
fn parse_key(pem: &str) -> Result<Arc<dyn rustls::sign::SigningKey>, Invalid> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(Invalid::new(
            "key_pem",
            format!("longer than {MAX_PEM_BYTES} bytes"),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        Invalid::new(
            "key_pem",
            "unparsable PEM private key (expected a PRIVATE KEY, RSA PRIVATE KEY or EC \
             PRIVATE KEY block)",
        )
    })?;
    any_supported_type(&key).map_err(|_| {
        Invalid::new(
            "key_pem",
            "unsupported or damaged private key (supported: ECDSA P-256/P-384, Ed25519, RSA 2048+)",
        )
    })
}

/// The names, validity and fingerprint of a DER certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertificateInfo, Invalid> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| Invalid::new("cert_pem", format!("unparsable X.509 certificate: {e}")))?;
    let validity = cert.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    let mut sans = Vec::new();
    let san = cert.subject_alternative_name().map_err(|e| {
        Invalid::new(
            "cert_pem",
            format!("unparsable subjectAltName extension: {e}"),
        )
    })?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_of(bytes) {
                        sans.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertificateInfo {
        sans,
        not_before,
        not_after,
        fingerprint_sha256: hex(&Sha256::digest(der.as_ref())),
    })
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// RFC 3339, as every other time in the API.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The listener's SNI table: immutable, shared by every worker through the snapshot.
#[derive(Default)]
pub struct ServerCertificates {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for ServerCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificates")
            .field("exact", &self.exact.len())
            .field("wildcard", &self.wildcard.len())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl ServerCertificates {
    /// The table for `certificates` in id order (later ones win a tie on a name), with
    /// `default` for handshakes nothing else covers.
    pub fn build<'a>(
        certificates: impl IntoIterator<Item = &'a CompiledCertificate>,
        default: Option<&CompiledCertificate>,
    ) -> ServerCertificates {
        let mut table = ServerCertificates {
            default: default.map(|d| d.key.clone()),
            ..ServerCertificates::default()
        };
        for cert in certificates {
            for san in &cert.info.sans {
                match san.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.insert(suffix.into(), cert.key.clone()),
                    None => table.exact.insert(san.as_str().into(), cert.key.clone()),
                };
            }
        }
        table
    }

    /// Whether any handshake can succeed (a certificate or a default exists).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    /// The certificate for a handshake that asked for `sni`.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|sni| {
            let lower;
            let name = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = sni.to_ascii_lowercase();
                lower.as_str()
            } else {
                sni
            };
            let name = name.strip_suffix('.').unwrap_or(name);
            self.exact.get(name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        found.or(self.default.as_ref()).cloned()
    }
}

impl ResolvesServerCert for ServerCertificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed ECDSA P-256 certificate for `names`, valid from `from` for `days`.
    fn make(names: &[&str], from: OffsetDateTime, days: i64) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("names");
        params.not_before = from;
        params.not_after = from + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem())
    }

    fn spec(name: &str, (cert_pem, key_pem): (String, String)) -> CertificateSpec {
        CertificateSpec {
            name: name.to_owned(),
            cert_pem,
            key_pem,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_good_certificate_validates_and_shows_its_names() {
        let s = spec(
            "api",
            make(&["api.example.com", "*.example.com"], now(), 30),
        );
        let info = s.validate(now()).expect("valid");
        assert_eq!(info.sans, vec!["api.example.com", "*.example.com"]);
        assert_eq!(info.fingerprint_sha256.len(), 64);
        assert!(info.not_after > now());
    }

    #[test]
    fn defects_are_refused_by_field_without_quoting_the_key() {
        let (cert, key) = make(&["a.example.com"], now(), 30);
        let (_, other_key) = make(&["a.example.com"], now(), 30);
        let cases = [
            (spec("x", ("garbage".into(), key.clone())), "cert_pem"),
            (
                spec(
                    "x",
                    (
                        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                        key.clone(),
                    ),
                ),
                "cert_pem",
            ),
            (spec("x", (cert.clone(), "garbage".into())), "key_pem"),
            (spec("x", (cert.clone(), other_key.clone())), "key_pem"),
            (
                spec(
                    "x",
                    make(&["a.example.com"], now() - time::Duration::days(10), 5),
                ),
                "cert_pem",
            ),
            (spec("", (cert.clone(), key.clone())), "name"),
            (spec("x", (format!("{cert}{key}"), key.clone())), "cert_pem"),
        ];
        for (s, field) in cases {
            let err = s.validate(now()).expect_err("must be refused");
            assert_eq!(err.path, field, "{err}");
            for line in s.key_pem.lines().filter(|l| !l.starts_with("-----")) {
                let piece: String = line.chars().take(16).collect();
                assert!(!err.to_string().contains(&piece), "{err} quotes the key");
            }
        }
        // Debug never shows the key either.
        let shown = format!("{:?}", spec("x", (cert, key.clone())));
        assert!(
            !shown.contains(key.lines().nth(1).unwrap_or("-")),
            "{shown}"
        );
    }

    #[test]
    fn a_certificate_without_sans_is_refused() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.not_before = now();
        params.not_after = now() + time::Duration::days(3);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let err = spec("x", (cert.pem(), key.serialize_pem()))
            .validate(now())
            .expect_err("no SAN");
        assert_eq!(err.path, "cert_pem");
        assert!(err.message.contains("subjectAltName"), "{err}");
    }

    #[test]
    fn exact_beats_wildcard_and_unknown_names_get_the_default() {
        let wildcard =
            CompiledCertificate::compile(&spec("w", make(&["*.example.com"], now(), 30)))
                .expect("wildcard");
        let exact = CompiledCertificate::compile(&spec("e", make(&["api.example.com"], now(), 30)))
            .expect("exact");
        let fallback = CompiledCertificate::compile(&spec("d", make(&["localhost"], now(), 30)))
            .expect("default");
        let table = ServerCertificates::build([&wildcard, &exact], Some(&fallback));
        let is = |sni: Option<&str>, want: &CompiledCertificate| {
            let got = table.select(sni).expect("a certificate");
            Arc::ptr_eq(&got, &want.key)
        };
        assert!(is(Some("api.example.com"), &exact));
        assert!(is(Some("API.Example.com."), &exact));
        assert!(is(Some("www.example.com"), &wildcard));
        assert!(is(Some("a.b.example.com"), &fallback));
        assert!(is(Some("other.org"), &fallback));
        assert!(is(None, &fallback));
        let no_default = ServerCertificates::build([&exact], None);
        assert!(no_default.select(Some("other.org")).is_none());
        assert!(ServerCertificates::default().is_empty());
    }
}
