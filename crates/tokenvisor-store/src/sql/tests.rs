//! The SQL store against a real SQLite file and a real PostgreSQL (one fresh database per
//! test). PostgreSQL comes from `TOKENVISOR_TEST_POSTGRES_URL` (an admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`); when it is unreachable the PostgreSQL
//! tests fail rather than being skipped.

use super::*;
use chrono::{DateTime, SubsecRound as _, Utc};
use tokenvisor_core::{ConnectionCursor, RefreshOutcomeKind, RefreshReason};

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
    integrations_and_connections_round_trip,
    duplicates_and_unknown_integrations_are_conflicts,
    a_compare_and_swap_commits_and_increments_the_version,
    a_stale_compare_and_swap_returns_the_current_row_and_changes_nothing,
    concurrent_compare_and_swaps_commit_exactly_once,
    listing_honours_every_filter_and_load_supervised_only_active_ones,
    the_refresh_history_is_bounded_and_deleted_with_its_connection,
    a_ciphertext_copied_to_another_row_or_column_fails_to_decrypt,
    a_wrong_key_is_refused_and_changes_nothing,
    a_rotated_keyring_reads_old_data_and_writes_with_the_new_key,
    migrate_alone_prepares_a_database_for_a_store,
    an_authorization_state_is_usable_once_and_its_verifier_is_encrypted,
    refresh_commits_of_many_connections_land_together_and_a_stale_one_conflicts,
    concurrent_refresh_commits_of_one_connection_commit_exactly_once,
    refresh_commits_keep_the_history_bounded_and_skip_deleted_connections,
    a_failing_refresh_commit_fails_alone_and_the_others_commit,
    an_integration_is_updated_and_deleted_only_once_no_connection_uses_it,
    attempts_are_counted_per_minute_and_outcome_since_a_time,
    api_keys_and_the_audit_trail_round_trip,
    the_connection_summary_counts_by_integration_status_expiry_and_error,
    sorted_pages_follow_each_order_without_duplicate_or_gap_ties_broken_by_id,
    the_search_matches_prefixes_of_tenant_key_and_integration_name_literally,
);

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn now() -> DateTime<Utc> {
    // PostgreSQL keeps microseconds: compare values both backends store exactly.
    Utc::now().trunc_subsecs(6)
}

fn sample_integration(name: &str) -> Integration {
    let now = now();
    Integration {
        id: IntegrationId::new(),
        name: name.to_owned(),
        provider: "zoho".to_owned(),
        client_id: "client-id-1".to_owned(),
        client_secret: SecretString::new(format!("client-secret-of-{name}")),
        scopes: vec!["ZohoCRM.modules.ALL".to_owned(), "offline_access".to_owned()],
        redirect_uri: Some("https://app.example/callback".to_owned()),
        data_center: Some("eu".to_owned()),
        token_url: None,
        authorize_url: Some("https://accounts.zoho.eu/oauth/v2/auth".to_owned()),
        revoke_url: None,
        settings: serde_json::json!({"client_auth": "body", "max_tokens_per_10_min": 10}),
        created_at: now,
        updated_at: now,
    }
}

fn sample_connection(integration_id: IntegrationId, tenant: &str) -> Connection {
    let now = now();
    let mut metadata = serde_json::Map::new();
    metadata.insert("api_domain".to_owned(), serde_json::json!("https://www.zohoapis.eu"));
    metadata.insert("nested".to_owned(), serde_json::json!({"a": [1, 2, 3], "b": null}));
    Connection {
        id: ConnectionId::new(),
        tenant_id: TenantId::parse(tenant).expect("valid tenant"),
        integration_id,
        connection_key: tokenvisor_core::ConnectionKey::default(),
        access_token: SecretString::new(format!("access-{}", Uuid::new_v4())),
        refresh_token: Some(SecretString::new(format!("refresh-{}", Uuid::new_v4()))),
        token_type: "Bearer".to_owned(),
        scope: Some("ZohoCRM.modules.ALL".to_owned()),
        issued_at: now,
        expires_at: now + chrono::Duration::hours(1),
        next_refresh_at: Some(now + chrono::Duration::minutes(45)),
        last_refresh_at: None,
        status: ConnectionStatus::Active,
        is_active: true,
        refresh_failures: 0,
        consecutive_failures: 0,
        last_error: None,
        metadata,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

fn sample_attempt(connection_id: ConnectionId, sequence: i64) -> RefreshAttempt {
    RefreshAttempt {
        connection_id,
        started_at: now(),
        reason: RefreshReason::OnDemand,
        outcome: if sequence % 2 == 0 {
            RefreshOutcomeKind::Success
        } else {
            RefreshOutcomeKind::RateLimited
        },
        error_code: (sequence % 2 == 1).then(|| "http_429".to_owned()),
        http_status: Some(if sequence % 2 == 0 { 200 } else { 429 }),
        duration_ms: sequence,
    }
}

/// Every field, secrets included, as comparable text.
fn connection_fingerprint(connection: &Connection) -> String {
    format!(
        "{connection:?} access={} refresh={:?}",
        connection.access_token.expose(),
        connection.refresh_token.as_ref().map(SecretString::expose)
    )
}

fn integration_fingerprint(integration: &Integration) -> String {
    format!("{integration:?} secret={}", integration.client_secret.expose())
}

async fn open_store(db: &TestDb, keyring: Keyring) -> SqlStore {
    SqlStore::connect(db.url(), keyring).await.expect("store opens")
}

/// Every stored ciphertext and the key check, byte for byte, read without the store.
async fn raw_ciphertexts(url: &str) -> Vec<(String, Vec<u8>)> {
    let db = open(url, POSTGRES_POOL_SIZE).await.expect("raw connection");
    let mut all = Vec::new();
    for row in connection::Entity::find()
        .order_by_asc(connection::Column::Id)
        .all(&db)
        .await
        .expect("connections")
    {
        all.push((format!("{}:access_token", row.id), row.access_token));
        all.push((
            format!("{}:refresh_token", row.id),
            row.refresh_token.unwrap_or_default(),
        ));
    }
    for row in integration::Entity::find()
        .order_by_asc(integration::Column::Id)
        .all(&db)
        .await
        .expect("integrations")
    {
        all.push((format!("{}:client_secret", row.id), row.client_secret));
    }
    for row in meta::Entity::find()
        .order_by_asc(meta::Column::Key)
        .all(&db)
        .await
        .expect("meta")
    {
        all.push((row.key, row.value));
    }
    db.close().await.expect("close raw connection");
    all
}

async fn integrations_and_connections_round_trip(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    assert_eq!(
        store.backend_name(),
        if db.backend() == tokenvisor_testkit::database::Backend::Postgres {
            "postgres"
        } else {
            "sqlite"
        }
    );
    store.ping().await.expect("ping");

    let zoho = sample_integration("zoho-eu");
    let jira = Integration {
        provider: "atlassian".to_owned(),
        ..sample_integration("jira")
    };
    store.insert_integration(&zoho).await.expect("insert zoho");
    store.insert_integration(&jira).await.expect("insert jira");

    let by_id = store.get_integration(zoho.id).await.expect("get").expect("present");
    assert_eq!(integration_fingerprint(&by_id), integration_fingerprint(&zoho));
    let by_name = store
        .find_integration_by_name("jira")
        .await
        .expect("find")
        .expect("present");
    assert_eq!(integration_fingerprint(&by_name), integration_fingerprint(&jira));
    assert!(store.find_integration_by_name("nope").await.expect("find").is_none());
    assert!(
        store
            .get_integration(IntegrationId::new())
            .await
            .expect("get")
            .is_none()
    );
    let names: Vec<String> = store
        .list_integrations()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["jira", "zoho-eu"]);

    let with_refresh = Connection {
        last_error: Some(LastError {
            code: "http_503".to_owned(),
            message: "provider unavailable".to_owned(),
            at: now(),
        }),
        status: ConnectionStatus::Degraded,
        consecutive_failures: 2,
        refresh_failures: 3,
        last_refresh_at: Some(now()),
        ..sample_connection(zoho.id, "acme")
    };
    let without_refresh = Connection {
        refresh_token: None,
        scope: None,
        next_refresh_at: None,
        metadata: serde_json::Map::new(),
        ..sample_connection(jira.id, "globex")
    };
    store.insert_connection(&with_refresh).await.expect("insert");
    store.insert_connection(&without_refresh).await.expect("insert");

    let loaded = store
        .get_connection(with_refresh.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(connection_fingerprint(&loaded), connection_fingerprint(&with_refresh));
    assert_eq!(
        loaded.metadata["nested"],
        serde_json::json!({"a": [1, 2, 3], "b": null})
    );
    let loaded = store
        .get_connection(without_refresh.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        connection_fingerprint(&loaded),
        connection_fingerprint(&without_refresh)
    );
    assert!(loaded.refresh_token.is_none());
    assert!(store.get_connection(ConnectionId::new()).await.expect("get").is_none());

    // Secrets are stored encrypted: no plaintext in the raw rows.
    for (place, bytes) in raw_ciphertexts(db.url()).await {
        for secret in [with_refresh.access_token.expose(), zoho.client_secret.expose()] {
            assert!(
                !bytes.windows(secret.len()).any(|window| window == secret.as_bytes()),
                "{place} is plaintext"
            );
        }
    }
    store.close().await.expect("close");
}

async fn an_integration_is_updated_and_deleted_only_once_no_connection_uses_it(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    store
        .insert_integration(&sample_integration("jira"))
        .await
        .expect("insert");

    let mut changed = integration.clone();
    changed.client_secret = SecretString::new("rotated-secret");
    changed.scopes = vec!["write".to_owned()];
    changed.updated_at = integration.updated_at + chrono::Duration::seconds(1);
    assert!(store.update_integration(&changed).await.expect("update"));
    let stored = store
        .get_integration(integration.id)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(stored.client_secret.expose(), "rotated-secret");
    assert_eq!(stored.scopes, ["write"]);
    assert_eq!(stored.updated_at, changed.updated_at);
    assert_eq!(stored.created_at, integration.created_at);
    let mut renamed = changed.clone();
    renamed.name = "jira".to_owned();
    let error = store.update_integration(&renamed).await.expect_err("name taken");
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    let mut unknown = changed.clone();
    unknown.id = IntegrationId::new();
    unknown.name = "other".to_owned();
    assert!(!store.update_integration(&unknown).await.expect("update"));

    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");
    let sandbox = Connection {
        id: ConnectionId::new(),
        connection_key: tokenvisor_core::ConnectionKey::parse("sandbox").expect("valid"),
        ..sample_connection(integration.id, "acme")
    };
    store.insert_connection(&sandbox).await.expect("another key");
    let twin = sample_connection(integration.id, "acme");
    let error = store.insert_connection(&twin).await.expect_err("same tenant and key");
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    let of_integration = ConnectionFilter {
        integration_id: Some(integration.id),
        ..ConnectionFilter::default()
    };
    assert_eq!(store.count_connections(&of_integration).await.expect("count"), 2);
    let sandboxes = ConnectionFilter {
        connection_key: Some(tokenvisor_core::ConnectionKey::parse("sandbox").expect("valid")),
        ..ConnectionFilter::default()
    };
    let listed = store.list_connections(&sandboxes).await.expect("list");
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), [sandbox.id]);

    let error = store.delete_integration(integration.id).await.expect_err("in use");
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    assert!(store.get_integration(integration.id).await.expect("read").is_some());
    for id in [connection.id, sandbox.id] {
        assert!(store.delete_connection(id).await.expect("delete"));
    }
    assert!(store.delete_integration(integration.id).await.expect("delete"));
    assert!(store.get_integration(integration.id).await.expect("read").is_none());
    assert!(!store.delete_integration(integration.id).await.expect("delete"));
    store.close().await.expect("close");
}

async fn duplicates_and_unknown_integrations_are_conflicts(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");

    let same_name = sample_integration("zoho");
    let error = store.insert_integration(&same_name).await.expect_err("duplicate name");
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    assert!(!error.to_string().contains(same_name.client_secret.expose()));

    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");
    let error = store.insert_connection(&connection).await.expect_err("duplicate id");
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    assert!(!error.to_string().contains(connection.access_token.expose()));

    let orphan = sample_connection(IntegrationId::new(), "acme");
    let error = store.insert_connection(&orphan).await.expect_err("unknown integration");
    assert!(matches!(error, StoreError::Conflict(_)), "{error}");
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(store.get_connection(orphan.id).await.expect("get").is_none());
    store.close().await.expect("close");
}

async fn a_compare_and_swap_commits_and_increments_the_version(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");

    let mut next = connection.clone();
    next.access_token = SecretString::new("access-2");
    next.refresh_token = Some(SecretString::new("refresh-2"));
    next.last_refresh_at = Some(now());
    next.metadata.insert("cloud_id".to_owned(), serde_json::json!("abc"));
    next.version = 999; // ignored
    let outcome = store.compare_and_swap(&next, 1).await.expect("cas");
    assert!(matches!(outcome, CasOutcome::Committed { version: 2 }), "{outcome:?}");

    let stored = store
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(stored.version, 2);
    assert_eq!(
        connection_fingerprint(&stored),
        connection_fingerprint(&Connection {
            version: 2,
            ..next.clone()
        })
    );

    // Another store on the same database sees the committed write at once.
    let other = open_store(&db, Keyring::new(key(1), vec![])).await;
    let seen = other
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(seen.access_token.expose(), "access-2");
    other.close().await.expect("close");

    let outcome = store.compare_and_swap(&next, 2).await.expect("cas");
    assert!(matches!(outcome, CasOutcome::Committed { version: 3 }), "{outcome:?}");

    let missing = sample_connection(integration.id, "acme");
    let outcome = store.compare_and_swap(&missing, 1).await.expect("cas");
    assert!(matches!(outcome, CasOutcome::Conflict { current: None }), "{outcome:?}");
    assert!(store.get_connection(missing.id).await.expect("get").is_none());
    store.close().await.expect("close");
}

async fn a_stale_compare_and_swap_returns_the_current_row_and_changes_nothing(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("atlassian");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");

    let mut winner = connection.clone();
    winner.access_token = SecretString::new("winner-access");
    winner.refresh_token = Some(SecretString::new("winner-refresh"));
    assert!(matches!(
        store.compare_and_swap(&winner, 1).await.expect("cas"),
        CasOutcome::Committed { version: 2 }
    ));
    let before = raw_ciphertexts(db.url()).await;

    let mut loser = connection.clone();
    loser.access_token = SecretString::new("loser-access");
    loser.refresh_token = Some(SecretString::new("loser-refresh"));
    loser.status = ConnectionStatus::NeedsReauth;
    let CasOutcome::Conflict { current: Some(current) } = store.compare_and_swap(&loser, 1).await.expect("cas") else {
        panic!("a stale version must conflict");
    };
    assert_eq!(current.version, 2);
    assert_eq!(
        connection_fingerprint(&current),
        connection_fingerprint(&Connection {
            version: 2,
            ..winner.clone()
        })
    );

    let stored = store
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(connection_fingerprint(&stored), connection_fingerprint(&current));
    assert_eq!(
        raw_ciphertexts(db.url()).await,
        before,
        "a conflicting write changes nothing"
    );
    store.close().await.expect("close");
}

async fn concurrent_compare_and_swaps_commit_exactly_once(db: TestDb) {
    let store = std::sync::Arc::new(open_store(&db, Keyring::new(key(1), vec![])).await);
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");

    let mut writers = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        let mut next = connection.clone();
        next.access_token = SecretString::new(format!("access-from-{writer}"));
        writers.push(tokio::spawn(async move {
            store.compare_and_swap(&next, 1).await.expect("cas")
        }));
    }
    let mut committed = Vec::new();
    for (writer, handle) in writers.into_iter().enumerate() {
        match handle.await.expect("writer") {
            CasOutcome::Committed { version } => committed.push((writer, version)),
            CasOutcome::Conflict { current } => assert_eq!(current.expect("still there").version, 2),
            CasOutcome::Fenced => panic!("an unfenced write is never fenced"),
        }
    }
    assert_eq!(committed.len(), 1, "{committed:?}");
    let (winner, version) = committed[0];
    assert_eq!(version, 2);
    let stored = store
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(stored.access_token.expose(), format!("access-from-{winner}"));
}

async fn listing_honours_every_filter_and_load_supervised_only_active_ones(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let zoho = sample_integration("zoho");
    let jira = sample_integration("jira");
    store.insert_integration(&zoho).await.expect("insert");
    store.insert_integration(&jira).await.expect("insert");

    let active = sample_connection(zoho.id, "acme");
    let degraded = Connection {
        status: ConnectionStatus::Degraded,
        ..sample_connection(jira.id, "acme")
    };
    let needs_reauth = Connection {
        status: ConnectionStatus::NeedsReauth,
        is_active: false,
        ..sample_connection(zoho.id, "globex")
    };
    let disabled = Connection {
        status: ConnectionStatus::Disabled,
        is_active: false,
        ..sample_connection(zoho.id, "initech")
    };
    let active_but_switched_off = Connection {
        is_active: false,
        ..sample_connection(jira.id, "globex")
    };
    let all = [&active, &degraded, &needs_reauth, &disabled, &active_but_switched_off];
    for connection in all {
        store.insert_connection(connection).await.expect("insert");
    }
    let ids = |connections: Vec<Connection>| connections.into_iter().map(|c| c.id).collect::<Vec<_>>();
    let sorted = |mut expected: Vec<ConnectionId>| {
        expected.sort();
        expected
    };

    let supervised: Vec<Connection> = futures::TryStreamExt::try_collect(store.load_supervised())
        .await
        .expect("supervised");
    assert_eq!(sorted(ids(supervised)), sorted(vec![active.id, degraded.id]));

    let everything = ids(store
        .list_connections(&ConnectionFilter::default())
        .await
        .expect("list"));
    assert_eq!(everything, sorted(all.iter().map(|c| c.id).collect()));

    let acme = ConnectionFilter {
        tenant_id: Some(TenantId::parse("acme").expect("tenant")),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_connections(&acme).await.expect("list")),
        sorted(vec![active.id, degraded.id])
    );

    let reauth = ConnectionFilter {
        status: Some(ConnectionStatus::NeedsReauth),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_connections(&reauth).await.expect("list")),
        vec![needs_reauth.id]
    );

    let of_jira = ConnectionFilter {
        integration_id: Some(jira.id),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_connections(&of_jira).await.expect("list")),
        sorted(vec![degraded.id, active_but_switched_off.id])
    );

    let combined = ConnectionFilter {
        tenant_id: Some(TenantId::parse("globex").expect("tenant")),
        integration_id: Some(zoho.id),
        status: Some(ConnectionStatus::NeedsReauth),
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_connections(&combined).await.expect("list")),
        vec![needs_reauth.id]
    );

    // Paging with a cursor walks every row once, in id order.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = ConnectionFilter {
            after,
            limit: Some(2),
            ..Default::default()
        };
        let batch = ids(store.list_connections(&page).await.expect("list"));
        assert!(batch.len() <= 2);
        let Some(last) = batch.last().copied() else { break };
        paged.extend(batch);
        after = Some(last);
    }
    assert_eq!(paged, everything);
    store.close().await.expect("close");
}

async fn the_refresh_history_is_bounded_and_deleted_with_its_connection(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let busy = sample_connection(integration.id, "acme");
    let quiet = sample_connection(integration.id, "globex");
    store.insert_connection(&busy).await.expect("insert");
    store.insert_connection(&quiet).await.expect("insert");

    let total = ATTEMPT_HISTORY_LIMIT as i64 + 8; // the newest one (odd) is rate limited
    for sequence in 0..total {
        store
            .record_attempt(&sample_attempt(busy.id, sequence))
            .await
            .expect("record");
    }
    store
        .record_attempt(&sample_attempt(quiet.id, 1))
        .await
        .expect("record");

    let history = store.list_attempts(busy.id, 1_000).await.expect("list");
    assert_eq!(history.len() as u64, ATTEMPT_HISTORY_LIMIT);
    let durations: Vec<i64> = history.iter().map(|attempt| attempt.duration_ms).collect();
    let expected: Vec<i64> = (total - ATTEMPT_HISTORY_LIMIT as i64..total).rev().collect();
    assert_eq!(durations, expected, "newest first, oldest dropped");
    let newest = &history[0];
    assert_eq!(newest.reason, RefreshReason::OnDemand);
    assert_eq!(newest.outcome, RefreshOutcomeKind::RateLimited);
    assert_eq!(newest.error_code.as_deref(), Some("http_429"));
    assert_eq!(newest.http_status, Some(429));
    assert_eq!(store.list_attempts(busy.id, 3).await.expect("list").len(), 3);

    let raw_rows = refresh_attempt::Entity::find()
        .all(store.connection())
        .await
        .expect("raw rows");
    assert_eq!(
        raw_rows.len() as u64,
        ATTEMPT_HISTORY_LIMIT + 1,
        "older rows are deleted, not hidden"
    );
    assert_eq!(store.list_attempts(quiet.id, 10).await.expect("list").len(), 1);

    assert!(store.delete_connection(busy.id).await.expect("delete"));
    assert!(!store.delete_connection(busy.id).await.expect("delete again"));
    assert!(store.get_connection(busy.id).await.expect("get").is_none());
    assert!(store.list_attempts(busy.id, 100).await.expect("list").is_empty());
    let raw_rows = refresh_attempt::Entity::find()
        .all(store.connection())
        .await
        .expect("raw rows");
    assert_eq!(raw_rows.len(), 1);

    // An attempt of a deleted connection is not an error, and is not kept.
    store
        .record_attempt(&sample_attempt(busy.id, 1))
        .await
        .expect("record after delete");
    assert!(store.list_attempts(busy.id, 100).await.expect("list").is_empty());
    store.close().await.expect("close");
}

async fn a_ciphertext_copied_to_another_row_or_column_fails_to_decrypt(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let source = sample_connection(integration.id, "acme");
    let target = sample_connection(integration.id, "globex");
    store.insert_connection(&source).await.expect("insert");
    store.insert_connection(&target).await.expect("insert");

    let raw_source = connection::Entity::find_by_id(source.id.0)
        .one(store.connection())
        .await
        .expect("raw read")
        .expect("present");

    // Another row, same column.
    connection::Entity::update_many()
        .col_expr(connection::Column::AccessToken, raw_source.access_token.clone().into())
        .filter(connection::Column::Id.eq(target.id.0))
        .exec(store.connection())
        .await
        .expect("copy");
    let error = store.get_connection(target.id).await.expect_err("moved ciphertext");
    let StoreError::Decryption { context, .. } = &error else {
        panic!("expected a decryption error, got {error}")
    };
    assert_eq!(context, &format!("connections:{}:access_token", target.id));
    let message = error.to_string();
    assert!(!message.contains(source.access_token.expose()), "{message}");

    // Same row, another column.
    connection::Entity::update_many()
        .col_expr(connection::Column::RefreshToken, raw_source.access_token.clone().into())
        .filter(connection::Column::Id.eq(source.id.0))
        .exec(store.connection())
        .await
        .expect("copy");
    let error = store.get_connection(source.id).await.expect_err("moved ciphertext");
    assert!(
        error
            .to_string()
            .contains(&format!("connections:{}:refresh_token", source.id)),
        "{error}"
    );

    // Listing reports the damage instead of handing out a wrong token.
    assert!(store.list_connections(&ConnectionFilter::default()).await.is_err());
    store.close().await.expect("close");
}

async fn a_wrong_key_is_refused_and_changes_nothing(db: TestDb) {
    let right = Keyring::new(key(1), vec![]);
    let wrong = Keyring::new(key(2), vec![key(3)]);
    let store = open_store(&db, right.clone()).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");
    store.close().await.expect("close");

    let before = raw_ciphertexts(db.url()).await;
    assert!(before.iter().any(|(place, _)| place == "key_check"));

    let error = SqlStore::connect(db.url(), wrong.clone()).await.expect_err("wrong key");
    let StoreError::Key(message) = &error else {
        panic!("expected a key error, got {error}")
    };
    assert!(
        message.contains(&right.primary_key_id().to_string()),
        "names the key the data needs: {message}"
    );
    for configured in wrong.key_ids() {
        assert!(
            message.contains(&configured.to_string()),
            "names the configured keys: {message}"
        );
    }
    assert_eq!(raw_ciphertexts(db.url()).await, before, "a refused key writes nothing");

    let reopened = open_store(&db, right).await;
    let loaded = reopened
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(connection_fingerprint(&loaded), connection_fingerprint(&connection));
    let loaded = reopened
        .get_integration(integration.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(loaded.client_secret.expose(), integration.client_secret.expose());
    reopened.close().await.expect("close");
    assert_eq!(
        raw_ciphertexts(db.url()).await,
        before,
        "re-opening with the right key rewrites nothing"
    );
}

async fn a_rotated_keyring_reads_old_data_and_writes_with_the_new_key(db: TestDb) {
    let old = Keyring::new(key(1), vec![]);
    let store = open_store(&db, old.clone()).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");
    store.close().await.expect("close");

    let rotated = Keyring::new(key(4), vec![key(1)]);
    let store = open_store(&db, rotated.clone()).await;
    let loaded = store
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(connection_fingerprint(&loaded), connection_fingerprint(&connection));

    let mut next = loaded.clone();
    next.access_token = SecretString::new("rotated-access");
    assert!(matches!(
        store.compare_and_swap(&next, 1).await.expect("cas"),
        CasOutcome::Committed { version: 2 }
    ));
    let raw = connection::Entity::find_by_id(connection.id.0)
        .one(store.connection())
        .await
        .expect("raw read")
        .expect("present");
    assert_eq!(
        Keyring::ciphertext_key_id(&raw.access_token),
        Some(rotated.primary_key_id())
    );
    assert_eq!(
        store
            .get_connection(connection.id)
            .await
            .expect("get")
            .expect("present")
            .access_token
            .expose(),
        "rotated-access"
    );
    store.close().await.expect("close");

    // Dropping the old key while the database still needs it is refused.
    let error = SqlStore::connect(db.url(), Keyring::new(key(4), vec![]))
        .await
        .expect_err("old key missing");
    assert!(matches!(error, StoreError::Key(_)), "{error}");
}

async fn migrate_alone_prepares_a_database_for_a_store(db: TestDb) {
    migrate(db.url()).await.expect("migrate");
    migrate(db.url()).await.expect("migrating twice is a no-op");
    assert!(
        raw_ciphertexts(db.url()).await.is_empty(),
        "migrations write no data and no key check"
    );
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    assert!(store.list_integrations().await.expect("list").is_empty());
    store.close().await.expect("close");
}

#[tokio::test]
async fn an_in_memory_sqlite_store_works() {
    let store = SqlStore::connect("sqlite::memory:", Keyring::new(key(1), vec![]))
        .await
        .expect("open");
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");
    assert!(store.get_connection(connection.id).await.expect("get").is_some());
}

#[tokio::test]
async fn an_unsupported_url_is_refused_without_echoing_it() {
    let error = SqlStore::connect("mysql://user:hunter2@db/x", Keyring::new(key(1), vec![]))
        .await
        .expect_err("mysql");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

async fn an_authorization_state_is_usable_once_and_its_verifier_is_encrypted(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("auth");
    store.insert_integration(&integration).await.expect("integration");
    let pending = tokenvisor_core::PendingAuthorization {
        state_hash: "a".repeat(64),
        tenant_id: TenantId::parse("acme").expect("tenant"),
        integration_id: integration.id,
        connection_id: Some(ConnectionId::new()),
        connection_key: Some(ConnectionKey::parse("sandbox").expect("key")),
        redirect_uri: "https://app.example/callback".into(),
        return_to: None,
        code_verifier: Some(SecretString::new("verifier-secret-value-0123456789-0123456789-abc")),
        created_at: now(),
        expires_at: now() + chrono::Duration::minutes(10),
    };
    store.insert_authorization(&pending).await.expect("insert");
    let raw = open(db.url(), POSTGRES_POOL_SIZE).await.expect("raw connection");
    let rows = crate::entity::authorization_state::Entity::find()
        .all(&raw)
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    let stored = rows[0].code_verifier.clone().expect("verifier column");
    assert!(
        !stored.windows(15).any(|w| w == b"verifier-secret"),
        "verifier stored in clear"
    );
    let taken = store
        .take_authorization(&pending.state_hash)
        .await
        .expect("take")
        .expect("present");
    assert_eq!(taken.code_verifier, pending.code_verifier);
    assert_eq!(taken.connection_id, pending.connection_id);
    assert_eq!(taken.connection_key, pending.connection_key);
    assert_eq!(taken.tenant_id, pending.tenant_id);
    assert!(
        store
            .take_authorization(&pending.state_hash)
            .await
            .expect("take")
            .is_none(),
        "single use"
    );
}

/// The refreshed state of `connection` with tokens numbered `n`.
fn refreshed(connection: &Connection, n: usize) -> Connection {
    let mut next = connection.clone();
    next.access_token = SecretString::new(format!("access-{n}-{}", connection.id));
    next.refresh_token = Some(SecretString::new(format!("refresh-{n}-{}", connection.id)));
    next.last_refresh_at = Some(now());
    next.next_refresh_at = Some(now() + chrono::Duration::minutes(45));
    next.metadata.insert("refreshed".to_owned(), serde_json::json!(n));
    next.updated_at = now();
    next
}

/// Many refresh commits at once (on PostgreSQL they share group-commit statements):
/// every matching one commits with its history entry, the stale one conflicts and
/// changes nothing, and each row holds exactly its own tokens.
async fn refresh_commits_of_many_connections_land_together_and_a_stale_one_conflicts(db: TestDb) {
    let store = std::sync::Arc::new(open_store(&db, Keyring::new(key(1), vec![])).await);
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let count = 64;
    let mut connections = Vec::new();
    for i in 0..count {
        let connection = sample_connection(integration.id, &format!("tenant-{i}"));
        store.insert_connection(&connection).await.expect("insert");
        connections.push(connection);
    }
    // The stale one: stored at version 2 by another writer, committed over version 1.
    let stale = connections[count / 2].clone();
    let elsewhere = refreshed(&stale, 99);
    assert!(matches!(
        store.compare_and_swap(&elsewhere, 1).await.expect("cas"),
        CasOutcome::Committed { version: 2 }
    ));

    let mut writers = Vec::new();
    for (i, connection) in connections.iter().enumerate() {
        let store = store.clone();
        let next = refreshed(connection, i);
        writers.push(tokio::spawn(async move {
            let attempt = sample_attempt(next.id, 0);
            let outcome = store.commit_refresh(&next, 1, &attempt).await.expect("commit");
            (next, outcome)
        }));
    }
    for handle in writers {
        let (next, outcome) = handle.await.expect("writer");
        let stored = store.get_connection(next.id).await.expect("get").expect("present");
        let history = store.list_attempts(next.id, 10).await.expect("list");
        if next.id == stale.id {
            let CasOutcome::Conflict { current: Some(current) } = outcome else {
                panic!("a stale version must conflict: {outcome:?}");
            };
            assert_eq!(current.version, 2);
            assert_eq!(current.access_token.expose(), elsewhere.access_token.expose());
            assert_eq!(stored.access_token.expose(), elsewhere.access_token.expose());
            assert!(history.is_empty(), "a conflicting commit records no history");
            continue;
        }
        assert!(matches!(outcome, CasOutcome::Committed { version: 2 }), "{outcome:?}");
        assert_eq!(
            connection_fingerprint(&stored),
            connection_fingerprint(&Connection { version: 2, ..next })
        );
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].outcome, RefreshOutcomeKind::Success);
    }
}

/// Commits of one connection over the same version, at once: exactly one commits (one
/// history entry), the others conflict and see the winner.
async fn concurrent_refresh_commits_of_one_connection_commit_exactly_once(db: TestDb) {
    let store = std::sync::Arc::new(open_store(&db, Keyring::new(key(1), vec![])).await);
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");

    let mut writers = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        let next = refreshed(&connection, writer);
        writers.push(tokio::spawn(async move {
            let attempt = sample_attempt(next.id, 0);
            store.commit_refresh(&next, 1, &attempt).await.expect("commit")
        }));
    }
    let mut committed = Vec::new();
    for (writer, handle) in writers.into_iter().enumerate() {
        match handle.await.expect("writer") {
            CasOutcome::Committed { version } => committed.push((writer, version)),
            CasOutcome::Conflict { current } => assert_eq!(current.expect("still there").version, 2),
            CasOutcome::Fenced => panic!("an unfenced write is never fenced"),
        }
    }
    assert_eq!(committed.len(), 1, "{committed:?}");
    let (winner, version) = committed[0];
    assert_eq!(version, 2);
    let stored = store
        .get_connection(connection.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        stored.access_token.expose(),
        refreshed(&connection, winner).access_token.expose()
    );
    assert_eq!(store.list_attempts(connection.id, 100).await.expect("list").len(), 1);
}

/// Refresh commits trim the history to the newest entries (every few versions), and a
/// commit of a deleted connection conflicts without recording anything.
async fn refresh_commits_keep_the_history_bounded_and_skip_deleted_connections(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("insert");

    // Versions 2..=64: the commit to version 64 trims, leaving exactly the newest ones.
    let mut version = 1;
    let mut sequence = 0;
    while (version + 1) % TRIM_EVERY != 0 || version + 1 < ATTEMPT_HISTORY_LIMIT as i64 + TRIM_EVERY {
        let next = refreshed(&connection, sequence as usize);
        let outcome = store
            .commit_refresh(&next, version, &sample_attempt(connection.id, sequence))
            .await
            .expect("commit");
        assert!(
            matches!(outcome, CasOutcome::Committed { version: v } if v == version + 1),
            "{outcome:?}"
        );
        version += 1;
        sequence += 1;
    }
    let next = refreshed(&connection, sequence as usize);
    let outcome = store
        .commit_refresh(&next, version, &sample_attempt(connection.id, sequence))
        .await
        .expect("commit");
    assert!(matches!(outcome, CasOutcome::Committed { .. }), "{outcome:?}");
    assert_eq!((version + 1) % TRIM_EVERY, 0);
    let total = sequence + 1;
    let history = store.list_attempts(connection.id, 1_000).await.expect("list");
    assert_eq!(history.len() as u64, ATTEMPT_HISTORY_LIMIT);
    let durations: Vec<i64> = history.iter().map(|attempt| attempt.duration_ms).collect();
    let expected: Vec<i64> = (total - ATTEMPT_HISTORY_LIMIT as i64..total).rev().collect();
    assert_eq!(durations, expected, "newest first, oldest dropped");
    let raw_rows = refresh_attempt::Entity::find()
        .all(store.connection())
        .await
        .expect("raw rows");
    assert_eq!(raw_rows.len() as u64, ATTEMPT_HISTORY_LIMIT, "older rows are deleted");

    assert!(store.delete_connection(connection.id).await.expect("delete"));
    let outcome = store
        .commit_refresh(&next, version + 1, &sample_attempt(connection.id, 0))
        .await
        .expect("commit after delete");
    assert!(matches!(outcome, CasOutcome::Conflict { current: None }), "{outcome:?}");
    let raw_rows = refresh_attempt::Entity::find()
        .all(store.connection())
        .await
        .expect("raw rows");
    assert!(raw_rows.is_empty(), "a deleted connection's attempt is not kept");
    store.close().await.expect("close");
}

/// One commit among many breaks a constraint (an unknown integration): it fails and
/// writes nothing, the others commit (on PostgreSQL its group-commit statement fails and
/// each of its commits is retried alone).
async fn a_failing_refresh_commit_fails_alone_and_the_others_commit(db: TestDb) {
    let store = std::sync::Arc::new(open_store(&db, Keyring::new(key(1), vec![])).await);
    let integration = sample_integration("zoho");
    store.insert_integration(&integration).await.expect("insert");
    let mut connections = Vec::new();
    for i in 0..32 {
        let connection = sample_connection(integration.id, &format!("tenant-{i}"));
        store.insert_connection(&connection).await.expect("insert");
        connections.push(connection);
    }
    let broken = connections[7].id;
    let mut writers = Vec::new();
    for (i, connection) in connections.iter().enumerate() {
        let store = store.clone();
        let mut next = refreshed(connection, i);
        if next.id == broken {
            next.integration_id = IntegrationId::new();
        }
        writers.push(tokio::spawn(async move {
            let attempt = sample_attempt(next.id, 0);
            (next.id, store.commit_refresh(&next, 1, &attempt).await)
        }));
    }
    for handle in writers {
        let (id, outcome) = handle.await.expect("writer");
        let stored = store.get_connection(id).await.expect("get").expect("present");
        let history = store.list_attempts(id, 10).await.expect("list");
        if id == broken {
            assert!(outcome.is_err(), "{outcome:?}");
            assert_eq!(stored.version, 1, "nothing of it is written");
            assert!(history.is_empty());
        } else {
            assert!(
                matches!(outcome, Ok(CasOutcome::Committed { version: 2 })),
                "{outcome:?}"
            );
            assert_eq!(stored.version, 2);
            assert_eq!(history.len(), 1);
        }
    }
}

#[test]
fn sqlite_statements_use_positional_placeholders_in_order() {
    let statement = statement(
        DbBackend::Sqlite,
        "SELECT $1, $2 WHERE x < $10",
        vec![
            sea_orm::Value::from(1),
            sea_orm::Value::from(2),
            sea_orm::Value::from(3),
        ],
    );
    assert_eq!(statement.sql, "SELECT ?, ? WHERE x < ?");
}

/// Transactions that read before they write (deleting an integration counts its
/// connections first; taking an authorization reads it first) while other writers commit
/// all the time, as connection actors do: each one waits its turn instead of failing. On
/// SQLite a deferred transaction whose snapshot went stale when it wanted to write failed
/// at once with "database is locked", whatever the busy timeout: a cascade delete answered
/// 503 `store_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_transactions_wait_for_concurrent_writers_on_sqlite() {
    let db = TestDb::sqlite();
    let store = std::sync::Arc::new(open_store(&db, Keyring::new(key(1), vec![])).await);
    let busy = sample_integration("busy");
    store.insert_integration(&busy).await.expect("integration");
    let connection = sample_connection(busy.id, "acme");
    store.insert_connection(&connection).await.expect("connection");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    store
                        .record_attempt(&sample_attempt(connection.id, n))
                        .await
                        .expect("a concurrent writer commits");
                }
                n
            })
        })
        .collect();

    let mut failures = Vec::new();
    for n in 0..150 {
        let integration = sample_integration(&format!("short-lived-{n}"));
        store.insert_integration(&integration).await.expect("insert");
        let pending = tokenvisor_core::PendingAuthorization {
            state_hash: format!("{n:064}"),
            tenant_id: TenantId::parse("acme").expect("tenant"),
            integration_id: busy.id,
            connection_id: None,
            connection_key: None,
            redirect_uri: "https://app.example/callback".into(),
            return_to: None,
            code_verifier: None,
            created_at: now(),
            expires_at: now() + chrono::Duration::minutes(10),
        };
        store.insert_authorization(&pending).await.expect("insert");
        if let Err(error) = store.delete_integration(integration.id).await {
            failures.push(format!("delete_integration: {error}"));
        }
        if let Err(error) = store.take_authorization(&pending.state_hash).await {
            failures.push(format!("take_authorization: {error}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut concurrent = 0;
    for writer in writers {
        concurrent += writer.await.expect("writer");
    }
    assert!(concurrent > 10, "the writers ran alongside ({concurrent} commits)");
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
}

async fn attempts_are_counted_per_minute_and_outcome_since_a_time(db: TestDb) {
    use chrono::{DurationRound as _, TimeDelta};
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("counted");
    store.insert_integration(&integration).await.expect("integration");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("connection");
    let minute = now().duration_trunc(TimeDelta::minutes(1)).expect("truncates") - TimeDelta::minutes(10);
    // Minute -12 (before `since`), three successes and one rate limit in minute 0, one
    // success in minute +2.
    let at = |offset_secs: i64, sequence: i64| RefreshAttempt {
        started_at: minute + TimeDelta::seconds(offset_secs),
        ..sample_attempt(connection.id, sequence)
    };
    for attempt in [at(-720, 0), at(1, 0), at(20, 2), at(59, 4), at(30, 1), at(125, 6)] {
        store.record_attempt(&attempt).await.expect("record");
    }
    let counts = store.attempts_per_minute(minute).await.expect("counts");
    let seen: Vec<_> = counts
        .iter()
        .map(|c| ((c.minute - minute).num_minutes(), c.outcome, c.count))
        .collect();
    assert_eq!(
        seen,
        [
            (0, RefreshOutcomeKind::RateLimited, 1),
            (0, RefreshOutcomeKind::Success, 3),
            (2, RefreshOutcomeKind::Success, 1),
        ]
    );
    let memory = crate::MemoryStore::new();
    memory.insert_integration(&integration).await.expect("integration");
    memory.insert_connection(&connection).await.expect("connection");
    for attempt in [at(-720, 0), at(1, 0), at(20, 2), at(59, 4), at(30, 1), at(125, 6)] {
        memory.record_attempt(&attempt).await.expect("record");
    }
    assert_eq!(memory.attempts_per_minute(minute).await.expect("counts"), counts);
}

async fn api_keys_and_the_audit_trail_round_trip(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let access = store.access_store();
    let record = ApiKeyRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: "reader".into(),
        prefix: "0a1b2c3d4e5f".into(),
        secret_hash: "ab".repeat(32),
        scopes: vec!["tokens:read".into()],
        tenants: vec!["acme".into()],
        integrations: vec![],
        created_at: now(),
        expires_at: Some(now() + chrono::Duration::days(1)),
        revoked_at: None,
    };
    access.insert_api_key(&record).await.expect("insert");
    let duplicate = ApiKeyRecord {
        id: uuid::Uuid::now_v7().to_string(),
        ..record.clone()
    };
    assert!(matches!(
        access.insert_api_key(&duplicate).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        access.find_api_key_by_prefix("0a1b2c3d4e5f").await.expect("store call"),
        Some(record.clone())
    );
    assert_eq!(
        access.find_api_key_by_prefix("ffffffffffff").await.expect("store call"),
        None
    );
    let revoked_at = now();
    assert!(access.revoke_api_key(&record.id, revoked_at).await.expect("store call"));
    assert!(
        access
            .revoke_api_key(&record.id, revoked_at + chrono::Duration::hours(1))
            .await
            .expect("store call")
    );
    assert!(
        !access
            .revoke_api_key("no-such-key", revoked_at)
            .await
            .expect("store call")
    );
    let listed = access.list_api_keys().await.expect("store call");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].revoked_at, Some(revoked_at), "the first revocation stays");

    // Events naming a connection get its tenant when they have none.
    let integration = sample_integration("crm");
    store.insert_integration(&integration).await.expect("store call");
    let connection = sample_connection(integration.id, "acme");
    store.insert_connection(&connection).await.expect("store call");
    let event = |n: usize, connection_id: Option<String>, at: DateTime<Utc>| AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        at,
        action: "token_read".into(),
        request: "GET /v1/connections/{id}/token".into(),
        status: 200,
        key_id: if n.is_multiple_of(2) {
            record.id.clone()
        } else {
            "admin".into()
        },
        connection_id,
        tenant_id: None,
        target: None,
        caller_address: Some("127.0.0.1".into()),
        trace_id: None,
        status_before: n.is_multiple_of(3).then(|| "active".into()),
        status_after: n.is_multiple_of(3).then(|| "deleted".into()),
    };
    let old = event(0, None, now() - chrono::Duration::days(100));
    let mut events = vec![old];
    for n in 0..1200 {
        events.push(event(n, Some(connection.id.to_string()), now()));
    }
    access
        .insert_audit_events(&events)
        .await
        .expect("a batch above one statement's rows");
    let mine = access
        .list_audit_events(&AuditFilter {
            key_id: Some(record.id.clone()),
            tenant_id: Some("acme".into()),
            connection_id: Some(connection.id.to_string()),
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .expect("store call");
    assert_eq!(mine.len(), 600);
    let changed: Vec<_> = mine.iter().filter(|e| e.status_before.is_some()).collect();
    assert_eq!(changed.len(), 200, "every sixth event has statuses");
    assert!(
        changed
            .iter()
            .all(|e| e.status_before.as_deref() == Some("active") && e.status_after.as_deref() == Some("deleted"))
    );
    assert!(
        mine.iter()
            .all(|e| e.status_before.is_some() == e.status_after.is_some())
    );
    assert!(mine.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let page = access
        .list_audit_events(&AuditFilter {
            before: Some(mine[9].id.clone()),
            key_id: Some(record.id.clone()),
            limit: 5,
            ..AuditFilter::default()
        })
        .await
        .expect("store call");
    assert_eq!(
        page.iter().map(|e| &e.id).collect::<Vec<_>>(),
        mine[10..15].iter().map(|e| &e.id).collect::<Vec<_>>()
    );
    assert_eq!(access.count_audit_events().await.expect("store call"), 1201);
    let deleted = access
        .delete_audit_events_before(now() - chrono::Duration::days(90))
        .await
        .expect("store call");
    assert_eq!(deleted, 1);
    assert_eq!(access.count_audit_events().await.expect("store call"), 1200);
}

/// The audit writer has its own database connection: with every connection of the
/// store's pool busy (token reads, API-key lookups and refresh commits queueing for it
/// under load), a batch of audit events is still written at once instead of waiting its
/// turn behind them.
#[tokio::test]
async fn audit_events_are_written_while_every_pooled_connection_is_busy() {
    use sea_orm::TransactionTrait as _;
    let db = TestDb::postgres().await;
    let store = SqlStore::connect_with_pool(db.url(), Keyring::new(key(1), vec![]), 2)
        .await
        .expect("store opens");
    let access = store.access_store();
    // Both pooled connections held, as by two long requests.
    let first = store.connection().begin().await.expect("first connection");
    let second = store.connection().begin().await.expect("second connection");
    let events: Vec<AuditEvent> = (0..500)
        .map(|_| AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            at: Utc::now(),
            action: "token_read".into(),
            request: "GET /v1/connections/{id}/token".into(),
            status: 200,
            key_id: "admin".into(),
            connection_id: Some(uuid::Uuid::now_v7().to_string()),
            tenant_id: None,
            target: None,
            caller_address: None,
            trace_id: None,
            status_before: None,
            status_after: None,
        })
        .collect();
    let written = tokio::time::timeout(std::time::Duration::from_secs(5), access.insert_audit_events(&events)).await;
    assert!(
        matches!(written, Ok(Ok(()))),
        "the audit batch waited for the busy pool: {written:?}"
    );
    drop((first, second));
    assert_eq!(access.count_audit_events().await.expect("count"), 500);
    store.close().await.expect("close");
}

/// The audit writer's capacity: 100,000 events in batches of 500 (what the admin API's
/// writer sends), each naming a connection whose tenant is looked up per batch. Run with
/// `cargo test --release -p tokenvisor-store --lib audit_write_rate -- --ignored --nocapture`;
/// figures in BENCHMARKS.md.
async fn audit_write_rate(db: TestDb, backend: &str) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let integration = sample_integration("crm");
    store.insert_integration(&integration).await.expect("integration");
    let mut connections = Vec::new();
    for n in 0..100 {
        let connection = sample_connection(integration.id, &format!("tenant-{n}"));
        store.insert_connection(&connection).await.expect("connection");
        connections.push(connection.id.to_string());
    }
    let access = store.access_store();
    let total = 100_000;
    let started = std::time::Instant::now();
    for batch in 0..total / 500 {
        let events: Vec<AuditEvent> = (0..500)
            .map(|n| AuditEvent {
                id: uuid::Uuid::now_v7().to_string(),
                at: Utc::now(),
                action: "token_read".into(),
                request: "GET /v1/connections/{id}/token".into(),
                status: 200,
                key_id: "01a2378e-37ea-7745-9d22-a65ecf7f95af".into(),
                connection_id: Some(connections[(batch + n) % connections.len()].clone()),
                tenant_id: None,
                target: None,
                caller_address: Some("10.0.0.7".into()),
                trace_id: Some("3931d1a24ecd91978faab91a3a748f36".into()),
                status_before: None,
                status_after: None,
            })
            .collect();
        access.insert_audit_events(&events).await.expect("batch");
    }
    let elapsed = started.elapsed();
    println!(
        "audit_write_rate {backend}: {total} events in {:.2} s = {:.0} events/s ({:.1} ms per 500-row batch)",
        elapsed.as_secs_f64(),
        f64::from(total as u32) / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / f64::from((total / 500) as u32)
    );
}

#[tokio::test]
#[ignore = "a measurement (BENCHMARKS.md), not a check"]
async fn audit_write_rate_sqlite() {
    audit_write_rate(TestDb::sqlite(), "sqlite").await;
}

#[tokio::test]
#[ignore = "a measurement (BENCHMARKS.md), not a check"]
async fn audit_write_rate_postgres() {
    audit_write_rate(TestDb::postgres().await, "postgres").await;
}

async fn the_connection_summary_counts_by_integration_status_expiry_and_error(db: TestDb) {
    use crate::{ConnectionSummary, StatusCount};
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let memory = crate::MemoryStore::new();
    let first = sample_integration("first");
    let second = sample_integration("second");
    let empty = sample_integration("empty");
    let at = now();
    let mut connections = Vec::new();
    // first: two active expiring within the hour (one planned before its expiry, one
    // planned after it), one active expiring in two hours, one needs_reauth expiring
    // within the hour (not active: not counted as expiring).
    let mut planned = sample_connection(first.id, "a");
    planned.expires_at = at + chrono::Duration::minutes(30);
    planned.next_refresh_at = Some(at + chrono::Duration::minutes(20));
    let mut late = sample_connection(first.id, "b");
    late.expires_at = at + chrono::Duration::minutes(40);
    late.next_refresh_at = Some(at + chrono::Duration::minutes(50));
    let mut later = sample_connection(first.id, "c");
    later.expires_at = at + chrono::Duration::hours(2);
    let mut lost = sample_connection(first.id, "d");
    lost.expires_at = at + chrono::Duration::minutes(10);
    lost.status = ConnectionStatus::NeedsReauth;
    lost.is_active = false;
    lost.next_refresh_at = None;
    connections.extend([planned, late, later, lost]);
    // second: three degraded (two rate limited, one without an error), one expired,
    // unplanned.
    for (tenant, code) in [("e", Some("rate_limited")), ("f", Some("rate_limited")), ("g", None)] {
        let mut degraded = sample_connection(second.id, tenant);
        degraded.status = ConnectionStatus::Degraded;
        degraded.expires_at = at + chrono::Duration::hours(3);
        degraded.last_error = code.map(|code| tokenvisor_core::LastError {
            code: code.to_owned(),
            message: "slow down".to_owned(),
            at,
        });
        connections.push(degraded);
    }
    let mut expired = sample_connection(second.id, "h");
    expired.expires_at = at - chrono::Duration::minutes(1);
    connections.push(expired);
    for integration in [&first, &second, &empty] {
        store.insert_integration(integration).await.expect("integration");
        memory.insert_integration(integration).await.expect("integration");
    }
    for connection in &connections {
        store.insert_connection(connection).await.expect("connection");
        memory.insert_connection(connection).await.expect("connection");
    }
    let summary = store
        .connection_summary(at, chrono::Duration::hours(1))
        .await
        .expect("summary");
    let mut by_status = vec![
        StatusCount {
            integration_id: first.id,
            status: ConnectionStatus::Active,
            count: 3,
        },
        StatusCount {
            integration_id: first.id,
            status: ConnectionStatus::NeedsReauth,
            count: 1,
        },
        StatusCount {
            integration_id: second.id,
            status: ConnectionStatus::Active,
            count: 1,
        },
        StatusCount {
            integration_id: second.id,
            status: ConnectionStatus::Degraded,
            count: 3,
        },
    ];
    by_status.sort_by_key(|count| (count.integration_id.0, count.status.as_str()));
    let expected = ConnectionSummary {
        by_status,
        expiring: 2,
        expiring_planned: 1,
        degraded_by_error: vec![(None, 1), (Some("rate_limited".to_owned()), 2)],
    };
    assert_eq!(summary, expected);
    assert_eq!(
        memory
            .connection_summary(at, chrono::Duration::hours(1))
            .await
            .expect("summary"),
        expected
    );
}

/// 60 connections with many ties in every order (5 expiry times, 3 failure counts, 4 error
/// times and no error for a third of them).
async fn sortable_connections(store: &SqlStore) -> Vec<Connection> {
    let crm = sample_integration("crm");
    store.insert_integration(&crm).await.expect("insert");
    let base = now();
    let mut all = Vec::new();
    for index in 0..60_i64 {
        let connection = Connection {
            expires_at: base + chrono::Duration::minutes(index % 5),
            consecutive_failures: (index % 3) as i32,
            status: if index % 4 == 0 {
                ConnectionStatus::Degraded
            } else {
                ConnectionStatus::Active
            },
            last_error: (index % 3 != 0).then(|| LastError {
                code: "http_503".to_owned(),
                message: "unavailable".to_owned(),
                at: base - chrono::Duration::seconds(index % 4),
            }),
            ..sample_connection(crm.id, &format!("tenant-{index:02}"))
        };
        store.insert_connection(&connection).await.expect("insert");
        all.push(connection);
    }
    all
}

/// The expected order, written out independently of the store: by the value (missing
/// last in both directions), then by id, in the direction asked.
fn expected_order(
    all: &[Connection],
    sort: ConnectionSort,
    descending: bool,
    keep: impl Fn(&Connection) -> bool,
) -> Vec<ConnectionId> {
    let key = |c: &Connection| -> (bool, i128) {
        match sort {
            ConnectionSort::Id => (false, 0),
            ConnectionSort::ExpiresAt => (false, i128::from(c.expires_at.timestamp_micros())),
            ConnectionSort::Failures => (false, i128::from(c.consecutive_failures)),
            ConnectionSort::LastError => match &c.last_error {
                Some(error) => (false, i128::from(error.at.timestamp_micros())),
                None => (true, 0),
            },
        }
    };
    let mut kept: Vec<&Connection> = all.iter().filter(|c| keep(c)).collect();
    kept.sort_by(|a, b| {
        let (a_missing, a_value) = key(a);
        let (b_missing, b_value) = key(b);
        let by_value = if descending {
            b_value.cmp(&a_value)
        } else {
            a_value.cmp(&b_value)
        };
        let by_id = if descending { b.id.cmp(&a.id) } else { a.id.cmp(&b.id) };
        a_missing.cmp(&b_missing).then(by_value).then(by_id)
    });
    kept.into_iter().map(|c| c.id).collect()
}

/// Every page of `filter` (7 rows each), following the cursor through its text form.
async fn every_page(store: &dyn Store, filter: &ConnectionFilter) -> Vec<ConnectionId> {
    let mut seen = Vec::new();
    let mut filter = ConnectionFilter {
        limit: Some(7),
        ..filter.clone()
    };
    for _ in 0..100 {
        let page = store.list_connections(&filter).await.expect("page");
        assert!(page.len() <= 7);
        seen.extend(page.iter().map(|c| c.id));
        let Some(last) = page.last().filter(|_| page.len() == 7) else {
            return seen;
        };
        let text = ConnectionCursor::after(filter.sort, last).to_string();
        let cursor = ConnectionCursor::parse(filter.sort, &text).expect("the cursor reads back");
        assert_eq!(cursor, ConnectionCursor::after(filter.sort, last), "{text}");
        filter.after = Some(cursor.id);
        filter.after_value = cursor.value;
    }
    panic!("more than 100 pages");
}

async fn sorted_pages_follow_each_order_without_duplicate_or_gap_ties_broken_by_id(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let all = sortable_connections(&store).await;
    let memory = crate::MemoryStore::new();
    sortable_connections_in(&memory, &all).await;
    for sort in ConnectionSort::ALL {
        for descending in [false, true] {
            for status in [None, Some(ConnectionStatus::Degraded)] {
                let filter = ConnectionFilter {
                    sort,
                    descending,
                    status,
                    ..ConnectionFilter::default()
                };
                let expected = expected_order(&all, sort, descending, |c| status.is_none_or(|s| c.status == s));
                let paged = every_page(&store, &filter).await;
                assert_eq!(paged, expected, "{sort:?} descending={descending} status={status:?}");
                let mut unique = paged.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), paged.len(), "a duplicate in {sort:?}");
                // The memory store pages the same way.
                assert_eq!(
                    every_page(&memory, &filter).await,
                    expected,
                    "memory {sort:?} {descending}"
                );
            }
        }
    }
    // A cursor of another order is not one.
    assert_eq!(
        ConnectionCursor::parse(ConnectionSort::Failures, "expires_at~1~0190"),
        None
    );
    assert_eq!(ConnectionCursor::parse(ConnectionSort::ExpiresAt, "not-a-cursor"), None);
}

/// The same connections (same ids) in another store, their integration first.
async fn sortable_connections_in(store: &dyn Store, all: &[Connection]) {
    let crm = Integration {
        id: all[0].integration_id,
        ..sample_integration("crm")
    };
    store.insert_integration(&crm).await.expect("insert");
    for connection in all {
        store.insert_connection(connection).await.expect("insert");
    }
}

async fn the_search_matches_prefixes_of_tenant_key_and_integration_name_literally(db: TestDb) {
    let store = open_store(&db, Keyring::new(key(1), vec![])).await;
    let help_desk = sample_integration("help_desk");
    let helpxdesk = sample_integration("helpxdesk");
    store.insert_integration(&help_desk).await.expect("insert");
    store.insert_integration(&helpxdesk).await.expect("insert");
    let in_help_desk = sample_connection(help_desk.id, "zeta");
    let in_helpxdesk = sample_connection(helpxdesk.id, "omega");
    let underscore = sample_connection(helpxdesk.id, "ab_1");
    let letter = sample_connection(helpxdesk.id, "abx1");
    let keyed = Connection {
        connection_key: tokenvisor_core::ConnectionKey::parse("ab_sandbox").expect("valid"),
        ..sample_connection(help_desk.id, "kappa")
    };
    let upper = sample_connection(helpxdesk.id, "AB_2");
    for connection in [&in_help_desk, &in_helpxdesk, &underscore, &letter, &keyed, &upper] {
        store.insert_connection(connection).await.expect("insert");
    }
    let found = |search: &'static str| {
        let store = &store;
        async move {
            let filter = ConnectionFilter {
                search: Some(search.to_owned()),
                ..ConnectionFilter::default()
            };
            let mut ids: Vec<ConnectionId> = store
                .list_connections(&filter)
                .await
                .expect("list")
                .into_iter()
                .map(|c| c.id)
                .collect();
            assert_eq!(store.count_connections(&filter).await.expect("count"), ids.len() as u64);
            ids.sort();
            ids
        }
    };
    let sorted = |mut ids: Vec<ConnectionId>| {
        ids.sort();
        ids
    };
    // `_` is a character, not a wildcard; case matters; the key and the integration's
    // name are searched too.
    assert_eq!(found("ab_").await, sorted(vec![underscore.id, keyed.id]));
    assert_eq!(found("abx").await, vec![letter.id]);
    assert_eq!(found("AB").await, vec![upper.id]);
    assert_eq!(found("help_").await, sorted(vec![in_help_desk.id, keyed.id]));
    assert_eq!(found("ze").await, vec![in_help_desk.id]);
    assert_eq!(found("nothing").await, Vec::<ConnectionId>::new());
    // What no tenant id, key or name may hold finds nothing (and is no pattern).
    assert_eq!(found("%").await, Vec::<ConnectionId>::new());
    assert_eq!(found("*").await, Vec::<ConnectionId>::new());
}
