//! Regression tests for one owner per connection (issue: lifecycle operations that cannot race a refresh), on the memory store in paused time.
//!
//! docs/DESIGN.md, "Who writes what" and "Phases of an owner": in one process a
//! connection has exactly one writer, its actor; an operation that arrives during a
//! refresh is applied after that refresh's outcome is committed; tokens the provider
//! issued are never dropped. Each test reproduces one finding of the issue (the number
//! in its doc comment) with the fake provider.
//!
//! Multi-part tests collect every violated expectation in a [`Verdict`] and report them
//! together, so that one failure does not hide the others. No message prints a token.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{Connection, ConnectionId, ConnectionStatus, EventKind, SecretString, TokenSet, TokioClock};
use tokenvisor_store::{MemoryStore, Store};
use tokenvisor_supervisor::{AccessToken, ShutdownReport, TokenError, Tokenvisor, TokenvisorConfig};
use tokenvisor_testkit::{Dialect, IssuedTokens};
use tokenvisor_tests::answer_proxy::AnswerProxy;
use tokenvisor_tests::faulty_store::FaultyStore;
use tokenvisor_tests::interfering_store::InterferingStore;
use tokenvisor_tests::scripted_store::ScriptedStore;
use tokenvisor_tests::{Harness, fake, integration_for, paused_config, settle, sleep_secs, test_config};
use tokio::time::Instant;

/// The violated expectations of a multi-part test, reported together at the end.
#[derive(Default)]
struct Verdict(Vec<String>);

impl Verdict {
    fn check(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.0.push(what());
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} expectation(s) failed:\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}

/// A token answer, described without the token.
fn describe(result: &Result<AccessToken, TokenError>) -> String {
    match result {
        Ok(_) => "Ok(a token)".to_owned(),
        Err(error) => format!("Err({}: {error})", error.code()),
    }
}

/// The `(uncommitted, journaled)` counts of a shutdown report.
fn report_counts(report: &ShutdownReport) -> Option<(usize, usize)> {
    Some((report.uncommitted, report.journaled))
}

fn tokens_of(issued: &IssuedTokens) -> TokenSet {
    TokenSet {
        access_token: SecretString::new(issued.access_token.as_str()),
        refresh_token: Some(SecretString::new(issued.refresh_token.as_str())),
        token_type: Some("Bearer".into()),
        scope: None,
        expires_in: std::time::Duration::from_secs(issued.expires_in),
        metadata: Default::default(),
    }
}

async fn stored(store: &Arc<dyn Store>, id: ConnectionId) -> Option<Connection> {
    store.get_connection(id).await.expect("the memory store answers")
}

/// Whether the stored refresh token is the provider's current one for `label`.
fn holds_current_refresh_token(row: Option<&Connection>, fake: &tokenvisor_testkit::FakeProvider, label: &str) -> bool {
    let current = fake.current_refresh_token(label);
    let stored = row
        .and_then(|row| row.refresh_token.as_ref())
        .map(|t| t.expose().to_owned());
    current.is_some() && stored == current
}

fn status_of(row: Option<&Connection>) -> String {
    match row {
        Some(row) => format!(
            "status {:?}, is_active {}, refresh_failures {}",
            row.status, row.is_active, row.refresh_failures
        ),
        None => "no row".to_owned(),
    }
}

fn force_refresh_in_background(
    tokenvisor: &Tokenvisor,
    id: ConnectionId,
) -> tokio::task::JoinHandle<Result<AccessToken, TokenError>> {
    let tokenvisor = tokenvisor.clone();
    tokio::spawn(async move { tokenvisor.tokens().force_refresh(id).await })
}

/// Finding 1. A provider answering in 10 s (within the client's timeout); deactivate, 20 deactivate/activate cycles and
/// remove, each sent while a refresh is in flight.
#[tokio::test(start_paused = true)]
async fn deactivate_activate_and_remove_sent_during_a_refresh_take_effect_when_they_return() {
    let mut verdict = Verdict::default();

    // Deactivate: from its return on, no token and no provider call.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connection = harness.connect("deactivated").await;
        harness.fake.set_family_latency("deactivated", Duration::from_secs(10));
        let forced = force_refresh_in_background(&harness.tokenvisor, connection.id);
        sleep_secs(1).await;
        assert_eq!(
            harness.fake.token_requests(),
            1,
            "the refresh is in flight at the provider"
        );
        let deactivated = harness.tokenvisor.connections().deactivate(connection.id).await;
        verdict.check(deactivated.is_ok(), || {
            format!("deactivate during a refresh failed: {:?}", deactivated.as_ref().err())
        });
        let requests = harness.fake.token_requests();
        settle().await;
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(matches!(read, Err(TokenError::Disabled)), || {
            format!(
                "deactivate during a refresh: a read right after deactivate returned answered {}",
                describe(&read)
            )
        });
        let _ = forced.await;
        sleep_secs(3 * 3600).await;
        settle().await;
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(matches!(read, Err(TokenError::Disabled)), || {
            format!(
                "deactivate during a refresh: a read 3 h later answered {}",
                describe(&read)
            )
        });
        let after = harness.fake.token_requests() - requests;
        verdict.check(after == 0, || {
            format!("deactivate during a refresh: the provider got {after} token request(s) for the disabled connection in the 3 h after deactivate returned")
        });
        let row = stored(&harness.store, connection.id).await;
        verdict.check(
            row.as_ref()
                .is_some_and(|r| r.status == ConnectionStatus::Disabled && !r.is_active),
            || {
                format!(
                    "deactivate during a refresh: the stored row has {}",
                    status_of(row.as_ref())
                )
            },
        );
    }

    // 20 deactivate/activate cycles, each deactivate during a refresh: one owner left,
    // refreshing once per token lifetime.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connection = harness.connect("cycled").await;
        harness.fake.set_family_latency("cycled", Duration::from_secs(5));
        for cycle in 0..20 {
            let before = harness.fake.token_requests();
            let forced = force_refresh_in_background(&harness.tokenvisor, connection.id);
            sleep_secs(1).await;
            assert_eq!(
                harness.fake.token_requests(),
                before + 1,
                "cycle {cycle}: the refresh is in flight"
            );
            let deactivated = harness.tokenvisor.connections().deactivate(connection.id).await;
            let activated = harness.tokenvisor.connections().activate(connection.id).await;
            verdict.check(deactivated.is_ok() && activated.is_ok(), || {
                format!(
                    "cycle {cycle}: deactivate {:?}, activate {:?}",
                    deactivated.as_ref().err(),
                    activated.as_ref().err()
                )
            });
            let _ = forced.await;
            // Past the minimum spacing, so that the next cycle's forced refresh starts at once.
            sleep_secs(11).await;
        }
        settle().await;
        let count = harness.tokenvisor.supervised_count();
        verdict.check(count == 1, || {
            format!("after 20 deactivate/activate cycles, supervised_count() is {count}")
        });
        let before = harness.fake.token_requests();
        sleep_secs(10 * 3600).await;
        settle().await;
        // One-hour tokens are refreshed 15 minutes before expiry: about 13 in 10 hours.
        let calls = harness.fake.token_requests() - before;
        verdict.check(calls <= 15, || {
            format!("after 20 deactivate/activate cycles, the provider got {calls} token requests in 10 h (one owner makes about 13)")
        });
        let count = harness.tokenvisor.supervised_count();
        verdict.check(count == 1, || {
            format!("10 h after 20 deactivate/activate cycles, supervised_count() is {count}")
        });
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(read.is_ok(), || {
            format!(
                "after 20 deactivate/activate cycles, a read answered {}",
                describe(&read)
            )
        });
    }

    // Remove: from its return on, the provider is never called for the connection again.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connection = harness.connect("removed").await;
        harness.fake.set_family_latency("removed", Duration::from_secs(10));
        let forced = force_refresh_in_background(&harness.tokenvisor, connection.id);
        sleep_secs(1).await;
        assert_eq!(
            harness.fake.token_requests(),
            1,
            "the refresh is in flight at the provider"
        );
        let removed = harness.tokenvisor.connections().remove(connection.id).await;
        verdict.check(removed.is_ok(), || {
            format!("remove during a refresh failed: {:?}", removed.as_ref().err())
        });
        let requests = harness.fake.token_requests();
        let _ = forced.await;
        sleep_secs(3 * 3600).await;
        settle().await;
        let after = harness.fake.token_requests() - requests;
        verdict.check(after == 0, || {
            format!("remove during a refresh: the provider got {after} token request(s) for the removed connection in the 3 h after remove returned")
        });
        let row = stored(&harness.store, connection.id).await;
        verdict.check(row.is_none(), || {
            "remove during a refresh: the row is still stored".to_owned()
        });
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(matches!(read, Err(TokenError::NotFound)), || {
            format!(
                "remove during a refresh: a read afterwards answered {}",
                describe(&read)
            )
        });
    }

    verdict.finish();
}

/// A rotating provider without grace, and a store whose writes fail on demand.
async fn rotating_harness(memory: &Arc<MemoryStore>) -> (Harness, Arc<FaultyStore>) {
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let harness = Harness::start(
        faulty.clone(),
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    (harness, faulty)
}

/// Finding 2. Rotated tokens whose commit failed are kept by their owner across an actor
/// restart, a shutdown and a deactivate, and committed once the store takes them.
#[tokio::test(start_paused = true)]
async fn rotated_tokens_whose_commit_failed_survive_a_restart_a_shutdown_and_a_deactivate() {
    let mut verdict = Verdict::default();

    // An actor restart while the store is down.
    {
        let memory = Arc::new(MemoryStore::new());
        let (harness, faulty) = rotating_harness(&memory).await;
        let connection = harness.connect("restarted").await;
        faulty.set_fail_writes(true);
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        assert!(forced.is_err(), "the commit failed: {}", describe(&forced));
        assert_ne!(
            harness.fake.current_refresh_token("restarted").as_deref(),
            Some(connection.refresh_token.as_ref().unwrap().expose()),
            "the provider rotated"
        );
        harness.tokenvisor.inject_panic(connection.id);
        sleep_secs(5).await;
        settle().await;
        faulty.set_fail_writes(false);
        sleep_secs(120).await;
        settle().await;
        let row = memory.get_connection(connection.id).await.unwrap();
        verdict.check(holds_current_refresh_token(row.as_ref(), &harness.fake, "restarted"), || {
            format!(
                "restart: 2 minutes after the store came back, the stored refresh token is not the one the provider rotated to ({}; reuse events {}, family revocations {})",
                status_of(row.as_ref()),
                harness.fake.reuse_events(),
                harness.fake.family_revocations()
            )
        });
        sleep_secs(3 * 3600).await;
        settle().await;
        let row = memory.get_connection(connection.id).await.unwrap();
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(
            harness.fake.reuse_events() == 0
                && harness.fake.family_revocations() == 0
                && row.as_ref().is_some_and(|r| r.status == ConnectionStatus::Active)
                && read.is_ok(),
            || {
                format!(
                    "restart: 3 h later: reuse events {}, family revocations {}, {}, read {}",
                    harness.fake.reuse_events(),
                    harness.fake.family_revocations(),
                    status_of(row.as_ref()),
                    describe(&read)
                )
            },
        );
    }

    // A shutdown right after the store came back commits them.
    {
        let memory = Arc::new(MemoryStore::new());
        let (harness, faulty) = rotating_harness(&memory).await;
        let connection = harness.connect("flushed").await;
        faulty.set_fail_writes(true);
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        assert!(forced.is_err(), "the commit failed: {}", describe(&forced));
        faulty.set_fail_writes(false);
        let report = harness.tokenvisor.shutdown().await;
        let counts = report_counts(&report);
        verdict.check(counts == Some((0, 0)), || {
            format!("shutdown with the store back: report (uncommitted, journaled) = {counts:?}, expected (0, 0)")
        });
        let row = memory.get_connection(connection.id).await.unwrap();
        verdict.check(
            holds_current_refresh_token(row.as_ref(), &harness.fake, "flushed"),
            || {
                "shutdown with the store back: the stored refresh token is not the one the provider rotated to"
                    .to_owned()
            },
        );
    }

    // A shutdown while the store is still down says what it could not commit.
    {
        let memory = Arc::new(MemoryStore::new());
        let (harness, faulty) = rotating_harness(&memory).await;
        let connection = harness.connect("stranded").await;
        faulty.set_fail_writes(true);
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        assert!(forced.is_err(), "the commit failed: {}", describe(&forced));
        let report = harness.tokenvisor.shutdown().await;
        let counts = report_counts(&report);
        verdict.check(counts == Some((1, 0)), || {
            format!("shutdown with the store down and no journal: report (uncommitted, journaled) = {counts:?}, expected (1, 0)")
        });
    }

    // A deactivate that lands before the kept tokens' commit retry writes them with it;
    // the refresh after re-activation presents the rotated refresh token.
    {
        let memory = Arc::new(MemoryStore::new());
        let (harness, faulty) = rotating_harness(&memory).await;
        let connection = harness.connect("deactivated").await;
        faulty.set_fail_writes(true);
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        assert!(forced.is_err(), "the commit failed: {}", describe(&forced));
        faulty.set_fail_writes(false);
        let deactivated = harness.tokenvisor.connections().deactivate(connection.id).await;
        verdict.check(deactivated.is_ok(), || {
            format!(
                "deactivate after the store came back failed: {:?}",
                deactivated.as_ref().err()
            )
        });
        sleep_secs(60).await;
        settle().await;
        let row = memory.get_connection(connection.id).await.unwrap();
        verdict.check(
            holds_current_refresh_token(row.as_ref(), &harness.fake, "deactivated")
                && row.as_ref().is_some_and(|r| r.status == ConnectionStatus::Disabled),
            || {
                format!(
                    "deactivate: the disabled row does not hold the rotated refresh token ({})",
                    status_of(row.as_ref())
                )
            },
        );
        let activated = harness.tokenvisor.connections().activate(connection.id).await;
        verdict.check(activated.is_ok(), || {
            format!("activate failed: {:?}", activated.as_ref().err())
        });
        sleep_secs(3 * 3600).await;
        settle().await;
        let row = memory.get_connection(connection.id).await.unwrap();
        verdict.check(
            harness.fake.reuse_events() == 0
                && harness.fake.family_revocations() == 0
                && row.as_ref().is_some_and(|r| r.status == ConnectionStatus::Active),
            || {
                format!(
                    "deactivate then activate: 3 h later: reuse events {}, family revocations {}, {}",
                    harness.fake.reuse_events(),
                    harness.fake.family_revocations(),
                    status_of(row.as_ref())
                )
            },
        );
    }

    verdict.finish();
}

/// Finding 3. The provider answers `invalid_grant` to a refresh while the tenant
/// re-authorizes: the re-authorization lands before the `needs_reauth` write and wins.
#[tokio::test(start_paused = true)]
async fn a_reauthorization_that_lands_before_the_escalation_write_wins() {
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("reauthorizing").await;
    harness.fake.revoke_family("reauthorizing");
    harness.fake.set_latency(Duration::from_secs(10));
    let forced = force_refresh_in_background(&harness.tokenvisor, connection.id);
    sleep_secs(1).await;
    assert_eq!(harness.fake.token_requests(), 1, "the doomed refresh is in flight");
    // The tenant consents again meanwhile.
    let regranted = harness.fake.issue_grant("reauthorizing");
    harness.fake.set_latency(Duration::ZERO);
    let replaced = harness
        .tokenvisor
        .connections()
        .replace_tokens(connection.id, tokens_of(&regranted), Default::default())
        .await;
    assert!(replaced.is_ok(), "replace_tokens: {:?}", replaced.err());
    let _ = forced.await;
    settle().await;
    sleep_secs(5).await;
    settle().await;

    let mut verdict = Verdict::default();
    let row = stored(&harness.store, connection.id).await;
    verdict.check(
        row.as_ref()
            .is_some_and(|r| r.status == ConnectionStatus::Active && r.is_active && r.refresh_failures == 0),
        || {
            format!(
                "the stored row has {} after the re-authorization",
                status_of(row.as_ref())
            )
        },
    );
    verdict.check(
        row.as_ref()
            .is_some_and(|r| r.access_token.expose() == regranted.access_token),
        || "the stored access token is not the re-authorized one".to_owned(),
    );
    let events: Vec<_> = harness
        .drain_events()
        .into_iter()
        .filter(|e| e.connection_id == connection.id)
        .map(|e| e.kind)
        .collect();
    verdict.check(events.iter().any(|k| matches!(k, EventKind::Reauthorized)), || {
        "no reauthorized event".to_owned()
    });
    // The refused grant was superseded before its escalation was written: no
    // needs_reauthorization event at all (in particular none after the reauthorized one).
    let escalations = events
        .iter()
        .filter(|k| matches!(k, EventKind::NeedsReauthorization { .. }))
        .count();
    verdict.check(escalations == 0, || {
        format!("{escalations} needs_reauthorization event(s) for a grant the tenant had replaced")
    });
    let read = harness.tokenvisor.tokens().access_token(connection.id).await;
    verdict.check(
        read.as_ref().is_ok_and(|t| t.secret.expose() == regranted.access_token),
        || {
            format!(
                "a read after the re-authorization answered {} (expected the re-authorized token)",
                describe(&read)
            )
        },
    );
    verdict.finish();
}

/// Finding 4. Another writer disables the row just before a refresh commits: the tokens
/// the provider issued are committed onto the disabled row, nobody gets them, and
/// nothing refreshes the connection any more.
#[tokio::test(start_paused = true)]
async fn a_refresh_that_loses_its_commit_to_a_disable_keeps_the_tokens_and_hands_nothing_out() {
    let memory = Arc::new(MemoryStore::new());
    let interfering = Arc::new(InterferingStore::new(memory.clone()));
    let harness = Harness::start(
        interfering.clone(),
        fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("overruled").await;
    interfering.before_next_write(|row| {
        row.status = ConnectionStatus::Disabled;
        row.is_active = false;
        row.next_refresh_at = None;
    });
    let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
    settle().await;

    let mut verdict = Verdict::default();
    assert_eq!(harness.fake.refreshes_for("overruled"), 1, "the provider rotated once");
    let row = memory.get_connection(connection.id).await.unwrap();
    verdict.check(
        holds_current_refresh_token(row.as_ref(), &harness.fake, "overruled"),
        || "the rotated refresh token was not committed (lost)".to_owned(),
    );
    verdict.check(
        row.as_ref()
            .is_some_and(|r| r.status == ConnectionStatus::Disabled && !r.is_active),
        || format!("the row the other writer disabled now has {}", status_of(row.as_ref())),
    );
    verdict.check(forced.is_err(), || {
        format!("the refresh that lost to a disable answered {}", describe(&forced))
    });
    let read = harness.tokenvisor.tokens().access_token(connection.id).await;
    verdict.check(matches!(read, Err(TokenError::Disabled)), || {
        format!("a read of the disabled connection answered {}", describe(&read))
    });
    let requests = harness.fake.token_requests();
    sleep_secs(3 * 3600).await;
    settle().await;
    let after = harness.fake.token_requests() - requests;
    verdict.check(after == 0, || {
        format!("the provider got {after} token request(s) for the disabled connection in 3 h")
    });
    let read = harness.tokenvisor.tokens().access_token(connection.id).await;
    verdict.check(matches!(read, Err(TokenError::Disabled)), || {
        format!(
            "a read of the disabled connection 3 h later answered {}",
            describe(&read)
        )
    });
    verdict.finish();
}

/// Finding 5. A store error is never a verdict: one failed integration lookup while an
/// owner starts does not disable the connection, and failed reads while a crashed actor
/// restarts do not leave the connection without an owner once the store is back.
#[tokio::test(start_paused = true)]
async fn a_store_error_while_spawning_or_restarting_an_owner_is_retried_not_a_verdict() {
    let mut verdict = Verdict::default();

    // An instance that learns of the integration and the connection from the store (another
    // replica registered them): the first integration lookup fails.
    {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let scripted = Arc::new(ScriptedStore::new(memory.clone()));
        let second = Tokenvisor::start(scripted.clone(), paused_config())
            .await
            .expect("starts on an empty store");
        let registrar = Harness::start(memory.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
        let connection = registrar.connect("spawned").await;
        registrar.tokenvisor.shutdown().await;
        scripted.fail_next_integration_reads(1);
        let read = second.tokens().access_token(connection.id).await;
        assert_eq!(scripted.failed_reads(), 1, "the integration lookup failed once");
        verdict.check(read.as_ref().is_ok_and(|t| t.secret == connection.access_token), || {
            format!(
                "spawn: a read while the integration lookup failed once answered {}",
                describe(&read)
            )
        });
        let row = stored(&memory, connection.id).await;
        verdict.check(
            row.as_ref()
                .is_some_and(|r| r.status == ConnectionStatus::Active && r.is_active),
            || format!("spawn: the stored row has {}", status_of(row.as_ref())),
        );
        sleep_secs(2 * 3600).await;
        settle().await;
        let read = second.tokens().access_token(connection.id).await;
        verdict.check(
            read.as_ref()
                .is_ok_and(|t| registrar.fake.is_access_token_live(t.secret.expose())),
            || format!("spawn: a read 2 h later answered {}", describe(&read)),
        );
        second.shutdown().await;
    }

    // A crashed actor restarts while connection reads fail for 3 s.
    {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let scripted = Arc::new(ScriptedStore::new(memory.clone()));
        let harness = Harness::start(scripted.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
        let connection = harness.connect("restarted").await;
        scripted.set_fail_connection_reads(true);
        harness.tokenvisor.inject_panic(connection.id);
        sleep_secs(3).await;
        settle().await;
        assert!(scripted.failed_reads() >= 1, "the restart read the failing store");
        scripted.set_fail_connection_reads(false);
        // Past the first token's expiry: only an owner that refreshes can answer.
        sleep_secs(2 * 3600).await;
        settle().await;
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(
            read.as_ref().is_ok_and(|t| {
                t.secret != connection.access_token && harness.fake.is_access_token_live(t.secret.expose())
            }),
            || {
                format!(
                    "restart: 2 h after the store came back, a read answered {}",
                    describe(&read)
                )
            },
        );
        let row = stored(&memory, connection.id).await;
        verdict.check(
            row.as_ref()
                .is_some_and(|r| r.status == ConnectionStatus::Active && r.is_active),
            || format!("restart: the stored row has {}", status_of(row.as_ref())),
        );
    }

    verdict.finish();
}

/// Finding 6. Hostile answers from a rotating provider without grace (the fake rotated;
/// a proxy changes its answer): `expires_in` 0, negative or 300 years, and an access
/// token with CR LF. The rotated refresh token is kept every time, so no retired refresh
/// token is ever presented.
#[tokio::test(start_paused = true)]
async fn a_hostile_answer_from_a_rotating_provider_keeps_the_rotated_refresh_token() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>) + Send>;
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await;
    let proxy = AnswerProxy::start(fake.token_url()).await;
    let mut integration = integration_for(&fake, "hostile");
    integration.token_url = Some(proxy.url());
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    let connection = harness.connect("hostile").await;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "expires_in 0",
            Box::new(|answer| {
                answer.insert("expires_in".into(), serde_json::json!(0));
            }),
        ),
        (
            "expires_in -5",
            Box::new(|answer| {
                answer.insert("expires_in".into(), serde_json::json!(-5));
            }),
        ),
        (
            "expires_in of about 300 years",
            Box::new(|answer| {
                answer.insert("expires_in".into(), serde_json::json!(10_000_000_000_u64));
            }),
        ),
        (
            "an access token with CR LF",
            Box::new(|answer| {
                let token = answer["access_token"].as_str().unwrap_or_default().to_owned();
                answer.insert(
                    "access_token".into(),
                    serde_json::json!(format!("{token}\r\nX-Injected: 1")),
                );
            }),
        ),
    ];
    let mut verdict = Verdict::default();
    for (rewritten, (what, edit)) in cases.into_iter().enumerate() {
        proxy.rewrite_next_answer(edit);
        let _ = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        sleep_secs(60).await;
        settle().await;
        assert_eq!(
            proxy.rewritten(),
            rewritten as u64 + 1,
            "{what}: the answer was rewritten"
        );
        let row = stored(&harness.store, connection.id).await;
        verdict.check(
            holds_current_refresh_token(row.as_ref(), &harness.fake, "hostile"),
            || {
                format!(
                    "{what}: the stored refresh token is not the provider's current one ({})",
                    status_of(row.as_ref())
                )
            },
        );
        verdict.check(
            harness.fake.reuse_events() == 0 && harness.fake.family_revocations() == 0,
            || {
                format!(
                    "{what}: the provider saw {} reuse(s) of a retired refresh token and revoked {} famil(ies)",
                    harness.fake.reuse_events(),
                    harness.fake.family_revocations()
                )
            },
        );
    }
    sleep_secs(2 * 3600).await;
    settle().await;
    let read = harness.tokenvisor.tokens().access_token(connection.id).await;
    let row = stored(&harness.store, connection.id).await;
    verdict.check(
        read.is_ok() && row.as_ref().is_some_and(|r| r.status == ConnectionStatus::Active),
        || format!("2 h later: read {}, {}", describe(&read), status_of(row.as_ref())),
    );
    verdict.finish();
}

/// Finding 7. Bad input is refused with a typed error and changes nothing: an
/// integration whose rate window overflows a duration, and re-authorization tokens with
/// CR LF.
#[tokio::test(start_paused = true)]
async fn a_huge_rate_window_and_a_crlf_access_token_are_refused_without_changing_anything() {
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let mut verdict = Verdict::default();

    let mut huge = integration_for(&harness.fake, "huge-window");
    huge.settings = serde_json::json!({"window_secs": 10_000_000_000_000_000_u64, "max_refreshes_per_window": 5});
    let tokenvisor = harness.tokenvisor.clone();
    let registered = tokio::spawn(async move { tokenvisor.integrations().register(huge).await }).await;
    match &registered {
        Ok(Err(_)) => {}
        Ok(Ok(_)) => verdict.check(false, || {
            "an integration with window_secs 1e16 was registered".to_owned()
        }),
        Err(join) => verdict.check(false, || {
            format!("register_integration with window_secs 1e16 panicked: {join}")
        }),
    }
    let listed = harness.store.list_integrations().await.unwrap();
    verdict.check(listed.iter().all(|i| i.name != "huge-window"), || {
        "the refused integration was stored".to_owned()
    });

    let connection = harness.connect("crlf").await;
    let before = stored(&harness.store, connection.id).await.expect("stored");
    harness.drain_events();
    let regranted = harness.fake.issue_grant("crlf");
    let mut tokens = tokens_of(&regranted);
    tokens.access_token = SecretString::new(format!("{}\r\nX-Injected: 1", regranted.access_token));
    let replaced = harness
        .tokenvisor
        .connections()
        .replace_tokens(connection.id, tokens, Default::default())
        .await;
    verdict.check(
        matches!(&replaced, Err(error) if error.code() == "invalid_input"),
        || match &replaced {
            Ok(_) => "replace_tokens with a CR LF access token succeeded".to_owned(),
            Err(error) => format!(
                "replace_tokens with a CR LF access token answered {}: {error}",
                error.code()
            ),
        },
    );
    settle().await;
    let after = stored(&harness.store, connection.id).await.expect("stored");
    verdict.check(
        after.version == before.version
            && after.access_token == before.access_token
            && after.refresh_token == before.refresh_token,
        || {
            format!(
                "the refused replace_tokens changed the row (version {} -> {}, access token changed: {}, refresh token changed: {})",
                before.version,
                after.version,
                after.access_token != before.access_token,
                after.refresh_token != before.refresh_token
            )
        },
    );
    let reauthorized = harness
        .drain_events()
        .iter()
        .filter(|e| e.connection_id == connection.id && matches!(e.kind, EventKind::Reauthorized))
        .count();
    verdict.check(reauthorized == 0, || {
        format!("{reauthorized} reauthorized event(s) for a refused replace_tokens")
    });
    let read = harness.tokenvisor.tokens().access_token(connection.id).await;
    verdict.check(read.as_ref().is_ok_and(|t| t.secret == connection.access_token), || {
        format!(
            "a read after the refused replace_tokens answered {} (expected the original token)",
            describe(&read)
        )
    });
    verdict.finish();
}

/// The paused-time configuration with the default token wait (5 s).
fn default_wait_config() -> TokenvisorConfig {
    TokenvisorConfig {
        clock: Arc::new(TokioClock::default()),
        ..test_config()
    }
}

/// Finding 8. A token read that has to wait for a slow provider, or behind a long
/// spacing limit, answers a typed, retryable error after the configured wait (default
/// 5 s) instead of waiting minutes.
#[tokio::test(start_paused = true)]
async fn a_token_read_behind_a_slow_provider_or_a_long_spacing_limit_times_out_after_the_token_wait() {
    let mut verdict = Verdict::default();
    let bound = Duration::from_secs(5) + Duration::from_millis(100);

    // A provider that takes 15 s to answer.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            default_wait_config(),
        )
        .await;
        let connection = harness.connect("slow").await;
        harness.fake.set_latency(Duration::from_secs(15));
        let started = Instant::now();
        let read = tokio::time::timeout(
            Duration::from_secs(1800),
            harness
                .tokenvisor
                .tokens()
                .token_rejected(connection.id, &connection.access_token),
        )
        .await;
        let waited = started.elapsed();
        verdict.check(
            waited <= bound && matches!(&read, Ok(Err(error)) if error.code() == "timeout"),
            || {
                format!(
                    "slow provider: the read answered {} after {waited:?}",
                    read.as_ref()
                        .map_or("nothing (still waiting after 30 min)".to_owned(), describe)
                )
            },
        );
    }

    // One refresh per 10 minutes allowed: the second rejected token waits for the window.
    {
        let fake = fake(Dialect::Generic, 3600).await;
        let mut integration = integration_for(&fake, "spaced");
        integration.settings = serde_json::json!({"window_secs": 600, "max_refreshes_per_window": 1});
        let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, default_wait_config(), integration).await;
        let connection = harness.connect("spaced").await;
        let first = harness
            .tokenvisor
            .tokens()
            .token_rejected(connection.id, &connection.access_token)
            .await
            .expect("the first refresh of the window");
        assert_ne!(first.secret, connection.access_token);
        let started = Instant::now();
        let read = tokio::time::timeout(
            Duration::from_secs(1800),
            harness.tokenvisor.tokens().token_rejected(connection.id, &first.secret),
        )
        .await;
        let waited = started.elapsed();
        verdict.check(
            waited <= bound && matches!(&read, Ok(Err(error)) if error.code() == "timeout"),
            || {
                format!(
                    "spacing limit: the read answered {} after {waited:?}",
                    read.as_ref()
                        .map_or("nothing (still waiting after 30 min)".to_owned(), describe)
                )
            },
        );
    }

    verdict.finish();
}

/// Finding 9. After the owner adopts tokens another writer stored, the retry state of the
/// old tokens is gone (no extra provider call), and a token a caller just reported
/// rejected is not handed back because the adopted row still holds it.
#[tokio::test(start_paused = true)]
async fn adopting_a_row_written_elsewhere_drops_stale_retries_and_never_returns_a_rejected_token() {
    let mut verdict = Verdict::default();

    // Backing off after a 503; another writer stores fresh tokens before the retry commits.
    {
        let memory = Arc::new(MemoryStore::new());
        let interfering = Arc::new(InterferingStore::new(memory.clone()));
        let harness = Harness::start(interfering.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
        let connection = harness.connect("stale").await;
        harness
            .fake
            .fail_next(1, 503, serde_json::json!({"error": "temporarily_unavailable"}));
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        assert!(forced.is_err(), "the refresh failed: {}", describe(&forced));
        let fresh = harness.fake.issue_grant("stale");
        let now = harness.config.clock.now();
        let written = fresh.clone();
        interfering.before_next_write(move |row| {
            row.access_token = SecretString::new(written.access_token.as_str());
            row.refresh_token = Some(SecretString::new(written.refresh_token.as_str()));
            row.issued_at = now;
            row.expires_at = now + chrono::Duration::seconds(written.expires_in as i64);
            row.status = ConnectionStatus::Active;
            row.consecutive_failures = 0;
            row.last_error = None;
            row.next_refresh_at = None;
        });
        let before = harness.fake.token_requests();
        // The retry is due within 2 s, held back to 10 s after the failed attempt by the
        // minimum spacing; its commit loses to the fresh tokens, which the owner adopts.
        sleep_secs(15).await;
        settle().await;
        let row = memory.get_connection(connection.id).await.unwrap();
        assert!(
            row.as_ref()
                .is_some_and(|r| r.access_token.expose() == fresh.access_token),
            "the retry lost its commit to the fresh tokens"
        );
        assert_eq!(
            harness.fake.token_requests() - before,
            1,
            "the retry reached the provider"
        );
        sleep_secs(30 * 60).await;
        settle().await;
        let calls = harness.fake.token_requests() - before;
        verdict.check(calls == 1, || {
            format!("stale retry: the provider got {calls} token requests in the 30 min after the failure (the retry whose commit lost, then nothing until the fresh token's schedule)")
        });
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(
            read.as_ref().is_ok_and(|t| t.secret.expose() == fresh.access_token),
            || {
                format!(
                    "stale retry: a read answered {} (expected the adopted token)",
                    describe(&read)
                )
            },
        );
    }

    // A caller reports the token rejected; the refresh's commit loses to another writer
    // that stored a new refresh token with the same access token.
    {
        let memory = Arc::new(MemoryStore::new());
        let interfering = Arc::new(InterferingStore::new(memory.clone()));
        let harness = Harness::start(interfering.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
        let connection = harness.connect("rejected").await;
        let other = harness.fake.issue_grant("rejected");
        let written = other.refresh_token.clone();
        interfering.before_next_write(move |row| {
            row.refresh_token = Some(SecretString::new(written.as_str()));
        });
        let read = harness
            .tokenvisor
            .tokens()
            .token_rejected(connection.id, &connection.access_token)
            .await;
        verdict.check(read.as_ref().is_ok_and(|t| t.secret != connection.access_token), || {
            format!(
                "rejected token: token_rejected answered {}{}",
                describe(&read),
                if read.as_ref().is_ok_and(|t| t.secret == connection.access_token) {
                    " with the very token the caller reported rejected"
                } else {
                    ""
                }
            )
        });
        let row = memory.get_connection(connection.id).await.unwrap();
        assert!(
            row.as_ref().is_some_and(
                |r| r.refresh_token.as_ref().map(SecretString::expose) == Some(other.refresh_token.as_str())
            ),
            "the other writer's refresh token was adopted"
        );
    }

    verdict.finish();
}

/// Finding 13. One 503 or 429 with `Retry-After: 86400`: refreshing resumes within the
/// cap (15 minutes), and before the current token expires.
#[tokio::test(start_paused = true)]
async fn a_retry_after_of_a_day_is_capped_and_never_outlasts_the_token() {
    let mut verdict = Verdict::default();

    // A forced refresh a minute after connecting gets a 503 with Retry-After: 86400.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connection = harness.connect("unavailable").await;
        sleep_secs(60).await;
        harness.fake.set_retry_after(Some(Duration::from_secs(86_400)));
        harness
            .fake
            .fail_next(1, 503, serde_json::json!({"error": "temporarily_unavailable"}));
        let failed_at = Instant::now();
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        assert!(forced.is_err(), "the 503: {}", describe(&forced));
        sleep_secs(2 * 3600).await;
        settle().await;
        let resumed = harness
            .fake
            .refresh_times_for("unavailable")
            .first()
            .map(|at| at.duration_since(failed_at));
        verdict.check(
            resumed.is_some_and(|after| after <= Duration::from_secs(15 * 60 + 5)),
            || format!("503: the first refresh after the failure came {resumed:?} after it (expected within 15 min)"),
        );
    }

    // The scheduled refresh (about 45 minutes in) gets a 429 with Retry-After: 86400.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connected_at = Instant::now();
        let connection = harness.connect("throttled").await;
        harness.fake.set_retry_after(Some(Duration::from_secs(86_400)));
        harness
            .fake
            .fail_next(1, 429, serde_json::json!({"error": "rate_limited"}));
        // Just past the first token's expiry.
        sleep_secs(3601).await;
        settle().await;
        assert!(harness.fake.token_requests() >= 1, "the scheduled refresh was refused");
        let resumed = harness
            .fake
            .refresh_times_for("throttled")
            .first()
            .map(|at| at.duration_since(connected_at));
        verdict.check(resumed.is_some_and(|after| after < Duration::from_secs(3600)), || {
            format!("429: the first successful refresh came {resumed:?} after the connect, the token expired at 3600 s")
        });
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(read.is_ok(), || {
            format!(
                "429: a read just after the first token's expiry answered {}",
                describe(&read)
            )
        });
    }

    verdict.finish();
}

/// Finding 14. During an outage with an expired token, callers reading every second get
/// a token within the probe interval (5 s) of the provider's return; a failed forced
/// refresh of a token with an hour left does not call it expired; and an
/// `invalid_grant` answer to a forced refresh is stored before the caller hears of it.
#[tokio::test(start_paused = true)]
async fn outage_errors_are_accurate_recovery_is_prompt_and_escalation_is_stored_before_the_answer() {
    let mut verdict = Verdict::default();

    // Recovery within the probe interval.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connection = harness.connect("outage").await;
        harness
            .fake
            .fail_next(1_000_000, 503, serde_json::json!({"error": "temporarily_unavailable"}));
        sleep_secs(2 * 3600).await;
        settle().await;
        // Read every second; end the outage just after an attempt reached the provider (so
        // that waiting for the next scheduled retry would take a whole backoff).
        let mut requests = harness.fake.token_requests();
        let mut ended_at: Option<Instant> = None;
        let mut recovered_after = None;
        let mut read_during_outage = None;
        for second in 0..900 {
            let read = harness.tokenvisor.tokens().access_token(connection.id).await;
            match ended_at {
                Some(ended) => {
                    if read.is_ok() {
                        recovered_after = Some(ended.elapsed());
                        break;
                    }
                }
                None => {
                    if read.is_ok() {
                        read_during_outage = Some(second);
                    }
                    let now_requests = harness.fake.token_requests();
                    if second >= 10 && now_requests > requests {
                        harness.fake.fail_next(0, 200, serde_json::Value::Null);
                        ended_at = Some(Instant::now());
                    }
                    requests = now_requests;
                }
            }
            sleep_secs(1).await;
        }
        assert_eq!(read_during_outage, None, "no token during the outage");
        assert!(
            ended_at.is_some(),
            "an attempt reached the provider during 15 minutes of reads"
        );
        verdict.check(
            recovered_after.is_some_and(|after| after <= Duration::from_secs(6)),
            || {
                format!(
                    "outage: with reads every second, the first token came {recovered_after:?} after the provider's return (probe interval 5 s)"
                )
            },
        );
    }

    // A forced refresh fails while the token has an hour left.
    {
        let harness = Harness::start(
            Arc::new(MemoryStore::new()),
            fake(Dialect::Generic, 3600).await,
            paused_config(),
        )
        .await;
        let connection = harness.connect("fresh").await;
        harness
            .fake
            .fail_next(1, 503, serde_json::json!({"error": "temporarily_unavailable"}));
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        match &forced {
            Err(error @ TokenError::ProviderUnavailable { .. }) => {
                let message = error.to_string();
                verdict.check(!message.contains("expired"), || {
                    format!("a failed forced refresh of a token with an hour left says: {message}")
                });
            }
            other => verdict.check(false, || {
                format!("a forced refresh answered by a 503 answered {}", describe(other))
            }),
        }
        let read = harness.tokenvisor.tokens().access_token(connection.id).await;
        verdict.check(read.as_ref().is_ok_and(|t| t.secret == connection.access_token), || {
            format!(
                "the token with an hour left is no longer handed out: {}",
                describe(&read)
            )
        });
    }

    // invalid_grant to a forced refresh: stored before the caller hears of it, even when
    // every write takes 100 ms.
    {
        let scripted = Arc::new(ScriptedStore::new(Arc::new(MemoryStore::new())));
        let harness = Harness::start(scripted.clone(), fake(Dialect::Generic, 3600).await, paused_config()).await;
        let connection = harness.connect("revoked").await;
        harness.fake.revoke_family("revoked");
        scripted.set_write_delay(Duration::from_millis(100));
        let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await;
        // No settling: the row must say it as the caller hears it.
        let row = stored(&harness.store, connection.id).await;
        verdict.check(
            matches!(&forced, Err(TokenError::NeedsReauthorization { code, .. }) if code == "invalid_grant"),
            || {
                format!(
                    "a forced refresh answered by invalid_grant answered {}",
                    describe(&forced)
                )
            },
        );
        verdict.check(
            row.as_ref()
                .is_some_and(|r| r.status == ConnectionStatus::NeedsReauth && !r.is_active && r.refresh_failures == 1),
            || {
                format!(
                    "right after force_refresh answered invalid_grant, the stored row has {}",
                    status_of(row.as_ref())
                )
            },
        );
    }

    verdict.finish();
}

/// Finding 14, the provider's side: callers reading the tokens of many connections
/// during an outage probe the provider once per probe interval for the whole
/// integration, not once per connection; once a probe succeeds, every reader gets a
/// token on its next read.
#[tokio::test(start_paused = true)]
async fn readers_of_many_connections_probe_a_failing_provider_once_per_interval_and_all_recover_together() {
    const CONNECTIONS: usize = 50;
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 60).await,
        paused_config(),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..CONNECTIONS {
        ids.push(harness.connect(&format!("reader-{i}")).await.id);
    }
    harness
        .fake
        .fail_next(u32::MAX, 503, serde_json::json!({"error": "temporarily_unavailable"}));
    // Every token expires; the connections back off.
    sleep_secs(600).await;
    let before = harness.fake.token_requests();
    let reading = Duration::from_secs(60);
    let started = Instant::now();
    let readers: Vec<_> = ids
        .iter()
        .map(|&id| {
            let tokenvisor = harness.tokenvisor.clone();
            tokio::spawn(async move {
                let mut next = Instant::now();
                while next < started + reading {
                    tokio::time::sleep_until(next).await;
                    next += Duration::from_secs(1);
                    let _ = tokenvisor.tokens().access_token(id).await;
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let during = harness.fake.token_requests() - before;
    // Backoff retries (at most one per connection in a minute at this point) plus one
    // probe per 3 s for the integration; one probe per connection would be about 1,000.
    assert!(
        during <= CONNECTIONS as u64 + 25,
        "{during} provider calls while {CONNECTIONS} readers read for a minute"
    );

    harness.fake.fail_next(0, 503, serde_json::Value::Null);
    let healed = Instant::now();
    let mut recovered = Vec::new();
    let readers: Vec<_> = ids
        .iter()
        .map(|&id| {
            let tokenvisor = harness.tokenvisor.clone();
            tokio::spawn(async move {
                loop {
                    if tokenvisor.tokens().access_token(id).await.is_ok() {
                        return Instant::now() - healed;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        })
        .collect();
    for reader in readers {
        recovered.push(reader.await.unwrap());
    }
    let slowest = recovered.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= Duration::from_secs(5),
        "the slowest reader got a token {slowest:?} after the provider's return"
    );
}

/// An embedder that drops its last handle without `shutdown()` does not leave actors
/// refreshing behind its back: the instance stops in the background (with a warning).
#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_without_shutdown_stops_the_instance() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 600).await,
        paused_config(),
    )
    .await;
    harness.connect("dropped").await;
    let Harness { tokenvisor, fake, .. } = harness;
    drop(tokenvisor);
    settle().await;
    sleep_secs(1).await;
    let before = fake.refreshes();
    // Ten-minute tokens would be refreshed several times in an hour.
    sleep_secs(3600).await;
    assert_eq!(fake.refreshes(), before, "a dropped instance kept refreshing");
}

/// Found by the interleavings: after an answer lost on the way (the provider rotated the
/// refresh token, tokenvisor never saw the new one), the retry must come inside the
/// provider's grace period even if an operator activates the connection meanwhile, or
/// deactivates and activates it again.
#[tokio::test(start_paused = true)]
async fn an_activation_never_postpones_the_retry_of_a_lost_answer_past_the_grace_period() {
    for deactivate_first in [false, true] {
        let fake = tokenvisor_testkit::FakeProvider::start(tokenvisor_testkit::FakeConfig {
            dialect: Dialect::Rotating {
                grace: Duration::from_secs(600),
            },
            expires_in: 3600,
            ..tokenvisor_testkit::FakeConfig::default()
        })
        .await
        .unwrap();
        let harness = Harness::start(Arc::new(MemoryStore::new()), fake.clone(), paused_config()).await;
        let id = harness.connect("lost").await.id;
        fake.drop_next_answers_after_rotation(1);
        let lost = harness.tokenvisor.tokens().force_refresh(id).await;
        assert!(lost.is_err(), "the lost answer is a transient failure");
        if deactivate_first {
            harness.tokenvisor.connections().deactivate(id).await.unwrap();
        }
        harness.tokenvisor.connections().activate(id).await.unwrap();
        // Past the grace period, and then some scheduled refreshes.
        sleep_secs(2 * 3600).await;
        assert_eq!(
            fake.family_revocations(),
            0,
            "the previous refresh token was presented after the grace period (deactivate first: {deactivate_first})"
        );
        let row = harness.store.get_connection(id).await.unwrap().unwrap();
        assert!(
            holds_current_refresh_token(Some(&row), &fake, "lost"),
            "the stored refresh token is not the provider's current one (deactivate first: {deactivate_first})"
        );
        let _ = harness.tokenvisor.shutdown().await;
    }
}
