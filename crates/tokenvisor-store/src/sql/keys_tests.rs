//! Key rotation against a real SQLite file and a real PostgreSQL: every secret ends
//! under the new key, a rotation resumes after an interruption, and a writer racing the
//! rotation never loses an update.

use super::*;
use crate::sql::{EndpointSource, SqlStore, WebhookEndpoint};
use crate::{CasOutcome, Store as _};
use chrono::{SubsecRound as _, Utc};
use std::sync::Arc;
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionKey, ConnectionStatus, Integration, IntegrationId, PendingAuthorization,
    SecretString, TenantId,
};
use tokenvisor_testkit::database::TestDatabase as TestDb;

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test]
                async fn sqlite() {
                    super::$scenario(super::TestDb::sqlite()).await;
                }

                #[tokio::test]
                async fn postgres() {
                    super::$scenario(super::TestDb::postgres().await).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_rotation_rewrites_every_secret_under_the_primary_key_and_a_second_run_changes_nothing,
    an_interrupted_rotation_resumes_after_its_last_committed_batch,
    a_writer_racing_the_rotation_never_loses_an_update,
    a_commit_between_the_rotations_read_and_write_is_kept,
    a_second_rotation_running_at_once_stops_the_first_and_finishes_alone,
);

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn integration() -> Integration {
    let now = Utc::now().trunc_subsecs(6);
    Integration {
        id: IntegrationId::new(),
        name: "zoho".to_owned(),
        provider: "zoho".to_owned(),
        client_id: "client-id".to_owned(),
        client_secret: SecretString::new("client-secret-value"),
        scopes: vec!["offline_access".to_owned()],
        redirect_uri: None,
        data_center: None,
        token_url: None,
        authorize_url: None,
        revoke_url: None,
        settings: serde_json::json!({}),
        created_at: now,
        updated_at: now,
    }
}

fn connection(integration_id: IntegrationId, index: usize) -> Connection {
    let now = Utc::now().trunc_subsecs(6);
    Connection {
        id: ConnectionId::new(),
        tenant_id: TenantId::parse(format!("tenant-{index}")).expect("tenant"),
        integration_id,
        connection_key: ConnectionKey::default(),
        access_token: SecretString::new(format!("access-{index}")),
        // Every third connection has no refresh token: a NULL column is guarded too.
        refresh_token: (!index.is_multiple_of(3)).then(|| SecretString::new(format!("refresh-{index}"))),
        token_type: "Bearer".to_owned(),
        scope: None,
        issued_at: now,
        expires_at: now + chrono::Duration::hours(1),
        next_refresh_at: None,
        last_refresh_at: None,
        status: ConnectionStatus::Active,
        is_active: true,
        refresh_failures: 0,
        consecutive_failures: 0,
        last_error: None,
        metadata: serde_json::Map::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// A database written under key 1: an integration, `count` connections, a pending
/// authorization and a webhook endpoint with a previous secret.
async fn seed(db: &TestDb, count: usize) -> (Integration, Vec<Connection>) {
    let store = SqlStore::connect(db.url(), Keyring::new(key(1), vec![]))
        .await
        .expect("store opens");
    let integration = integration();
    store.insert_integration(&integration).await.expect("integration");
    let connections: Vec<Connection> = (0..count).map(|index| connection(integration.id, index)).collect();
    store.insert_connections(&connections).await.expect("connections");
    let now = Utc::now().trunc_subsecs(6);
    store
        .insert_authorization(&PendingAuthorization {
            state_hash: "b".repeat(64),
            tenant_id: TenantId::parse("acme").expect("tenant"),
            integration_id: integration.id,
            connection_id: None,
            connection_key: None,
            redirect_uri: "https://app.example/callback".to_owned(),
            return_to: None,
            code_verifier: Some(SecretString::new("verifier-value")),
            created_at: now,
            expires_at: now + chrono::Duration::minutes(10),
        })
        .await
        .expect("authorization");
    store
        .webhook_outbox()
        .insert_endpoint(&WebhookEndpoint {
            id: "endpoint-1".to_owned(),
            url: "https://hooks.example/in".to_owned(),
            event_types: Vec::new(),
            enabled: true,
            source: EndpointSource::Api,
            secret: SecretString::new("whsec_current"),
            previous_secret: Some(SecretString::new("whsec_previous")),
            previous_secret_expires_at: Some(now),
            max_attempts: None,
            max_age_seconds: None,
            outbox_cap: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .expect("endpoint");
    store.close().await.expect("close");
    (integration, connections)
}

fn count_under(usage: &[KeyUsage], key_id: KeyId) -> u64 {
    let id = key_id.to_string();
    usage
        .iter()
        .filter(|usage| usage.key_id.as_deref() == Some(id.as_str()))
        .map(|usage| usage.count)
        .sum()
}

async fn a_rotation_rewrites_every_secret_under_the_primary_key_and_a_second_run_changes_nothing(db: TestDb) {
    let (integration, connections) = seed(&db, 25).await;
    let old_id = Keyring::new(key(1), vec![]).primary_key_id();
    let rotated = Keyring::new(key(2), vec![key(1)]);
    let store = SqlStore::connect(db.url(), rotated.clone()).await.expect("store opens");
    let rotation = store.key_rotation();

    let before = rotation.usage().await.expect("usage");
    // 25 access tokens, 16 refresh tokens, 1 client secret, 1 verifier, 2 webhook secrets, the key check.
    let values = 25 + 16 + 1 + 1 + 2 + 1;
    assert_eq!(count_under(&before, old_id), values, "{before:?}");
    assert_eq!(rotation.values_not_current().await.expect("count"), values);

    let mut batches = 0;
    let progress = rotation
        .rotate(
            &RotationOptions {
                batch_size: 7,
                pause: Duration::ZERO,
            },
            |_| batches += 1,
        )
        .await
        .expect("rotation");
    assert!(progress.finished(), "{progress:?}");
    assert!(progress.finished_at_ms.is_some());
    assert_eq!(progress.target_key_id, rotated.primary_key_id().to_string());
    // Rows, not values: 25 connections, 1 integration, 1 authorization, 1 endpoint, the key check.
    assert_eq!(progress.rows_rewritten(), 29, "{progress:?}");
    assert_eq!(progress.rows_current(), 0);
    assert!(batches >= 25 / 7, "{batches} batches");
    assert_eq!(rotation.values_not_current().await.expect("count"), 0);
    let after = rotation.usage().await.expect("usage");
    assert_eq!(count_under(&after, rotated.primary_key_id()), values, "{after:?}");

    let again = rotation
        .rotate(&RotationOptions::default(), |_| {})
        .await
        .expect("second run");
    assert_eq!(again, progress, "a finished rotation is not redone");
    store.close().await.expect("close");

    // Only the new key now: everything reads.
    let store = SqlStore::connect(db.url(), Keyring::new(key(2), vec![]))
        .await
        .expect("the new key alone opens the store");
    for expected in &connections {
        let loaded = store
            .get_connection(expected.id)
            .await
            .expect("reads")
            .expect("present");
        assert_eq!(loaded.access_token.expose(), expected.access_token.expose());
        assert_eq!(
            loaded.refresh_token.as_ref().map(SecretString::expose),
            expected.refresh_token.as_ref().map(SecretString::expose)
        );
        assert_eq!(loaded.version, expected.version, "rotation does not bump the version");
    }
    let loaded = store
        .get_integration(integration.id)
        .await
        .expect("reads")
        .expect("present");
    assert_eq!(loaded.client_secret.expose(), "client-secret-value");
    let endpoint = store
        .webhook_outbox()
        .get_endpoint("endpoint-1")
        .await
        .expect("reads")
        .expect("present");
    assert_eq!(endpoint.secret.expose(), "whsec_current");
    assert_eq!(
        endpoint.previous_secret.as_ref().map(SecretString::expose),
        Some("whsec_previous")
    );
    let pending = store
        .take_authorization(&"b".repeat(64))
        .await
        .expect("reads")
        .expect("present");
    assert_eq!(
        pending.code_verifier.as_ref().map(SecretString::expose),
        Some("verifier-value")
    );
}

async fn an_interrupted_rotation_resumes_after_its_last_committed_batch(db: TestDb) {
    let (_, connections) = seed(&db, 60).await;
    let store = SqlStore::connect(db.url(), Keyring::new(key(2), vec![key(1)]))
        .await
        .expect("store opens");
    let rotation = store.key_rotation();
    let options = RotationOptions {
        batch_size: 10,
        pause: Duration::from_millis(20),
    };
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let running = {
        let rotation = rotation.clone();
        let options = options.clone();
        tokio::spawn(async move {
            rotation
                .rotate(&options, move |progress| {
                    let _ = sender.send(progress.clone());
                })
                .await
        })
    };
    // Stop it in the middle of the connections (as a crash would: nothing runs after).
    loop {
        let progress = receiver.recv().await.expect("progress");
        let connections_table = progress.tables.last().expect("tables");
        if connections_table.rows_rewritten >= 20 {
            running.abort();
            break;
        }
    }
    let _ = running.await;
    let interrupted = rotation.progress(None).await.expect("progress").expect("recorded");
    assert!(!interrupted.finished(), "{interrupted:?}");
    let done_before = interrupted.tables.last().expect("tables").rows_rewritten;
    assert!((20..60).contains(&done_before), "{interrupted:?}");
    assert!(rotation.values_not_current().await.expect("count") > 0, "work is left");

    let finished = rotation.rotate(&options, |_| {}).await.expect("resumed");
    assert!(finished.finished());
    let table = finished.tables.last().expect("tables");
    assert_eq!(
        (table.rows_rewritten, table.rows_current),
        (connections.len() as u64, 0),
        "resumed after the cursor: no row was read twice"
    );
    assert_eq!(rotation.values_not_current().await.expect("count"), 0);
}

async fn a_writer_racing_the_rotation_never_loses_an_update(db: TestDb) {
    let (_, connections) = seed(&db, 40).await;
    let store = SqlStore::connect(db.url(), Keyring::new(key(2), vec![key(1)]))
        .await
        .expect("store opens");
    // The writer still seals under the old key (a replica not restarted yet): every one of
    // its commits makes a value the rotation must rewrite, and races it.
    let writer_store = Arc::new(
        SqlStore::connect(db.url(), Keyring::new(key(1), vec![key(2)]))
            .await
            .expect("writer's store opens"),
    );
    let rotation = store.key_rotation();
    let writer = {
        let store = Arc::clone(&writer_store);
        let ids: Vec<ConnectionId> = connections.iter().map(|connection| connection.id).collect();
        tokio::spawn(async move {
            let mut last = std::collections::HashMap::new();
            for round in 0..6 {
                for id in &ids {
                    let mut current = store.get_connection(*id).await.expect("reads").expect("present");
                    let expected = current.version;
                    current.access_token = SecretString::new(format!("access-{id}-{round}"));
                    current.refresh_token = Some(SecretString::new(format!("refresh-{id}-{round}")));
                    match store.compare_and_swap(&current, expected).await.expect("cas") {
                        CasOutcome::Committed { .. } => {
                            last.insert(*id, round);
                        }
                        other => panic!("only this writer bumps versions: {other:?}"),
                    }
                }
            }
            last
        })
    };
    let options = RotationOptions {
        batch_size: 3,
        pause: Duration::ZERO,
    };
    let mut raced = 0;
    loop {
        let progress = rotation.rotate(&options, |_| {}).await.expect("rotation");
        raced += progress.rows_raced();
        if writer.is_finished() {
            break;
        }
    }
    let last = writer.await.expect("writer");
    // The writer has stopped: one more run catches what it wrote under the old key.
    rotation.rotate(&options, |_| {}).await.expect("last rotation");
    for connection in &connections {
        let round = last[&connection.id];
        let loaded = store
            .get_connection(connection.id)
            .await
            .expect("reads")
            .expect("present");
        assert_eq!(
            loaded.access_token.expose(),
            format!("access-{}-{round}", connection.id),
            "the writer's last commit survives the rotation"
        );
        assert_eq!(
            loaded.refresh_token.as_ref().map(SecretString::expose),
            Some(format!("refresh-{}-{round}", connection.id).as_str())
        );
        assert_eq!(loaded.version, 7, "six commits, none lost, none added by the rotation");
    }
    assert_eq!(rotation.values_not_current().await.expect("count"), 0);
    eprintln!("compare-and-set updates lost to the writer and retried: {raced}");
}

async fn a_commit_between_the_rotations_read_and_write_is_kept(db: TestDb) {
    let (_, connections) = seed(&db, 12).await;
    let store = SqlStore::connect(db.url(), Keyring::new(key(2), vec![key(1)]))
        .await
        .expect("store opens");
    let writer_store = Arc::new(
        SqlStore::connect(db.url(), Keyring::new(key(1), vec![key(2)]))
            .await
            .expect("writer's store opens"),
    );
    let ids: Arc<Vec<ConnectionId>> = Arc::new(connections.iter().map(|connection| connection.id).collect());
    let commits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = {
        let commits = Arc::clone(&commits);
        let writer_store = Arc::clone(&writer_store);
        move |table: &'static str| -> futures::future::BoxFuture<'static, ()> {
            let store = Arc::clone(&writer_store);
            let ids = Arc::clone(&ids);
            let commits = Arc::clone(&commits);
            Box::pin(async move {
                if table != "tokenvisor_connections" {
                    return;
                }
                // A refresh of every connection commits (under the old key) after the
                // rotation read its batch and before it writes it.
                for id in ids.iter() {
                    let mut current = store.get_connection(*id).await.expect("reads").expect("present");
                    let round = commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    current.access_token = SecretString::new(format!("access-{id}-{round}"));
                    let expected = current.version;
                    assert!(matches!(
                        store.compare_and_swap(&current, expected).await.expect("cas"),
                        CasOutcome::Committed { .. }
                    ));
                }
            })
        }
    };
    let rotation = store.key_rotation();
    let options = RotationOptions {
        batch_size: 5,
        pause: Duration::ZERO,
    };
    let progress = rotation
        .rotate_with_hook(&options, |_| {}, Some(&hook))
        .await
        .expect("rotation");
    let table = progress.tables.last().expect("tables");
    assert_eq!(
        table.rows_raced, 12,
        "every row of every batch lost its first compare-and-set: {table:?}"
    );
    for connection in &connections {
        let loaded = store
            .get_connection(connection.id)
            .await
            .expect("reads")
            .expect("present");
        let current = writer_store
            .get_connection(connection.id)
            .await
            .expect("reads")
            .expect("present");
        assert_eq!(loaded.access_token.expose(), current.access_token.expose());
        assert!(
            loaded
                .access_token
                .expose()
                .starts_with(&format!("access-{}-", connection.id)),
            "the writer's commit is kept, not the value the rotation read"
        );
        // Three batches (5, 5, 2): a connection is written by the writer once per batch.
        assert_eq!(loaded.version, 4);
    }
    // The writer's later commits (under the old key) to rows of earlier batches are
    // counted, and a second run rewrites them.
    assert!(rotation.values_not_current().await.expect("count") > 0);
    let again = rotation.rotate(&options, |_| {}).await.expect("second run");
    assert!(again.finished());
    assert_eq!(rotation.values_not_current().await.expect("count"), 0);
}

/// Two rotations towards one key (the CLI beside `POST /v1/keys/rotate`, or two
/// replicas): the progress row has one writer. The rotation whose progress moved under it
/// stops with an error at its next batch instead of writing its stale cursor and counts
/// over the other's; the other finishes, and every value ends under the primary key.
async fn a_second_rotation_running_at_once_stops_the_first_and_finishes_alone(db: TestDb) {
    let _ = seed(&db, 12).await;
    let first = SqlStore::connect(db.url(), Keyring::new(key(2), vec![key(1)]))
        .await
        .expect("store opens");
    let second = Arc::new(
        SqlStore::connect(db.url(), Keyring::new(key(2), vec![key(1)]))
            .await
            .expect("second store opens"),
    );
    let options = RotationOptions {
        batch_size: 5,
        pause: Duration::ZERO,
    };
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let second_finished = Arc::new(std::sync::Mutex::new(None));
    let hook = {
        let ran = Arc::clone(&ran);
        let second = Arc::clone(&second);
        let second_finished = Arc::clone(&second_finished);
        let second_options = options.clone();
        move |_table: &'static str| -> futures::future::BoxFuture<'static, ()> {
            let options = second_options.clone();
            let ran = Arc::clone(&ran);
            let second = Arc::clone(&second);
            let second_finished = Arc::clone(&second_finished);
            Box::pin(async move {
                if ran.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                // The whole second rotation runs between the first one's first read and
                // its first write.
                let progress = second
                    .key_rotation()
                    .rotate(&options, |_| {})
                    .await
                    .expect("the second rotation");
                *second_finished.lock().expect("lock") = Some(progress);
            })
        }
    };
    let rotation = first.key_rotation();
    let error = rotation
        .rotate_with_hook(&options, |_| {}, Some(&hook))
        .await
        .expect_err("the first rotation's progress moved under it");
    assert!(error.to_string().contains("another key rotation"), "{error}");
    let finished = second_finished.lock().expect("lock").take().expect("the second ran");
    assert!(finished.finished(), "{finished:?}");
    assert_eq!(rotation.values_not_current().await.expect("count"), 0);
    // The recorded progress is the second rotation's, not overwritten by the first.
    let recorded = rotation.progress(None).await.expect("progress").expect("recorded");
    assert!(recorded.finished(), "{recorded:?}");
    assert_eq!(recorded.rows_rewritten(), finished.rows_rewritten(), "{recorded:?}");
}

/// A new encrypted column must be added to the rotation's list, or rotation would leave
/// it under the old key: every binary column of the schema is listed.
#[tokio::test]
async fn every_binary_column_of_the_schema_is_rotated() {
    let db = TestDb::postgres().await;
    let store = SqlStore::connect(db.url(), Keyring::new(key(1), vec![]))
        .await
        .expect("store opens");
    let rows = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_name || '.' || column_name AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND data_type = 'bytea' ORDER BY 1",
        ))
        .await
        .expect("schema");
    let mut binary: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "name").expect("name"))
        .collect();
    binary.sort();
    let mut listed = encrypted_columns();
    listed.sort();
    assert_eq!(binary, listed);
}
