//! The development certificate: what makes `https://api.localhost:8443/` answer on a fresh
//! machine. A self-signed certificate for `<base-domain>` and `*.<base-domain>`, generated
//! at the first start with the HTTPS listener on and kept in
//! `<data-dir>/tls/development.pem` (certificate and key, mode 0600, directory 0700) so
//! restarts serve the same one. While no uploaded certificate covers `*.<base-domain>` it is
//! the default certificate: a handshake whose name nothing else covers gets it.
//!
//! It is regenerated at start-up when the base domain changed, when it expires within
//! [`RENEW_BEFORE`], or when the file does not load (it is ours; nothing else writes it).
//! A process running for a year serves it past its expiry; restart it (or upload one).
//! `shardgate doctor` warns when it serves a base domain other than `localhost`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardgate_core::certs::{CertificateSpec, CompiledCertificate};
use shardgate_core::state::State;
use time::{Duration, OffsetDateTime};

/// Where the development certificate lives under the data directory.
pub const DEV_CERT_FILE: &str = "tls/development.pem";
/// How long a generated development certificate is valid.
const VALIDITY: Duration = Duration::days(365);
/// A development certificate expiring sooner than this is replaced at start-up.
const RENEW_BEFORE: Duration = Duration::days(7);

/// Whether an uploaded certificate covers every `<name>.<base_domain>`.
pub fn covered(state: &State, base_domain: &str) -> bool {
    let wildcard = format!("*.{}", base_domain.to_ascii_lowercase());
    state.certificates().any(|r| {
        state
            .certificate_info(r.id)
            .is_some_and(|info| info.sans.contains(&wildcard))
    })
}

/// A stored certificate as `shardgate doctor` reports it.
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    pub name: String,
    pub sans: Vec<String>,
    pub not_after: OffsetDateTime,
}

/// The certificates stored in `data_dir` (none when it does not exist yet), read without
/// taking the directory's lock, so `doctor` works beside a running gateway.
pub fn stored_certificates(data_dir: &Path) -> Result<Vec<StoredCertificate>, String> {
    if !data_dir.exists() {
        return Ok(Vec::new());
    }
    let state = crate::store::Store::<State>::peek(data_dir).map_err(|e| e.to_string())?;
    Ok(state
        .certificates()
        .map(|r| {
            let info = state.certificate_info(r.id);
            StoredCertificate {
                name: r.spec.name.clone(),
                sans: info.map(|i| i.sans.clone()).unwrap_or_default(),
                not_after: info.map_or(OffsetDateTime::UNIX_EPOCH, |i| i.not_after),
            }
        })
        .collect())
}

/// Loads the development certificate for `base_domain` from `data_dir`, generating (and
/// saving) a new one when there is none usable.
pub fn load_or_create(
    data_dir: &Path,
    base_domain: &str,
) -> Result<Arc<CompiledCertificate>, String> {
    let path = data_dir.join(DEV_CERT_FILE);
    match load(&path, base_domain) {
        Ok(Some(cert)) => return Ok(Arc::new(cert)),
        Ok(None) => {}
        Err(reason) => tracing::warn!(
            path = %path.display(), %reason,
            "replacing the development certificate"
        ),
    }
    let (pem, compiled) = generate(base_domain)?;
    save(&path, &pem).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), %base_domain, "generated a development certificate");
    Ok(Arc::new(compiled))
}

/// `Ok(None)`: no file. `Err`: a file that is not usable for `base_domain` any more.
fn load(path: &Path, base_domain: &str) -> Result<Option<CompiledCertificate>, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let spec = split(&text).ok_or("not a certificate followed by its key")?;
    let cert = CompiledCertificate::compile(&spec).map_err(|e| e.to_string())?;
    let base = base_domain.to_ascii_lowercase();
    if !cert.info.sans.contains(&base) || !cert.info.sans.contains(&format!("*.{base}")) {
        return Err(format!(
            "it is not for {base_domain} (the base domain changed)"
        ));
    }
    let renew_at = cert.info.not_after.checked_sub(RENEW_BEFORE);
    if renew_at.is_none_or(|at| at <= OffsetDateTime::now_utc()) {
        return Err("it expires within a week".into());
    }
    Ok(Some(cert))
}

/// The file holds the certificate, then the key.
fn split(text: &str) -> Option<CertificateSpec> {
    let key_at = text.find("-----BEGIN PRIVATE KEY-----")?;
    let (cert_pem, key_pem) = text.split_at(key_at);
    Some(CertificateSpec {
        name: "development".into(),
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
    })
}

/// A self-signed ECDSA P-256 certificate for `base_domain` and `*.base_domain`.
fn generate(base_domain: &str) -> Result<(String, CompiledCertificate), String> {
    let base = base_domain.to_ascii_lowercase();
    let mut params = rcgen::CertificateParams::new(vec![base.clone(), format!("*.{base}")])
        .map_err(|e| format!("cannot make a certificate for {base_domain:?}: {e}"))?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(
        rcgen::DnType::CommonName,
        format!("shardgate development certificate for {base}"),
    );
    params.distinguished_name = name;
    let now = OffsetDateTime::now_utc();
    // A little in the past, so a client whose clock is slightly behind accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + VALIDITY;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the development certificate: {e}"))?;
    let spec = CertificateSpec {
        name: "development".into(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let compiled = CompiledCertificate::compile(&spec).map_err(|e| e.to_string())?;
    Ok((format!("{}{}", spec.cert_pem, spec.key_pem), compiled))
}

/// Writes `pem` to a new file (0600) and renames it over `path`, so a crash never leaves a
/// half-written key; the directory is created 0700.
fn save(path: &Path, pem: &str) -> std::io::Result<()> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let tmp: PathBuf = dir.join(".development.pem.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_kept_private_and_reused() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let first = load_or_create(dir.path(), "localhost")?;
        assert_eq!(first.info.sans, vec!["localhost", "*.localhost"]);
        let path = dir.path().join(DEV_CERT_FILE);
        let mode = fs::metadata(&path)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path(), "localhost")?;
        assert_eq!(first.info.fingerprint_sha256, again.info.fingerprint_sha256);
        // Another base domain: a new certificate for it.
        let other = load_or_create(dir.path(), "example.test")?;
        assert_eq!(other.info.sans, vec!["example.test", "*.example.test"]);
        // A damaged file is replaced, not fatal.
        fs::write(&path, "garbage").map_err(|e| e.to_string())?;
        let fixed = load_or_create(dir.path(), "example.test")?;
        assert_ne!(fixed.info.fingerprint_sha256, other.info.fingerprint_sha256);
        Ok(())
    }
}
