//! Forwarding a request to the replica that owns the connection: the wire format (JSON
//! over the owner's admin API, `POST {advertise_url}/v1/cluster/forward`, with the same
//! bearer token) and the client that sends it. The owner answers from its own actor;
//! tokens are never sent back: the requester reads the row the owner committed
//! (invariant 2: a token handed out is committed first).

use crate::error::TokenError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokenvisor_core::{ConnectionId, SecretString, TokenSet};

/// The path of the forwarding route, under the admin API's base path.
pub const FORWARD_PATH: &str = "/v1/cluster/forward";

/// What a replica asks the owner of a connection to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForwardOp {
    /// A valid access token (committed; the requester reads it from the store).
    AccessToken,
    /// The API rejected the token whose SHA-256 is `token_sha256` (hex).
    TokenRejected {
        /// SHA-256 of the rejected token, hex: the token itself is not sent.
        token_sha256: String,
    },
    /// Refresh now.
    ForceRefresh,
    /// Disable.
    Deactivate,
    /// Enable.
    Activate,
    /// Delete and revoke.
    Remove,
    /// New tokens from a re-authorization.
    ReplaceTokens {
        /// The access token.
        access_token: String,
        /// The refresh token, if any.
        refresh_token: Option<String>,
        /// Token type.
        token_type: Option<String>,
        /// Scope.
        scope: Option<String>,
        /// Lifetime in seconds.
        expires_in_secs: i64,
        /// Provider metadata of the token answer.
        token_metadata: serde_json::Map<String, serde_json::Value>,
        /// Metadata to merge into the connection.
        metadata: serde_json::Map<String, serde_json::Value>,
    },
}

impl ForwardOp {
    /// The re-authorization `tokens` and `metadata` as a forwarded operation.
    pub(crate) fn replace_tokens(tokens: &TokenSet, metadata: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self::ReplaceTokens {
            access_token: tokens.access_token.expose().to_owned(),
            refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            token_type: tokens.token_type.clone(),
            scope: tokens.scope.clone(),
            expires_in_secs: i64::try_from(tokens.expires_in.as_secs()).unwrap_or(i64::MAX),
            token_metadata: tokens.metadata.clone(),
            metadata: metadata.clone(),
        }
    }

    /// The name of the operation (for spans and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::TokenRejected { .. } => "token_rejected",
            Self::ForceRefresh => "force_refresh",
            Self::Deactivate => "deactivate",
            Self::Activate => "activate",
            Self::Remove => "remove",
            Self::ReplaceTokens { .. } => "replace_tokens",
        }
    }
}

/// A forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// The connection.
    pub connection_id: ConnectionId,
    /// What to do.
    #[serde(flatten)]
    pub op: ForwardOp,
}

/// The owner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForwardReply {
    /// Done; what the caller gets is in the store now.
    Done,
    /// The operation failed with this error.
    Failed(WireError),
    /// The replica does not own the connection (any more): ask the current owner.
    NotOwner,
}

/// A [`TokenError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    /// [`TokenError::code`].
    pub code: String,
    /// The error's message (never a secret).
    pub message: String,
    /// When the next attempt is planned (`provider_unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// How long the owner waited (`timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// The offending field (`invalid_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The detail code (`needs_reauth`, `integration_misconfigured`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&TokenError> for WireError {
    fn from(error: &TokenError) -> Self {
        let mut wire = WireError {
            code: error.code().to_owned(),
            message: error.to_string(),
            retry_at: None,
            waited_ms: None,
            field: None,
            detail: None,
        };
        match error {
            TokenError::ProviderUnavailable { code, retry_at } => {
                wire.retry_at = Some(*retry_at);
                wire.detail = Some(code.clone());
            }
            TokenError::Timeout { waited_ms } => wire.waited_ms = Some(*waited_ms),
            TokenError::Invalid { field, reason } => {
                wire.field = Some((*field).to_owned());
                wire.message = reason.clone();
            }
            TokenError::NeedsReauthorization { code, message }
            | TokenError::IntegrationMisconfigured { code, message } => {
                wire.detail = Some(code.clone());
                wire.message = message.clone();
            }
            TokenError::StoreUnavailable(message) | TokenError::Internal(message) => wire.message = message.clone(),
            TokenError::OwnerUnavailable { message } => wire.message = message.clone(),
            _ => {}
        }
        wire
    }
}

impl From<WireError> for TokenError {
    fn from(wire: WireError) -> Self {
        let detail = wire.detail.unwrap_or_default();
        match wire.code.as_str() {
            "not_found" => Self::NotFound,
            "needs_reauth" => Self::NeedsReauthorization {
                code: detail,
                message: wire.message,
            },
            "disabled" => Self::Disabled,
            "provider_unavailable" => Self::ProviderUnavailable {
                code: detail,
                retry_at: wire.retry_at.unwrap_or_else(Utc::now),
            },
            "integration_misconfigured" => Self::IntegrationMisconfigured {
                code: detail,
                message: wire.message,
            },
            "store_unavailable" => Self::StoreUnavailable(wire.message),
            "shutting_down" => Self::OwnerUnavailable {
                message: "the owning replica is shutting down".into(),
            },
            "timeout" => Self::Timeout {
                waited_ms: wire.waited_ms.unwrap_or_default(),
            },
            "invalid_input" => Self::Invalid {
                field: match wire.field.as_deref() {
                    Some("access_token") => "access_token",
                    Some("refresh_token") => "refresh_token",
                    Some("expires_in") => "expires_in",
                    _ => "input",
                },
                reason: wire.message,
            },
            "owner_unavailable" => Self::OwnerUnavailable { message: wire.message },
            _ => Self::Internal(wire.message),
        }
    }
}

/// Why a forward got no answer from an owner.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// The owner could not be reached (or answered garbage).
    Unreachable(String),
    /// The replica asked is not the owner (any more).
    NotOwner,
}

/// Sends forwarded requests.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    http: reqwest::Client,
    bearer: Option<SecretString>,
}

impl Forwarder {
    pub(crate) fn new(bearer: Option<SecretString>) -> Result<Self, String> {
        let http = tokenvisor_provider::tls::http_client_builder()
            .map_err(|error| error.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Self { http, bearer })
    }

    /// Sends `request` to the replica at `base_url`, waiting at most `timeout`.
    pub(crate) async fn send(
        &self,
        base_url: &str,
        request: &ForwardRequest,
        timeout: Duration,
    ) -> Result<Result<(), TokenError>, Unanswered> {
        let url = format!("{}{FORWARD_PATH}", base_url.trim_end_matches('/'));
        let mut builder = self.http.post(&url).json(request).timeout(timeout);
        if let Some(bearer) = &self.bearer {
            builder = builder.bearer_auth(bearer.expose());
        }
        let response = builder
            .send()
            .await
            .map_err(|error| Unanswered::Unreachable(format!("forwarding to {url}: {}", without_url(&error))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Unanswered::Unreachable(format!("forwarding to {url}: HTTP {status}")));
        }
        let reply: ForwardReply = response
            .json()
            .await
            .map_err(|error| Unanswered::Unreachable(format!("forwarding to {url}: {}", without_url(&error))))?;
        match reply {
            ForwardReply::Done => Ok(Ok(())),
            ForwardReply::Failed(wire) => Ok(Err(wire.into())),
            ForwardReply::NotOwner => Err(Unanswered::NotOwner),
        }
    }
}

/// A reqwest error's text without its URL (already in the message once).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "").replace(" ()", "");
    }
    text
}

/// SHA-256 of a token, hex (what [`ForwardOp::TokenRejected`] carries).
pub(crate) fn token_digest(token: &SecretString) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(token.expose().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}
