//! Invariants 1 and 2: no refresh token is lost, and new tokens are committed before
//! anyone receives them.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_store::{MemoryStore, Store};
use tokenvisor_supervisor::TokenError;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::faulty_store::FaultyStore;
use tokenvisor_tests::{Harness, fake, paused_config, settle};

#[tokio::test(start_paused = true)]
async fn refresh_keeps_the_refresh_token_when_the_answer_omits_it() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::NonRotating, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("zoho-like").await;
    let original = connection.refresh_token.clone().unwrap();
    for _ in 0..3 {
        harness
            .tokenvisor
            .tokens()
            .force_refresh(connection.id)
            .await
            .expect("refresh");
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    assert_eq!(harness.fake.refreshes(), 3);
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token,
        Some(original),
        "the stored refresh token survived answers without one"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_is_committed_with_the_new_access_token() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("jira-like").await;
    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("refresh");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.access_token, token.secret);
    assert_ne!(stored.refresh_token, connection.refresh_token);
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("jira-like")
    );
}

#[tokio::test(start_paused = true)]
async fn new_tokens_are_not_handed_out_until_committed_and_the_commit_is_retried_without_a_new_provider_call() {
    let faulty = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn Store> = faulty.clone();
    let harness = Harness::start(
        store,
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("tenant").await;
    settle().await;

    faulty.set_fail_writes(true);
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("uncommitted tokens are not handed out");
    assert!(matches!(error, TokenError::StoreUnavailable(_)), "{error:?}");
    assert_eq!(harness.fake.refreshes(), 1, "the provider did rotate");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.access_token, connection.access_token, "nothing was committed");
    // The old token is still valid and still served from memory meanwhile.
    let current = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("old token still valid");
    assert_eq!(current.secret, connection.access_token);

    faulty.set_fail_writes(false);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_ne!(
        stored.access_token, connection.access_token,
        "the kept tokens were committed on retry"
    );
    assert_eq!(
        harness.fake.refreshes(),
        1,
        "the retry committed the kept tokens instead of calling the provider"
    );
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("tenant")
    );
    assert_eq!(harness.fake.reuse_events(), 0);
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("token");
    assert_eq!(token.secret, stored.access_token);
}

#[tokio::test(start_paused = true)]
async fn a_lost_compare_and_swap_keeps_the_other_writers_change_and_still_commits_the_rotated_tokens() {
    use tokenvisor_tests::interfering_store::InterferingStore;
    let interfering = Arc::new(InterferingStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn Store> = interfering.clone();
    let harness = Harness::start(
        store,
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("contended").await;
    settle().await;
    // Another writer records metadata between the provider answer and our commit.
    interfering.before_next_write(|row| {
        row.metadata.insert("note".into(), "written by another replica".into());
    });
    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("refresh");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.access_token, token.secret,
        "the new tokens were re-applied on the newer row"
    );
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("contended"),
        "the rotated refresh token is not lost"
    );
    assert_eq!(
        stored.metadata.get("note").and_then(|v| v.as_str()),
        Some("written by another replica")
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_written_elsewhere_during_a_refresh_are_adopted_not_overwritten() {
    use tokenvisor_tests::interfering_store::InterferingStore;
    let interfering = Arc::new(InterferingStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn Store> = interfering.clone();
    let harness = Harness::start(store, fake(Dialect::Generic, 3600).await, paused_config()).await;
    let connection = harness.connect("replaced").await;
    settle().await;
    // Another writer (a re-authorization elsewhere) stores a new token set first.
    let elsewhere = harness.fake.issue_grant("replaced-elsewhere");
    let (access, refresh) = (elsewhere.access_token.clone(), elsewhere.refresh_token.clone());
    interfering.before_next_write(move |row| {
        row.access_token = tokenvisor_core::SecretString::new(access.as_str());
        row.refresh_token = Some(tokenvisor_core::SecretString::new(refresh.as_str()));
    });
    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("token");
    assert_eq!(token.secret.expose(), elsewhere.access_token, "the stored tokens win");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.access_token.expose(), elsewhere.access_token);
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose()),
        Some(elsewhere.refresh_token.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_an_in_flight_refresh_commit() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("stopping").await;
    settle().await;
    harness.fake.set_latency(Duration::from_secs(3));
    let tokenvisor = harness.tokenvisor.clone();
    let refresh = tokio::spawn(async move { tokenvisor.tokens().force_refresh(connection.id).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    harness.tokenvisor.shutdown().await;
    let _ = refresh.await;
    assert_eq!(harness.fake.refreshes(), 1);
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("stopping"),
        "the rotated token was committed before shutdown finished"
    );
    assert_eq!(
        harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect_err("stopped"),
        TokenError::ShuttingDown
    );
}
