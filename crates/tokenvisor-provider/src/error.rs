//! Provider errors and their classification.

use tokenvisor_core::{FailureClass, RefreshFailure};

/// Longest provider `error_description` kept (after sanitising).
const MAX_DESCRIPTION: usize = 200;

/// A failed call to a token endpoint. Carries the provider's RFC 6749 error body when
/// there was one; never a token.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The connection or integration cannot be refreshed as configured.
    #[error("{0}")]
    Config(String),
}

impl ProviderError {
    /// How the supervisor should react.
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Answer { class, .. } => *class,
            Self::Timeout | Self::Network(_) | Self::InvalidAnswer { .. } => FailureClass::Transient,
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
            Self::Config(_) => "integration_config".into(),
        }
    }

    /// The provider's HTTP status, when it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Answer { status, .. } | Self::InvalidAnswer { status, .. } => Some(*status),
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
}
