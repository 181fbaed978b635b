//! Observed through OpenTelemetry: the spans of refreshes, token endpoint calls, store
//! writes and escalations (attributes, parent/child links, links, status), captured with
//! the SDK's in-memory exporter; and invariant 7: no secret the fake provider issued
//! appears in a log line, a span attribute, a span event or a link, through a full cycle.

use std::sync::Arc;
use tokenvisor_core::{ConnectionStatus, SecretString};
use tokenvisor_store::MemoryStore;
use tokenvisor_supervisor::AuthorizationRequest;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::oauth::follow;
use tokenvisor_tests::telemetry::opentelemetry::Value;
use tokenvisor_tests::telemetry::opentelemetry::trace::{SpanKind, Status};
use tokenvisor_tests::telemetry::opentelemetry_sdk::trace::SpanData;
use tokenvisor_tests::telemetry::tokenvisor_telemetry::LogFormat;
use tokenvisor_tests::telemetry::{Capture, attribute, attribute_text, is_child_of, is_root, links_to};
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};
use tracing::Instrument;

fn only(spans: Vec<SpanData>, what: &str) -> SpanData {
    assert_eq!(spans.len(), 1, "expected one {what} span, got {spans:#?}");
    spans.into_iter().next().unwrap()
}

fn child_named(capture: &Capture, parent: &SpanData, name: &str) -> SpanData {
    let children: Vec<_> = capture
        .spans_named(name)
        .into_iter()
        .filter(|span| is_child_of(span, parent))
        .collect();
    only(children, name)
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_refresh_is_a_trace_with_the_token_endpoint_call_and_the_store_commit() {
    let (capture, _guard) = Capture::start(LogFormat::Text);
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("scheduled").await;
    // Refreshed 15 minutes (plus a little jitter) before expiry.
    sleep_secs(3000).await;
    settle().await;
    assert_eq!(harness.fake.refreshes_for("scheduled"), 1);

    let refresh = only(capture.spans_named("tokenvisor.refresh"), "refresh");
    assert!(is_root(&refresh), "a scheduled refresh starts its own trace");
    assert_eq!(attribute_text(&refresh, "tenant.id").as_deref(), Some("scheduled"));
    assert_eq!(
        attribute_text(&refresh, "connection.id"),
        Some(connection.id.to_string())
    );
    assert_eq!(attribute_text(&refresh, "integration").as_deref(), Some("fake"));
    assert_eq!(attribute_text(&refresh, "provider").as_deref(), Some("generic"));
    assert_eq!(attribute_text(&refresh, "refresh.reason").as_deref(), Some("scheduled"));
    assert_eq!(attribute(&refresh, "refresh.attempt"), Some(Value::I64(1)));
    assert_eq!(attribute_text(&refresh, "outcome").as_deref(), Some("success"));
    assert!(attribute(&refresh, "duration_ms").is_some());
    assert_eq!(attribute(&refresh, "error.code"), None);
    assert_eq!(refresh.status, Status::Ok);

    let call = child_named(&capture, &refresh, "POST");
    assert_eq!(call.span_kind, SpanKind::Client);
    assert_eq!(attribute_text(&call, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attribute_text(&call, "server.address").as_deref(), Some("127.0.0.1"));
    assert!(matches!(attribute(&call, "server.port"), Some(Value::I64(port)) if port > 0));
    let token_url = harness.fake.token_url();
    let without_scheme = token_url.trim_start_matches("http://");
    let path = &without_scheme[without_scheme.find('/').unwrap()..];
    assert_eq!(attribute_text(&call, "url.path").as_deref(), Some(path));
    assert_eq!(attribute(&call, "http.response.status_code"), Some(Value::I64(200)));
    assert!(
        call.attributes
            .iter()
            .all(|kv| !kv.key.as_str().starts_with("url.") || kv.key.as_str() == "url.path"),
        "no query string or full URL: {:?}",
        call.attributes
    );

    let commit = child_named(&capture, &refresh, "tokenvisor.store.commit");
    assert_eq!(attribute_text(&commit, "outcome").as_deref(), Some("success"));
    assert!(
        commit.start_time >= call.end_time,
        "the commit follows the provider call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_an_error_span_and_its_retry_a_new_span_that_succeeds() {
    let (capture, _guard) = Capture::start(LogFormat::Text);
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    harness.connect("flaky").await;
    harness
        .fake
        .fail_next(1, 503, serde_json::json!({"error": "temporarily_unavailable"}));
    sleep_secs(3000).await;
    settle().await;
    sleep_secs(600).await;
    settle().await;
    assert_eq!(harness.fake.refreshes_for("flaky"), 1, "the retry succeeded");

    let refreshes = capture.spans_named("tokenvisor.refresh");
    assert_eq!(refreshes.len(), 2, "{refreshes:#?}");
    let failed = &refreshes[0];
    assert_eq!(attribute_text(failed, "outcome").as_deref(), Some("transient"));
    assert_eq!(attribute(failed, "http.response.status_code"), Some(Value::I64(503)));
    let code = attribute_text(failed, "error.code").expect("error code recorded");
    assert!(!code.is_empty());
    assert_eq!(attribute(failed, "refresh.attempt"), Some(Value::I64(1)));
    assert!(matches!(failed.status, Status::Error { .. }), "{:?}", failed.status);
    let call = child_named(&capture, failed, "POST");
    assert_eq!(attribute(&call, "http.response.status_code"), Some(Value::I64(503)));
    assert!(matches!(call.status, Status::Error { .. }));
    // The failure is written to the row (degraded) in its own child span.
    child_named(&capture, failed, "tokenvisor.store.record_failure");

    let retry = &refreshes[1];
    assert_eq!(attribute_text(retry, "refresh.reason").as_deref(), Some("retry"));
    assert_eq!(attribute(retry, "refresh.attempt"), Some(Value::I64(2)));
    assert_eq!(attribute_text(retry, "outcome").as_deref(), Some("success"));
    assert_eq!(retry.status, Status::Ok);
    child_named(&capture, retry, "tokenvisor.store.commit");

    let logs = capture.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("refresh failed, retrying"))
        .expect("the failure is logged");
    assert!(
        line.contains(&format!("trace_id={}", failed.span_context.trace_id())),
        "the log line carries the trace id of the refresh: {line}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_escalation_is_a_span_linked_to_the_refresh_that_failed_for_good() {
    let (capture, _guard) = Capture::start(LogFormat::Text);
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("doomed").await;
    harness.fake.revoke_family("doomed");
    let request = tracing::info_span!("backend.request");
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .instrument(request.clone())
        .await
        .expect_err("revoked");
    drop(request);
    settle().await;
    assert_eq!(error.code(), "needs_reauth");
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);

    let backend = only(capture.spans_named("backend.request"), "backend request");
    let api = only(capture.spans_named("tokenvisor.force_refresh"), "force_refresh");
    assert!(
        is_child_of(&api, &backend),
        "the library call nests under the caller's span"
    );
    assert_eq!(attribute_text(&api, "error.code").as_deref(), Some("needs_reauth"));

    let refresh = only(capture.spans_named("tokenvisor.refresh"), "refresh");
    assert!(
        is_child_of(&refresh, &api),
        "the refresh runs inside the call that forced it"
    );
    assert_eq!(attribute_text(&refresh, "refresh.reason").as_deref(), Some("forced"));
    assert_eq!(attribute_text(&refresh, "outcome").as_deref(), Some("permanent"));
    assert_eq!(attribute_text(&refresh, "error.code").as_deref(), Some("invalid_grant"));
    assert_eq!(attribute(&refresh, "http.response.status_code"), Some(Value::I64(400)));
    assert!(matches!(refresh.status, Status::Error { .. }));

    let escalation = only(capture.spans_named("tokenvisor.escalate"), "escalation");
    assert!(is_root(&escalation), "a supervisor decision starts its own trace");
    assert!(links_to(&escalation, &refresh), "linked to the refresh that caused it");
    assert!(
        refresh
            .events
            .events
            .iter()
            .any(|event| event.name.contains("escalating")),
        "the actor's handling of the result is an event of the refresh span: {:?}",
        refresh.events.events
    );
    assert_eq!(
        attribute_text(&escalation, "decision").as_deref(),
        Some("mark_needs_reauth")
    );
    assert_eq!(attribute_text(&escalation, "tenant.id").as_deref(), Some("doomed"));
    assert_eq!(attribute_text(&escalation, "provider").as_deref(), Some("generic"));
    assert_eq!(
        attribute_text(&escalation, "error.code").as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(attribute(&escalation, "refresh_failures"), Some(Value::I64(1)));
    child_named(&capture, &escalation, "tokenvisor.store.mark_needs_reauth");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_refreshed_inside_the_callers_trace() {
    let (capture, _guard) = Capture::start(LogFormat::Json);
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("rejected").await;
    let request = tracing::info_span!("backend.request");
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .instrument(request.clone())
        .await
        .unwrap();
    let fresh = harness
        .tokenvisor
        .tokens()
        .token_rejected(connection.id, &token.secret)
        .instrument(request.clone())
        .await
        .unwrap();
    assert_ne!(fresh.secret, token.secret);
    drop(request);
    settle().await;

    let backend = only(capture.spans_named("backend.request"), "backend request");
    // A token answered from memory is not traced (the hot path stays span-free).
    assert!(capture.spans_named("tokenvisor.access_token").is_empty());
    let rejected = only(capture.spans_named("tokenvisor.token_rejected"), "token_rejected");
    assert!(is_child_of(&rejected, &backend));
    let refresh = only(capture.spans_named("tokenvisor.refresh"), "refresh");
    assert!(is_child_of(&refresh, &rejected));
    assert_eq!(attribute_text(&refresh, "refresh.reason").as_deref(), Some("rejected"));

    // JSON log lines carry the trace ids too.
    let traced: Vec<serde_json::Value> = capture
        .logs()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .filter(|line: &serde_json::Value| line["trace_id"] == backend.span_context.trace_id().to_string())
        .collect();
    assert!(
        !traced.is_empty(),
        "some log line of the request's trace: {}",
        capture.logs()
    );
}

/// Every `prefix` followed by at least 20 token characters: a whole (or nearly whole)
/// token of the fake provider (previews show at most 8 characters).
fn token_shaped(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["at_", "rt_", "code_", "tv-fake-secret-"] {
        for (start, _) in text.match_indices(prefix) {
            let rest: String = text[start + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if rest.len() >= 20 {
                found.push(format!("{prefix}{rest}"));
            }
        }
    }
    found
}

async fn full_cycle_leaks_no_secret(format: LogFormat) {
    let (capture, _guard) = Capture::start(format);
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let mut secrets: Vec<SecretString> = vec![SecretString::new(harness.fake.client_secret())];
    let keep = |secrets: &mut Vec<SecretString>, connection: &tokenvisor_core::Connection| {
        secrets.push(connection.access_token.clone());
        secrets.extend(connection.refresh_token.clone());
    };

    // Register, refresh (scheduled and forced), reject.
    let connection = harness.connect("cycle").await;
    keep(&mut secrets, &connection);
    sleep_secs(3000).await;
    settle().await;
    secrets.push(
        harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .unwrap()
            .secret,
    );
    let forced = harness.tokenvisor.tokens().force_refresh(connection.id).await.unwrap();
    secrets.push(forced.secret.clone());
    let after_reject = harness
        .tokenvisor
        .tokens()
        .token_rejected(connection.id, &forced.secret)
        .await
        .unwrap();
    secrets.push(after_reject.secret);
    keep(
        &mut secrets,
        &harness.store.get_connection(connection.id).await.unwrap().unwrap(),
    );

    // A transient failure, then escalation.
    harness
        .fake
        .fail_next(1, 503, serde_json::json!({"error": "temporarily_unavailable"}));
    let _ = harness.tokenvisor.tokens().force_refresh(connection.id).await;
    sleep_secs(600).await;
    settle().await;
    keep(
        &mut secrets,
        &harness.store.get_connection(connection.id).await.unwrap().unwrap(),
    );
    harness.fake.revoke_family("cycle");
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("revoked");
    assert_eq!(error.code(), "needs_reauth");
    settle().await;

    // Re-authorize through the authorization-code flow (PKCE), then refresh again.
    harness.fake.set_authorizing_user("cycle", "us");
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id: connection.tenant_id.clone(),
            integration_id: harness.integration.id,
            connection_id: Some(connection.id),
            connection_key: None,
            redirect_uri: None,
            return_to: None,
        })
        .await
        .unwrap();
    let callback = follow(&start.authorize_url).await;
    secrets.extend(callback.code.clone());
    let revived = harness.tokenvisor.authorizations().complete(callback).await.unwrap();
    assert_eq!(revived.status, ConnectionStatus::Active);
    keep(&mut secrets, &revived);
    secrets.push(
        harness
            .tokenvisor
            .tokens()
            .force_refresh(connection.id)
            .await
            .unwrap()
            .secret,
    );
    keep(
        &mut secrets,
        &harness.store.get_connection(connection.id).await.unwrap().unwrap(),
    );

    // Remove: the grant is revoked at the provider.
    harness.tokenvisor.connections().remove(connection.id).await.unwrap();
    settle().await;

    let everything = capture.everything();
    assert!(everything.contains("tokenvisor.refresh"), "spans were captured");
    assert!(
        everything.contains("tokenvisor.escalate"),
        "the escalation was captured"
    );
    assert!(everything.contains("invalid_grant"), "errors were captured");
    assert!(everything.contains("event refresh failed"), "span events were captured");
    assert!(secrets.len() >= 10, "the cycle handled many secrets: {}", secrets.len());
    for secret in &secrets {
        assert!(!secret.expose().is_empty());
        assert!(
            !everything.contains(secret.expose()),
            "a secret issued by the fake leaked into the logs or spans"
        );
    }
    let leaked = token_shaped(&everything);
    assert!(leaked.is_empty(), "token-shaped strings in logs or spans: {leaked:?}");
}

#[tokio::test(start_paused = true)]
async fn a_full_cycle_leaks_no_secret_into_text_logs_or_spans() {
    full_cycle_leaks_no_secret(LogFormat::Text).await;
}

#[tokio::test(start_paused = true)]
async fn a_full_cycle_leaks_no_secret_into_json_logs_or_spans() {
    full_cycle_leaks_no_secret(LogFormat::Json).await;
}

#[test]
fn the_leak_detector_finds_whole_tokens_but_not_previews() {
    assert!(token_shaped("access at_abcdefgh").is_empty());
    assert!(token_shaped("code_challenge_method=S256").is_empty());
    assert_eq!(
        token_shaped("x=at_0123456789abcdefghijABCDEFGHIJ y").len(),
        1,
        "a whole token"
    );
}

/// The real binary, configured only through the standard `OTEL_*` variables, exports
/// its refresh spans and metrics over OTLP/HTTP to a receiver started here, and flushes
/// them when it stops; the exported refresh count matches the provider's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_refresh_spans_and_metrics_over_otlp_http() {
    use tokenvisor_store::{Keyring, SqlStore};
    use tokenvisor_tests::otlp::{OtlpReceiver, attribute as otlp_attribute, metric};
    use tokenvisor_tests::process::Server;

    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tokenvisor-data");
    std::fs::create_dir_all(&data).unwrap();
    let (keyring, encoded) = Keyring::generate();
    let url = format!("sqlite://{}", data.join("tokenvisor.db").display());
    let store = Arc::new(SqlStore::connect(&url, keyring).await.unwrap());
    // Eight-second tokens: the binary refreshes each one about two seconds before expiry.
    let harness = Harness::start(store, fake(Dialect::Generic, 8).await, tokenvisor_tests::test_config()).await;
    let connection = harness.connect("exported").await;
    harness.tokenvisor.shutdown().await;

    let mut command =
        tokenvisor_tests::process::command(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor")), dir.path());
    command
        .env("TOKENVISOR_ENCRYPTION_KEY", &encoded)
        .env("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "127.0.0.1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", "tokenvisor-under-test")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0")
        .env("TOKENVISOR_ADMIN_TOKEN", "admin-token-for-the-otlp-test")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_SDK_DISABLED");
    let mut server = Server::spawn(command);
    server.wait_for("tokenvisor is supervising", std::time::Duration::from_secs(30));
    let listening = server.wait_for("admin API listening", std::time::Duration::from_secs(30));
    let admin_addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("admin address in the log")
        .to_owned();
    // A backend's request carrying its trace context.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer = reqwest::Client::new()
        .get(format!("http://{admin_addr}/v1/connections/{}/token", connection.id))
        .bearer_auth("admin-token-for-the-otlp-test")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("token request");
    assert_eq!(answer.status(), 200);
    // The same token by tenant, integration and key: the route template names none of them.
    let keyed_trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let answer = reqwest::Client::new()
        .get(format!(
            "http://{admin_addr}/v1/tenants/exported/connections/{}/default/token",
            harness.integration.id
        ))
        .bearer_auth("admin-token-for-the-otlp-test")
        .header("traceparent", format!("00-{keyed_trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("token request by key");
    assert_eq!(answer.status(), 200);
    // Stop once two refreshes are committed (their attempts recorded), not merely granted by
    // the provider: on a loaded machine a refresh the provider has granted may still be
    // persisting when the signal arrives, and its span would end after the export.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let committed = harness
            .store
            .list_attempts(connection.id, 50)
            .await
            .unwrap()
            .iter()
            .filter(|attempt| attempt.outcome == tokenvisor_core::RefreshOutcomeKind::Success)
            .count();
        if committed >= 2 || std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let refreshed = harness.fake.refreshes_for("exported");
    assert!(refreshed >= 2, "the binary refreshed on schedule ({refreshed})");

    let spans = receiver.spans();
    let server_span = spans
        .iter()
        .filter(|span| span.trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>() == trace_id)
        .find(|span| span.name.starts_with("GET "))
        .expect("the admin request's server span continues the caller's trace");
    assert_eq!(server_span.kind, 2, "a server span");
    assert_eq!(server_span.name, "GET /v1/connections/{id}/token");
    // The audit event of the token read is an event of that span (there is no OTLP logs
    // pipeline: the tracing-opentelemetry layer turns events inside a span into span events).
    let audit: Vec<_> = server_span
        .events
        .iter()
        .filter(|event| event.name == "audit")
        .collect();
    assert_eq!(
        audit.len(),
        1,
        "one audit event on the request span: {:?}",
        server_span.events
    );
    assert_eq!(
        otlp_attribute(&audit[0].attributes, "action").as_deref(),
        Some("token_read")
    );
    assert_eq!(otlp_attribute(&audit[0].attributes, "key_id").as_deref(), Some("admin"));
    assert_eq!(
        otlp_attribute(&audit[0].attributes, "connection_id"),
        Some(connection.id.to_string())
    );
    assert_eq!(otlp_attribute(&audit[0].attributes, "level").as_deref(), Some("INFO"));
    let keyed_span = spans
        .iter()
        .filter(|span| span.trace_id.iter().map(|b| format!("{b:02x}")).collect::<String>() == keyed_trace_id)
        .find(|span| span.name.starts_with("GET "))
        .expect("the request by key has its server span");
    assert_eq!(
        keyed_span.name, "GET /v1/tenants/{tenant}/connections/{integration}/{key}/token",
        "no tenant id, integration or key in the route"
    );
    // Every refresh the provider granted has its span, flushed at shutdown (on a loaded
    // machine a refresh may also fail transiently and be retried: a span of its own that
    // the provider's grant count does not include).
    let refreshes: Vec<_> = spans
        .iter()
        .filter(|span| span.name == "tokenvisor.refresh")
        .filter(|span| otlp_attribute(&span.attributes, "outcome").as_deref() == Some("success"))
        .collect();
    let outcomes: Vec<_> = spans
        .iter()
        .filter(|span| span.name == "tokenvisor.refresh")
        .map(|span| otlp_attribute(&span.attributes, "outcome"))
        .collect();
    assert_eq!(
        refreshes.len() as u64,
        refreshed,
        "every successful refresh span was flushed at shutdown: outcomes {outcomes:?}, {:?}",
        receiver.paths()
    );
    let first = refreshes[0];
    assert_eq!(
        otlp_attribute(&first.attributes, "tenant.id").as_deref(),
        Some("exported")
    );
    assert_eq!(
        otlp_attribute(&first.attributes, "connection.id"),
        Some(connection.id.to_string())
    );
    assert_eq!(
        otlp_attribute(&first.attributes, "provider").as_deref(),
        Some("generic")
    );
    assert_eq!(
        otlp_attribute(&first.attributes, "integration").as_deref(),
        Some("fake")
    );
    assert_eq!(otlp_attribute(&first.attributes, "outcome").as_deref(), Some("success"));
    assert!(otlp_attribute(&first.attributes, "refresh.reason").is_some());
    assert!(otlp_attribute(&first.attributes, "refresh.attempt").is_some());
    let call = spans
        .iter()
        .find(|span| span.name == "POST" && span.parent_span_id == first.span_id)
        .expect("the token endpoint call is a child of the refresh");
    assert_eq!(
        otlp_attribute(&call.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(
        spans.iter().all(|span| span.name != "Actor"),
        "actor lifetime spans are not exported"
    );
    assert!(
        receiver
            .trace_resources()
            .iter()
            .all(|attributes| otlp_attribute(attributes, "service.name").as_deref() == Some("tokenvisor-under-test"))
    );

    // The last metrics export (at shutdown) counts exactly the refreshes the provider saw.
    let exported_successes = receiver
        .metrics()
        .iter()
        .filter(|metric| metric.name == "tokenvisor.refreshes")
        .filter_map(|metric| match &metric.data {
            Some(metric::Data::Sum(sum)) => Some(
                sum.data_points
                    .iter()
                    .filter(|point| otlp_attribute(&point.attributes, "outcome").as_deref() == Some("success"))
                    .map(|point| match point.value {
                        Some(tokenvisor_tests::otlp::number_data_point::Value::AsInt(value)) => value as u64,
                        Some(tokenvisor_tests::otlp::number_data_point::Value::AsDouble(value)) => value as u64,
                        None => 0,
                    })
                    .sum::<u64>(),
            ),
            _ => None,
        })
        .next_back();
    assert_eq!(exported_successes, Some(refreshed));
    let names: Vec<_> = receiver.metrics().iter().map(|metric| metric.name.clone()).collect();
    for expected in [
        "tokenvisor.refresh.duration",
        "tokenvisor.connections",
        "tokenvisor.token.soonest_expiry",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} exported: {names:?}"
        );
    }
}

/// The value of the Prometheus sample `name{labels}` (labels in the exporter's order).
fn prometheus_sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// `GET /metrics` of the real binary: the refresh counter matches the refreshes the fake
/// provider counted, and the connection gauge counts the connections by status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_the_refreshes_the_provider_saw() {
    use tokenvisor_tests::service::Service;

    let fake = fake(Dialect::Generic, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor")), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    for tenant in ["metered-a", "metered-b"] {
        service.connect(&fake, "crm", tenant).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.refreshes_for("metered-a") < 2 || fake.refreshes_for("metered-b") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no scheduled refreshes");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Refreshes keep happening; the counter moves right after each commit, so poll until
    // one scrape agrees with the provider.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let last = loop {
        let before = fake.refreshes();
        let response = service
            .http
            .get(format!("{}/metrics", service.base))
            .bearer_auth(&service.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        let after = fake.refreshes();
        let counted = prometheus_sample(
            &text,
            r#"tokenvisor_refreshes_total{outcome="success",provider="generic"}"#,
        );
        if before == after && counted == Some(after as f64) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh counter never matched the provider ({after}):\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        prometheus_sample(&last, r#"tokenvisor_connections{status="active"}"#),
        Some(2.0),
        "{last}"
    );
    assert!(last.contains("tokenvisor_refresh_duration_seconds_bucket"), "{last}");
    let soonest = prometheus_sample(&last, "tokenvisor_token_soonest_expiry_seconds").expect("expiry gauge");
    assert!(soonest > 0.0 && soonest <= 4.0, "{soonest}");
    assert!(!last.contains(fake.client_secret()), "no secret in the metrics");
}
