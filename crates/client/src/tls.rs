//! Whom a `wss://` connection trusts: the public CAs, a CA file, or one
//! certificate by its SHA-256 fingerprint (trust on first use, as ssh does
//! with host keys: the hyve server makes itself a self-signed certificate).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate's SHA-256, over its DER.
pub type Fingerprint = [u8; 32];

/// The fingerprint as people compare it: `SHA256:AB:CD:…`, as the server
/// logs it.
pub fn fingerprint_text(fp: &Fingerprint) -> String {
    let hex: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256:{}", hex.join(":"))
}

/// Reads `SHA256:AB:CD:…` (or plain hex) back.
pub fn parse_fingerprint(s: &str) -> Option<Fingerprint> {
    let hex: String = s
        .trim()
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn fingerprint_of(der: &[u8]) -> Fingerprint {
    Sha256::digest(der).into()
}

#[derive(Debug, Clone)]
pub enum Trust {
    /// The public web PKI.
    PublicRoots,
    /// Servers whose chain leads to one of these CA certificates.
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly the certificate with this fingerprint, whatever its names
    /// and dates; `None` accepts any certificate once (first use) and
    /// reports which through [`Client::server_fingerprint`].
    ///
    /// [`Client::server_fingerprint`]: crate::Client::server_fingerprint
    Fingerprint(Option<Fingerprint>),
}

impl Trust {
    /// The CA certificates of a PEM file.
    pub fn ca_file(path: &Path) -> Result<Trust, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        Ok(Trust::Ca(certs))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts the one certificate it is told (or any, the first time), but
/// still checks that the server holds that certificate's key: the
/// handshake signatures are verified as usual.
#[derive(Debug)]
struct Pinned {
    expected: Option<Fingerprint>,
    seen: Arc<Mutex<Option<Fingerprint>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint_of(end_entity);
        *self.seen.lock().unwrap() = Some(fp);
        match self.expected {
            Some(e) if e != fp => Err(rustls::Error::General(
                "the server's certificate is not the one remembered for it".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where a pinned verifier records the fingerprint it saw.
pub type Seen = Arc<Mutex<Option<Fingerprint>>>;

/// The rustls config for `trust`, and what its verifier saw.
pub fn client_config(trust: &Trust) -> Result<(Arc<ClientConfig>, Seen), String> {
    let provider = provider();
    let seen = Arc::new(Mutex::new(None));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let config = match trust {
        Trust::PublicRoots => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("not a usable CA certificate: {e}"))?;
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| e.to_string())?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
        Trust::Fingerprint(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                expected: *expected,
                seen: seen.clone(),
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok((Arc::new(config), seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip() {
        let fp = fingerprint_of(b"certificate");
        let text = fingerprint_text(&fp);
        assert!(text.starts_with("SHA256:"));
        assert_eq!(parse_fingerprint(&text), Some(fp));
        assert_eq!(parse_fingerprint("SHA256:AB"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }
}
