//! Several replicas on one database (invariant 3, cluster-wide): with the refresh lease
//! on, one replica calls the provider and the others adopt what it committed, so a
//! rotating provider never sees a refresh token twice.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvisor_store::LeaseOutcome;
use tokenvisor_supervisor::{Tokenvisor, TokenvisorConfig};
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::databases::{TestDatabase, fast_config, open, test_keyring};
use tokenvisor_tests::faulty_store::FaultyStore;
use tokenvisor_tests::{Harness, fake, on_both_backends};

on_both_backends!(
    two_replicas_refresh_a_connection_once_and_hand_out_the_same_tokens,
    a_lease_left_by_a_dead_replica_runs_out_and_the_refresh_goes_ahead,
    tokens_awaiting_their_commit_keep_the_lease_so_no_replica_refreshes_from_the_old_token,
    waiting_for_another_replicas_lease_holds_no_refresh_slot,
    a_revoked_grant_is_presented_once_for_all_replicas,
);

fn with_lease() -> TokenvisorConfig {
    TokenvisorConfig {
        cluster_lease: Some(Duration::from_secs(10)),
        ..fast_config()
    }
}

async fn two_replicas_refresh_a_connection_once_and_hand_out_the_same_tokens(database: TestDatabase) {
    // Grace 0: a second use of a rotated-away refresh token revokes the family.
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await;
    let first = Harness::start(open(&database, test_keyring()).await, fake, with_lease()).await;
    let connection = first.connect("shared-tenant").await;
    let second = Tokenvisor::start(open(&database, test_keyring()).await, with_lease())
        .await
        .expect("second replica starts");
    assert_eq!(second.supervised_count(), 1);
    first.fake.set_latency(Duration::from_millis(400));

    for round in 1..=3u64 {
        let (a, b) = tokio::join!(
            first.tokenvisor.tokens().force_refresh(connection.id),
            second.tokens().force_refresh(connection.id)
        );
        let (a, b) = (a.expect("first replica"), b.expect("second replica"));
        assert_eq!(
            first.fake.refreshes(),
            round,
            "round {round}: one provider call for both replicas"
        );
        assert_eq!(
            a.secret, b.secret,
            "round {round}: both replicas hand out the committed token"
        );
        assert!(first.fake.is_access_token_live(a.secret.expose()));
    }
    assert_eq!(first.fake.reuse_events(), 0);
    assert_eq!(first.fake.family_revocations(), 0);
    let stored = first.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        first.fake.current_refresh_token("shared-tenant")
    );
    assert_eq!(stored.refresh_failures, 0);
    second.shutdown().await;
    first.tokenvisor.shutdown().await;
}

async fn a_lease_left_by_a_dead_replica_runs_out_and_the_refresh_goes_ahead(database: TestDatabase) {
    let harness = Harness::start(
        open(&database, test_keyring()).await,
        fake(Dialect::Generic, 3600).await,
        with_lease(),
    )
    .await;
    let connection = harness.connect("tenant").await;
    let store = &harness.store;

    // A replica died holding the lease for two more seconds (from about now: the
    // round trips below take long on a loaded machine, so the wait is measured from here).
    let leased_at = Instant::now();
    let taken = store
        .acquire_refresh_lease(connection.id, "dead-replica", Duration::from_secs(2))
        .await;
    assert_eq!(taken.expect("lease"), LeaseOutcome::Acquired);
    let other = store
        .acquire_refresh_lease(connection.id, "other", Duration::from_secs(5))
        .await
        .expect("lease answer");
    assert!(
        matches!(other, LeaseOutcome::Held { ref owner, remaining }
            if owner == "dead-replica" && remaining <= Duration::from_secs(2)),
        "{other:?}"
    );
    let unknown = store
        .acquire_refresh_lease(tokenvisor_core::ConnectionId::new(), "other", Duration::from_secs(2))
        .await
        .expect("lease answer");
    assert_eq!(unknown, LeaseOutcome::Missing);

    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("refresh after the lease ran out");
    assert!(
        leased_at.elapsed() >= Duration::from_millis(1900),
        "refreshed {:?} after the 2 s lease was taken",
        leased_at.elapsed()
    );
    assert_eq!(harness.fake.refreshes(), 1);
    assert_ne!(token.secret, connection.access_token);

    // The lease was given back: the next refresh does not wait.
    let asked = Instant::now();
    harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("second refresh");
    // A lease not given back would hold it for the configured lease (10 s).
    assert!(asked.elapsed() < Duration::from_secs(5), "waited {:?}", asked.elapsed());
    assert_eq!(harness.fake.refreshes(), 2);
    harness.tokenvisor.shutdown().await;
}

async fn tokens_awaiting_their_commit_keep_the_lease_so_no_replica_refreshes_from_the_old_token(
    database: TestDatabase,
) {
    let faulty = Arc::new(FaultyStore::new(open(&database, test_keyring()).await));
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await;
    let first = Harness::start(faulty.clone(), fake, with_lease()).await;
    let connection = first.connect("tenant").await;
    let second = Tokenvisor::start(open(&database, test_keyring()).await, with_lease())
        .await
        .expect("second replica starts");

    // The first replica gets rotated tokens but cannot commit them: it keeps them, and the lease.
    faulty.set_fail_writes(true);
    first
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("not committed, not handed out");
    assert_eq!(first.fake.refreshes(), 1);

    // The second replica must not refresh from the stored, rotated-away token: it waits.
    let waiting = tokio::spawn({
        let second = second.clone();
        async move { second.tokens().force_refresh(connection.id).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        first.fake.refreshes(),
        1,
        "the second replica refreshed from the old token"
    );
    assert!(!waiting.is_finished());

    // The database comes back: the kept tokens are committed and the second replica adopts them.
    faulty.set_fail_writes(false);
    let adopted = waiting.await.expect("task").expect("adopted token");
    let stored = first.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(adopted.secret, stored.access_token);
    assert_eq!(first.fake.refreshes(), 1);
    assert_eq!(first.fake.reuse_events(), 0);
    assert_eq!(first.fake.family_revocations(), 0);
    second.shutdown().await;
    first.tokenvisor.shutdown().await;
}

async fn waiting_for_another_replicas_lease_holds_no_refresh_slot(database: TestDatabase) {
    // One refresh slot in this process: a wait for a lease must not sit on it.
    let config = TokenvisorConfig {
        max_concurrent_refreshes: 1,
        ..with_lease()
    };
    let harness = Harness::start(
        open(&database, test_keyring()).await,
        fake(Dialect::Generic, 3600).await,
        config,
    )
    .await;
    let held = harness.connect("held-elsewhere").await;
    let free = harness.connect("free").await;
    let taken = harness
        .store
        .acquire_refresh_lease(held.id, "slow-replica", Duration::from_secs(5))
        .await
        .expect("lease");
    assert_eq!(taken, LeaseOutcome::Acquired);

    let waiting = tokio::spawn({
        let tokenvisor = harness.tokenvisor.clone();
        async move { tokenvisor.tokens().force_refresh(held.id).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    harness
        .tokenvisor
        .tokens()
        .force_refresh(free.id)
        .await
        .expect("the other connection refreshes");
    assert!(asked.elapsed() < Duration::from_secs(2), "waited {:?}", asked.elapsed());
    assert!(!waiting.is_finished(), "the held connection waits for the lease");
    waiting.await.expect("task").expect("refreshed once the lease ran out");
    assert_eq!(harness.fake.refreshes(), 2);
    harness.tokenvisor.shutdown().await;
}

async fn a_revoked_grant_is_presented_once_for_all_replicas(database: TestDatabase) {
    let first = Harness::start(
        open(&database, test_keyring()).await,
        fake(Dialect::Generic, 3600).await,
        with_lease(),
    )
    .await;
    let connection = first.connect("revoked").await;
    let second = Tokenvisor::start(open(&database, test_keyring()).await, with_lease())
        .await
        .expect("second replica starts");
    first.fake.revoke_family("revoked");
    first.fake.set_latency(Duration::from_millis(300));
    let requests_before = first.fake.token_requests();

    let (a, b) = tokio::join!(
        first.tokenvisor.tokens().force_refresh(connection.id),
        second.tokens().force_refresh(connection.id)
    );
    assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
    assert_eq!(
        first.fake.token_requests() - requests_before,
        1,
        "one replica presented the dead grant; the other adopted the escalation"
    );
    let stored = first.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, tokenvisor_core::ConnectionStatus::NeedsReauth);
    assert_eq!(stored.refresh_failures, 1);
    second.shutdown().await;
    first.tokenvisor.shutdown().await;
}
