//! The host application's server: `DATABASE_URL`, `API_KEY`, `PUBLIC_URL`,
//! `TOKENVISOR_ENCRYPTION_KEY` and tokenvisor's `TOKENVISOR_*` settings.

use anyhow::Context as _;
use host_app::{ApiKey, app, embed_tokenvisor, migration::Migrator};
use sea_orm_migration::MigratorTrait as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let api_key = ApiKey(std::env::var("API_KEY").context("API_KEY")?.into());
    let public_url = std::env::var("PUBLIC_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key = std::env::var("TOKENVISOR_ENCRYPTION_KEY").context("TOKENVISOR_ENCRYPTION_KEY")?;

    let db = sea_orm::Database::connect(&database_url).await?;
    Migrator::up(&db, None).await?; // the host's own migrations
    let config = tokenvisor::TokenvisorConfig::from_env()?;
    let (tokenvisor, tokenvisor_routes) =
        embed_tokenvisor(db.clone(), &key, &public_url, config, api_key.clone()).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    axum::serve(listener, app(db, api_key, tokenvisor_routes))
        .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap_or_default() })
        .await?;
    tokenvisor.shutdown().await;
    Ok(())
}
