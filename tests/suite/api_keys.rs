//! Least privilege through the real binary: scoped API keys (`admin`, `operate`,
//! `tokens:read`, restricted to tenants or integrations) checked on every route, with
//! 403 `forbidden` that does not tell whether a resource exists; revoked and expired keys
//! refused at once; the key shown once; failed authentications throttled per client
//! address and per key prefix (429 + Retry-After); every token read in the audit trail
//! with its key id, and no secret in the trail or the database.

use reqwest::Method;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::process::command;
use tokenvisor_tests::service::{ADMIN_TOKEN, Answer, Service, answer, prometheus_samples};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// A request with `bearer`, from the loopback address `from`.
async fn call_from(
    service: &Service,
    from: Ipv4Addr,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (Answer, reqwest::header::HeaderMap) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .local_address(IpAddr::V4(from))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut request = client
        .request(method, format!("{}{path}", service.base))
        .bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let headers = response.headers().clone();
    (answer(response).await, headers)
}

async fn call(service: &Service, bearer: &str, method: Method, path: &str, body: Option<serde_json::Value>) -> Answer {
    call_from(service, Ipv4Addr::LOCALHOST, bearer, method, path, body)
        .await
        .0
}

/// Creates a key with the admin token; answers (key, id).
async fn create_key(service: &Service, body: serde_json::Value) -> (String, String) {
    let created = service.post("/v1/api-keys", body).await;
    assert_eq!(created.status, 201, "{created:?}");
    let key = created.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tvk_"), "{key}");
    assert!(key.contains(created.body["prefix"].as_str().unwrap()));
    (key, created.body["id"].as_str().unwrap().to_owned())
}

/// The audit events matching `query`, once `done` holds (the trail is written in batches).
async fn audit_until(
    service: &Service,
    query: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = service.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(list.status, 200, "{list:?}");
        let items = list.body["items"].as_array().cloned().unwrap_or_default();
        if done(&items) {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit never matched for {query}: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything the data directory holds (the SQLite database and its WAL), as text.
fn data_dir_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir.join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_key_reaches_only_what_its_scopes_and_tenants_allow_and_every_read_is_audited() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let issued_a = fake.issue_grant("tenant-a");
    let issued_b = fake.issue_grant("tenant-b");
    let mut ids = Vec::new();
    for (tenant, issued) in [("tenant-a", &issued_a), ("tenant-b", &issued_b)] {
        let registered = service
            .post(
                "/v1/connections",
                json!({"tenant_id": tenant, "integration": "crm", "access_token": issued.access_token,
                       "refresh_token": issued.refresh_token, "expires_in": issued.expires_in}),
            )
            .await;
        assert_eq!(registered.status, 201, "{registered:?}");
        ids.push(registered.body["id"].as_str().unwrap().to_owned());
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());

    // tokens:read for tenant A.
    let (reader, reader_id) = create_key(
        &service,
        json!({"name": "tenant-a reader", "scopes": ["tokens:read"], "tenants": ["tenant-a"]}),
    )
    .await;
    let mut handed_out = Vec::new();
    for path in [
        format!("/v1/connections/{a}/token"),
        "/v1/tenants/tenant-a/connections/crm/default/token".to_owned(),
    ] {
        let token = call(&service, &reader, Method::GET, &path, None).await;
        assert_eq!(token.status, 200, "{path}: {token:?}");
        handed_out.push(token.body["access_token"].as_str().unwrap().to_owned());
    }
    let unknown = uuid::Uuid::new_v4();
    for (method, path) in [
        (Method::GET, format!("/v1/connections/{b}/token")),
        (
            Method::GET,
            "/v1/tenants/tenant-b/connections/crm/default/token".to_owned(),
        ),
        (Method::GET, format!("/v1/connections/{unknown}/token")),
        (
            Method::GET,
            "/v1/tenants/tenant-a/connections/no-such-crm/default/token".to_owned(),
        ),
        (Method::GET, format!("/v1/connections/{b}/proxy/v1/me")),
        (Method::POST, "/v1/integrations".to_owned()),
        (Method::DELETE, "/v1/integrations/crm".to_owned()),
        (Method::DELETE, format!("/v1/connections/{a}")),
        (Method::GET, "/v1/connections".to_owned()),
        (Method::GET, "/v1/api-keys".to_owned()),
        (Method::GET, "/v1/audit".to_owned()),
    ] {
        let refused = call(&service, &reader, method.clone(), &path, Some(json!({}))).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "forbidden"),
            "{method} {path}: {refused:?}"
        );
    }

    // operate: manages, never reads a token.
    let (operator, operator_id) = create_key(&service, json!({"name": "ops", "scopes": ["operate"]})).await;
    let listed = call(&service, &operator, Method::GET, "/v1/connections", None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 2);
    for action in ["deactivate", "activate"] {
        let changed = call(
            &service,
            &operator,
            Method::POST,
            &format!("/v1/connections/{b}/{action}"),
            None,
        )
        .await;
        assert_eq!(changed.status, 200, "{action}: {changed:?}");
    }
    for path in [
        format!("/v1/connections/{a}/token"),
        "/v1/tenants/tenant-a/connections/crm/default/token".to_owned(),
        format!("/v1/connections/{a}/proxy/v1/me"),
        "/v1/api-keys".to_owned(),
    ] {
        let refused = call(&service, &operator, Method::GET, &path, None).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "forbidden"),
            "{path}: {refused:?}"
        );
    }
    // operate for tenant A: sees A only, cannot change integrations.
    let (operator_a, _) = create_key(
        &service,
        json!({"name": "ops a", "scopes": ["operate"], "tenants": ["tenant-a"]}),
    )
    .await;
    let listed = call(&service, &operator_a, Method::GET, "/v1/connections", None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let tenants: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["tenant-a"]);
    for (method, path) in [
        (Method::GET, format!("/v1/connections/{b}")),
        (Method::GET, format!("/v1/connections/{unknown}")),
        (Method::GET, "/v1/tenants/tenant-b/connections".to_owned()),
        (Method::PATCH, "/v1/integrations/crm".to_owned()),
    ] {
        let refused = call(&service, &operator_a, method.clone(), &path, Some(json!({}))).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "forbidden"),
            "{method} {path}: {refused:?}"
        );
    }
    let shown = call(
        &service,
        &operator_a,
        Method::GET,
        &format!("/v1/connections/{a}"),
        None,
    )
    .await;
    assert_eq!(shown.status, 200, "{shown:?}");

    // The keys are never shown again.
    let keys = service.get("/v1/api-keys").await;
    assert_eq!(keys.status, 200, "{keys:?}");
    assert_eq!(keys.body["items"].as_array().unwrap().len(), 3);
    let keys_text = keys.body.to_string();
    for key in [&reader, &operator, &operator_a] {
        assert!(!keys_text.contains(key.as_str()), "a key is listed: {keys_text}");
        let prefix = key.split('_').nth(1).unwrap();
        assert!(keys_text.contains(prefix), "{keys_text}");
    }

    // Every token read is in the trail with its key id; changes with theirs.
    let reads = audit_until(&service, &format!("key={reader_id}"), |items| {
        items.iter().filter(|e| e["action"] == "token_read").count() >= 2
    })
    .await;
    let token_reads: Vec<_> = reads.iter().filter(|e| e["action"] == "token_read").collect();
    assert_eq!(token_reads.len(), 2, "{reads:?}");
    for event in &token_reads {
        assert_eq!(event["connection_id"], a.as_str(), "{event}");
        assert_eq!(event["tenant_id"], "tenant-a", "{event}");
        assert_eq!(event["key_id"], reader_id.as_str());
        assert_eq!(event["caller_address"], "127.0.0.1");
    }
    let by_connection = audit_until(&service, &format!("connection={b}"), |items| {
        items.iter().filter(|e| e["action"] == "change").count() >= 2
    })
    .await;
    let changes: Vec<_> = by_connection
        .iter()
        .filter(|e| e["request"].as_str().unwrap().ends_with("activate"))
        .collect();
    assert_eq!(changes.len(), 2, "{by_connection:?}");
    assert!(
        changes
            .iter()
            .all(|e| e["key_id"] == operator_id.as_str() && e["tenant_id"] == "tenant-b")
    );
    assert!(
        by_connection
            .iter()
            .all(|e| e["action"] != "token_read" && e["action"] != "proxy"),
        "a refused read was audited as one: {by_connection:?}"
    );
    let created = audit_until(&service, "key=admin", |items| {
        items.iter().any(|e| e["request"] == "POST /v1/api-keys")
    })
    .await;
    assert!(
        created.iter().any(|e| e["request"] == "POST /v1/connections"),
        "{created:?}"
    );

    // No secret in the trail's answers nor anywhere in the database.
    let trail = service.get("/v1/audit?limit=1000").await.body.to_string();
    let database = data_dir_text(dir.path());
    let mut secrets = vec![
        issued_a.access_token.clone(),
        issued_b.access_token.clone(),
        issued_a.refresh_token.clone(),
        reader.clone(),
        operator.clone(),
        operator_a.clone(),
        ADMIN_TOKEN.to_owned(),
    ];
    secrets.extend(handed_out);
    for secret in &secrets {
        assert!(!trail.contains(secret.as_str()), "a secret in the audit answers");
        assert!(!database.contains(secret.as_str()), "a secret in the database files");
    }
}

/// A CLI command against `service` with the admin token.
fn cli(service: &Service, args: &[&str]) -> Output {
    let mut cmd: Command = command(binary(), &service.dir);
    let output = cmd
        .env("TOKENVISOR_ADMIN_URL", &service.base)
        .env("TOKENVISOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_keys_are_refused_at_once_and_the_cli_manages_keys() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let id = service.connect(&fake, "crm", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_path = format!("/v1/connections/{id}/token");

    // Created through the CLI: the key is printed once.
    let created: serde_json::Value = serde_json::from_slice(
        &cli(
            &service,
            &[
                "api-keys",
                "create",
                "--name",
                "ci",
                "--scopes",
                "tokens:read",
                "--integrations",
                "crm",
                "--json",
            ],
        )
        .stdout,
    )
    .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(call(&service, &key, Method::GET, &token_path, None).await.status, 200);

    let table = String::from_utf8(cli(&service, &["api-keys", "list"]).stdout).unwrap();
    assert!(
        table.contains(&key_id) && table.contains("tokens:read") && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(&key), "{table}");
    let listed = String::from_utf8(cli(&service, &["api-keys", "list", "--json"]).stdout).unwrap();
    assert!(!listed.contains(&key), "{listed}");

    audit_until(&service, &format!("key={key_id}"), |items| !items.is_empty()).await;
    let audit = String::from_utf8(cli(&service, &["audit", "list", "--key", &key_id, "--json"]).stdout).unwrap();
    assert!(audit.contains("token_read") && audit.contains(&id), "{audit}");
    let audit_table = String::from_utf8(cli(&service, &["audit", "list", "--connection", &id]).stdout).unwrap();
    assert!(audit_table.contains("GET /v1/connections/{id}/token"), "{audit_table}");

    // Restricted to `crm`: another integration's connection of the same tenant is out.
    service.add_integration(&fake, "desk").await;
    let desk = service.connect(&fake, "desk", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("/v1/connections/{desk}/token"),
        "/v1/tenants/acme/connections/desk/default/token".to_owned(),
    ] {
        let refused = call(&service, &key, Method::GET, &path, None).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "forbidden"),
            "{path}: {refused:?}"
        );
    }
    assert_eq!(
        call(
            &service,
            &key,
            Method::GET,
            "/v1/tenants/acme/connections/crm/default/token",
            None
        )
        .await
        .status,
        200
    );

    // Revoked: the very next request is refused.
    cli(&service, &["api-keys", "revoke", &key_id]);
    let refused = call(&service, &key, Method::GET, &token_path, None).await;
    assert_eq!((refused.status, refused.code()), (401, "unauthorized"), "{refused:?}");
    let table = String::from_utf8(cli(&service, &["api-keys", "list"]).stdout).unwrap();
    assert!(table.contains("revoked"), "{table}");

    // Expired: refused as soon as its time is up.
    // 5 s: creating the key and the first call must fit in it on a loaded machine.
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(5);
    let (expiring, _) = create_key(
        &service,
        json!({"name": "short", "scopes": ["tokens:read"], "expires_at": expires_at}),
    )
    .await;
    assert_eq!(
        call(&service, &expiring, Method::GET, &token_path, None).await.status,
        200
    );
    tokio::time::sleep((expires_at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100))
        .await;
    let refused = call(&service, &expiring, Method::GET, &token_path, None).await;
    assert_eq!((refused.status, refused.code()), (401, "unauthorized"), "{refused:?}");

    // A key cannot be both admin and restricted; scopes are checked.
    for body in [
        json!({"name": "x", "scopes": ["admin"], "tenants": ["acme"]}),
        json!({"name": "x", "scopes": ["everything"]}),
        json!({"name": "x", "scopes": []}),
    ] {
        let refused = service.post("/v1/api-keys", body.clone()).await;
        assert_eq!(refused.status, 422, "{body}: {refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_throttled_per_address_and_per_key_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        binary(),
        dir.path(),
        &[("TOKENVISOR_AUTH_FAILURES_PER_MINUTE", "5".to_owned())],
    );
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut statuses = Vec::new();
    for attempt in 0..8 {
        let (answer, headers) = call_from(
            &service,
            attacker,
            &format!("wrong-token-{attempt}"),
            Method::GET,
            "/v1/connections",
            None,
        )
        .await;
        if answer.status == 429 {
            assert_eq!(answer.code(), "too_many_attempts");
            let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=12).contains(&retry_after), "{retry_after}");
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    // The throttled address is refused before its credentials are checked...
    let (same_address, _) = call_from(&service, attacker, ADMIN_TOKEN, Method::GET, "/v1/connections", None).await;
    assert_eq!(same_address.status, 429, "{same_address:?}");
    // ... while the right token from another address works.
    let (other_address, _) = call_from(
        &service,
        Ipv4Addr::new(127, 0, 0, 2),
        ADMIN_TOKEN,
        Method::GET,
        "/v1/connections",
        None,
    )
    .await;
    assert_eq!(other_address.status, 200, "{other_address:?}");

    // Guesses at one key's secret from many addresses are limited per key prefix.
    let (key, _) = {
        let created = call_from(
            &service,
            Ipv4Addr::new(127, 0, 0, 2),
            ADMIN_TOKEN,
            Method::POST,
            "/v1/api-keys",
            Some(json!({"name": "target", "scopes": ["operate"]})),
        )
        .await
        .0;
        assert_eq!(created.status, 201, "{created:?}");
        (created.body["key"].as_str().unwrap().to_owned(), ())
    };
    let prefix = key.split('_').nth(1).unwrap();
    let mut statuses = Vec::new();
    for n in 0..6u8 {
        let (answer, _) = call_from(
            &service,
            Ipv4Addr::new(127, 0, 1, 10 + n),
            &format!("tvk_{prefix}_guess{n}"),
            Method::GET,
            "/v1/connections",
            None,
        )
        .await;
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);

    // `/metrics` needs the admin token, so it is throttled like `/v1`: scraped from an
    // address that made no failed attempts.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scraper = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        .build()
        .unwrap();
    let response = scraper
        .get(format!("{}/metrics", service.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let metrics = response.text().await.unwrap();
    let failures: f64 = prometheus_samples(&metrics, "tokenvisor_auth_failures_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let throttled: f64 = prometheus_samples(&metrics, "tokenvisor_auth_throttled_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(failures >= 10.0, "{failures}: {metrics}");
    assert!(throttled >= 5.0, "{throttled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_carry_the_status_before_and_after_and_the_cli_shows_them() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let id = service.connect(&fake, "crm", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let keyed = service.connect(&fake, "crm", "globex").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for (path, expected) in [
        (format!("/v1/connections/{id}/deactivate"), 200),
        (format!("/v1/connections/{id}/activate"), 200),
        ("/v1/tenants/globex/connections/crm/default/deactivate".to_owned(), 200),
    ] {
        let done = service.post_empty(&path).await;
        assert_eq!(done.status, expected, "{path}: {done:?}");
    }
    assert_eq!(service.delete(&format!("/v1/connections/{id}")).await.status, 204);
    assert_eq!(
        service
            .delete("/v1/tenants/globex/connections/crm/default")
            .await
            .status,
        204
    );

    let changes = audit_until(&service, &format!("connection={id}"), |items| {
        items.iter().filter(|e| e["action"] == "change").count() >= 4
    })
    .await;
    let transitions: Vec<(String, String, String)> = changes
        .iter()
        .filter(|e| e["action"] == "change")
        .rev()
        .map(|e| {
            (
                e["request"].as_str().unwrap().to_owned(),
                e["status_before"].as_str().unwrap_or("-").to_owned(),
                e["status_after"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let expected = |request: &str, before: &str, after: &str| (request.to_owned(), before.to_owned(), after.to_owned());
    assert_eq!(
        transitions,
        vec![
            expected("POST /v1/connections", "-", "active"),
            expected("POST /v1/connections/{id}/deactivate", "active", "disabled"),
            expected("POST /v1/connections/{id}/activate", "disabled", "active"),
            expected("DELETE /v1/connections/{id}", "active", "deleted"),
        ],
        "{changes:#?}"
    );
    // The tenant of a deleted connection is still named (the row is gone by the time the
    // writer would look it up).
    assert!(changes.iter().all(|e| e["tenant_id"] == "acme"), "{changes:#?}");

    let by_key = audit_until(&service, &format!("connection={keyed}"), |items| {
        items.iter().filter(|e| e["action"] == "change").count() >= 3
    })
    .await;
    let last = &by_key[0];
    assert_eq!(
        (
            last["request"].as_str(),
            last["status_before"].as_str(),
            last["status_after"].as_str()
        ),
        (
            Some("DELETE /v1/tenants/{tenant}/connections/{integration}/{key}"),
            Some("disabled"),
            Some("deleted")
        ),
        "{by_key:#?}"
    );
    assert_eq!(last["tenant_id"], "globex");

    let table = String::from_utf8(cli(&service, &["audit", "list", "--connection", &id]).stdout).unwrap();
    assert!(table.contains("active -> disabled"), "{table}");
    assert!(table.contains("active -> deleted"), "{table}");
}

/// A change still in flight when `serve` is asked to stop (SIGTERM) finishes during the
/// graceful drain, and its audit event is written before the process exits: the audit
/// writer outlives the requests it records (nothing lost at shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_finishing_during_shutdown_is_in_the_audit_trail_after_the_restart() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let id = service.connect(&fake, "crm", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The provider answers the refresh after 2 s: the request is in flight at SIGTERM.
    fake.set_latency(Duration::from_secs(2));
    let refresh = {
        let http = service.http.clone();
        let url = format!("{}/v1/connections/{id}/refresh", service.base);
        tokio::spawn(async move { http.post(url).bearer_auth(ADMIN_TOKEN).send().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::block_in_place(|| service.server.terminate());
    assert!(status.success(), "{status:?}");
    let answered = refresh.await.unwrap().expect("answered during the drain");
    assert_eq!(answered.status(), 200);
    fake.set_latency(Duration::ZERO);

    let service = Service::start(binary(), dir.path(), &[]);
    let audited = service.get(&format!("/v1/audit?connection={id}")).await;
    let requests: Vec<&str> = audited.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["request"].as_str())
        .collect();
    assert!(
        requests.contains(&"POST /v1/connections/{id}/refresh"),
        "the refresh answered during shutdown is not in the trail: {audited:?}"
    );
    assert!(service.server.terminate().success());
}
