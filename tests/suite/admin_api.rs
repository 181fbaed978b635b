//! The admin API of the real binary: bearer-token authentication, the bad-input matrix,
//! the OpenAPI document, health and readiness, the event stream (invariant 8: bad input
//! gets a typed 4xx and changes nothing; invariant 7: no secret in any view).

use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{Service, answer, integration_body};

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// One request of the bad-input matrix and the answer it must get.
struct Case {
    method: Method,
    path: String,
    body: String,
    content_type: &'static str,
    status: u16,
    code: &'static str,
}

/// Integration and connection counts, to show a request changed nothing.
async fn counts(service: &Service) -> (usize, usize) {
    let integrations = service.get("/v1/integrations").await;
    let connections = service.get("/v1/connections").await;
    (
        integrations.body["items"].as_array().map_or(0, Vec::len),
        connections.body["items"].as_array().map_or(0, Vec::len),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_or_with_a_wrong_bearer_token_get_401_and_change_nothing() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let connection = service.connect(&fake, "crm", "acme").await;
    let id = connection["id"].as_str().unwrap().to_owned();
    let before = counts(&service).await;

    let wrong_tokens: [Option<&str>; 5] = [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer test-admin-token-012345678"),
        Some("Basic dGVzdDp0ZXN0"),
        Some("Bearer "),
    ];
    let requests: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, "/v1/integrations".into(), None),
        (
            Method::POST,
            "/v1/integrations".into(),
            Some(integration_body(&fake, "evil")),
        ),
        (Method::GET, "/v1/connections".into(), None),
        (Method::GET, format!("/v1/connections/{id}"), None),
        (Method::GET, format!("/v1/connections/{id}/token"), None),
        (Method::POST, format!("/v1/connections/{id}/deactivate"), None),
        (Method::POST, format!("/v1/connections/{id}/refresh"), None),
        (Method::DELETE, format!("/v1/connections/{id}"), None),
        (Method::GET, "/v1/events".into(), None),
        (Method::GET, "/v1/no-such-route".into(), None),
    ];
    let refreshes_before = fake.refreshes();
    for authorization in wrong_tokens {
        for (method, path, body) in &requests {
            let mut request = service.http.request(method.clone(), format!("{}{path}", service.base));
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()),
                Some("Bearer")
            );
            let answer = answer(response).await;
            assert_eq!(answer.status, 401, "{method} {path} with {authorization:?}: {answer:?}");
            assert_eq!(answer.code(), "unauthorized");
            assert!(!answer.body.to_string().contains("access_token"));
        }
    }
    assert_eq!(counts(&service).await, before, "nothing was created or deleted");
    let view = service.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(view.body["status"], "active", "nothing was deactivated");
    assert_eq!(fake.refreshes(), refreshes_before, "no refresh was forced");

    // The routes without authentication.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = service
            .http
            .get(format!("{}{path}", service.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_code_changes_nothing_and_the_service_keeps_serving() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let connection = service.connect(&fake, "crm", "acme").await;
    let id = connection["id"].as_str().unwrap().to_owned();
    let unknown = "0190f3c2-7d0e-7c6a-9b1e-1234567890ab";
    let before = counts(&service).await;

    let good_connection = json!({"tenant_id": "t1", "integration": "crm", "access_token": "at", "expires_in": 3600});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good_connection.clone();
        body[key] = value;
        body
    };
    let with_integration = |key: &str, value: serde_json::Value| {
        let mut body = integration_body(&fake, "other");
        body[key] = value;
        body
    };
    let huge = "x".repeat(70 * 1024);
    let unknown_connection = format!("/v1/connections/{unknown}");
    let json_case = |path: &str, body: serde_json::Value, status: u16, code: &'static str| Case {
        method: Method::POST,
        path: path.to_owned(),
        body: body.to_string(),
        content_type: "application/json",
        status,
        code,
    };
    let raw_case = |method: Method, path: &str, body: &str, content_type: &'static str, status: u16, code| Case {
        method,
        path: path.to_owned(),
        body: body.to_owned(),
        content_type,
        status,
        code,
    };
    let empty_case = |method: Method, path: &str, status: u16, code: &'static str| Case {
        method,
        path: path.to_owned(),
        body: String::new(),
        content_type: "",
        status,
        code,
    };
    let connections = "/v1/connections";
    let integrations = "/v1/integrations";
    let cases = vec![
        raw_case(
            Method::POST,
            connections,
            "{\"tenant_id\": ",
            "application/json",
            400,
            "malformed_json",
        ),
        raw_case(
            Method::POST,
            connections,
            "not json",
            "application/json",
            400,
            "malformed_json",
        ),
        raw_case(
            Method::POST,
            connections,
            &good_connection.to_string(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        json_case(connections, with("surprise", json!(1)), 422, "invalid_input"),
        json_case(connections, json!({"tenant_id": "t1"}), 422, "invalid_input"),
        json_case(connections, with("tenant_id", json!("a b/c")), 422, "invalid_input"),
        json_case(connections, with("tenant_id", json!("")), 422, "invalid_input"),
        json_case(connections, with("expires_in", json!(-5)), 422, "invalid_input"),
        json_case(connections, with("expires_in", json!(0)), 422, "invalid_input"),
        json_case(
            connections,
            with("expires_at", json!("2001-01-01T00:00:00Z")),
            422,
            "invalid_input",
        ),
        json_case(connections, with("access_token", json!("")), 422, "invalid_input"),
        json_case(connections, with("integration", json!("nope")), 404, "not_found"),
        json_case(connections, with("access_token", json!(huge)), 413, "payload_too_large"),
        json_case(
            integrations,
            with_integration("token_url", json!("not a url")),
            422,
            "invalid_url",
        ),
        json_case(
            integrations,
            with_integration("token_url", json!("http://evil.example.com/t")),
            422,
            "insecure_url",
        ),
        json_case(
            integrations,
            with_integration("token_url", json!("ftp://127.0.0.1/t")),
            422,
            "invalid_url",
        ),
        json_case(
            integrations,
            with_integration("redirect_uri", json!("javascript:x")),
            422,
            "invalid_input",
        ),
        json_case(
            integrations,
            with_integration("provider", json!("myspace")),
            422,
            "unknown_provider",
        ),
        json_case(
            integrations,
            with_integration("settings", json!({"client_auth": "x"})),
            422,
            "invalid_settings",
        ),
        json_case(
            integrations,
            with_integration("client_secret", json!("")),
            422,
            "invalid_input",
        ),
        json_case(
            integrations,
            with_integration("scopes", json!(["read write"])),
            422,
            "invalid_input",
        ),
        json_case(
            integrations,
            with_integration("unknown", json!(true)),
            422,
            "invalid_input",
        ),
        json_case(integrations, integration_body(&fake, "crm"), 409, "conflict"),
        empty_case(Method::GET, &unknown_connection, 404, "not_found"),
        empty_case(Method::GET, &format!("{unknown_connection}/token"), 404, "not_found"),
        empty_case(Method::POST, &format!("{unknown_connection}/refresh"), 404, "not_found"),
        empty_case(
            Method::POST,
            &format!("{unknown_connection}/deactivate"),
            404,
            "not_found",
        ),
        empty_case(Method::DELETE, &unknown_connection, 404, "not_found"),
        empty_case(Method::GET, "/v1/connections/not-a-uuid", 400, "invalid_id"),
        empty_case(Method::GET, "/v1/connections?status=sleeping", 400, "invalid_query"),
        empty_case(Method::GET, "/v1/connections?limit=0", 400, "invalid_query"),
        empty_case(Method::GET, "/v1/connections?cursor=garbage", 400, "invalid_cursor"),
        empty_case(Method::GET, "/v1/connections?colour=red", 400, "invalid_query"),
        json_case(
            &format!("/v1/connections/{id}/token/rejected"),
            json!({"token": "x"}),
            422,
            "invalid_input",
        ),
        json_case(
            "/v1/authorizations",
            json!({"tenant_id": "t1", "integration": "nope"}),
            404,
            "not_found",
        ),
        json_case(
            "/v1/authorizations",
            json!({"tenant_id": "t 1", "integration": "crm"}),
            422,
            "invalid_input",
        ),
        empty_case(Method::GET, "/nowhere", 404, "not_found"),
    ];
    for Case {
        method,
        path,
        body,
        content_type,
        status,
        code,
    } in cases
    {
        let mut request = service
            .http
            .request(method.clone(), format!("{}{path}", service.base))
            .bearer_auth(&service.token);
        if !content_type.is_empty() {
            request = request.header("content-type", content_type).body(body.clone());
        }
        let answer = answer(request.send().await.unwrap()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{method} {path} {}: {answer:?}",
            body.chars().take(120).collect::<String>()
        );
        assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(counts(&service).await, before, "no bad request changed anything");

    // The OAuth callback with an unknown state: a page saying why, nothing created.
    let page = service
        .http
        .get(format!("{}/oauth/callback?state=forged&code=abc", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    assert!(page.text().await.unwrap().contains("unknown_state"));
    assert_eq!(counts(&service).await, before);

    // Still serving.
    let token = service.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(token.status, 200, "{token:?}");
    assert!(fake.is_access_token_live(token.body["access_token"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_hide_secrets_the_document_is_openapi_3_1_and_events_stream_as_sse() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);

    let openapi: serde_json::Value = service
        .http
        .get(format!("{}/openapi.json", service.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        openapi["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        openapi["openapi"]
    );
    assert!(openapi["paths"]["/v1/connections/{id}/token"]["get"].is_object());
    assert!(openapi["components"]["securitySchemes"]["bearer"].is_object());

    let ready = service
        .http
        .get(format!("{}/readyz", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = answer(
        service
            .http
            .get(format!("{}/metrics", service.base))
            .bearer_auth(&service.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        metrics.status == 200 || (metrics.status == 404 && metrics.code() == "metrics_disabled"),
        "{metrics:?}"
    );

    // Subscribe to the event stream before anything happens.
    let mut events = service
        .http
        .get(format!("{}/v1/events", service.base))
        .bearer_auth(&service.token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    let integration = service.add_integration(&fake, "crm").await;
    assert!(integration.get("client_secret").is_none(), "{integration}");
    assert!(!integration.to_string().contains(fake.client_secret()));
    let issued = fake.issue_grant("acme");
    let created = service
        .post(
            "/v1/connections",
            json!({
                "tenant_id": "acme", "integration": integration["id"], "access_token": issued.access_token,
                "refresh_token": issued.refresh_token, "expires_in": 3600, "metadata": {"org_id": "42"},
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let view = created.body;
    let text = view.to_string();
    assert!(!text.contains(&issued.access_token) && !text.contains(&issued.refresh_token));
    assert!(view["token_preview"].as_str().unwrap().chars().count() <= 9);
    assert_eq!(view["integration"], "crm");
    assert_eq!(view["provider"], "generic");
    assert_eq!(view["status"], "active");
    assert_eq!(view["metadata"]["org_id"], "42");
    let id = view["id"].as_str().unwrap().to_owned();

    // The event stream shows the connection.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: connected") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&id), "{seen}");

    // Lists page with a cursor.
    for tenant in ["t2", "t3"] {
        service.connect(&fake, "crm", tenant).await;
    }
    let first = service.get("/v1/connections?limit=2").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let cursor = first.body["next_cursor"].as_str().expect("a next page").to_owned();
    let second = service.get(&format!("/v1/connections?limit=2&cursor={cursor}")).await;
    assert_eq!(second.body["items"].as_array().unwrap().len(), 1);
    assert!(second.body["next_cursor"].is_null());
    let filtered = service
        .get("/v1/connections?tenant_id=t2&integration=crm&status=active")
        .await;
    assert_eq!(filtered.body["items"].as_array().unwrap().len(), 1);

    // The token endpoints hand out the token; a rejected token is replaced.
    let token = service.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(token.status, 200);
    assert_eq!(token.body["access_token"], issued.access_token.as_str());
    let replaced = service
        .post(
            &format!("/v1/connections/{id}/token/rejected"),
            json!({"access_token": issued.access_token}),
        )
        .await;
    assert_eq!(replaced.status, 200, "{replaced:?}");
    assert_ne!(replaced.body["access_token"], issued.access_token.as_str());
    assert!(fake.is_access_token_live(replaced.body["access_token"].as_str().unwrap()));

    // Deactivated: 409 disabled; activated again: a token.
    let deactivated = service.post_empty(&format!("/v1/connections/{id}/deactivate")).await;
    assert_eq!(deactivated.body["status"], "disabled");
    let refused = service.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!((refused.status, refused.code()), (409, "disabled"));
    let activated = service.post_empty(&format!("/v1/connections/{id}/activate")).await;
    assert_eq!(activated.body["status"], "active");
    assert_eq!(service.get(&format!("/v1/connections/{id}/token")).await.status, 200);

    // Deleted: revoked at the provider, then gone.
    let revocations = fake.revocation_requests();
    assert_eq!(service.delete(&format!("/v1/connections/{id}")).await.status, 204);
    assert!(fake.revocation_requests() > revocations);
    assert_eq!(service.get(&format!("/v1/connections/{id}")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_started_through_the_api_finishes_at_the_callback() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;

    let started = service
        .post(
            "/v1/authorizations",
            json!({"tenant_id": "newco", "integration": "crm"}),
        )
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let url = started.body["authorize_url"].as_str().unwrap();
    let callback = format!("{}/oauth/callback", service.base);
    let redirect_uri = url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned());
    assert_eq!(redirect_uri.as_deref(), Some(callback.as_str()));

    // The fake approves and redirects the browser to our callback.
    let redirect = service.http.get(url).send().await.unwrap();
    assert!(redirect.status().is_redirection(), "{}", redirect.status());
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&callback), "{location}");
    let page = service.http.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("style-src 'self'"),
        "{policy}"
    );
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let text = page.text().await.unwrap();
    // A styled success page naming the tenant, never the code of the redirect.
    assert!(
        text.contains("class=\"card succeeded\"") && text.contains("<b>newco</b>"),
        "{text}"
    );
    assert!(
        text.contains("href=\"/ui/assets/app.css\"") && !text.contains("<script"),
        "{text}"
    );
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert!(!text.contains(&code), "{text}");
    let stylesheet = service
        .http
        .get(format!("{}/ui/assets/app.css", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stylesheet.status(), 200);
    assert!(stylesheet.text().await.unwrap().contains("main.outcome"));
    // The state is single-use: a failure page says so.
    let again = service.http.get(&location).send().await.unwrap();
    assert_eq!(again.status(), 400);
    let text = again.text().await.unwrap();
    assert!(
        text.contains("class=\"card failed\"") && text.contains("Not connected"),
        "{text}"
    );
    assert!(
        text.contains("<code>unknown_state</code>") && !text.contains(&code),
        "{text}"
    );

    let list = service.get("/v1/connections?tenant_id=newco").await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list:?}");
    assert_eq!(items[0]["status"], "active");
}

/// Reads the SSE stream until `done` holds for what arrived (10 s at most).
async fn read_sse(events: &mut reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&seen) {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .unwrap_or_else(|_| panic!("stream so far: {seen}"))
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

/// The `(id, event)` pairs of an SSE text.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            Some((field("id:"), field("event:")?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_client_that_reconnects_with_last_event_id_gets_what_it_missed() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    let subscribe = |last_event_id: Option<String>| {
        let mut request = service
            .http
            .get(format!("{}/v1/events", service.base))
            .bearer_auth(&service.token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send()
    };

    let mut events = subscribe(None).await.unwrap();
    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let id = view["id"].as_str().unwrap().to_owned();
    let seen = read_sse(&mut events, |s| s.contains("event: connected")).await;
    let (last_id, kind) = sse_events(&seen).pop().expect("one event");
    assert_eq!(kind, "connected");
    let last_id = last_id.expect("events carry an id");
    drop(events);

    // While the client is away: three events.
    for action in ["deactivate", "activate", "refresh"] {
        assert_eq!(
            service
                .post_empty(&format!("/v1/connections/{id}/{action}"))
                .await
                .status,
            200
        );
    }

    // Reconnecting with the last id it saw, it gets exactly those three, in order.
    let mut resumed = subscribe(Some(last_id.clone())).await.unwrap();
    let seen = read_sse(&mut resumed, |s| s.contains("event: refreshed")).await;
    let kinds: Vec<String> = sse_events(&seen).into_iter().map(|(_, kind)| kind).collect();
    assert_eq!(kinds, ["deactivated", "activated", "refreshed"], "{seen}");

    // An id from another run (or made up): what is kept, announced as an unknown gap.
    let mut stranger = subscribe(Some("0000000-1".into())).await.unwrap();
    let seen = read_sse(&mut stranger, |s| s.contains("event: refreshed")).await;
    assert!(seen.contains("event: lagged\ndata: {\"missed\":null}"), "{seen}");
    assert!(seen.contains("event: connected"), "{seen}");
}

/// An authorization started with a `return_to` on an allowed host sends the tenant's
/// browser back there with the outcome (connected, or the error when consent was denied);
/// a `return_to` on another host, or with none allowed, is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_sends_the_tenant_back_to_an_allowed_return_to_with_the_outcome() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        binary(),
        dir.path(),
        &[(
            "TOKENVISOR_RETURN_TO_HOSTS",
            "app.example.com, other.example.org".to_owned(),
        )],
    );
    service.add_integration(&fake, "crm").await;
    let start = |tenant: &str, return_to: &str| {
        service.post(
            "/v1/authorizations",
            json!({"tenant_id": tenant, "integration": "crm", "return_to": return_to}),
        )
    };
    for refused in [
        "https://evil.example.net/done",
        "https://app.example.com.evil.net/done",
        "https://user:pw@app.example.com/done",
        "javascript:alert(1)",
        "/relative/path",
    ] {
        let answer = start("newco", refused).await;
        assert_eq!(
            (answer.status, answer.code()),
            (422, "invalid_input"),
            "{refused}: {answer:?}"
        );
    }

    // Consent given: back to the app with the connection.
    let started = start("newco", "https://app.example.com/integrations/done?step=3").await;
    assert_eq!(started.status, 201, "{started:?}");
    let redirect = service
        .http
        .get(started.body["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let callback = redirect.headers()["location"].to_str().unwrap().to_owned();
    let back = service.http.get(&callback).send().await.unwrap();
    assert_eq!(back.status().as_u16(), 303);
    let location = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("app.example.com"));
    assert_eq!(location.path(), "/integrations/done");
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["step"], "3");
    assert_eq!(query["tokenvisor_outcome"], "connected");
    assert_eq!(query["tenant_id"], "newco");
    let connection = service
        .get(&format!("/v1/connections/{}", query["connection_id"]))
        .await;
    assert_eq!(
        (connection.status, connection.body["status"].as_str()),
        (200, Some("active"))
    );

    // Consent denied: back with the error code, nothing connected.
    let started = start("deniedco", "https://other.example.org/back").await;
    let authorize = url::Url::parse(started.body["authorize_url"].as_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let denied = service
        .http
        .get(format!(
            "{}/oauth/callback?state={state}&error=access_denied",
            service.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 303);
    let location = url::Url::parse(denied.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("other.example.org"));
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["tokenvisor_outcome"], "error");
    assert_eq!(query["error"], "authorization_denied");
    let listed = service.get("/v1/connections?tenant_id=deniedco").await;
    assert_eq!(listed.body["items"], json!([]));
}

/// Without `TOKENVISOR_RETURN_TO_HOSTS`, any `return_to` is refused with a message that
/// names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_to_is_refused_when_no_host_is_allowed() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let answer = service
        .post(
            "/v1/authorizations",
            json!({"tenant_id": "newco", "integration": "crm", "return_to": "https://app.example.com/"}),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (422, "invalid_input"), "{answer:?}");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TOKENVISOR_RETURN_TO_HOSTS"),
        "{answer:?}"
    );
}
