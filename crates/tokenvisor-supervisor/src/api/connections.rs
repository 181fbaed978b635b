//! Connections: register, read, and the lifecycle operations, each a message to the
//! connection's owner (see the crate docs, "Who writes a connection").

use super::Tokenvisor;
use crate::connection::{ConnectionMsg, LifecycleOp};
use crate::error::{AdminError, TokenError};
use chrono::{DateTime, Utc};
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionKey, ConnectionStatus, EventKind, IntegrationId,
    RefreshAttempt, SecretString, TenantId, TokenSet, check_token,
};
use tokenvisor_provider::ResolvedIntegration;
use tokenvisor_store::StoreError;

/// A new connection with tokens obtained elsewhere (an import, or a code exchange):
///
/// ```
/// use tokenvisor_core::{IntegrationId, TenantId};
/// use tokenvisor_supervisor::NewConnection;
/// # let integration_id = IntegrationId::new();
/// let tenant = TenantId::parse("acme").expect("valid tenant id");
/// let new = NewConnection::new(tenant, integration_id, "access-token")
///     .refresh_token("refresh-token")
///     .expires_in(std::time::Duration::from_secs(3600));
/// assert!(new.expires_at.is_some());
/// ```
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The integration.
    pub integration_id: IntegrationId,
    /// The caller's name for this connection of the tenant (`default`): registering the
    /// same (integration, tenant, key) again updates that connection.
    pub connection_key: ConnectionKey,
    /// Current access token.
    pub access_token: SecretString,
    /// Refresh token, if any.
    pub refresh_token: Option<SecretString>,
    /// Token type (default `Bearer`).
    pub token_type: Option<String>,
    /// Granted scope.
    pub scope: Option<String>,
    /// When the access token expires (default: now plus the profile's default lifetime).
    pub expires_at: Option<DateTime<Utc>>,
    /// Provider metadata (`api_domain`, `accounts_server`, cloud id...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl NewConnection {
    /// A connection of `tenant_id` to an integration with its current access token;
    /// without a refresh token it cannot be refreshed (it escalates when the token nears
    /// expiry), so set one with [`NewConnection::refresh_token`].
    pub fn new(tenant_id: TenantId, integration_id: IntegrationId, access_token: impl Into<SecretString>) -> Self {
        Self {
            tenant_id,
            integration_id,
            connection_key: ConnectionKey::default(),
            access_token: access_token.into(),
            refresh_token: None,
            token_type: None,
            scope: None,
            expires_at: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// The caller's name for this connection of the tenant (default `default`); a tenant
    /// can hold one connection per integration and key.
    pub fn connection_key(mut self, connection_key: ConnectionKey) -> Self {
        self.connection_key = connection_key;
        self
    }

    /// The refresh token.
    pub fn refresh_token(mut self, refresh_token: impl Into<SecretString>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// The token type (default `Bearer`).
    pub fn token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = Some(token_type.into());
        self
    }

    /// The granted scope, as the provider wrote it.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// When the access token expires (default: now plus the profile's default lifetime).
    pub fn expires_at(mut self, expires_at: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// The access token expires this long from now (wall clock).
    pub fn expires_in(mut self, expires_in: std::time::Duration) -> Self {
        self.expires_at = Some(Utc::now() + tokenvisor_core::schedule::span(expires_in));
        self
    }

    /// One provider metadata entry (`api_domain`, `accounts_server`, cloud id...).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What [`Connections::connect`] did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The connection as committed.
    pub connection: Connection,
    /// Whether it was created (`false`: the tenant already had a connection under this
    /// key, whose tokens were replaced).
    pub created: bool,
}

/// The connections of a [`Tokenvisor`]: `tokenvisor.connections().deactivate(id)`.
#[derive(Debug, Clone, Copy)]
pub struct Connections<'a> {
    tokenvisor: &'a Tokenvisor,
}

impl<'a> Connections<'a> {
    pub(super) fn new(tokenvisor: &'a Tokenvisor) -> Self {
        Self { tokenvisor }
    }

    /// Registers a connection, commits it, and starts supervising it; when the tenant
    /// already has a connection to the integration under this key, replaces its tokens
    /// instead (see [`Connections::connect`]).
    pub async fn register(self, new: NewConnection) -> Result<Connection, AdminError> {
        self.connect(new).await.map(|registered| registered.connection)
    }

    /// Registers a connection, or updates the one the tenant already has under this
    /// (integration, key): its tokens are replaced through its owner (like a
    /// re-authorization: active again, `refresh_failures` kept), and `created` is false.
    pub async fn connect(self, new: NewConnection) -> Result<Registered, AdminError> {
        check_tokens(&new.access_token, new.refresh_token.as_ref().filter(|t| !t.is_empty()))?;
        if let Some(existing) = self
            .find_by_key(new.integration_id, &new.tenant_id, &new.connection_key)
            .await?
        {
            return self.update_registered(existing.id, new).await;
        }
        let integration = self
            .tokenvisor
            .shared
            .store
            .get_integration(new.integration_id)
            .await?
            .ok_or(AdminError::NotFound("integration"))?;
        let resolved = ResolvedIntegration::resolve(&integration, &self.tokenvisor.shared.config.allow_insecure_hosts)?;
        let runtime = self.tokenvisor.shared.cache_integration(&integration);
        let now = self.tokenvisor.shared.clock.now();
        let expires_at = new.expires_at.unwrap_or(now + resolved.profile.default_lifetime);
        let issued_at = now.min(expires_at);
        // Known from the start (the owner plans the same refresh when it takes over).
        let next_refresh =
            tokenvisor_core::next_refresh_at(issued_at, expires_at, &[], now, &runtime.policy, rand::random::<f64>());
        let connection = Connection {
            id: ConnectionId::new(),
            tenant_id: new.tenant_id.clone(),
            integration_id: integration.id,
            connection_key: new.connection_key.clone(),
            access_token: new.access_token.clone(),
            refresh_token: new.refresh_token.clone().filter(|t| !t.is_empty()),
            token_type: new.token_type.clone().unwrap_or_else(|| "Bearer".into()),
            scope: new.scope.clone(),
            issued_at,
            expires_at,
            next_refresh_at: Some(next_refresh),
            last_refresh_at: None,
            status: ConnectionStatus::Active,
            is_active: true,
            refresh_failures: 0,
            consecutive_failures: 0,
            last_error: None,
            metadata: new.metadata.clone(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        match self.tokenvisor.shared.store.insert_connection(&connection).await {
            Ok(()) => {}
            // Registered meanwhile by another caller: update that one.
            Err(StoreError::Conflict(what)) => {
                return match self
                    .find_by_key(new.integration_id, &new.tenant_id, &new.connection_key)
                    .await?
                {
                    Some(existing) => self.update_registered(existing.id, new).await,
                    None => Err(AdminError::Conflict(what)),
                };
            }
            Err(error) => return Err(error.into()),
        }
        if self.tokenvisor.shared.serves(connection.id) {
            self.tokenvisor.spawn(connection.clone()).await?;
        } else {
            self.tokenvisor.announce(connection.id).await;
        }
        self.tokenvisor.emit(&connection, EventKind::Connected);
        Ok(Registered {
            connection,
            created: true,
        })
    }

    /// Replaces the tokens of an existing connection with those of a new registration.
    async fn update_registered(self, id: ConnectionId, new: NewConnection) -> Result<Registered, AdminError> {
        let integration = self
            .tokenvisor
            .shared
            .store
            .get_integration(new.integration_id)
            .await?
            .ok_or(AdminError::NotFound("integration"))?;
        let resolved = ResolvedIntegration::resolve(&integration, &self.tokenvisor.shared.config.allow_insecure_hosts)?;
        let now = self.tokenvisor.shared.clock.now();
        let expires_in = match new.expires_at {
            Some(expires_at) => (expires_at - now).to_std().unwrap_or_default(),
            None => resolved.profile.default_lifetime,
        };
        let tokens = TokenSet {
            access_token: new.access_token,
            refresh_token: new.refresh_token.filter(|t| !t.is_empty()),
            token_type: new.token_type,
            scope: new.scope,
            expires_in,
            metadata: serde_json::Map::new(),
        };
        let connection = self.replace_tokens(id, tokens, new.metadata).await?;
        Ok(Registered {
            connection,
            created: false,
        })
    }

    /// The tenant's connection to the integration under `key`, or
    /// [`TokenError::NotFound`].
    pub async fn by_key(
        self,
        integration_id: IntegrationId,
        tenant_id: &TenantId,
        key: &ConnectionKey,
    ) -> Result<Connection, TokenError> {
        self.find_by_key(integration_id, tenant_id, key)
            .await?
            .ok_or(TokenError::NotFound)
    }

    async fn find_by_key(
        self,
        integration_id: IntegrationId,
        tenant_id: &TenantId,
        key: &ConnectionKey,
    ) -> Result<Option<Connection>, StoreError> {
        let filter = ConnectionFilter {
            tenant_id: Some(tenant_id.clone()),
            integration_id: Some(integration_id),
            connection_key: Some(key.clone()),
            limit: Some(1),
            ..ConnectionFilter::default()
        };
        Ok(self
            .tokenvisor
            .shared
            .store
            .list_connections(&filter)
            .await?
            .into_iter()
            .next())
    }

    /// Every connection of a tenant (to any integration), ordered by id.
    pub async fn of_tenant(self, tenant_id: &TenantId) -> Result<Vec<Connection>, TokenError> {
        self.list(&ConnectionFilter {
            tenant_id: Some(tenant_id.clone()),
            ..ConnectionFilter::default()
        })
        .await
    }

    /// The stored connection (tokens inside are [`SecretString`]s), or
    /// [`TokenError::NotFound`] like every other call about a connection that does not
    /// exist.
    pub async fn get(self, id: ConnectionId) -> Result<Connection, TokenError> {
        self.tokenvisor
            .shared
            .store
            .get_connection(id)
            .await?
            .ok_or(TokenError::NotFound)
    }

    /// Stored connections matching `filter`.
    pub async fn list(self, filter: &ConnectionFilter) -> Result<Vec<Connection>, TokenError> {
        Ok(self.tokenvisor.shared.store.list_connections(filter).await?)
    }

    /// The newest refresh attempts of a connection.
    pub async fn history(self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, TokenError> {
        Ok(self.tokenvisor.shared.store.list_attempts(id, limit).await?)
    }

    /// Disables the connection. A refresh in flight commits first; once this returns,
    /// no caller gets a token for it and the provider is not called for it until
    /// [`Connections::activate`]. Callers get [`TokenError::Disabled`].
    pub async fn deactivate(self, id: ConnectionId) -> Result<Connection, TokenError> {
        self.tokenvisor.lifecycle(id, LifecycleOp::Deactivate).await
    }

    /// Enables a disabled (or `needs_reauth`) connection again and supervises it.
    pub async fn activate(self, id: ConnectionId) -> Result<Connection, TokenError> {
        self.tokenvisor.lifecycle(id, LifecycleOp::Activate).await
    }

    /// Replaces the tokens of a connection (re-authorization): commits them, marks the
    /// connection active (`refresh_failures` kept as history) and supervises it. The
    /// tokens are checked like a provider's answer (RFC 6749 characters, at most 16 KiB).
    pub async fn replace_tokens(
        self,
        id: ConnectionId,
        tokens: TokenSet,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Connection, TokenError> {
        check_tokens(&tokens.access_token, tokens.refresh_token.as_ref()).map_err(|error| match error {
            AdminError::Invalid { field, reason } => TokenError::Invalid { field, reason },
            other => TokenError::Internal(other.to_string()),
        })?;
        if tokens.expires_in.is_zero() {
            return Err(TokenError::Invalid {
                field: "expires_in",
                reason: "must be positive".into(),
            });
        }
        self.tokenvisor
            .lifecycle(id, LifecycleOp::ReplaceTokens { tokens, metadata })
            .await
    }

    /// Deletes the connection with its history and revokes its grant at the provider
    /// (best effort). A refresh in flight commits first; once this returns, the provider
    /// is never called for this connection again.
    pub async fn remove(self, id: ConnectionId) -> Result<(), TokenError> {
        let wait = self.tokenvisor.shared.config.operation_timeout;
        self.tokenvisor
            .routed(
                id,
                wait,
                || crate::cluster::forward::ForwardOp::Remove,
                |reply| ConnectionMsg::Lifecycle(LifecycleOp::Remove, reply),
            )
            .await
            .map(|_| ())
    }
}

/// Checks tokens entering the system like a provider's answer (RFC 6749 characters,
/// at most 16 KiB): one place for the embedding API and the admin routes.
fn check_tokens(access_token: &SecretString, refresh_token: Option<&SecretString>) -> Result<(), AdminError> {
    check_token("access token", access_token.expose()).map_err(|error| AdminError::Invalid {
        field: "access_token",
        reason: error.to_string(),
    })?;
    if let Some(refresh_token) = refresh_token {
        check_token("refresh token", refresh_token.expose()).map_err(|error| AdminError::Invalid {
            field: "refresh_token",
            reason: error.to_string(),
        })?;
    }
    Ok(())
}
