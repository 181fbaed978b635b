//! The authorization-code flow: connect a tenant, or re-authorize a `needs_reauth`
//! connection, in one step.
//!
//! [`Tokenvisor::begin_authorization`] stores a random, single-use, expiring `state`
//! (only its hash), bound to the tenant, the integration and (for re-authorization) the
//! connection, with a PKCE verifier where the provider supports it, and returns the URL
//! to send the tenant to. [`Tokenvisor::complete_authorization`] handles the provider's
//! redirect: it consumes the state, exchanges the code at the right data centre, then
//! creates the connection or brings the inactive one back. Every failure is a typed
//! [`AuthorizationError`] and changes nothing but consuming the state.

use crate::api::{NewConnection, Tokenvisor};
use crate::error::{AdminError, TokenError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionKey, IntegrationId, PendingAuthorization, SecretString, TenantId,
};
use tokenvisor_provider::authorize::{Pkce, authorize_url, random_state};
use tokenvisor_provider::endpoint::ACCOUNTS_SERVER_KEY;
use tokenvisor_provider::{EndpointError, ResolvedIntegration};
use tokenvisor_store::StoreError;

/// Connection metadata key of the Atlassian cloud id.
pub const CLOUD_ID_KEY: &str = "cloud_id";

/// Start an authorization.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The integration.
    pub integration_id: IntegrationId,
    /// The connection to re-authorize (it must belong to the tenant and integration).
    pub connection_id: Option<ConnectionId>,
    /// The key to connect under (`None`: the default key, or the key of the connection
    /// being re-authorized). The completed authorization creates the tenant's connection
    /// under this key, or updates the one it already has there.
    pub connection_key: Option<ConnectionKey>,
    /// Redirect URI (default: the integration's).
    pub redirect_uri: Option<String>,
    /// Where the tenant's browser goes after the callback, with the outcome (checked by
    /// the caller: the admin API allows only configured hosts).
    pub return_to: Option<String>,
}

/// Where to send the tenant.
#[derive(Debug, Clone)]
pub struct AuthorizationStart {
    /// The provider's authorization URL, with `state` (and the PKCE challenge).
    pub authorize_url: String,
    /// When the state stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// What a finished authorization did ([`Authorizations::finish`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct Completion {
    /// The connection created or re-authorized, or why not.
    pub outcome: Result<Connection, AuthorizationError>,
    /// Where the tenant's browser goes next, if the authorization was started with it.
    pub return_to: Option<String>,
}

/// The query of the provider's redirect to the callback.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationCallback {
    /// `state`.
    pub state: String,
    /// `code` (secret).
    pub code: Option<SecretString>,
    /// `error` (e.g. `access_denied`).
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// Zoho: the accounts server of the tenant's data centre.
    pub accounts_server: Option<String>,
    /// Zoho: the tenant's data centre.
    pub location: Option<String>,
}

/// Why an authorization could not start or finish. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// The tenant denied consent (or the provider refused).
    #[error("authorization denied: {code}")]
    Denied {
        /// The provider's `error`.
        code: String,
        /// The provider's `error_description`.
        description: Option<String>,
    },
    /// The state is unknown or was already used.
    #[error("unknown or already used authorization state")]
    UnknownState,
    /// The state expired.
    #[error("the authorization expired; start again")]
    ExpiredState,
    /// The request or callback is malformed.
    #[error("invalid authorization request: {0}")]
    Invalid(String),
    /// The integration or connection does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The integration cannot be used (endpoints, settings).
    #[error(transparent)]
    Integration(#[from] EndpointError),
    /// The code exchange failed.
    #[error("code exchange failed ({code}): {message}")]
    Exchange {
        /// Error code.
        code: String,
        /// Message (no secret).
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Registering or reviving the connection failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl AuthorizationError {
    /// A stable snake_case code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Denied { .. } => "authorization_denied",
            Self::UnknownState => "unknown_state",
            Self::ExpiredState => "expired_state",
            Self::Invalid(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::Integration(_) => "integration_misconfigured",
            Self::Exchange { .. } => "code_exchange_failed",
            Self::Store(_) => "store_unavailable",
            Self::Admin(_) => "connection_failed",
        }
    }
}

impl From<TokenError> for AuthorizationError {
    fn from(error: TokenError) -> Self {
        Self::Admin(AdminError::Token(error))
    }
}

/// SHA-256 (hex) of a state value: what the store keeps.
fn state_hash(state: &str) -> String {
    Sha256::digest(state.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The authorization-code flow of a [`Tokenvisor`]:
/// `tokenvisor.authorizations().begin(request)`, then `.complete(callback)` from the
/// provider's redirect.
#[derive(Debug, Clone, Copy)]
pub struct Authorizations<'a> {
    tokenvisor: &'a Tokenvisor,
}

impl<'a> Authorizations<'a> {
    pub(crate) fn new(tokenvisor: &'a Tokenvisor) -> Self {
        Self { tokenvisor }
    }

    /// Starts an authorization: returns the URL to send the tenant to.
    pub async fn begin(self, request: AuthorizationRequest) -> Result<AuthorizationStart, AuthorizationError> {
        let shared = self.tokenvisor.shared();
        let integration = shared
            .store
            .get_integration(request.integration_id)
            .await?
            .ok_or(AuthorizationError::NotFound("integration"))?;
        let resolved = ResolvedIntegration::resolve(&integration, &shared.config.allow_insecure_hosts)?;
        if let Some(connection_id) = request.connection_id {
            let connection = shared
                .store
                .get_connection(connection_id)
                .await?
                .ok_or(AuthorizationError::NotFound("connection"))?;
            if connection.tenant_id != request.tenant_id || connection.integration_id != request.integration_id {
                return Err(AuthorizationError::Invalid(
                    "the connection belongs to another tenant or integration".into(),
                ));
            }
            if request
                .connection_key
                .as_ref()
                .is_some_and(|key| *key != connection.connection_key)
            {
                return Err(AuthorizationError::Invalid(
                    "the connection has another connection_key".into(),
                ));
            }
        }
        let redirect_uri = request
            .redirect_uri
            .or_else(|| resolved.redirect_uri.clone())
            .ok_or_else(|| AuthorizationError::Invalid("no redirect_uri: set one on the integration".into()))?;
        tokenvisor_provider::endpoint::validate_url(
            "redirect_uri",
            &redirect_uri,
            &shared.config.allow_insecure_hosts,
        )?;
        let state = random_state();
        let pkce = resolved.profile.pkce.then(Pkce::generate);
        let url = authorize_url(
            &resolved,
            &redirect_uri,
            &state,
            pkce.as_ref().map(|p| p.challenge.as_str()),
        )?;
        let now = shared.clock.now();
        let expires_at = now + tokenvisor_core::schedule::span(shared.config.authorization_ttl);
        shared
            .store
            .insert_authorization(&PendingAuthorization {
                state_hash: state_hash(&state),
                tenant_id: request.tenant_id,
                integration_id: integration.id,
                connection_id: request.connection_id,
                connection_key: request.connection_key,
                redirect_uri,
                return_to: request.return_to,
                code_verifier: pkce.map(|p| p.verifier),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(AuthorizationStart {
            authorize_url: url.to_string(),
            expires_at,
        })
    }

    /// Finishes an authorization from the provider's redirect: creates the connection under
    /// the authorization's key, or replaces the tokens of the one the tenant already has
    /// under that key (like a re-authorization), or brings the re-authorized one back to
    /// `active` (its `refresh_failures` kept).
    pub async fn complete(self, callback: AuthorizationCallback) -> Result<Connection, AuthorizationError> {
        self.finish(callback).await.outcome
    }

    /// [`complete`](Self::complete), also answering where the tenant's browser goes next:
    /// the `return_to` the authorization was started with (known once its `state` is, so
    /// also when the tenant denied consent or the exchange failed).
    pub async fn finish(self, callback: AuthorizationCallback) -> Completion {
        if callback.state.is_empty() || callback.state.len() > 512 {
            return Completion {
                outcome: Err(AuthorizationError::UnknownState),
                return_to: None,
            };
        }
        let pending = match self
            .tokenvisor
            .shared()
            .store
            .take_authorization(&state_hash(&callback.state))
            .await
        {
            Ok(Some(pending)) => pending,
            Ok(None) => {
                return Completion {
                    outcome: Err(AuthorizationError::UnknownState),
                    return_to: None,
                };
            }
            Err(error) => {
                return Completion {
                    outcome: Err(error.into()),
                    return_to: None,
                };
            }
        };
        let return_to = pending.return_to.clone();
        Completion {
            outcome: self.complete_pending(pending, callback).await,
            return_to,
        }
    }

    /// Finishes a taken authorization.
    async fn complete_pending(
        self,
        pending: PendingAuthorization,
        callback: AuthorizationCallback,
    ) -> Result<Connection, AuthorizationError> {
        let shared = self.tokenvisor.shared();
        if pending.expires_at <= shared.clock.now() {
            return Err(AuthorizationError::ExpiredState);
        }
        if let Some(code) = callback.error {
            return Err(AuthorizationError::Denied {
                code: sanitize(&code),
                description: callback.error_description.map(|d| sanitize(&d)),
            });
        }
        let code = callback
            .code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| AuthorizationError::Invalid("the callback has no code".into()))?;
        let integration = shared
            .store
            .get_integration(pending.integration_id)
            .await?
            .ok_or(AuthorizationError::NotFound("integration"))?;
        let resolved = ResolvedIntegration::resolve(&integration, &shared.config.allow_insecure_hosts)?;

        let mut metadata = serde_json::Map::new();
        if let Some(server) = &callback.accounts_server {
            let server = resolved.validate_accounts_server(server)?;
            metadata.insert(ACCOUNTS_SERVER_KEY.into(), server.into());
        }
        if let Some(location) = &callback.location {
            metadata.insert("location".into(), sanitize(location).into());
        }
        let tokens = shared
            .client
            .exchange_code(
                &resolved,
                &metadata,
                &code,
                &pending.redirect_uri,
                pending.code_verifier.as_ref(),
            )
            .await
            .map_err(|e| {
                let failure = e.to_failure();
                AuthorizationError::Exchange {
                    code: failure.code,
                    message: failure.message,
                }
            })?;
        if resolved.accessible_resources_endpoint().is_some() {
            match shared
                .client
                .accessible_resources(&resolved, &tokens.access_token)
                .await
            {
                Ok(resources) => {
                    if let Some(first) = resources.first() {
                        metadata.insert(CLOUD_ID_KEY.into(), first.id.clone().into());
                        metadata.insert("cloud_url".into(), first.url.clone().into());
                    }
                    metadata.insert("resources".into(), serde_json::to_value(&resources).unwrap_or_default());
                }
                Err(error) => tracing::warn!(error = %error, "failed to discover accessible resources"),
            }
        }
        let now = shared.clock.now();
        match pending.connection_id {
            Some(connection_id) => Ok(self
                .tokenvisor
                .connections()
                .replace_tokens(connection_id, tokens, metadata)
                .await?),
            None => {
                for (key, value) in &tokens.metadata {
                    metadata.insert(key.clone(), value.clone());
                }
                Ok(self
                    .tokenvisor
                    .connections()
                    .register(NewConnection {
                        tenant_id: pending.tenant_id,
                        integration_id: pending.integration_id,
                        connection_key: pending.connection_key.unwrap_or_default(),
                        access_token: tokens.access_token,
                        refresh_token: tokens.refresh_token,
                        token_type: tokens.token_type,
                        scope: tokens.scope,
                        expires_at: Some(now + tokens.expires_in),
                        metadata,
                    })
                    .await?)
            }
        }
    }
}

fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}
