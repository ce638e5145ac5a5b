//! TLS for both listeners: rustls (ring), TLS 1.2 and 1.3 only.
//!
//! With `[tls] cert` and `key` the server serves those. Without them it
//! makes a self-signed certificate on first start and keeps it in
//! `<data_dir>/hyve/tls/` (the key 0600), so clients can pin it: the
//! original SysAdm server made a new one at every start, and nobody could.
//! The SHA-256 fingerprint is logged at every start, for comparing with what
//! `hyve` shows when it first meets the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use hyve_engine::fsutil;

use crate::config::TlsConfig;

pub const TLS_DIR: &str = "tls";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// What the listeners need.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// `SHA256:AB:CD:…` of the leaf certificate.
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

/// The fingerprint as people compare it: hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: Vec<String> = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("SHA256:{}", hex.join(":"))
}

/// The names the self-signed certificate is good for: loopback and this
/// host's name.
fn names() -> Vec<String> {
    let mut v = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = nix::unistd::gethostname() {
        if let Some(h) = h.to_str().filter(|h| !h.is_empty() && *h != "localhost") {
            v.push(h.to_string());
        }
    }
    v
}

/// Makes the self-signed pair in `dir`: key first (0600), then the
/// certificate, each written atomically; a crash in between leaves no
/// certificate, so the next start makes both again.
fn make_self_signed(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let names = names();
    let mut params = rcgen::CertificateParams::new(names.clone())
        .context("cannot make a certificate for this host's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("hyve on {}", names.last().unwrap()),
    );
    let key = rcgen::KeyPair::generate().context("cannot make a key pair")?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;
    let (kp, cp) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
    fsutil::write_atomic_mode(&kp, key.serialize_pem().as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", kp.display()))?;
    fsutil::write_atomic_mode(&cp, cert.pem().as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", cp.display()))?;
    info!(path = %cp.display(), names = ?names, "made a self-signed certificate");
    Ok(())
}

fn load_pair(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(key) {
        if m.permissions().mode() & 0o077 != 0 {
            warn!(path = %key.display(), "the TLS private key is readable by other users: chmod 600 it");
        }
    }
    Ok((certs, key_der))
}

/// The TLS settings for both listeners, making the self-signed pair on
/// first start when the config names none.
pub fn load(cfg: &TlsConfig, state_dir: &Path) -> anyhow::Result<Tls> {
    let (cert_path, key_path) = match (&cfg.cert, &cfg.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = state_dir.join(TLS_DIR);
            let (c, k) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
            if !(c.exists() && k.exists()) {
                make_self_signed(&dir)?;
            }
            (c, k)
        }
    };
    let (certs, key) = load_pair(&cert_path, &key_path)?;
    let fp = fingerprint(&certs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2/1.3 are not available")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key {} does not go with the certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    info!(cert = %cert_path.display(), fingerprint = %fp, "TLS");
    Ok(Tls {
        config: Arc::new(config),
        fingerprint: fp,
        cert_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_self_signed_certificate_is_made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = load(&TlsConfig::default(), d.path()).unwrap();
        let key = d.path().join(TLS_DIR).join(KEY_FILE);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load(&TlsConfig::default(), d.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(a.fingerprint.starts_with("SHA256:") && a.fingerprint.len() == 7 + 32 * 3 - 1);
    }

    #[test]
    fn configured_files_are_used_and_checked() {
        let d = tempfile::tempdir().unwrap();
        load(&TlsConfig::default(), d.path()).unwrap();
        let dir = d.path().join(TLS_DIR);
        let cfg = TlsConfig {
            enabled: true,
            cert: Some(dir.join(CERT_FILE)),
            key: Some(dir.join(KEY_FILE)),
        };
        let other = tempfile::tempdir().unwrap();
        load(&cfg, other.path()).unwrap();
        assert!(
            !other.path().join(TLS_DIR).exists(),
            "nothing made when configured"
        );
        // A key that is not the certificate's.
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(other.path().join("k.pem"), other_key).unwrap();
        let bad = TlsConfig {
            key: Some(other.path().join("k.pem")),
            ..cfg.clone()
        };
        let e = load(&bad, other.path()).err().unwrap();
        assert!(format!("{e:#}").contains("does not go with"), "{e:#}");
        let missing = TlsConfig {
            cert: Some(other.path().join("nope.pem")),
            ..cfg
        };
        assert!(format!("{:#}", load(&missing, other.path()).err().unwrap()).contains("nope.pem"));
    }
}
