//! Embedding tokenvisor in an existing tokio application that already has its own
//! database connection.
//!
//! Run with `cargo run -p tokenvisor-supervisor --example embedded`. So that it runs
//! anywhere, the "provider" is the fake authorization server from `tokenvisor-testkit`
//! on loopback; with a real provider, register the integration with its profile
//! (`zoho`, `atlassian`, ...) and your client credentials instead.

use std::sync::Arc;
use tokenvisor_core::TenantId;
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_supervisor::{NewConnection, NewIntegration, Tokenvisor, TokenvisorConfig};
use tokenvisor_testkit::{FakeConfig, FakeProvider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The host application installs its own subscriber; tokenvisor only emits `tracing` data.
    tracing_subscriber::fmt().with_env_filter("info").init();

    // The application's own database connection (here a SQLite file in a temp dir).
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    let mut options = sea_orm::ConnectOptions::new(url);
    options.sqlx_logging(false);
    let db = sea_orm::Database::connect(options).await?;

    // tokenvisor's tables go into that database, tokens encrypted with the app's key.
    let (keyring, _key_base64) = Keyring::generate();
    let store = Arc::new(SqlStore::from_connection(db, keyring).await?);
    let config = TokenvisorConfig {
        allow_insecure_hosts: vec!["127.0.0.1".into()],
        ..TokenvisorConfig::default()
    };
    let tokenvisor = Tokenvisor::start(store, config).await?;
    let mut events = tokenvisor.subscribe();

    // An OAuth app registration and one tenant's connection.
    let provider = FakeProvider::start(FakeConfig::default()).await?;
    let integration = tokenvisor
        .integrations()
        .register(
            NewIntegration::generic(
                "crm",
                provider.token_url(),
                provider.client_id(),
                provider.client_secret(),
            )
            .scopes(["crm.read"]),
        )
        .await?;
    let issued = provider.issue_grant("acme");
    let connection = tokenvisor
        .connections()
        .register(
            NewConnection::new(TenantId::parse("acme")?, integration.id, issued.access_token.as_str())
                .refresh_token(issued.refresh_token.as_str())
                .expires_in(std::time::Duration::from_secs(issued.expires_in)),
        )
        .await?;

    // Anywhere in the application: a valid token, from memory.
    let token = tokenvisor.tokens().access_token(connection.id).await?;
    println!("token {} valid until {}", token.secret.preview(), token.expires_at);

    // The API said 401: report it and get the replacement (one refresh, shared by all callers).
    let replacement = tokenvisor.tokens().token_rejected(connection.id, &token.secret).await?;
    println!(
        "replaced by {} valid until {}",
        replacement.secret.preview(),
        replacement.expires_at
    );
    while let Ok(event) = events.try_recv() {
        println!("event: {} for tenant {}", event.kind.name(), event.tenant_id);
    }

    tokenvisor.shutdown().await;
    Ok(())
}
