//! The embedding API: [`Tokenvisor`], a cheap, cloneable handle that hides the actors.

use crate::config::TokenvisorConfig;
use crate::connection::ConnectionMsg;
use crate::error::{AdminError, StartError, TokenError};
use crate::registry::SlotState;
use crate::shared::{Shared, SharedRef};
use crate::supervisor::{LoadFailed, StartupPage, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::token::AccessToken;
use chrono::{DateTime, Utc};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionStatus, Event, EventKind, Integration, IntegrationId,
    RefreshAttempt, SecretString, TenantId, TokenSet, validity_floor,
};
use tokenvisor_provider::{ResolvedIntegration, TokenClient};
use tokenvisor_store::{CasOutcome, Store, StoreError};
use tokio::sync::broadcast;
use tracing::Instrument as _;

/// The span of one call of the token API: a child of the caller's current span.
fn api_span(name: &'static str, id: ConnectionId) -> tracing::Span {
    tracing::info_span!(
        "token_api",
        otel.name = name,
        connection.id = %id,
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
    )
}

/// Records how a token API call ended (`ok` or the error's code); never the token.
fn record_result(span: &tracing::Span, result: &Result<AccessToken, TokenError>) {
    match result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(error) => {
            span.record("outcome", "error");
            span.record("error.code", error.code());
        }
    }
}

/// A new integration (one OAuth app registration).
#[derive(Debug, Clone)]
pub struct NewIntegration {
    /// Unique name.
    pub name: String,
    /// Provider profile (`generic`, `zoho`, `zoho-desk`, `manageengine-sdp`, `atlassian`, `jira`).
    pub provider: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Redirect URI.
    pub redirect_uri: Option<String>,
    /// Data centre (multi-region providers).
    pub data_center: Option<String>,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Authorization endpoint override.
    pub authorize_url: Option<String>,
    /// Revocation endpoint override.
    pub revoke_url: Option<String>,
    /// Profile overrides (see `tokenvisor_provider::endpoint::IntegrationSettings`).
    pub settings: serde_json::Value,
}

/// A new connection with tokens obtained elsewhere (an import, or a code exchange).
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The integration.
    pub integration_id: IntegrationId,
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

/// An embedded tokenvisor: a supervisor and one actor per supervised connection.
/// Cloning shares the instance. Call [`Tokenvisor::shutdown`] before dropping the last clone.
#[derive(Clone)]
pub struct Tokenvisor {
    shared: SharedRef,
    supervisor: ActorRef<SupervisorMsg>,
}

impl std::fmt::Debug for Tokenvisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenvisor")
            .field("connections", &self.shared.registry.len())
            .finish()
    }
}

/// Connections handed to the supervisor per page at start-up.
const STARTUP_PAGE: usize = 10_000;

/// Streams the supervised connections from `store` (decrypting them) into `pages`. On a
/// store error, sends [`LoadFailed`] (the supervisor then stops what it started) and
/// returns the error.
async fn load_pages(store: Arc<dyn Store>, pages: tokio::sync::mpsc::Sender<StartupPage>) -> Result<(), StoreError> {
    use futures::StreamExt as _;
    let loading = std::time::Instant::now();
    let mut total = 0;
    let mut stream = store.load_supervised().chunks(STARTUP_PAGE);
    while let Some(chunk) = stream.next().await {
        let page = match chunk.into_iter().collect::<Result<Vec<Connection>, StoreError>>() {
            Ok(page) => page,
            Err(error) => {
                let _ = pages.send(Err(LoadFailed)).await;
                return Err(error);
            }
        };
        total += page.len();
        if pages.send(Ok(page)).await.is_err() {
            break;
        }
    }
    tracing::info!(
        connections = total,
        elapsed_ms = loading.elapsed().as_millis() as u64,
        "loaded supervised connections"
    );
    Ok(())
}

impl Tokenvisor {
    /// Loads every supervised connection from `store`, spawns its actor (tokens already
    /// inside their lead are refreshed at once, spread out, under the concurrency limit)
    /// and returns the handle. Runs on the caller's tokio runtime.
    pub async fn start(store: Arc<dyn Store>, config: TokenvisorConfig) -> Result<Self, StartError> {
        let client = TokenClient::new(config.client.clone()).map_err(|e| StartError::Client(e.to_string()))?;
        let shared = Arc::new(Shared::new(store, client, config));
        shared.metrics.observe(Arc::downgrade(&shared));
        // The integrations first: while the connections stream, a single-connection pool
        // (in-memory SQLite) has no connection left to look them up one by one.
        for integration in shared.store.list_integrations().await? {
            shared.cache_integration(&integration);
        }
        // Pages are loaded and decrypted by one task while the supervisor spawns the
        // actors of the previous page.
        let (pages, receiver) = tokio::sync::mpsc::channel(2);
        let loader = tokio::spawn(load_pages(shared.store.clone(), pages));
        let args = SupervisorArgs {
            shared: shared.clone(),
            pages: receiver,
        };
        let started = Actor::spawn(None, Supervisor, args).await;
        let loaded = loader.await.map_err(|e| StartError::Spawn(e.to_string()));
        match (started, loaded) {
            (Ok((supervisor, _)), Ok(Ok(()))) => Ok(Self { shared, supervisor }),
            (started, loaded) => {
                // Start-up fails as a whole: a supervisor that did start stops, and its
                // linked actors with it.
                let spawn_error = match started {
                    Ok((supervisor, _)) => {
                        let _ = supervisor
                            .stop_and_wait(None, Some(std::time::Duration::from_secs(30)))
                            .await;
                        None
                    }
                    Err(error) => Some(StartError::Spawn(error.to_string())),
                };
                // Nothing of the failed start keeps running: refreshes already in flight
                // commit (or fail) before start returns.
                shared.begin_shutdown();
                shared.tasks.close();
                shared.tasks.wait().await;
                Err(match loaded {
                    Ok(Err(error)) => StartError::Store(error),
                    Err(error) => error,
                    Ok(Ok(())) => spawn_error.unwrap_or_else(|| StartError::Spawn("the supervisor stopped".into())),
                })
            }
        }
    }

    pub(crate) fn shared(&self) -> &SharedRef {
        &self.shared
    }

    /// The store this instance writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Subscribes to connection events (published from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Whether the supervisor runs and takes requests (not shutting down).
    pub fn is_running(&self) -> bool {
        !self.shared.is_shutting_down()
            && matches!(
                self.supervisor.get_status(),
                ractor::ActorStatus::Starting | ractor::ActorStatus::Running | ractor::ActorStatus::Upgrading
            )
    }

    /// How many connections have an actor running.
    pub fn supervised_count(&self) -> usize {
        self.shared.registry.running().len()
    }

    /// Registers an integration after checking its provider, endpoints and settings.
    pub async fn register_integration(&self, new: NewIntegration) -> Result<Integration, AdminError> {
        if new.name.trim().is_empty() || new.name.len() > 128 {
            return Err(AdminError::Invalid {
                field: "name",
                reason: "must be 1 to 128 characters".into(),
            });
        }
        if new.client_id.is_empty() || new.client_id.len() > 512 {
            return Err(AdminError::Invalid {
                field: "client_id",
                reason: "must be 1 to 512 characters".into(),
            });
        }
        if new.client_secret.is_empty() {
            return Err(AdminError::Invalid {
                field: "client_secret",
                reason: "must not be empty".into(),
            });
        }
        let now = self.shared.clock.now();
        let integration = Integration {
            id: IntegrationId::new(),
            name: new.name,
            provider: new.provider,
            client_id: new.client_id,
            client_secret: new.client_secret,
            scopes: new.scopes,
            redirect_uri: new.redirect_uri,
            data_center: new.data_center,
            token_url: new.token_url,
            authorize_url: new.authorize_url,
            revoke_url: new.revoke_url,
            settings: new.settings,
            created_at: now,
            updated_at: now,
        };
        ResolvedIntegration::resolve(&integration, &self.shared.config.allow_insecure_hosts)?;
        self.shared.store.insert_integration(&integration).await?;
        Ok(integration)
    }

    /// Registers a connection, commits it, and starts supervising it.
    pub async fn register_connection(&self, new: NewConnection) -> Result<Connection, AdminError> {
        if new.access_token.is_empty() {
            return Err(AdminError::Invalid {
                field: "access_token",
                reason: "must not be empty".into(),
            });
        }
        let integration = self
            .shared
            .store
            .get_integration(new.integration_id)
            .await?
            .ok_or(AdminError::NotFound("integration"))?;
        let resolved = ResolvedIntegration::resolve(&integration, &self.shared.config.allow_insecure_hosts)?;
        let now = self.shared.clock.now();
        let expires_at = new.expires_at.unwrap_or(now + resolved.profile.default_lifetime);
        let connection = Connection {
            id: ConnectionId::new(),
            tenant_id: new.tenant_id,
            integration_id: integration.id,
            access_token: new.access_token,
            refresh_token: new.refresh_token.filter(|t| !t.is_empty()),
            token_type: new.token_type.unwrap_or_else(|| "Bearer".into()),
            scope: new.scope,
            issued_at: now.min(expires_at),
            expires_at,
            next_refresh_at: None,
            last_refresh_at: None,
            status: ConnectionStatus::Active,
            is_active: true,
            refresh_failures: 0,
            consecutive_failures: 0,
            last_error: None,
            metadata: new.metadata,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.shared.store.insert_connection(&connection).await?;
        self.spawn(connection.clone()).await?;
        self.emit(&connection, EventKind::Connected);
        Ok(connection)
    }

    /// A valid access token for the connection: from memory when it stays valid for at
    /// least `min(min_validity, lifetime / 4)`, otherwise after a refresh that concurrent
    /// callers share. Never makes a provider call for an inactive connection.
    ///
    /// When it has to wait for the actor (a refresh, an inactive connection) it is traced
    /// as a `tokenvisor.access_token` span, a child of the caller's current span (so a
    /// request span of the embedding application contains its token fetch); a refresh it
    /// starts is a child of it. Answers from memory are not traced.
    pub async fn access_token(&self, id: ConnectionId) -> Result<AccessToken, TokenError> {
        // The hot path (a valid token in memory) creates no span: at 100k calls/s a span
        // each would cost more than the lookup and flood the tracing backend.
        if !self.shared.is_shutting_down()
            && let Some(token) = self.fast_token(id)
        {
            return Ok(token);
        }
        let span = api_span("tokenvisor.access_token", id);
        let result = self
            .ask(id, None, |reply| {
                ConnectionMsg::AccessToken(reply, tracing::Span::current())
            })
            .instrument(span.clone())
            .await;
        record_result(&span, &result);
        result
    }

    /// The API rejected `token` (HTTP 401). If it is still the current token, one refresh
    /// happens (within the spacing limit) and the new token is returned; if it was already
    /// replaced, the current token is returned without a provider call.
    pub async fn token_rejected(&self, id: ConnectionId, token: &SecretString) -> Result<AccessToken, TokenError> {
        if let Some(current) = self.fast_token(id)
            && current.secret != *token
        {
            return Ok(current);
        }
        let token = token.clone();
        let span = api_span("tokenvisor.token_rejected", id);
        let result = self
            .ask(id, Some(()), move |reply| ConnectionMsg::TokenRejected {
                token,
                reply,
                caller: tracing::Span::current(),
            })
            .instrument(span.clone())
            .await;
        record_result(&span, &result);
        result
    }

    /// Refreshes now (within the spacing limit) and returns the new token.
    pub async fn force_refresh(&self, id: ConnectionId) -> Result<AccessToken, TokenError> {
        let span = api_span("tokenvisor.force_refresh", id);
        let result = self
            .ask(id, Some(()), |reply| {
                ConnectionMsg::ForceRefresh(reply, tracing::Span::current())
            })
            .instrument(span.clone())
            .await;
        record_result(&span, &result);
        result
    }

    /// The stored connection (tokens inside are [`SecretString`]s).
    pub async fn connection(&self, id: ConnectionId) -> Result<Option<Connection>, TokenError> {
        Ok(self.shared.store.get_connection(id).await?)
    }

    /// Stored connections matching `filter`.
    pub async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, TokenError> {
        Ok(self.shared.store.list_connections(filter).await?)
    }

    /// The newest refresh attempts of a connection.
    pub async fn refresh_history(&self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, TokenError> {
        Ok(self.shared.store.list_attempts(id, limit).await?)
    }

    /// Disables the connection: its actor stops (an in-flight refresh still commits),
    /// callers get [`TokenError::Disabled`].
    pub async fn deactivate(&self, id: ConnectionId) -> Result<Connection, TokenError> {
        let connection = self
            .change(id, SlotState::Inactive(ConnectionStatus::Disabled), |c| {
                c.status = ConnectionStatus::Disabled;
                c.is_active = false;
                c.next_refresh_at = None;
            })
            .await?;
        self.emit(&connection, EventKind::Deactivated);
        Ok(connection)
    }

    /// Enables a disabled (or `needs_reauth`) connection again and supervises it.
    pub async fn activate(&self, id: ConnectionId) -> Result<Connection, TokenError> {
        let connection = self
            .change(id, SlotState::Starting, |c| {
                c.status = ConnectionStatus::Active;
                c.is_active = true;
                c.consecutive_failures = 0;
                c.next_refresh_at = None;
            })
            .await?;
        self.spawn(connection.clone())
            .await
            .map_err(|e| TokenError::Internal(e.to_string()))?;
        self.emit(&connection, EventKind::Activated);
        Ok(connection)
    }

    /// Replaces the tokens of a connection (re-authorization): commits them, marks the
    /// connection active (`refresh_failures` kept as history) and supervises it.
    pub async fn replace_tokens(
        &self,
        id: ConnectionId,
        tokens: TokenSet,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Connection, TokenError> {
        let now = self.shared.clock.now();
        let connection = self
            .change(id, SlotState::Starting, move |c| {
                c.apply_token_set(&tokens, now);
                for (key, value) in &metadata {
                    c.metadata.insert(key.clone(), value.clone());
                }
                c.status = ConnectionStatus::Active;
                c.is_active = true;
                c.consecutive_failures = 0;
                c.last_error = None;
                c.next_refresh_at = None;
            })
            .await?;
        self.spawn(connection.clone())
            .await
            .map_err(|e| TokenError::Internal(e.to_string()))?;
        self.emit(&connection, EventKind::Reauthorized);
        Ok(connection)
    }

    /// Stops supervising the connection and deletes it with its history.
    pub async fn remove(&self, id: ConnectionId) -> Result<(), TokenError> {
        let connection = self
            .shared
            .store
            .get_connection(id)
            .await?
            .ok_or(TokenError::NotFound)?;
        let slot = self
            .shared
            .registry
            .get_or_insert(id, SlotState::Starting, connection.version);
        slot.publish(None);
        slot.set_state(SlotState::Inactive(ConnectionStatus::Disabled));
        self.stop_actor(id).await;
        let _guard = slot.refresh_lock.clone().lock_owned().await;
        let current = self
            .shared
            .store
            .get_connection(id)
            .await?
            .unwrap_or(connection.clone());
        self.revoke_best_effort(&current).await;
        self.shared.store.delete_connection(id).await?;
        self.shared.registry.remove(id);
        self.emit(&connection, EventKind::Removed);
        Ok(())
    }

    async fn revoke_best_effort(&self, connection: &Connection) {
        let Ok(Some(runtime)) = self.shared.integration(connection.integration_id).await else {
            return;
        };
        let Ok(resolved) = &runtime.resolved else {
            return;
        };
        // Revoking the refresh token ends the whole grant; without one, the access token.
        let token = connection.refresh_token.as_ref().unwrap_or(&connection.access_token);
        if let Err(error) = self.shared.client.revoke(resolved, &connection.metadata, token).await {
            tracing::warn!(connection.id = %connection.id, error = %error, "revocation at the provider failed; deleting anyway");
        }
    }

    /// Stops taking requests, lets in-flight refreshes finish and commit, then stops
    /// every actor.
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        let _ = self.supervisor.stop_and_wait(Some("shutdown".into()), None).await;
        tracing::info!("tokenvisor stopped");
    }

    /// Test hook: makes the connection's actor panic.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, id: ConnectionId) {
        let _ = self.supervisor.cast(SupervisorMsg::InjectPanic { connection_id: id });
    }

    fn fast_token(&self, id: ConnectionId) -> Option<AccessToken> {
        let slot = self.shared.registry.get(id)?;
        let token = slot.token()?;
        let floor = validity_floor(token.issued_at, token.expires_at, &self.shared.config.schedule);
        (token.expires_at - self.shared.clock.now() >= floor).then_some(token)
    }

    /// Answers from the published token when possible (unless `skip_fast_path`), otherwise asks
    /// the connection's actor; looks the connection up in the store when no actor runs.
    async fn ask(
        &self,
        id: ConnectionId,
        skip_fast_path: Option<()>,
        message: impl FnOnce(ractor::RpcReplyPort<Result<AccessToken, TokenError>>) -> ConnectionMsg,
    ) -> Result<AccessToken, TokenError> {
        if self.shared.is_shutting_down() {
            return Err(TokenError::ShuttingDown);
        }
        if skip_fast_path.is_none()
            && let Some(token) = self.fast_token(id)
        {
            return Ok(token);
        }
        let mut message = Some(message);
        for _ in 0..50 {
            let Some(slot) = self.shared.registry.get(id) else {
                self.supervise_from_store(id).await?;
                continue;
            };
            match slot.state() {
                SlotState::Running(actor) => {
                    let Some(build) = message.take() else {
                        return Err(TokenError::Internal("connection actor unavailable".into()));
                    };
                    match actor.call(build, None).await {
                        Ok(CallResult::Success(result)) => return result,
                        // The actor stopped meanwhile (escalated, deactivated, restarting).
                        _ => return self.after_actor_stopped(id).await,
                    }
                }
                SlotState::Starting => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                SlotState::Inactive(ConnectionStatus::Disabled) => return Err(TokenError::Disabled),
                SlotState::Inactive(_) => return Err(self.inactive_error(id).await),
            }
        }
        Err(TokenError::Internal("connection actor did not start".into()))
    }

    async fn after_actor_stopped(&self, id: ConnectionId) -> Result<AccessToken, TokenError> {
        for _ in 0..50 {
            match self.shared.registry.get(id).map(|slot| slot.state()) {
                Some(SlotState::Inactive(_)) => return Err(self.inactive_error(id).await),
                Some(SlotState::Running(actor)) => {
                    let caller = tracing::Span::current();
                    return match actor
                        .call(|reply| ConnectionMsg::AccessToken(reply, caller), None)
                        .await
                    {
                        Ok(CallResult::Success(result)) => result,
                        _ => Err(TokenError::Internal("connection actor stopped".into())),
                    };
                }
                Some(SlotState::Starting) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                None => return Err(TokenError::NotFound),
            }
        }
        Err(TokenError::Internal("connection actor did not restart".into()))
    }

    async fn inactive_error(&self, id: ConnectionId) -> TokenError {
        match self.shared.store.get_connection(id).await {
            Ok(Some(connection)) => crate::connection::status_error_for(&connection),
            Ok(None) => TokenError::NotFound,
            Err(error) => error.into(),
        }
    }

    /// No slot in this process: the store says whether the connection exists and whether
    /// it should be supervised (then its actor is started).
    async fn supervise_from_store(&self, id: ConnectionId) -> Result<(), TokenError> {
        let connection = self
            .shared
            .store
            .get_connection(id)
            .await?
            .ok_or(TokenError::NotFound)?;
        if !connection.is_active || !connection.status.is_supervised() {
            self.shared
                .registry
                .get_or_insert(id, SlotState::Inactive(connection.status), connection.version);
            return Err(crate::connection::status_error_for(&connection));
        }
        self.spawn(connection)
            .await
            .map_err(|e| TokenError::Internal(e.to_string()))
    }

    async fn spawn(&self, connection: Connection) -> Result<(), AdminError> {
        let spawned = self
            .supervisor
            .call(
                |reply| SupervisorMsg::Spawn {
                    connection: Box::new(connection),
                    startup: false,
                    reply: Some(reply),
                },
                None,
            )
            .await;
        match spawned {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(AdminError::Token(TokenError::Internal("supervisor unavailable".into()))),
        }
    }

    async fn stop_actor(&self, id: ConnectionId) {
        let _ = self
            .supervisor
            .call(
                |reply| SupervisorMsg::StopConnection {
                    connection_id: id,
                    reply,
                },
                None,
            )
            .await;
    }

    /// Stops the actor, waits for an in-flight refresh to commit, then applies `edit` to
    /// the stored row with compare-and-swap (retried on conflicts).
    async fn change(
        &self,
        id: ConnectionId,
        slot_state: SlotState,
        edit: impl Fn(&mut Connection),
    ) -> Result<Connection, TokenError> {
        if self.shared.is_shutting_down() {
            return Err(TokenError::ShuttingDown);
        }
        let existing = self
            .shared
            .store
            .get_connection(id)
            .await?
            .ok_or(TokenError::NotFound)?;
        let slot = self
            .shared
            .registry
            .get_or_insert(id, SlotState::Starting, existing.version);
        slot.publish(None);
        slot.set_state(slot_state);
        self.stop_actor(id).await;
        let mut version_guard = slot.refresh_lock.clone().lock_owned().await;
        for _ in 0..16 {
            let mut connection = self
                .shared
                .store
                .get_connection(id)
                .await?
                .ok_or(TokenError::NotFound)?;
            let expected = connection.version;
            edit(&mut connection);
            connection.updated_at = self.shared.clock.now();
            if let CasOutcome::Committed { version } = self.shared.store.compare_and_swap(&connection, expected).await?
            {
                connection.version = version;
                *version_guard = version;
                return Ok(connection);
            }
        }
        Err(TokenError::StoreUnavailable("too many concurrent writes".into()))
    }

    fn emit(&self, connection: &Connection, kind: EventKind) {
        self.shared.events.publish(Event {
            at: self.shared.clock.now(),
            connection_id: connection.id,
            tenant_id: connection.tenant_id.clone(),
            integration_id: connection.integration_id,
            kind,
        });
    }
}
