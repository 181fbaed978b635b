//! tokenvisor inside a host application's database: its tables and its migration
//! bookkeeping are its own (`tokenvisor_*`, `tokenvisor_migrations`), a host's
//! sea-orm-migration migrator and ours run in any order, a name collision fails loudly,
//! and a database created with the old unprefixed layout is upgraded in place.
//!
//! Every scenario runs on SQLite and on PostgreSQL (a fresh database per test, see
//! `tokenvisor_testkit::database`).

mod legacy;

use chrono::{DateTime, SubsecRound as _, Utc};
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbBackend, Statement, Value};
use sea_orm_migration::prelude::*;
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionStatus, Integration, IntegrationId, LastError,
    PendingAuthorization, RefreshAttempt, RefreshOutcomeKind, RefreshReason, SecretString, TenantId,
};
use tokenvisor_store::{Keyring, LeaseOutcome, SqlStore, Store as _, StoreError};
use tokenvisor_testkit::database::{Backend, TestDatabase as TestDb};
use uuid::Uuid;

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test]
                async fn sqlite() {
                    super::$scenario(super::TestDb::sqlite()).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$scenario(super::TestDb::postgres().await).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_database_of_the_old_layout_is_upgraded_in_place_and_nothing_is_lost,
    an_upgraded_database_has_the_schema_of_a_fresh_one_and_every_name_is_prefixed,
    a_host_migrator_and_ours_share_a_database_when_the_host_migrates_first,
    a_host_migrator_and_ours_share_a_database_when_tokenvisor_migrates_first,
    a_host_table_named_like_one_of_ours_fails_our_migration_naming_it_and_leaves_nothing_behind,
    replicas_opening_a_fresh_database_at_once_all_start,
    a_fresh_migration_on_a_shared_database_drops_only_our_tables,
    a_store_opened_without_migrating_refuses_an_unmigrated_database_until_migrate_runs,
    an_old_layout_database_opened_without_migrating_is_refused_untouched_until_migrate_upgrades_it,
    an_old_layout_at_an_earlier_version_is_upgraded_and_completed_and_the_hosts_versions_stay,
    duplicate_connections_of_a_tenant_get_keys_of_their_own_and_the_newest_keeps_default,
);

/// Our tables after the upgrade (and on a fresh database), with the bookkeeping table.
const OUR_TABLES: [&str; 15] = [
    "tokenvisor_api_keys",
    "tokenvisor_audit_events",
    "tokenvisor_authorization_states",
    "tokenvisor_connections",
    "tokenvisor_integrations",
    "tokenvisor_key_rotations",
    "tokenvisor_meta",
    "tokenvisor_migrations",
    "tokenvisor_partitions",
    "tokenvisor_refresh_attempts",
    "tokenvisor_refresh_leases",
    "tokenvisor_replicas",
    "tokenvisor_webhook_dead_letters",
    "tokenvisor_webhook_endpoints",
    "tokenvisor_webhook_outbox",
];

/// Our migrations, all of them (the old layout's and those written since).
const OUR_VERSIONS: [&str; 15] = [
    "m20250101_000001_initial",
    "m20251122_000002_authorizations",
    "m20261122_000003_refresh_leases",
    "m20261122_000004_webhook_outbox",
    "m20261202_000005_partitions",
    "m20261202_000006_connection_keys",
    "m20261202_000007_webhook_endpoints",
    "m20261202_000008_authorization_keys",
    "m20261202_000009_api_keys",
    "m20261202_000010_attempt_times",
    "m20261202_000011_dashboard_indexes",
    "m20261202_000012_return_to",
    "m20261202_000013_key_rotations",
    "m20261202_000014_connection_sort_indexes",
    "m20261202_000015_audit_statuses",
];

fn keyring() -> Keyring {
    Keyring::new([7; 32], vec![])
}

fn now() -> DateTime<Utc> {
    // PostgreSQL keeps microseconds: compare values both backends store exactly.
    Utc::now().trunc_subsecs(6)
}

/// A connection pool the way a host application opens one (sqlx defaults: SQLite foreign
/// keys on, the file created when missing).
async fn host_connection(db: &TestDb) -> DatabaseConnection {
    let url = match db.backend() {
        Backend::Sqlite => format!("{}?mode=rwc", db.url()),
        Backend::Postgres => db.url().to_owned(),
    };
    let mut options = ConnectOptions::new(url);
    options.sqlx_logging(false).max_connections(4);
    Database::connect(options).await.expect("host connects")
}

async fn query_strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("a text column"))
        .collect()
}

/// The tables of the database (SQLite's own excepted), sorted.
async fn tables(db: &DatabaseConnection) -> Vec<String> {
    query_strings(
        db,
        match db.get_database_backend() {
            DbBackend::Postgres => {
                "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
            }
            _ => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                  ORDER BY name"
            }
        },
    )
    .await
}

async fn versions_in(db: &DatabaseConnection, table: &str) -> Vec<String> {
    query_strings(db, &format!("SELECT version FROM {table} ORDER BY version")).await
}

async fn insert_row(db: &DatabaseConnection, table: &str, row: Vec<(&str, Value)>) {
    let (columns, values): (Vec<_>, Vec<_>) = row.into_iter().unzip();
    let insert = Query::insert()
        .into_table(Alias::new(table))
        .columns(columns.into_iter().map(Alias::new))
        .values_panic(values.into_iter().map(Into::into))
        .to_owned();
    db.execute(&insert)
        .await
        .unwrap_or_else(|error| panic!("insert into {table}: {error}"));
}

fn sample_integration() -> Integration {
    let now = now();
    Integration {
        id: IntegrationId::new(),
        name: "zoho-eu".to_owned(),
        provider: "zoho".to_owned(),
        client_id: "client-id-1".to_owned(),
        client_secret: SecretString::new("client-secret-1"),
        scopes: vec!["ZohoCRM.modules.ALL".to_owned(), "offline_access".to_owned()],
        redirect_uri: Some("https://app.example/callback".to_owned()),
        data_center: Some("eu".to_owned()),
        token_url: None,
        authorize_url: Some("https://accounts.zoho.eu/oauth/v2/auth".to_owned()),
        revoke_url: None,
        settings: serde_json::json!({"client_auth": "body"}),
        created_at: now,
        updated_at: now,
    }
}

fn sample_connection(integration_id: IntegrationId) -> Connection {
    let now = now();
    let mut metadata = serde_json::Map::new();
    metadata.insert("api_domain".to_owned(), serde_json::json!("https://www.zohoapis.eu"));
    Connection {
        id: ConnectionId::new(),
        tenant_id: TenantId::parse("acme").expect("valid tenant"),
        integration_id,
        connection_key: tokenvisor_core::ConnectionKey::default(),
        access_token: SecretString::new(format!("access-{}", Uuid::new_v4())),
        refresh_token: Some(SecretString::new(format!("refresh-{}", Uuid::new_v4()))),
        token_type: "Bearer".to_owned(),
        scope: Some("ZohoCRM.modules.ALL".to_owned()),
        issued_at: now,
        expires_at: now + chrono::Duration::hours(1),
        next_refresh_at: Some(now + chrono::Duration::minutes(45)),
        last_refresh_at: Some(now - chrono::Duration::minutes(15)),
        status: ConnectionStatus::Degraded,
        is_active: true,
        refresh_failures: 2,
        consecutive_failures: 1,
        last_error: Some(LastError {
            code: "http_503".to_owned(),
            message: "the provider answered 503".to_owned(),
            at: now,
        }),
        metadata,
        version: 7,
        created_at: now,
        updated_at: now,
    }
}

fn sample_attempt(connection_id: ConnectionId, sequence: i64) -> RefreshAttempt {
    RefreshAttempt {
        connection_id,
        started_at: now() + chrono::Duration::milliseconds(sequence),
        reason: RefreshReason::Scheduled,
        outcome: if sequence % 2 == 0 {
            RefreshOutcomeKind::Success
        } else {
            RefreshOutcomeKind::Transient
        },
        error_code: (sequence % 2 == 1).then(|| "timeout".to_owned()),
        http_status: (sequence % 2 == 0).then_some(200),
        duration_ms: 100 + sequence,
    }
}

/// Every field, secrets included, as comparable text.
fn connection_fingerprint(connection: &Connection) -> String {
    format!(
        "{connection:?} access={} refresh={:?}",
        connection.access_token.expose(),
        connection.refresh_token.as_ref().map(SecretString::expose)
    )
}

fn integration_fingerprint(integration: &Integration) -> String {
    format!("{integration:?} secret={}", integration.client_secret.expose())
}

/// What an old-layout database held: rows written exactly as the store wrote them before
/// the names were prefixed (the same sea-orm values, ciphertexts bound to the same
/// `table:row:column` labels).
struct LegacyData {
    integration: Integration,
    connection: Connection,
    attempts: Vec<RefreshAttempt>,
    authorization: PendingAuthorization,
    outbox: Vec<(String, String)>,
}

/// Builds the old layout with the old migrations and fills it through `db`.
async fn old_layout_with_data(db: &DatabaseConnection, keyring: &Keyring) -> LegacyData {
    legacy::LegacyMigrator::up(db, None)
        .await
        .expect("the old migrations run");

    let seal = |plaintext: &str, aad: String| keyring.encrypt(plaintext.as_bytes(), aad.as_bytes()).expect("seal");
    insert_row(
        db,
        "meta",
        vec![
            ("key", Value::from("key_check")),
            (
                "value",
                Value::from(
                    keyring
                        .encrypt(b"tokenvisor key check v1", b"meta:key_check")
                        .expect("seal"),
                ),
            ),
        ],
    )
    .await;

    let integration = sample_integration();
    let id = integration.id.0;
    insert_row(
        db,
        "integrations",
        vec![
            ("id", Value::from(id)),
            ("name", Value::from(integration.name.clone())),
            ("provider", Value::from(integration.provider.clone())),
            ("client_id", Value::from(integration.client_id.clone())),
            (
                "client_secret",
                Value::from(seal(
                    integration.client_secret.expose(),
                    format!("integrations:{id}:client_secret"),
                )),
            ),
            ("scopes", Value::from(serde_json::json!(integration.scopes))),
            ("redirect_uri", Value::from(integration.redirect_uri.clone())),
            ("data_center", Value::from(integration.data_center.clone())),
            ("token_url", Value::from(integration.token_url.clone())),
            ("authorize_url", Value::from(integration.authorize_url.clone())),
            ("revoke_url", Value::from(integration.revoke_url.clone())),
            ("settings", Value::from(integration.settings.clone())),
            ("created_at", Value::from(integration.created_at)),
            ("updated_at", Value::from(integration.updated_at)),
        ],
    )
    .await;

    let connection = sample_connection(integration.id);
    let id = connection.id.0;
    let last_error = connection.last_error.clone().expect("an error");
    insert_row(
        db,
        "connections",
        vec![
            ("id", Value::from(id)),
            ("tenant_id", Value::from(connection.tenant_id.as_str().to_owned())),
            ("integration_id", Value::from(connection.integration_id.0)),
            (
                "access_token",
                Value::from(seal(
                    connection.access_token.expose(),
                    format!("connections:{id}:access_token"),
                )),
            ),
            (
                "refresh_token",
                Value::from(Some(seal(
                    connection.refresh_token.as_ref().expect("a refresh token").expose(),
                    format!("connections:{id}:refresh_token"),
                ))),
            ),
            ("token_type", Value::from(connection.token_type.clone())),
            ("scope", Value::from(connection.scope.clone())),
            ("issued_at", Value::from(connection.issued_at)),
            ("expires_at", Value::from(connection.expires_at)),
            ("next_refresh_at", Value::from(connection.next_refresh_at)),
            ("last_refresh_at", Value::from(connection.last_refresh_at)),
            ("status", Value::from(connection.status.as_str())),
            ("is_active", Value::from(connection.is_active)),
            ("refresh_failures", Value::from(connection.refresh_failures)),
            ("consecutive_failures", Value::from(connection.consecutive_failures)),
            ("last_error_code", Value::from(Some(last_error.code))),
            ("last_error_message", Value::from(Some(last_error.message))),
            ("last_error_at", Value::from(Some(last_error.at))),
            (
                "metadata",
                Value::from(serde_json::Value::Object(connection.metadata.clone())),
            ),
            ("version", Value::from(connection.version)),
            ("created_at", Value::from(connection.created_at)),
            ("updated_at", Value::from(connection.updated_at)),
        ],
    )
    .await;

    let attempts: Vec<_> = (0..3).map(|n| sample_attempt(connection.id, n)).collect();
    for attempt in &attempts {
        insert_row(
            db,
            "refresh_attempts",
            vec![
                ("connection_id", Value::from(attempt.connection_id.0)),
                ("started_at", Value::from(attempt.started_at)),
                ("reason", Value::from(attempt.reason.as_str())),
                ("outcome", Value::from(attempt.outcome.as_str())),
                ("error_code", Value::from(attempt.error_code.clone())),
                ("http_status", Value::from(attempt.http_status.map(i32::from))),
                ("duration_ms", Value::from(attempt.duration_ms)),
            ],
        )
        .await;
    }

    let authorization = PendingAuthorization {
        state_hash: "5f1c0ffee".to_owned(),
        tenant_id: TenantId::parse("acme").expect("valid tenant"),
        integration_id: integration.id,
        connection_id: Some(connection.id),
        // The old layout has no key column: the default key.
        connection_key: None,
        redirect_uri: "https://app.example/callback".to_owned(),
        return_to: None,
        code_verifier: Some(SecretString::new("pkce-verifier-1")),
        created_at: now(),
        expires_at: now() + chrono::Duration::hours(1),
    };
    insert_row(
        db,
        "authorization_states",
        vec![
            ("state_hash", Value::from(authorization.state_hash.clone())),
            ("tenant_id", Value::from(authorization.tenant_id.as_str().to_owned())),
            ("integration_id", Value::from(authorization.integration_id.0)),
            ("connection_id", Value::from(authorization.connection_id.map(|id| id.0))),
            ("redirect_uri", Value::from(authorization.redirect_uri.clone())),
            (
                "code_verifier",
                Value::from(Some(seal(
                    "pkce-verifier-1",
                    format!("authorization_states:{}:code_verifier", authorization.state_hash),
                ))),
            ),
            ("created_at", Value::from(authorization.created_at)),
            ("expires_at", Value::from(authorization.expires_at)),
        ],
    )
    .await;

    insert_row(
        db,
        "refresh_leases",
        vec![
            ("connection_id", Value::from(connection.id.0)),
            ("owner", Value::from("replica-a")),
            ("expires_at_ms", Value::from(Utc::now().timestamp_millis() + 600_000)),
        ],
    )
    .await;

    let outbox = vec![
        ("msg_1".to_owned(), r#"{"type":"refreshed","n":1}"#.to_owned()),
        ("msg_2".to_owned(), r#"{"type":"refreshed","n":2}"#.to_owned()),
    ];
    for (message_id, body) in &outbox {
        insert_row(
            db,
            "webhook_outbox",
            vec![
                ("endpoint", Value::from("https://hooks.example/a")),
                ("message_id", Value::from(message_id.clone())),
                ("body", Value::from(body.clone())),
                ("created_at", Value::from(now())),
            ],
        )
        .await;
    }

    LegacyData {
        integration,
        connection,
        attempts,
        authorization,
        outbox,
    }
}

async fn a_database_of_the_old_layout_is_upgraded_in_place_and_nothing_is_lost(db: TestDb) {
    let host = host_connection(&db).await;
    let data = old_layout_with_data(&host, &keyring()).await;
    let old_tables = tables(&host).await;
    for table in legacy::TABLES {
        assert!(
            old_tables.iter().any(|t| t == table),
            "the old layout has {table}: {old_tables:?}"
        );
    }

    // A wrong key is refused before anything is renamed.
    let error = SqlStore::from_connection(host.clone(), Keyring::new([9; 32], vec![]))
        .await
        .expect_err("a wrong key is refused");
    assert!(matches!(error, StoreError::Key(_)), "{error}");
    assert_eq!(tables(&host).await, old_tables, "a refused key changes nothing");

    let store = SqlStore::from_connection(host.clone(), keyring())
        .await
        .expect("the store opens the old database");

    // The old names are gone, ours are prefixed, the old bookkeeping table (ours alone)
    // is gone and our versions are in ours.
    assert_eq!(tables(&host).await, OUR_TABLES, "only prefixed tables remain");
    assert_eq!(versions_in(&host, "tokenvisor_migrations").await, OUR_VERSIONS);
    // The old layout's versions moved over, and the migrations since were applied.
    assert_eq!(OUR_VERSIONS[..legacy::VERSIONS.len()], legacy::VERSIONS);

    // Nothing lost, every secret still decrypts.
    let integration = store
        .get_integration(data.integration.id)
        .await
        .expect("read the integration")
        .expect("the integration is there");
    assert_eq!(
        integration_fingerprint(&integration),
        integration_fingerprint(&data.integration)
    );
    let connection = store
        .get_connection(data.connection.id)
        .await
        .expect("read the connection")
        .expect("the connection is there");
    assert_eq!(
        connection_fingerprint(&connection),
        connection_fingerprint(&data.connection)
    );
    assert_eq!(
        store
            .list_connections(&ConnectionFilter::default())
            .await
            .expect("list")
            .len(),
        1
    );
    // The upgrade filled in the connection's partition (replicas load by partition).
    let stored_partition = query_strings(
        &host,
        "SELECT CAST(partition_id AS TEXT) AS value FROM tokenvisor_connections",
    )
    .await;
    assert_eq!(
        stored_partition,
        vec![tokenvisor_core::partition_of(data.connection.id).to_string()]
    );
    let attempts = store
        .list_attempts(data.connection.id, 50)
        .await
        .expect("read the history");
    let newest_first: Vec<_> = data.attempts.iter().rev().map(|a| format!("{a:?}")).collect();
    assert_eq!(
        attempts.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
        newest_first
    );

    // Ids keep counting after the old rows (the sequences went with their tables).
    let next = sample_attempt(data.connection.id, 3);
    store.record_attempt(&next).await.expect("record an attempt");
    let attempts = store.list_attempts(data.connection.id, 1).await.expect("history");
    assert_eq!(
        format!("{:?}", attempts[0]),
        format!("{next:?}"),
        "the new attempt is the newest"
    );

    let outbox = store.webhook_outbox();
    assert_eq!(outbox.count("https://hooks.example/a").await.expect("count"), 2);
    let front = outbox
        .front("https://hooks.example/a")
        .await
        .expect("front")
        .expect("a message");
    assert_eq!((front.message_id, front.body), data.outbox[0].clone(), "oldest first");

    match store
        .acquire_refresh_lease(data.connection.id, "replica-b", std::time::Duration::from_secs(30))
        .await
        .expect("ask for the lease")
    {
        LeaseOutcome::Held { owner, .. } => assert_eq!(owner, "replica-a", "the old lease is still held"),
        other => panic!("the old lease is held: {other:?}"),
    }

    let authorization = store
        .take_authorization(&data.authorization.state_hash)
        .await
        .expect("take the authorization")
        .expect("the authorization is there");
    assert_eq!(
        authorization.code_verifier.as_ref().map(SecretString::expose),
        Some("pkce-verifier-1")
    );
    assert_eq!(authorization.connection_id, data.authorization.connection_id);
    assert_eq!(authorization.connection_key, None);
    // (The pool is the host's: the store is dropped, not closed.)
    drop(store);

    // Opening again is a no-op.
    let store = SqlStore::from_connection(host.clone(), keyring())
        .await
        .expect("reopen");
    assert_eq!(tables(&host).await, OUR_TABLES);
    assert!(store.get_connection(data.connection.id).await.expect("read").is_some());
}

/// Everything the catalog says about the schema: relations and their kinds, columns,
/// constraints, indexes, foreign keys; sorted.
async fn schema_description(db: &DatabaseConnection) -> Vec<String> {
    let mut description = Vec::new();
    match db.get_database_backend() {
        DbBackend::Postgres => {
            for sql in [
                "SELECT c.relname || ' kind=' || c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema()",
                "SELECT table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable || ' default=' \
                 || coalesce(column_default, '') || ' identity=' || is_identity \
                 FROM information_schema.columns WHERE table_schema = current_schema()",
                "SELECT conname || ' on ' || conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE connamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
                "SELECT indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = current_schema()",
            ] {
                description.extend(query_strings(db, sql).await);
            }
        }
        _ => {
            description.extend(
                query_strings(
                    db,
                    "SELECT name || ' ' || type || ' on ' || tbl_name FROM sqlite_master WHERE name <> 'sqlite_sequence'",
                )
                .await,
            );
            for table in query_strings(
                db,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'sqlite_sequence'",
            )
            .await
            {
                description.extend(
                    query_strings(
                        db,
                        &format!(
                            "SELECT '{table}.' || name || ' ' || type || ' notnull=' || \"notnull\" || ' pk=' || pk \
                             FROM pragma_table_info('{table}')"
                        ),
                    )
                    .await,
                );
                description.extend(
                    query_strings(
                        db,
                        &format!(
                            "SELECT '{table}.fk ' || \"from\" || ' -> ' || \"table\" || '.' || \"to\" || ' update ' \
                             || on_update || ' delete ' || on_delete FROM pragma_foreign_key_list('{table}')"
                        ),
                    )
                    .await,
                );
                for index in query_strings(db, &format!("SELECT name FROM pragma_index_list('{table}')")).await {
                    description.extend(
                        query_strings(
                            db,
                            &format!(
                                "SELECT '{index} on {table} ' || group_concat(name, ',') FROM \
                                 (SELECT name FROM pragma_index_info('{index}') ORDER BY seqno)"
                            ),
                        )
                        .await,
                    );
                }
            }
            // CHECK constraints only live in the statement text: compare that part, unquoted.
            for table in query_strings(
                db,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%CHECK%'",
            )
            .await
            {
                for sql in query_strings(db, &format!("SELECT sql FROM sqlite_master WHERE name = '{table}'")).await {
                    let check = sql.find("CHECK").map(|at| sql[at..].to_owned()).unwrap_or_default();
                    description.push(format!("{table}.check {}", check.replace('"', "")));
                }
            }
        }
    }
    description.sort();
    description
}

/// The object each catalog line is about: its first word, up to a dot (`table.column`).
fn named_objects(description: &[String]) -> Vec<String> {
    description
        .iter()
        .filter_map(|line| line.split_whitespace().next()?.split('.').next().map(str::to_owned))
        .collect()
}

async fn an_upgraded_database_has_the_schema_of_a_fresh_one_and_every_name_is_prefixed(db: TestDb) {
    let old = host_connection(&db).await;
    old_layout_with_data(&old, &keyring()).await;
    SqlStore::from_connection(old.clone(), keyring())
        .await
        .expect("the old database is upgraded");

    let fresh_db = TestDb::create(db.backend()).await;
    let fresh = host_connection(&fresh_db).await;
    SqlStore::from_connection(fresh.clone(), keyring())
        .await
        .expect("a fresh database is migrated");

    let upgraded = schema_description(&old).await;
    assert_eq!(
        upgraded,
        schema_description(&fresh).await,
        "upgraded and fresh schemas differ"
    );
    for name in named_objects(&upgraded) {
        assert!(
            name.starts_with("tokenvisor_") || name.starts_with("sqlite_autoindex_tokenvisor_"),
            "{name} is not prefixed: {upgraded:#?}"
        );
    }
}

/// A host application's own sea-orm-migration migrator, with the default bookkeeping
/// table `seaql_migrations`: `accounts`, and a `connections` table of its own.
struct HostMigrator;

#[async_trait::async_trait]
impl MigratorTrait for HostMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(HostSchema)]
    }
}

struct HostSchema;

impl MigrationName for HostSchema {
    fn name(&self) -> &str {
        "m20240301_000001_host_accounts_and_connections"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for HostSchema {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("accounts")
                    .col(ColumnDef::new("id").integer().not_null().primary_key())
                    .col(ColumnDef::new("email").text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("connections")
                    .col(ColumnDef::new("id").integer().not_null().primary_key())
                    .col(ColumnDef::new("account_id").integer().not_null())
                    .col(ColumnDef::new("peer").text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_connections_tenant_id")
                    .table("connections")
                    .col("account_id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("connections").to_owned())
            .await?;
        manager.drop_table(Table::drop().table("accounts").to_owned()).await
    }
}

const HOST_VERSION: &str = "m20240301_000001_host_accounts_and_connections";

async fn host_rows(db: &DatabaseConnection) -> Vec<String> {
    let mut rows = query_strings(db, "SELECT CAST(id AS TEXT) || ' ' || email FROM accounts ORDER BY id").await;
    rows.extend(
        query_strings(
            db,
            "SELECT CAST(id AS TEXT) || ' ' || CAST(account_id AS TEXT) || ' ' || peer FROM connections ORDER BY id",
        )
        .await,
    );
    rows
}

async fn insert_host_rows(db: &DatabaseConnection) {
    insert_row(
        db,
        "accounts",
        vec![("id", Value::from(1)), ("email", Value::from("ada@example.com"))],
    )
    .await;
    insert_row(
        db,
        "connections",
        vec![
            ("id", Value::from(10)),
            ("account_id", Value::from(1)),
            ("peer", Value::from("bob")),
        ],
    )
    .await;
}

/// Our side of the shared database: the store opens (and migrates), writes and reads a
/// connection.
async fn tokenvisor_starts(db: &DatabaseConnection) -> SqlStore {
    SqlStore::from_connection(db.clone(), keyring())
        .await
        .expect("tokenvisor starts on the host's database")
}

async fn tokenvisor_stores_a_connection(store: &SqlStore) -> Connection {
    let integration = sample_integration();
    store
        .insert_integration(&integration)
        .await
        .expect("insert an integration");
    let connection = sample_connection(integration.id);
    store.insert_connection(&connection).await.expect("insert a connection");
    connection
}

async fn both_sides_are_intact(db: &DatabaseConnection, store: &SqlStore, connection: &Connection) {
    assert_eq!(
        host_rows(db).await,
        ["1 ada@example.com", "10 1 bob"],
        "the host's rows are untouched"
    );
    assert_eq!(versions_in(db, "seaql_migrations").await, [HOST_VERSION]);
    assert_eq!(
        versions_in(db, "tokenvisor_migrations").await,
        OUR_VERSIONS,
        "our bookkeeping is ours"
    );
    let mut expected: Vec<String> = ["accounts", "connections", "seaql_migrations"]
        .into_iter()
        .chain(OUR_TABLES)
        .map(str::to_owned)
        .collect();
    expected.sort();
    assert_eq!(
        tables(db).await,
        expected,
        "the host's tables and ours, all of ours prefixed"
    );
    let stored = store
        .get_connection(connection.id)
        .await
        .expect("read our connection")
        .expect("our connection is there");
    assert_eq!(connection_fingerprint(&stored), connection_fingerprint(connection));
}

async fn a_host_migrator_and_ours_share_a_database_when_the_host_migrates_first(db: TestDb) {
    let host = host_connection(&db).await;
    HostMigrator::up(&host, None).await.expect("the host migrates");
    insert_host_rows(&host).await;

    let store = tokenvisor_starts(&host).await;
    let connection = tokenvisor_stores_a_connection(&store).await;

    // The next start of the host, then ours.
    HostMigrator::up(&host, None)
        .await
        .expect("the host migrates again after tokenvisor did");
    assert!(
        HostMigrator::get_pending_migrations(&host)
            .await
            .expect("status")
            .is_empty()
    );
    let store = tokenvisor_starts(&host).await;
    both_sides_are_intact(&host, &store, &connection).await;
}

async fn a_host_migrator_and_ours_share_a_database_when_tokenvisor_migrates_first(db: TestDb) {
    let host = host_connection(&db).await;
    let store = tokenvisor_starts(&host).await;
    let connection = tokenvisor_stores_a_connection(&store).await;

    HostMigrator::up(&host, None)
        .await
        .expect("the host migrates after tokenvisor did");
    insert_host_rows(&host).await;

    // The next start of both, tokenvisor first again.
    let store = tokenvisor_starts(&host).await;
    HostMigrator::up(&host, None).await.expect("the host migrates again");
    both_sides_are_intact(&host, &store, &connection).await;
}

async fn a_host_table_named_like_one_of_ours_fails_our_migration_naming_it_and_leaves_nothing_behind(db: TestDb) {
    let host = host_connection(&db).await;
    host.execute_unprepared("CREATE TABLE tokenvisor_connections (id integer PRIMARY KEY, note text NOT NULL)")
        .await
        .expect("the host's table");
    host.execute_unprepared("INSERT INTO tokenvisor_connections (id, note) VALUES (1, 'the host''s')")
        .await
        .expect("the host's row");

    let error = SqlStore::from_connection(host.clone(), keyring())
        .await
        .expect_err("our migration refuses to adopt the host's table");
    assert!(
        error.to_string().contains("tokenvisor_connections"),
        "the error names the table: {error}"
    );
    assert_eq!(
        tables(&host).await,
        ["tokenvisor_connections"],
        "the failed migration leaves nothing behind"
    );
    assert_eq!(
        query_strings(&host, "SELECT note FROM tokenvisor_connections").await,
        ["the host's"]
    );
}

async fn replicas_opening_a_fresh_database_at_once_all_start(db: TestDb) {
    // Each replica has its own pool, as separate processes would.
    let opened = futures::future::join_all((0..4).map(|_| async {
        SqlStore::connect(db.url(), keyring())
            .await
            .map(|store| store.backend_name())
    }))
    .await;
    for result in opened {
        result.expect("every replica starts");
    }
    let host = host_connection(&db).await;
    assert_eq!(tables(&host).await, OUR_TABLES);
    assert_eq!(versions_in(&host, "tokenvisor_migrations").await, OUR_VERSIONS);
}

async fn a_fresh_migration_on_a_shared_database_drops_only_our_tables(db: TestDb) {
    let host = host_connection(&db).await;
    HostMigrator::up(&host, None).await.expect("the host migrates");
    insert_host_rows(&host).await;
    let store = tokenvisor_starts(&host).await;
    let connection = tokenvisor_stores_a_connection(&store).await;

    tokenvisor_migration::Migrator::fresh(&host)
        .await
        .expect("our migrations start over");
    assert_eq!(
        host_rows(&host).await,
        ["1 ada@example.com", "10 1 bob"],
        "the host's rows are untouched"
    );
    assert_eq!(versions_in(&host, "seaql_migrations").await, [HOST_VERSION]);
    assert!(
        store.get_connection(connection.id).await.expect("read").is_none(),
        "our tables start empty"
    );
    let store = tokenvisor_starts(&host).await;
    both_sides_are_intact(&host, &store, &tokenvisor_stores_a_connection(&store).await).await;
}

async fn a_store_opened_without_migrating_refuses_an_unmigrated_database_until_migrate_runs(db: TestDb) {
    let host = host_connection(&db).await;
    HostMigrator::up(&host, None).await.expect("the host migrates");
    insert_host_rows(&host).await;

    let error = SqlStore::from_connection_unmigrated(host.clone(), keyring())
        .await
        .expect_err("an unmigrated database is refused");
    let message = error.to_string();
    assert!(
        message.contains("m20250101_000001_initial") && message.contains("migrate"),
        "names what is pending and what to run: {message}"
    );
    assert_eq!(
        tables(&host).await,
        ["accounts", "connections", "seaql_migrations"],
        "opening without migrating creates nothing"
    );

    tokenvisor_store::migrate(&host).await.expect("migrate");
    tokenvisor_store::migrate(&host)
        .await
        .expect("migrating again is a no-op");
    assert!(
        query_strings(&host, "SELECT key FROM tokenvisor_meta").await.is_empty(),
        "migrations write no data and no key check"
    );

    let store = SqlStore::from_connection_unmigrated(host.clone(), keyring())
        .await
        .expect("a migrated database opens without migrating");
    let connection = tokenvisor_stores_a_connection(&store).await;
    HostMigrator::up(&host, None).await.expect("the host migrates again");
    both_sides_are_intact(&host, &store, &connection).await;
}

async fn an_old_layout_database_opened_without_migrating_is_refused_untouched_until_migrate_upgrades_it(db: TestDb) {
    let host = host_connection(&db).await;
    let data = old_layout_with_data(&host, &keyring()).await;
    let old_tables = tables(&host).await;

    let error = SqlStore::from_connection_unmigrated(host.clone(), keyring())
        .await
        .expect_err("an old-layout database is refused");
    assert!(matches!(error, StoreError::Database(_)), "{error}");
    assert_eq!(tables(&host).await, old_tables, "nothing renamed");

    tokenvisor_store::migrate(&host).await.expect("migrate upgrades it");
    assert_eq!(tables(&host).await, OUR_TABLES);
    let store = SqlStore::from_connection_unmigrated(host.clone(), keyring())
        .await
        .expect("the upgraded database opens without migrating");
    let connection = store
        .get_connection(data.connection.id)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(
        connection_fingerprint(&connection),
        connection_fingerprint(&data.connection)
    );
}

async fn an_old_layout_at_an_earlier_version_is_upgraded_and_completed_and_the_hosts_versions_stay(db: TestDb) {
    let host = host_connection(&db).await;
    // A tokenvisor from before leases and the outbox, and a row of the host's.
    legacy::LegacyMigrator::up(&host, Some(2))
        .await
        .expect("the first two old migrations");
    insert_row(
        &host,
        "seaql_migrations",
        vec![
            ("version", Value::from("m20240101_000001_host_something")),
            ("applied_at", Value::from(1_700_000_000_i64)),
        ],
    )
    .await;

    tokenvisor_store::migrate(&host).await.expect("migrate");
    let mut expected: Vec<&str> = OUR_TABLES.into_iter().chain(["seaql_migrations"]).collect();
    expected.sort();
    assert_eq!(tables(&host).await, expected);
    assert_eq!(versions_in(&host, "tokenvisor_migrations").await, OUR_VERSIONS);
    assert_eq!(
        versions_in(&host, "seaql_migrations").await,
        ["m20240101_000001_host_something"],
        "only our rows left seaql_migrations"
    );
    let store = SqlStore::from_connection_unmigrated(host.clone(), keyring())
        .await
        .expect("opens");
    let connection = tokenvisor_stores_a_connection(&store).await;
    assert_eq!(
        store
            .acquire_refresh_lease(connection.id, "replica-a", std::time::Duration::from_secs(30))
            .await
            .expect("lease"),
        LeaseOutcome::Acquired
    );
}

/// A row of `tokenvisor_connections` as the store wrote it before connection keys.
async fn insert_keyless_connection(db: &DatabaseConnection, connection: &Connection) {
    let keyring = keyring();
    let id = connection.id.0;
    let seal = |plaintext: &str, column: &str| {
        keyring
            .encrypt(plaintext.as_bytes(), format!("connections:{id}:{column}").as_bytes())
            .expect("seal")
    };
    insert_row(
        db,
        "tokenvisor_connections",
        vec![
            ("id", Value::from(id)),
            ("tenant_id", Value::from(connection.tenant_id.as_str().to_owned())),
            ("integration_id", Value::from(connection.integration_id.0)),
            (
                "access_token",
                Value::from(seal(connection.access_token.expose(), "access_token")),
            ),
            (
                "refresh_token",
                Value::from(
                    connection
                        .refresh_token
                        .as_ref()
                        .map(|t| seal(t.expose(), "refresh_token")),
                ),
            ),
            ("token_type", Value::from(connection.token_type.clone())),
            ("scope", Value::from(connection.scope.clone())),
            ("issued_at", Value::from(connection.issued_at)),
            ("expires_at", Value::from(connection.expires_at)),
            ("next_refresh_at", Value::from(connection.next_refresh_at)),
            ("last_refresh_at", Value::from(connection.last_refresh_at)),
            ("status", Value::from(connection.status.as_str())),
            ("is_active", Value::from(connection.is_active)),
            ("refresh_failures", Value::from(connection.refresh_failures)),
            ("consecutive_failures", Value::from(connection.consecutive_failures)),
            ("last_error_code", Value::from(None::<String>)),
            ("last_error_message", Value::from(None::<String>)),
            ("last_error_at", Value::from(None::<DateTime<Utc>>)),
            (
                "metadata",
                Value::from(serde_json::Value::Object(connection.metadata.clone())),
            ),
            ("version", Value::from(connection.version)),
            (
                "partition_id",
                Value::from(i32::from(tokenvisor_core::partition_of(connection.id))),
            ),
            ("created_at", Value::from(connection.created_at)),
            ("updated_at", Value::from(connection.updated_at)),
        ],
    )
    .await;
}

async fn duplicate_connections_of_a_tenant_get_keys_of_their_own_and_the_newest_keeps_default(db: TestDb) {
    let host = host_connection(&db).await;
    // A database at the version before connection keys, where acme connected three times.
    tokenvisor_store::Migrator::up(&host, Some(5))
        .await
        .expect("the migrations before connection keys");
    let integration = sample_integration();
    let seal = |plaintext: &str, aad: String| keyring().encrypt(plaintext.as_bytes(), aad.as_bytes()).expect("seal");
    let integration_id = integration.id.0;
    insert_row(
        &host,
        "tokenvisor_integrations",
        vec![
            ("id", Value::from(integration_id)),
            ("name", Value::from(integration.name.clone())),
            ("provider", Value::from(integration.provider.clone())),
            ("client_id", Value::from(integration.client_id.clone())),
            (
                "client_secret",
                Value::from(seal(
                    integration.client_secret.expose(),
                    format!("integrations:{integration_id}:client_secret"),
                )),
            ),
            ("scopes", Value::from(serde_json::json!(integration.scopes))),
            ("redirect_uri", Value::from(integration.redirect_uri.clone())),
            ("data_center", Value::from(integration.data_center.clone())),
            ("token_url", Value::from(integration.token_url.clone())),
            ("authorize_url", Value::from(integration.authorize_url.clone())),
            ("revoke_url", Value::from(integration.revoke_url.clone())),
            ("settings", Value::from(integration.settings.clone())),
            ("created_at", Value::from(integration.created_at)),
            ("updated_at", Value::from(integration.updated_at)),
        ],
    )
    .await;
    let mut acme = Vec::new();
    for age_minutes in [30, 20, 10] {
        let mut connection = sample_connection(integration.id);
        connection.created_at = now() - chrono::Duration::minutes(age_minutes);
        insert_keyless_connection(&host, &connection).await;
        acme.push(connection);
    }
    let mut other = sample_connection(integration.id);
    other.tenant_id = TenantId::parse("globex").expect("valid tenant");
    insert_keyless_connection(&host, &other).await;

    tokenvisor_store::migrate(&host)
        .await
        .expect("the connection keys migrate");
    assert_eq!(versions_in(&host, "tokenvisor_migrations").await, OUR_VERSIONS);
    let store = SqlStore::from_connection_unmigrated(host.clone(), keyring())
        .await
        .expect("opens");
    let key_of = |id: ConnectionId| {
        let store = &store;
        async move {
            store
                .get_connection(id)
                .await
                .expect("read")
                .expect("still there")
                .connection_key
                .to_string()
        }
    };
    // The newest keeps `default`, the older ones are renamed after their ids.
    assert_eq!(key_of(acme[2].id).await, "default");
    for older in &acme[..2] {
        let simple = older.id.0.simple().to_string();
        let expected = format!("default-{}", &simple[simple.len() - 8..]);
        assert_eq!(key_of(older.id).await, expected);
    }
    assert_eq!(key_of(other.id).await, "default", "one connection: nothing to rename");
    // Every token still decrypts.
    let stored = store.get_connection(acme[0].id).await.expect("read").expect("there");
    assert_eq!(stored.access_token.expose(), acme[0].access_token.expose());

    // From now on one tenant has one connection per integration and key.
    let mut again = sample_connection(integration.id);
    again.connection_key = tokenvisor_core::ConnectionKey::default();
    assert!(matches!(
        store.insert_connection(&again).await,
        Err(StoreError::Conflict(_))
    ));
    again.connection_key = tokenvisor_core::ConnectionKey::parse("sandbox").expect("valid key");
    store
        .insert_connection(&again)
        .await
        .expect("another key is another connection");
}
