//! Where users and their access come from: the embedded account file
//! (`file`, the default) or the host's own users through PAM (`pam`).
//!
//! Both answer the same two questions, so the rest of the server never
//! knows which one is configured: does this password open this account, and
//! what may this user do right now.

use serde::{Deserialize, Serialize};

pub mod file;
pub mod pam;

/// What a logged-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every action.
    Full,
    /// Reading actions only (`Action::is_read_only`); anything else is 403.
    Limited,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Full => "full",
            Role::Limited => "limited",
        }
    }

    pub fn from_name(s: &str) -> Option<Role> {
        match s {
            "full" => Some(Role::Full),
            "limited" => Some(Role::Limited),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The answer to a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted(Role),
    /// Unknown user or wrong password: the client is not told which.
    BadCredentials,
    /// The password was right but the account has no access to this server;
    /// the sentence says why (only ever shown after a correct password).
    NoAccess(String),
    /// The server could not check (unreadable account file, PAM broken);
    /// the sentence is for the log, not the client.
    Unavailable(String),
}

/// An account backend. Both calls may block (hashing, PAM, NSS): callers run
/// them on the blocking pool.
pub trait Accounts: Send + Sync + 'static {
    /// Checks a user name (already validated) and password.
    fn verify(&self, user: &str, password: &str) -> Verdict;
    /// What `user` may do now, without a password: `None` once the account
    /// is gone or has lost its access. Lets a deleted or demoted user's
    /// tokens stop working without a restart.
    fn role(&self, user: &str) -> Option<Role>;
}
