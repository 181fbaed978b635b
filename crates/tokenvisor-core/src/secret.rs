//! A string that holds a secret (token, client secret, code, verifier).

use std::fmt;
use std::sync::Arc;

/// A secret value. `Debug` and `Display` print `[redacted]`; the value is only
/// reachable through [`SecretString::expose`], so nothing formats it by accident.
/// Cloning is cheap (the value is shared).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Arc<str>);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call only where the value must leave the process
    /// (a provider request, the one API answer that hands out the token, encryption).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// At most the first 8 characters followed by `…`, safe to show to operators.
    pub fn preview(&self) -> String {
        let head: String = self.0.chars().take(8).collect();
        if self.0.chars().count() > 8 {
            format!("{head}…")
        } else {
            head
        }
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = SecretString::new("super-secret-token-value");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
    }

    #[test]
    fn preview_shows_at_most_eight_characters() {
        assert_eq!(SecretString::new("abcdefghijkl").preview(), "abcdefgh…");
        assert_eq!(SecretString::new("abc").preview(), "abc");
    }
}
