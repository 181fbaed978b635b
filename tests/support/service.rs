//! The real `tokenvisor serve` as a child process with its admin API, and a client for it.

use crate::process::{Server, command};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokenvisor_testkit::FakeProvider;

/// The admin token the tests configure.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Settings for short-lived tokens: refreshes a few seconds apart, quick retries.
pub const FAST_ENV: [(&str, &str); 6] = [
    ("TOKENVISOR_MIN_SPACING", "500ms"),
    ("TOKENVISOR_RETRY_BASE", "200ms"),
    ("TOKENVISOR_RETRY_CAP", "2s"),
    ("TOKENVISOR_STARTUP_SPREAD", "200ms"),
    ("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "127.0.0.1"),
    ("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0"),
];

/// A running service: the process, its admin address, and an HTTP client.
pub struct Service {
    pub server: Server,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    pub dir: PathBuf,
}

/// A response: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A reqwest client (the ring provider installed).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

impl Service {
    /// Starts `tokenvisor serve` in `dir` (data directory `dir/data` unless `env` says
    /// otherwise) with [`FAST_ENV`], [`ADMIN_TOKEN`] and `env`, and waits until the admin
    /// API listens. Call from a multi-thread runtime.
    pub fn start(binary: &Path, dir: &Path, env: &[(&str, String)]) -> Service {
        let mut cmd = command(binary, dir);
        cmd.env("TOKENVISOR_DATA_DIR", dir.join("data"))
            .env("TOKENVISOR_ADMIN_TOKEN", ADMIN_TOKEN);
        for (key, value) in FAST_ENV {
            cmd.env(key, value);
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        let token = env
            .iter()
            .find(|(key, _)| *key == "TOKENVISOR_ADMIN_TOKEN")
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| ADMIN_TOKEN.to_owned());
        Service::spawn(cmd, dir, token)
    }

    /// Starts a prepared command (`serve` is added) and waits for the admin API.
    pub fn spawn(cmd: std::process::Command, dir: &Path, token: String) -> Service {
        let mut server = Server::spawn(cmd);
        let line = tokio::task::block_in_place(|| server.wait_for("admin API listening", Duration::from_secs(60)));
        let addr = field(&line, "addr").unwrap_or_else(|| panic!("no addr in {line:?}"));
        Service {
            server,
            base: format!("http://{addr}"),
            token,
            http: http_client(),
            dir: dir.to_owned(),
        }
    }

    /// Waits for a log line (blocking the current worker only).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        tokio::task::block_in_place(|| self.server.wait_for(needle, timeout))
    }

    /// Sends a request with the admin token.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> Answer {
        self.send(reqwest::Method::POST, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Sends `POST path` (no body) from a task of its own: for a request that stays in
    /// flight while the test goes on (a refresh the provider is slow to answer).
    pub fn post_in_background(&self, path: &str) -> tokio::task::JoinHandle<Answer> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(120));
        tokio::spawn(async move { answer(request.send().await.expect("request")).await })
    }

    /// `GET /metrics` (Prometheus text), with the admin token.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("metrics request");
        assert_eq!(response.status().as_u16(), 200, "GET /metrics");
        response.text().await.expect("metrics text")
    }

    /// Registers an integration named `name` pointing at the fake; returns its view.
    pub async fn add_integration(&self, fake: &FakeProvider, name: &str) -> serde_json::Value {
        let answer = self.post("/v1/integrations", integration_body(fake, name)).await;
        assert_eq!(answer.status, 201, "{answer:?}");
        answer.body
    }

    /// Registers a connection for `tenant` with a grant the fake issues (labelled `tenant`).
    pub async fn connect(&self, fake: &FakeProvider, integration: &str, tenant: &str) -> serde_json::Value {
        let issued = fake.issue_grant(tenant);
        let answer = self
            .post(
                "/v1/connections",
                serde_json::json!({
                    "tenant_id": tenant,
                    "integration": integration,
                    "access_token": issued.access_token,
                    "refresh_token": issued.refresh_token,
                    "expires_in": issued.expires_in,
                }),
            )
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        answer.body
    }

    /// Polls the connection view until `done` holds (or panics after `timeout`).
    pub async fn wait_for_connection(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answer = self.get(&format!("/v1/connections/{id}")).await;
            if answer.status == 200 && done(&answer.body) {
                return answer.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "connection {id} never reached the expected state: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The JSON registration of an integration pointing at the fake.
pub fn integration_body(fake: &FakeProvider, name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "provider": "generic",
        "client_id": fake.client_id(),
        "client_secret": fake.client_secret(),
        "scopes": ["read"],
        "token_url": fake.token_url(),
        "authorize_url": fake.authorize_url(),
        "revoke_url": fake.revoke_url(),
    })
}

/// Reads a response into an [`Answer`].
pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    }
}

/// `key=value` (text logs) or `"key":"value"` (JSON logs) in a log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let plain = format!("{key}=");
    if let Some(start) = line.find(&plain) {
        let rest = &line[start + plain.len()..];
        let value: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        return Some(value.trim_matches('"').to_owned());
    }
    let json = format!("\"{key}\":\"");
    let start = line.find(&json)?;
    let rest = &line[start + json.len()..];
    Some(rest.chars().take_while(|c| *c != '"').collect())
}

/// The samples of the Prometheus metric `name` in `text`: `(labels, value)`, labels as
/// written between the braces (empty without labels). Comment lines and other metrics
/// (including ones whose name merely starts with `name`) are skipped.
pub fn prometheus_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(labelled) = rest.strip_prefix('{') {
                let (labels, value) = labelled.split_once('}')?;
                (labels.to_owned(), value)
            } else if rest.starts_with(' ') {
                (String::new(), rest)
            } else {
                return None;
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}
