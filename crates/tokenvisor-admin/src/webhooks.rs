//! Webhook delivery of the event stream, signed as the Standard Webhooks specification
//! describes: headers `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>` (two
//! signatures, space-separated, while a rotated secret's predecessor is in its grace
//! period).
//!
//! Endpoints are rows of the database (`tokenvisor_webhook_endpoints`): added, changed,
//! disabled, rotated and deleted through the admin API, or configured
//! ([`WebhookConfig::urls`], synced at every start under the id `cfg_<hash of the URL>`).
//! A forwarder task writes every event into the database's outbox, one row per enabled
//! endpoint whose event filter takes it (one statement). One delivery task per enabled
//! endpoint sends its oldest row until the endpoint answers 2xx, retrying with capped
//! exponential backoff (the `webhook-id` stays the same, so receivers can deduplicate),
//! and deletes it once delivered. Endpoint changes are picked up within
//! [`WebhookConfig::endpoint_poll`].
//!
//! Limits: a message that failed its endpoint's attempt limit, or is still failing past
//! its age limit, moves to the dead-letter list and the next one goes; an endpoint's
//! outbox keeps at most its cap, the oldest beyond move to the dead-letter list. Dead
//! letters are kept until replayed (queued again at the end, same `webhook-id`) or their
//! endpoint is deleted; each move is counted in `tokenvisor.webhooks.dead_lettered{reason}`.
//!
//! Order: per endpoint, messages are delivered in the order of their events, one at a
//! time; a failing message holds the ones behind it only until it reaches its limit. A
//! replayed message goes after the ones queued meanwhile. Refreshes never wait for any
//! of this: events are published on a broadcast channel. A dead endpoint loses nothing
//! within its limits: its messages wait in the outbox, across restarts.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenvisor_core::{Event, SecretString};
use tokenvisor_store::sql::{DeadLetterReason, EndpointSource, OutboxMessage, WebhookEndpoint, WebhookOutbox};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A webhook signing secret: `whsec_` followed by base64 of the key bytes.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Arc<[u8]>,
    text: SecretString,
}

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
    /// The outbox or the endpoints could not be read or written at start.
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
        Ok(Self {
            key: bytes.into(),
            text: SecretString::new(text.trim()),
        })
    }

    /// A new random secret (for delivery with no configured endpoint, whose secret is
    /// never used: API-managed endpoints have their own).
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        let text = format!("whsec_{}", BASE64.encode(bytes));
        Self {
            key: bytes.to_vec().into(),
            text: SecretString::new(text),
        }
    }

    /// A new random secret, as `whsec_<base64>` text.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("whsec_{}", BASE64.encode(bytes))
    }

    /// The `whsec_<base64>` text (to store it).
    pub(crate) fn text(&self) -> &SecretString {
        &self.text
    }

    /// The `webhook-signature` value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
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
    /// Configured endpoints; each receives every event. Synced into the endpoint table
    /// at start (added, URL and secret updated, removed ones deleted with their queue).
    pub urls: Vec<url::Url>,
    /// Signing secret of the configured endpoints.
    pub secret: WebhookSecret,
    /// Timeout of one delivery attempt.
    pub request_timeout: Duration,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// Failed attempts after which a message goes to dead letter, for endpoints that set
    /// none.
    pub max_attempts: u32,
    /// Age after which a failing message goes to dead letter, for endpoints that set none.
    pub max_age: Duration,
    /// Messages an endpoint's outbox keeps, for endpoints that set none; the oldest
    /// beyond go to dead letter.
    pub outbox_cap: u64,
    /// How often the endpoint table is read for changes made through the API.
    pub endpoint_poll: Duration,
}

impl WebhookConfig {
    /// Default of [`WebhookConfig::max_attempts`].
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
    /// Default of [`WebhookConfig::max_age`]: 24 h.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    /// Default of [`WebhookConfig::outbox_cap`].
    pub const DEFAULT_OUTBOX_CAP: u64 = 10_000;

    /// Defaults: 10 s per attempt, retries from 500 ms doubling up to 30 s, dead letter
    /// after 10 failed attempts or 24 h, 10,000 messages per endpoint, endpoint changes
    /// seen within 1 s.
    pub fn new(urls: Vec<url::Url>, secret: WebhookSecret) -> Self {
        Self {
            urls,
            secret,
            request_timeout: Duration::from_secs(10),
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(30),
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            max_age: Self::DEFAULT_MAX_AGE,
            outbox_cap: Self::DEFAULT_OUTBOX_CAP,
            endpoint_poll: Duration::from_secs(1),
        }
    }

    /// The id a configured URL is stored under: `cfg_` and 16 hex digits of its SHA-256.
    pub fn configured_id(url: &url::Url) -> String {
        let digest = Sha256::digest(url.as_str().as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("cfg_{hex}")
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
struct EndpointState {
    /// Its host, for logs.
    host: String,
    notify: Notify,
    pending: AtomicU64,
    delivered: AtomicU64,
}

/// A running delivery task.
struct EndpointTask {
    state: Arc<EndpointState>,
    settings: watch::Sender<WebhookEndpoint>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// What the forwarder, the poller and the delivery tasks share.
struct Shared {
    outbox: WebhookOutbox,
    client: reqwest::Client,
    config: WebhookConfig,
    cancel: CancellationToken,
    endpoints: Mutex<HashMap<String, EndpointTask>>,
    /// Tasks of endpoints that were disabled or deleted, awaited at shutdown.
    stopped: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<String, EndpointTask>> {
        // A poisoned map only means a panic elsewhere; its entries are still whole.
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Delivers events to webhook endpoints in the background.
pub struct WebhookDispatcher {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WebhookDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDispatcher")
            .field("endpoints", &self.shared.endpoints().len())
            .field("pending", &self.pending())
            .finish()
    }
}

impl WebhookDispatcher {
    /// Syncs the configured endpoints into the endpoint table, then delivers what the
    /// outbox holds from earlier runs and the events `events` receives (subscribe before
    /// anything publishes, so nothing is missed), to every enabled endpoint. Runs on the
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
        sync_configured(&outbox, &config)
            .await
            .map_err(|e| WebhookError::Outbox(e.to_string()))?;
        let shared = Arc::new(Shared {
            outbox,
            client,
            config,
            cancel: CancellationToken::new(),
            endpoints: Mutex::new(HashMap::new()),
            stopped: Mutex::new(Vec::new()),
        });
        let endpoints = shared
            .outbox
            .list_endpoints()
            .await
            .map_err(|e| WebhookError::Outbox(e.to_string()))?;
        apply_endpoints(&shared, endpoints).await;
        let tasks = vec![
            tokio::spawn(forward(events, shared.clone())),
            tokio::spawn(poll_endpoints(shared.clone())),
        ];
        tracing::info!(endpoints = shared.endpoints().len(), "webhook delivery started");
        Ok(Self { shared, tasks })
    }

    /// Messages waiting for delivery, over all enabled endpoints.
    pub fn pending(&self) -> u64 {
        self.shared
            .endpoints()
            .values()
            .map(|e| e.state.pending.load(Ordering::Relaxed))
            .sum()
    }

    /// Messages delivered so far by this process, over the enabled endpoints.
    pub fn delivered(&self) -> u64 {
        self.shared
            .endpoints()
            .values()
            .map(|e| e.state.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Keeps delivering for at most `grace`, then stops. Returns how many messages are
    /// left in the outbox (delivered after the next start).
    pub async fn shutdown(self, grace: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + grace;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shared.cancel.cancel();
        let left = self.pending();
        for task in self.tasks {
            let _ = task.await;
        }
        let running: Vec<EndpointTask> = self.shared.endpoints().drain().map(|(_, task)| task).collect();
        for task in running {
            let _ = task.handle.await;
        }
        let stopped: Vec<JoinHandle<()>> = self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        for handle in stopped {
            let _ = handle.await;
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

/// Stores the configured endpoints as rows (`source = config`): new ones added, changed
/// URLs or secrets updated, ones no longer configured deleted with their queue. Rows the
/// outbox keyed by URL (before endpoints were rows) are moved to their endpoint.
async fn sync_configured(outbox: &WebhookOutbox, config: &WebhookConfig) -> Result<(), tokenvisor_store::StoreError> {
    let now = chrono::Utc::now();
    let mut configured = Vec::with_capacity(config.urls.len());
    for url in &config.urls {
        let id = WebhookConfig::configured_id(url);
        match outbox.get_endpoint(&id).await? {
            Some(mut endpoint) => {
                if endpoint.secret != *config.secret.text() || !endpoint.enabled {
                    endpoint.secret = config.secret.text().clone();
                    endpoint.enabled = true;
                    endpoint.updated_at = now;
                    outbox.update_endpoint(&endpoint).await?;
                }
            }
            None => {
                outbox
                    .insert_endpoint(&WebhookEndpoint {
                        id: id.clone(),
                        url: url.to_string(),
                        event_types: Vec::new(),
                        enabled: true,
                        source: EndpointSource::Config,
                        secret: config.secret.text().clone(),
                        previous_secret: None,
                        previous_secret_expires_at: None,
                        max_attempts: None,
                        max_age_seconds: None,
                        outbox_cap: None,
                        created_at: now,
                        updated_at: now,
                    })
                    .await?;
            }
        }
        let adopted = outbox.adopt_messages(url.as_str(), &id).await?;
        if adopted > 0 {
            tracing::info!(endpoint = url.host_str().unwrap_or_default(), webhook.endpoint_id = %id, adopted, "webhook messages of an earlier version moved to their endpoint");
        }
        configured.push(id);
    }
    for endpoint in outbox.list_endpoints().await? {
        if endpoint.source == EndpointSource::Config && !configured.contains(&endpoint.id) {
            outbox.delete_endpoint(&endpoint.id).await?;
            tracing::info!(webhook.endpoint_id = %endpoint.id, "webhook endpoint no longer configured: deleted with its queue");
        }
    }
    Ok(())
}

/// Starts a delivery task for each enabled endpoint without one, hands changed settings
/// to running ones, and stops those of endpoints disabled or deleted.
async fn apply_endpoints(shared: &Arc<Shared>, endpoints: Vec<WebhookEndpoint>) {
    let mut new = Vec::new();
    {
        let mut running = shared.endpoints();
        let enabled: Vec<&str> = endpoints.iter().filter(|e| e.enabled).map(|e| e.id.as_str()).collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|id| !enabled.contains(&id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(task) = running.remove(&id) {
                tracing::info!(webhook.endpoint_id = %id, "webhook endpoint disabled or deleted: delivery stops");
                task.cancel.cancel();
                shared
                    .stopped
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(task.handle);
            }
        }
        for endpoint in endpoints.into_iter().filter(|e| e.enabled) {
            match running.get(&endpoint.id) {
                Some(task) => {
                    task.settings.send_if_modified(|current| {
                        if *current == endpoint {
                            false
                        } else {
                            *current = endpoint.clone();
                            true
                        }
                    });
                }
                None => new.push(endpoint),
            }
        }
    }
    for endpoint in new {
        let waiting = shared.outbox.count(&endpoint.id).await.unwrap_or(0);
        let host = url::Url::parse(&endpoint.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        if waiting > 0 {
            tracing::info!(endpoint = %host, webhook.endpoint_id = %endpoint.id, waiting, "webhook messages wait for delivery");
        }
        let state = Arc::new(EndpointState {
            host,
            notify: Notify::new(),
            pending: AtomicU64::new(waiting),
            delivered: AtomicU64::new(0),
        });
        let id = endpoint.id.clone();
        let (settings, receiver) = watch::channel(endpoint);
        let cancel = shared.cancel.child_token();
        let handle = tokio::spawn(deliver(shared.clone(), state.clone(), receiver, cancel.clone()));
        shared.endpoints().insert(
            id,
            EndpointTask {
                state,
                settings,
                cancel,
                handle,
            },
        );
    }
}

/// Reads the endpoint table every [`WebhookConfig::endpoint_poll`].
async fn poll_endpoints(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(shared.config.endpoint_poll) => {}
        }
        match shared.outbox.list_endpoints().await {
            Ok(endpoints) => apply_endpoints(&shared, endpoints).await,
            Err(error) => tracing::warn!(error = %error, "failed to read the webhook endpoints"),
        }
    }
}

async fn forward(mut events: broadcast::Receiver<Event>, shared: Arc<Shared>) {
    loop {
        let received = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            received = events.recv() => received,
        };
        match received {
            Ok(event) => {
                let message_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
                let kind = event.kind.name();
                let body = payload(&event);
                // The database may be down for a moment: keep trying, the event is not
                // dropped (the broadcast channel buffers what arrives meanwhile).
                let mut attempt: u32 = 0;
                let queued_for = loop {
                    match shared.outbox.push(&message_id, kind, &body).await {
                        Ok(queued_for) => break queued_for,
                        Err(error) => {
                            attempt = attempt.saturating_add(1);
                            tracing::warn!(webhook.id = %message_id, attempt, error = %error, "failed to queue a webhook message");
                            tokio::select! {
                                _ = shared.cancel.cancelled() => return,
                                _ = tokio::time::sleep(backoff(attempt, Duration::from_millis(100), Duration::from_secs(5))) => {}
                            }
                        }
                    }
                };
                let running = shared.endpoints();
                for id in &queued_for {
                    if let Some(task) = running.get(id) {
                        task.state.pending.fetch_add(1, Ordering::Relaxed);
                        task.state.notify.notify_one();
                    }
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

/// The secrets that sign now: the current one, and the previous one until its grace
/// period ends.
fn signing_secrets(endpoint: &WebhookEndpoint) -> Vec<WebhookSecret> {
    let mut secrets = Vec::with_capacity(2);
    match WebhookSecret::parse(endpoint.secret.expose()) {
        Ok(secret) => secrets.push(secret),
        Err(_) => {
            tracing::warn!(webhook.endpoint_id = %endpoint.id, "the stored webhook secret is not a whsec_ secret")
        }
    }
    if let (Some(previous), Some(until)) = (&endpoint.previous_secret, endpoint.previous_secret_expires_at)
        && until > chrono::Utc::now()
        && let Ok(previous) = WebhookSecret::parse(previous.expose())
    {
        secrets.push(previous);
    }
    secrets
}

/// Sleeps `delay`, or less when the task is cancelled (then `false`).
async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

async fn deliver(
    shared: Arc<Shared>,
    state: Arc<EndpointState>,
    mut settings: watch::Receiver<WebhookEndpoint>,
    cancel: CancellationToken,
) {
    let config = &shared.config;
    let outbox = &shared.outbox;
    let mut read_failures: u32 = 0;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let endpoint = settings.borrow_and_update().clone();
        let cap = endpoint.outbox_cap.unwrap_or(config.outbox_cap);
        match outbox.enforce_cap(&endpoint.id, cap).await {
            Ok(0) => {}
            Ok(moved) => {
                tokenvisor_supervisor::metrics::record_webhook_dead_lettered(DeadLetterReason::Cap.as_str(), moved);
                tracing::warn!(endpoint = %state.host, webhook.endpoint_id = %endpoint.id, moved, cap, "webhook outbox over its cap: the oldest messages moved to dead letter");
                let _ = state
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(moved)));
            }
            Err(error) => {
                tracing::warn!(endpoint = %state.host, error = %error, "failed to apply the webhook outbox cap")
            }
        }
        let message = match outbox.front(&endpoint.id).await {
            Ok(Some(message)) => {
                read_failures = 0;
                message
            }
            Ok(None) => {
                read_failures = 0;
                state.pending.store(0, Ordering::Relaxed);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = state.notify.notified() => continue,
                    _ = settings.changed() => continue,
                    // Also look again now and then (rows written by other replicas or replays).
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Err(error) => {
                read_failures = read_failures.saturating_add(1);
                tracing::warn!(endpoint = %state.host, error = %error, "failed to read the webhook outbox");
                if !pause(&cancel, backoff(read_failures, config.retry_base, config.retry_cap)).await {
                    return;
                }
                continue;
            }
        };
        let kind = if message.event_type.is_empty() {
            event_type(&message.body)
        } else {
            message.event_type.clone()
        };
        match send(&shared.client, &endpoint, &signing_secrets(&endpoint), &message).await {
            Ok(()) => {
                tokenvisor_supervisor::metrics::record_event_delivery("webhook", &kind, true);
                if message.attempts > 0 {
                    tracing::info!(endpoint = %state.host, webhook.id = %message.message_id, attempts = message.attempts + 1, "webhook delivered after retries");
                }
                // Until the row is gone the message would be sent again (same webhook-id).
                let mut tries: u32 = 0;
                while let Err(error) = outbox.remove(message.seq).await {
                    tries = tries.saturating_add(1);
                    tracing::warn!(endpoint = %state.host, webhook.id = %message.message_id, error = %error, "failed to remove a delivered webhook message");
                    if !pause(&cancel, backoff(tries, config.retry_base, config.retry_cap)).await {
                        return;
                    }
                }
                state.delivered.fetch_add(1, Ordering::Relaxed);
                let _ = state
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
            }
            Err(reason) => {
                tokenvisor_supervisor::metrics::record_event_delivery("webhook", &kind, false);
                if let Err(error) = outbox.record_failure(message.seq, &reason).await {
                    tracing::warn!(endpoint = %state.host, error = %error, "failed to record a failed webhook attempt");
                }
                let attempts = message.attempts.saturating_add(1);
                let max_attempts = endpoint.max_attempts.unwrap_or(config.max_attempts).max(1);
                let max_age = endpoint
                    .max_age_seconds
                    .map(Duration::from_secs)
                    .unwrap_or(config.max_age);
                let age = (chrono::Utc::now() - message.created_at).to_std().unwrap_or_default();
                let give_up = if attempts >= max_attempts {
                    Some(DeadLetterReason::Attempts)
                } else if age >= max_age {
                    Some(DeadLetterReason::Age)
                } else {
                    None
                };
                if let Some(why) = give_up {
                    match outbox.dead_letter(message.seq, why).await {
                        Ok(_) => {
                            tokenvisor_supervisor::metrics::record_webhook_dead_lettered(why.as_str(), 1);
                            tracing::warn!(endpoint = %state.host, webhook.endpoint_id = %endpoint.id, webhook.id = %message.message_id, attempts, reason = why.as_str(), error = %reason, "webhook message moved to dead letter");
                            let _ = state
                                .pending
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(endpoint = %state.host, error = %error, "failed to move a webhook message to dead letter");
                        }
                    }
                }
                let delay = backoff(attempts, config.retry_base, config.retry_cap);
                tracing::warn!(endpoint = %state.host, webhook.id = %message.message_id, attempt = attempts, error = %reason, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                if !pause(&cancel, delay).await {
                    return;
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
    endpoint: &WebhookEndpoint,
    secrets: &[WebhookSecret],
    message: &OutboxMessage,
) -> Result<(), String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = secrets
        .iter()
        .map(|secret| secret.sign(&message.message_id, timestamp, message.body.as_bytes()))
        .collect::<Vec<_>>()
        .join(" ");
    let response = client
        .post(endpoint.url.as_str())
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

    fn endpoint(previous_until: Option<chrono::DateTime<chrono::Utc>>) -> WebhookEndpoint {
        let now = chrono::Utc::now();
        WebhookEndpoint {
            id: "e".to_owned(),
            url: "https://hooks.example.com/".to_owned(),
            event_types: vec![],
            enabled: true,
            source: EndpointSource::Api,
            secret: SecretString::new(WebhookSecret::generate()),
            previous_secret: Some(SecretString::new(WebhookSecret::generate())),
            previous_secret_expires_at: previous_until,
            max_attempts: None,
            max_age_seconds: None,
            outbox_cap: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_rotated_secret_signs_next_to_the_new_one_only_during_its_grace_period() {
        let now = chrono::Utc::now();
        assert_eq!(
            signing_secrets(&endpoint(Some(now + chrono::Duration::hours(1)))).len(),
            2
        );
        assert_eq!(
            signing_secrets(&endpoint(Some(now - chrono::Duration::seconds(1)))).len(),
            1
        );
        assert_eq!(signing_secrets(&endpoint(None)).len(), 1);
        let current = endpoint(None);
        let signed = signing_secrets(&current)[0].sign("msg_1", 1, b"{}");
        let expected = WebhookSecret::parse(current.secret.expose())
            .expect("valid")
            .sign("msg_1", 1, b"{}");
        assert_eq!(signed, expected, "the current secret signs first");
    }

    #[test]
    fn configured_endpoints_have_a_stable_id_per_url() {
        let a = WebhookConfig::parse_url("https://hooks.example.com/a").expect("url");
        let b = WebhookConfig::parse_url("https://hooks.example.com/b").expect("url");
        assert_eq!(WebhookConfig::configured_id(&a), WebhookConfig::configured_id(&a));
        assert_ne!(WebhookConfig::configured_id(&a), WebhookConfig::configured_id(&b));
        assert!(WebhookConfig::configured_id(&a).starts_with("cfg_"));
        assert_eq!(WebhookConfig::configured_id(&a).len(), 20);
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
