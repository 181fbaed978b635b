//! Invariant 6 (transient half) and invariant 4: transient failures are retried with
//! backoff, never require re-authorization, and recover by themselves.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{ConnectionStatus, EventKind};
use tokenvisor_store::MemoryStore;
use tokenvisor_supervisor::TokenError;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};

#[tokio::test(start_paused = true)]
async fn a_provider_outage_degrades_then_recovers_without_reauthorization() {
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("outage").await;
    // The provider answers 503 for the next 8 requests.
    harness
        .fake
        .fail_next(8, 503, serde_json::json!({"error": "temporarily_unavailable"}));
    sleep_secs(2700).await;
    settle().await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Degraded);
    assert!(stored.consecutive_failures >= 1);
    // The current token is still valid and still handed out.
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("still valid");
    assert_eq!(token.secret, connection.access_token);

    sleep_secs(900).await;
    settle().await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active, "recovered by itself");
    assert_eq!(stored.refresh_failures, 0);
    assert!(stored.is_active);
    assert_eq!(harness.fake.refreshes_for("outage"), 1);
    let events = harness.drain_events();
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::RefreshFailed { .. })));
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::Recovered { .. })));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::NeedsReauthorization { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_outage_with_an_expired_token_gives_a_typed_error_and_never_needs_reauth() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("long-outage").await;
    harness.fake.fail_next(100_000, 502, serde_json::Value::Null);
    sleep_secs(2 * 3600).await;
    let error = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect_err("expired during outage");
    assert!(
        matches!(error, TokenError::ProviderUnavailable { ref code, .. } if code == "http_502"),
        "{error:?}"
    );
    let requests = harness.fake.token_requests();
    assert!(
        requests < 60,
        "capped backoff, not a retry storm: {requests} requests in 2 hours"
    );
    sleep_secs(10 * 3600).await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Degraded);
    assert_eq!(stored.refresh_failures, 0, "transient failures never escalate");
    harness.fake.fail_next(0, 200, serde_json::Value::Null);
    sleep_secs(600).await;
    settle().await;
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("recovered");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("throttled").await;
    harness.fake.set_retry_after(Some(Duration::from_secs(300)));
    harness
        .fake
        .fail_next(1, 429, serde_json::json!({"error": "slow_down"}));
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("throttled");
    assert!(matches!(error, TokenError::ProviderUnavailable { .. }), "{error:?}");
    let after_failure = harness.fake.token_requests();
    sleep_secs(290).await;
    assert_eq!(
        harness.fake.token_requests(),
        after_failure,
        "nothing before Retry-After"
    );
    sleep_secs(120).await;
    settle().await;
    assert_eq!(harness.fake.refreshes_for("throttled"), 1, "retried after Retry-After");
}
