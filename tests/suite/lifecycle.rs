//! Lifecycle operations through the real binary and its admin API: deactivate, activate
//! and delete stop the connection's actor, whatever it is doing (docs/DESIGN.md,
//! "Phases of an owner": a connection has exactly one writer, lifecycle operations are
//! applied after an in-flight refresh commits); and token reads stay bounded while the provider is slow or down
//! (invariants 4 and 6).
//!
//! The fake provider counts every token request when it arrives (before its latency), so
//! `token_requests()` of a fake serving one connection counts that connection's refresh
//! attempts, failed ones included.

use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{Answer, Service, answer, prometheus_samples};
use tokio::time::Instant;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// Waits until `condition` holds, checking every 20 ms; panics with `what` after `timeout`.
async fn wait_until(timeout: Duration, what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/connections/{id}/token` must be refused as `disabled`.
fn assert_disabled(token: &Answer, when: &str) {
    assert_eq!(
        (token.status, token.code()),
        (409, "disabled"),
        "{when}: a deactivated connection handed out a token or answered otherwise: {} {}",
        token.status,
        if token.status == 200 {
            "(access token withheld from this message)".to_owned()
        } else {
            token.body.to_string()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_a_connection_during_an_in_flight_refresh_stops_its_tokens_and_its_refreshes() {
    // 6-second tokens: refreshed about every 4.5 s.
    let lifetime = Duration::from_secs(6);
    let fake = fake(Dialect::Generic, lifetime.as_secs()).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "slow-tenant").await;
    let id = view["id"].as_str().unwrap().to_owned();

    // A forced refresh that the provider takes 3 s to answer.
    fake.set_family_latency("slow-tenant", Duration::from_secs(3));
    let before = fake.token_requests();
    let forced = service.post_in_background(&format!("/v1/connections/{id}/refresh"));
    wait_until(
        Duration::from_secs(10),
        "the forced refresh to reach the provider",
        || fake.token_requests() > before,
    )
    .await;

    // Deactivate while it is in flight.
    let deactivated = service.post_empty(&format!("/v1/connections/{id}/deactivate")).await;
    assert_eq!(deactivated.status, 200, "{deactivated:?}");
    assert_eq!(deactivated.body["status"], "disabled", "{deactivated:?}");
    assert_eq!(deactivated.body["is_active"], false, "{deactivated:?}");
    let requests_at_deactivation = fake.token_requests();

    // From now on: no token, and no refresh at the provider, for several lifetimes.
    let first = service.get(&format!("/v1/connections/{id}/token")).await;
    let mut reads = vec![first.status];
    let watch_until = Instant::now() + lifetime * 3;
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        reads.push(service.get(&format!("/v1/connections/{id}/token")).await.status);
    }
    let handed_out = reads.iter().filter(|status| **status == 200).count();
    let refreshes_after = fake.token_requests() - requests_at_deactivation;
    println!(
        "after deactivate: first read {} {}, {handed_out} of {} reads handed out a token, \
         {refreshes_after} refresh requests at the provider",
        first.status,
        first.code(),
        reads.len()
    );
    assert_disabled(&first, "right after deactivate returned");
    assert_eq!(
        handed_out, 0,
        "token reads after deactivate that handed out a token (statuses {reads:?})"
    );
    assert!(reads.iter().all(|status| *status == 409), "statuses {reads:?}");
    assert_eq!(
        refreshes_after, 0,
        "the provider received {refreshes_after} refresh request(s) for the connection after it was deactivated"
    );
    let view = service.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(view.body["status"], "disabled", "{view:?}");
    let forced = tokio::time::timeout(Duration::from_secs(10), forced)
        .await
        .expect("the forced refresh answered")
        .unwrap();
    println!("the forced refresh answered {} {}", forced.status, forced.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_connection_is_never_refreshed_again() {
    // Two connections on two fakes (so that each fake's request counter is one
    // connection's): one deleted while a refresh is in flight, one deleted while idle.
    // 4-second tokens: refreshed about every 3 s.
    let lifetime = Duration::from_secs(4);
    let busy_fake = fake(Dialect::Generic, lifetime.as_secs()).await;
    let idle_fake = fake(Dialect::Generic, lifetime.as_secs()).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&busy_fake, "busy").await;
    service.add_integration(&idle_fake, "idle").await;
    let busy = service.connect(&busy_fake, "busy", "busy-tenant").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let idle = service.connect(&idle_fake, "idle", "idle-tenant").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both live their ordinary life first: one scheduled refresh each.
    wait_until(
        Duration::from_secs(15),
        "a scheduled refresh of each connection",
        || busy_fake.refreshes_for("busy-tenant") >= 1 && idle_fake.refreshes_for("idle-tenant") >= 1,
    )
    .await;

    // Delete the busy one while the provider takes 2 s to answer its forced refresh.
    busy_fake.set_family_latency("busy-tenant", Duration::from_secs(2));
    let before = busy_fake.token_requests();
    let forced = service.post_in_background(&format!("/v1/connections/{busy}/refresh"));
    wait_until(
        Duration::from_secs(10),
        "the forced refresh to reach the provider",
        || busy_fake.token_requests() > before,
    )
    .await;
    let deleted = service.delete(&format!("/v1/connections/{busy}")).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let busy_requests = busy_fake.token_requests();

    // Delete the idle one (no refresh in flight).
    let deleted = service.delete(&format!("/v1/connections/{idle}")).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let idle_requests = idle_fake.token_requests();

    // Several would-be refresh times later, neither was refreshed again.
    tokio::time::sleep(lifetime * 4).await;
    for id in [&busy, &idle] {
        let view = service.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(view.status, 404, "{view:?}");
    }
    let after_busy = busy_fake.token_requests() - busy_requests;
    let after_idle = idle_fake.token_requests() - idle_requests;
    assert_eq!(
        (after_busy, after_idle),
        (0, 0),
        "refresh requests the provider received after DELETE: {after_busy} for the connection deleted during a refresh, \
         {after_idle} for the one deleted while idle"
    );
    let forced = tokio::time::timeout(Duration::from_secs(10), forced)
        .await
        .expect("the forced refresh answered")
        .unwrap();
    println!("the forced refresh answered {} {}", forced.status, forced.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deactivate_activate_cycles_leave_exactly_one_actor_supervising_the_connection() {
    // 6-second tokens: refreshed about every 4.5 s.
    let fake = fake(Dialect::Generic, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let id = service.connect(&fake, "crm", "cycled").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for cycle in 0..20 {
        let off = service.post_empty(&format!("/v1/connections/{id}/deactivate")).await;
        assert!(
            off.status == 200 && off.body["status"] == "disabled",
            "cycle {cycle}: {off:?}"
        );
        let on = service.post_empty(&format!("/v1/connections/{id}/activate")).await;
        assert!(
            on.status == 200 && on.body["status"] == "active",
            "cycle {cycle}: {on:?}"
        );
    }

    // Two refresh rounds after the cycles.
    let refreshed = fake.refreshes_for("cycled");
    wait_until(
        Duration::from_secs(20),
        "two scheduled refreshes after the cycles",
        || fake.refreshes_for("cycled") >= refreshed + 2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let token = service.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(token.status, 200, "{token:?}");

    // Every refresh attempt this process makes should be one the provider sees: a second
    // actor of the connection shows up as attempts that adopt what the first committed.
    // (Scraped when no refresh is between the provider's answer and its count.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let before = fake.refreshes();
        let metrics = service.metrics().await;
        let succeeded: f64 = prometheus_samples(&metrics, "tokenvisor_refreshes_total")
            .iter()
            .filter(|(labels, _)| labels.contains(r#"outcome="success""#))
            .map(|(_, value)| value)
            .sum();
        if before == fake.refreshes() && succeeded == before as f64 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the success counter never matched the provider:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attempts = prometheus_samples(&metrics, "tokenvisor_refreshes_total");
    let attempted: f64 = attempts.iter().map(|(_, value)| value).sum();
    let adopted: f64 = attempts
        .iter()
        .filter(|(labels, _)| labels.contains(r#"outcome="adopted""#))
        .map(|(_, value)| value)
        .sum();
    let supervised = prometheus_samples(&metrics, "tokenvisor_supervised_connections");
    let provider_refreshes = fake.refreshes();
    println!(
        "after 20 cycles: refresh attempts by outcome {attempts:?}, provider refreshes {provider_refreshes}, \
         tokenvisor_supervised_connections {supervised:?}"
    );
    assert_eq!(
        (attempted, adopted),
        (provider_refreshes as f64, 0.0),
        "refresh attempts counted by the process ({attempted}, {adopted} of them adopting another actor's commit) \
         differ from the refreshes the provider saw ({provider_refreshes}): more than one actor supervises the connection"
    );
    assert_eq!(
        supervised.iter().map(|(_, value)| value).sum::<f64>(),
        1.0,
        "tokenvisor_supervised_connections should be 1, samples: {supervised:?}"
    );
    assert_eq!(supervised.len(), 1, "one gauge sample: {supervised:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_during_a_provider_timeout_answers_within_the_configured_wait() {
    // 4-second tokens: the scheduled refresh starts about 3 s after the grant.
    let fake = fake(Dialect::Generic, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "hung").await;
    let id = view["id"].as_str().unwrap().to_owned();
    let expires_at = chrono::DateTime::parse_from_rfc3339(view["expires_at"].as_str().unwrap()).unwrap();
    // The provider hangs far longer than the token client's default request timeout (20 s).
    fake.set_latency(Duration::from_secs(90));
    let before = fake.token_requests();
    wait_until(
        Duration::from_secs(10),
        "the scheduled refresh to reach the provider",
        || fake.token_requests() > before,
    )
    .await;
    // Read as soon as the token has expired.
    let left = (expires_at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(500)).await;

    let started = Instant::now();
    let response = service
        .http
        .get(format!("{}/v1/connections/{id}/token", service.base))
        .bearer_auth(&service.token)
        .timeout(Duration::from_secs(90))
        .send()
        .await;
    let elapsed = started.elapsed();
    let token = match response {
        Ok(response) => answer(response).await,
        Err(error) => panic!("the token read got no answer after {elapsed:?}: {error}"),
    };
    println!(
        "token read during a provider timeout: {} {} after {:.1} s",
        token.status,
        token.code(),
        elapsed.as_secs_f64()
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "the token read took {elapsed:?} (answered {} {:?})",
        token.status,
        token.code()
    );
    assert!(
        matches!(token.status, 503 | 504) && !token.code().is_empty(),
        "expected a retryable 503/504 with an error code, got {} {}",
        token.status,
        token.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_provider_outage_a_reading_client_recovers_within_five_seconds() {
    // 4-second tokens, retries backing off up to a minute.
    let fake = fake(Dialect::Generic, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[("TOKENVISOR_RETRY_CAP", "60s".to_owned())]);
    service.add_integration(&fake, "crm").await;
    let id = service.connect(&fake, "crm", "outage").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/connections/{id}/token");

    // The provider is down (503) until the connection has failed 8 refreshes in a row: by
    // then its backoff has grown past ten seconds, and its token has long expired. A client
    // reads the token every second throughout.
    fake.fail_next(1_000_000, 503, serde_json::json!({"error": "temporarily_unavailable"}));
    let failures_before_healing = 8;
    let outage_started = Instant::now();
    let mut next_read = Instant::now();
    let mut refused_reads = 0;
    while fake.token_requests() < failures_before_healing {
        assert!(
            outage_started.elapsed() < Duration::from_secs(90),
            "only {} refresh attempts in 90 s of outage",
            fake.token_requests()
        );
        if Instant::now() >= next_read {
            next_read += Duration::from_secs(1);
            if service.get(&path).await.status != 200 {
                refused_reads += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.fail_next(0, 503, serde_json::Value::Null);
    let healed = Instant::now();
    let token_expired = outage_started.elapsed() > Duration::from_secs(5);
    println!(
        "outage: {:.1} s, {} failed refresh attempts, {refused_reads} reads refused",
        outage_started.elapsed().as_secs_f64(),
        fake.token_requests()
    );
    assert!(
        token_expired && refused_reads > 0,
        "the token did not expire during the outage"
    );

    // The client keeps reading every second until it gets a token.
    let mut reads = Vec::new();
    let recovery = loop {
        let token = service.get(&path).await;
        if token.status == 200 {
            break healed.elapsed();
        }
        reads.push((token.status, token.code().to_owned()));
        assert!(
            healed.elapsed() < Duration::from_secs(120),
            "no successful read 120 s after the provider recovered; reads: {reads:?}"
        );
        tokio::time::sleep_until(healed + Duration::from_secs(reads.len() as u64)).await;
    };
    println!(
        "first successful token read {:.1} s after the provider recovered ({} refused reads before it: {:?})",
        recovery.as_secs_f64(),
        reads.len(),
        reads.first()
    );
    assert!(
        recovery < Duration::from_secs(5),
        "the reading client recovered {:.1} s after the provider did",
        recovery.as_secs_f64()
    );
}

/// Finding 12: an access token with CR LF (a header injection waiting to happen) is
/// refused when a connection is registered, and nothing is stored or handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_with_cr_lf_is_refused_at_registration_and_never_handed_out() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let issued = fake.issue_grant("injected");
    let refused = service
        .post(
            "/v1/connections",
            serde_json::json!({
                "tenant_id": "injected",
                "integration": "crm",
                "access_token": format!("{}\r\nX-Injected: 1", issued.access_token),
                "refresh_token": issued.refresh_token,
                "expires_in": 3600,
            }),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "invalid_input"),
        "registration answered {}",
        refused.status
    );
    let listed = service.get("/v1/connections?tenant_id=injected").await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(0),
        "a connection was stored"
    );
}
