//! Webhooks from the real binary: events arrive signed as Standard Webhooks describes,
//! and a receiver that was down for a while, across a restart of the service, gets every
//! event it missed, in order.

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::service::Service;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// What the receiver got: headers and body of each POST.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A webhook receiver on `port` (0: any); returns its port and a stopper.
async fn receiver(
    port: u16,
    received: Received,
) -> (u16, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(([127, 0, 0, 1], port).into()).unwrap();
    let listener = socket.listen(64).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (port, stop, task)
}

/// Checks the Standard Webhooks signature of one delivery and returns its JSON body.
fn verify(headers: &HeaderMap, body: &[u8]) -> serde_json::Value {
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let signature = headers["webhook-signature"].to_str().unwrap();
    let key = BASE64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert!(
        signature.split(' ').any(|s| s == expected),
        "bad signature {signature} for {id}"
    );
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "timestamp {timestamp} is not recent");
    serde_json::from_slice(body).unwrap()
}

fn types(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(headers, body)| verify(headers, body)["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_until(received: &Received, timeout: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = types(received);
        if done(&seen) {
            return seen;
        }
        assert!(tokio::time::Instant::now() < deadline, "webhooks seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_gets_signed_events_including_those_sent_while_it_was_down() {
    let fake = fake(Dialect::Generic, 3600).await;
    let received: Received = Arc::default();
    let (port, stop, task) = receiver(0, received.clone()).await;

    // Webhooks configured in the TOML file.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenvisor.toml");
    std::fs::write(
        &config,
        format!("[webhooks]\nurls = [\"http://127.0.0.1:{port}/hook\"]\nsecret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let env = [("TOKENVISOR_CONFIG", config.display().to_string())];
    let mut service = Service::start(binary(), dir.path(), &env);
    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let id = view["id"].as_str().unwrap().to_owned();

    let seen = wait_until(&received, Duration::from_secs(10), |t| t.contains(&"connected".into())).await;
    assert_eq!(seen, ["connected"]);
    {
        let deliveries = received.lock().unwrap();
        let (headers, body) = &deliveries[0];
        let payload = verify(headers, body);
        assert_eq!(payload["data"]["connection_id"], id.as_str());
        assert_eq!(payload["data"]["tenant_id"], "acme");
        assert!(headers["webhook-id"].to_str().unwrap().starts_with("msg_"));
        assert_eq!(headers["content-type"], "application/json");
    }

    // The receiver goes down; events keep happening.
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/deactivate"))
            .await
            .status,
        200
    );
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/activate"))
            .await
            .status,
        200
    );
    let refreshed = service.post_empty(&format!("/v1/connections/{id}/refresh")).await;
    assert_eq!(
        refreshed.status, 200,
        "webhook delivery never delays a refresh: {refreshed:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(types(&received), ["connected"]);

    // The service stops and starts again meanwhile: the undelivered events wait in the
    // database's outbox, not in the stopped process.
    let status = service.server.terminate();
    assert!(status.success(), "exit status {status:?}");
    service = Service::start(binary(), dir.path(), &env);
    assert_eq!(service.get("/v1/connections").await.status, 200);

    // Back up on the same port: every missed event arrives, in order.
    let (_, _stop, _task) = receiver(port, received.clone()).await;
    let seen = wait_until(&received, Duration::from_secs(15), |t| t.len() >= 4).await;
    assert_eq!(seen, ["connected", "deactivated", "activated", "refreshed"]);
    let ids: std::collections::HashSet<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "each event has its own webhook-id");

    // The restarted process delivered the three it found in the outbox, and counted them
    // (once the receiver's answer is back: the receiver records a message before it
    // answers, so the count may lag the receiver for a moment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = service
            .http
            .get(format!("{}/metrics", service.base))
            .bearer_auth(&service.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let delivered: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("tokenvisor_events_delivered_total{") && line.contains("sink=\"webhook\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(delivered <= 3.0, "{metrics}");
        if delivered == 3.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One POST a [`Hook`] answered: the event type, its `webhook-id`, the status it answered.
#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    event_type: String,
    message_id: String,
    status: u16,
}

/// A programmable webhook receiver: answers 500 to the event types in `failing` (`*`:
/// every type), 204 otherwise; keeps every attempt and every accepted delivery.
#[derive(Clone, Default)]
struct Hook {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    accepted: Received,
    failing: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    /// Serves on `127.0.0.1:0`; answers its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hook = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let hook = hook.clone();
                async move {
                    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let event_type = payload["type"].as_str().unwrap().to_owned();
                    let fail = {
                        let failing = hook.failing.lock().unwrap();
                        failing.iter().any(|t| t == "*" || *t == event_type)
                    };
                    let status = if fail {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    };
                    hook.attempts.lock().unwrap().push(Attempt {
                        event_type,
                        message_id: headers["webhook-id"].to_str().unwrap().to_owned(),
                        status: status.as_u16(),
                    });
                    if !fail {
                        hook.accepted.lock().unwrap().push((headers, body));
                    }
                    status
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://127.0.0.1:{port}/hook")
    }

    fn fail(&self, types: &[&str]) {
        *self.failing.lock().unwrap() = types.iter().map(|t| (*t).to_owned()).collect();
    }

    /// The accepted deliveries' types.
    fn accepted(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| {
                serde_json::from_slice::<serde_json::Value>(body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Checks the signature of every accepted delivery against `secret`.
    fn verify_all(&self, secret: &str) {
        for (headers, body) in self.accepted.lock().unwrap().iter() {
            verify_with(secret, headers, body);
        }
    }

    /// The last accepted delivery.
    fn last(&self) -> (HeaderMap, Bytes) {
        self.accepted.lock().unwrap().last().cloned().unwrap()
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    async fn wait_for(&self, timeout: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = self.accepted();
            if done(&seen) {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "accepted: {seen:?}, attempts: {:?}",
                self.attempts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks that one of the `webhook-signature` values is `secret`'s and returns the body.
fn verify_with(secret: &str, headers: &HeaderMap, body: &[u8]) -> serde_json::Value {
    assert!(
        signed_by(secret, headers, body),
        "no signature of this secret in {:?} for {:?}",
        headers["webhook-signature"],
        headers["webhook-id"]
    );
    serde_json::from_slice(body).unwrap()
}

/// Whether one of the message's signatures is of `secret`.
fn signed_by(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let signature = headers["webhook-signature"].to_str().unwrap();
    let key = BASE64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    signature.split(' ').any(|s| s == expected)
}

/// Refreshes `id` until the endpoint's next message is signed by `secret` (the delivery
/// task sees an endpoint's new secret within about a second, later under load), at most
/// ten times; returns that message.
async fn refresh_until_signed_by(service: &Service, hook: &Hook, id: &str, secret: &str) -> (HeaderMap, Bytes) {
    for _ in 0..10 {
        let before = hook.accepted().len();
        let refreshed = service.post_empty(&format!("/v1/connections/{id}/refresh")).await;
        assert_eq!(refreshed.status, 200, "{refreshed:?}");
        hook.wait_for(Duration::from_secs(10), |t| t.len() > before).await;
        let last = hook.last();
        if signed_by(secret, &last.0, &last.1) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no message signed by the new secret after ten refreshes");
}

/// The service with webhook delivery on (a configured endpoint that takes everything),
/// so endpoints added through the API are delivered to.
async fn service_with_webhooks(dir: &std::path::Path) -> (Service, Hook) {
    let configured = Hook::default();
    let url = configured.start().await;
    let env = [
        ("TOKENVISOR_WEBHOOK_URLS", url),
        ("TOKENVISOR_WEBHOOK_SECRET", SECRET.to_owned()),
    ];
    (Service::start(binary(), dir, &env), configured)
}

/// Adds an endpoint through the API; answers its id and secret.
async fn add_endpoint(service: &Service, body: serde_json::Value) -> (String, String) {
    let created = service.post("/v1/webhooks/endpoints", body).await;
    assert_eq!(created.status, 201, "{created:?}");
    (
        created.body["id"].as_str().unwrap().to_owned(),
        created.body["secret"].as_str().unwrap().to_owned(),
    )
}

fn dead_lettered(metrics: &str, reason: &str) -> f64 {
    tokenvisor_tests::service::prometheus_samples(metrics, "tokenvisor_webhooks_dead_lettered_total")
        .iter()
        .filter(|(labels, _)| labels.contains(&format!("reason=\"{reason}\"")))
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_one_message_still_gets_the_next_ones_and_the_failed_one_dead_letters_and_replays() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let (service, _configured) = service_with_webhooks(dir.path()).await;
    let hook = Hook::default();
    let url = hook.start().await;
    hook.fail(&["deactivated"]);
    let (endpoint, secret) = add_endpoint(&service, serde_json::json!({"url": url, "max_attempts": 3})).await;

    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let id = view["id"].as_str().unwrap().to_owned();
    for action in ["deactivate", "activate", "refresh"] {
        let answer = service.post_empty(&format!("/v1/connections/{id}/{action}")).await;
        assert_eq!(answer.status, 200, "{action}: {answer:?}");
    }

    // The endpoint refuses "deactivated" every time; the events after it still arrive,
    // in order, once it reached its 3 attempts.
    let seen = hook.wait_for(Duration::from_secs(20), |t| t.len() >= 3).await;
    assert_eq!(seen, ["connected", "activated", "refreshed"]);
    hook.verify_all(&secret);
    let failed: Vec<Attempt> = hook
        .attempts()
        .into_iter()
        .filter(|a| a.event_type == "deactivated")
        .collect();
    assert_eq!(failed.len(), 3, "three attempts, then dead letter: {failed:?}");
    assert!(
        failed
            .iter()
            .all(|a| a.status == 500 && a.message_id == failed[0].message_id)
    );

    // It is in the dead-letter list, with why.
    let letters = service
        .get(&format!("/v1/webhooks/dead-letters?endpoint={endpoint}"))
        .await;
    assert_eq!(letters.status, 200, "{letters:?}");
    let items = letters.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{letters:?}");
    let letter = &items[0];
    assert_eq!(letter["event_type"], "deactivated");
    assert_eq!(letter["message_id"], failed[0].message_id.as_str());
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["reason"], "attempts");
    assert_eq!(letter["last_error"], "http_500");
    assert_eq!(letter["payload"]["data"]["connection_id"], id.as_str());
    assert_eq!(dead_lettered(&service.metrics().await, "attempts"), 1.0);

    // The receiver is fixed; the dead letter is replayed and arrives, same webhook-id.
    hook.fail(&[]);
    let letter_id = letter["id"].as_str().unwrap();
    let replayed = service
        .post_empty(&format!("/v1/webhooks/dead-letters/{letter_id}/replay"))
        .await;
    assert_eq!(replayed.status, 202, "{replayed:?}");
    assert_eq!(replayed.body["endpoint_id"], endpoint.as_str());
    let seen = hook.wait_for(Duration::from_secs(10), |t| t.len() >= 4).await;
    assert_eq!(seen, ["connected", "activated", "refreshed", "deactivated"]);
    hook.verify_all(&secret);
    let last = hook.attempts().last().unwrap().clone();
    assert_eq!(
        (last.message_id.as_str(), last.status),
        (failed[0].message_id.as_str(), 204)
    );
    let letters = service
        .get(&format!("/v1/webhooks/dead-letters?endpoint={endpoint}"))
        .await;
    assert!(letters.body["items"].as_array().unwrap().is_empty(), "{letters:?}");
    assert_eq!(
        service
            .post_empty(&format!("/v1/webhooks/dead-letters/{letter_id}/replay"))
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_deliver_only_their_events_rotation_signs_with_the_new_secret_and_disable_stops_delivery() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let (service, configured) = service_with_webhooks(dir.path()).await;
    let hook = Hook::default();
    let url = hook.start().await;
    let (endpoint, secret) = add_endpoint(
        &service,
        serde_json::json!({"url": url, "event_types": ["refreshed", "removed"]}),
    )
    .await;
    let unknown = service
        .post(
            "/v1/webhooks/endpoints",
            serde_json::json!({"url": url, "event_types": ["no_such_event"]}),
        )
        .await;
    assert_eq!(unknown.status, 422, "{unknown:?}");

    // Listed, the configured one too, never with a secret.
    let list = service.get("/v1/webhooks/endpoints").await;
    assert_eq!(list.status, 200);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list:?}");
    assert!(!list.body.to_string().contains("whsec_"), "{list:?}");
    let configured_id = items.iter().find(|e| e["source"] == "config").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = service
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/endpoints/{configured_id}"),
            Some(serde_json::json!({"enabled": false})),
        )
        .await;
    assert_eq!((refused.status, refused.code()), (409, "configured_endpoint"));

    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let id = view["id"].as_str().unwrap().to_owned();
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/deactivate"))
            .await
            .status,
        200
    );
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/activate"))
            .await
            .status,
        200
    );
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/refresh"))
            .await
            .status,
        200
    );
    // The configured endpoint takes everything; the filtered one only "refreshed".
    configured.wait_for(Duration::from_secs(10), |t| t.len() >= 4).await;
    let seen = hook.wait_for(Duration::from_secs(10), |t| !t.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hook.accepted(), ["refreshed"], "{seen:?}");
    hook.verify_all(&secret);
    configured.verify_all(SECRET);

    // Rotation: the new secret is answered once, and signs the next messages (the old
    // one signs next to it during the grace period).
    let rotated = service
        .post_empty(&format!("/v1/webhooks/endpoints/{endpoint}/rotate-secret"))
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated.body["previous_secret_expires_at"].is_string());
    let last = refresh_until_signed_by(&service, &hook, &id, &new_secret).await;
    verify_with(&secret, &last.0, &last.1);
    // Without grace, only the newest secret signs.
    let rotated = service
        .post(
            &format!("/v1/webhooks/endpoints/{endpoint}/rotate-secret"),
            serde_json::json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let newest = rotated.body["secret"].as_str().unwrap().to_owned();
    let last = refresh_until_signed_by(&service, &hook, &id, &newest).await;
    let signatures = last.0["webhook-signature"].to_str().unwrap().to_owned();
    assert_eq!(signatures.split(' ').count(), 1, "{signatures}");

    // Disabled: nothing more arrives.
    let disabled = service
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/endpoints/{endpoint}"),
            Some(serde_json::json!({"enabled": false})),
        )
        .await;
    assert_eq!(disabled.status, 200, "{disabled:?}");
    assert_eq!(disabled.body["enabled"], false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = hook.attempts().len();
    let configured_before = configured.accepted().len();
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/refresh"))
            .await
            .status,
        200
    );
    configured
        .wait_for(Duration::from_secs(10), |t| t.len() > configured_before)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.attempts().len(), before, "a disabled endpoint gets nothing");

    // Deleted: gone from the list.
    assert_eq!(
        service
            .delete(&format!("/v1/webhooks/endpoints/{endpoint}"))
            .await
            .status,
        204
    );
    assert_eq!(
        service
            .delete(&format!("/v1/webhooks/endpoints/{endpoint}"))
            .await
            .status,
        404
    );
    let list = service.get("/v1/webhooks/endpoints").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_over_its_outbox_cap_has_its_oldest_messages_dead_lettered_and_counted() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let (service, configured) = service_with_webhooks(dir.path()).await;
    let hook = Hook::default();
    let url = hook.start().await;
    hook.fail(&["*"]);
    let (endpoint, secret) = add_endpoint(
        &service,
        serde_json::json!({"url": url, "outbox_cap": 2, "max_attempts": 1000}),
    )
    .await;

    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let id = view["id"].as_str().unwrap().to_owned();
    for action in ["deactivate", "activate", "refresh", "refresh"] {
        assert_eq!(
            service
                .post_empty(&format!("/v1/connections/{id}/{action}"))
                .await
                .status,
            200
        );
    }
    configured.wait_for(Duration::from_secs(10), |t| t.len() >= 5).await;

    // Five messages, a cap of two: the three oldest go to dead letter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let letters = service
            .get(&format!("/v1/webhooks/dead-letters?endpoint={endpoint}"))
            .await;
        if letters.body["items"].as_array().unwrap().len() >= 3 {
            break letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "{letters:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let items = letters.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{letters:?}");
    assert!(items.iter().all(|l| l["reason"] == "cap"), "{letters:?}");
    let mut types: Vec<&str> = items.iter().map(|l| l["event_type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["activated", "connected", "deactivated"]);
    assert_eq!(dead_lettered(&service.metrics().await, "cap"), 3.0);

    // The two newest are still there and arrive once the endpoint answers.
    hook.fail(&[]);
    let seen = hook.wait_for(Duration::from_secs(40), |t| t.len() >= 2).await;
    assert_eq!(seen, ["refreshed", "refreshed"]);
    hook.verify_all(&secret);

    // Replaying all three puts three in a queue capped at two: the cap holds, the
    // oldest goes back to dead letter, the two others arrive in order.
    let replayed = service
        .post_empty(&format!("/v1/webhooks/endpoints/{endpoint}/replay-dead-letters"))
        .await;
    assert_eq!((replayed.status, replayed.body["replayed"].as_u64()), (202, Some(3)));
    let seen = hook.wait_for(Duration::from_secs(10), |t| t.len() >= 4).await;
    assert_eq!(seen, ["refreshed", "refreshed", "deactivated", "activated"]);
    let letters = service
        .get(&format!("/v1/webhooks/dead-letters?endpoint={endpoint}"))
        .await;
    let items = letters.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{letters:?}");
    assert_eq!(
        (items[0]["event_type"].as_str(), items[0]["reason"].as_str()),
        (Some("connected"), Some("cap"))
    );
    assert_eq!(dead_lettered(&service.metrics().await, "cap"), 4.0);

    // Replayed alone, it arrives.
    let letter_id = items[0]["id"].as_str().unwrap();
    let replayed = service
        .post_empty(&format!("/v1/webhooks/dead-letters/{letter_id}/replay"))
        .await;
    assert_eq!(replayed.status, 202, "{replayed:?}");
    let seen = hook.wait_for(Duration::from_secs(10), |t| t.len() >= 5).await;
    assert_eq!(
        seen,
        ["refreshed", "refreshed", "deactivated", "activated", "connected"]
    );
    hook.verify_all(&secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_still_failing_past_its_age_limit_goes_to_dead_letter() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let (service, _configured) = service_with_webhooks(dir.path()).await;
    let hook = Hook::default();
    let url = hook.start().await;
    hook.fail(&["connected"]);
    let (endpoint, _secret) = add_endpoint(
        &service,
        serde_json::json!({"url": url, "max_attempts": 1000, "max_age_seconds": 2}),
    )
    .await;
    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let id = view["id"].as_str().unwrap().to_owned();
    assert_eq!(
        service
            .post_empty(&format!("/v1/connections/{id}/refresh"))
            .await
            .status,
        200
    );

    // Retried (0.5 s, 1 s, 2 s...) until it is older than 2 s, then given up on.
    let seen = hook.wait_for(Duration::from_secs(15), |t| !t.is_empty()).await;
    assert_eq!(seen, ["refreshed"]);
    let letters = service
        .get(&format!("/v1/webhooks/dead-letters?endpoint={endpoint}"))
        .await;
    let items = letters.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{letters:?}");
    assert_eq!(items[0]["event_type"], "connected");
    assert_eq!(items[0]["reason"], "age");
    assert!(items[0]["attempts"].as_u64().unwrap() >= 2, "{letters:?}");
    assert_eq!(dead_lettered(&service.metrics().await, "age"), 1.0);
}

/// A service with no webhook URL configured still delivers: endpoints added with the CLI
/// (`tokenvisor webhooks add`) get their events, signed with the secret printed once; the
/// CLI lists, disables and shows dead letters.
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_added_with_the_cli_on_a_service_without_configured_urls_get_their_events() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    let hook = Hook::default();
    let url = hook.start().await;
    let cli = |args: &[&str]| {
        let output = tokenvisor_tests::process::command(binary(), &service.dir)
            .env("TOKENVISOR_ADMIN_URL", &service.base)
            .env("TOKENVISOR_ADMIN_TOKEN", tokenvisor_tests::service::ADMIN_TOKEN)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let added: serde_json::Value =
        serde_json::from_str(&cli(&["webhooks", "add", &url, "--events", "refreshed"])).unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    let secret = added["secret"].as_str().unwrap().to_owned();
    let listed = cli(&["webhooks", "list"]);
    assert!(listed.contains(&url) && listed.contains("refreshed"), "{listed}");
    assert!(!listed.contains("whsec_"), "{listed}");

    service.add_integration(&fake, "crm").await;
    let view = service.connect(&fake, "crm", "acme").await;
    let connection = view["id"].as_str().unwrap().to_owned();
    let refreshed = service
        .post_empty(&format!("/v1/connections/{connection}/refresh"))
        .await;
    assert_eq!(refreshed.status, 200);
    let seen = hook
        .wait_for(Duration::from_secs(15), |types| types.iter().any(|t| t == "refreshed"))
        .await;
    assert!(
        seen.iter().all(|t| t == "refreshed"),
        "only the filtered type: {seen:?}"
    );
    hook.verify_all(&secret);

    cli(&["webhooks", "disable", &id]);
    let listed = cli(&["webhooks", "list"]);
    assert!(listed.contains("false"), "{listed}");
    let letters = cli(&["webhooks", "dead-letters", "--endpoint", &id]);
    assert!(letters.contains("ATTEMPTS"), "{letters}");
}
