//! Who may use the Admin Portal: the password, sessions, CSRF tokens and login limits.
//!
//! - **Password.** `sandra admin set-password` stores an argon2id PHC string (random salt) in
//!   `<data_dir>/admin-password`, mode 0600. A file rather than the sled store: setting it must
//!   work while `sandra serve` holds the store's lock, and the portal sees a new password at the
//!   next request without a restart. No file: no portal (404).
//! - **Sessions.** 256 random bits in an `HttpOnly; SameSite=Strict; Path=/admin` cookie
//!   (`Secure` behind TLS); only their SHA-256 is kept, in memory, so a memory dump or a log
//!   cannot be replayed as a cookie. They end after [`SESSION_IDLE`] without a request, at
//!   logout, or when Sandra restarts.
//! - **CSRF.** Each session has its own token, required in the `csrf` field of every POST
//!   (checked by the middleware in `admin/mod.rs`), and an `Origin` naming another host is
//!   refused.
//! - **Login limits.** Per client address and overall (`governor`): argon2 is deliberately
//!   slow, and a password guessed online must take forever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use sha2::{Digest, Sha256};

/// The file under the data directory that holds the password's PHC string.
pub const PASSWORD_FILE: &str = "admin-password";
/// The session cookie's name.
pub const COOKIE: &str = "sandra_admin";
/// A session unused this long is gone.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the least recently used goes first (a script logging in in a loop
/// cannot grow memory).
const MAX_SESSIONS: usize = 256;
/// Shortest password `set-password` accepts.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Login attempts per client address per minute, and for everyone together.
const LOGINS_PER_IP_PER_MINUTE: u32 = 5;
const LOGINS_PER_MINUTE: u32 = 30;

pub fn password_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PASSWORD_FILE)
}

/// The argon2id PHC string of `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

/// Whether `password` matches the stored PHC string (a malformed one matches nothing).
/// Takes tens of milliseconds on purpose: call it off the async runtime.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc.trim()).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Stores the password for the portal: its hash, written 0600 next to the store and renamed
/// into place so that a crash leaves the old password or the new one, never half a file.
pub fn set_password(data_dir: &Path, password: &str) -> anyhow::Result<PathBuf> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        anyhow::bail!("the password must have at least {MIN_PASSWORD_CHARS} characters");
    }
    let phc = hash_password(password)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = password_path(data_dir);
    let tmp = data_dir.join(format!("{PASSWORD_FILE}.tmp"));
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(phc.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The stored PHC string, `None` when no password is set.
pub async fn stored_password(data_dir: &Path) -> Option<String> {
    tokio::fs::read_to_string(password_path(data_dir))
        .await
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// A logged-in session as the handlers see it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The token every form of this session carries.
    pub csrf: String,
    /// The session's hash, hex: the key of its per-session state (the chat transcript).
    pub id: String,
}

struct Session {
    csrf: String,
    last_seen: Instant,
}

/// The live sessions, by SHA-256 of their cookie value.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn random_hex() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

impl Sessions {
    /// A new session: returns the cookie value (shown to the browser once, never stored).
    pub fn create(&self) -> String {
        let cookie = random_hex();
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_seen) < SESSION_IDLE);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&cookie),
            Session {
                csrf: random_hex(),
                last_seen: now,
            },
        );
        cookie
    }

    /// The session of `cookie`, if it is live (and marks it used now).
    pub fn check(&self, cookie: &str) -> Option<SessionInfo> {
        let key = digest(cookie);
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let s = map.get_mut(&key)?;
        if now.duration_since(s.last_seen) >= SESSION_IDLE {
            map.remove(&key);
            return None;
        }
        s.last_seen = now;
        Some(SessionInfo {
            csrf: s.csrf.clone(),
            id: hex::encode(key),
        })
    }

    /// Ends the session of `cookie` (logout).
    pub fn remove(&self, cookie: &str) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest(cookie));
    }
}

/// Equal-time comparison of two tokens (CSRF): a mismatch at the first byte takes as long as
/// one at the last.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The login limits.
pub struct LoginLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("non-zero"));
        Self {
            per_ip: RateLimiter::keyed(per_minute(LOGINS_PER_IP_PER_MINUTE)),
            global: RateLimiter::direct(per_minute(LOGINS_PER_MINUTE)),
        }
    }
}

impl LoginLimits {
    /// Whether a login attempt from `ip` may be checked now (each call counts one attempt).
    pub fn allow(&self, ip: IpAddr) -> bool {
        // Forget addresses whose quota has refilled, so that many addresses cannot grow memory.
        self.per_ip.retain_recent();
        self.per_ip.check_key(&ip).is_ok() && self.global.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_only_against_its_own_hash() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password(&phc, "correct horse battery"));
        assert!(!verify_password(&phc, "correct horse battery!"));
        assert!(!verify_password("not a hash", "correct horse battery"));
        // A fresh salt each time: the same password never gives the same string.
        assert_ne!(phc, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn the_password_file_is_private_and_short_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(set_password(dir.path(), "short").is_err());
        let path = set_password(dir.path(), "long enough password").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let phc = std::fs::read_to_string(path).unwrap();
        assert!(verify_password(&phc, "long enough password"));
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end_at_logout() {
        let s = Sessions::default();
        let cookie = s.create();
        assert_eq!(cookie.len(), 64);
        let info = s.check(&cookie).unwrap();
        assert_eq!(info.csrf.len(), 64);
        assert!(s.check("0".repeat(64).as_str()).is_none());
        s.remove(&cookie);
        assert!(s.check(&cookie).is_none());
    }

    #[test]
    fn logins_are_limited_per_address() {
        let l = LoginLimits::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..LOGINS_PER_IP_PER_MINUTE {
            assert!(l.allow(a));
        }
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }
}
