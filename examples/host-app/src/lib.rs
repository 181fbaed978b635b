//! An example host application: an axum + sea-orm service with its own schema and
//! migrations that embeds tokenvisor on the same database.
//!
//! - [`migration`]: the host's migrator (`accounts`, and a `connections` table of its own).
//! - [`embed_tokenvisor`]: the glue — everything an embedder writes.
//! - [`app`]: the host's router: its own routes and tokenvisor's admin API under
//!   `/tokenvisor`, both behind the host's authentication (an `x-api-key` header).

pub mod migration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, Statement};
use std::sync::Arc;
use tokenvisor::admin::{AdminOptions, router_parts};
use tokenvisor::{Keyring, SqlStore, Tokenvisor, TokenvisorConfig};

/// The host's API key, checked by its own middleware.
#[derive(Clone)]
pub struct ApiKey(pub Arc<str>);

// --- The glue: tokenvisor on the host's database, its admin API behind the host's auth.

/// Runs tokenvisor's migrations on `db` (its `tokenvisor_*` tables, bookkept in
/// `tokenvisor_migrations`), starts it, and returns it with its admin routes mounted under
/// `/tokenvisor` (the OAuth callback is `{public_url}/tokenvisor/oauth/callback`).
pub async fn embed_tokenvisor(
    db: DatabaseConnection,
    encryption_key: &str,
    public_url: &str,
    config: TokenvisorConfig,
    api_key: ApiKey,
) -> anyhow::Result<(Tokenvisor, Router)> {
    let keyring = Keyring::from_base64(encryption_key, &[])?;
    tokenvisor::migrate(&db).await?;
    let store = Arc::new(SqlStore::from_connection_unmigrated(db, keyring).await?);
    let tokenvisor = Tokenvisor::start(store, config).await?;
    let admin = router_parts(tokenvisor.clone(), AdminOptions::embedded(public_url, "/tokenvisor"));
    let routes = admin
        .api
        .layer(middleware::from_fn_with_state(api_key, require_api_key))
        .merge(admin.public);
    Ok((tokenvisor, routes))
}

// --- The host's own application.

/// The host's router: `GET /accounts` and tokenvisor's routes, behind `x-api-key`.
pub fn app(db: DatabaseConnection, api_key: ApiKey, tokenvisor_routes: Router) -> Router {
    Router::new()
        .route("/accounts", get(accounts))
        .layer(middleware::from_fn_with_state(api_key, require_api_key))
        .with_state(db)
        .merge(tokenvisor_routes)
}

/// The host's authentication: the `x-api-key` header must match.
pub async fn require_api_key(State(key): State<ApiKey>, request: Request, next: Next) -> Response {
    let presented = request.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    if presented == Some(&*key.0) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or wrong x-api-key").into_response()
    }
}

/// `GET /accounts`: the host's accounts' emails.
async fn accounts(State(db): State<DatabaseConnection>) -> Result<Json<Vec<String>>, StatusCode> {
    let sql = "SELECT email FROM accounts ORDER BY id";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    rows.into_iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()
        .map(Json)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}
