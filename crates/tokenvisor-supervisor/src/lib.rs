//! The tokenvisor runtime, embedded in your tokio application.
//!
//! - [`Tokenvisor`] (in `api`): the handle an application uses — register integrations
//!   and connections, get access tokens, report rejected tokens, deactivate, re-authorize.
//! - `authorization`: the authorization-code flow (connect, re-authorize).
//! - `api_client`: calls to provider APIs with the right header, retried once on 401.
//! - `supervisor`: where a failure escalates — one supervisor actor owns the registry of
//!   connection actors, restarts crashed ones, and marks connections `needs_reauth`.
//! - `connection`: one actor per connection — owns its token state, schedules its own
//!   refresh, answers from memory, and runs single-flight refreshes (`connection::refresh`,
//!   where a refresh happens: provider call, then compare-and-swap commit).
//! - Storage is any [`tokenvisor_store::Store`]; provider profiles come from
//!   [`tokenvisor_provider`].
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
mod config;
mod connection;
mod error;
mod journal;
mod limits;
pub mod metrics;
mod registry;
mod shared;
mod supervisor;
mod token;

pub use api::{NewConnection, NewIntegration, ShutdownReport, Tokenvisor};
pub use api_client::{ApiClient, ApiError, ApiTarget};
pub use authorization::{
    AuthorizationCallback, AuthorizationError, AuthorizationRequest, AuthorizationStart, CLOUD_ID_KEY,
};
pub use config::{RestartBudget, TokenvisorConfig};
pub use error::{AdminError, StartError, TokenError};
pub use journal::{JournalConfig, JournalError};
pub use limits::ProviderLimits;
pub use token::AccessToken;
