//! End to end through the real binary on SQLite and PostgreSQL: connections registered
//! through the API refresh by themselves with short-lived tokens, tokens are fetched, and
//! a tenant revoked at the provider turns `needs_reauth` alone (invariants 5 and 6).

use std::time::Duration;
use tokenvisor_store::Keyring;
use tokenvisor_testkit::Dialect;
use tokenvisor_testkit::database::{Backend, TestDatabase};
use tokenvisor_tests::fake;
use tokenvisor_tests::service::Service;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// The environment pointing the service at `database` (SQLite: the data directory).
pub fn database_env(database: &TestDatabase) -> Vec<(&'static str, String)> {
    match database.backend() {
        Backend::Sqlite => Vec::new(),
        Backend::Postgres => {
            let (_, key) = Keyring::generate();
            vec![
                ("TOKENVISOR_DATABASE_URL", database.url().to_owned()),
                ("TOKENVISOR_ENCRYPTION_KEY", key),
            ]
        }
    }
}

async fn connections_refresh_by_themselves_and_a_revoked_tenant_alone_needs_reauth(database: TestDatabase) {
    let fake = fake(Dialect::Generic, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &database_env(&database));
    service.add_integration(&fake, "crm").await;
    let mut ids = Vec::new();
    for tenant in ["alpha", "bravo", "charlie"] {
        let view = service.connect(&fake, "crm", tenant).await;
        ids.push((tenant, view["id"].as_str().unwrap().to_owned()));
    }

    // 4-second tokens are refreshed a second before expiry: several rounds in ~7 s, and
    // every token handed out meanwhile is live at the provider.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while ids.iter().any(|(tenant, _)| fake.refreshes_for(tenant) < 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refreshes: {:?}",
            ids.iter().map(|(t, _)| fake.refreshes_for(t)).collect::<Vec<_>>()
        );
        for (_, id) in &ids {
            let token = service.get(&format!("/v1/connections/{id}/token")).await;
            assert_eq!(token.status, 200, "{token:?}");
            assert!(fake.is_access_token_live(token.body["access_token"].as_str().unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (_, id) in &ids {
        let view = service.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(view.body["status"], "active", "{view:?}");
        assert!(view.body["last_refresh_at"].is_string(), "{view:?}");
        assert!(view.body["next_refresh_at"].is_string(), "{view:?}");
    }

    // Revoke bravo at the provider: only bravo turns needs_reauth, counted once.
    fake.revoke_family("bravo");
    let bravo = &ids[1].1;
    let view = service
        .wait_for_connection(bravo, Duration::from_secs(10), |v| v["status"] == "needs_reauth")
        .await;
    assert_eq!(view["is_active"], false);
    assert_eq!(view["refresh_failures"], 1);
    assert_eq!(view["last_error"]["code"], "invalid_grant", "{view}");
    let refused = service.get(&format!("/v1/connections/{bravo}/token")).await;
    assert_eq!((refused.status, refused.code()), (409, "needs_reauth"));
    let listed = service.get("/v1/connections?status=needs_reauth").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    // The others keep refreshing.
    let before: Vec<u64> = [&ids[0], &ids[2]].iter().map(|(t, _)| fake.refreshes_for(t)).collect();
    // (About every 3 s; waited for up to 15 s, a loaded machine being slow.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while [&ids[0], &ids[2]]
        .iter()
        .zip(&before)
        .any(|((tenant, _), refreshes)| fake.refreshes_for(tenant) <= *refreshes)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for ((tenant, id), refreshes) in [&ids[0], &ids[2]].iter().zip(before) {
        assert!(fake.refreshes_for(tenant) > refreshes, "{tenant} stopped refreshing");
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200);
        assert!(fake.is_access_token_live(token.body["access_token"].as_str().unwrap()));
        let view = service.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(view.body["status"], "active");
        assert_eq!(view.body["refresh_failures"], 0);
    }
    assert_eq!(
        service.get(&format!("/v1/connections/{bravo}")).await.body["refresh_failures"],
        1,
        "escalated once"
    );
    let status = service.server.terminate();
    assert!(status.success(), "{status:?}");
}

tokenvisor_tests::on_both_backends!(connections_refresh_by_themselves_and_a_revoked_tenant_alone_needs_reauth);
