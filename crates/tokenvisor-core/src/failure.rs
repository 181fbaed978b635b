//! How a failed refresh is classified, and what the supervisor is told.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The class of a failed refresh (docs/DESIGN.md, "Error classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The grant is gone (`invalid_grant`, `unauthorized_client`, no refresh token):
    /// escalate, the tenant must re-authorize.
    Permanent,
    /// The integration's credentials or endpoint are wrong (`invalid_client`):
    /// re-authorizing a tenant would not help; retried slowly.
    IntegrationMisconfigured,
    /// The provider throttled us: back off.
    RateLimited,
    /// Network, timeout, 5xx, unparseable answer: retry with backoff.
    Transient,
}

impl FailureClass {
    /// Whether this failure escalates to re-authorization.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::Permanent)
    }
}

/// A refresh failure with what is safe to record: no secret ever goes in here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFailure {
    /// Its class.
    pub class: FailureClass,
    /// Short code (`invalid_grant`, `timeout`, `http_503`...).
    pub code: String,
    /// Human-readable message (sanitised, bounded).
    pub message: String,
    /// The provider's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// The provider's `Retry-After`, in seconds.
    pub retry_after_secs: Option<u64>,
}

impl RefreshFailure {
    /// A failure with no HTTP status and no retry hint.
    pub fn new(class: FailureClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            http_status: None,
            retry_after_secs: None,
        }
    }
}

impl fmt::Display for RefreshFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
