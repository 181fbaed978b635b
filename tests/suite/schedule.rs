//! Invariant 4 and the refresh schedule: tokens are refreshed ahead of expiry, no more
//! often than planned, and restarts serve stored tokens without refreshing them.

use std::collections::HashMap;
use std::sync::Arc;
use tokenvisor_core::EventKind;
use tokenvisor_store::MemoryStore;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::{Harness, fake, many_events, paused_config, settle, sleep_secs};

#[tokio::test(start_paused = true)]
async fn a_thousand_connections_over_a_simulated_day_are_all_refreshed_before_expiry_and_no_more_often_than_planned() {
    let _heavy = tokenvisor_tests::heavy().await;
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::NonRotating, 3600).await,
        many_events(paused_config()),
    )
    .await;
    let mut connections = Vec::new();
    for i in 0..1000 {
        connections.push(harness.connect(&format!("tenant-{i}")).await);
        if i % 100 == 0 {
            // Connections are registered over time, not all at once.
            sleep_secs(37).await;
        }
    }
    sleep_secs(24 * 3600).await;
    settle().await;

    let mut refreshed: HashMap<_, Vec<_>> = HashMap::new();
    for event in harness.drain_events() {
        if let EventKind::Refreshed { expires_at } = event.kind {
            refreshed
                .entry(event.connection_id)
                .or_default()
                .push((event.at, expires_at));
        }
    }
    for connection in &connections {
        let refreshes = &refreshed[&connection.id];
        // 1-hour tokens refreshed 15 minutes (minus up to 30 s jitter) early: one refresh
        // every 45 minutes at most, so at most 24h / 44.5m + 1 refreshes, and at least 31.
        assert!(
            refreshes.len() >= 31 && refreshes.len() <= 33,
            "{} refreshes: {}",
            connection.tenant_id,
            refreshes.len()
        );
        let mut previous_expiry = connection.expires_at;
        for (at, expires_at) in refreshes {
            let margin = previous_expiry - *at;
            assert!(
                margin >= chrono::Duration::minutes(14),
                "refreshed only {margin} before expiry"
            );
            assert!(
                margin <= chrono::Duration::minutes(16),
                "refreshed {margin} before expiry: too early"
            );
            previous_expiry = *expires_at;
        }
        let token = harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect("token");
        assert!(token.expires_at - harness.config.clock.now() >= chrono::Duration::seconds(60));
    }
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_are_refreshed_at_a_quarter_of_their_lifetime_not_in_a_loop() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 120).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("short").await;
    sleep_secs(3600).await;
    settle().await;
    // A 120 s token refreshes 30 s before expiry: every ~90 s, about 40 times an hour.
    let refreshes = harness.fake.refreshes_for("short");
    assert!((38..=42).contains(&refreshes), "{refreshes} refreshes in an hour");
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("token");
    assert!(token.expires_at - harness.config.clock.now() >= chrono::Duration::seconds(30));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_refreshed_once_and_a_stale_report_costs_no_provider_call() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("rejected").await;
    settle().await;
    let fresh = harness
        .tokenvisor
        .tokens()
        .token_rejected(connection.id, &connection.access_token)
        .await
        .expect("new token");
    assert_ne!(fresh.secret, connection.access_token);
    assert_eq!(harness.fake.refreshes(), 1);
    // Other callers still holding the old token report it too: they get the new one.
    for _ in 0..10 {
        let token = harness
            .tokenvisor
            .tokens()
            .token_rejected(connection.id, &connection.access_token)
            .await
            .expect("token");
        assert_eq!(token.secret, fresh.secret);
    }
    assert_eq!(harness.fake.refreshes(), 1);
    // Reporting the new token in a tight loop never exceeds the spacing limit.
    for _ in 0..5 {
        let current = harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect("token");
        harness
            .tokenvisor
            .tokens()
            .token_rejected(connection.id, &current.secret)
            .await
            .expect("token");
    }
    let times = harness.fake.refresh_times_for("rejected");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= std::time::Duration::from_secs(10),
            "refreshes closer than the spacing"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_subscribes_before_start_sees_the_start_up_refreshes() {
    let store = Arc::new(MemoryStore::new());
    let first = Harness::start(store.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
    let connection = first.connect("early").await;
    first.tokenvisor.shutdown().await;
    assert!(!first.tokenvisor.is_running());
    // The stored token is inside its lead when the next process starts.
    sleep_secs(3000).await;
    let bus = tokenvisor_core::EventBus::new(64);
    let mut events = bus.subscribe();
    // Same wall clock as the first process (it follows tokio's paused time).
    let config = tokenvisor_supervisor::TokenvisorConfig {
        event_bus: Some(bus),
        ..first.config.clone()
    };
    let restarted = first.restart(config).await;
    assert!(restarted.is_running());
    sleep_secs(30).await;
    settle().await;
    let event = events
        .try_recv()
        .expect("the start-up refresh was published to the early subscriber");
    assert_eq!(event.connection_id, connection.id);
    assert!(matches!(event.kind, EventKind::Refreshed { .. }));
    restarted.shutdown().await;
}
