//! The operator's dashboard (`/ui`) of the real binary over HTTP, as a browser uses it:
//! sign-in with the admin token, the session cookie, CSRF tokens on every action,
//! filters, the connection page's actions and re-authorization, sign-out; no page holds
//! a secret.

use reqwest::header;
use std::path::Path;
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{ADMIN_TOKEN, Service};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// A browser's view of the dashboard: its session cookie, if any.
struct Browser<'a> {
    service: &'a Service,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser<'_> {
    async fn send(&self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header(header::COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.expect("request");
        let headers = response.headers().clone();
        Page {
            status: response.status().as_u16(),
            location: headers.get(header::LOCATION).map(|v| v.to_str().unwrap().to_owned()),
            set_cookie: headers.get(header::SET_COOKIE).map(|v| v.to_str().unwrap().to_owned()),
            body: response.text().await.expect("body"),
            headers,
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.service.http.get(format!("{}{path}", self.service.base)))
            .await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(
            self.service
                .http
                .post(format!("{}{path}", self.service.base))
                .form(form),
        )
        .await
    }
}

/// The value of the hidden `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[start..][..page[start..].find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_broken_tenant_reauthorizes_it_and_signs_out() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let mut ids = Vec::new();
    for tenant in ["acme", "globex", "initech"] {
        ids.push(
            service.connect(&fake, "crm", tenant).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // globex's grant is revoked; its next refresh escalates it to needs_reauth.
    fake.revoke_family("globex");
    let refreshed = service.post_empty(&format!("/v1/connections/{}/refresh", ids[1])).await;
    assert_eq!(refreshed.code(), "needs_reauth", "{refreshed:?}");
    // acme refreshes fine: the plot has a success.
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{}/refresh", ids[0]))
            .await
            .status,
        200
    );

    // initech's forced refresh is throttled (429): it is degraded, backing off.
    fake.fail_next(1, 429, serde_json::json!({"error": "rate_limited"}));
    let throttled = service.post_empty(&format!("/v1/connections/{}/refresh", ids[2])).await;
    assert_ne!(throttled.status, 200, "{throttled:?}");
    let initech = service.get(&format!("/v1/connections/{}", ids[2])).await;
    assert_eq!(initech.body["status"], "degraded", "{initech:?}");
    let throttled_code = initech.body["last_error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no last error code: {initech:?}"))
        .to_owned();

    let mut browser = Browser {
        service: &service,
        cookie: None,
    };
    // Not signed in: every page sends to the sign-in form.
    let page = browser.get("/ui").await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/ui/sign-in")));
    let form = browser.get("/ui/sign-in").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("type=\"password\""), "{}", form.body);
    assert!(
        form.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"),
        "{:?}",
        form.headers
    );
    let wrong = browser.post("/ui/sign-in", &[("token", "not-the-token")]).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_none());

    // API keys: one that only reads tokens may not use the dashboard; the admin token and
    // an unrestricted operate key may.
    let key = |name: &str, scopes: serde_json::Value, tenants: serde_json::Value| {
        let service = &service;
        let body = serde_json::json!({"name": name, "scopes": scopes, "tenants": tenants});
        async move {
            let created = service.post("/v1/api-keys", body).await;
            assert_eq!(created.status, 201, "{created:?}");
            (
                created.body["key"].as_str().unwrap().to_owned(),
                created.body["id"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (reader, _) = key(
        "reader",
        serde_json::json!(["tokens:read"]),
        serde_json::json!(["acme"]),
    )
    .await;
    let (operator_key, operator_id) = key("operator", serde_json::json!(["operate"]), serde_json::Value::Null).await;
    let refused = browser.post("/ui/sign-in", &[("token", &reader)]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.set_cookie.is_none());
    let admin = browser.post("/ui/sign-in", &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(admin.status, 303);

    let signed_in = browser.post("/ui/sign-in", &[("token", &operator_key)]).await;
    assert_eq!((signed_in.status, signed_in.location.as_deref()), (303, Some("/ui")));
    let set_cookie = signed_in.set_cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let session = set_cookie.split(';').next().unwrap().to_owned();
    browser.cookie = Some(session.clone());

    // The overview: counts per status, the refresh plot.
    let overview = browser.get("/ui").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(overview.body.contains("crm"));
    assert!(
        overview
            .body
            .contains("/ui/connections?integration=crm&amp;status=needs_reauth\">1</a>"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("success: 1"), "{}", overview.body);
    // The tokens expiring within the hour (acme's and initech's, issued for 3,600 s;
    // globex needs re-authorization and is not counted), both with a refresh planned
    // before their expiry; and the throttled connection by its error code.
    assert!(
        overview.body.contains("<span class=\"expiring\">2</span>"),
        "{}",
        overview.body
    );
    assert!(
        overview.body.contains("<span class=\"planned\">2</span>"),
        "{}",
        overview.body
    );
    assert!(
        overview.body.contains(&format!(
            "<th scope=\"row\"><code>{throttled_code}</code></th><td>1</td>"
        )),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("<rect"), "{}", overview.body);
    // The provider calls now, from the supervisor's limiter: none waiting or in flight
    // between requests; the throttled connection backs off.
    assert!(
        overview.body.contains(
            "<th scope=\"row\">crm</th><td class=\"waiting\">0</td><td class=\"in-flight\">0 of 32</td><td class=\"backing-off\">1</td>"
        ),
        "{}",
        overview.body
    );

    // Filtering finds the broken tenant alone.
    let broken = browser.get("/ui/connections?status=needs_reauth").await;
    assert_eq!(broken.status, 200);
    assert!(
        broken.body.contains(&format!("/ui/connections/{}", ids[1])),
        "{}",
        broken.body
    );
    for other in [&ids[0], &ids[2]] {
        assert!(!broken.body.contains(other.as_str()), "{}", broken.body);
    }
    let by_tenant = browser.get("/ui/connections?tenant=initech").await;
    assert!(by_tenant.body.contains(ids[2].as_str()) && !by_tenant.body.contains(ids[0].as_str()));
    let bad = browser.get("/ui/connections?tenant=has%20space").await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    // The connection page: status, history, the token preview only.
    let path = format!("/ui/connections/{}", ids[1]);
    let page = browser.get(&path).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("needs reauth"), "{}", page.body);
    assert!(page.body.contains("invalid_grant"), "{}", page.body);
    let csrf = csrf_of(&page.body);

    // An action without (or with another) CSRF token is refused and changes nothing.
    for token in ["", "forged"] {
        let refused = browser
            .post(&format!("/ui/connections/{}/deactivate", ids[0]), &[("csrf", token)])
            .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
    }
    assert_eq!(
        service.get(&format!("/v1/connections/{}", ids[0])).await.body["status"],
        "active"
    );

    // Deactivate and activate acme.
    let deactivated = browser
        .post(&format!("/ui/connections/{}/deactivate", ids[0]), &[("csrf", &csrf)])
        .await;
    assert_eq!(deactivated.status, 200, "{}", deactivated.body);
    assert!(deactivated.body.contains("Deactivated"));
    assert_eq!(
        service.get(&format!("/v1/connections/{}", ids[0])).await.body["status"],
        "disabled"
    );
    let activated = browser
        .post(&format!("/ui/connections/{}/activate", ids[0]), &[("csrf", &csrf)])
        .await;
    assert_eq!(activated.status, 200, "{}", activated.body);
    assert_eq!(
        service.get(&format!("/v1/connections/{}", ids[0])).await.body["status"],
        "active"
    );

    // The actions are in the audit trail under the key that signed in (written in
    // batches: wait for them).
    let wanted: Vec<String> = ["deactivate", "activate"]
        .iter()
        .map(|action| format!("POST /ui/connections/{{id}}/{action}"))
        .collect();
    let mut audited = serde_json::Value::Null;
    for _ in 0..50 {
        audited = service.get(&format!("/v1/audit?connection={}", ids[0])).await.body;
        let requests: Vec<&str> = audited["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["key_id"] == operator_id.as_str())
            .filter_map(|event| event["request"].as_str())
            .collect();
        if wanted.iter().all(|request| requests.contains(&request.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each with the tenant and the connection's status before and after, as the API's
    // changes have them.
    for (request, before, after) in wanted
        .iter()
        .zip([("active", "disabled"), ("disabled", "active")])
        .map(|(request, (before, after))| (request, before, after))
    {
        assert!(
            audited["items"].as_array().unwrap().iter().any(|event| {
                event["key_id"] == operator_id.as_str()
                    && event["request"] == request.as_str()
                    && event["tenant_id"] == "acme"
                    && event["status_before"] == before
                    && event["status_after"] == after
            }),
            "{request} ({before} -> {after}) in {audited}"
        );
    }

    // Re-authorize globex: the link, consent at the fake, the status turns active.
    let started = browser.post(&format!("{path}/reauthorize"), &[("csrf", &csrf)]).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let marker = "id=\"authorize-link\" type=\"text\" readonly value=\"";
    let start = started.body.find(marker).expect("the link") + marker.len();
    let link = started.body[start..][..started.body[start..].find('"').unwrap()].replace("&amp;", "&");
    let redirect = service.http.get(&link).send().await.unwrap();
    assert!(redirect.status().is_redirection(), "{}", redirect.status());
    let callback = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(service.http.get(&callback).send().await.unwrap().status(), 200);
    let status = browser.get(&format!("{path}/status")).await;
    assert_eq!(status.status, 200);
    let live: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(live["status"], "active", "{live}");

    // The integrations page never shows the client secret.
    let integrations = browser.get("/ui/integrations").await;
    assert_eq!(integrations.status, 200);
    assert!(integrations.body.contains(fake.client_id()));

    // No page holds a token or a secret.
    let mut pages = String::new();
    for path in ["/ui", "/ui/connections", "/ui/integrations"] {
        pages.push_str(&browser.get(path).await.body);
    }
    for id in &ids {
        pages.push_str(&browser.get(&format!("/ui/connections/{id}")).await.body);
    }
    let mut secrets = vec![
        fake.client_secret().to_owned(),
        ADMIN_TOKEN.to_owned(),
        reader.clone(),
        operator_key.clone(),
    ];
    for (tenant, id) in ["acme", "globex", "initech"].into_iter().zip(&ids) {
        secrets.extend(fake.current_refresh_token(tenant));
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200, "{token:?}");
        secrets.push(token.body["access_token"].as_str().unwrap().to_owned());
    }
    for secret in &secrets {
        assert!(!pages.contains(secret.as_str()), "a secret is on a page");
    }

    // Delete initech, then sign out: the old cookie no longer works.
    let deleted = browser
        .post(&format!("/ui/connections/{}/delete", ids[2]), &[("csrf", &csrf)])
        .await;
    assert_eq!(
        (deleted.status, deleted.location.as_deref()),
        (303, Some("/ui/connections"))
    );
    assert_eq!(service.get(&format!("/v1/connections/{}", ids[2])).await.status, 404);
    let out = browser.post("/ui/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location.as_deref()), (303, Some("/ui/sign-in")));
    let after = browser.get("/ui").await;
    assert_eq!((after.status, after.location.as_deref()), (303, Some("/ui/sign-in")));
    let replayed = browser
        .post(&format!("/ui/connections/{}/deactivate", ids[0]), &[("csrf", &csrf)])
        .await;
    assert_eq!(replayed.status, 303, "a signed-out session acts no more");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Absolute URLs (`http://` or `https://` followed by a host) in `text`.
fn absolute_urls(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for scheme in ["http://", "https://"] {
        let mut rest = text;
        while let Some(at) = rest.find(scheme) {
            let tail = &rest[at + scheme.len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "./_-".contains(c)))
                .unwrap_or(tail.len());
            if end > 0 {
                found.push(format!("{scheme}{}", &tail[..end]));
            }
            rest = tail;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_documentation_is_served_from_the_binary_and_names_no_other_origin() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    let browser = Browser {
        service: &service,
        cookie: None,
    };
    let page = browser.get("/docs").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("data-openapi=\"/openapi.json\""), "{}", page.body);
    assert_eq!(absolute_urls(&page.body), Vec::<String>::new(), "{}", page.body);
    let policy = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(
        !policy.contains("http") && !policy.contains('*') && !policy.contains("unsafe"),
        "{policy}"
    );

    // Every script and stylesheet the page names answers from here.
    let mut names = Vec::new();
    for marker in ["src=\"", "href=\""] {
        for (at, _) in page.body.match_indices(marker) {
            let start = at + marker.len();
            names.push(page.body[start..][..page.body[start..].find('"').unwrap()].to_owned());
        }
    }
    for asset in [
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        "/docs/assets/docs.js",
        "/docs/assets/LICENSE",
    ] {
        assert!(names.iter().any(|name| name == asset), "{asset} not in {names:?}");
    }
    for name in &names {
        let answer = browser.get(name).await;
        assert_eq!(answer.status, 200, "{name}");
        assert!(!answer.body.is_empty(), "{name}");
    }
    // The starter names no other origin and turns off the public validator badge.
    let starter = browser.get("/docs/assets/docs.js").await;
    assert_eq!(absolute_urls(&starter.body), Vec::<String>::new());
    assert!(starter.body.contains("validatorUrl: null"), "{}", starter.body);
    assert!(
        browser
            .get("/docs/assets/LICENSE")
            .await
            .body
            .contains("Apache License")
    );
    let bundle = browser.get("/docs/assets/swagger-ui-bundle.js").await;
    assert!(bundle.body.contains("SwaggerUIBundle"));
    // The bundle's absolute URLs are identifiers (XML namespaces, JSON Schema and OpenAPI
    // dialects), links in its texts and licences, or its validator (off, see above): none
    // is a script, style or font it loads.
    let loads: Vec<String> = absolute_urls(&bundle.body)
        .into_iter()
        .filter(|url| url.ends_with(".js") || url.ends_with(".css") || url.ends_with(".woff2") || url.contains("cdn"))
        .collect();
    assert_eq!(loads, Vec::<String>::new());
    // The document it renders is the service's own.
    let document = browser.get("/openapi.json").await;
    assert_eq!(document.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_searched_and_sorted_a_keyset_page_at_a_time_through_the_api_and_the_table() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    for index in 0..10 {
        let tenant = format!("t-{index}");
        let grant = fake.issue_grant(&tenant);
        let created = service
            .post(
                "/v1/connections",
                serde_json::json!({
                    "tenant_id": tenant,
                    "integration": "crm",
                    "access_token": grant.access_token,
                    "refresh_token": grant.refresh_token,
                    // Three expiry times: ties broken by id.
                    "expires_in": 3600 + (index % 3) * 600,
                }),
            )
            .await;
        assert_eq!(created.status, 201, "{created:?}");
    }
    // Sorted by expiry, latest first, 4 a page: every connection once, in order.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut path = "/v1/connections?sort=expires_at&order=desc&limit=4".to_owned();
    for _ in 0..5 {
        let page = service.get(&path).await;
        assert_eq!(page.status, 200, "{page:?}");
        for item in page.body["items"].as_array().unwrap() {
            seen.push((
                item["expires_at"].as_str().unwrap().to_owned(),
                item["id"].as_str().unwrap().to_owned(),
            ));
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => {
                assert!(cursor.starts_with("expires_at~"), "{cursor}");
                path = format!("/v1/connections?sort=expires_at&order=desc&limit=4&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 10, "{seen:?}");
    let mut expected = seen.clone();
    expected.sort_by(|a, b| {
        let time = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
        time(&b.0).cmp(&time(&a.0)).then(b.1.cmp(&a.1))
    });
    assert_eq!(seen, expected);

    // The search: a prefix of the tenant id (or key, or integration name).
    let found = service.get("/v1/connections?q=t-1").await;
    assert_eq!(found.status, 200);
    let tenants: Vec<&str> = found.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["t-1"]);
    assert_eq!(
        service.get("/v1/connections?q=cr&limit=500").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    for (bad, code) in [
        ("q=%25", "invalid_query"),
        ("sort=tenant", "invalid_query"),
        ("order=sideways", "invalid_query"),
        (
            "sort=failures&cursor=expires_at~1~0190a000-0000-7000-8000-000000000000",
            "invalid_cursor",
        ),
    ] {
        let refused = service.get(&format!("/v1/connections?{bad}")).await;
        assert_eq!((refused.status, refused.code()), (400, code), "{bad}: {refused:?}");
    }

    // The document names the new parameters and their values.
    let document = service.get("/openapi.json").await.body;
    let parameters = document["paths"]["/v1/connections"]["get"]["parameters"].to_string();
    for name in ["\"q\"", "\"sort\"", "\"order\""] {
        assert!(parameters.contains(name), "{name} not in {parameters}");
    }
    // The values, inline or in a referenced schema.
    let described = format!("{parameters}{}", document["components"]["schemas"]);
    for value in ["expires_at", "failures", "last_error", "desc"] {
        assert!(
            described.contains(&format!("\"{value}\"")),
            "{value} not in {parameters}"
        );
    }

    // The table: the same search and order, its next page by the cursor.
    let mut browser = Browser {
        service: &service,
        cookie: None,
    };
    let signed_in = browser.post("/ui/sign-in", &[("token", ADMIN_TOKEN)]).await;
    browser.cookie = Some(signed_in.set_cookie.unwrap().split(';').next().unwrap().to_owned());
    let table = browser.get("/ui/connections?q=t-1").await;
    assert_eq!(table.status, 200, "{}", table.body);
    assert!(
        table.body.contains(">t-1</a>") && !table.body.contains(">t-2</a>"),
        "{}",
        table.body
    );
    assert!(
        table
            .body
            .contains("placeholder=\"start of tenant, key or integration\"")
    );
    let sorted = browser.get("/ui/connections?sort=failures&order=desc").await;
    assert_eq!(sorted.status, 200, "{}", sorted.body);
    assert!(sorted.body.contains("aria-sort=\"descending\""), "{}", sorted.body);
    let refused = browser.get("/ui/connections?q=%25").await;
    assert_eq!(refused.status, 422, "{}", refused.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_event_stream_needs_a_session_and_relays_only_the_connections_of_the_page() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let shown = service.connect(&fake, "crm", "shown").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = service.connect(&fake, "crm", "other").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut browser = Browser {
        service: &service,
        cookie: None,
    };
    // Without a session: to the sign-in page, no stream.
    let anonymous = browser.get(&format!("/ui/events?ids={shown}")).await;
    assert_eq!(
        (anonymous.status, anonymous.location.as_deref()),
        (303, Some("/ui/sign-in"))
    );
    let signed_in = browser.post("/ui/sign-in", &[("token", ADMIN_TOKEN)]).await;
    browser.cookie = Some(signed_in.set_cookie.unwrap().split(';').next().unwrap().to_owned());
    for bad in ["/ui/events", "/ui/events?ids=not-an-id", "/ui/events?ids="] {
        assert_eq!(browser.get(bad).await.status, 400, "{bad}");
    }
    // The table names its rows' stream; the connection page its own.
    let table = browser.get("/ui/connections").await;
    assert!(
        table.body.contains("data-live-events=\"/ui/events?ids="),
        "{}",
        table.body
    );
    let page = browser.get(&format!("/ui/connections/{shown}")).await;
    assert!(
        page.body
            .contains(&format!("data-live-events=\"/ui/events?connection={shown}\"")),
        "{}",
        page.body
    );

    let mut events = service
        .http
        .get(format!("{}/ui/events?connection={shown}", service.base))
        .header(header::COOKIE, browser.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()[header::CONTENT_TYPE], "text/event-stream");
    // The other connection's event is not relayed; the shown one's is.
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{other}/deactivate"))
            .await
            .status,
        200
    );
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{shown}/deactivate"))
            .await
            .status,
        200
    );
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: deactivated") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&shown), "{seen}");
    assert!(!seen.contains(&other), "{seen}");
}
