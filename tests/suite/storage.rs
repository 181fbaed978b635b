//! The invariants that involve storage, on a real SQLite file and a real PostgreSQL
//! database, in real time with tokens living a few seconds.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{ConnectionStatus, EventKind};
use tokenvisor_store::{Keyring, SqlStore, Store};
use tokenvisor_supervisor::{TokenError, Tokenvisor};
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::databases::{TestDatabase, fast_config, open, test_keyring};
use tokenvisor_tests::faulty_store::FaultyStore;
use tokenvisor_tests::{Harness, fake, on_both_backends};

async fn harness(database: &TestDatabase, dialect: Dialect, expires_in: u64) -> Harness {
    let store: Arc<dyn Store> = open(database, test_keyring()).await;
    Harness::start(store, fake(dialect, expires_in).await, fast_config()).await
}

async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

on_both_backends!(
    refresh_keeps_the_stored_refresh_token_when_the_answer_omits_it,
    a_rotated_refresh_token_is_committed_with_its_access_token,
    tokens_are_committed_before_they_are_handed_out,
    fifty_concurrent_callers_share_one_refresh,
    scheduled_refreshes_keep_short_lived_tokens_valid,
    a_revoked_grant_escalates_exactly_once,
    a_transient_outage_recovers_without_reauthorization,
    a_restarted_supervisor_serves_stored_tokens_without_refreshing,
    a_wrong_encryption_key_fails_start_up_and_changes_nothing,
);

async fn refresh_keeps_the_stored_refresh_token_when_the_answer_omits_it(database: TestDatabase) {
    let harness = harness(&database, Dialect::NonRotating, 3600).await;
    let connection = harness.connect("zoho-like").await;
    for _ in 0..3 {
        harness
            .tokenvisor
            .tokens()
            .force_refresh(connection.id)
            .await
            .expect("refresh");
        tokio::time::sleep(Duration::from_millis(550)).await;
    }
    assert_eq!(harness.fake.refreshes(), 3);
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.refresh_token, connection.refresh_token);
    harness.tokenvisor.shutdown().await;
}

async fn a_rotated_refresh_token_is_committed_with_its_access_token(database: TestDatabase) {
    let harness = harness(&database, Dialect::Rotating { grace: Duration::ZERO }, 3600).await;
    let connection = harness.connect("jira-like").await;
    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("refresh");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.access_token, token.secret);
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("jira-like")
    );
    harness.tokenvisor.shutdown().await;
}

async fn tokens_are_committed_before_they_are_handed_out(database: TestDatabase) {
    let faulty = Arc::new(FaultyStore::new(open(&database, test_keyring()).await));
    let store: Arc<dyn Store> = faulty.clone();
    let harness = Harness::start(
        store,
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        fast_config(),
    )
    .await;
    let connection = harness.connect("tenant").await;
    faulty.set_fail_writes(true);
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("not committed, not handed out");
    assert!(matches!(error, TokenError::StoreUnavailable(_)), "{error:?}");
    faulty.set_fail_writes(false);
    wait_until("the kept tokens are committed", async || {
        let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
        stored.access_token != connection.access_token
    })
    .await;
    assert_eq!(
        harness.fake.refreshes(),
        1,
        "committed the kept tokens without a second provider call"
    );
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("tenant")
    );
    // The actor learns of the commit just after the row changes: until then it may still
    // hand out the previous access token (valid, and committed before it).
    wait_until("the committed token is handed out", async || {
        let token = harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect("token");
        token.secret == stored.access_token
    })
    .await;
    assert_eq!(harness.fake.reuse_events(), 0);
    harness.tokenvisor.shutdown().await;
}

async fn fifty_concurrent_callers_share_one_refresh(database: TestDatabase) {
    let harness = harness(&database, Dialect::Rotating { grace: Duration::ZERO }, 3600).await;
    let connection = harness.connect("busy").await;
    harness.fake.set_latency(Duration::from_millis(300));
    let mut callers = Vec::new();
    for _ in 0..50 {
        let tokenvisor = harness.tokenvisor.clone();
        let token = connection.access_token.clone();
        callers.push(tokio::spawn(async move {
            tokenvisor.tokens().token_rejected(connection.id, &token).await
        }));
    }
    for caller in callers {
        let token = caller.await.unwrap().expect("token");
        assert_ne!(token.secret, connection.access_token);
    }
    assert_eq!(harness.fake.refreshes(), 1);
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
    harness.tokenvisor.shutdown().await;
}

async fn scheduled_refreshes_keep_short_lived_tokens_valid(database: TestDatabase) {
    let harness = harness(&database, Dialect::Rotating { grace: Duration::ZERO }, 4).await;
    let mut connections = Vec::new();
    for i in 0..5 {
        connections.push(harness.connect(&format!("short-{i}")).await);
    }
    // Five seconds of 4-second tokens: each must have been refreshed ahead of expiry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        for connection in &connections {
            let token = harness
                .tokenvisor
                .tokens()
                .access_token(connection.id)
                .await
                .expect("token");
            assert!(harness.fake.is_access_token_live(token.secret.expose()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for connection in &connections {
        assert!(harness.fake.refreshes_for(connection.tenant_id.as_str()) >= 1);
        let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
        assert_eq!(stored.status, ConnectionStatus::Active);
    }
    assert_eq!(harness.fake.reuse_events(), 0);
    harness.tokenvisor.shutdown().await;
}

async fn a_revoked_grant_escalates_exactly_once(database: TestDatabase) {
    let mut harness = harness(&database, Dialect::Generic, 4).await;
    let revoked = harness.connect("revoked").await;
    let healthy = harness.connect("healthy").await;
    harness.fake.revoke_family("revoked");
    wait_until("the revoked connection is escalated", async || {
        let stored = harness.store.get_connection(revoked.id).await.unwrap().unwrap();
        stored.status == ConnectionStatus::NeedsReauth
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = harness.store.get_connection(revoked.id).await.unwrap().unwrap();
    assert!(!stored.is_active);
    assert_eq!(stored.refresh_failures, 1);
    let error = harness
        .tokenvisor
        .tokens()
        .access_token(revoked.id)
        .await
        .expect_err("needs reauth");
    assert!(matches!(error, TokenError::NeedsReauthorization { .. }), "{error:?}");
    let escalations = harness
        .drain_events()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::NeedsReauthorization { .. }))
        .count();
    assert_eq!(escalations, 1);
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(healthy.id)
        .await
        .expect("the other tenant carries on");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
    harness.tokenvisor.shutdown().await;
}

async fn a_transient_outage_recovers_without_reauthorization(database: TestDatabase) {
    let harness = harness(&database, Dialect::Generic, 3600).await;
    let connection = harness.connect("outage").await;
    harness
        .fake
        .fail_next(3, 503, serde_json::json!({"error": "server_error"}));
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("provider down");
    assert!(matches!(error, TokenError::ProviderUnavailable { .. }), "{error:?}");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Degraded);
    assert_eq!(
        stored.last_error.as_ref().map(|e| e.code.as_str()),
        Some("server_error")
    );
    wait_until("the connection recovers", async || {
        let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
        stored.status == ConnectionStatus::Active
    })
    .await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.refresh_failures, 0);
    assert!(stored.last_error.is_none());
    let history = harness
        .tokenvisor
        .connections()
        .history(connection.id, 10)
        .await
        .unwrap();
    assert_eq!(history.len(), 4, "three failures and one success are in the history");
    harness.tokenvisor.shutdown().await;
}

async fn a_restarted_supervisor_serves_stored_tokens_without_refreshing(database: TestDatabase) {
    let harness = harness(&database, Dialect::Generic, 3600).await;
    let mut connections = Vec::new();
    for i in 0..10 {
        connections.push(harness.connect(&format!("tenant-{i}")).await);
    }
    harness.tokenvisor.shutdown().await;

    let store: Arc<dyn Store> = open(&database, test_keyring()).await;
    let restarted = Tokenvisor::start(store, fast_config()).await.expect("restart");
    assert_eq!(restarted.supervised_count(), 10);
    for connection in &connections {
        let token = restarted
            .tokens()
            .access_token(connection.id)
            .await
            .expect("stored token");
        assert_eq!(token.secret, connection.access_token);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        harness.fake.token_requests(),
        0,
        "valid stored tokens are not refreshed"
    );
    restarted.shutdown().await;
}

async fn a_wrong_encryption_key_fails_start_up_and_changes_nothing(database: TestDatabase) {
    let harness = harness(&database, Dialect::Generic, 3600).await;
    let connection = harness.connect("secret-keeper").await;
    harness.tokenvisor.shutdown().await;
    let wrong = Keyring::new([9u8; 32], vec![]);
    let error = SqlStore::connect(database.url(), wrong)
        .await
        .expect_err("wrong key refused");
    assert!(error.to_string().contains("key"), "{error}");
    let store = open(&database, test_keyring()).await;
    let stored = store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.access_token, connection.access_token);
    assert_eq!(stored.refresh_token, connection.refresh_token);
}
