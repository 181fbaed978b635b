//! tokenvisor, embedded: the one crate a host application depends on.
//!
//! tokenvisor keeps every tenant's OAuth 2.0 connections alive: it refreshes each access
//! token before it expires, commits every new token set before anyone can use it, hands
//! a valid access token to whoever asks, and marks a connection `needs_reauth` (with an
//! event and a typed error) when the provider says the grant is gone.
//!
//! ```no_run
//! # async fn demo(db: tokenvisor::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tokenvisor::{Keyring, NewConnection, NewIntegration, SqlStore, TenantId, Tokenvisor, TokenvisorConfig};
//!
//! let keyring = Keyring::from_base64(&std::env::var("TOKENVISOR_ENCRYPTION_KEY")?, &[])?;
//! tokenvisor::migrate(&db).await?; // or SqlStore::from_connection, which migrates
//! let store = Arc::new(SqlStore::from_connection_unmigrated(db, keyring).await?);
//! let tokenvisor = Tokenvisor::start(store, TokenvisorConfig::from_env()?).await?;
//! let zoho = tokenvisor
//!     .integrations()
//!     .register(NewIntegration::zoho("zoho-eu", "client-id", "client-secret", "eu").scopes(["ZohoCRM.modules.ALL"]))
//!     .await?;
//! let connection = tokenvisor
//!     .connections()
//!     .register(NewConnection::new(TenantId::parse("acme")?, zoho.id, "access-token").refresh_token("refresh-token"))
//!     .await?;
//! let token = tokenvisor.tokens().access_token(connection.id).await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! # What it re-exports
//!
//! - the runtime and its handles: [`Tokenvisor`] (`tokens()`, `connections()`,
//!   `integrations()`, `authorizations()`), [`TokenvisorConfig`] (with
//!   [`TokenvisorConfig::from_env`]), [`JournalConfig`];
//! - what you register: [`NewIntegration`], [`IntegrationSettings`], [`IntegrationUpdate`],
//!   [`NewConnection`] (with its [`ConnectionKey`]);
//! - what you get back: [`AccessToken`], [`Connection`], [`Integration`], [`Event`],
//!   and the errors [`TokenError`], [`AdminError`], [`StartError`];
//! - storage: [`SqlStore`], [`MemoryStore`], [`Keyring`], [`migrate`];
//! - with feature `admin`: `admin` (the admin HTTP API as an axum router, mountable
//!   under a prefix, behind your own authentication);
//! - with feature `telemetry`: `telemetry` (subscriber and OpenTelemetry export, for a
//!   host that has none of its own).
//!
//! # Features
//!
//! - `sqlite`, `postgres` (both default): the SQL backends you rely on. The store
//!   currently builds both drivers whichever you pick; the features exist so that
//!   gating them later does not break you.
//! - `admin`: re-exports `tokenvisor-admin`.
//! - `telemetry`: re-exports `tokenvisor-telemetry`.
//!
//! The modules [`core`], [`store`], [`provider`] and [`supervisor`] give access to
//! everything else (the `Store` trait, provider profiles, metrics).

/// The sea-orm connection type [`SqlStore`] takes (sea-orm 2.x, shared with yours).
pub use sea_orm::DatabaseConnection;
pub use tokenvisor_core as core;
pub use tokenvisor_provider as provider;
pub use tokenvisor_store as store;
pub use tokenvisor_supervisor as supervisor;

#[cfg(feature = "admin")]
pub use tokenvisor_admin as admin;
#[cfg(feature = "telemetry")]
pub use tokenvisor_telemetry as telemetry;

pub use tokenvisor_core::model::InvalidTenantId;
pub use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionKey, ConnectionStatus, Event, EventBus, EventKind,
    Integration, IntegrationId, InvalidConnectionKey, RefreshAttempt, SchedulePolicy, SecretString, TenantId, TokenSet,
};
pub use tokenvisor_provider::endpoint::IntegrationSettings;
pub use tokenvisor_provider::{BodyFormat, ClientAuth};
pub use tokenvisor_store::{Keyring, MIGRATION_TABLE, MemoryStore, SqlStore, Store, StoreError, migrate};
pub use tokenvisor_supervisor::{
    AccessToken, AdminError, ApiClient, ApiError, ApiRequest, ApiResponse, AuthorizationCallback, AuthorizationError,
    AuthorizationRequest, AuthorizationStart, Authorizations, Cluster, ClusterConfig, ClusterStatus, ConfigError,
    Connections, IntegrationUpdate, Integrations, JournalConfig, JournalError, NewConnection, NewIntegration,
    Registered, ShutdownReport, StartError, TokenError, Tokens, Tokenvisor, TokenvisorConfig,
};
