//! `kill -9` of the service while it refreshes rotating tokens, then a restart on the
//! same data: no refresh token is lost, no retired token is replayed (invariants 1 and 2).
//!
//! A kill can land between the provider's rotating answer and our commit: that answer is
//! gone with the process, and the restarted service presents the previous refresh token,
//! which the provider accepts inside its grace period (Atlassian: 10 minutes) and answers
//! with the family's current token. Such a lost answer is the only reuse allowed: at most
//! one per connection per kill, always inside the grace period (a reuse outside it revokes
//! the family, which the test would see as a revocation and a connection needing
//! re-authorization).

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::ConnectionFilter;
use tokenvisor_store::{Keyring, SqlStore, Store};
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::Service;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_restarts_on_the_same_data_without_losing_or_replaying_refresh_tokens() {
    let fake = fake(
        Dialect::Rotating {
            grace: Duration::from_secs(60),
        },
        4,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = ["t1", "t2", "t3", "t4"];
    let mut service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "rotating").await;
    for tenant in tenants {
        service.connect(&fake, "rotating", tenant).await;
    }

    // Kill -9 twice while refreshes are going on (tokens live 4 s: one refresh round every ~3 s).
    let kills = 2;
    for round in 0..kills {
        let target: u64 = tenants.iter().map(|t| fake.refreshes_for(t)).sum::<u64>() + 3;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tenants.iter().map(|t| fake.refreshes_for(t)).sum::<u64>() < target {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: no refreshes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(service); // SIGKILL
        tokio::time::sleep(Duration::from_millis(300)).await;
        service = Service::start(binary(), dir.path(), &[]);
    }

    // After the restart every connection keeps refreshing and hands out live tokens.
    let before: Vec<u64> = tenants.iter().map(|t| fake.refreshes_for(t)).collect();
    let list = service.get("/v1/connections").await;
    let ids: Vec<String> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), tenants.len());
    // (About every 3 s; waited for up to 15 s, a loaded machine being slow.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tenants
        .iter()
        .zip(&before)
        .any(|(tenant, refreshes)| fake.refreshes_for(tenant) <= *refreshes)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (tenant, refreshes) in tenants.iter().zip(before) {
        assert!(
            fake.refreshes_for(tenant) > refreshes,
            "{tenant} does not refresh after restart"
        );
    }
    for id in &ids {
        let view = service.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(view.body["status"], "active", "{view:?}");
        assert_eq!(view.body["refresh_failures"], 0, "{view:?}");
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200, "{token:?}");
        assert!(fake.is_access_token_live(token.body["access_token"].as_str().unwrap()));
    }
    assert_eq!(fake.family_revocations(), 0, "a retired refresh token was replayed");
    let lost_answers_at_most = kills as u64 * tenants.len() as u64;
    assert!(
        fake.reuse_events() <= lost_answers_at_most,
        "{} reuses of rotated-away refresh tokens: more than one lost answer per connection per kill",
        fake.reuse_events()
    );

    // The stored refresh token of every connection is the provider's current one.
    let status = service.server.terminate();
    assert!(status.success());
    let data = dir.path().join("data");
    let keyring = Keyring::load_file(data.join("encryption.key")).unwrap().unwrap();
    let url = format!("sqlite://{}", data.join("tokenvisor.db").display());
    let store = Arc::new(SqlStore::connect(&url, keyring).await.unwrap());
    for connection in store.list_connections(&ConnectionFilter::default()).await.unwrap() {
        let tenant = connection.tenant_id.as_str();
        assert_eq!(
            connection.refresh_token.as_ref().map(|t| t.expose().to_owned()),
            fake.current_refresh_token(tenant),
            "{tenant}: the stored refresh token is not the provider's current one"
        );
    }
}
