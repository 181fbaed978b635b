//! The CLI subcommands that talk to a running service through its admin API
//! (`TOKENVISOR_ADMIN_URL`, `TOKENVISOR_ADMIN_TOKEN`): human tables by default, `--json`
//! for scripts.

use crate::commands::human_duration;
use crate::exit::Exit;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use comfy_table::{CellAlignment, ContentArrangement, Table};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokenvisor_core::SecretString;

/// Where the admin API is, its token, and how to print: every admin CLI command takes
/// these (and nothing of the server's settings).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admin API")]
pub struct ClientArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        global = true,
        env = "TOKENVISOR_ADMIN_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub admin_url: String,
    /// Bearer token of the admin API (default: the config file's, else `<data dir>/admin.token`).
    #[arg(long, global = true, env = "TOKENVISOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read the admin token from this file (`-`: standard input).
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Trust the certificate authorities in this PEM file too, for an https admin URL
    /// whose certificate a private CA signed (the system's roots stay trusted).
    #[arg(long, global = true, env = "TOKENVISOR_ADMIN_CA", value_name = "PATH")]
    pub admin_ca: Option<PathBuf>,
    /// Data directory of a local `serve`, for its generated admin.token [default: ./tokenvisor-data].
    #[arg(long, global = true, env = "TOKENVISOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's TOML configuration file (only its admin_token and data_dir are read).
    #[arg(long, global = true, env = "TOKENVISOR_CONFIG")]
    pub config: Option<PathBuf>,
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
        /// OAuth client secret (or set TOKENVISOR_CLIENT_SECRET, or use --client-secret-file).
        #[arg(long, env = "TOKENVISOR_CLIENT_SECRET", hide_env_values = true)]
        client_secret: Option<String>,
        /// Read the client secret from this file (`-`: standard input); keeps it out of
        /// the shell history and the process list.
        #[arg(long, value_name = "PATH")]
        client_secret_file: Option<PathBuf>,
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
    /// Show one integration (never its secret).
    Show {
        /// Integration name or id.
        integration: String,
    },
    /// Change an integration: rotate its client secret, scopes, redirect URI, settings
    /// (the next refresh of every connection uses the change, no restart).
    Update {
        /// Integration name or id.
        integration: String,
        /// A new OAuth client id.
        #[arg(long)]
        client_id: Option<String>,
        /// Rotate the client secret: read the new one from this file (`-`: standard
        /// input). It is never printed.
        #[arg(long, value_name = "PATH")]
        client_secret_file: Option<PathBuf>,
        /// The scopes, replacing all of them (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A new redirect URI.
        #[arg(long)]
        redirect_uri: Option<String>,
        /// New profile overrides as a JSON object, replacing all of them.
        #[arg(long)]
        settings: Option<String>,
    },
    /// Delete an integration; refused while connections use it unless `--cascade`.
    Delete {
        /// Integration name or id.
        integration: String,
        /// Delete its connections first (each revoked at the provider).
        #[arg(long)]
        cascade: bool,
    },
}

/// `tokenvisor tenants ...`
#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// List a tenant's connections (to every integration, under every key).
    Connections {
        /// The tenant.
        tenant: String,
    },
}

/// Which connection: its id, or the tenant, the integration and the key.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = true)]
pub struct ConnectionRef {
    /// Connection id (or address it with `--tenant` and `--integration`).
    #[arg(conflicts_with_all = ["tenant", "integration", "key"])]
    id: Option<String>,
    /// The tenant (with `--integration`, instead of an id).
    #[arg(long, requires = "integration")]
    tenant: Option<String>,
    /// The integration, name or id (with `--tenant`).
    #[arg(long, requires = "tenant")]
    integration: Option<String>,
    /// The connection key (with `--tenant`) [default: default].
    #[arg(long, requires = "tenant")]
    key: Option<String>,
}

impl ConnectionRef {
    /// The admin API path of the connection, then `suffix` (`/token`, `/refresh`...).
    fn path(&self, suffix: &str) -> anyhow::Result<String> {
        match (&self.id, &self.tenant, &self.integration) {
            (Some(id), None, None) => connection_path(id, suffix),
            (None, Some(tenant), Some(integration)) => {
                let key = self.key.as_deref().unwrap_or("default");
                Ok(format!(
                    "{}{suffix}",
                    api_path(&["v1", "tenants", tenant, "connections", integration, key])?
                ))
            }
            _ => Err(Exit::Usage.msg("give a connection id, or --tenant and --integration (and --key)")),
        }
    }

    /// How to name it in a message.
    fn describe(&self) -> String {
        match (&self.id, &self.tenant, &self.integration) {
            (Some(id), _, _) => id.clone(),
            (None, Some(tenant), Some(integration)) => format!(
                "{integration}/{} of tenant {tenant}",
                self.key.as_deref().unwrap_or("default")
            ),
            _ => "-".into(),
        }
    }
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
        /// The caller's name for this connection of the tenant [default: default];
        /// registering the same (tenant, integration, key) again replaces its tokens.
        #[arg(long)]
        key: Option<String>,
        /// Current access token (or set TOKENVISOR_ACCESS_TOKEN, or use --access-token-file).
        #[arg(long, env = "TOKENVISOR_ACCESS_TOKEN", hide_env_values = true)]
        access_token: Option<String>,
        /// Read the access token from this file (`-`: standard input).
        #[arg(long, value_name = "PATH")]
        access_token_file: Option<PathBuf>,
        /// Refresh token (or set TOKENVISOR_REFRESH_TOKEN, or use --refresh-token-file).
        #[arg(long, env = "TOKENVISOR_REFRESH_TOKEN", hide_env_values = true)]
        refresh_token: Option<String>,
        /// Read the refresh token from this file (`-`: standard input).
        #[arg(long, value_name = "PATH")]
        refresh_token_file: Option<PathBuf>,
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
        /// Only connections whose tenant id, connection key or integration name starts
        /// with this (case-sensitive).
        #[arg(long, short = 'q', value_name = "TEXT")]
        search: Option<String>,
        /// The order [default: id]; ties are broken by id.
        #[arg(long, value_enum)]
        sort: Option<ListSort>,
        /// The direction [default: asc].
        #[arg(long, value_enum)]
        order: Option<ListOrder>,
    },
    /// Show one connection.
    Show(ConnectionRef),
    /// Refresh now.
    Refresh(ConnectionRef),
    /// Disable: no refreshes, token requests are refused.
    Deactivate(ConnectionRef),
    /// Enable again.
    Activate(ConnectionRef),
    /// Delete (revokes the grant at the provider, best effort).
    Delete(ConnectionRef),
    /// The refresh attempts, newest first (at most 50).
    History(ConnectionRef),
}

/// The orders of `connections list` (the API's `sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ListSort {
    /// By id (creation order).
    Id,
    /// By the access token's expiry.
    ExpiresAt,
    /// By the transient refresh failures in a row (`consecutive_failures` in `--json`;
    /// the FAILURES column counts escalations to needs_reauth).
    Failures,
    /// By the time of the last error (connections without one come last).
    LastError,
}

impl ListSort {
    /// The API's name of the order.
    fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::ExpiresAt => "expires_at",
            Self::Failures => "failures",
            Self::LastError => "last_error",
        }
    }
}

/// The direction of `connections list` (the API's `order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOrder {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

impl ListOrder {
    /// The API's name of the direction.
    fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }
}

/// `tokenvisor token ...`
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a valid access token (human output: the token alone on stdout).
    Get(ConnectionRef),
}

/// `tokenvisor webhooks ...`
#[derive(Debug, clap::Subcommand)]
pub enum WebhooksCommand {
    /// List the webhook endpoints (configured ones and those added here).
    List,
    /// Add an endpoint; prints its signing secret once.
    Add {
        /// Where to POST the events (http(s) URL).
        url: String,
        /// Only these event types (comma-separated; default: every type).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// Stop delivering new messages to an endpoint (its queue waits).
    Disable {
        /// Endpoint id.
        id: String,
    },
    /// Deliver to an endpoint again.
    Enable {
        /// Endpoint id.
        id: String,
    },
    /// A new signing secret, printed once; the old one keeps signing for the grace period.
    RotateSecret {
        /// Endpoint id.
        id: String,
        /// How long the old secret keeps signing next to the new one (e.g. 24h, 0s).
        #[arg(long)]
        grace: Option<String>,
    },
    /// Delete an endpoint with its queue and dead letters.
    Delete {
        /// Endpoint id.
        id: String,
    },
    /// List the messages given up on (dead letter), newest first.
    DeadLetters {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Queue a dead-lettered message again (same webhook-id), or with `--endpoint` all of an
    /// endpoint's.
    Replay {
        /// Dead letter id (omit with --endpoint).
        id: Option<String>,
        /// Replay every dead letter of this endpoint.
        #[arg(long, conflicts_with = "id")]
        endpoint: Option<String>,
    },
}

/// `tokenvisor api-keys ...`
#[derive(Debug, clap::Subcommand)]
pub enum ApiKeysCommand {
    /// Create an API key; prints the key once (only its hash is stored).
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
        /// Scopes (comma-separated): admin, operate, tokens:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Only these tenants (comma-separated; default: every tenant).
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
        /// Only these integrations, by name or id (comma-separated; default: every one).
        #[arg(long, value_delimiter = ',')]
        integrations: Vec<String>,
        /// When it stops working: a duration from now (`30d`, `12h`).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List the API keys (their prefixes, never the keys).
    List,
    /// Revoke an API key: refused from its next request on.
    Revoke {
        /// The key's id.
        id: String,
    },
}

/// `tokenvisor audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    List {
        /// Only this connection's (id).
        #[arg(long)]
        connection: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this API key's (id, or `admin`).
        #[arg(long)]
        key: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
    /// The key to connect under [default: default]: the completed authorization creates
    /// the tenant's connection under it, or replaces the tokens of the one already there.
    #[arg(long)]
    key: Option<String>,
}

/// `tokenvisor events`: the API's filters.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this connection's events.
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
    stdin: StdinOnce,
}

impl AdminClient {
    /// A client for `args.admin_url`, authenticating with the admin token of `args`
    /// (flag, variable or file), else the config file's, else the data directory's.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let mut stdin = StdinOnce::default();
        let flag = match &args.admin_token_file {
            Some(path) => Some(stdin.secret(path, "--admin-token-file")?),
            None => args.admin_token.clone(),
        };
        let token = crate::settings::client_token(args.config.as_deref(), args.data_dir.as_deref(), flag)
            .map_err(|error| Exit::Usage.with(error))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = args.admin_url.trim_end_matches('/').to_owned();
        url::Url::parse(&base)
            .map_err(|error| Exit::Usage.msg(format_args!("invalid TOKENVISOR_ADMIN_URL {base:?}: {error}")))?;
        let authorities = match &args.admin_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|error| {
                    Exit::Usage.msg(format_args!(
                        "cannot read TOKENVISOR_ADMIN_CA {}: {error}",
                        path.display()
                    ))
                })?;
                let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                    Exit::Usage.msg(format_args!("invalid TOKENVISOR_ADMIN_CA {}: {error}", path.display()))
                })?;
                if certificates.is_empty() {
                    return Err(Exit::Usage.msg(format_args!(
                        "TOKENVISOR_ADMIN_CA {} holds no certificate",
                        path.display()
                    )));
                }
                certificates
            }
            None => Vec::new(),
        };
        let trusting = |mut builder: reqwest::ClientBuilder| {
            for certificate in &authorities {
                builder = builder.add_root_certificate(certificate.clone());
            }
            builder
        };
        let http = trusting(reqwest::Client::builder())
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("failed to build the HTTP client")?;
        let streaming = trusting(reqwest::Client::builder())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self {
            http,
            streaming,
            base,
            token,
            json: args.json,
            stdin,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = self.token.as_ref().ok_or_else(|| {
            Exit::Unauthorized.msg(
                "no admin token: set TOKENVISOR_ADMIN_TOKEN or --admin-token-file (a generated one is in <data dir>/admin.token)",
            )
        })?;
        Ok(builder.bearer_auth(token.expose()))
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        Exit::Unavailable.msg(format_args!(
            "cannot reach the admin API at {} (TOKENVISOR_ADMIN_URL): {}",
            self.base,
            error_chain(&error)
        ))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let mut builder = self.authorized(self.http.request(method, &url))?;
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.map_err(|error| self.unreachable(error))?;
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
        Err(api_failure(status.as_u16(), &text))
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

    /// `webhooks ...`
    pub async fn webhooks(&self, command: WebhooksCommand) -> anyhow::Result<()> {
        let id_path = |id: &str, tail: &str| -> anyhow::Result<String> {
            let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(Exit::Usage.msg(format_args!("{id:?} is not an id")));
            }
            Ok(format!("{id}{tail}"))
        };
        let answer = match command {
            WebhooksCommand::List => {
                let list = self.get("/v1/webhooks/endpoints").await?;
                if self.json {
                    self.print_json(&list);
                    return Ok(());
                }
                let mut table = new_table(&["ID", "URL", "EVENTS", "ENABLED", "SOURCE"]);
                for endpoint in list["items"].as_array().into_iter().flatten() {
                    let events = endpoint["event_types"]
                        .as_array()
                        .map(|types| types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .filter(|types| !types.is_empty())
                        .unwrap_or_else(|| "*".to_owned());
                    table.add_row(vec![
                        text(&endpoint["id"]),
                        text(&endpoint["url"]),
                        events,
                        endpoint["enabled"].as_bool().unwrap_or_default().to_string(),
                        text(&endpoint["source"]),
                    ]);
                }
                print_table(&table);
                return Ok(());
            }
            WebhooksCommand::Add { url, events } => {
                self.post(
                    "/v1/webhooks/endpoints",
                    Some(json!({ "url": url, "event_types": events })),
                )
                .await?
            }
            WebhooksCommand::Disable { id } => self.set_endpoint_enabled(&id_path(&id, "")?, false).await?,
            WebhooksCommand::Enable { id } => self.set_endpoint_enabled(&id_path(&id, "")?, true).await?,
            WebhooksCommand::RotateSecret { id, grace } => {
                let body = match grace {
                    Some(grace) => {
                        let seconds = tokenvisor_supervisor::parse_duration(&grace)
                            .ok()
                            .and_then(|grace| grace.to_std().ok())
                            .ok_or_else(|| {
                                Exit::Usage.msg(format_args!("invalid --grace {grace:?}: a duration like 24h or 0s"))
                            })?;
                        json!({ "grace_seconds": seconds.as_secs() })
                    }
                    None => json!({}),
                };
                self.post(
                    &format!("/v1/webhooks/endpoints/{}", id_path(&id, "/rotate-secret")?),
                    Some(body),
                )
                .await?
            }
            WebhooksCommand::Delete { id } => {
                self.call(
                    Method::DELETE,
                    &format!("/v1/webhooks/endpoints/{}", id_path(&id, "")?),
                    None,
                )
                .await?;
                println!("deleted {id}");
                return Ok(());
            }
            WebhooksCommand::DeadLetters { endpoint, limit } => {
                let mut path = format!("/v1/webhooks/dead-letters?limit={limit}");
                if let Some(endpoint) = endpoint {
                    path.push_str(&format!("&endpoint={}", id_path(&endpoint, "")?));
                }
                let list = self.get(&path).await?;
                if self.json {
                    self.print_json(&list);
                    return Ok(());
                }
                let mut table = new_table(&["ID", "ENDPOINT", "EVENT", "ATTEMPTS", "REASON", "LAST ERROR"]);
                for letter in list["items"].as_array().into_iter().flatten() {
                    table.add_row(vec![
                        text(&letter["id"]),
                        text(&letter["endpoint_id"]),
                        text(&letter["event_type"]),
                        letter["attempts"].as_u64().unwrap_or_default().to_string(),
                        text(&letter["reason"]),
                        text(&letter["last_error"]),
                    ]);
                }
                align_right(&mut table, &[3]);
                print_table(&table);
                return Ok(());
            }
            WebhooksCommand::Replay { id, endpoint } => match (id, endpoint) {
                (Some(id), None) => {
                    self.post(&format!("/v1/webhooks/dead-letters/{}", id_path(&id, "/replay")?), None)
                        .await?
                }
                (None, Some(endpoint)) => {
                    self.post(
                        &format!("/v1/webhooks/endpoints/{}", id_path(&endpoint, "/replay-dead-letters")?),
                        None,
                    )
                    .await?
                }
                _ => {
                    return Err(
                        Exit::Usage.msg("give a dead letter id, or --endpoint ID to replay all of an endpoint's")
                    );
                }
            },
        };
        self.print_json(&answer);
        Ok(())
    }

    /// `PATCH` of a webhook endpoint's `enabled` (`webhooks disable|enable`).
    async fn set_endpoint_enabled(&self, id: &str, enabled: bool) -> anyhow::Result<Value> {
        Ok(self
            .call(
                Method::PATCH,
                &format!("/v1/webhooks/endpoints/{id}"),
                Some(json!({ "enabled": enabled })),
            )
            .await?
            .unwrap_or(Value::Null))
    }

    /// `api-keys ...`
    pub async fn api_keys(&self, command: ApiKeysCommand) -> anyhow::Result<()> {
        match command {
            ApiKeysCommand::Create {
                name,
                scopes,
                tenants,
                integrations,
                expires_in,
            } => {
                let expires_at = match expires_in {
                    Some(text) => {
                        let duration = tokenvisor_supervisor::parse_duration(&text)
                            .map_err(|error| Exit::Usage.msg(format_args!("invalid --expires-in: {error}")))?;
                        Some(Utc::now() + duration)
                    }
                    None => None,
                };
                let mut body = json!({ "name": name, "scopes": scopes, "expires_at": expires_at });
                if !tenants.is_empty() {
                    body["tenants"] = json!(tenants);
                }
                if !integrations.is_empty() {
                    body["integrations"] = json!(integrations);
                }
                let created = self.post("/v1/api-keys", Some(body)).await?;
                if self.json {
                    self.print_json(&created);
                } else {
                    println!(
                        "api key {} created (id {})",
                        text(&created["name"]),
                        text(&created["id"])
                    );
                    println!("{}", text(&created["key"]));
                    eprintln!("the key is shown this once: store it now");
                }
                Ok(())
            }
            ApiKeysCommand::List => {
                let list = self.get("/v1/api-keys").await?;
                if self.json {
                    self.print_json(&list);
                    return Ok(());
                }
                let joined = |value: &Value| {
                    value
                        .as_array()
                        .map(|items| items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .filter(|joined| !joined.is_empty())
                        .unwrap_or_else(|| "*".to_owned())
                };
                let mut table = new_table(&[
                    "ID",
                    "NAME",
                    "PREFIX",
                    "SCOPES",
                    "TENANTS",
                    "INTEGRATIONS",
                    "STATUS",
                    "EXPIRES",
                ]);
                for key in list["items"].as_array().into_iter().flatten() {
                    table.add_row(vec![
                        text(&key["id"]),
                        text(&key["name"]),
                        format!("tvk_{}_…", text(&key["prefix"])),
                        joined(&key["scopes"]),
                        joined(&key["tenants"]),
                        joined(&key["integrations"]),
                        text(&key["status"]),
                        text(&key["expires_at"]),
                    ]);
                }
                print_table(&table);
                Ok(())
            }
            ApiKeysCommand::Revoke { id } => {
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(Exit::Usage.msg(format_args!("{id:?} is not an api key id")));
                }
                self.call(Method::DELETE, &format!("/v1/api-keys/{id}"), None).await?;
                if self.json {
                    self.print_json(&json!({ "revoked": id }));
                } else {
                    println!("api key {id} revoked");
                }
                Ok(())
            }
        }
    }

    /// `audit ...`
    pub async fn audit(&self, command: AuditCommand) -> anyhow::Result<()> {
        let AuditCommand::List {
            connection,
            tenant,
            key,
            limit,
        } = command;
        let mut url = url::Url::parse(&format!("{}/v1/audit", self.base)).context("admin URL")?;
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in [("connection", &connection), ("tenant", &tenant), ("key", &key)] {
                if let Some(value) = value {
                    query.append_pair(name, value);
                }
            }
            query.append_pair("limit", &limit.to_string());
        }
        let path = format!(
            "{}{}",
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let list = self.get(&path).await?;
        if self.json {
            self.print_json(&list);
            return Ok(());
        }
        let mut table = new_table(&[
            "AT",
            "ACTION",
            "REQUEST",
            "STATUS",
            "CHANGE",
            "KEY",
            "CONNECTION",
            "TENANT",
            "CALLER",
        ]);
        for event in list["items"].as_array().into_iter().flatten() {
            table.add_row(vec![
                text(&event["at"]),
                text(&event["action"]),
                text(&event["request"]),
                event["status"].as_u64().unwrap_or_default().to_string(),
                status_change(&event["status_before"], &event["status_after"]),
                text(&event["key_id"]),
                text(&event["connection_id"]),
                text(&event["tenant_id"]),
                text(&event["caller_address"]),
            ]);
        }
        print_table(&table);
        Ok(())
    }

    /// `integrations ...`
    pub async fn integrations(mut self, command: IntegrationsCommand) -> anyhow::Result<()> {
        match command {
            IntegrationsCommand::Add {
                name,
                provider,
                client_id,
                client_secret,
                client_secret_file,
                scopes,
                redirect_uri,
                data_center,
                token_url,
                authorize_url,
                revoke_url,
                settings,
            } => {
                let settings = parse_object("--settings", settings.as_deref())?;
                let client_secret = match client_secret_file {
                    Some(path) => self.stdin.secret(&path, "--client-secret-file")?,
                    None => client_secret.ok_or_else(|| {
                        Exit::Usage.msg("a client secret is required: --client-secret-file PATH (or - for stdin), TOKENVISOR_CLIENT_SECRET or --client-secret")
                    })?,
                };
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
                let mut table = new_table(&["NAME", "PROVIDER", "CLIENT ID", "ID"]);
                for item in &items {
                    table.add_row(vec![
                        text(&item["name"]),
                        text(&item["provider"]),
                        text(&item["client_id"]),
                        text(&item["id"]),
                    ]);
                }
                print_table(&table);
                println!("{} integration(s)", items.len());
            }
            IntegrationsCommand::Show { integration } => {
                let view = self.get(&api_path(&["v1", "integrations", &integration])?).await?;
                self.print_integration(&view);
            }
            IntegrationsCommand::Update {
                integration,
                client_id,
                client_secret_file,
                scopes,
                redirect_uri,
                settings,
            } => {
                let mut change = serde_json::Map::new();
                if let Some(client_id) = client_id {
                    change.insert("client_id".into(), client_id.into());
                }
                let rotated = client_secret_file.is_some();
                if let Some(path) = client_secret_file {
                    let secret = self.stdin.secret(&path, "--client-secret-file")?;
                    change.insert("client_secret".into(), secret.into());
                }
                if !scopes.is_empty() {
                    change.insert("scopes".into(), scopes.into());
                }
                if let Some(redirect_uri) = redirect_uri {
                    change.insert("redirect_uri".into(), redirect_uri.into());
                }
                if settings.is_some() {
                    change.insert("settings".into(), parse_object("--settings", settings.as_deref())?);
                }
                if change.is_empty() {
                    return Err(Exit::Usage.msg(
                        "nothing to change: give --client-secret-file, --client-id, --scope, --redirect-uri or --settings",
                    ));
                }
                let view = self
                    .call(
                        Method::PATCH,
                        &api_path(&["v1", "integrations", &integration])?,
                        Some(Value::Object(change)),
                    )
                    .await?
                    .unwrap_or(Value::Null);
                self.print_integration(&view);
                if rotated && !self.json {
                    eprintln!("client secret rotated: the next refresh of every connection uses it");
                }
            }
            IntegrationsCommand::Delete { integration, cascade } => {
                let mut path = api_path(&["v1", "integrations", &integration])?;
                if cascade {
                    path.push_str("?cascade=true");
                }
                self.call(Method::DELETE, &path, None).await?;
                if self.json {
                    self.print_json(&json!({ "deleted": integration }));
                } else {
                    println!("integration {integration} deleted");
                }
            }
        }
        Ok(())
    }

    fn print_integration(&self, view: &Value) {
        if self.json {
            self.print_json(view);
            return;
        }
        let scopes = view["scopes"]
            .as_array()
            .map(|scopes| scopes.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
            .filter(|scopes| !scopes.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        let rows = [
            ("id", text(&view["id"])),
            ("name", text(&view["name"])),
            ("provider", text(&view["provider"])),
            ("client id", text(&view["client_id"])),
            ("scopes", scopes),
            ("redirect uri", text(&view["redirect_uri"])),
            ("data centre", text(&view["data_center"])),
            ("token url", text(&view["token_url"])),
            ("authorize url", text(&view["authorize_url"])),
            ("revoke url", text(&view["revoke_url"])),
            ("settings", text(&view["settings"])),
            ("updated", text(&view["updated_at"])),
        ];
        for (key, value) in rows {
            println!("{key:<13} {value}");
        }
    }

    /// `tenants ...`
    pub async fn tenants(&self, command: TenantsCommand) -> anyhow::Result<()> {
        let TenantsCommand::Connections { tenant } = command;
        let path = api_path(&["v1", "tenants", &tenant, "connections"])?;
        let items = self.all_pages(&path, &[]).await?;
        self.print_connections(items)
    }

    /// `connections ...`
    pub async fn connections(mut self, command: ConnectionsCommand) -> anyhow::Result<()> {
        let view = match command {
            ConnectionsCommand::Add {
                tenant,
                integration,
                key,
                access_token,
                access_token_file,
                refresh_token,
                refresh_token_file,
                expires_in,
                metadata,
            } => {
                let metadata = parse_object("--metadata", metadata.as_deref())?;
                let access_token = match access_token_file {
                    Some(path) => self.stdin.secret(&path, "--access-token-file")?,
                    None => access_token.ok_or_else(|| {
                        Exit::Usage.msg("an access token is required: --access-token-file PATH (or - for stdin), TOKENVISOR_ACCESS_TOKEN or --access-token")
                    })?,
                };
                let refresh_token = match refresh_token_file {
                    Some(path) => Some(self.stdin.secret(&path, "--refresh-token-file")?),
                    None => refresh_token,
                };
                self.post(
                    "/v1/connections",
                    Some(json!({
                        "tenant_id": tenant, "integration": integration, "connection_key": key,
                        "access_token": access_token, "refresh_token": refresh_token, "expires_in": expires_in, "metadata": metadata,
                    })),
                )
                .await?
            }
            ConnectionsCommand::List {
                tenant,
                status,
                integration,
                search,
                sort,
                order,
            } => {
                let filters = [
                    ("tenant_id", tenant),
                    ("status", status),
                    ("integration", integration),
                    ("q", search),
                    ("sort", sort.map(|s| s.as_str().to_owned())),
                    ("order", order.map(|o| o.as_str().to_owned())),
                ];
                let items = self.all_pages("/v1/connections", &filters).await?;
                return self.print_connections(items);
            }
            ConnectionsCommand::Show(target) => self.get(&target.path("")?).await?,
            ConnectionsCommand::Refresh(target) => self.post(&target.path("/refresh")?, None).await?,
            ConnectionsCommand::Deactivate(target) => self.post(&target.path("/deactivate")?, None).await?,
            ConnectionsCommand::Activate(target) => self.post(&target.path("/activate")?, None).await?,
            ConnectionsCommand::Delete(target) => {
                self.call(Method::DELETE, &target.path("")?, None).await?;
                if self.json {
                    self.print_json(&json!({ "deleted": target.describe() }));
                } else {
                    println!("connection {} deleted", target.describe());
                }
                return Ok(());
            }
            ConnectionsCommand::History(target) => return self.history(&target).await,
        };
        if self.json {
            self.print_json(&view);
        } else {
            print_connection(&view);
        }
        Ok(())
    }

    /// Every item of a paged list at `path` (relative to the admin URL) with `filters`,
    /// following `next_cursor`.
    async fn all_pages(&self, path: &str, filters: &[(&str, Option<String>)]) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (key, value) in filters.iter().chain([("cursor", cursor.clone())].iter()) {
                if let Some(value) = value {
                    query.append_pair(key, value);
                }
            }
            let query = query.finish();
            let page = if query.is_empty() {
                self.get(path).await?
            } else {
                self.get(&format!("{path}?{query}")).await?
            };
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        Ok(items)
    }

    /// Connection views as a table (or `{"items": [...]}` with `--json`).
    fn print_connections(&self, items: Vec<Value>) -> anyhow::Result<()> {
        if self.json {
            self.print_json(&json!({ "items": items }));
            return Ok(());
        }
        let now = Utc::now();
        let mut table = new_table(&[
            "ID",
            "TENANT",
            "INTEGRATION",
            "KEY",
            "STATUS",
            "EXPIRES IN",
            "FAILURES",
            "LAST ERROR",
        ]);
        align_right(&mut table, &[5, 6]);
        for item in &items {
            table.add_row(vec![
                text(&item["id"]),
                text(&item["tenant_id"]),
                text(&item["integration"]),
                text(&item["connection_key"]),
                text(&item["status"]),
                expires_in(&item["expires_at"], now),
                item["refresh_failures"].as_i64().unwrap_or(0).to_string(),
                last_error(&item["last_error"]),
            ]);
        }
        print_table(&table);
        println!("{} connection(s)", items.len());
        Ok(())
    }

    /// `connections history`.
    async fn history(&self, target: &ConnectionRef) -> anyhow::Result<()> {
        let history = self.get(&target.path("/history")?).await?;
        if self.json {
            self.print_json(&history);
            return Ok(());
        }
        let mut table = new_table(&["STARTED", "REASON", "OUTCOME", "ERROR", "HTTP", "DURATION"]);
        align_right(&mut table, &[4, 5]);
        let items = history["items"].as_array().cloned().unwrap_or_default();
        for attempt in &items {
            table.add_row(vec![
                text(&attempt["started_at"]),
                text(&attempt["reason"]),
                text(&attempt["outcome"]),
                text(&attempt["error_code"]),
                text(&attempt["http_status"]),
                format!("{} ms", attempt["duration_ms"].as_i64().unwrap_or(0)),
            ]);
        }
        print_table(&table);
        println!("{} attempt(s)", items.len());
        Ok(())
    }

    /// `token get`.
    pub async fn token(&self, command: TokenCommand) -> anyhow::Result<()> {
        let TokenCommand::Get(target) = command;
        let answer = self.get(&target.path("/token")?).await?;
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
                    "connection_key": args.key,
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

    /// `events`: tails the event stream until interrupted. When the stream breaks (the
    /// service restarts, the network drops) it reconnects with backoff and resumes after
    /// the last event it printed (`Last-Event-ID`), so nothing is printed twice.
    pub async fn events(self, args: EventsArgs) -> anyhow::Result<()> {
        let mut url = url::Url::parse(&format!("{}/v1/events", self.base)).context("admin URL")?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(tenant) = &args.tenant {
                query.append_pair("tenant_id", tenant);
            }
            if let Some(connection) = &args.connection {
                query.append_pair("connection_id", connection);
            }
        }
        let mut last_event_id: Option<String> = None;
        let mut connected = false;
        let mut backoff = EVENTS_BACKOFF_MIN;
        loop {
            let mut request = self
                .authorized(self.streaming.get(url.clone()))?
                .header("accept", "text/event-stream");
            if let Some(id) = &last_event_id {
                request = request.header("last-event-id", id);
            }
            match request.send().await {
                Err(error) if !connected => return Err(self.unreachable(error)),
                Err(error) => eprintln!("event stream: cannot reach {}: {}", self.base, error_chain(&error)),
                Ok(response) if !response.status().is_success() => {
                    let status = response.status().as_u16();
                    let failure = api_failure(status, &response.text().await.unwrap_or_default());
                    // A restarting service answers 502/503 for a moment; anything else is final.
                    if !connected || crate::exit::code_of(&failure) != Exit::Unavailable {
                        return Err(failure);
                    }
                    eprintln!("event stream: {failure:#}");
                }
                Ok(mut response) => {
                    // On stderr also with --json (stdout holds only the events), like
                    // the reconnection lines: a script can wait for it before acting.
                    if connected {
                        eprintln!("event stream resumed");
                    } else {
                        eprintln!("listening for events (Ctrl-C to stop)");
                    }
                    connected = true;
                    backoff = EVENTS_BACKOFF_MIN;
                    let mut buffer: Vec<u8> = Vec::new();
                    loop {
                        // The service sends a keep-alive comment every 15 s: silence means a dead link.
                        let chunk = match tokio::time::timeout(EVENTS_SILENCE, response.chunk()).await {
                            Ok(Ok(Some(chunk))) => chunk,
                            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
                        };
                        buffer.extend_from_slice(&chunk);
                        while let Some(end) = find_block_end(&buffer) {
                            let block: Vec<u8> = buffer.drain(..end).collect();
                            if let Some(id) = self.print_event(&String::from_utf8_lossy(&block)) {
                                last_event_id = Some(id);
                            }
                        }
                    }
                    eprintln!("event stream broke; reconnecting");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
        }
    }

    /// Prints one server-sent event block; returns its id.
    fn print_event(&self, block: &str) -> Option<String> {
        let mut kind = "message";
        let mut data = String::new();
        let mut id = None;
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                kind = value.trim();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if let Some(value) = line.strip_prefix("id:") {
                id = Some(value.trim().to_owned());
            }
        }
        if !data.is_empty() {
            self.show_event(kind, &data);
        }
        id
    }

    fn show_event(&self, kind: &str, data: &str) {
        let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if kind == "lagged" {
            match event["missed"].as_u64() {
                Some(missed) => eprintln!("event stream: {missed} event(s) were missed"),
                None => eprintln!("event stream: the service restarted; events in between may be missed"),
            }
            return;
        }
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

/// First reconnection delay of `events`, doubled up to [`EVENTS_BACKOFF_MAX`].
const EVENTS_BACKOFF_MIN: Duration = Duration::from_millis(250);
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Three keep-alives missed: the link is dead.
const EVENTS_SILENCE: Duration = Duration::from_secs(45);

/// The end of the first complete event block (after its blank line), if any.
fn find_block_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|pair| pair == b"\n\n").map(|at| at + 2)
}

/// The error of an admin API answer, with its exit code and, where the fix is a server
/// setting, what to change.
fn api_failure(status: u16, body: &str) -> anyhow::Error {
    let error: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = error["error"]["code"].as_str().unwrap_or("http_error");
    let message = error["error"]["message"].as_str().unwrap_or(body);
    let hint = match code {
        "insecure_url" => {
            "; to allow plain HTTP for a host, add it to TOKENVISOR_ALLOW_INSECURE_ENDPOINTS on the server \
             and restart `tokenvisor serve` (it is read at start-up)"
        }
        "needs_reauth" => "; send the tenant through `tokenvisor authorize`",
        "disabled" => "; `tokenvisor connections activate` enables it again",
        _ => "",
    };
    Exit::from_api(code, status).msg(format_args!("{code}: {message} (HTTP {status}){hint}"))
}

/// An error and its causes on one line (reqwest hides the cause in `source()`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Standard input can be read once: the one `-` among the `--*-file` options.
#[derive(Debug, Default)]
struct StdinOnce {
    taken: Option<&'static str>,
}

impl StdinOnce {
    /// The secret in `path` (`-`: standard input), without its trailing newline.
    fn secret(&mut self, path: &Path, option: &'static str) -> anyhow::Result<String> {
        let text = if path == Path::new("-") {
            if let Some(other) = self.taken {
                return Err(Exit::Usage.msg(format_args!(
                    "{option} - and {other} - both read standard input: give one of them a file"
                )));
            }
            self.taken = Some(option);
            std::io::read_to_string(std::io::stdin()).with_context(|| format!("failed to read {option} from stdin"))?
        } else {
            std::fs::read_to_string(path)
                .map_err(|error| Exit::Usage.msg(format_args!("cannot read {option} {}: {error}", path.display())))?
        };
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.trim().is_empty() {
            return Err(Exit::Usage.msg(format_args!("{option}: the secret is empty")));
        }
        Ok(secret.to_owned())
    }
}

/// A table for the terminal: no borders, columns two spaces apart, never wrapped (long
/// tenant ids widen their column instead of breaking the alignment).
pub fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Right-aligns the `columns` (numbers, durations).
pub fn align_right(table: &mut Table, columns: &[usize]) {
    for index in columns {
        if let Some(column) = table.column_mut(*index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Prints `table` without trailing spaces.
pub fn print_table(table: &Table) {
    println!("{}", table.trim_fmt());
}

fn print_connection(view: &Value) {
    let now = Utc::now();
    let rows = [
        ("id", text(&view["id"])),
        ("tenant", text(&view["tenant_id"])),
        ("key", text(&view["connection_key"])),
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

/// `/segment/segment/...` with each segment percent-encoded (names and tenant ids go into
/// the path as they are; `.` and `..` would change the path, so they are refused).
fn api_path(segments: &[&str]) -> anyhow::Result<String> {
    let mut path = String::new();
    for segment in segments {
        if segment.is_empty() || *segment == "." || *segment == ".." {
            return Err(Exit::Usage.msg(format_args!("{segment:?} cannot be part of a path")));
        }
        path.push('/');
        for byte in segment.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
                path.push(byte as char);
            } else {
                path.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    Ok(path)
}

fn connection_path(id: &str, suffix: &str) -> anyhow::Result<String> {
    let id = id.trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Exit::Usage.msg(format_args!("invalid connection id {id:?}: expected a UUID")));
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

/// An audit event's status change: `active -> disabled`, `new -> active`; `-` for an
/// event that changed no connection's status.
fn status_change(before: &Value, after: &Value) -> String {
    match (before, after) {
        (Value::Null, Value::Null) => "-".into(),
        (Value::Null, after) => format!("new -> {}", text(after)),
        (before, after) => format!("{} -> {}", text(before), text(after)),
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
    fn names_in_paths_are_encoded_and_cannot_leave_their_segment() {
        assert_eq!(
            api_path(&["v1", "tenants", "acme:eu", "connections", "zoho crm/x", "default"]).expect("a valid path"),
            "/v1/tenants/acme:eu/connections/zoho%20crm%2Fx/default"
        );
        assert!(api_path(&["v1", "integrations", ".."]).is_err());
        assert!(api_path(&["v1", "integrations", ""]).is_err());
    }

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
