//! A string that holds a secret (token, client secret, code, verifier).

use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shortest secret whose preview shows any of it (a shorter one previews as `…`).
const MIN_PREVIEWED_CHARS: usize = 16;

/// Most characters a preview shows.
const MAX_PREVIEW_CHARS: usize = 8;

/// A secret value. `Debug` and `Display` print `[redacted]`; the value is only
/// reachable through [`SecretString::expose`], so nothing formats it by accident.
/// Cloning is cheap (the value is shared).
///
/// Equality (`==`, and [`ConstantTimeEq::ct_eq`]) takes the same time for every pair
/// of values of one length, so comparing a presented secret with a stored one does
/// not reveal how long a prefix matched. The type deliberately implements no `Hash`
/// and no ordering: secrets are not map keys.
#[derive(Clone)]
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

    /// A hint safe to show to operators: the first characters followed by `…`, never
    /// more than half of the secret and at most the first 8 characters. A secret
    /// shorter than 16 characters shows none of itself: its preview is `…`.
    pub fn preview(&self) -> String {
        let count = self.0.chars().count();
        if count < MIN_PREVIEWED_CHARS {
            return "…".to_owned();
        }
        let shown = MAX_PREVIEW_CHARS.min(count / 2);
        let head: String = self.0.chars().take(shown).collect();
        format!("{head}…")
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ConstantTimeEq for SecretString {
    /// Compares the values in time that depends only on their lengths.
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.as_bytes().ct_eq(other.0.as_bytes())
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.ct_eq(other))
    }
}

impl Eq for SecretString {}

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
    fn a_token_shorter_than_sixteen_characters_has_a_preview_that_shows_none_of_it() {
        assert_eq!(SecretString::new("abc").preview(), "…");
        assert_eq!(SecretString::new("abcdefghijklmno").preview(), "…");
    }

    #[test]
    fn a_preview_never_shows_more_than_half_of_the_token_nor_more_than_eight_characters() {
        for len in 0..64 {
            let token: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
                .chars()
                .take(len)
                .collect();
            let preview = SecretString::new(token.as_str()).preview();
            let shown = preview.trim_end_matches('…');
            assert!(
                shown.chars().count() <= len / 2 && shown.chars().count() <= 8,
                "a {len}-character token previews as {preview:?}"
            );
            assert!(token.starts_with(shown));
        }
    }

    #[test]
    fn equal_secrets_compare_equal_in_constant_time_and_different_ones_do_not() {
        use subtle::ConstantTimeEq;
        let a = SecretString::new("token-value-1");
        assert!(bool::from(a.ct_eq(&SecretString::new("token-value-1"))));
        assert!(!bool::from(a.ct_eq(&SecretString::new("token-value-2"))));
        assert!(!bool::from(a.ct_eq(&SecretString::new("token-value"))));
        assert_eq!(a, SecretString::new("token-value-1"));
        assert_ne!(a, SecretString::new("token-value-2"));
        assert_ne!(a, SecretString::new(""));
    }

    #[test]
    fn preview_shows_at_most_eight_characters() {
        assert_eq!(SecretString::new("abcdefghijklmnop").preview(), "abcdefgh…");
        assert_eq!(SecretString::new("abcdefghijklmnopqrstuvwxyz").preview(), "abcdefgh…");
        assert_eq!(SecretString::new("abc").preview(), "…");
    }
}
