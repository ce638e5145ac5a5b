//! The embedded account backend: users with argon2id password hashes in
//! `<data_dir>/hyve/users.toml`, managed with `hyve user add|del|passwd`.
//!
//! The server re-reads the file whenever it changes on disk, so `hyve user`
//! works against a running server as well as a stopped one, and a deleted
//! user's tokens stop working at their next use. Writers take a lock file
//! and replace the file atomically (mode 0600), so two `hyve user` runs never
//! lose each other's change and a crash never leaves half a file.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use hyve_engine::{fsutil, validate};

use super::{Accounts, Role, Verdict};

pub const USERS_FILE: &str = "users.toml";
const LOCK_FILE: &str = "users.lock";

/// The file as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub role: Role,
    /// A PHC string: `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`.
    pub hash: String,
}

/// Hashes a password with argon2id (the crate's defaults, which follow the
/// OWASP recommendation) and a fresh 128-bit salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 takes any password and salt")
        .to_string()
}

/// Whether `password` matches `hash`; a hash that does not parse matches
/// nothing.
fn verify_hash(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash no password is checked against in earnest: an unknown user costs
/// as much time as a known one, so timing does not tell which names exist.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("hyve: no such user"))
}

fn read(path: &Path) -> anyhow::Result<UsersFile> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn encode(file: &UsersFile) -> Vec<u8> {
    let body = toml::to_string(file).expect("the users file always serializes");
    format!(
        "# hyve's users. Change them with `hyve user add|del|passwd`;\n\
         # hashes are argon2id. The server re-reads this file when it changes.\n\n{body}"
    )
    .into_bytes()
}

/// The `hyve user` commands' view of the file.
pub struct UserDb {
    state_dir: PathBuf,
}

impl UserDb {
    /// The file in `state_dir` (`<data_dir>/hyve`), made (0700) if missing.
    pub fn open(state_dir: &Path) -> anyhow::Result<UserDb> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        Ok(UserDb {
            state_dir: state_dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.state_dir.join(USERS_FILE)
    }

    /// Every user and role, sorted by name.
    pub fn list(&self) -> anyhow::Result<Vec<(String, Role)>> {
        Ok(read(&self.path())?
            .users
            .into_iter()
            .map(|(n, e)| (n, e.role))
            .collect())
    }

    pub fn add(&self, name: &str, role: Role, password: &str) -> anyhow::Result<()> {
        validate::user_name(name).map_err(anyhow::Error::msg)?;
        validate::password(password).map_err(anyhow::Error::msg)?;
        let hash = hash_password(password);
        self.edit(|f| {
            if f.users.contains_key(name) {
                anyhow::bail!(
                    "user '{name}' already exists: change the password with `hyve user passwd {name}`"
                );
            }
            f.users.insert(name.to_string(), UserEntry { role, hash });
            Ok(())
        })
    }

    pub fn delete(&self, name: &str) -> anyhow::Result<()> {
        validate::user_name(name).map_err(anyhow::Error::msg)?;
        self.edit(|f| match f.users.remove(name) {
            Some(_) => Ok(()),
            None => anyhow::bail!("there is no user '{name}'"),
        })
    }

    /// Sets a new password, and the role when `role` is given.
    pub fn set_password(
        &self,
        name: &str,
        password: &str,
        role: Option<Role>,
    ) -> anyhow::Result<()> {
        validate::user_name(name).map_err(anyhow::Error::msg)?;
        validate::password(password).map_err(anyhow::Error::msg)?;
        let hash = hash_password(password);
        self.edit(|f| match f.users.get_mut(name) {
            Some(e) => {
                e.hash = hash;
                if let Some(r) = role {
                    e.role = r;
                }
                Ok(())
            }
            None => anyhow::bail!("there is no user '{name}': add it with `hyve user add {name}`"),
        })
    }

    /// Read, change, write back, all under the lock file.
    fn edit(
        &self,
        change: impl FnOnce(&mut UsersFile) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        use rustix::fs::{flock, FlockOperation};
        let lock_path = self.state_dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        flock(&lock, FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let path = self.path();
        let mut file = read(&path)?;
        change(&mut file)?;
        fsutil::write_atomic_mode(&path, &encode(&file), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// What identifies one version of the file on disk.
type Stamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> std::io::Result<Option<Stamp>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The server's view: the file, re-read whenever it changes.
pub struct FileAccounts {
    path: PathBuf,
    cache: Mutex<Option<(Option<Stamp>, Arc<UsersFile>)>>,
}

impl FileAccounts {
    pub fn new(state_dir: &Path) -> FileAccounts {
        FileAccounts {
            path: state_dir.join(USERS_FILE),
            cache: Mutex::new(None),
        }
    }

    /// The current users (cached until the file changes).
    pub fn users(&self) -> anyhow::Result<Arc<UsersFile>> {
        let now =
            stamp(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut cache = self.cache.lock().unwrap();
        if let Some((s, f)) = cache.as_ref() {
            if *s == now {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(read(&self.path)?);
        *cache = Some((now, f.clone()));
        Ok(f)
    }
}

impl Accounts for FileAccounts {
    fn verify(&self, user: &str, password: &str) -> Verdict {
        let users = match self.users() {
            Ok(u) => u,
            Err(e) => return Verdict::Unavailable(format!("{e:#}")),
        };
        match users.users.get(user) {
            Some(e) if verify_hash(&e.hash, password) => Verdict::Granted(e.role),
            Some(_) => Verdict::BadCredentials,
            None => {
                let _ = verify_hash(dummy_hash(), password);
                Verdict::BadCredentials
            }
        }
    }

    fn role(&self, user: &str) -> Option<Role> {
        match self.users() {
            Ok(u) => u.users.get(user).map(|e| e.role),
            Err(e) => {
                tracing::warn!("{e:#}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn add_verify_passwd_delete() {
        let d = tempfile::tempdir().unwrap();
        let db = UserDb::open(d.path()).unwrap();
        let acc = FileAccounts::new(d.path());
        assert_eq!(acc.verify("alice", "pw"), Verdict::BadCredentials);
        db.add("alice", Role::Full, "s3cret pass").unwrap();
        db.add("bob", Role::Limited, "bobpw").unwrap();
        let mode = fs::metadata(db.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the hashes are readable by root only");
        assert_eq!(
            acc.verify("alice", "s3cret pass"),
            Verdict::Granted(Role::Full)
        );
        assert_eq!(acc.verify("alice", "s3cret"), Verdict::BadCredentials);
        assert_eq!(acc.verify("bob", "bobpw"), Verdict::Granted(Role::Limited));
        let text = fs::read_to_string(db.path()).unwrap();
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(!text.contains("s3cret"), "no clear text on disk");

        let e = db.add("alice", Role::Limited, "x").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        db.set_password("alice", "new one", Some(Role::Limited))
            .unwrap();
        assert_eq!(acc.verify("alice", "s3cret pass"), Verdict::BadCredentials);
        assert_eq!(
            acc.verify("alice", "new one"),
            Verdict::Granted(Role::Limited)
        );
        assert_eq!(acc.role("alice"), Some(Role::Limited));

        db.delete("alice").unwrap();
        assert_eq!(acc.role("alice"), None);
        assert_eq!(acc.verify("alice", "new one"), Verdict::BadCredentials);
        assert!(db.delete("alice").is_err());
        assert_eq!(db.list().unwrap(), vec![("bob".to_string(), Role::Limited)]);
    }

    #[test]
    fn bad_input_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let db = UserDb::open(d.path()).unwrap();
        db.add("alice", Role::Full, "pw").unwrap();
        let before = fs::read(db.path()).unwrap();
        assert!(db.add("-rf", Role::Full, "pw").is_err());
        assert!(db.add("carol", Role::Full, "").is_err());
        assert!(db.set_password("alice", "a\0b", None).is_err());
        assert!(db.set_password("nobody", "pw", None).is_err());
        assert_eq!(fs::read(db.path()).unwrap(), before);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_list() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(USERS_FILE), "users = 5").unwrap();
        let acc = FileAccounts::new(d.path());
        assert!(matches!(acc.verify("a", "b"), Verdict::Unavailable(_)));
        let db = UserDb::open(d.path()).unwrap();
        assert!(db.add("alice", Role::Full, "pw").is_err());
        assert_eq!(fs::read_to_string(db.path()).unwrap(), "users = 5");
    }
}
