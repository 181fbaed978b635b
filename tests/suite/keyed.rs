//! A connection addressed by (tenant, integration, key) through the real binary: every
//! action of `/v1/connections/{id}/...` under `/v1/tenants/{tenant}/connections/{integration}/{key}`
//! with the same answers (404 `not_found` for an unknown tenant, integration or key), and
//! an authorization started under a key, which creates the tenant's connection under it or
//! updates the one already there.

use reqwest::Method;
use serde_json::json;
use std::path::Path;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{Service, integration_body};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

fn id_of(view: &serde_json::Value) -> String {
    view["id"].as_str().unwrap().to_owned()
}

/// A service with integration `crm` whose API base is the fake's echo API.
async fn service_with_crm(fake: &tokenvisor_testkit::FakeProvider, dir: &Path) -> Service {
    let service = Service::start(binary(), dir, &[]);
    let mut body = integration_body(fake, "crm");
    body["settings"] = json!({"api_base_url": format!("{}/api/echo", fake.base_url())});
    assert_eq!(service.post("/v1/integrations", body).await.status, 201);
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_action_works_by_key_and_an_unknown_key_is_not_found() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = service_with_crm(&fake, dir.path()).await;
    let default = service.connect(&fake, "crm", "acme").await;
    let grant = fake.issue_grant("acme-sandbox");
    let sandbox = service
        .post(
            "/v1/connections",
            json!({
                "tenant_id": "acme",
                "integration": "crm",
                "connection_key": "sandbox",
                "access_token": grant.access_token,
                "refresh_token": grant.refresh_token,
                "expires_in": grant.expires_in,
            }),
        )
        .await;
    assert_eq!(sandbox.status, 201, "{sandbox:?}");
    let sandbox_id = id_of(&sandbox.body);
    let by_key = "/v1/tenants/acme/connections/crm/sandbox";

    // Refresh: the sandbox connection, not the default one.
    let refreshes = fake.refreshes();
    let refreshed = service.post_empty(&format!("{by_key}/refresh")).await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    assert_eq!(id_of(&refreshed.body), sandbox_id);
    assert_eq!(fake.refreshes(), refreshes + 1);
    let token = service.get(&format!("{by_key}/token")).await;
    assert_ne!(token.body["access_token"], grant.access_token.as_str(), "refreshed");

    // History: the forced refresh, only on the sandbox connection.
    let history = service.get(&format!("{by_key}/history")).await;
    assert_eq!(history.status, 200, "{history:?}");
    let items = history.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{history:?}");
    assert_eq!(items[0]["reason"], "forced");
    assert_eq!(items[0]["outcome"], "success");
    let by_id = service.get(&format!("/v1/connections/{sandbox_id}/history")).await;
    assert_eq!(by_id.body, history.body, "the same answer as by id");
    let other = service.get("/v1/tenants/acme/connections/crm/default/history").await;
    assert_eq!(other.body["items"].as_array().unwrap().len(), 0, "{other:?}");
    let bad_limit = service.get(&format!("{by_key}/history?limit=0")).await;
    assert_eq!((bad_limit.status, bad_limit.code()), (400, "invalid_query"));

    // A token the API rejected: the current one is refreshed and handed out.
    let current = token.body["access_token"].as_str().unwrap().to_owned();
    let rejected = service
        .post(&format!("{by_key}/token/rejected"), json!({"access_token": current}))
        .await;
    assert_eq!(rejected.status, 200, "{rejected:?}");
    assert_ne!(rejected.body["access_token"], current.as_str());

    // Deactivate and activate: only the sandbox connection is disabled.
    let deactivated = service.post_empty(&format!("{by_key}/deactivate")).await;
    assert_eq!(deactivated.status, 200, "{deactivated:?}");
    assert_eq!(deactivated.body["status"], "disabled");
    let disabled = service.get(&format!("{by_key}/token")).await;
    assert_eq!((disabled.status, disabled.code()), (409, "disabled"));
    let still = service.get("/v1/tenants/acme/connections/crm/default/token").await;
    assert_eq!(still.status, 200, "{still:?}");
    let activated = service.post_empty(&format!("{by_key}/activate")).await;
    assert_eq!(activated.status, 200, "{activated:?}");
    assert_eq!(activated.body["status"], "active");
    assert_eq!(service.get(&format!("{by_key}/token")).await.status, 200);

    // What does not exist, for every action.
    for prefix in [
        "/v1/tenants/acme/connections/crm/production",
        "/v1/tenants/initech/connections/crm/sandbox",
        "/v1/tenants/acme/connections/nope/sandbox",
    ] {
        for (method, suffix, body) in [
            (Method::POST, "/refresh", None),
            (Method::POST, "/deactivate", None),
            (Method::POST, "/activate", None),
            (Method::POST, "/token/rejected", Some(json!({"access_token": "x"}))),
            (Method::GET, "/history", None),
            (Method::DELETE, "", None),
        ] {
            let missing = service.send(method.clone(), &format!("{prefix}{suffix}"), body).await;
            assert_eq!(
                (missing.status, missing.code()),
                (404, "not_found"),
                "{method} {prefix}{suffix}: {missing:?}"
            );
        }
    }
    let bad_key = service
        .post_empty("/v1/tenants/acme/connections/crm/bad%20key/refresh")
        .await;
    assert_eq!((bad_key.status, bad_key.code()), (422, "invalid_input"), "{bad_key:?}");

    // Delete: gone by key and by id; the default connection stays.
    let deleted = service.delete(by_key).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(service.get(by_key).await.status, 404);
    assert_eq!(service.get(&format!("/v1/connections/{sandbox_id}")).await.status, 404);
    let again = service.delete(by_key).await;
    assert_eq!((again.status, again.code()), (404, "not_found"));
    let listed = service.get("/v1/tenants/acme/connections").await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed:?}");
    assert_eq!(id_of(&items[0]), id_of(&default));
}

/// Sends the tenant through the fake's consent page and the callback; the page's status.
async fn authorize(service: &Service, body: serde_json::Value) -> u16 {
    let started = service.post("/v1/authorizations", body).await;
    assert_eq!(started.status, 201, "{started:?}");
    let redirect = service
        .http
        .get(started.body["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    service.http.get(&location).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_under_a_key_creates_that_connection_then_updates_it() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = service_with_crm(&fake, dir.path()).await;
    let default = service.connect(&fake, "crm", "acme").await;

    // Under `sandbox`: a second connection of the tenant, next to `default`.
    fake.set_authorizing_user("acme-sandbox-1", "us");
    let consent = json!({"tenant_id": "acme", "integration": "crm", "connection_key": "sandbox"});
    assert_eq!(authorize(&service, consent.clone()).await, 200);
    let sandbox = service.get("/v1/tenants/acme/connections/crm/sandbox").await;
    assert_eq!(sandbox.status, 200, "{sandbox:?}");
    assert_eq!(sandbox.body["connection_key"], "sandbox");
    assert_ne!(id_of(&sandbox.body), id_of(&default));
    let first_token = service.get("/v1/tenants/acme/connections/crm/sandbox/token").await;
    let whoami = service
        .get("/v1/tenants/acme/connections/crm/sandbox/proxy/whoami")
        .await;
    assert_eq!(whoami.body["family"], "acme-sandbox-1", "{whoami:?}");
    let default_whoami = service
        .get("/v1/tenants/acme/connections/crm/default/proxy/whoami")
        .await;
    assert_eq!(
        default_whoami.body["family"], "acme",
        "the default connection is untouched"
    );

    // Again under `sandbox`: the same connection, with the new grant's tokens.
    fake.set_authorizing_user("acme-sandbox-2", "us");
    assert_eq!(authorize(&service, consent).await, 200);
    let listed = service.get("/v1/tenants/acme/connections").await;
    let mut keys: Vec<(String, String)> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["connection_key"].as_str().unwrap().to_owned(), id_of(item)))
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            ("default".to_owned(), id_of(&default)),
            ("sandbox".to_owned(), id_of(&sandbox.body)),
        ],
        "{listed:?}"
    );
    let second_token = service.get("/v1/tenants/acme/connections/crm/sandbox/token").await;
    assert_ne!(second_token.body["access_token"], first_token.body["access_token"]);
    let whoami = service
        .get("/v1/tenants/acme/connections/crm/sandbox/proxy/whoami")
        .await;
    assert_eq!(whoami.body["family"], "acme-sandbox-2", "{whoami:?}");

    // Refused: a key that is not one, or another key than the re-authorized connection's.
    let bad = service
        .post(
            "/v1/authorizations",
            json!({"tenant_id": "acme", "integration": "crm", "connection_key": "a/b"}),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_input"), "{bad:?}");
    let mismatched = service
        .post(
            "/v1/authorizations",
            json!({
                "tenant_id": "acme",
                "integration": "crm",
                "connection_id": id_of(&default),
                "connection_key": "sandbox",
            }),
        )
        .await;
    assert_eq!(mismatched.status, 422, "{mismatched:?}");
}
