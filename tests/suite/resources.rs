//! The resources of the admin API through the real binary: an integration read, changed
//! and deleted (a client secret rotated with `PATCH` is used by the next refresh of every
//! connection, on every replica, without a restart; a delete is refused while
//! connections use it unless asked to cascade), one connection per (integration,
//! tenant, key), a tenant's connections, and a connection addressed by its key (view,
//! token, proxy).

use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_testkit::database::TestDatabase;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{ADMIN_TOKEN, Service, answer, integration_body, prometheus_samples};
use tokio::time::Instant;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// The view of a connection in a JSON answer.
fn id_of(view: &serde_json::Value) -> String {
    view["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_with_patch_is_used_by_the_next_refresh_without_a_restart() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let id = id_of(&service.connect(&fake, "crm", "acme").await);

    // Read by name: no secret in the answer.
    let shown = service.get("/v1/integrations/crm").await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(shown.body["name"], "crm");
    assert!(shown.body.get("client_secret").is_none(), "{shown:?}");
    assert!(!shown.body.to_string().contains(fake.client_secret()));
    let by_id = service
        .get(&format!("/v1/integrations/{}", shown.body["id"].as_str().unwrap()))
        .await;
    assert_eq!(by_id.status, 200);

    // The provider rotates the secret: the old one is refused from now on.
    let rotated = fake.rotate_client_secret();
    let patched = service
        .send(
            Method::PATCH,
            "/v1/integrations/crm",
            Some(json!({"client_secret": rotated, "scopes": ["read", "write"]})),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.body["scopes"], json!(["read", "write"]));
    assert!(
        !patched.body.to_string().contains(&rotated),
        "the secret is never echoed"
    );
    assert_ne!(patched.body["updated_at"], shown.body["updated_at"]);

    // The next refresh presents the new secret: the provider accepts it.
    let refreshes = fake.refreshes();
    let refreshed = service.post_empty(&format!("/v1/connections/{id}/refresh")).await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    assert_eq!(refreshed.body["status"], "active");
    assert_eq!(fake.refreshes(), refreshes + 1);
    assert_eq!(
        fake.client_authentication_failures(),
        0,
        "the rotated-away secret was presented"
    );

    // Changes are checked like a registration; nothing changes on a refusal.
    for (body, code) in [
        (json!({"client_secret": ""}), "invalid_input"),
        (json!({"settings": 5}), "invalid_input"),
        (json!({"redirect_uri": "not a url"}), "invalid_input"),
        (json!({"name": "renamed"}), "invalid_input"),
    ] {
        let refused = service
            .send(Method::PATCH, "/v1/integrations/crm", Some(body.clone()))
            .await;
        assert_eq!((refused.status, refused.code()), (422, code), "{body}: {refused:?}");
    }
    let missing = service
        .send(
            Method::PATCH,
            "/v1/integrations/nope",
            Some(json!({"client_secret": "x"})),
        )
        .await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let again = service.post_empty(&format!("/v1/connections/{id}/refresh")).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(fake.client_authentication_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_a_tenant_twice_gives_one_connection_and_another_key_another() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    let mut body = integration_body(&fake, "crm");
    body["settings"] = json!({"api_base_url": format!("{}/api/echo", fake.base_url())});
    assert_eq!(service.post("/v1/integrations", body).await.status, 201);
    let first = service.connect(&fake, "crm", "acme").await;
    assert_eq!(first["connection_key"], "default");

    // The same tenant again: its connection's tokens are replaced (200), no second one.
    let issued = fake.issue_grant("acme-again");
    let again = service
        .post(
            "/v1/connections",
            json!({
                "tenant_id": "acme",
                "integration": "crm",
                "access_token": issued.access_token,
                "refresh_token": issued.refresh_token,
                "expires_in": issued.expires_in,
            }),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(id_of(&again.body), id_of(&first));
    let token = service.get(&format!("/v1/connections/{}/token", id_of(&first))).await;
    assert_eq!(token.body["access_token"], issued.access_token.as_str());
    let listed = service.get("/v1/tenants/acme/connections").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1, "{listed:?}");

    // A completed authorization for the connected tenant updates the same connection.
    fake.set_authorizing_user("acme-consented", "us");
    let started = service
        .post("/v1/authorizations", json!({"tenant_id": "acme", "integration": "crm"}))
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let redirect = service
        .http
        .get(started.body["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    let page = service.http.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let listed = service.get("/v1/tenants/acme/connections").await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed:?}");
    assert_eq!(id_of(&items[0]), id_of(&first));
    let proxied = service
        .get(&format!("/v1/connections/{}/proxy/whoami", id_of(&first)))
        .await;
    assert_eq!(proxied.body["family"], "acme-consented", "{proxied:?}");

    // Another key is another connection of the same tenant.
    let sandbox_grant = fake.issue_grant("acme-sandbox");
    let sandbox = service
        .post(
            "/v1/connections",
            json!({
                "tenant_id": "acme",
                "integration": "crm",
                "connection_key": "sandbox",
                "access_token": sandbox_grant.access_token,
                "refresh_token": sandbox_grant.refresh_token,
                "expires_in": sandbox_grant.expires_in,
            }),
        )
        .await;
    assert_eq!(sandbox.status, 201, "{sandbox:?}");
    assert_eq!(sandbox.body["connection_key"], "sandbox");
    assert_ne!(id_of(&sandbox.body), id_of(&first));
    service.connect(&fake, "crm", "globex").await;
    let listed = service.get("/v1/tenants/acme/connections").await;
    let mut keys: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["connection_key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["default", "sandbox"], "{listed:?}");
    let paged = service.get("/v1/tenants/acme/connections?limit=1").await;
    assert_eq!(paged.body["items"].as_array().unwrap().len(), 1);
    let cursor = paged.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = service
        .get(&format!("/v1/tenants/acme/connections?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1, "{rest:?}");
    assert!(rest.body["next_cursor"].is_null());

    // Addressed by tenant, integration and key: the view, the token and the proxy.
    let by_key = service.get("/v1/tenants/acme/connections/crm/sandbox").await;
    assert_eq!(by_key.status, 200, "{by_key:?}");
    assert_eq!(id_of(&by_key.body), id_of(&sandbox.body));
    let token = service.get("/v1/tenants/acme/connections/crm/sandbox/token").await;
    assert_eq!(token.status, 200, "{token:?}");
    assert_eq!(token.body["access_token"], sandbox_grant.access_token.as_str());
    let proxied = service
        .http
        .post(format!(
            "{}/v1/tenants/acme/connections/crm/sandbox/proxy/items?x=1",
            service.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .body("hello")
        .send()
        .await
        .unwrap();
    let echo = answer(proxied).await;
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(echo.body["family"], "acme-sandbox", "the sandbox token was presented");
    assert_eq!(echo.body["path"], "/api/echo/items");
    assert_eq!(echo.body["body"], "hello");
    let default = service
        .get("/v1/tenants/acme/connections/crm/default/proxy/whoami")
        .await;
    assert_eq!(default.body["family"], "acme-consented", "{default:?}");

    // What does not exist, or cannot.
    for path in [
        "/v1/tenants/acme/connections/crm/production",
        "/v1/tenants/initech/connections/crm/default",
        "/v1/tenants/acme/connections/nope/default",
        "/v1/tenants/acme/connections/crm/production/token",
        "/v1/tenants/acme/connections/crm/production/proxy/whoami",
    ] {
        let missing = service.get(path).await;
        assert_eq!(
            (missing.status, missing.code()),
            (404, "not_found"),
            "{path}: {missing:?}"
        );
    }
    let bad_key = service.get("/v1/tenants/acme/connections/crm/bad%20key").await;
    assert_eq!((bad_key.status, bad_key.code()), (422, "invalid_input"), "{bad_key:?}");
    let bad_tenant = service.get("/v1/tenants/bad%20tenant/connections").await;
    assert_eq!(bad_tenant.status, 422, "{bad_tenant:?}");
    let refused = service
        .post(
            "/v1/connections",
            json!({"tenant_id": "acme", "integration": "crm", "connection_key": "a/b", "access_token": "x"}),
        )
        .await;
    assert_eq!((refused.status, refused.code()), (422, "invalid_input"), "{refused:?}");
    let anonymous = service
        .http
        .get(format!("{}/v1/tenants/acme/connections", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_integration_in_use_is_refused_until_asked_to_cascade() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    service.add_integration(&fake, "unused").await;
    let acme = id_of(&service.connect(&fake, "crm", "acme").await);
    let globex = id_of(&service.connect(&fake, "crm", "globex").await);

    let refused = service.delete("/v1/integrations/crm").await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "integration_in_use"),
        "{refused:?}"
    );
    assert!(
        refused.body["error"]["message"].as_str().unwrap().contains('2'),
        "{refused:?}"
    );
    assert_eq!(service.get("/v1/integrations/crm").await.status, 200);
    let token = service.get(&format!("/v1/connections/{acme}/token")).await;
    assert_eq!(token.status, 200, "still served: {token:?}");

    let bad = service.delete("/v1/integrations/crm?cascade=maybe").await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_query"), "{bad:?}");

    let revocations = fake.revocation_requests();
    let cascaded = service.delete("/v1/integrations/crm?cascade=true").await;
    assert_eq!(cascaded.status, 204, "{cascaded:?}");
    assert!(
        fake.revocation_requests() >= revocations + 2,
        "each connection was revoked at the provider"
    );
    for id in [&acme, &globex] {
        let gone = service.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(gone.status, 404, "{gone:?}");
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 404, "{token:?}");
    }
    assert_eq!(service.get("/v1/integrations/crm").await.status, 404);
    let listed = service.get("/v1/tenants/acme/connections").await;
    assert_eq!(listed.body["items"], json!([]));

    // Unused: deleted at once; then it is gone.
    assert_eq!(service.delete("/v1/integrations/unused").await.status, 204);
    let missing = service.delete("/v1/integrations/unused").await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    // The name is free again.
    service.add_integration(&fake, "crm").await;
}

/// Two `tokenvisor serve` sharing one PostgreSQL database: the secret is rotated through
/// the first; the connections the second owns are refreshed by it with the new secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replicas_next_refresh_uses_a_secret_rotated_through_another() {
    // Tokens live 32 s: their scheduled refresh comes about 24 s after the registration,
    // well after the change notification (room for 16 registrations and the replicas
    // settling on a loaded machine).
    let fake = fake(Dialect::Generic, 32).await;
    let database = TestDatabase::postgres().await;
    let root = tempfile::tempdir().unwrap();
    let replicas: Vec<Service> = (0..2)
        .map(|n| {
            let dir = root.path().join(format!("r{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            Service::start(
                binary(),
                &dir,
                &[
                    ("TOKENVISOR_DATABASE_URL", database.url().to_owned()),
                    (
                        "TOKENVISOR_ENCRYPTION_KEY",
                        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".to_owned(),
                    ),
                    ("TOKENVISOR_DATA_DIR", dir.join("data").display().to_string()),
                    ("TOKENVISOR_REPLICA_ID", format!("r{n}")),
                    ("TOKENVISOR_PARTITION_LEASE", "3s".to_owned()),
                    ("TOKENVISOR_DATABASE_POOL", "8".to_owned()),
                ],
            )
        })
        .collect();
    wait_until(Duration::from_secs(30), "the replicas settle", || async {
        let mut settled = true;
        for replica in &replicas {
            let cluster = replica.get("/v1/cluster").await;
            settled &= replica.get("/readyz").await.status == 200 && cluster.body["unowned_partitions"] == 0;
        }
        settled
    })
    .await;

    replicas[0].add_integration(&fake, "crm").await;
    let tenants: Vec<String> = (0..16).map(|n| format!("tenant-{n}")).collect();
    let mut ids = Vec::new();
    for tenant in &tenants {
        ids.push(id_of(&replicas[0].connect(&fake, "crm", tenant).await));
    }
    // Both replicas own some of them.
    wait_until(Duration::from_secs(10), "both replicas supervise", || async {
        let mut counts = Vec::new();
        for replica in &replicas {
            let text = replica.metrics().await;
            let total: f64 = prometheus_samples(&text, "tokenvisor_supervised_connections")
                .iter()
                .map(|(_, v)| v)
                .sum();
            counts.push(total as usize);
        }
        counts.iter().sum::<usize>() == ids.len() && counts.iter().all(|c| *c > 0)
    })
    .await;

    let rotated = fake.rotate_client_secret();
    let patched = replicas[0]
        .send(
            Method::PATCH,
            "/v1/integrations/crm",
            Some(json!({"client_secret": rotated})),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");

    // Every connection's scheduled refresh succeeds with the new secret.
    let refreshes = fake.refreshes();
    wait_until(Duration::from_secs(40), "every connection refreshes", || async {
        fake.refreshes() >= refreshes + ids.len() as u64 || fake.client_authentication_failures() > 0
    })
    .await;
    assert_eq!(
        fake.client_authentication_failures(),
        0,
        "a replica presented the rotated-away secret"
    );
    for id in &ids {
        let view = replicas[1].get(&format!("/v1/connections/{id}")).await;
        assert_eq!(view.body["status"], "active", "{view:?}");
        assert!(!view.body["last_refresh_at"].is_null(), "{view:?}");
    }
}

/// Polls `done` every 100 ms until it holds; panics naming `what` after `timeout`.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
