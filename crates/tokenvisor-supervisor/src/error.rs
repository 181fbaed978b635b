//! Errors returned to callers.

use chrono::{DateTime, Utc};
use tokenvisor_core::model::InvalidTenantId;
use tokenvisor_provider::EndpointError;
use tokenvisor_store::StoreError;

/// Why no token could be handed out (invariant 4: a caller gets a token valid for the
/// minimum validity, or one of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No such connection.
    #[error("connection not found")]
    NotFound,
    /// The grant is gone: the tenant must re-authorize.
    #[error("connection needs re-authorization ({code}): {message}")]
    NeedsReauthorization {
        /// The error code that caused it.
        code: String,
        /// Message.
        message: String,
    },
    /// An operator disabled the connection.
    #[error("connection is disabled")]
    Disabled,
    /// The provider is failing: the token could not be refreshed (for a read: the current
    /// token is expired or too close to expiry to be handed out).
    #[error("provider unavailable ({code}); next attempt at {retry_at}")]
    ProviderUnavailable {
        /// The last error code.
        code: String,
        /// When the next attempt is planned.
        retry_at: DateTime<Utc>,
    },
    /// The integration is misconfigured (`invalid_client`, bad endpoint); re-authorizing
    /// the tenant would not help.
    #[error("integration misconfigured ({code}): {message}")]
    IntegrationMisconfigured {
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// New tokens could not be committed to the store, so they are not handed out.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// tokenvisor is shutting down.
    #[error("tokenvisor is shutting down")]
    ShuttingDown,
    /// The connection's owner did not answer within the configured wait (it is
    /// refreshing, loading, or waiting for the store). Retryable.
    #[error("timed out after {waited_ms} ms waiting for the connection")]
    Timeout {
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// The input is invalid (a token outside RFC 6749's characters, a non-positive
    /// lifetime); nothing was changed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Another replica owns the connection and could not be reached, or ownership is
    /// moving between replicas (a replica died or joined): retry shortly.
    #[error("the connection's owner is unavailable: {message}")]
    OwnerUnavailable {
        /// What happened (never a secret).
        message: String,
    },
    /// An internal failure (an actor stopped unexpectedly).
    #[error("internal error: {0}")]
    Internal(String),
}

impl TokenError {
    /// A stable snake_case code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::NeedsReauthorization { .. } => "needs_reauth",
            Self::Disabled => "disabled",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
            Self::IntegrationMisconfigured { .. } => "integration_misconfigured",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Timeout { .. } => "timeout",
            Self::Invalid { .. } => "invalid_input",
            Self::OwnerUnavailable { .. } => "owner_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl TokenError {
    /// Whether the same call may succeed later without anyone's intervention (the
    /// provider or the store comes back, a refresh finishes).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::ProviderUnavailable { .. }
                | Self::StoreUnavailable(_)
                | Self::Timeout { .. }
                | Self::ShuttingDown
                | Self::OwnerUnavailable { .. }
        )
    }
}

impl From<StoreError> for TokenError {
    fn from(error: StoreError) -> Self {
        Self::StoreUnavailable(error.to_string())
    }
}

/// Errors of administrative operations (registering integrations and connections).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Input is invalid; nothing was changed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The integration's endpoints or settings are not usable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The referenced integration or connection does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A name or id is already taken.
    #[error("{0}")]
    Conflict(String),
    /// The integration is used by this many connections (delete them first, or cascade).
    #[error("the integration is used by {connections} connection(s); delete them first or cascade")]
    InUse {
        /// How many connections use it.
        connections: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A token operation failed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::Store(other),
        }
    }
}

impl From<InvalidTenantId> for AdminError {
    fn from(error: InvalidTenantId) -> Self {
        Self::Invalid {
            field: "tenant_id",
            reason: error.to_string(),
        }
    }
}

/// Why tokenvisor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store failed while loading connections.
    #[error("failed to load connections: {0}")]
    Store(#[from] StoreError),
    /// The token client could not be built.
    #[error("failed to build the token client: {0}")]
    Client(String),
    /// The supervisor actor did not start.
    #[error("failed to start the supervisor: {0}")]
    Spawn(String),
    /// Clustering was asked for with a store that cannot share partitions (only
    /// PostgreSQL can), or joining failed.
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    /// The journal of uncommitted token sets could not be read or replayed.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}
