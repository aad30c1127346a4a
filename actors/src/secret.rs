//! A string that must never be printed: access tokens, app secrets, API keys.

use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Deserializer};

/// Holds a secret. `Debug` and `Display` print `[redacted]`; only [`Secret::expose`] reads it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The one access-token handle every Graph client clone reads per request.
///
/// The operator replaces the token once (SIGHUP) and every holder sees it at its next call: the
/// sender, the media client, and a sender re-created after a crash from its original arguments.
/// Clones share the value; `Debug` prints `[redacted]` like [`Secret`].
#[derive(Clone, Default)]
pub struct Credentials(Arc<RwLock<Secret>>);

impl Credentials {
    pub fn new(token: Secret) -> Self {
        Self(Arc::new(RwLock::new(token)))
    }

    /// The current token (a copy: the lock is never held across a request).
    pub fn current(&self) -> Secret {
        // A writer cannot panic half-way through replacing a `String`: a poisoned lock still
        // holds a whole token.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the token for every clone; returns whether it changed.
    pub fn replace(&self, token: Secret) -> bool {
        let mut g = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let changed = *g != token;
        *g = token;
        changed
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.current(), f)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_shared_by_clones_and_never_printed() {
        let c = super::Credentials::new(super::Secret::new("EAAG-old"));
        let clone = c.clone();
        assert!(c.replace(super::Secret::new("EAAG-new")));
        assert_eq!(clone.current().expose(), "EAAG-new");
        assert!(!c.replace(super::Secret::new("EAAG-new")));
        assert_eq!(format!("{clone:?}"), "[redacted]");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = super::Secret::new("EAAG-very-secret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }
}
