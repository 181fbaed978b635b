//! Rotating refresh tokens (Atlassian style): refresh after refresh, never a reuse.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::ConnectionStatus;
use tokenvisor_store::MemoryStore;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};

#[tokio::test(start_paused = true)]
async fn a_rotating_connection_refreshed_a_thousand_times_never_triggers_a_reuse_event() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Rotating { grace: Duration::ZERO }, 60).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("rotating").await;
    // 60 s tokens refresh every ~45 s: 1,000 refreshes take about 12.5 simulated hours.
    while harness.fake.refreshes_for("rotating") < 1000 {
        sleep_secs(600).await;
        settle().await;
    }
    assert_eq!(harness.fake.reuse_events(), 0);
    assert_eq!(harness.fake.family_revocations(), 0);
    assert_eq!(harness.fake.overlapping_refreshes(), 0);
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("rotating")
    );
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("token");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
}

#[tokio::test(start_paused = true)]
async fn a_lost_refresh_answer_is_retried_with_the_previous_token_inside_the_grace_period() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(
            Dialect::Rotating {
                grace: Duration::from_secs(600),
            },
            3600,
        )
        .await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("lossy").await;
    settle().await;
    // The provider rotates, then the answer is lost (HTTP 500).
    harness.fake.drop_next_answers_after_rotation(1);
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("answer lost");
    assert!(
        matches!(error, tokenvisor_supervisor::TokenError::ProviderUnavailable { .. }),
        "{error:?}"
    );
    // The retry presents the previous refresh token within the grace period.
    sleep_secs(120).await;
    settle().await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("lossy")
    );
    assert_eq!(harness.fake.family_revocations(), 0);
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("token");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
}
