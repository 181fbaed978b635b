//! Partition leases, epochs and fenced writes on PostgreSQL (the store side of replicas
//! that share the work): exactly one owner per partition, a new epoch on every change of
//! owner, and writes fenced by an old epoch refused by the database.
#![allow(clippy::unwrap_used)]

use chrono::{SubsecRound as _, Utc};
use futures::StreamExt as _;
use std::time::Duration;
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionStatus, Integration, IntegrationId, RefreshAttempt, RefreshOutcomeKind,
    RefreshReason, SecretString, TenantId, partition_of,
};
use tokenvisor_store::{CasOutcome, Fence, Keyring, SqlStore, Store as _};
use tokenvisor_testkit::database::TestDatabase;

async fn store(db: &TestDatabase) -> SqlStore {
    SqlStore::connect(db.url(), Keyring::new([7; 32], vec![]))
        .await
        .expect("the store opens")
}

async fn stored_connection(store: &SqlStore) -> Connection {
    let now = Utc::now().trunc_subsecs(3);
    let integration = Integration {
        id: IntegrationId::new(),
        name: format!("zoho-{}", IntegrationId::new()),
        provider: "zoho".to_owned(),
        client_id: "client".to_owned(),
        client_secret: SecretString::new("secret"),
        scopes: vec![],
        redirect_uri: None,
        data_center: None,
        token_url: Some("https://accounts.zoho.eu/oauth/v2/token".to_owned()),
        authorize_url: None,
        revoke_url: None,
        settings: serde_json::json!({}),
        created_at: now,
        updated_at: now,
    };
    store.insert_integration(&integration).await.expect("integration");
    let connection = Connection {
        id: ConnectionId::new(),
        tenant_id: TenantId::parse("acme").expect("tenant"),
        integration_id: integration.id,
        connection_key: tokenvisor_core::ConnectionKey::default(),
        access_token: SecretString::new("access-1"),
        refresh_token: Some(SecretString::new("refresh-1")),
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
    };
    store.insert_connection(&connection).await.expect("connection");
    connection
}

fn attempt(id: ConnectionId) -> RefreshAttempt {
    RefreshAttempt {
        connection_id: id,
        started_at: Utc::now(),
        reason: RefreshReason::Scheduled,
        outcome: RefreshOutcomeKind::Success,
        error_code: None,
        http_status: Some(200),
        duration_ms: 5,
    }
}

#[tokio::test]
async fn a_partition_has_one_owner_and_a_new_epoch_fences_the_old_owners_writes() {
    let db = TestDatabase::postgres().await;
    let store = store(&db).await;
    let partitions = store.partitions().expect("PostgreSQL shares partitions");
    let connection = stored_connection(&store).await;
    let partition = partition_of(connection.id);
    let lease = Duration::from_millis(600);

    // A takes it; B cannot while A's lease runs.
    let taken = partitions.claim("a", &[partition], lease).await.expect("claim");
    assert_eq!(taken.len(), 1);
    let epoch_a = taken[0].epoch;
    assert_eq!(taken[0].taken_from, None, "a partition nobody held");
    assert!(
        partitions
            .claim("b", &[partition], lease)
            .await
            .expect("claim")
            .is_empty()
    );

    // A's fenced writes go through, both kinds.
    let mut next = connection.clone();
    next.access_token = SecretString::new("access-2");
    let fence_a = Fence {
        partition,
        epoch: epoch_a,
    };
    let outcome = store.compare_and_swap_fenced(&next, 1, fence_a).await.expect("write");
    assert!(matches!(outcome, CasOutcome::Committed { version: 2 }), "{outcome:?}");
    next.access_token = SecretString::new("access-3");
    let outcome = store
        .commit_refresh_fenced(&next, 2, &attempt(next.id), fence_a)
        .await
        .expect("commit");
    assert!(matches!(outcome, CasOutcome::Committed { version: 3 }), "{outcome:?}");

    // A's lease runs out (no renewal): B takes it with a higher epoch.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let taken = partitions.claim("b", &[partition], lease * 20).await.expect("claim");
    assert_eq!(taken.len(), 1, "an expired lease is taken over");
    let epoch_b = taken[0].epoch;
    assert_eq!(
        taken[0].taken_from.as_deref(),
        Some("a"),
        "taken over from a lease that ran out"
    );
    assert!(epoch_b > epoch_a, "epoch {epoch_b} after {epoch_a}");

    // A's late writes are refused, whatever path they take, and the row is unchanged.
    next.access_token = SecretString::new("access-late");
    for outcome in [
        store.compare_and_swap_fenced(&next, 3, fence_a).await.expect("write"),
        store
            .commit_refresh_fenced(&next, 3, &attempt(next.id), fence_a)
            .await
            .expect("commit"),
        store
            .clone()
            .without_group_commit()
            .commit_refresh_fenced(&next, 3, &attempt(next.id), fence_a)
            .await
            .expect("commit"),
    ] {
        assert!(matches!(outcome, CasOutcome::Fenced), "{outcome:?}");
    }
    let stored = store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.access_token.expose()), (3, "access-3"));
    // A cannot renew what it lost, nor release B's; B's fence works.
    assert!(
        partitions
            .renew("a", &[(partition, epoch_a)], lease)
            .await
            .unwrap()
            .is_empty()
    );
    partitions.release("a", &[(partition, epoch_a)]).await.unwrap();
    let fence_b = Fence {
        partition,
        epoch: epoch_b,
    };
    let outcome = store.compare_and_swap_fenced(&next, 3, fence_b).await.expect("write");
    assert!(matches!(outcome, CasOutcome::Committed { version: 4 }), "{outcome:?}");
    // A conflict is still a conflict (not a fence) when the row moved on.
    let outcome = store.compare_and_swap_fenced(&next, 3, fence_b).await.expect("write");
    assert!(matches!(outcome, CasOutcome::Conflict { .. }), "{outcome:?}");

    // B renews, then releases; A claims again with a higher epoch still.
    assert_eq!(
        partitions.renew("b", &[(partition, epoch_b)], lease).await.unwrap(),
        vec![partition]
    );
    partitions.release("b", &[(partition, epoch_b)]).await.unwrap();
    let taken = partitions.claim("a", &[partition], lease).await.expect("claim");
    assert!(taken[0].epoch > epoch_b);
    assert_eq!(taken[0].taken_from, None, "released cleanly");
    let records = partitions.partitions().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].owner.as_deref(), Some("a"));
}

#[tokio::test]
async fn replicas_racing_for_every_partition_split_them_without_overlap() {
    let db = TestDatabase::postgres().await;
    let store = store(&db).await;
    let all: Vec<u16> = (0..tokenvisor_core::PARTITIONS).collect();
    let claims = (0..4).map(|n| {
        let store = store.clone();
        let all = all.clone();
        tokio::spawn(async move {
            store
                .partitions()
                .unwrap()
                .claim(&format!("r{n}"), &all, Duration::from_secs(30))
                .await
                .expect("claim")
        })
    });
    let mut owned = Vec::new();
    for claim in futures::future::join_all(claims).await {
        owned.extend(claim.expect("task").into_iter().map(|claimed| claimed.partition));
    }
    owned.sort_unstable();
    assert_eq!(owned, all, "every partition taken exactly once");
}

#[tokio::test]
async fn replicas_heartbeat_load_their_partitions_and_hear_notifications() {
    let db = TestDatabase::postgres().await;
    let store = store(&db).await;
    let partitions = store.partitions().unwrap();
    partitions.heartbeat("a", Some("http://10.0.0.1:7070")).await.unwrap();
    partitions.heartbeat("b", None).await.unwrap();
    let replicas = partitions.replicas().await.unwrap();
    assert_eq!(replicas.len(), 2);
    assert_eq!(replicas[0].advertise_url.as_deref(), Some("http://10.0.0.1:7070"));
    assert!(replicas[0].heartbeat_age < Duration::from_secs(5));
    partitions.leave("b").await.unwrap();
    assert_eq!(partitions.replicas().await.unwrap().len(), 1);

    let first = stored_connection(&store).await;
    let second = stored_connection(&store).await;
    let loaded: Vec<ConnectionId> = partitions
        .load_supervised_in(vec![partition_of(first.id)])
        .map(|row| row.expect("row").id)
        .collect()
        .await;
    assert!(loaded.contains(&first.id));
    assert_eq!(
        loaded.contains(&second.id),
        partition_of(second.id) == partition_of(first.id)
    );
    let changed = partitions
        .supervised_changed_since(
            &[partition_of(second.id)],
            first.updated_at - chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    assert!(changed.contains(&second.id));

    let mut listener = partitions.listen(&["tokenvisor_test"]).await.unwrap();
    partitions.notify("tokenvisor_test", "hello").await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .expect("a notification within 5 s")
        .expect("stream open")
        .expect("received");
    assert_eq!(
        (received.channel.as_str(), received.payload.as_str()),
        ("tokenvisor_test", "hello")
    );
}
