//! Login tokens: 40 random letters and digits (about 238 bits) from the
//! operating system's generator through `rand`'s thread-local CSPRNG, held
//! in memory only, each with a sliding lifetime: every use extends it, as
//! the original server did. A restart logs everyone out; the CLI logs in
//! again by itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use tokio::time::Instant;

use super::Identity;

/// The length of tokens and challenges, as the original's (it used 40
/// characters of the same alphabet, from a weak generator).
pub const TOKEN_CHARS: usize = 40;

/// Live tokens one user may hold; a login past this ends that user's
/// oldest token, so a script that logs in in a loop cannot fill memory.
pub const MAX_TOKENS_PER_USER: usize = 256;

/// A fresh random string of letters and digits.
pub fn random_string(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

struct Entry {
    identity: Identity,
    expires: Instant,
    /// When the account's access was last re-read.
    checked: Instant,
}

/// What a token check found.
pub struct Live {
    pub identity: Identity,
    /// Seconds left before the token expires (after this use).
    pub remaining: u64,
    /// Whether the account should be looked at again (its access may have
    /// changed since it was last read).
    pub stale: bool,
}

pub struct Tokens {
    lifetime: Duration,
    recheck: Duration,
    map: Mutex<HashMap<String, Entry>>,
}

impl Tokens {
    pub fn new(lifetime: Duration, recheck: Duration) -> Tokens {
        Tokens {
            lifetime,
            recheck,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new token for `identity`. Expired tokens are swept here, so the map
    /// never holds more than the logins of one lifetime.
    pub fn issue(&self, identity: Identity) -> String {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        map.retain(|_, e| e.expires > now);
        let mut mine: Vec<(Instant, String)> = map
            .iter()
            .filter(|(_, e)| e.identity.user == identity.user)
            .map(|(t, e)| (e.expires, t.clone()))
            .collect();
        if mine.len() >= MAX_TOKENS_PER_USER {
            mine.sort();
            for (_, t) in &mine[..=mine.len() - MAX_TOKENS_PER_USER] {
                map.remove(t);
            }
        }
        loop {
            let token = random_string(TOKEN_CHARS);
            if map.contains_key(&token) {
                continue; // 2^-238: never, but cheap to be sure
            }
            map.insert(
                token.clone(),
                Entry {
                    identity,
                    expires: now + self.lifetime,
                    checked: now,
                },
            );
            return token;
        }
    }

    /// The token's identity if it is live, extending its life.
    pub fn touch(&self, token: &str) -> Option<Live> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        let e = map.get_mut(token)?;
        if e.expires <= now {
            map.remove(token);
            return None;
        }
        e.expires = now + self.lifetime;
        Some(Live {
            identity: e.identity.clone(),
            remaining: self.lifetime.as_secs(),
            stale: now.duration_since(e.checked) >= self.recheck,
        })
    }

    /// Records a fresh look at the account behind `token`: its current
    /// identity, or `None` to end the token.
    pub fn rechecked(&self, token: &str, identity: Option<Identity>) {
        let mut map = self.map.lock().unwrap();
        match identity {
            Some(i) => {
                if let Some(e) = map.get_mut(token) {
                    e.identity = i;
                    e.checked = Instant::now();
                }
            }
            None => {
                map.remove(token);
            }
        }
    }

    /// Ends a token (logout); unknown tokens are ignored.
    pub fn revoke(&self, token: &str) {
        self.map.lock().unwrap().remove(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            role: Role::Full,
        }
    }

    #[test]
    fn tokens_are_long_random_and_distinct() {
        let t = Tokens::new(Duration::from_secs(900), Duration::from_secs(30));
        let a = t.issue(alice());
        let b = t.issue(alice());
        assert_eq!(a.len(), TOKEN_CHARS);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lifetime_slides_with_use_and_ends() {
        let t = Tokens::new(Duration::from_secs(900), Duration::from_secs(30));
        let tok = t.issue(alice());
        tokio::time::advance(Duration::from_secs(600)).await;
        let live = t.touch(&tok).expect("alive after 600 s");
        assert_eq!(live.identity, alice());
        assert_eq!(live.remaining, 900);
        assert!(live.stale, "600 s since the account was read");
        // Used at 600 s: good until 1500 s.
        tokio::time::advance(Duration::from_secs(899)).await;
        assert!(t.touch(&tok).is_some());
        tokio::time::advance(Duration::from_secs(900)).await;
        assert!(t.touch(&tok).is_none(), "900 s unused: expired");
        assert!(t.touch(&tok).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_holds_a_bounded_number_of_tokens() {
        let t = Tokens::new(Duration::from_secs(900), Duration::from_secs(30));
        let first = t.issue(alice());
        tokio::time::advance(Duration::from_secs(1)).await;
        let rest: Vec<String> = (1..MAX_TOKENS_PER_USER).map(|_| t.issue(alice())).collect();
        let bob = t.issue(Identity {
            user: "bob".into(),
            role: Role::Limited,
        });
        // At the limit now; the next login ends the least recently used one.
        tokio::time::advance(Duration::from_secs(1)).await;
        let newest = t.issue(alice());
        assert!(t.touch(&first).is_none(), "the oldest ended");
        assert!(t.touch(&newest).is_some());
        assert!(rest.iter().all(|r| t.touch(r).is_some()));
        assert!(t.touch(&bob).is_some(), "other users are not touched");
    }

    #[test]
    fn revoke_and_recheck() {
        let t = Tokens::new(Duration::from_secs(900), Duration::from_secs(30));
        let tok = t.issue(alice());
        t.rechecked(
            &tok,
            Some(Identity {
                user: "alice".into(),
                role: Role::Limited,
            }),
        );
        assert_eq!(t.touch(&tok).unwrap().identity.role, Role::Limited);
        t.rechecked(&tok, None);
        assert!(t.touch(&tok).is_none());
        let tok = t.issue(alice());
        t.revoke(&tok);
        assert!(t.touch(&tok).is_none());
        assert!(t.touch("not a token").is_none());
    }
}
