//! Strings that must never be printed: access tokens, app secrets, API keys.
//!
//! They are `secrecy` [`SecretString`]s: `Debug` prints `[REDACTED]`, there is no `Display` and
//! no `Serialize` (so a secret cannot end up in a log line or a stored record by accident), the
//! value is zeroized on drop, and only [`ExposeSecret::expose_secret`] reads it.

use std::sync::{Arc, PoisonError, RwLock};

pub use secrecy::{ExposeSecret, SecretString};

/// The one access-token handle every Graph client clone reads per request.
///
/// The operator replaces the token once (SIGHUP) and every holder sees it at its next call: the
/// sender, the media client, and a sender re-created after a crash from its original arguments.
/// Clones share the value; `Debug` prints `[redacted]` (or `""` while no token is set).
#[derive(Clone, Default)]
pub struct Credentials(Arc<RwLock<SecretString>>);

impl Credentials {
    pub fn new(token: SecretString) -> Self {
        Self(Arc::new(RwLock::new(token)))
    }

    /// The current token (a copy, zeroized when dropped: the lock is never held across a
    /// request).
    pub fn current(&self) -> SecretString {
        // A writer cannot panic half-way through replacing a token: a poisoned lock still holds
        // a whole one.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the token for every clone; returns whether it changed.
    pub fn replace(&self, token: SecretString) -> bool {
        let mut g = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let changed = g.expose_secret() != token.expose_secret();
        *g = token;
        changed
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Saying whether a token is set at all helps whoever reads a startup dump.
        if self.current().expose_secret().is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

/// A setting the operator changes while Sandra runs (the Admin Portal, SIGHUP): the app
/// secret, verify token, phone number id and API version. Every clone reads the current value
/// at each use, so a change applies to the next webhook or Graph call without a restart.
/// `Debug` prints the value's own `Debug` (`[REDACTED]` for a [`SecretString`]).
#[derive(Clone, Default)]
pub struct Live<T>(Arc<RwLock<T>>);

impl<T: Clone> Live<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    /// The current value (a copy: the lock is never held while it is used).
    pub fn get(&self) -> T {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value for every clone.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

impl<T: Clone> From<T> for Live<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Live<String> {
    fn from(value: &str) -> Self {
        Self::new(value.to_string())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.read().unwrap_or_else(PoisonError::into_inner).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::{Credentials, ExposeSecret, Live, SecretString};

    #[test]
    fn live_settings_are_shared_by_clones_and_secrets_stay_hidden() {
        let v = Live::new(String::from("v23.0"));
        let clone = v.clone();
        v.set("v24.0".into());
        assert_eq!(clone.get(), "v24.0");
        let s = Live::new(SecretString::from("app-secret-1"));
        assert!(!format!("{s:?}").contains("app-secret"));
    }

    #[test]
    fn credentials_are_shared_by_clones_and_never_printed() {
        let c = Credentials::new(SecretString::from("EAAG-old"));
        let clone = c.clone();
        assert!(c.replace(SecretString::from("EAAG-new")));
        assert_eq!(clone.current().expose_secret(), "EAAG-new");
        assert!(!c.replace(SecretString::from("EAAG-new")));
        assert_eq!(format!("{clone:?}"), "[redacted]");
    }

    #[test]
    fn debug_never_shows_the_value() {
        // `SecretString` has no `Display`: printing one with `{}` does not compile.
        let s = SecretString::from("EAAG-very-secret");
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("EAAG"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }
}
