//! Invariant 5: no connection's failure, slowness or panic delays or fails another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{ConnectionStatus, EventKind};
use tokenvisor_store::MemoryStore;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::{Harness, fake, many_events, paused_config, settle, sleep_secs};

#[tokio::test(start_paused = true)]
async fn revoked_slow_and_panicking_connections_do_not_disturb_the_other_nine_hundred() {
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        many_events(paused_config()),
    )
    .await;
    let mut connections = Vec::new();
    for i in 0..1000 {
        connections.push(harness.connect(&format!("tenant-{i}")).await);
    }
    settle().await;
    let revoked: Vec<_> = connections[0..100].to_vec();
    let slow: Vec<_> = connections[100..200].to_vec();
    let panicking = connections[200].clone();
    for connection in &revoked {
        harness.fake.revoke_family(connection.tenant_id.as_str());
    }
    for connection in &slow {
        harness
            .fake
            .set_family_latency(connection.tenant_id.as_str(), Duration::from_secs(15));
    }
    harness.tokenvisor.inject_panic(panicking.id);
    settle().await;

    sleep_secs(4 * 3600).await;
    settle().await;

    // Every healthy connection refreshed before each expiry: in 4 hours of 1-hour
    // tokens refreshed 15 minutes early, at least 4 refreshes, and its token is live.
    let events = harness.drain_events();
    let mut refreshed: HashMap<_, Vec<_>> = HashMap::new();
    for event in &events {
        if let EventKind::Refreshed { expires_at } = event.kind {
            refreshed
                .entry(event.connection_id)
                .or_default()
                .push((event.at, expires_at));
        }
    }
    for connection in &connections[201..] {
        let refreshes = refreshed.get(&connection.id).map(Vec::len).unwrap_or(0);
        assert!(refreshes >= 4, "{} refreshed {refreshes} times", connection.tenant_id);
        let token = harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect("healthy token");
        assert!(harness.fake.is_access_token_live(token.secret.expose()));
        let mut previous_expiry = connection.expires_at;
        for (at, expires_at) in &refreshed[&connection.id] {
            assert!(
                *at < previous_expiry,
                "{} refreshed after its token expired",
                connection.tenant_id
            );
            previous_expiry = *expires_at;
        }
    }
    for connection in &slow {
        let token = harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect("slow but healthy");
        assert!(harness.fake.is_access_token_live(token.secret.expose()));
    }
    for connection in &revoked {
        let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
        assert_eq!(stored.status, ConnectionStatus::NeedsReauth, "{}", connection.tenant_id);
        assert_eq!(stored.refresh_failures, 1, "{}", connection.tenant_id);
    }
    // The panicking actor was restarted from the stored state and kept refreshing.
    let stored = harness.store.get_connection(panicking.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert!(refreshed.get(&panicking.id).map(Vec::len).unwrap_or(0) >= 4);
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
}
