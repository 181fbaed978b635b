//! The tokenvisor runtime, embedded in your tokio application.
//!
//! - [`Tokenvisor`] (in `api`): the handle an application uses — register integrations
//!   and connections, get access tokens, report rejected tokens, deactivate, re-authorize.
//! - `authorization`: the authorization-code flow (connect, re-authorize).
//! - `api_client`: calls to provider APIs with the right header, retried once on 401.
//! - `supervisor`: where a failure escalates — one supervisor actor starts the owner of
//!   each connection (the only one that does), restarts crashed ones, and decides that a
//!   permanent failure makes a connection `needs_reauth`.
//! - `connection`: one actor per connection, its **owner** — owns its token state,
//!   schedules its own refresh, answers from memory, runs single-flight refreshes
//!   (`connection::refresh`, where a refresh happens: provider call, then
//!   compare-and-swap commit) and applies every change to its connection.
//! - `journal`: tokens the provider issued that the store did not take yet, on disk.
//! - Storage is any [`tokenvisor_store::Store`]; provider profiles come from
//!   [`tokenvisor_provider`].
//!
//! # Who writes a connection
//!
//! In one process a connection has exactly one writer: its owner (the connection actor,
//! and the refresh task it runs, one at a time). Everyone else sends it a message and
//! gets the answer back:
//!
//! | change | who asks | who writes |
//! |---|---|---|
//! | new tokens (refresh) | the owner's timer, a caller, an operator | the owner's refresh task, then the owner publishes |
//! | failure counters, `degraded` | the refresh task | the refresh task, reported to the owner |
//! | deactivate, activate, replace tokens (re-authorization), remove | [`Tokenvisor`], the admin API, the authorization flow | the owner, after the refresh in flight commits |
//! | `needs_reauth`, `refresh_failures + 1` | the owner escalates to the supervisor, which decides | the owner, only while the row holds the refresh token that failed |
//! | a new connection | [`Connections::register`] | the caller inserts it, then the supervisor starts its owner |
//!
//! A connection without a running owner gets one from the supervisor on the first
//! request (the owner loads its row, retrying while the store fails); nobody polls.
//! Readers take the published committed token without a lock or a message.
//!
//! # Phases of an owner
//!
//! ```text
//! Idle ──► Refreshing ──► Idle              committed
//!                    ├──► AwaitingCommit     provider answered, commit failed: kept in
//!                    │                       memory and the journal, commit retried
//!                    ├──► BackingOff         transient failure: retry timer; callers
//!                    │                       waiting on an expired token probe
//!                    └──► Escalating ──► Escalated   permanent failure
//! any ──deactivate──► Disabled ──activate──► Idle
//! Escalated ──re-authorize / activate──► Idle
//! any ──remove──► Stopping (row deleted, grant revoked, actor retired)
//! ```
//!
//! A deactivate, remove, re-authorization or escalation write that arrives during
//! `Refreshing` is applied after the refresh's outcome is committed, so tokens the
//! provider issued are never dropped; after `deactivate` or `remove` returns, nobody gets
//! a token from memory and the provider is not called for the connection again. Every
//! call waits for its owner at most [`TokenvisorConfig::token_wait`] (reads) or
//! [`TokenvisorConfig::operation_timeout`] (operations), then answers
//! [`TokenError::Timeout`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tokenvisor_supervisor::{Tokenvisor, TokenvisorConfig};
//! let store = Arc::new(tokenvisor_store::MemoryStore::new());
//! let tokenvisor = Tokenvisor::start(store, TokenvisorConfig::default()).await?;
//! // ... register integrations and connections, then:
//! // let token = tokenvisor.access_token(connection_id).await?;
//! tokenvisor.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod api_client;
mod authorization;
pub mod cluster;
mod config;
mod connection;
mod env;
mod error;
mod journal;
mod limits;
pub mod metrics;
mod registry;
mod shared;
mod supervisor;
mod token;

pub use api::{
    Connections, IntegrationUpdate, Integrations, NewConnection, NewIntegration, Registered, ShutdownReport, Tokens,
    Tokenvisor,
};
pub use api_client::{ApiClient, ApiError, ApiRequest, ApiResponse};
pub use authorization::{
    AuthorizationCallback, AuthorizationError, AuthorizationRequest, AuthorizationStart, Authorizations, CLOUD_ID_KEY,
    Completion,
};
pub use cluster::{Cluster, ClusterConfig, ClusterStatus, ReplicaStatus};
pub use config::{RestartBudget, TokenvisorConfig};
pub use env::{ConfigError, ENV_VARIABLES, parse_duration};
pub use error::{AdminError, StartError, TokenError};
pub use journal::{JournalConfig, JournalError};
pub use limits::{LimiterSnapshot, ProviderLimits};
pub use token::AccessToken;
