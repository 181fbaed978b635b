//! Provider errors and their classification.

use tokenvisor_core::{FailureClass, RefreshFailure, SecretString};

/// Longest provider `error_description` kept (after sanitising).
const MAX_DESCRIPTION: usize = 200;

/// A failed call to a token endpoint. Carries the provider's RFC 6749 error body when
/// there was one; never a token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider answered with an error.
    #[error("provider answered {code} (HTTP {status})")]
    Answer {
        /// HTTP status.
        status: u16,
        /// Error code (`invalid_grant`, `http_503`...).
        code: String,
        /// `error_description`, sanitised and bounded.
        description: Option<String>,
        /// Its class.
        class: FailureClass,
        /// `Retry-After`, in seconds.
        retry_after_secs: Option<u64>,
    },
    /// The request timed out.
    #[error("token endpoint timed out")]
    Timeout,
    /// The connection failed.
    #[error("token endpoint unreachable: {0}")]
    Network(String),
    /// The answer could not be understood (not JSON, no access token, oversized...).
    #[error("invalid token answer: {reason}")]
    InvalidAnswer {
        /// HTTP status.
        status: u16,
        /// Why.
        reason: String,
    },
    /// The provider answered a token request, but its access token is unusable (empty,
    /// over 16 KiB, or holding control or non-ASCII characters, see
    /// [`tokenvisor_core::check_token`]), so no token set is returned. The provider may
    /// already have retired the refresh token that was presented: when the answer
    /// carried a usable new refresh token it is kept here, and the caller must commit it
    /// (see [`ProviderError::salvaged_refresh_token`]) before it retries. A refresh
    /// token that itself fails the check makes the answer an
    /// [`InvalidAnswer`](ProviderError::InvalidAnswer) instead.
    #[error("provider answered an unusable access token (HTTP {status}): {reason}")]
    AccessTokenRefused {
        /// HTTP status.
        status: u16,
        /// Why the access token was refused (never the token).
        reason: String,
        /// The answer's refresh token, when it had a usable one.
        refresh_token: Option<SecretString>,
    },
    /// The connection or integration cannot be refreshed as configured.
    #[error("{0}")]
    Config(String),
}

impl ProviderError {
    /// How the supervisor should react.
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Answer { class, .. } => *class,
            Self::Timeout | Self::Network(_) | Self::InvalidAnswer { .. } | Self::AccessTokenRefused { .. } => {
                FailureClass::Transient
            }
            Self::Config(_) => FailureClass::IntegrationMisconfigured,
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> String {
        match self {
            Self::Answer { code, .. } => code.clone(),
            Self::Timeout => "timeout".into(),
            Self::Network(_) => "network".into(),
            Self::InvalidAnswer { .. } => "invalid_answer".into(),
            Self::AccessTokenRefused { .. } => "invalid_access_token".into(),
            Self::Config(_) => "integration_config".into(),
        }
    }

    /// The provider's HTTP status, when it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Answer { status, .. }
            | Self::InvalidAnswer { status, .. }
            | Self::AccessTokenRefused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The new refresh token of an answer whose access token was refused
    /// ([`ProviderError::AccessTokenRefused`]): the provider may have retired the one
    /// presented, so commit this one before retrying. `None` for every other error.
    pub fn salvaged_refresh_token(&self) -> Option<&SecretString> {
        match self {
            Self::AccessTokenRefused { refresh_token, .. } => refresh_token.as_ref(),
            _ => None,
        }
    }

    /// What is recorded and published about this failure.
    pub fn to_failure(&self) -> RefreshFailure {
        let message = match self {
            Self::Answer {
                description: Some(description),
                ..
            } => format!("{self}: {description}"),
            _ => self.to_string(),
        };
        RefreshFailure {
            class: self.class(),
            code: self.code(),
            message,
            http_status: self.http_status(),
            retry_after_secs: match self {
                Self::Answer { retry_after_secs, .. } => *retry_after_secs,
                _ => None,
            },
        }
    }
}

/// Keeps printable characters of a provider-supplied text, bounded, so a hostile
/// answer cannot inject log lines or huge messages.
pub fn sanitize(text: &str) -> String {
    let cleaned: String = text.chars().filter(|c| !c.is_control()).take(MAX_DESCRIPTION).collect();
    cleaned.trim().to_owned()
}

/// The class of an HTTP status without a recognised error code.
pub fn class_of_status(status: u16) -> FailureClass {
    match status {
        429 => FailureClass::RateLimited,
        _ => FailureClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_control_characters_and_bounds_length() {
        assert_eq!(sanitize("bad\nline\u{7}"), "badline");
        assert_eq!(sanitize(&"x".repeat(1000)).len(), MAX_DESCRIPTION);
    }

    #[test]
    fn network_errors_and_timeouts_are_transient() {
        assert_eq!(ProviderError::Timeout.class(), FailureClass::Transient);
        assert_eq!(
            ProviderError::Network("refused".into()).class(),
            FailureClass::Transient
        );
        assert_eq!(class_of_status(429), FailureClass::RateLimited);
        assert_eq!(class_of_status(503), FailureClass::Transient);
    }

    #[test]
    fn a_refused_access_token_error_never_prints_the_salvaged_refresh_token() {
        let err = ProviderError::AccessTokenRefused {
            status: 200,
            reason: "access token holds a control or non-ASCII character at byte 2".into(),
            refresh_token: Some(SecretString::new("rt-very-secret-rotated")),
        };
        assert_eq!(err.class(), FailureClass::Transient);
        assert_eq!(err.code(), "invalid_access_token");
        assert_eq!(err.http_status(), Some(200));
        assert_eq!(
            err.salvaged_refresh_token().map(SecretString::expose),
            Some("rt-very-secret-rotated")
        );
        for text in [format!("{err}"), format!("{err:?}"), err.to_failure().message] {
            assert!(!text.contains("very-secret"), "{text}");
        }
        assert!(ProviderError::Timeout.salvaged_refresh_token().is_none());
    }
}
