//! Random interleavings of callers, operators, provider answers and store failures
//! (proptest), against a rotating fake provider in paused time, checked after every step
//! and at the end:
//! - no refresh token the provider still accepts is lost (the stored one is the
//!   provider's current one once the store is back),
//! - no reuse of a retired refresh token (without a grace period: no reuse event at all;
//!   with one, no family revoked except by the test),
//! - no token handed out for a disabled, removed or `needs_reauth` connection, and none
//!   that is not the committed one while the store cannot commit (invariant 2),
//! - at most one refresh in flight (the fake counts overlaps),
//! - escalations equal what the row counts (`refresh_failures`), and a revoked grant ends
//!   `needs_reauth` unless the connection was disabled or re-authorized.

use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{ConnectionStatus, EventKind, SecretString, TokenSet};
use tokenvisor_store::{MemoryStore, Store};
use tokenvisor_supervisor::TokenError;
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};
use tokenvisor_tests::faulty_store::FaultyStore;
use tokenvisor_tests::{Harness, paused_config, sleep_secs};

#[derive(Debug, Clone)]
enum Op {
    Read,
    ReportRejected,
    Force { background: bool },
    Deactivate,
    Activate,
    Reauthorize,
    Remove,
    ProviderTransient(u32),
    ProviderRevokes,
    LoseNextAnswer,
    StoreDown,
    StoreUp,
    Advance(u64),
}

fn ops(lost_answers: bool) -> impl Strategy<Value = Vec<Op>> {
    let common = prop_oneof![
        5 => Just(Op::Read),
        1 => Just(Op::ReportRejected),
        3 => any::<bool>().prop_map(|background| Op::Force { background }),
        2 => Just(Op::Deactivate),
        2 => Just(Op::Activate),
        1 => Just(Op::Reauthorize),
        1 => Just(Op::Remove),
        2 => (1u32..4).prop_map(Op::ProviderTransient),
        1 => Just(Op::ProviderRevokes),
        2 => Just(Op::StoreDown),
        2 => Just(Op::StoreUp),
        4 => (1u64..4000).prop_map(Op::Advance),
    ];
    let op = if lost_answers {
        prop_oneof![10 => common, 1 => Just(Op::LoseNextAnswer)].boxed()
    } else {
        common.boxed()
    };
    proptest::collection::vec(op, 1..30)
}

/// What the test did, to judge what tokenvisor answers.
#[derive(Debug, Default)]
struct Model {
    disabled: bool,
    removed: bool,
    /// Labels of the grants the test revoked.
    revoked: HashSet<String>,
    store_down: bool,
    /// An answer was lost on the way (the provider rotated, tokenvisor never saw it).
    lost_answers: bool,
    /// The connection was disabled after an answer was lost: its retry waits for an
    /// activation, which may come after the grace period (the family is then revoked,
    /// whatever tokenvisor does).
    disabled_after_loss: bool,
}

/// Checks a token answer against the model.
async fn check_answer(
    model: &Model,
    store: &dyn Store,
    id: tokenvisor_core::ConnectionId,
    answer: &Result<tokenvisor_supervisor::AccessToken, TokenError>,
) -> Result<(), TestCaseError> {
    let Ok(token) = answer else {
        return Ok(());
    };
    prop_assert!(!model.removed, "a token was handed out for a removed connection");
    prop_assert!(!model.disabled, "a token was handed out for a disabled connection");
    if let Some(row) = store.get_connection(id).await.ok().flatten() {
        prop_assert!(
            row.status != ConnectionStatus::NeedsReauth,
            "a token was handed out for a needs_reauth connection"
        );
        if model.store_down {
            // Nothing can be committed meanwhile: what is handed out is what is stored.
            prop_assert!(
                token.secret == row.access_token,
                "a token that is not the committed one was handed out"
            );
        }
    }
    Ok(())
}

async fn scenario(ops: Vec<Op>, grace: Duration) -> Result<(), TestCaseError> {
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Rotating { grace },
        expires_in: 3600,
        ..FakeConfig::default()
    })
    .await
    .expect("fake provider");
    // Refreshes take a while, so operations arrive while one is in flight.
    fake.set_latency(Duration::from_millis(1500));
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let store = Arc::new(FaultyStore::new(inner.clone()));
    let mut harness = Harness::start(store.clone(), fake.clone(), paused_config()).await;
    let tokenvisor = harness.tokenvisor.clone();
    let mut label = "tenant-0".to_owned();
    let id = harness.connect(&label).await.id;
    let mut model = Model::default();
    let mut background = Vec::new();
    let mut generation = 0;
    let mut refreshes_at_removal = None;
    let mut last_token: Option<SecretString> = None;

    for op in ops {
        match op {
            Op::Read => {
                let answer = tokenvisor.tokens().access_token(id).await;
                check_answer(&model, inner.as_ref(), id, &answer).await?;
                if let Ok(token) = answer {
                    last_token = Some(token.secret);
                }
            }
            Op::ReportRejected => {
                if let Some(token) = &last_token {
                    let answer = tokenvisor.tokens().token_rejected(id, token).await;
                    check_answer(&model, inner.as_ref(), id, &answer).await?;
                }
            }
            Op::Force { background: true } => {
                let tokenvisor = tokenvisor.clone();
                background.push(tokio::spawn(async move { tokenvisor.tokens().force_refresh(id).await }));
            }
            Op::Force { background: false } => {
                let answer = tokenvisor.tokens().force_refresh(id).await;
                check_answer(&model, inner.as_ref(), id, &answer).await?;
            }
            Op::Deactivate => {
                if tokenvisor.connections().deactivate(id).await.is_ok() {
                    model.disabled = true;
                    model.disabled_after_loss |= model.lost_answers;
                }
            }
            Op::Activate => {
                if tokenvisor.connections().activate(id).await.is_ok() {
                    model.disabled = false;
                }
            }
            Op::Reauthorize => {
                generation += 1;
                let next = format!("tenant-{generation}");
                let issued = fake.issue_grant(&next);
                let tokens = TokenSet {
                    access_token: SecretString::new(issued.access_token.as_str()),
                    refresh_token: Some(SecretString::new(issued.refresh_token.as_str())),
                    token_type: Some("Bearer".into()),
                    scope: None,
                    expires_in: std::time::Duration::from_secs(issued.expires_in),
                    metadata: Default::default(),
                };
                if tokenvisor
                    .connections()
                    .replace_tokens(id, tokens, Default::default())
                    .await
                    .is_ok()
                {
                    model.disabled = false;
                    label = next;
                }
            }
            Op::Remove => {
                if tokenvisor.connections().remove(id).await.is_ok() {
                    model.removed = true;
                    refreshes_at_removal = Some(fake.refreshes());
                }
            }
            Op::ProviderTransient(n) => fake.fail_next(n, 503, serde_json::json!({"error": "temporarily_unavailable"})),
            Op::ProviderRevokes => {
                fake.revoke_family(&label);
                model.revoked.insert(label.clone());
            }
            Op::LoseNextAnswer => {
                fake.drop_next_answers_after_rotation(1);
                model.lost_answers = true;
            }
            Op::StoreDown => {
                store.set_fail_writes(true);
                model.store_down = true;
            }
            Op::StoreUp => {
                store.set_fail_writes(false);
                model.store_down = false;
            }
            Op::Advance(seconds) => sleep_secs(seconds).await,
        }
        prop_assert_eq!(
            fake.overlapping_refreshes(),
            0,
            "two refreshes of one connection overlapped"
        );
        if grace.is_zero() {
            prop_assert_eq!(fake.reuse_events(), 0, "a retired refresh token was presented");
        }
    }

    // Everything comes back; give retries and schedules two hours to settle.
    store.set_fail_writes(false);
    model.store_down = false;
    fake.fail_next(0, 503, serde_json::Value::Null);
    fake.drop_next_answers_after_rotation(0);
    for task in background {
        let _ = task.await;
    }
    for _ in 0..12 {
        sleep_secs(600).await;
    }

    prop_assert_eq!(fake.overlapping_refreshes(), 0);
    if grace.is_zero() {
        prop_assert_eq!(fake.reuse_events(), 0);
    }
    // No family was revoked except by the test or by removing the connection (which
    // revokes its grant); a reuse past the grace would revoke one.
    let revoked_on_purpose =
        model.revoked.len() as u64 + u64::from(model.removed) + u64::from(model.disabled_after_loss);
    prop_assert!(
        fake.family_revocations() <= revoked_on_purpose,
        "{} families revoked, {} on purpose",
        fake.family_revocations(),
        revoked_on_purpose
    );
    let escalations = harness
        .drain_events()
        .iter()
        .filter(|event| matches!(event.kind, EventKind::NeedsReauthorization { .. }))
        .count();
    let row = inner.get_connection(id).await.expect("store readable");
    if model.removed {
        prop_assert!(row.is_none(), "removed but still stored");
        prop_assert_eq!(
            Some(fake.refreshes()),
            refreshes_at_removal,
            "the provider was called after the connection was removed"
        );
    } else {
        let row = row.expect("the connection is stored");
        prop_assert_eq!(
            escalations as i64,
            row.refresh_failures,
            "escalations and refresh_failures differ"
        );
        if model.disabled_after_loss {
            // Whether the retry came inside the grace period depends on how long the
            // connection stayed disabled: only the invariants above apply.
        } else if model.revoked.contains(&label) {
            if !model.disabled {
                prop_assert_eq!(row.status, ConnectionStatus::NeedsReauth);
            }
        } else {
            let current = fake.current_refresh_token(&label);
            prop_assert_eq!(
                row.refresh_token.as_ref().map(|t| t.expose().to_owned()),
                current,
                "the stored refresh token is not the provider's current one"
            );
            if model.disabled {
                prop_assert_eq!(row.status, ConnectionStatus::Disabled);
            } else {
                prop_assert!(row.status.is_supervised(), "status {:?}", row.status);
            }
        }
    }
    let _ = tokenvisor.shutdown().await;
    Ok(())
}

fn run(ops: Vec<Op>, grace: Duration) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(scenario(ops, grace))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// A rotating provider without any grace period (Auth0's default): one presentation
    /// of a retired refresh token revokes the family.
    #[test]
    fn random_interleavings_without_a_grace_period_keep_every_invariant(ops in ops(false)) {
        run(ops, Duration::ZERO)?;
    }

    /// With a grace period, answers lost on the way are retried with the previous token
    /// inside it, and no family is ever revoked by a reuse.
    #[test]
    fn random_interleavings_with_lost_answers_inside_a_grace_period_keep_every_invariant(ops in ops(true)) {
        run(ops, Duration::from_secs(600))?;
    }
}
