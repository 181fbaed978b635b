//! The embedding API: [`Tokenvisor`], a cheap, cloneable handle that hides the actors.

use crate::config::TokenvisorConfig;
use crate::connection::{ConnectionMsg, LifecycleOp};
use crate::error::{AdminError, StartError, TokenError};
use crate::journal::{Journal, JournalEntry};
use crate::shared::{Shared, SharedRef};
use crate::supervisor::{LoadFailed, StartupPage, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::token::AccessToken;
use chrono::{DateTime, Utc};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionStatus, Event, EventKind, Integration, IntegrationId,
    RefreshAttempt, SecretString, TenantId, TokenSet, check_token, validity_floor,
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
        // Tokens a previous run could not commit go into the store before anything else
        // reads it.
        let journal = match &config.journal {
            Some(journal_config) => {
                let (journal, entries) = Journal::open(journal_config)?;
                replay_journal(store.as_ref(), &journal, entries, config.clock.now()).await?;
                Some(journal)
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(store, client, config, journal));
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

    /// How many connections have an owner (actor) running that supervises them
    /// (refreshes them); disabled and `needs_reauth` connections are not counted.
    pub fn supervised_count(&self) -> usize {
        self.shared.registry.supervised_count()
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
        check_tokens(&new.access_token, new.refresh_token.as_ref().filter(|t| !t.is_empty()))?;
        let integration = self
            .shared
            .store
            .get_integration(new.integration_id)
            .await?
            .ok_or(AdminError::NotFound("integration"))?;
        let resolved = ResolvedIntegration::resolve(&integration, &self.shared.config.allow_insecure_hosts)?;
        self.shared.cache_integration(&integration);
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
    /// callers share. Never makes a provider call for an inactive connection. Waits at
    /// most [`TokenvisorConfig::token_wait`], then answers [`TokenError::Timeout`].
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
        let wait = self.shared.config.token_wait;
        let result = self
            .call(id, wait, |reply| {
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
        let span = api_span("tokenvisor.token_rejected", id);
        let wait = self.shared.config.token_wait;
        let result = self
            .call(id, wait, |reply| ConnectionMsg::TokenRejected {
                token: token.clone(),
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
        let wait = self.shared.config.operation_timeout;
        let result = self
            .call(id, wait, |reply| {
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

    /// Disables the connection. A refresh in flight commits first; once this returns,
    /// no caller gets a token for it and the provider is not called for it until
    /// [`Tokenvisor::activate`]. Callers get [`TokenError::Disabled`].
    pub async fn deactivate(&self, id: ConnectionId) -> Result<Connection, TokenError> {
        self.lifecycle(id, LifecycleOp::Deactivate).await
    }

    /// Enables a disabled (or `needs_reauth`) connection again and supervises it.
    pub async fn activate(&self, id: ConnectionId) -> Result<Connection, TokenError> {
        self.lifecycle(id, LifecycleOp::Activate).await
    }

    /// Replaces the tokens of a connection (re-authorization): commits them, marks the
    /// connection active (`refresh_failures` kept as history) and supervises it. The
    /// tokens are checked like a provider's answer (RFC 6749 characters, at most 16 KiB).
    pub async fn replace_tokens(
        &self,
        id: ConnectionId,
        tokens: TokenSet,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Connection, TokenError> {
        check_tokens(&tokens.access_token, tokens.refresh_token.as_ref()).map_err(|error| match error {
            AdminError::Invalid { field, reason } => TokenError::Invalid { field, reason },
            other => TokenError::Internal(other.to_string()),
        })?;
        if tokens.expires_in <= chrono::Duration::zero() {
            return Err(TokenError::Invalid {
                field: "expires_in",
                reason: "must be positive".into(),
            });
        }
        self.lifecycle(id, LifecycleOp::ReplaceTokens { tokens, metadata })
            .await
    }

    /// Deletes the connection with its history and revokes its grant at the provider
    /// (best effort). A refresh in flight commits first; once this returns, the provider
    /// is never called for this connection again.
    pub async fn remove(&self, id: ConnectionId) -> Result<(), TokenError> {
        let wait = self.shared.config.operation_timeout;
        self.call(id, wait, |reply| ConnectionMsg::Lifecycle(LifecycleOp::Remove, reply))
            .await
            .map(|_| ())
    }

    /// Stops taking requests, gives tokens that await their commit one more try, lets
    /// in-flight refreshes finish and commit, then stops every actor. Says how many token
    /// sets it could not commit (they stay in the journal, when one is configured, and
    /// are committed at the next start).
    pub async fn shutdown(&self) -> ShutdownReport {
        self.shared.begin_shutdown();
        let flushes = self
            .shared
            .registry
            .slots()
            .into_iter()
            .filter(|slot| slot.has_pending())
            .filter_map(|slot| slot.owner())
            .map(|owner| async move {
                let _ = owner
                    .call(ConnectionMsg::Flush, Some(std::time::Duration::from_secs(10)))
                    .await;
            })
            .collect::<Vec<_>>();
        futures::future::join_all(flushes).await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        let uncommitted = self
            .shared
            .registry
            .slots()
            .iter()
            .filter(|slot| slot.has_pending())
            .count();
        let journaled = self.shared.journal.as_ref().map_or(0, |journal| journal.outstanding());
        if uncommitted > 0 {
            tracing::error!(
                uncommitted,
                journaled,
                "stopping with token sets the store did not take; the journal keeps the journaled ones for the next start"
            );
        }
        let _ = self.supervisor.stop_and_wait(Some("shutdown".into()), None).await;
        tracing::info!("tokenvisor stopped");
        ShutdownReport { uncommitted, journaled }
    }

    /// Test hook: makes the connection's actor panic.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, id: ConnectionId) {
        let _ = self
            .supervisor
            .cast(crate::supervisor::SupervisorMsg::InjectPanic { connection_id: id });
    }

    fn fast_token(&self, id: ConnectionId) -> Option<AccessToken> {
        let slot = self.shared.registry.get(id)?;
        let token = slot.token()?;
        let floor = validity_floor(token.issued_at, token.expires_at, &self.shared.config.schedule);
        (token.expires_at - self.shared.clock.now() >= floor).then_some(token)
    }

    async fn lifecycle(&self, id: ConnectionId, op: LifecycleOp) -> Result<Connection, TokenError> {
        if self.shared.is_shutting_down() {
            return Err(TokenError::ShuttingDown);
        }
        let wait = self.shared.config.operation_timeout;
        self.call(id, wait, |reply| ConnectionMsg::Lifecycle(op.clone(), reply))
            .await?
            .ok_or(TokenError::NotFound)
    }

    /// The connection's owner: the running one, or one the supervisor starts.
    async fn owner(&self, id: ConnectionId) -> Result<ActorRef<ConnectionMsg>, TokenError> {
        if let Some(owner) = self.shared.registry.get(id).and_then(|slot| slot.owner()) {
            return Ok(owner);
        }
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::Locate {
                    connection_id: id,
                    reply,
                },
                Some(self.shared.config.operation_timeout),
            )
            .await
        {
            Ok(CallResult::Success(owner)) => Ok(owner),
            _ => Err(TokenError::Internal("the supervisor is unavailable".into())),
        }
    }

    /// Sends a request to the connection's owner and waits at most `wait` for its answer.
    /// An owner that stopped meanwhile (removed, crashed) is looked up again.
    async fn call<T: Send + 'static>(
        &self,
        id: ConnectionId,
        wait: std::time::Duration,
        message: impl Fn(ractor::RpcReplyPort<Result<T, TokenError>>) -> ConnectionMsg,
    ) -> Result<T, TokenError> {
        if self.shared.is_shutting_down() {
            return Err(TokenError::ShuttingDown);
        }
        let started = tokio::time::Instant::now();
        let timeout = || TokenError::Timeout {
            waited_ms: started.elapsed().as_millis() as u64,
        };
        for _ in 0..3 {
            let owner = self.owner(id).await?;
            let Some(remaining) = wait.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                return Err(timeout());
            };
            match owner.call(&message, Some(remaining)).await {
                Ok(CallResult::Success(result)) => return result,
                Ok(CallResult::Timeout) => return Err(timeout()),
                // The owner stopped before answering (the connection was removed, or
                // does not exist, or the actor crashed): a missing row is the answer;
                // otherwise ask for the current owner.
                Ok(CallResult::SenderError) | Err(_) => {
                    if self.shared.store.get_connection(id).await?.is_none() {
                        return Err(TokenError::NotFound);
                    }
                }
            }
        }
        Err(TokenError::Internal("the connection's owner keeps stopping".into()))
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
                Some(self.shared.config.operation_timeout),
            )
            .await;
        match spawned {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(AdminError::Token(TokenError::Internal("supervisor unavailable".into()))),
        }
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

/// What [`Tokenvisor::shutdown`] could not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Token sets the provider issued that the store did not take before the stop.
    pub uncommitted: usize,
    /// Of those (and of earlier runs), how many the journal keeps for the next start.
    pub journaled: usize,
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

/// Commits the token sets a previous run journaled: each goes onto the stored row when
/// the row still holds the refresh token it came from, and is dropped when the row moved
/// on (already committed, re-authorized, deleted).
async fn replay_journal(
    store: &dyn Store,
    journal: &Arc<Journal>,
    entries: Vec<JournalEntry>,
    now: DateTime<Utc>,
) -> Result<(), StartError> {
    for entry in entries {
        let JournalEntry { connection_id, pending } = entry;
        let mut outcome = "dropped";
        for _ in 0..16 {
            let Some(mut row) = store.get_connection(connection_id).await? else {
                break;
            };
            if pending.is_in(&row) {
                outcome = "already committed";
                break;
            }
            if !pending.applies_to(&row) {
                break;
            }
            let expected = row.version;
            row.apply_token_set(&pending.tokens, pending.obtained_at);
            row.last_refresh_at = Some(pending.obtained_at);
            if row.status.is_supervised() {
                row.status = ConnectionStatus::Active;
            }
            row.consecutive_failures = 0;
            row.last_error = None;
            row.next_refresh_at = None;
            row.updated_at = now;
            if let CasOutcome::Committed { .. } = store.compare_and_swap(&row, expected).await? {
                outcome = "committed";
                break;
            }
        }
        tracing::info!(connection.id = %connection_id, outcome, "replayed journaled tokens");
        if let Some(seq) = pending.journal_seq {
            journal.committed(seq).await?;
        }
    }
    journal.truncate_if_idle().await?;
    Ok(())
}
