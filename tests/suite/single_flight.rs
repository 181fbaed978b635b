//! Invariant 3: at most one refresh per connection in flight.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_store::MemoryStore;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_callers_on_an_expired_token_cause_exactly_one_refresh() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("acme").await;
    settle().await;
    // Let the token expire without refreshing: stop the schedule by jumping past expiry
    // while the provider is slow, so every caller arrives while the refresh is in flight.
    harness.fake.set_latency(Duration::from_secs(2));
    sleep_secs(3600 - 900 - 60).await;
    let before = harness.fake.refreshes();

    let mut callers = Vec::new();
    for _ in 0..50 {
        let tokenvisor = harness.tokenvisor.clone();
        callers.push(tokio::spawn(async move {
            tokenvisor.tokens().force_refresh(connection.id).await
        }));
    }
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().expect("token"));
    }
    assert_eq!(harness.fake.refreshes() - before, 1, "one refresh for fifty callers");
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
    assert!(
        tokens.windows(2).all(|w| w[0].secret == w[1].secret),
        "every caller got the same new token"
    );
    assert!(harness.fake.is_access_token_live(tokens[0].secret.expose()));
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_access_token_calls_on_an_expired_token_share_one_refresh() {
    let store = Arc::new(MemoryStore::new());
    let harness = Harness::start(store.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
    // A connection whose token already expired when it was imported.
    let issued = harness.fake.issue_grant("late");
    let now = harness.config.clock.now();
    let connection = harness
        .tokenvisor
        .connections()
        .register(tokenvisor_supervisor::NewConnection {
            tenant_id: tokenvisor_core::TenantId::parse("late").unwrap(),
            integration_id: harness.integration.id,
            connection_key: Default::default(),
            access_token: tokenvisor_core::SecretString::new(issued.access_token.as_str()),
            refresh_token: Some(tokenvisor_core::SecretString::new(issued.refresh_token.as_str())),
            token_type: None,
            scope: None,
            expires_at: Some(now - chrono::Duration::seconds(10)),
            metadata: Default::default(),
        })
        .await
        .unwrap();
    harness.fake.set_latency(Duration::from_millis(500));
    let mut callers = Vec::new();
    for _ in 0..50 {
        let tokenvisor = harness.tokenvisor.clone();
        callers.push(tokio::spawn(async move {
            tokenvisor.tokens().access_token(connection.id).await
        }));
    }
    for caller in callers {
        let token = caller.await.unwrap().expect("token");
        assert!(token.expires_at > harness.config.clock.now() + chrono::Duration::seconds(60));
    }
    assert_eq!(harness.fake.refreshes(), 1);
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_actor_restarted_during_a_refresh_does_not_start_a_second_one() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("crashy").await;
    settle().await;
    harness.fake.set_latency(Duration::from_secs(5));
    let tokenvisor = harness.tokenvisor.clone();
    let forced = tokio::spawn(async move { tokenvisor.tokens().force_refresh(connection.id).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The actor crashes while its refresh is at the provider; the restarted actor is
    // asked for a refresh at once.
    harness.tokenvisor.inject_panic(connection.id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("token after restart");
    let _ = forced.await;
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
    assert_eq!(harness.fake.reuse_events(), 0);
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("crashy")
    );
}
