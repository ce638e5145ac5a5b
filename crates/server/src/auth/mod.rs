//! Who is asking, and may they: logins, tokens, the blacklist and the keys
//! of `rpc/auth_ssl`, behind one [`Auth`] that the transports share.
//!
//! ```text
//! rpc/auth, REST Basic ──► blacklist ─► Accounts (file | pam) ─► Tokens
//! rpc/auth_ssl ──────────► blacklist ─► KeyRing (+ challenges) ─► Tokens
//! rpc/auth_token, Bearer ─────────────────────────────────────► Tokens
//! ```
//!
//! Every failure is a 401 error object with a sentence; wrong passwords and
//! bad signatures count towards the address's block, unknown tokens do not
//! (they cannot be guessed, and the CLI's expired token is no attack).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{info, warn};

use hyve_engine::validate;
use hyve_proto::{ErrorCode, ProtocolError};

use crate::config::{Backend, Config};

pub mod accounts;
pub mod blacklist;
pub mod keys;
pub mod tokens;

pub use accounts::Role;
use accounts::{file::FileAccounts, pam::PamAccounts, Accounts, Verdict};
use blacklist::Blacklist;
use keys::KeyRing;
use tokens::Tokens;

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

impl Identity {
    /// Whether this user may run actions that change something.
    pub fn may_write(&self) -> bool {
        self.role == Role::Full
    }
}

/// A successful login: the token and how long it lives unused.
#[derive(Debug, Clone)]
pub struct Grant {
    pub token: String,
    pub lifetime_secs: u64,
    pub identity: Identity,
}

/// How long a challenge of `rpc/auth_ssl` stays valid.
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(30);
/// Challenges outstanding at once, all clients together.
const MAX_CHALLENGES: usize = 1024;
/// Password checks running at once: argon2 takes 19 MiB and a core for a
/// while, so a flood of logins queues here instead of starving requests.
const HASHING_SLOTS: usize = 4;
/// How often a token's account is looked at again (deleted, demoted).
const RECHECK: Duration = Duration::from_secs(30);

fn unauthorized(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::Unauthorized, detail)
}

const WRONG: &str = "wrong user name or password";

pub struct Auth {
    backend: Backend,
    accounts: Arc<dyn Accounts>,
    tokens: Tokens,
    blacklist: Blacklist,
    keys: KeyRing,
    challenges: Mutex<HashMap<String, Instant>>,
    hashing: Semaphore,
}

impl Auth {
    /// Opens the backend the config names and the state kept in the data
    /// dir (blocks, registered keys).
    pub fn open(config: &Config) -> anyhow::Result<Auth> {
        let state = config.state_dir();
        let a = &config.auth;
        let accounts: Arc<dyn Accounts> = match a.backend {
            Backend::File => {
                let f = FileAccounts::new(&state);
                match f.users() {
                    Ok(u) if u.users.is_empty() => warn!(
                        "there are no users yet: add one with `hyve user add <name> --role full`"
                    ),
                    Ok(u) => info!(users = u.users.len(), "accounts from the user file"),
                    Err(e) => return Err(e),
                }
                Arc::new(f)
            }
            Backend::Pam => {
                info!(service = %a.pam_service, admin_group = %a.admin_group, operator_group = %a.operator_group, "accounts through PAM");
                Arc::new(PamAccounts::new(
                    &a.pam_service,
                    &a.admin_group,
                    &a.operator_group,
                ))
            }
        };
        Ok(Auth {
            backend: a.backend,
            accounts,
            tokens: Tokens::new(Duration::from_secs(a.token_lifetime_secs), RECHECK),
            blacklist: Blacklist::open(
                &state,
                a.max_failures,
                Duration::from_secs(a.failure_window_secs),
                Duration::from_secs(a.block_secs),
            )?,
            keys: KeyRing::open(&state)?,
            challenges: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(HASHING_SLOTS),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    fn refuse_if_blocked(&self, peer: IpAddr) -> Result<(), ProtocolError> {
        self.blacklist.check(peer).map_err(|until| {
            unauthorized(format!(
                "too many failed logins from {}: logins from this address are refused until {}",
                peer.to_canonical(),
                blacklist::utc_text(until)
            ))
        })
    }

    /// Counts a failure and says what went wrong (and whether the address
    /// is now blocked).
    fn failed(&self, peer: IpAddr, what: &str) -> ProtocolError {
        match self.blacklist.fail(peer) {
            Some(until) => {
                warn!(%peer, "too many failed logins: address blocked");
                unauthorized(format!(
                    "{what}; that was too many failed logins from {}: logins from this address are refused until {}",
                    peer.to_canonical(),
                    blacklist::utc_text(until)
                ))
            }
            None => unauthorized(what),
        }
    }

    /// Checks a user name and password (rpc/auth, REST Basic).
    pub async fn password(
        &self,
        peer: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<Identity, ProtocolError> {
        self.refuse_if_blocked(peer)?;
        if validate::user_name(user).is_err() || validate::password(password).is_err() {
            info!(%peer, "login with a malformed user name or password");
            return Err(self.failed(peer, WRONG));
        }
        let verdict = {
            let _slot = self.hashing.acquire().await.expect("never closed");
            let (acc, u, p) = (
                self.accounts.clone(),
                user.to_string(),
                password.to_string(),
            );
            tokio::task::spawn_blocking(move || acc.verify(&u, &p))
                .await
                .unwrap_or_else(|e| Verdict::Unavailable(format!("the check failed: {e}")))
        };
        match verdict {
            Verdict::Granted(role) => {
                self.blacklist.succeed(peer);
                info!(%peer, user, %role, "login");
                Ok(Identity {
                    user: user.to_string(),
                    role,
                })
            }
            Verdict::BadCredentials => {
                info!(%peer, user, "failed login");
                Err(self.failed(peer, WRONG))
            }
            Verdict::NoAccess(why) => {
                info!(%peer, user, "login without access: {why}");
                Err(unauthorized(why))
            }
            Verdict::Unavailable(why) => {
                tracing::error!(%peer, user, "cannot check a login: {why}");
                Err(unauthorized(
                    "the server could not check the password; its log says why",
                ))
            }
        }
    }

    /// A token for `identity`.
    pub fn issue(&self, identity: Identity) -> Grant {
        Grant {
            token: self.tokens.issue(identity.clone()),
            lifetime_secs: self.tokens.lifetime().as_secs(),
            identity,
        }
    }

    /// The identity behind a live token, extending its life; the account
    /// is looked at again now and then, so a deleted user's token dies.
    pub async fn check(&self, token: &str) -> Option<Identity> {
        let live = self.tokens.touch(token)?;
        if !live.stale {
            return Some(live.identity);
        }
        let (acc, user) = (self.accounts.clone(), live.identity.user.clone());
        let role = tokio::task::spawn_blocking(move || acc.role(&user))
            .await
            .ok()
            .flatten();
        let now = role.map(|role| Identity {
            user: live.identity.user.clone(),
            role,
        });
        if now.is_none() {
            info!(user = %live.identity.user, "the account is gone or lost its access: its token ends");
        }
        self.tokens.rechecked(token, now.clone());
        now
    }

    /// rpc/auth_token: the token's grant, or 401.
    pub async fn resume(&self, token: &str) -> Result<Grant, ProtocolError> {
        match self.check(token).await {
            Some(identity) => Ok(Grant {
                token: token.to_string(),
                lifetime_secs: self.tokens.lifetime().as_secs(),
                identity,
            }),
            None => Err(unauthorized(
                "the token is not valid: it expired, was cleared or was never issued; log in again",
            )),
        }
    }

    /// Ends a token (rpc/auth_clear).
    pub fn revoke(&self, token: &str) {
        self.tokens.revoke(token);
    }

    /// Stage 1 of rpc/auth_ssl: a random string, valid 30 s, used once.
    pub fn challenge(&self) -> Result<String, ProtocolError> {
        let now = Instant::now();
        let mut c = self.challenges.lock().unwrap();
        c.retain(|_, t| *t > now);
        if c.len() >= MAX_CHALLENGES {
            return Err(ProtocolError::new(
                ErrorCode::TooManyRequests,
                "too many logins are under way; try again in a few seconds",
            ));
        }
        let s = tokens::random_string(tokens::TOKEN_CHARS);
        c.insert(s.clone(), now + CHALLENGE_LIFETIME);
        Ok(s)
    }

    /// Stage 2 of rpc/auth_ssl: the user whose registered key encrypted a
    /// live challenge.
    pub async fn signature(
        &self,
        peer: IpAddr,
        encrypted_b64: &str,
    ) -> Result<Identity, ProtocolError> {
        self.refuse_if_blocked(peer)?;
        const BAD: &str = "the encrypted string does not match a challenge of this server with a registered key; ask for a new challenge (rpc/auth_ssl with empty args)";
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(encrypted_b64.trim()) else {
            return Err(self.failed(peer, "encrypted_string is not base64"));
        };
        if sig.len() > 1024 {
            return Err(self.failed(peer, BAD));
        }
        let now = Instant::now();
        let live: Vec<String> = {
            let c = self.challenges.lock().unwrap();
            c.iter()
                .filter(|(_, t)| **t > now)
                .map(|(s, _)| s.clone())
                .collect()
        };
        let found = {
            let _slot = self.hashing.acquire().await.expect("never closed");
            let entries = self.keys.snapshot();
            // RSA work runs off the async threads.
            tokio::task::spawn_blocking(move || {
                keys::signer(&entries, &sig, |s| live.iter().any(|l| l == s))
            })
            .await
            .ok()
            .flatten()
        };
        let Some((user, challenge)) = found else {
            info!(%peer, "failed key login");
            return Err(self.failed(peer, BAD));
        };
        if self.challenges.lock().unwrap().remove(&challenge).is_none() {
            return Err(self.failed(peer, BAD)); // used by a racing request
        }
        let (acc, u) = (self.accounts.clone(), user.clone());
        let role = tokio::task::spawn_blocking(move || acc.role(&u))
            .await
            .ok()
            .flatten();
        match role {
            Some(role) => {
                self.blacklist.succeed(peer);
                info!(%peer, user, %role, "key login");
                Ok(Identity { user, role })
            }
            None => Err(unauthorized(format!(
                "the key belongs to user '{user}', who has no access to this server any more"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounts::file::UserDb;

    fn config(dir: &std::path::Path) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_or_deleted_account_changes_its_tokens() {
        let d = tempfile::tempdir().unwrap();
        let config = config(d.path());
        let db = UserDb::open(&config.state_dir()).unwrap();
        db.add("alice", Role::Full, "pw").unwrap();
        let auth = Auth::open(&config).unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let g = auth.issue(auth.password(peer, "alice", "pw").await.unwrap());
        assert_eq!(auth.check(&g.token).await.unwrap().role, Role::Full);

        db.set_password("alice", "pw2", Some(Role::Limited))
            .unwrap();
        tokio::time::advance(RECHECK).await;
        assert_eq!(auth.check(&g.token).await.unwrap().role, Role::Limited);

        db.delete("alice").unwrap();
        tokio::time::advance(RECHECK).await;
        assert!(auth.check(&g.token).await.is_none());
        assert!(auth.resume(&g.token).await.is_err());
    }

    #[tokio::test]
    async fn challenges_are_single_use_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let auth = Auth::open(&config(d.path())).unwrap();
        let a = auth.challenge().unwrap();
        let b = auth.challenge().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), tokens::TOKEN_CHARS);
        for _ in 2..MAX_CHALLENGES {
            auth.challenge().unwrap();
        }
        let e = auth.challenge().unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyRequests);
    }
}
