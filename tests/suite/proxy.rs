//! `ANY /v1/connections/{id}/proxy/{*path}` through the real binary: an API call with the
//! connection's token, the dead-token answer refreshed and retried once, the caller's own
//! credentials never forwarded, and no way out of the connection's API base.

use serde_json::json;
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{ADMIN_TOKEN, Service, answer, integration_body};

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_proxy_carries_the_token_retries_a_dead_one_and_nothing_of_ours() {
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    let mut body = integration_body(&fake, "crm");
    body["settings"] = json!({"api_base_url": format!("{}/api/echo", fake.base_url())});
    assert_eq!(service.post("/v1/integrations", body).await.status, 201);
    let id = service.connect(&fake, "crm", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A POST with a body, a query, a header of the caller's and a cookie.
    let proxied = service
        .http
        .post(format!(
            "{}/v1/connections/{id}/proxy/items/42?expand=true",
            service.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-custom", "kept")
        .header("cookie", "session=ours")
        .header("content-type", "application/json")
        .body(r#"{"name":"widget"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        proxied.headers().get("x-echo").map(|v| v.to_str().unwrap()),
        Some("yes")
    );
    let echo = answer(proxied).await;
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(echo.body["family"], "acme", "the connection's token was presented");
    assert_eq!(echo.body["method"], "POST");
    assert_eq!(echo.body["path"], "/api/echo/items/42");
    assert_eq!(echo.body["query"], "expand=true");
    assert_eq!(echo.body["body"], r#"{"name":"widget"}"#);
    assert_eq!(echo.body["headers"]["x-custom"], "kept");
    assert!(echo.body["headers"].get("cookie").is_none(), "{echo:?}");
    assert!(
        !echo.body.to_string().contains(ADMIN_TOKEN),
        "the admin token was forwarded"
    );

    // The provider revokes the access token: the call is answered 401, reported, and
    // retried once with a fresh token.
    let token = service.get(&format!("/v1/connections/{id}/token")).await;
    fake.revoke_access_token(token.body["access_token"].as_str().unwrap());
    let refreshes = fake.refreshes();
    let retried = service.get(&format!("/v1/connections/{id}/proxy/whoami")).await;
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.body["family"], "acme");
    assert_eq!(fake.refreshes(), refreshes + 1, "one refresh for the dead token");
    assert_eq!(fake.reuse_events(), 0);
    // The refresh is in the connection's history (newest first).
    let history = service.get(&format!("/v1/connections/{id}/history?limit=5")).await;
    assert_eq!(history.status, 200, "{history:?}");
    assert_eq!(history.body["items"][0]["reason"], "rejected", "{history:?}");
    assert_eq!(history.body["items"][0]["outcome"], "success", "{history:?}");
    let bad_limit = service.get(&format!("/v1/connections/{id}/history?limit=0")).await;
    assert_eq!((bad_limit.status, bad_limit.code()), (400, "invalid_query"));

    // A redirect is passed back, not followed.
    let redirect = service.get(&format!("/v1/connections/{id}/proxy/redirect")).await;
    assert_eq!(redirect.status, 302, "{redirect:?}");

    // No way out of the API base.
    // (A client normalizes plain `..` away; encoded slashes reach the server.)
    for path in ["a%2F..%2F..%2Foauth%2Ftoken", "x%2F%2e%2e%2Fy"] {
        let escaped = service.get(&format!("/v1/connections/{id}/proxy/{path}")).await;
        assert_eq!(
            (escaped.status, escaped.code()),
            (400, "invalid_path"),
            "{path}: {escaped:?}"
        );
    }
    // A connection whose integration has no API base, and one that does not exist.
    service.add_integration(&fake, "bare").await;
    let bare = service.connect(&fake, "bare", "bare-tenant").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let none = service.get(&format!("/v1/connections/{bare}/proxy/x")).await;
    assert_eq!((none.status, none.code()), (422, "no_api_base"), "{none:?}");
    let missing = service
        .get("/v1/connections/0190a6b1-7a3e-7c2d-9f00-1234567890ab/proxy/x")
        .await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"), "{missing:?}");
    // Our bearer token is still required.
    let anonymous = service
        .http
        .get(format!("{}/v1/connections/{id}/proxy/whoami", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_connection_knows_its_next_refresh_from_the_start() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let planned = view["next_refresh_at"].as_str().expect("planned at registration");
    let planned = chrono::DateTime::parse_from_rfc3339(planned).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(view["expires_at"].as_str().unwrap()).unwrap();
    // 15 minutes before expiry, less at most the jitter (an eighth of the lead).
    let lead = expires - planned;
    assert!(
        lead >= chrono::Duration::minutes(14) && lead <= chrono::Duration::minutes(17),
        "planned {lead} before expiry"
    );
}
