//! Start-up streams the supervised connections from the store page by page while it
//! spawns their actors: every connection of every page is supervised, and a row that
//! cannot be read fails start-up as a whole with nothing left running.

use chrono::Utc;
use sea_orm::ConnectionTrait as _;
use sea_orm::sea_query::{Alias, Expr, ExprTrait as _, Query};
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{Connection, ConnectionId, ConnectionStatus, IntegrationId, SecretString, TenantId};
use tokenvisor_store::{SqlStore, Store as _};
use tokenvisor_supervisor::{StartError, Tokenvisor};
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::databases::{TestDatabase, fast_config, open, test_keyring};
use tokenvisor_tests::{Harness, fake, on_both_backends};

on_both_backends!(
    every_connection_of_every_page_is_supervised,
    a_row_that_does_not_decrypt_fails_start_up_and_leaves_no_actor_running,
);

/// `count` connections of `integration` whose tokens were issued now and expire after
/// `lifetime`, inserted in one call.
async fn insert(
    store: &SqlStore,
    integration: IntegrationId,
    count: usize,
    lifetime: chrono::Duration,
) -> Vec<ConnectionId> {
    let now = Utc::now();
    let connections: Vec<Connection> = (0..count)
        .map(|i| Connection {
            id: ConnectionId::new(),
            tenant_id: TenantId::parse(format!("tenant-{i}")).expect("valid tenant"),
            integration_id: integration,
            connection_key: tokenvisor_core::ConnectionKey::default(),
            access_token: SecretString::new(format!("access-{i}")),
            refresh_token: Some(SecretString::new(format!("refresh-{i}"))),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now,
            expires_at: now + lifetime,
            next_refresh_at: None,
            last_refresh_at: None,
            status: ConnectionStatus::Active,
            is_active: true,
            refresh_failures: 0,
            consecutive_failures: 0,
            last_error: None,
            metadata: Default::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        })
        .collect();
    store.insert_connections(&connections).await.expect("insert");
    connections.into_iter().map(|c| c.id).collect()
}

/// Registers the fake's integration through a first instance, then shuts it down.
async fn integration(database: &TestDatabase) -> (Harness, Arc<SqlStore>) {
    let store = open(database, test_keyring()).await;
    let harness = Harness::start(store.clone(), fake(Dialect::Generic, 3600).await, fast_config()).await;
    harness.tokenvisor.shutdown().await;
    (harness, store)
}

async fn every_connection_of_every_page_is_supervised(database: TestDatabase) {
    let (harness, store) = integration(&database).await;
    // Start-up pages hold 10,000 connections: three pages, the last one partial.
    let ids = insert(&store, harness.integration.id, 25_001, chrono::Duration::hours(1)).await;
    let tokenvisor = Tokenvisor::start(store.clone(), fast_config()).await.expect("start");
    assert_eq!(tokenvisor.supervised_count(), ids.len());
    for id in ids.iter().step_by(997).chain(ids.last()) {
        let token = tokenvisor.tokens().access_token(*id).await.expect("token from memory");
        assert!(token.secret.expose().starts_with("access-"));
    }
    assert_eq!(harness.fake.token_requests(), 0, "valid tokens are not refreshed");
    tokenvisor.shutdown().await;
}

async fn a_row_that_does_not_decrypt_fails_start_up_and_leaves_no_actor_running(database: TestDatabase) {
    let (harness, store) = integration(&database).await;
    let ids = insert(&store, harness.integration.id, 12_000, chrono::Duration::hours(1)).await;
    // Then every token is made to live 32 s from now, in one statement, just before
    // start-up: refreshed about 23 s from now (a quarter of the lifetime ahead, less
    // jitter) by any actor still running. The window starts after the insertion, which
    // takes long on a loaded machine, so only start-up itself has to finish within it.
    let now = Utc::now();
    let lifetimes = Query::update()
        .table(Alias::new("tokenvisor_connections"))
        .value(Alias::new("issued_at"), now)
        .value(Alias::new("expires_at"), now + chrono::Duration::seconds(32))
        .to_owned();
    let changed = store.connection().execute(&lifetimes).await.expect("new lifetimes");
    assert_eq!(changed.rows_affected(), 12_000);
    let read_back = store.get_connection(ids[0]).await.expect("reads").expect("present");
    let lifetime_ms = (read_back.expires_at - now).num_milliseconds();
    assert!(
        (31_000..=32_000).contains(&lifetime_ms),
        "the store reads the new lifetime: {lifetime_ms} ms"
    );
    let inserted_at = tokio::time::Instant::now();
    let corrupted = *ids.last().expect("inserted");
    let update = Query::update()
        .table(Alias::new("tokenvisor_connections"))
        .value(Alias::new("access_token"), vec![0u8; 40])
        .and_where(Expr::col(Alias::new("id")).eq(corrupted.0))
        .to_owned();
    let changed = store.connection().execute(&update).await.expect("corrupt one row");
    assert_eq!(changed.rows_affected(), 1);

    let error = Tokenvisor::start(store.clone(), fast_config())
        .await
        .expect_err("a row that does not decrypt fails start-up");
    assert!(matches!(error, StartError::Store(_)), "{error}");
    assert!(
        error.to_string().contains(&corrupted.to_string()),
        "the error names the row: {error}"
    );

    assert_eq!(
        harness.fake.token_requests(),
        0,
        "start-up failed before any token was due (it took {:?})",
        inserted_at.elapsed()
    );
    // Past the refresh time of every token: no actor of the failed start-up refreshed.
    tokio::time::sleep_until(inserted_at + Duration::from_secs(26)).await;
    assert_eq!(
        harness.fake.token_requests(),
        0,
        "an actor of the failed start-up kept running"
    );
}
