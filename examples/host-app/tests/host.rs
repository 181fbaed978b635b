//! The host application on SQLite and PostgreSQL: its migrations and tokenvisor's run on
//! one database in either order, again on the next start; a connection registered
//! through the mounted admin API refreshes against the fake provider; the host's
//! tables and rows are untouched; the admin API is behind the host's authentication.

use host_app::{ApiKey, app, embed_tokenvisor, migration::Migrator};
use sea_orm::{ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigratorTrait as _;
use std::time::Duration;
use tokenvisor::{IntegrationSettings, NewConnection, NewIntegration, TenantId, Tokenvisor, TokenvisorConfig};
use tokenvisor_testkit::database::{Backend, TestDatabase};
use tokenvisor_testkit::{FakeConfig, FakeProvider};

const API_KEY: &str = "host-secret-key";

#[derive(Clone, Copy)]
enum Order {
    HostFirst,
    TokenvisorFirst,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_migrations_then_tokenvisor_on_sqlite() {
    embed_and_restart(Backend::Sqlite, Order::HostFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenvisor_migrations_then_the_hosts_on_sqlite() {
    embed_and_restart(Backend::Sqlite, Order::TokenvisorFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_migrations_then_tokenvisor_on_postgres() {
    embed_and_restart(Backend::Postgres, Order::HostFirst).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenvisor_migrations_then_the_hosts_on_postgres() {
    embed_and_restart(Backend::Postgres, Order::TokenvisorFirst).await;
}

/// One start of the host: migrations in `order`, tokenvisor embedded, the app served on
/// `127.0.0.1:0`.
struct Host {
    db: DatabaseConnection,
    tokenvisor: Tokenvisor,
    base_url: String,
    server: tokio::task::JoinHandle<()>,
}

async fn start_host(database: &TestDatabase, key: &str, order: Order) -> Host {
    let url = match database.backend() {
        Backend::Sqlite => format!("{}?mode=rwc", database.url()),
        Backend::Postgres => database.url().to_owned(),
    };
    let mut options = ConnectOptions::new(url);
    options.sqlx_logging(false).max_connections(4);
    let db = Database::connect(options).await.expect("host connects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("address"));
    let config = TokenvisorConfig {
        allow_insecure_hosts: vec!["127.0.0.1".into()],
        ..TokenvisorConfig::default()
    };
    let api_key = ApiKey(API_KEY.into());
    let embed = || embed_tokenvisor(db.clone(), key, &base_url, config.clone(), api_key.clone());
    let (tokenvisor, routes) = match order {
        Order::HostFirst => {
            Migrator::up(&db, None).await.expect("host migrations");
            embed().await.expect("tokenvisor embeds")
        }
        Order::TokenvisorFirst => {
            let embedded = embed().await.expect("tokenvisor embeds");
            Migrator::up(&db, None).await.expect("host migrations");
            embedded
        }
    };
    let router = app(db.clone(), api_key, routes);
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Host {
        db,
        tokenvisor,
        base_url,
        server,
    }
}

impl Host {
    async fn stop(self) {
        self.tokenvisor.shutdown().await;
        self.server.abort();
        let _ = self.db.close().await;
    }
}

async fn embed_and_restart(backend: Backend, order: Order) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let database = TestDatabase::create(backend).await;
    let (_, key) = tokenvisor::Keyring::generate();
    let provider = FakeProvider::start(FakeConfig::default()).await.expect("fake provider");
    let http = reqwest::Client::new();

    let host = start_host(&database, &key, order).await;
    for (id, email) in [(1, "ada@example.com"), (2, "grace@example.com")] {
        execute(
            &host.db,
            &format!("INSERT INTO accounts (id, email) VALUES ({id}, '{email}')"),
        )
        .await;
        execute(
            &host.db,
            &format!("INSERT INTO connections (id, account_id, peer) VALUES ({id}, {id}, 'peer-{id}')"),
        )
        .await;
    }
    let rows_before = host_rows(&host.db).await;

    // The admin API is mounted under /tokenvisor behind the host's key; the OAuth
    // callback is public; no root or health routes are claimed.
    let admin = format!("{}/tokenvisor/v1", host.base_url);
    let unauthenticated = http.get(format!("{admin}/connections")).send().await.expect("request");
    assert_eq!(unauthenticated.status(), 401);
    // The dashboard too: behind the host's key, which is its sign-in (a session at once).
    let dashboard = format!("{}/tokenvisor/ui", host.base_url);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let refused = no_redirects.get(&dashboard).send().await.expect("request");
    assert_eq!(refused.status(), 401);
    let session = no_redirects
        .get(format!("{dashboard}/sign-in"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(session.status(), 303);
    let cookie = session.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let overview = no_redirects
        .get(&dashboard)
        .header("x-api-key", API_KEY)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(overview.status(), 200);
    let callback = http
        .get(format!("{}/tokenvisor/oauth/callback", host.base_url))
        .send()
        .await
        .expect("request");
    assert_ne!(callback.status(), 401);
    assert_ne!(callback.status(), 404);
    for path in ["/healthz", "/metrics", "/oauth/callback", "/v1/connections"] {
        let answer = http
            .get(format!("{}{path}", host.base_url))
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), 404, "{path} is the host's");
    }

    // Register an integration and a connection through the mounted admin API, with a
    // token about to expire: tokenvisor refreshes it against the fake provider.
    let integration: serde_json::Value = http
        .post(format!("{admin}/integrations"))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({
            "name": "crm",
            "provider": "generic",
            "client_id": provider.client_id(),
            "client_secret": provider.client_secret(),
            "token_url": provider.token_url(),
        }))
        .send()
        .await
        .expect("request")
        .error_for_status()
        .expect("integration created")
        .json()
        .await
        .expect("json");
    assert_eq!(integration["name"], "crm");
    let issued = provider.issue_grant("acme");
    let connection: serde_json::Value = http
        .post(format!("{admin}/connections"))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({
            "tenant_id": "acme",
            "integration": "crm",
            "access_token": issued.access_token,
            "refresh_token": issued.refresh_token,
            "expires_in": 4,
        }))
        .send()
        .await
        .expect("request")
        .error_for_status()
        .expect("connection created")
        .json()
        .await
        .expect("json");
    let connection_id = connection["id"].as_str().expect("an id").to_owned();
    // Refreshed on schedule (a quarter of the 4 s lifetime before expiry), committed, handed out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let refreshed = loop {
        let current = token(&http, &admin, &connection_id).await;
        if current != issued.access_token {
            break current;
        }
        assert!(tokio::time::Instant::now() < deadline, "no scheduled refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(provider.refreshes_for("acme") >= 1);

    // The same through the library's builders, from the host's own code.
    let integration = host
        .tokenvisor
        .integrations()
        .register(
            NewIntegration::generic(
                "crm-direct",
                provider.token_url(),
                provider.client_id(),
                provider.client_secret(),
            )
            .scopes(["crm.read"])
            .settings(IntegrationSettings {
                min_spacing_secs: Some(1),
                ..IntegrationSettings::default()
            }),
        )
        .await
        .expect("integration registered");
    let issued_direct = provider.issue_grant("globex");
    let direct = host
        .tokenvisor
        .connections()
        .register(
            NewConnection::new(
                TenantId::parse("globex").expect("tenant id"),
                integration.id,
                issued_direct.access_token.as_str(),
            )
            .refresh_token(issued_direct.refresh_token.as_str())
            .expires_in(std::time::Duration::from_secs(4)),
        )
        .await
        .expect("connection registered");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let current = host.tokenvisor.tokens().access_token(direct.id).await.expect("a token");
        if current.secret.expose() != issued_direct.access_token {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no scheduled refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(provider.refreshes_for("globex") >= 1);
    assert_eq!(host_rows(&host.db).await, rows_before);
    host.stop().await;

    // The next start: both migrators again (nothing to do), the same token from the store.
    let host = start_host(&database, &key, order).await;
    let admin = format!("{}/tokenvisor/v1", host.base_url);
    assert_eq!(token(&http, &admin, &connection_id).await, refreshed);
    assert_eq!(host_rows(&host.db).await, rows_before);
    assert_eq!(
        strings(&host.db, "SELECT version FROM seaql_migrations").await,
        vec!["m20240301_000001_accounts_and_connections"]
    );
    let accounts: Vec<String> = http
        .get(format!("{}/accounts", host.base_url))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(accounts, vec!["ada@example.com", "grace@example.com"]);
    host.stop().await;
}

async fn token(http: &reqwest::Client, admin: &str, connection_id: &str) -> String {
    let answer: serde_json::Value = http
        .get(format!("{admin}/connections/{connection_id}/token"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("request")
        .error_for_status()
        .expect("a token")
        .json()
        .await
        .expect("json");
    answer["access_token"].as_str().expect("a token").to_owned()
}

async fn execute(db: &DatabaseConnection, sql: &str) {
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("text"))
        .collect()
}

/// The host's rows and columns, as text.
async fn host_rows(db: &DatabaseConnection) -> Vec<String> {
    let concat = match db.get_database_backend() {
        DbBackend::Postgres => "a.id::text || ' ' || a.email || ' ' || c.id::text || ' ' || c.peer",
        _ => "a.id || ' ' || a.email || ' ' || c.id || ' ' || c.peer",
    };
    strings(
        db,
        &format!("SELECT {concat} FROM accounts a JOIN connections c ON c.account_id = a.id ORDER BY a.id"),
    )
    .await
}
