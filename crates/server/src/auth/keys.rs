//! Public keys users register for `rpc/auth_ssl`, the SysAdm login without
//! a password: the server hands out a random challenge, the client encrypts
//! it with its RSA private key (PKCS#1 v1.5, type 1 padding: what OpenSSL's
//! `RSA_private_encrypt` does) and sends it back; whoever's registered key
//! recovers a live challenge is logged in as that key's user.
//!
//! Keys are kept in `<data_dir>/hyve/ssl_keys.toml`, as the client sent them
//! (base64 of a PEM public key); that text is also the key's name in
//! `list_ssl_certs` and `revoke_ssl_cert`, as in the original.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use base64::Engine as _;
use md5::{Digest, Md5};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde::{Deserialize, Serialize};

use hyve_engine::{fsutil, validate};

pub const KEYS_FILE: &str = "ssl_keys.toml";
/// Keys one user may register.
pub const MAX_KEYS_PER_USER: usize = 16;
const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 8192;
const MAX_TEXT: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub user: String,
    /// base64 of the PEM text, exactly as registered.
    pub pub_key: String,
    pub nickname: String,
    pub email: String,
    /// RFC 3339, UTC.
    pub registered: String,
}

impl KeyEntry {
    /// The details line of `list_ssl_certs`, in the original's words.
    pub fn details(&self) -> String {
        format!(
            "Nickname: {}\nEmail: {}\nDate Registered: {}",
            self.nickname, self.email, self.registered
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// Reads an RSA public key from base64 of its PEM (`PUBLIC KEY` or
/// `RSA PUBLIC KEY`), with a sentence when it is not one.
pub fn parse_public_key(b64: &str) -> Result<RsaPublicKey, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "pub_key must be the base64 encoding of a PEM public key".to_string())?;
    let pem =
        String::from_utf8(pem).map_err(|_| "pub_key does not decode to PEM text".to_string())?;
    let key = RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|_| {
            "pub_key is not an RSA public key in PEM form (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)"
                .to_string()
        })?;
    let bits = key.n().bits();
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(format!(
            "the key has {bits} bits: keys of {MIN_BITS} to {MAX_BITS} bits are accepted"
        ));
    }
    Ok(key)
}

/// The message inside a PKCS#1 v1.5 type 1 block (`00 01 FF… 00 msg`), or
/// `None` if `block` is not one. Only finds the candidate: the signature is
/// then checked in full by the `rsa` crate.
fn unpad_type1(block: &[u8]) -> Option<&[u8]> {
    let rest = block.strip_prefix(&[0x00, 0x01])?;
    let ff = rest.iter().take_while(|b| **b == 0xff).count();
    if ff < 8 {
        return None;
    }
    rest[ff..].strip_prefix(&[0x00])
}

/// What a key's owner encrypted, if `sig` is a valid type 1 block for it.
fn recover(key: &RsaPublicKey, sig: &[u8]) -> Option<Vec<u8>> {
    let k = key.size();
    if sig.len() != k {
        return None;
    }
    let s = BigUint::from_bytes_be(sig);
    if &s >= key.n() {
        return None;
    }
    let m = s.modpow(key.e(), key.n()).to_bytes_be();
    let mut block = vec![0u8; k - m.len()];
    block.extend_from_slice(&m);
    let msg = unpad_type1(&block)?.to_vec();
    key.verify(Pkcs1v15Sign::new_unprefixed(), &msg, sig)
        .ok()
        .map(|_| msg)
}

pub struct KeyRing {
    path: PathBuf,
    keys: Mutex<Vec<KeyEntry>>,
}

impl KeyRing {
    pub fn open(state_dir: &Path) -> anyhow::Result<KeyRing> {
        let path = state_dir.join(KEYS_FILE);
        let file: KeysFile = match std::fs::read_to_string(&path) {
            Ok(t) => {
                toml::from_str(&t).with_context(|| format!("{} is damaged", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeysFile::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(KeyRing {
            path,
            keys: Mutex::new(file.key),
        })
    }

    fn save(&self, keys: &[KeyEntry]) -> Result<(), String> {
        let text = format!(
            "# Public keys registered for rpc/auth_ssl logins (rpc/settings register_ssl_cert).\n\n{}",
            toml::to_string(&KeysFile { key: keys.to_vec() }).expect("keys always serialize")
        );
        fsutil::write_atomic_mode(&self.path, text.as_bytes(), 0o600).map_err(|e| {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save the keys");
            "the server could not save the key; see its log".to_string()
        })
    }

    /// Registers `pub_key` for `user` (again: its details are replaced).
    pub fn register(
        &self,
        user: &str,
        pub_key: &str,
        nickname: &str,
        email: &str,
    ) -> Result<(), String> {
        parse_public_key(pub_key)?;
        validate::printable_text("the nickname", nickname, MAX_TEXT)?;
        validate::printable_text("the email", email, MAX_TEXT)?;
        let mut keys = self.keys.lock().unwrap();
        if let Some(other) = keys.iter().find(|k| k.pub_key == pub_key && k.user != user) {
            return Err(format!(
                "that key is already registered to user '{}': a key logs in one user only",
                other.user
            ));
        }
        let mut next = keys.clone();
        next.retain(|k| !(k.pub_key == pub_key && k.user == user));
        if next.iter().filter(|k| k.user == user).count() >= MAX_KEYS_PER_USER {
            return Err(format!(
                "user '{user}' already has {MAX_KEYS_PER_USER} keys: revoke one first"
            ));
        }
        next.push(KeyEntry {
            user: user.to_string(),
            pub_key: pub_key.to_string(),
            nickname: nickname.to_string(),
            email: email.to_string(),
            registered: super::blacklist::utc_text(std::time::SystemTime::now()),
        });
        self.save(&next)?;
        *keys = next;
        Ok(())
    }

    /// Removes `user`'s key `pub_key`.
    pub fn revoke(&self, user: &str, pub_key: &str) -> Result<(), String> {
        let mut keys = self.keys.lock().unwrap();
        let mut next = keys.clone();
        next.retain(|k| !(k.pub_key == pub_key && k.user == user));
        if next.len() == keys.len() {
            return Err(format!("user '{user}' has no such key registered"));
        }
        self.save(&next)?;
        *keys = next;
        Ok(())
    }

    /// `{user: {pub_key: details}}` for one user, or for all with `None`.
    pub fn list(&self, user: Option<&str>) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for k in self.keys.lock().unwrap().iter() {
            if user.is_none_or(|u| u == k.user) {
                out.entry(k.user.clone())
                    .or_default()
                    .insert(k.pub_key.clone(), k.details());
            }
        }
        out
    }

    /// The MD5 (hex) of every registered key's text, sorted: lets a client
    /// see whether its key is registered without the server listing keys.
    pub fn checksums(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .keys
            .lock()
            .unwrap()
            .iter()
            .map(|k| {
                Md5::digest(k.pub_key.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        v.sort();
        v
    }

    /// Every registered key, for [`signer`] to run without the lock.
    pub fn snapshot(&self) -> Vec<KeyEntry> {
        self.keys.lock().unwrap().clone()
    }
}

/// The user whose key (among `keys`) encrypted one of the live challenges,
/// with that challenge.
pub fn signer(
    keys: &[KeyEntry],
    sig: &[u8],
    live: impl Fn(&str) -> bool,
) -> Option<(String, String)> {
    for k in keys {
        let Ok(key) = parse_public_key(&k.pub_key) else {
            continue;
        };
        let Some(msg) = recover(&key, sig) else {
            continue;
        };
        if let Ok(text) = String::from_utf8(msg) {
            if live(&text) {
                return Some((k.user.clone(), text));
            }
        }
    }
    None
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::RsaPrivateKey;

    /// A client's key pair as the SysAdm client would register it.
    pub fn client_key() -> (RsaPrivateKey, String) {
        let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        (private, b64)
    }

    /// What the client does with the challenge: `RSA_private_encrypt` with
    /// PKCS#1 padding, which is an unprefixed PKCS#1 v1.5 signature.
    pub fn sign(private: &RsaPrivateKey, challenge: &str) -> Vec<u8> {
        private
            .sign(Pkcs1v15Sign::new_unprefixed(), challenge.as_bytes())
            .unwrap()
    }

    #[test]
    fn register_sign_recover_revoke() {
        let d = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(d.path()).unwrap();
        let (private, b64) = client_key();
        ring.register("alice", &b64, "laptop", "a@example.org")
            .unwrap();
        let sig = sign(&private, "challenge-1");
        let found = signer(&ring.snapshot(), &sig, |c| c == "challenge-1");
        assert_eq!(found, Some(("alice".into(), "challenge-1".into())));
        assert_eq!(
            signer(&ring.snapshot(), &sig, |c| c == "another"),
            None,
            "not a live challenge"
        );
        let mut forged = sig.clone();
        forged[10] ^= 1;
        assert_eq!(signer(&ring.snapshot(), &forged, |_| true), None);

        let listed = ring.list(None);
        assert!(listed["alice"][&b64]
            .starts_with("Nickname: laptop\nEmail: a@example.org\nDate Registered: "));
        assert_eq!(ring.checksums().len(), 1);
        assert_eq!(ring.checksums()[0].len(), 32);
        assert!(
            ring.register("bob", &b64, "", "").is_err(),
            "one key, one user"
        );

        let again = KeyRing::open(d.path()).unwrap();
        assert_eq!(again.list(Some("alice")).len(), 1, "kept across restarts");
        assert!(again.list(Some("bob")).is_empty());
        again.revoke("alice", &b64).unwrap();
        assert!(again.revoke("alice", &b64).is_err());
        assert_eq!(signer(&again.snapshot(), &sig, |_| true), None);
    }

    #[test]
    fn what_is_not_a_good_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(d.path()).unwrap();
        let small = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let pem = small
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        let e = ring.register("alice", &b64, "", "").unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
        assert!(ring.register("alice", "not base64!", "", "").is_err());
        let junk = base64::engine::general_purpose::STANDARD.encode("hello");
        assert!(ring.register("alice", &junk, "", "").is_err());
        let (_, good) = client_key();
        assert!(ring.register("alice", &good, "a\nb", "").is_err());
        assert!(ring.list(None).is_empty());
        assert!(!d.path().join(KEYS_FILE).exists());
    }
}
