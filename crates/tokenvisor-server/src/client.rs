//! The CLI subcommands that talk to a running service through its admin API
//! (`TOKENVISOR_ADMIN_URL`, `TOKENVISOR_ADMIN_TOKEN`): human tables by default, `--json`
//! for scripts.

use crate::commands::human_duration;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tokenvisor_core::SecretString;

/// Where the admin API is and how to print.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        global = true,
        env = "TOKENVISOR_ADMIN_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub admin_url: String,
    /// Print JSON (one document, or one event per line) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `tokenvisor integrations ...`
#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum IntegrationsCommand {
    /// Register an integration (an OAuth app registration).
    Add {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Provider profile: generic, zoho, zoho-desk, manageengine-sdp, atlassian, jira.
        #[arg(long)]
        provider: String,
        /// OAuth client id.
        #[arg(long)]
        client_id: String,
        /// OAuth client secret (or set TOKENVISOR_CLIENT_SECRET).
        #[arg(long, env = "TOKENVISOR_CLIENT_SECRET", hide_env_values = true)]
        client_secret: String,
        /// A scope (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Redirect URI registered with the provider (default: this service's /oauth/callback).
        #[arg(long)]
        redirect_uri: Option<String>,
        /// Data centre (Zoho: us, eu, in, au, jp, ca, sa, uk, cn).
        #[arg(long)]
        data_center: Option<String>,
        /// Token endpoint override.
        #[arg(long)]
        token_url: Option<String>,
        /// Authorization endpoint override.
        #[arg(long)]
        authorize_url: Option<String>,
        /// Revocation endpoint override.
        #[arg(long)]
        revoke_url: Option<String>,
        /// Profile overrides as a JSON object.
        #[arg(long)]
        settings: Option<String>,
    },
    /// List integrations.
    List,
}

/// `tokenvisor connections ...`
#[derive(Debug, clap::Subcommand)]
pub enum ConnectionsCommand {
    /// Register a connection with tokens obtained elsewhere.
    Add {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The integration (name or id).
        #[arg(long)]
        integration: String,
        /// Current access token (or set TOKENVISOR_ACCESS_TOKEN).
        #[arg(long, env = "TOKENVISOR_ACCESS_TOKEN", hide_env_values = true)]
        access_token: String,
        /// Refresh token (or set TOKENVISOR_REFRESH_TOKEN).
        #[arg(long, env = "TOKENVISOR_REFRESH_TOKEN", hide_env_values = true)]
        refresh_token: Option<String>,
        /// How long until the access token expires: `1h`, `90m`, `3600s`, or seconds (`3600`).
        #[arg(long, allow_negative_numbers = true, value_parser = parse_expires_in)]
        expires_in: Option<i64>,
        /// Provider metadata as a JSON object (e.g. `{"api_domain":"https://www.zohoapis.eu"}`).
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List connections (every page).
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this status (active, degraded, needs_reauth, disabled).
        #[arg(long)]
        status: Option<String>,
        /// Only this integration (name or id).
        #[arg(long)]
        integration: Option<String>,
    },
    /// Show one connection.
    Show {
        /// Connection id.
        id: String,
    },
    /// Refresh now.
    Refresh {
        /// Connection id.
        id: String,
    },
    /// Disable: no refreshes, token requests are refused.
    Deactivate {
        /// Connection id.
        id: String,
    },
    /// Enable again.
    Activate {
        /// Connection id.
        id: String,
    },
    /// Delete (revokes the grant at the provider, best effort).
    Delete {
        /// Connection id.
        id: String,
    },
}

/// `tokenvisor token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a valid access token (human output: the token alone on stdout).
    Get {
        /// Connection id.
        id: String,
    },
}

/// `tokenvisor authorize`.
#[derive(Debug, clap::Args)]
pub struct AuthorizeArgs {
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The integration (name or id).
    #[arg(long)]
    integration: String,
    /// The connection to re-authorize.
    #[arg(long)]
    connection: Option<String>,
}

/// A client of the admin API.
pub struct AdminClient {
    http: reqwest::Client,
    streaming: reqwest::Client,
    base: String,
    token: Option<SecretString>,
    json: bool,
}

impl AdminClient {
    /// A client for `args.admin_url`, authenticating with `token`.
    pub fn new(args: &ClientArgs, token: Option<SecretString>) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = args.admin_url.trim_end_matches('/').to_owned();
        url::Url::parse(&base).map_err(|error| anyhow::anyhow!("invalid TOKENVISOR_ADMIN_URL {base:?}: {error}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("failed to build the HTTP client")?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            http,
            streaming,
            base,
            token,
            json: args.json,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = self
            .token
            .as_ref()
            .context("no admin token: set TOKENVISOR_ADMIN_TOKEN (a generated one is in <data dir>/admin.token)")?;
        Ok(builder.bearer_auth(token.expose()))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let mut builder = self.authorized(self.http.request(method, &url))?;
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {} (TOKENVISOR_ADMIN_URL)", self.base))?;
        let status = response.status();
        let text = response.text().await.context("failed to read the answer")?;
        if status.is_success() {
            if text.is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text)
                .map(Some)
                .context("the admin API answered invalid JSON");
        }
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = error["error"]["code"].as_str().unwrap_or("http_error");
        let message = error["error"]["message"].as_str().unwrap_or(text.as_str());
        bail!("{code}: {message} (HTTP {})", status.as_u16())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.call(Method::GET, path, None).await?.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        Ok(self.call(Method::POST, path, body).await?.unwrap_or(Value::Null))
    }

    fn print_json(&self, value: &Value) {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    }

    /// `integrations ...`
    pub async fn integrations(&self, command: IntegrationsCommand) -> anyhow::Result<()> {
        match command {
            IntegrationsCommand::Add {
                name,
                provider,
                client_id,
                client_secret,
                scopes,
                redirect_uri,
                data_center,
                token_url,
                authorize_url,
                revoke_url,
                settings,
            } => {
                let settings = parse_object("--settings", settings.as_deref())?;
                let view = self
                    .post(
                        "/v1/integrations",
                        Some(json!({
                            "name": name, "provider": provider, "client_id": client_id,
                            "client_secret": client_secret, "scopes": scopes, "redirect_uri": redirect_uri,
                            "data_center": data_center, "token_url": token_url,
                            "authorize_url": authorize_url, "revoke_url": revoke_url, "settings": settings,
                        })),
                    )
                    .await?;
                if self.json {
                    self.print_json(&view);
                } else {
                    println!(
                        "integration {} registered (id {})",
                        text(&view["name"]),
                        text(&view["id"])
                    );
                }
            }
            IntegrationsCommand::List => {
                let list = self.get("/v1/integrations").await?;
                if self.json {
                    self.print_json(&list);
                    return Ok(());
                }
                let items = list["items"].as_array().cloned().unwrap_or_default();
                println!("{:<24} {:<18} {:<28} ID", "NAME", "PROVIDER", "CLIENT ID");
                for item in &items {
                    println!(
                        "{:<24} {:<18} {:<28} {}",
                        text(&item["name"]),
                        text(&item["provider"]),
                        text(&item["client_id"]),
                        text(&item["id"])
                    );
                }
                println!("{} integration(s)", items.len());
            }
        }
        Ok(())
    }

    /// `connections ...`
    pub async fn connections(&self, command: ConnectionsCommand) -> anyhow::Result<()> {
        let view = match command {
            ConnectionsCommand::Add {
                tenant,
                integration,
                access_token,
                refresh_token,
                expires_in,
                metadata,
            } => {
                let metadata = parse_object("--metadata", metadata.as_deref())?;
                self.post(
                    "/v1/connections",
                    Some(json!({
                        "tenant_id": tenant, "integration": integration, "access_token": access_token,
                        "refresh_token": refresh_token, "expires_in": expires_in, "metadata": metadata,
                    })),
                )
                .await?
            }
            ConnectionsCommand::List {
                tenant,
                status,
                integration,
            } => return self.list_connections(tenant, status, integration).await,
            ConnectionsCommand::Show { id } => self.get(&connection_path(&id, "")?).await?,
            ConnectionsCommand::Refresh { id } => self.post(&connection_path(&id, "/refresh")?, None).await?,
            ConnectionsCommand::Deactivate { id } => self.post(&connection_path(&id, "/deactivate")?, None).await?,
            ConnectionsCommand::Activate { id } => self.post(&connection_path(&id, "/activate")?, None).await?,
            ConnectionsCommand::Delete { id } => {
                self.call(Method::DELETE, &connection_path(&id, "")?, None).await?;
                if self.json {
                    self.print_json(&json!({ "deleted": id }));
                } else {
                    println!("connection {id} deleted");
                }
                return Ok(());
            }
        };
        if self.json {
            self.print_json(&view);
        } else {
            print_connection(&view);
        }
        Ok(())
    }

    async fn list_connections(
        &self,
        tenant: Option<String>,
        status: Option<String>,
        integration: Option<String>,
    ) -> anyhow::Result<()> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = url::Url::parse(&format!("{}/v1/connections", self.base)).context("admin URL")?;
            {
                let mut query = url.query_pairs_mut();
                for (key, value) in [
                    ("tenant_id", &tenant),
                    ("status", &status),
                    ("integration", &integration),
                    ("cursor", &cursor),
                ] {
                    if let Some(value) = value {
                        query.append_pair(key, value);
                    }
                }
            }
            let path = format!(
                "{}{}",
                url.path(),
                url.query().map(|q| format!("?{q}")).unwrap_or_default()
            );
            let page = self.get(&path).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if self.json {
            self.print_json(&json!({ "items": items }));
            return Ok(());
        }
        let now = Utc::now();
        println!(
            "{:<36}  {:<20} {:<16} {:<13} {:>10} {:>8}  LAST ERROR",
            "ID", "TENANT", "INTEGRATION", "STATUS", "EXPIRES IN", "FAILURES"
        );
        for item in &items {
            println!(
                "{:<36}  {:<20} {:<16} {:<13} {:>10} {:>8}  {}",
                text(&item["id"]),
                text(&item["tenant_id"]),
                text(&item["integration"]),
                text(&item["status"]),
                expires_in(&item["expires_at"], now),
                item["refresh_failures"].as_i64().unwrap_or(0),
                last_error(&item["last_error"]),
            );
        }
        println!("{} connection(s)", items.len());
        Ok(())
    }

    /// `token get`.
    pub async fn token(&self, command: TokenCommand) -> anyhow::Result<()> {
        let TokenCommand::Get { id } = command;
        let answer = self.get(&connection_path(&id, "/token")?).await?;
        if self.json {
            self.print_json(&answer);
        } else {
            println!("{}", text(&answer["access_token"]));
            eprintln!(
                "{} token, expires in {}",
                text(&answer["token_type"]),
                expires_in(&answer["expires_at"], Utc::now())
            );
        }
        Ok(())
    }

    /// `authorize`.
    pub async fn authorize(&self, args: AuthorizeArgs) -> anyhow::Result<()> {
        let answer = self
            .post(
                "/v1/authorizations",
                Some(json!({
                    "tenant_id": args.tenant, "integration": args.integration, "connection_id": args.connection,
                })),
            )
            .await?;
        if self.json {
            self.print_json(&answer);
        } else {
            println!("Send the tenant to:\n{}", text(&answer["authorize_url"]));
            eprintln!("valid until {}", text(&answer["expires_at"]));
        }
        Ok(())
    }

    /// `events`: tails the event stream until interrupted.
    pub async fn events(&self) -> anyhow::Result<()> {
        let url = format!("{}/v1/events", self.base);
        let response = self
            .authorized(self.streaming.get(&url))?
            .header("accept", "text/event-stream")
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {} (TOKENVISOR_ADMIN_URL)", self.base))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let error: Value = response.json().await.unwrap_or(Value::Null);
            bail!(
                "{}: {} (HTTP {status})",
                error["error"]["code"].as_str().unwrap_or("http_error"),
                error["error"]["message"].as_str().unwrap_or("")
            );
        }
        if !self.json {
            eprintln!("listening for events (Ctrl-C to stop)");
        }
        let mut response = response;
        let mut buffer = String::new();
        while let Some(chunk) = response.chunk().await.context("the event stream broke")? {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                self.print_event(&block);
            }
        }
        Ok(())
    }

    fn print_event(&self, block: &str) {
        let mut kind = "message";
        let mut data = String::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                kind = value.trim();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
        if data.is_empty() {
            return;
        }
        let event: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        if self.json {
            println!("{data}");
            return;
        }
        let detail = match kind {
            "refreshed" => format!("expires_at={}", text(&event["expires_at"])),
            "refresh_failed" => format!(
                "code={} retry_at={} failures={}",
                text(&event["code"]),
                text(&event["retry_at"]),
                event["consecutive_failures"]
            ),
            "needs_reauthorization" => format!(
                "code={} refresh_failures={} message={:?}",
                text(&event["code"]),
                event["refresh_failures"],
                text(&event["message"])
            ),
            _ => String::new(),
        };
        println!(
            "{} {:<22} tenant={} connection={} {}",
            text(&event["at"]),
            kind,
            text(&event["tenant_id"]),
            text(&event["connection_id"]),
            detail
        );
    }
}

fn print_connection(view: &Value) {
    let now = Utc::now();
    let rows = [
        ("id", text(&view["id"])),
        ("tenant", text(&view["tenant_id"])),
        (
            "integration",
            format!("{} ({})", text(&view["integration"]), text(&view["provider"])),
        ),
        ("status", text(&view["status"])),
        ("active", view["is_active"].to_string()),
        ("expires in", expires_in(&view["expires_at"], now)),
        ("next refresh", text(&view["next_refresh_at"])),
        ("last refresh", text(&view["last_refresh_at"])),
        ("failures", view["refresh_failures"].to_string()),
        ("last error", last_error(&view["last_error"])),
        ("token", text(&view["token_preview"])),
    ];
    for (key, value) in rows {
        println!("{key:<13} {value}");
    }
}

fn connection_path(id: &str, suffix: &str) -> anyhow::Result<String> {
    let id = id.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("invalid connection id {id:?}: expected a UUID");
    }
    Ok(format!("/v1/connections/{id}{suffix}"))
}

fn parse_object(flag: &str, raw: Option<&str>) -> anyhow::Result<Value> {
    match raw {
        None => Ok(Value::Null),
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(value @ Value::Object(_)) => Ok(value),
            _ => bail!("invalid {flag}: expected a JSON object"),
        },
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `--expires-in`: a duration with a unit (`1h`, `90m`, `500s`) or plain seconds.
fn parse_expires_in(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    tokenvisor_supervisor::parse_duration(text).map(|duration| duration.num_seconds())
}

fn expires_in(value: &Value, now: DateTime<Utc>) -> String {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|at| human_duration(at.with_timezone(&Utc) - now))
        .unwrap_or_else(|| "-".into())
}

fn last_error(value: &Value) -> String {
    if value.is_null() {
        return "-".into();
    }
    format!("{}: {}", text(&value["code"]), text(&value["message"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_checked_before_any_request() {
        assert!(connection_path("0190f3c2-7d0e-7c6a-9b1e-1234567890ab", "/token").is_ok());
        assert!(connection_path("../integrations", "").is_err());
    }

    #[test]
    fn last_errors_read_as_code_and_message() {
        assert_eq!(last_error(&Value::Null), "-");
        assert_eq!(
            last_error(&json!({"code": "invalid_grant", "message": "revoked"})),
            "invalid_grant: revoked"
        );
    }
}

#[cfg(test)]
mod expires_in_tests {
    use super::parse_expires_in;

    #[test]
    fn expires_in_takes_a_unit_or_seconds() {
        assert_eq!(parse_expires_in("1h"), Ok(3600));
        assert_eq!(parse_expires_in("90m"), Ok(5400));
        assert_eq!(parse_expires_in("3600"), Ok(3600));
        assert_eq!(parse_expires_in("-60"), Ok(-60));
        assert!(parse_expires_in("soon").is_err());
    }
}
