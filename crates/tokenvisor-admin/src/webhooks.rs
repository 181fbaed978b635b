//! Webhook delivery of the event stream, signed as the Standard Webhooks specification
//! describes: headers `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
//!
//! A forwarder task copies every event into one bounded, ordered queue per endpoint; one
//! delivery task per endpoint sends the oldest message until the endpoint answers 2xx,
//! retrying with capped exponential backoff (the `webhook-id` stays the same, so
//! receivers can deduplicate). Refreshes never wait for any of this: events are published
//! on a broadcast channel and the forwarder only moves them in memory. A dead endpoint
//! keeps its messages until it answers again; only when its queue is full is the oldest
//! message dropped (logged and counted), and messages still queued when the process
//! stops are lost (logged).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenvisor_core::Event;
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
    /// Messages kept per endpoint while it is down; beyond that the oldest is dropped.
    pub queue_capacity: usize,
    /// Timeout of one delivery attempt.
    pub request_timeout: Duration,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
}

impl WebhookConfig {
    /// Defaults: 10 000 queued messages per endpoint, 10 s per attempt, retries from
    /// 500 ms doubling up to 30 s.
    pub fn new(urls: Vec<url::Url>, secret: WebhookSecret) -> Self {
        Self {
            urls,
            secret,
            queue_capacity: 10_000,
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

#[derive(Clone)]
struct Message {
    id: String,
    body: Arc<[u8]>,
}

struct Queue {
    endpoint: String,
    items: Mutex<VecDeque<Message>>,
    notify: Notify,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

impl Queue {
    fn len(&self) -> usize {
        self.items.lock().map(|items| items.len()).unwrap_or(0)
    }

    fn front(&self) -> Option<Message> {
        self.items.lock().ok().and_then(|items| items.front().cloned())
    }

    fn pop_if(&self, id: &str) {
        if let Ok(mut items) = self.items.lock()
            && items.front().is_some_and(|m| m.id == id)
        {
            items.pop_front();
        }
    }

    fn push(&self, message: Message, capacity: usize) {
        let dropped = match self.items.lock() {
            Ok(mut items) => {
                let dropped = if items.len() >= capacity.max(1) {
                    items.pop_front()
                } else {
                    None
                };
                items.push_back(message);
                dropped
            }
            Err(_) => None,
        };
        if let Some(dropped) = dropped {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(endpoint = %self.endpoint, webhook.id = %dropped.id, dropped_total = total, "webhook queue full; dropped the oldest message");
        }
        self.notify.notify_one();
    }
}

/// Delivers events to webhook endpoints in the background.
pub struct WebhookDispatcher {
    queues: Vec<Arc<Queue>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WebhookDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDispatcher")
            .field("endpoints", &self.queues.len())
            .field("pending", &self.pending())
            .finish()
    }
}

impl WebhookDispatcher {
    /// Starts delivering the events `events` receives (subscribe before anything
    /// publishes, so nothing is missed). Runs on the caller's tokio runtime.
    pub fn start(events: broadcast::Receiver<Event>, config: WebhookConfig) -> Result<Self, WebhookError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let cancel = CancellationToken::new();
        let queues: Vec<Arc<Queue>> = config
            .urls
            .iter()
            .map(|url| {
                Arc::new(Queue {
                    endpoint: url.host_str().map(str::to_owned).unwrap_or_default(),
                    items: Mutex::new(VecDeque::new()),
                    notify: Notify::new(),
                    dropped: AtomicU64::new(0),
                    delivered: AtomicU64::new(0),
                })
            })
            .collect();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(forward(
            events,
            queues.clone(),
            config.queue_capacity,
            cancel.clone(),
        )));
        for (url, queue) in config.urls.iter().zip(&queues) {
            tasks.push(tokio::spawn(deliver(
                client.clone(),
                url.clone(),
                queue.clone(),
                config.clone(),
                cancel.clone(),
            )));
        }
        tracing::info!(endpoints = queues.len(), "webhook delivery started");
        Ok(Self { queues, cancel, tasks })
    }

    /// Messages waiting for delivery, over all endpoints.
    pub fn pending(&self) -> usize {
        self.queues.iter().map(|q| q.len()).sum()
    }

    /// Messages delivered so far, over all endpoints.
    pub fn delivered(&self) -> u64 {
        self.queues.iter().map(|q| q.delivered.load(Ordering::Relaxed)).sum()
    }

    /// Messages dropped because a queue was full, over all endpoints.
    pub fn dropped(&self) -> u64 {
        self.queues.iter().map(|q| q.dropped.load(Ordering::Relaxed)).sum()
    }

    /// Keeps delivering for at most `grace`, then stops. Returns how many messages were
    /// left undelivered (they are logged and lost).
    pub async fn shutdown(self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let left = self.queues.iter().map(|q| q.len()).sum();
        if left > 0 {
            tracing::warn!(undelivered = left, "stopping with undelivered webhook messages");
        }
        left
    }
}

async fn forward(
    mut events: broadcast::Receiver<Event>,
    queues: Vec<Arc<Queue>>,
    capacity: usize,
    cancel: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            received = events.recv() => received,
        };
        match received {
            Ok(event) => {
                let message = Message {
                    id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
                    body: payload(&event).into(),
                };
                for queue in &queues {
                    queue.push(message.clone(), capacity);
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
fn payload(event: &Event) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event.kind.name(),
        "timestamp": event.at,
        "data": event,
    }))
    .unwrap_or_default()
}

async fn deliver(
    client: reqwest::Client,
    url: url::Url,
    queue: Arc<Queue>,
    config: WebhookConfig,
    cancel: CancellationToken,
) {
    loop {
        let Some(message) = queue.front() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = queue.notify.notified() => continue,
            }
        };
        let mut attempt: u32 = 0;
        loop {
            match send(&client, &url, &config.secret, &message).await {
                Ok(()) => {
                    queue.pop_if(&message.id);
                    queue.delivered.fetch_add(1, Ordering::Relaxed);
                    if attempt > 0 {
                        tracing::info!(endpoint = %queue.endpoint, webhook.id = %message.id, attempts = attempt + 1, "webhook delivered after retries");
                    }
                    break;
                }
                Err(reason) => {
                    attempt = attempt.saturating_add(1);
                    let delay = backoff(attempt, config.retry_base, config.retry_cap);
                    tracing::warn!(endpoint = %queue.endpoint, webhook.id = %message.id, attempt, error = %reason, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    // Dropped meanwhile (queue overflow): go on with the new oldest message.
                    if queue.front().is_none_or(|front| front.id != message.id) {
                        break;
                    }
                }
            }
        }
    }
}

async fn send(
    client: &reqwest::Client,
    url: &url::Url,
    secret: &WebhookSecret,
    message: &Message,
) -> Result<(), String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = secret.sign(&message.id, timestamp, &message.body);
    let response = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(message.body.to_vec())
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

    #[test]
    fn a_full_queue_drops_the_oldest_message() {
        let queue = Queue {
            endpoint: "x".into(),
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        };
        for id in ["a", "b", "c"] {
            queue.push(
                Message {
                    id: id.into(),
                    body: Arc::from(&b"{}"[..]),
                },
                2,
            );
        }
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.front().map(|m| m.id), Some("b".into()));
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 1);
    }
}
