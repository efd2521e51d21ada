//! TLS for `bench/run`'s HTTPS scenarios: the run's own certificate authority and the
//! ECDSA P-256 server certificate that both nginx and shardgate serve, and the rustls
//! client configuration every bench client uses.
//!
//! The client is what a modern browser negotiates with either proxy and nothing more: TLS
//! 1.3 only, the ring provider (as the gateway), the run's CA as the only root (so every
//! connection really verifies the chain and the SNI name), and no session resumption. It
//! does not hand tickets back, so every new connection is a full handshake; it counts the
//! tickets servers send ([`TicketCounter`]), because issuing them is part of each server's
//! handshake cost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls12Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, NamedGroup, RootCertStore};

/// The name clients send as SNI and `Host`, and the name in the server certificate: the
/// `bench` gateway under shardgate's default base domain.
pub const SERVER_NAME: &str = "bench.localhost";

/// The run's CA and the server certificate it issued, as PEM.
pub struct BenchPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for BenchPki {
    // A throwaway key, but still never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchPki").finish_non_exhaustive()
    }
}

/// Where [`BenchPki::write`] put the files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl BenchPki {
    /// A fresh CA (ECDSA P-256) and a server certificate for `names` (DNS SANs) with an
    /// ECDSA P-256 key, valid from a day ago for 30 days.
    pub fn generate(names: &[&str]) -> Result<BenchPki, String> {
        let e = |what: &'static str| move |err: rcgen::Error| format!("{what}: {err}");
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|err| err.to_string())?;
        let (not_before, not_after) = (
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );

        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e("CA params"))?;
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "shardgate bench/run CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_key = KeyPair::generate().map_err(e("CA key"))?;
        let ca_cert = ca.self_signed(&ca_key).map_err(e("CA certificate"))?;

        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf = CertificateParams::new(sans).map_err(e("server params"))?;
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("bench"),
        );
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let key = KeyPair::generate().map_err(e("server key"))?;
        let cert = leaf
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(e("server certificate"))?;
        Ok(BenchPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.pem` (the certificate alone: both proxies send the same
    /// one-certificate chain) and `server.key` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PkiFiles, String> {
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        for (path, text) in [
            (&files.ca, &self.ca_pem),
            (&files.cert, &self.cert_pem),
            (&files.key, &self.key_pem),
        ] {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(files)
    }
}

/// A client session store that keeps nothing: for the handshake this is exactly
/// `Resumption::disabled()` (no ticket is ever offered, so every connection is a full
/// handshake), but it counts the TLS 1.3 tickets servers send.
#[derive(Debug, Default)]
pub struct TicketCounter {
    tickets: AtomicU64,
}

impl TicketCounter {
    pub fn tickets(&self) -> u64 {
        self.tickets.load(Ordering::Relaxed)
    }
}

impl ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
    }

    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// The bench client configuration: TLS 1.3 only, ring, `ca_pem` as the only root, no
/// resumption; the tickets it is sent are counted in `tickets`.
pub fn client_config(ca_pem: &str, tickets: Arc<TicketCounter>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA PEM holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("client config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::store(tickets).tls12_resumption(Tls12Resumption::Disabled);
    Ok(config)
}

/// The SNI name as rustls takes it.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("server name {name:?}: {e}"))
}

/// What a finished handshake negotiated, for the report (so a reader can see both proxies
/// ran the same protocol, suite and key exchange).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub version: String,
    pub cipher_suite: String,
    pub kx_group: String,
    /// `Full`, `FullWithHelloRetryRequest` or `Resumed`.
    pub handshake: String,
}

impl Negotiated {
    pub fn of(conn: &rustls::ClientConnection) -> Negotiated {
        Negotiated {
            version: conn
                .protocol_version()
                .map_or("?".into(), |v| format!("{v:?}")),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map_or("?".into(), |s| format!("{:?}", s.suite())),
            kx_group: conn
                .negotiated_key_exchange_group()
                .map_or("?".into(), |g| format!("{:?}", g.name())),
            handshake: conn
                .handshake_kind()
                .map_or("?".into(), |k| format!("{k:?}")),
        }
    }
}

/// Whether this shardgate binary has the HTTPS listener (`--tls-listen` in its `--help`).
/// Builds from before it cannot take the flag at all, so the harness asks first.
pub fn shardgate_has_tls_listener(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--tls-listen"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    fn server_config(pki: &BenchPki) -> ServerConfig {
        let chain = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key PEM");
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key")
    }

    /// Runs a handshake between the two in memory; the first error either side hits.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        let mut wire = Vec::new();
        loop {
            let mut moved = false;
            while client.wants_write() {
                wire.clear();
                client.write_tls(&mut wire).expect("write to a Vec");
                server.read_tls(&mut &wire[..]).expect("read from a slice");
                server.process_new_packets()?;
                moved = true;
            }
            while server.wants_write() {
                wire.clear();
                server.write_tls(&mut wire).expect("write to a Vec");
                client.read_tls(&mut &wire[..]).expect("read from a slice");
                client.process_new_packets()?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    #[test]
    fn client_makes_full_tls13_handshakes_with_the_generated_certificate_and_counts_tickets() {
        let pki = BenchPki::generate(&[SERVER_NAME]).expect("generate");
        let server_config = Arc::new(server_config(&pki));
        let tickets = Arc::new(TicketCounter::default());
        let client_config =
            Arc::new(client_config(&pki.ca_pem, tickets.clone()).expect("client config"));
        for round in 1..=2u64 {
            let mut client = ClientConnection::new(
                client_config.clone(),
                server_name(SERVER_NAME).expect("name"),
            )
            .expect("client");
            let mut server = ServerConnection::new(server_config.clone()).expect("server");
            handshake(&mut client, &mut server).expect("handshake");
            assert!(!client.is_handshaking());
            let n = Negotiated::of(&client);
            assert_eq!(n.version, "TLSv1_3");
            // The second connection is full too: nothing was kept to resume with.
            assert_eq!(n.handshake, "Full", "round {round}");
            assert_eq!(
                tickets.tickets(),
                round * server_config.send_tls13_tickets as u64
            );
        }
    }

    #[test]
    fn client_refuses_the_certificate_for_another_name() {
        let pki = BenchPki::generate(&[SERVER_NAME]).expect("generate");
        let config = Arc::new(client_config(&pki.ca_pem, Arc::default()).expect("client config"));
        let mut client =
            ClientConnection::new(config, server_name("other.localhost").expect("name"))
                .expect("client");
        let mut server = ServerConnection::new(Arc::new(server_config(&pki))).expect("server");
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn client_refuses_a_certificate_from_another_ca() {
        let ours = BenchPki::generate(&[SERVER_NAME]).expect("generate");
        let theirs = BenchPki::generate(&[SERVER_NAME]).expect("generate");
        let config = Arc::new(client_config(&ours.ca_pem, Arc::default()).expect("client config"));
        let mut client =
            ClientConnection::new(config, server_name(SERVER_NAME).expect("name")).expect("client");
        let mut server = ServerConnection::new(Arc::new(server_config(&theirs))).expect("server");
        assert!(handshake(&mut client, &mut server).is_err());
    }
}
