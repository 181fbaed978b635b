//! Invariant 6 (permanent half) and invariant 4's typed errors: a permanent failure
//! escalates exactly once, and afterwards callers get a typed error with no provider call.

use std::sync::Arc;
use tokenvisor_core::{ConnectionStatus, EventKind};
use tokenvisor_store::MemoryStore;
use tokenvisor_supervisor::TokenError;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};

#[tokio::test(start_paused = true)]
async fn a_revoked_grant_escalates_once_to_needs_reauth_and_stops_calling_the_provider() {
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("revoked").await;
    let healthy = harness.connect("healthy").await;
    harness.fake.revoke_family("revoked");
    // A day of scheduled refreshes.
    sleep_secs(24 * 3600).await;
    settle().await;

    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);
    assert!(!stored.is_active);
    assert_eq!(stored.refresh_failures, 1);
    assert_eq!(
        stored.last_error.as_ref().map(|e| e.code.as_str()),
        Some("invalid_grant")
    );
    assert_eq!(harness.fake.refreshes_for("revoked"), 0);

    let escalations: Vec<_> = harness
        .drain_events()
        .into_iter()
        .filter(|e| e.connection_id == connection.id && matches!(e.kind, EventKind::NeedsReauthorization { .. }))
        .collect();
    assert_eq!(escalations.len(), 1, "exactly one needs-reauthorization event");

    let requests_before = harness.fake.token_requests();
    let healthy_before = harness.fake.refreshes_for("healthy");
    let error = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect_err("needs reauth");
    assert!(
        matches!(error, TokenError::NeedsReauthorization { ref code, .. } if code == "invalid_grant"),
        "{error:?}"
    );
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("needs reauth");
    assert!(matches!(error, TokenError::NeedsReauthorization { .. }));
    sleep_secs(3600).await;
    let healthy_refreshes = harness.fake.refreshes_for("healthy") - healthy_before;
    assert_eq!(
        harness.fake.token_requests() - requests_before,
        healthy_refreshes,
        "no provider call for the escalated connection"
    );

    // The other tenant never noticed.
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(healthy.id)
        .await
        .expect("healthy token");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
    assert!(harness.fake.refreshes_for("healthy") >= 24);
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_refresh_token_escalates_when_its_token_can_no_longer_be_handed_out() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let issued = harness.fake.issue_grant("no-rt");
    let now = harness.config.clock.now();
    let connection = harness
        .tokenvisor
        .connections()
        .register(tokenvisor_supervisor::NewConnection {
            tenant_id: tokenvisor_core::TenantId::parse("no-rt").unwrap(),
            integration_id: harness.integration.id,
            connection_key: Default::default(),
            access_token: tokenvisor_core::SecretString::new(issued.access_token.as_str()),
            refresh_token: None,
            token_type: None,
            scope: None,
            expires_at: Some(now + chrono::Duration::seconds(3600)),
            metadata: Default::default(),
        })
        .await
        .unwrap();
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("valid while it lasts");
    assert_eq!(token.secret.expose(), issued.access_token);
    sleep_secs(3600).await;
    settle().await;
    let error = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect_err("expired, nothing to refresh with");
    assert!(
        matches!(error, TokenError::NeedsReauthorization { ref code, .. } if code == "no_refresh_token"),
        "{error:?}"
    );
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);
    assert_eq!(stored.refresh_failures, 1);
    assert_eq!(harness.fake.token_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn deactivated_connections_answer_disabled_and_activate_brings_them_back() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("ops").await;
    let disabled = harness
        .tokenvisor
        .connections()
        .deactivate(connection.id)
        .await
        .expect("deactivate");
    assert_eq!(disabled.status, ConnectionStatus::Disabled);
    assert_eq!(
        harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect_err("disabled"),
        TokenError::Disabled
    );
    sleep_secs(2 * 3600).await;
    assert_eq!(
        harness.fake.token_requests(),
        0,
        "a disabled connection is not refreshed"
    );
    harness
        .tokenvisor
        .connections()
        .activate(connection.id)
        .await
        .expect("activate");
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("token after activation");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
}

#[tokio::test(start_paused = true)]
async fn an_actor_that_keeps_crashing_escalates_after_its_restart_budget() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("crash-loop").await;
    let budget = harness.config.restart_budget.max_restarts;
    for _ in 0..=budget {
        harness.tokenvisor.inject_panic(connection.id);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        settle().await;
    }
    settle().await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);
    assert_eq!(stored.refresh_failures, 1);
    assert_eq!(
        stored.last_error.as_ref().map(|e| e.code.as_str()),
        Some("actor_crash_loop")
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_connections_are_not_found() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let error = harness
        .tokenvisor
        .tokens()
        .access_token(tokenvisor_core::ConnectionId::new())
        .await
        .expect_err("unknown");
    assert_eq!(error, TokenError::NotFound);
}
