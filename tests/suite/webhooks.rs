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

    // The restarted process delivered the three it found in the outbox, and counted them.
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
    assert_eq!(delivered, 3.0, "{metrics}");
}
