//! Webhook delivery of the event stream, signed as the Standard Webhooks specification
//! describes: headers `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
//!
//! A forwarder task writes every event into the database's webhook outbox, one row per
//! endpoint; one delivery task per endpoint sends the oldest row until the endpoint
//! answers 2xx, retrying with capped exponential backoff (the `webhook-id` stays the
//! same, so receivers can deduplicate), and deletes it once delivered. Refreshes never
//! wait for any of this: events are published on a broadcast channel. A dead endpoint
//! loses nothing: its messages wait in the outbox, across restarts, until it answers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokenvisor_core::Event;
use tokenvisor_store::sql::{OutboxMessage, WebhookOutbox};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A webhook signing secret: `whsec_` followed by base64 of the key bytes.
#[derive(Clone)]
pub struct WebhookSecret(Arc<[u8]>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// Why a webhook secret or configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The secret is not `whsec_<base64>` of at least 16 bytes.
    #[error("the webhook secret must be whsec_ followed by base64 of 16 to 64 bytes")]
    InvalidSecret,
    /// A URL is not an absolute http(s) URL.
    #[error("invalid webhook URL {0:?}: must be an absolute http(s) URL")]
    InvalidUrl(String),
    /// The HTTP client could not be built.
    #[error("failed to build the webhook HTTP client: {0}")]
    Client(String),
    /// The outbox could not be read at start.
    #[error("failed to read the webhook outbox: {0}")]
    Outbox(String),
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let encoded = text.trim().strip_prefix("whsec_").ok_or(WebhookError::InvalidSecret)?;
        let bytes = BASE64.decode(encoded).map_err(|_| WebhookError::InvalidSecret)?;
        if !(16..=64).contains(&bytes.len()) {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Self(bytes.into()))
    }

    /// A new random secret, as `whsec_<base64>` text.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("whsec_{}", BASE64.encode(bytes))
    }

    /// The `webhook-signature` value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Endpoints; each receives every event.
    pub urls: Vec<url::Url>,
    /// Signing secret.
    pub secret: WebhookSecret,
    /// Timeout of one delivery attempt.
    pub request_timeout: Duration,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
}

impl WebhookConfig {
    /// Defaults: 10 s per attempt, retries from 500 ms doubling up to 30 s.
    pub fn new(urls: Vec<url::Url>, secret: WebhookSecret) -> Self {
        Self {
            urls,
            secret,
            request_timeout: Duration::from_secs(10),
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(30),
        }
    }

    /// Validates an endpoint URL.
    pub fn parse_url(raw: &str) -> Result<url::Url, WebhookError> {
        let url = url::Url::parse(raw.trim()).map_err(|_| WebhookError::InvalidUrl(raw.to_owned()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(WebhookError::InvalidUrl(raw.to_owned()));
        }
        Ok(url)
    }
}

/// One endpoint's delivery state; its messages live in the outbox.
struct Endpoint {
    /// The endpoint's URL: its key in the outbox.
    key: String,
    /// Its host, for logs.
    host: String,
    notify: Notify,
    pending: AtomicU64,
    delivered: AtomicU64,
}

/// Delivers events to webhook endpoints in the background.
pub struct WebhookDispatcher {
    endpoints: Vec<Arc<Endpoint>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WebhookDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDispatcher")
            .field("endpoints", &self.endpoints.len())
            .field("pending", &self.pending())
            .finish()
    }
}

impl WebhookDispatcher {
    /// Starts delivering what `outbox` holds from earlier runs, then the events `events`
    /// receives (subscribe before anything publishes, so nothing is missed). Runs on the
    /// caller's tokio runtime.
    pub async fn start(
        events: broadcast::Receiver<Event>,
        config: WebhookConfig,
        outbox: WebhookOutbox,
    ) -> Result<Self, WebhookError> {
        // An explicit TLS provider: library code installs nothing process-wide.
        let client = tokenvisor_provider::tls::http_client_builder()
            .map_err(|e| WebhookError::Client(e.to_string()))?
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let cancel = CancellationToken::new();
        let mut endpoints = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            let key = url.to_string();
            let waiting = outbox
                .count(&key)
                .await
                .map_err(|e| WebhookError::Outbox(e.to_string()))?;
            if waiting > 0 {
                tracing::info!(
                    endpoint = url.host_str().unwrap_or_default(),
                    waiting,
                    "webhook messages from an earlier run wait for delivery"
                );
            }
            endpoints.push(Arc::new(Endpoint {
                key,
                host: url.host_str().map(str::to_owned).unwrap_or_default(),
                notify: Notify::new(),
                pending: AtomicU64::new(waiting),
                delivered: AtomicU64::new(0),
            }));
        }
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(forward(
            events,
            endpoints.clone(),
            outbox.clone(),
            cancel.clone(),
        )));
        for (url, endpoint) in config.urls.iter().zip(&endpoints) {
            tasks.push(tokio::spawn(deliver(
                client.clone(),
                url.clone(),
                endpoint.clone(),
                outbox.clone(),
                config.clone(),
                cancel.clone(),
            )));
        }
        tracing::info!(endpoints = endpoints.len(), "webhook delivery started");
        Ok(Self {
            endpoints,
            cancel,
            tasks,
        })
    }

    /// Messages waiting for delivery, over all endpoints.
    pub fn pending(&self) -> u64 {
        self.endpoints.iter().map(|e| e.pending.load(Ordering::Relaxed)).sum()
    }

    /// Messages delivered so far by this process, over all endpoints.
    pub fn delivered(&self) -> u64 {
        self.endpoints.iter().map(|e| e.delivered.load(Ordering::Relaxed)).sum()
    }

    /// Keeps delivering for at most `grace`, then stops. Returns how many messages are
    /// left in the outbox (delivered after the next start).
    pub async fn shutdown(self, grace: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + grace;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cancel.cancel();
        let left = self.pending();
        for task in self.tasks {
            let _ = task.await;
        }
        if left > 0 {
            tracing::info!(
                undelivered = left,
                "webhook messages stay in the outbox for the next start"
            );
        }
        left
    }
}

async fn forward(
    mut events: broadcast::Receiver<Event>,
    endpoints: Vec<Arc<Endpoint>>,
    outbox: WebhookOutbox,
    cancel: CancellationToken,
) {
    let keys: Vec<String> = endpoints.iter().map(|e| e.key.clone()).collect();
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            received = events.recv() => received,
        };
        match received {
            Ok(event) => {
                let message_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
                let body = payload(&event);
                // The database may be down for a moment: keep trying, the event is not
                // dropped (the broadcast channel buffers what arrives meanwhile).
                let mut attempt: u32 = 0;
                while let Err(error) = outbox.push(&keys, &message_id, &body).await {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(webhook.id = %message_id, attempt, error = %error, "failed to queue a webhook message");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff(attempt, Duration::from_millis(100), Duration::from_secs(5))) => {}
                    }
                }
                for endpoint in &endpoints {
                    endpoint.pending.fetch_add(1, Ordering::Relaxed);
                    endpoint.notify.notify_one();
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "webhook forwarder fell behind the event stream; events were not queued"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The body: `{"type": "<event type>", "timestamp": "<event time>", "data": <event>}`.
fn payload(event: &Event) -> String {
    serde_json::json!({
        "type": event.kind.name(),
        "timestamp": event.at,
        "data": event,
    })
    .to_string()
}

async fn deliver(
    client: reqwest::Client,
    url: url::Url,
    endpoint: Arc<Endpoint>,
    outbox: WebhookOutbox,
    config: WebhookConfig,
    cancel: CancellationToken,
) {
    let mut attempt: u32 = 0;
    loop {
        let message = match outbox.front(&endpoint.key).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                endpoint.pending.store(0, Ordering::Relaxed);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = endpoint.notify.notified() => continue,
                    // Also look again now and then (rows written before this task ran).
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
            Err(error) => {
                attempt = attempt.saturating_add(1);
                tracing::warn!(endpoint = %endpoint.host, error = %error, "failed to read the webhook outbox");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt, config.retry_base, config.retry_cap)) => continue,
                }
            }
        };
        let kind = event_type(&message.body);
        match send(&client, &url, &config.secret, &message).await {
            Ok(()) => {
                tokenvisor_supervisor::metrics::record_event_delivery("webhook", &kind, true);
                if attempt > 0 {
                    tracing::info!(endpoint = %endpoint.host, webhook.id = %message.message_id, attempts = attempt + 1, "webhook delivered after retries");
                }
                attempt = 0;
                // Until the row is gone the message would be sent again (same webhook-id).
                let mut tries: u32 = 0;
                while let Err(error) = outbox.remove(message.seq).await {
                    tries = tries.saturating_add(1);
                    tracing::warn!(endpoint = %endpoint.host, webhook.id = %message.message_id, error = %error, "failed to remove a delivered webhook message");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff(tries, config.retry_base, config.retry_cap)) => {}
                    }
                }
                endpoint.delivered.fetch_add(1, Ordering::Relaxed);
                let _ = endpoint
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
            }
            Err(reason) => {
                tokenvisor_supervisor::metrics::record_event_delivery("webhook", &kind, false);
                attempt = attempt.saturating_add(1);
                let delay = backoff(attempt, config.retry_base, config.retry_cap);
                tracing::warn!(endpoint = %endpoint.host, webhook.id = %message.message_id, attempt, error = %reason, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The `type` of a queued body (`unknown` if it has none).
fn event_type(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn send(
    client: &reqwest::Client,
    url: &url::Url,
    secret: &WebhookSecret,
    message: &OutboxMessage,
) -> Result<(), String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = secret.sign(&message.message_id, timestamp, message.body.as_bytes());
    let response = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &message.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(message.body.clone())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else if e.is_connect() {
                "connection failed".to_owned()
            } else {
                "request failed".to_owned()
            }
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("http_{}", response.status().as_u16()))
    }
}

/// Capped exponential backoff with up to 25 % jitter.
fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1u32 << exponent).min(cap);
    let jitter = delay.mul_f64(rand::random::<f64>() * 0.25);
    (delay + jitter).min(cap + cap / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid secret");
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_must_be_prefixed_base64() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
        assert!(WebhookSecret::parse("whsec_AAAA").is_err());
        assert!(WebhookSecret::parse(&WebhookSecret::generate()).is_ok());
        assert_eq!(
            format!("{:?}", WebhookSecret::parse(&WebhookSecret::generate()).ok()),
            "Some(WebhookSecret([redacted]))"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        assert!(backoff(1, base, cap) >= base && backoff(1, base, cap) <= base + base / 4);
        assert!(backoff(3, base, cap) >= Duration::from_secs(2));
        assert!(backoff(40, base, cap) <= cap + cap / 4);
    }
}
