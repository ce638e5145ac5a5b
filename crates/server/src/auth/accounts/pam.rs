//! The PAM account backend: the host's own users, their passwords checked
//! by the host's PAM stack (the configured service, `login` by default).
//!
//! Access follows groups, as the original SysAdm server did: root and the
//! members of `admin_group` get full access, the members of
//! `operator_group` limited access, anyone else none, even with the right
//! password. Groups come from NSS (`getgrouplist`), so LDAP or SSSD users
//! work as local ones do.

use std::ffi::{CStr, CString};

use nix::unistd::{getgrouplist, Group, User};
use pam::{Client, Conversation};
use tracing::{info, warn};

use super::{Accounts, Role, Verdict};

pub struct PamAccounts {
    service: String,
    admin_group: String,
    operator_group: String,
}

impl PamAccounts {
    pub fn new(service: &str, admin_group: &str, operator_group: &str) -> PamAccounts {
        PamAccounts {
            service: service.to_string(),
            admin_group: admin_group.to_string(),
            operator_group: operator_group.to_string(),
        }
    }

    /// The user's access from their uid and groups; `Err` says why none.
    fn access(&self, user: &str) -> Result<Role, String> {
        let u = match User::from_name(user) {
            Ok(Some(u)) => u,
            Ok(None) => return Err(format!("there is no user '{user}' on this host")),
            Err(e) => return Err(format!("cannot look up user '{user}': {e}")),
        };
        if u.uid.is_root() {
            return Ok(Role::Full);
        }
        let cname = CString::new(user).map_err(|_| "bad user name".to_string())?;
        let gids = getgrouplist(&cname, u.gid)
            .map_err(|e| format!("cannot read the groups of '{user}': {e}"))?;
        let names: Vec<String> = gids
            .into_iter()
            .filter_map(|g| Group::from_gid(g).ok().flatten())
            .map(|g| g.name)
            .collect();
        if names.contains(&self.admin_group) {
            Ok(Role::Full)
        } else if names.contains(&self.operator_group) {
            Ok(Role::Limited)
        } else {
            Err(format!(
                "user '{user}' may not use this server: only root and the members of the groups '{}' (full access) and '{}' (read-only) may",
                self.admin_group, self.operator_group
            ))
        }
    }
}

/// Answers PAM's questions with the user name and password, and sends
/// PAM's messages to the log rather than to the server's stderr.
struct Answers {
    user: String,
    password: String,
}

impl Conversation for Answers {
    fn prompt_echo(&mut self, _msg: &CStr) -> Result<CString, ()> {
        CString::new(self.user.clone()).map_err(|_| ())
    }
    fn prompt_blind(&mut self, _msg: &CStr) -> Result<CString, ()> {
        CString::new(self.password.clone()).map_err(|_| ())
    }
    fn info(&mut self, msg: &CStr) {
        info!(pam = %msg.to_string_lossy(), "PAM says");
    }
    fn error(&mut self, msg: &CStr) {
        warn!(pam = %msg.to_string_lossy(), "PAM says");
    }
}

impl Accounts for PamAccounts {
    fn verify(&self, user: &str, password: &str) -> Verdict {
        let answers = Answers {
            user: user.to_string(),
            password: password.to_string(),
        };
        let mut client = match Client::with_conversation(&self.service, answers) {
            Ok(c) => c,
            Err(e) => {
                return Verdict::Unavailable(format!(
                    "cannot start PAM service '{}': {e}",
                    self.service
                ))
            }
        };
        // authenticate() also runs the account checks (expired, locked).
        if let Err(e) = client.authenticate() {
            info!(user, error = %e, "PAM refused the login");
            return Verdict::BadCredentials;
        }
        match self.access(user) {
            Ok(role) => Verdict::Granted(role),
            Err(why) => Verdict::NoAccess(why),
        }
    }

    fn role(&self, user: &str) -> Option<Role> {
        self.access(user).ok()
    }
}
