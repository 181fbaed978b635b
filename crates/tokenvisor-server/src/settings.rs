//! Settings, layered with figment: defaults < the TOML file (`--config`) < environment
//! variables < flags (clap reads each flag's variable when the flag is absent). Only the
//! binary reads them; the libraries take values.
//!
//! Each subcommand takes only its own settings: `serve` every server setting
//! ([`ServeArgs`]), `migrate` and `status` the database ones ([`StorageArgs`]), and the
//! admin CLI commands only where the admin API is and its token
//! ([`crate::client::ClientArgs`]), so a server setting never breaks a client command.

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokenvisor_admin::{WebhookConfig, WebhookSecret};
use tokenvisor_core::SecretString;
use tokenvisor_store::Keyring;
use tokenvisor_supervisor::TokenvisorConfig;

/// The database settings: `migrate`, `status` and `serve` take them.
#[derive(Default, Clone, clap::Args)]
pub struct StorageArgs {
    /// TOML configuration file (environment variables and flags override it).
    #[arg(long, env = "TOKENVISOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database, the generated encryption key and admin token
    /// [default: ./tokenvisor-data].
    #[arg(long, env = "TOKENVISOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL (`sqlite://PATH` or `postgres://...`); default: SQLite in the data directory.
    #[arg(long, env = "TOKENVISOR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Most pooled PostgreSQL connections of this process (1 to 1000) [default: 32].
    #[arg(long, env = "TOKENVISOR_DATABASE_POOL")]
    pub database_pool: Option<String>,
    /// Base64 AES-256 key for tokens at rest; default: a key file in the data directory,
    /// generated on first `serve`.
    #[arg(long, env = "TOKENVISOR_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Several keys, `label:base64` comma-separated, the primary (for new writes) first,
    /// older keys (still read) after; labels are `a-z 0-9 - _`, at most 32 characters.
    /// Not together with TOKENVISOR_ENCRYPTION_KEY.
    #[arg(long, env = "TOKENVISOR_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<String>,
    /// The key-encryption key that unwraps TOKENVISOR_ENCRYPTION_KEYS.
    #[command(flatten)]
    pub kek: KekArgs,
}

/// A key-encryption key (KEK): with one, TOKENVISOR_ENCRYPTION_KEYS holds the data keys
/// wrapped by it (`tokenvisor keys generate --wrapped`, `tokenvisor keys wrap`), so the
/// data keys are never written down in plain text.
#[derive(Default, Clone, clap::Args)]
pub struct KekArgs {
    /// Key-encryption key, base64 of 32 bytes: TOKENVISOR_ENCRYPTION_KEYS then holds
    /// wrapped keys. Not together with TOKENVISOR_KEK_FILE.
    #[arg(long, env = "TOKENVISOR_KEK", hide_env_values = true)]
    pub kek: Option<String>,
    /// A file holding the key-encryption key (base64), such as a mounted secret.
    #[arg(long, env = "TOKENVISOR_KEK_FILE", value_name = "PATH")]
    pub kek_file: Option<PathBuf>,
}

/// `set` or `-` for a secret setting: Debug output never shows a key or a password.
fn shown(value: Option<&str>) -> &'static str {
    if value.is_some() { "set" } else { "-" }
}

impl std::fmt::Debug for StorageArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageArgs")
            .field("config", &self.config)
            .field("data_dir", &self.data_dir)
            .field("database_url", &shown(self.database_url.as_deref()))
            .field("database_pool", &self.database_pool)
            .field("encryption_key", &shown(self.encryption_key.as_deref()))
            .field("encryption_keys", &shown(self.encryption_keys.as_deref()))
            .field("kek", &self.kek)
            .finish()
    }
}

impl std::fmt::Debug for KekArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekArgs")
            .field("kek", &shown(self.kek.as_deref()))
            .field("kek_file", &self.kek_file)
            .finish()
    }
}

impl KekArgs {
    /// The KEK these flags (or their variables) give, if any.
    pub fn load(&self) -> anyhow::Result<Option<Kek>> {
        Kek::from_parts(
            self.kek.clone().map(|kek| (kek, "TOKENVISOR_KEK".to_owned())),
            self.kek_file
                .clone()
                .map(|path| (path, "TOKENVISOR_KEK_FILE".to_owned())),
        )
    }
}

/// A resolved key-encryption key and where it came from (for errors; never its value).
#[derive(Clone)]
pub struct Kek {
    kek: std::sync::Arc<tokenvisor_store::keys::LocalKek>,
    source: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("kek", &self.kek)
            .field("source", &self.source)
            .finish()
    }
}

impl Kek {
    fn from_parts(value: Option<(String, String)>, file: Option<(PathBuf, String)>) -> anyhow::Result<Option<Self>> {
        let (text, source) = match (value, file) {
            (Some((_, value_name)), Some((_, file_name))) => bail!("set {value_name} or {file_name}, not both"),
            (Some((text, name)), None) => (zeroize::Zeroizing::new(text), name),
            (None, Some((path, name))) => {
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {name} {}", path.display()))?;
                (zeroize::Zeroizing::new(text), format!("{name} {}", path.display()))
            }
            (None, None) => return Ok(None),
        };
        let kek = tokenvisor_store::keys::LocalKek::from_base64(text.trim())
            .map_err(|error| anyhow::anyhow!("invalid {source}: {error}"))?;
        Ok(Some(Self {
            kek: std::sync::Arc::new(kek),
            source,
        }))
    }

    /// The key-wrapping implementation.
    pub fn key_encryption_key(&self) -> &tokenvisor_store::keys::LocalKek {
        &self.kek
    }

    /// Where the KEK came from (a variable, or a variable and its file), for messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Every server setting: `serve` takes them. Durations take a unit (`250ms`, `90s`,
/// `15m`, `1h 30m`).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Address of the admin API [default: 127.0.0.1:7070].
    #[arg(long, env = "TOKENVISOR_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Longest time a client may take to send a request's headers (from the connection's
    /// start or the previous response) before the connection is closed [default: 10s].
    #[arg(long, env = "TOKENVISOR_ADMIN_HEADER_TIMEOUT")]
    pub admin_header_timeout: Option<String>,
    /// A connection of the admin API that neither sends nor receives a byte this long
    /// is closed (after its request, if one is in flight) [default: 60s].
    #[arg(long, env = "TOKENVISOR_ADMIN_IDLE_TIMEOUT")]
    pub admin_idle_timeout: Option<String>,
    /// Most connections the admin API holds at once; further ones wait in the listen
    /// backlog until one closes [default: 1024].
    #[arg(long, env = "TOKENVISOR_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<String>,
    // TLS of the admin API.
    /// Serve the admin API over TLS with this certificate chain (PEM, leaf first); needs
    /// TOKENVISOR_ADMIN_TLS_KEY. Reloaded when the file changes [default: plain HTTP].
    #[arg(long, env = "TOKENVISOR_ADMIN_TLS_CERT", value_name = "PATH")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key of TOKENVISOR_ADMIN_TLS_CERT (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TOKENVISOR_ADMIN_TLS_KEY", value_name = "PATH")]
    pub admin_tls_key: Option<PathBuf>,
    /// How often the certificate and key files are read again for a change [default: 5s].
    #[arg(long, env = "TOKENVISOR_ADMIN_TLS_RELOAD")]
    pub admin_tls_reload: Option<String>,
    /// Serve `/metrics` without credentials on this separate address (`127.0.0.1:9464`);
    /// unset, `/metrics` is on the admin address and needs the admin token or an `admin` API key.
    #[arg(long, env = "TOKENVISOR_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Bearer token of the admin API; default: generated into the data directory.
    #[arg(long, env = "TOKENVISOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read the admin token from this file (a mounted secret, say) instead.
    #[arg(long, env = "TOKENVISOR_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Failed authentications a client address (or an API key prefix) may make per
    /// minute before it is answered 429 for a while; 0: no limit [default: 30].
    #[arg(long, env = "TOKENVISOR_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<String>,
    /// How long the audit trail keeps its events [default: 90d].
    #[arg(long, env = "TOKENVISOR_AUDIT_RETENTION")]
    pub audit_retention: Option<String>,
    /// Hosts an authorization's `return_to` may name (comma-separated, exact host names):
    /// after consent the tenant's browser is sent there with the outcome [default: none].
    #[arg(long, env = "TOKENVISOR_RETURN_TO_HOSTS")]
    pub return_to_hosts: Option<String>,
    /// Public base URL of this service (the OAuth callback is `{public_url}/oauth/callback`)
    /// [default: http://ADMIN_ADDR].
    #[arg(long, env = "TOKENVISOR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Refresh this long before expiry [default: 15m].
    #[arg(long, env = "TOKENVISOR_REFRESH_LEAD")]
    pub refresh_lead: Option<String>,
    /// Tokens handed out stay valid at least this long [default: 60s].
    #[arg(long, env = "TOKENVISOR_MIN_VALIDITY")]
    pub min_validity: Option<String>,
    /// Two refreshes of one connection are at least this far apart [default: 10s].
    #[arg(long, env = "TOKENVISOR_MIN_SPACING")]
    pub min_spacing: Option<String>,
    /// First retry delay after a transient failure [default: 2s].
    #[arg(long, env = "TOKENVISOR_RETRY_BASE")]
    pub retry_base: Option<String>,
    /// Longest retry delay after transient failures [default: 5m].
    #[arg(long, env = "TOKENVISOR_RETRY_CAP")]
    pub retry_cap: Option<String>,
    /// Start-up refreshes of tokens already due are spread over this window [default: 10s].
    #[arg(long, env = "TOKENVISOR_STARTUP_SPREAD")]
    pub startup_spread: Option<String>,
    /// Several replicas on one database: a refresh holds the connection's lease in the
    /// database this long, so only one replica calls the provider (raised to at least 35 s, the token request timeouts + 10 s) [default: off].
    #[arg(long, env = "TOKENVISOR_CLUSTER_LEASE")]
    pub cluster_lease: Option<String>,
    /// On PostgreSQL, replicas on the same database share the work (partitioned
    /// ownership): `on` or `off` [default: on; SQLite always runs alone].
    #[arg(long, env = "TOKENVISOR_CLUSTER")]
    pub cluster: Option<String>,
    /// Where the other replicas reach this one's admin API (requests for connections it
    /// owns are forwarded there) [default: TOKENVISOR_PUBLIC_URL].
    #[arg(long, env = "TOKENVISOR_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// A replica that stops heartbeating loses its partitions this long after its last
    /// renewal (heartbeat: a fifth of it) [default: 10s].
    #[arg(long, env = "TOKENVISOR_PARTITION_LEASE")]
    pub partition_lease: Option<String>,
    /// This replica's id among the replicas [default: generated once into the data directory].
    #[arg(long, env = "TOKENVISOR_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// A token request to a provider (connection included) gives up after this long [default: 20s].
    #[arg(long, env = "TOKENVISOR_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Longest a token read waits for a refresh before answering 504 `timeout` [default: 5s].
    #[arg(long, env = "TOKENVISOR_TOKEN_WAIT")]
    pub token_wait: Option<String>,
    /// A provider's Retry-After is honoured up to this long (and never past the token's expiry) [default: 15m].
    #[arg(long, env = "TOKENVISOR_RETRY_AFTER_CAP")]
    pub retry_after_cap: Option<String>,
    /// While a connection backs off with an expired token, a reading caller may probe the provider this often [default: 3s].
    #[arg(long, env = "TOKENVISOR_PROBE_INTERVAL")]
    pub probe_interval: Option<String>,
    /// Hosts that token endpoints may use over plain HTTP (comma-separated); read at
    /// start-up, so a change needs a restart.
    #[arg(long, env = "TOKENVISOR_ALLOW_INSECURE_ENDPOINTS")]
    pub allow_insecure_endpoints: Option<String>,
    /// Webhook endpoints receiving the events (comma-separated URLs).
    #[arg(long, env = "TOKENVISOR_WEBHOOK_URLS")]
    pub webhook_urls: Option<String>,
    /// Webhook signing secret, `whsec_<base64>`.
    #[arg(long, env = "TOKENVISOR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// A webhook message failing this many times goes to dead letter [default: 10].
    #[arg(long, env = "TOKENVISOR_WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<String>,
    /// A webhook message still failing this long after its first attempt goes to dead letter [default: 24h].
    #[arg(long, env = "TOKENVISOR_WEBHOOK_MAX_AGE")]
    pub webhook_max_age: Option<String>,
    /// Messages waiting per webhook endpoint; the oldest beyond go to dead letter [default: 10000].
    #[arg(long, env = "TOKENVISOR_WEBHOOK_OUTBOX_CAP")]
    pub webhook_outbox_cap: Option<String>,
}

/// Limits of webhook delivery (the defaults are [`WebhookConfig`]'s `DEFAULT_*` constants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Attempts before a message goes to dead letter.
    pub max_attempts: u32,
    /// Age after which a failing message goes to dead letter.
    pub max_age: std::time::Duration,
    /// Messages waiting per endpoint.
    pub outbox_cap: u64,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        Self {
            max_attempts: WebhookConfig::DEFAULT_MAX_ATTEMPTS,
            max_age: WebhookConfig::DEFAULT_MAX_AGE,
            outbox_cap: WebhookConfig::DEFAULT_OUTBOX_CAP,
        }
    }
}

impl WebhookLimits {
    /// The delivery configuration: the configured endpoints (if any) with these limits.
    pub fn apply(&self, configured: Option<WebhookConfig>) -> WebhookConfig {
        let mut config = configured.unwrap_or_else(|| WebhookConfig::new(Vec::new(), WebhookSecret::random()));
        config.max_attempts = self.max_attempts;
        config.max_age = self.max_age;
        config.outbox_cap = self.outbox_cap;
        config
    }
}

/// A value as the file or a flag gives it: a string, a number, a boolean or a list of
/// strings (a list reads like the comma-separated variable).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Text {
    One(String),
    Number(i64),
    Flag(bool),
    List(Vec<String>),
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::One(text) => text,
            Text::Number(number) => number.to_string(),
            Text::Flag(flag) => flag.to_string(),
            Text::List(items) => items.join(","),
        }
    }
}

/// Every key of the file (unknown keys are errors), after the layers are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    data_dir: Option<Text>,
    database_url: Option<Text>,
    database_pool: Option<Text>,
    encryption_key: Option<Text>,
    encryption_keys: Option<Text>,
    kek: Option<Text>,
    kek_file: Option<Text>,
    admin_addr: Option<Text>,
    admin_header_timeout: Option<Text>,
    admin_idle_timeout: Option<Text>,
    admin_max_connections: Option<Text>,
    admin_tls_cert: Option<Text>,
    admin_tls_key: Option<Text>,
    admin_tls_reload: Option<Text>,
    metrics_addr: Option<Text>,
    admin_token: Option<Text>,
    auth_failures_per_minute: Option<Text>,
    audit_retention: Option<Text>,
    return_to_hosts: Option<Text>,
    public_url: Option<Text>,
    refresh_lead: Option<Text>,
    min_validity: Option<Text>,
    min_spacing: Option<Text>,
    retry_base: Option<Text>,
    retry_cap: Option<Text>,
    startup_spread: Option<Text>,
    cluster_lease: Option<Text>,
    cluster: Option<Text>,
    advertise_url: Option<Text>,
    partition_lease: Option<Text>,
    replica_id: Option<Text>,
    token_wait: Option<Text>,
    request_timeout: Option<Text>,
    retry_after_cap: Option<Text>,
    probe_interval: Option<Text>,
    allow_insecure_endpoints: Option<Text>,
    webhooks: Option<RawWebhooks>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    urls: Option<Text>,
    secret: Option<Text>,
    max_attempts: Option<Text>,
    max_age: Option<Text>,
    outbox_cap: Option<Text>,
}

/// The keys the admin CLI reads from the file (the others are the server's business).
#[derive(Debug, Default, Deserialize)]
struct ClientRaw {
    data_dir: Option<Text>,
    admin_token: Option<Text>,
}

/// The merged layers, and where each value came from (for errors naming the setting).
pub struct Layers {
    figment: Figment,
}

impl Layers {
    /// The file at `config` (if any) under `overrides` (the flags and environment
    /// variables clap read, key → value).
    pub fn new(config: Option<&Path>, overrides: Dict) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = config {
            // figment skips a missing file; a named one must exist.
            std::fs::File::open(path)
                .with_context(|| format!("failed to read the config file {} (TOKENVISOR_CONFIG)", path.display()))?;
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(Self {
            figment: figment.merge(Serialized::defaults(overrides)),
        })
    }

    fn extract<'a, T: Deserialize<'a>>(&self) -> anyhow::Result<T> {
        self.figment
            .extract()
            .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))
    }

    /// Names a value: `key in FILE` when the file set it, else the environment variable
    /// (a flag is named by its variable too).
    fn name(&self, key: &str, variable: &str) -> String {
        match self
            .figment
            .find_metadata(key)
            .and_then(|metadata| metadata.source.as_ref())
        {
            Some(figment::Source::File(path)) => format!("{key} in {}", path.display()),
            _ => variable.to_owned(),
        }
    }

    /// The value with the name of where it came from.
    fn pick(&self, value: Option<Text>, key: &str, variable: &str) -> Option<(String, String)> {
        value.map(|value| (value.into_string(), self.name(key, variable)))
    }
}

/// Adds the set values to `dict`.
fn put(dict: &mut Dict, entries: &[(&str, Option<String>)]) {
    for (key, value) in entries {
        if let Some(value) = value {
            dict.insert((*key).to_owned(), Value::from(value.clone()));
        }
    }
}

fn path_text(path: &Option<PathBuf>) -> Option<String> {
    path.as_ref().map(|path| path.display().to_string())
}

impl StorageArgs {
    fn overrides(&self, dict: &mut Dict) {
        put(
            dict,
            &[
                ("data_dir", path_text(&self.data_dir)),
                ("database_url", self.database_url.clone()),
                ("database_pool", self.database_pool.clone()),
                ("encryption_key", self.encryption_key.clone()),
                ("encryption_keys", self.encryption_keys.clone()),
                ("kek", self.kek.kek.clone()),
                ("kek_file", path_text(&self.kek.kek_file)),
            ],
        );
    }

    /// The database settings (the file's other keys are checked for typos, not read).
    pub fn resolve(&self) -> anyhow::Result<Storage> {
        let mut overrides = Dict::new();
        self.overrides(&mut overrides);
        let layers = Layers::new(self.config.as_deref(), overrides)?;
        let raw: Raw = layers.extract()?;
        Storage::from_raw(&layers, &raw)
    }
}

impl ServeArgs {
    /// Reads the config file (if any) and merges it under the flags and environment.
    /// Every error names the bad setting.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let admin_token = match (&self.admin_token_file, &self.admin_token) {
            (Some(_), Some(_)) => bail!("set TOKENVISOR_ADMIN_TOKEN or TOKENVISOR_ADMIN_TOKEN_FILE, not both"),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read TOKENVISOR_ADMIN_TOKEN_FILE {}", path.display()))?;
                Some(admin_token(&text, "TOKENVISOR_ADMIN_TOKEN_FILE")?.expose().to_owned())
            }
            (None, token) => token.clone(),
        };
        let mut overrides = Dict::new();
        self.storage.overrides(&mut overrides);
        put(
            &mut overrides,
            &[
                ("admin_addr", self.admin_addr.clone()),
                ("admin_header_timeout", self.admin_header_timeout.clone()),
                ("admin_idle_timeout", self.admin_idle_timeout.clone()),
                ("admin_max_connections", self.admin_max_connections.clone()),
                ("metrics_addr", self.metrics_addr.clone()),
                ("admin_token", admin_token),
                ("auth_failures_per_minute", self.auth_failures_per_minute.clone()),
                ("audit_retention", self.audit_retention.clone()),
                ("return_to_hosts", self.return_to_hosts.clone()),
                ("public_url", self.public_url.clone()),
                ("refresh_lead", self.refresh_lead.clone()),
                ("min_validity", self.min_validity.clone()),
                ("min_spacing", self.min_spacing.clone()),
                ("retry_base", self.retry_base.clone()),
                ("retry_cap", self.retry_cap.clone()),
                ("startup_spread", self.startup_spread.clone()),
                ("cluster_lease", self.cluster_lease.clone()),
                ("cluster", self.cluster.clone()),
                ("advertise_url", self.advertise_url.clone()),
                ("partition_lease", self.partition_lease.clone()),
                ("replica_id", self.replica_id.clone()),
                ("token_wait", self.token_wait.clone()),
                ("request_timeout", self.request_timeout.clone()),
                ("retry_after_cap", self.retry_after_cap.clone()),
                ("probe_interval", self.probe_interval.clone()),
                ("allow_insecure_endpoints", self.allow_insecure_endpoints.clone()),
            ],
        );
        put(
            &mut overrides,
            &[
                ("admin_tls_cert", path_text(&self.admin_tls_cert)),
                ("admin_tls_key", path_text(&self.admin_tls_key)),
                ("admin_tls_reload", self.admin_tls_reload.clone()),
            ],
        );
        let mut webhooks = Dict::new();
        put(
            &mut webhooks,
            &[
                ("urls", self.webhook_urls.clone()),
                ("secret", self.webhook_secret.clone()),
                ("max_attempts", self.webhook_max_attempts.clone()),
                ("max_age", self.webhook_max_age.clone()),
                ("outbox_cap", self.webhook_outbox_cap.clone()),
            ],
        );
        if !webhooks.is_empty() {
            overrides.insert("webhooks".to_owned(), Value::from(webhooks));
        }
        let layers = Layers::new(self.storage.config.as_deref(), overrides)?;
        let raw: Raw = layers.extract()?;
        Config::from_raw(&layers, raw)
    }
}

/// What the admin CLI reads of the server's settings: the data directory (for its
/// generated `admin.token`) and the admin token, from the file under the flags and
/// environment. Other keys are ignored.
pub fn client_token(
    config: Option<&Path>,
    data_dir: Option<&Path>,
    admin_token: Option<String>,
) -> anyhow::Result<Option<SecretString>> {
    let mut overrides = Dict::new();
    put(
        &mut overrides,
        &[
            ("data_dir", data_dir.map(|dir| dir.display().to_string())),
            ("admin_token", admin_token),
        ],
    );
    let layers = Layers::new(config, overrides)?;
    let raw: ClientRaw = layers.extract()?;
    if let Some(token) = raw.admin_token {
        return Ok(Some(SecretString::new(token.into_string().trim())));
    }
    let dir = raw
        .data_dir
        .map(|dir| PathBuf::from(dir.into_string()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    read_token_file(&dir.join(ADMIN_TOKEN_FILE))
}

const DEFAULT_DATA_DIR: &str = "./tokenvisor-data";
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The database settings, resolved.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Explicit database URL, if any.
    pub database_url: Option<String>,
    /// Most pooled PostgreSQL connections.
    pub database_pool: u32,
    /// Explicit encryption key, if any.
    pub encryption_key: Option<SecretString>,
    /// Explicit key list (`label:base64,...`, the primary first), if any; wrapped by
    /// `kek` when that is set.
    pub encryption_keys: Option<SecretString>,
    /// The key-encryption key of `encryption_keys`, if the keys are wrapped.
    pub kek: Option<Kek>,
}

/// The resolved configuration of `serve`.
#[derive(Debug)]
pub struct Config {
    /// The database settings.
    pub storage: Storage,
    /// Admin API address.
    pub admin_addr: SocketAddr,
    /// Timeouts and the connection cap of the admin API (and of the metrics address).
    pub transport: crate::transport::TransportLimits,
    /// `TOKENVISOR_ADMIN_TLS_CERT`, `_KEY`, `_RELOAD`: the admin API over TLS.
    pub admin_tls: Option<crate::transport::TlsFiles>,
    /// `TOKENVISOR_METRICS_ADDR`: `/metrics` without credentials there, instead of behind
    /// the admin token on the admin address.
    pub metrics_addr: Option<SocketAddr>,
    /// Explicit admin token, if any.
    pub admin_token: Option<SecretString>,
    /// Public base URL (no trailing slash), if set.
    pub public_url: Option<String>,
    /// The library's settings (schedule, waits, cluster lease, insecure hosts), read
    /// by `TokenvisorConfig::from_lookup` (like `from_env`) from the merged layers.
    pub library: TokenvisorConfig,
    /// Webhook delivery, when URLs are configured.
    pub webhooks: Option<WebhookConfig>,
    /// Limits of webhook delivery, for configured endpoints and those added through the API.
    pub webhook_limits: WebhookLimits,
    /// How this process shares the work with other replicas on PostgreSQL.
    pub cluster: ClusterSettings,
    /// `TOKENVISOR_AUTH_FAILURES_PER_MINUTE` (0: no limit).
    pub auth_failures_per_minute: u32,
    /// `TOKENVISOR_AUDIT_RETENTION`.
    pub audit_retention: std::time::Duration,
    /// `TOKENVISOR_RETURN_TO_HOSTS`.
    pub return_to_hosts: Vec<String>,
}

/// `TOKENVISOR_CLUSTER`, `TOKENVISOR_ADVERTISE_URL`, `TOKENVISOR_PARTITION_LEASE`,
/// `TOKENVISOR_REPLICA_ID`.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Share the work on PostgreSQL (default on).
    pub enabled: bool,
    /// Where the others reach this replica's admin API.
    pub advertise_url: Option<String>,
    /// The partition lease.
    pub lease: std::time::Duration,
    /// An explicit replica id.
    pub replica_id: Option<String>,
}

impl Storage {
    fn from_raw(layers: &Layers, raw: &Raw) -> anyhow::Result<Self> {
        let data_dir = raw
            .data_dir
            .clone()
            .map(|dir| PathBuf::from(dir.into_string()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = match layers.pick(raw.database_url.clone(), "database_url", "TOKENVISOR_DATABASE_URL") {
            Some((url, name)) => {
                let url = url.trim().to_owned();
                if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    bail!("invalid {name}: must start with sqlite://, postgres:// or postgresql://");
                }
                Some(url)
            }
            None => None,
        };
        let database_pool = match layers.pick(raw.database_pool.clone(), "database_pool", "TOKENVISOR_DATABASE_POOL") {
            Some((text, name)) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| anyhow::anyhow!("invalid {name}: {text:?} must be a number from 1 to 1000"))?,
            None => tokenvisor_store::sql::POSTGRES_POOL_SIZE,
        };
        let encryption_key = raw
            .encryption_key
            .clone()
            .map(|key| SecretString::new(key.into_string().trim()));
        let encryption_keys = raw
            .encryption_keys
            .clone()
            .map(|keys| SecretString::new(keys.into_string().trim()));
        if encryption_key.is_some() && encryption_keys.is_some() {
            bail!(
                "both TOKENVISOR_ENCRYPTION_KEY and TOKENVISOR_ENCRYPTION_KEYS are set: keep one \
                 (TOKENVISOR_ENCRYPTION_KEYS=\"new:...,old:...\" holds several keys, the primary first)"
            );
        }
        let kek = Kek::from_parts(
            layers.pick(raw.kek.clone(), "kek", "TOKENVISOR_KEK"),
            layers
                .pick(raw.kek_file.clone(), "kek_file", "TOKENVISOR_KEK_FILE")
                .map(|(path, name)| (PathBuf::from(path), name)),
        )?;
        if let Some(kek) = &kek {
            if encryption_key.is_some() {
                bail!(
                    "{} is set with TOKENVISOR_ENCRYPTION_KEY: a key-encryption key unwraps \
                     TOKENVISOR_ENCRYPTION_KEYS (wrapped keys from `tokenvisor keys wrap`), not a plain key",
                    kek.source()
                );
            }
            if encryption_keys.is_none() {
                bail!(
                    "{} is set but TOKENVISOR_ENCRYPTION_KEYS is not: set it to the wrapped keys \
                     (`tokenvisor keys generate --wrapped` or `tokenvisor keys wrap`), the primary first",
                    kek.source()
                );
            }
        }
        Ok(Self {
            data_dir,
            database_url,
            database_pool,
            encryption_key,
            encryption_keys,
            kek,
        })
    }
}

/// The library's variables and the file keys that set them.
const LIBRARY_SETTINGS: [(&str, &str); 12] = [
    ("TOKENVISOR_REFRESH_LEAD", "refresh_lead"),
    ("TOKENVISOR_MIN_VALIDITY", "min_validity"),
    ("TOKENVISOR_MIN_SPACING", "min_spacing"),
    ("TOKENVISOR_RETRY_BASE", "retry_base"),
    ("TOKENVISOR_RETRY_CAP", "retry_cap"),
    ("TOKENVISOR_STARTUP_SPREAD", "startup_spread"),
    ("TOKENVISOR_CLUSTER_LEASE", "cluster_lease"),
    ("TOKENVISOR_TOKEN_WAIT", "token_wait"),
    ("TOKENVISOR_REQUEST_TIMEOUT", "request_timeout"),
    ("TOKENVISOR_RETRY_AFTER_CAP", "retry_after_cap"),
    ("TOKENVISOR_PROBE_INTERVAL", "probe_interval"),
    ("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "allow_insecure_endpoints"),
];

impl Config {
    fn from_raw(layers: &Layers, raw: Raw) -> anyhow::Result<Self> {
        let storage = Storage::from_raw(layers, &raw)?;
        let admin_addr = match layers.pick(raw.admin_addr, "admin_addr", "TOKENVISOR_ADMIN_ADDR") {
            Some((addr, name)) => addr
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| anyhow::anyhow!("invalid {name}: {addr:?} is not an address like 127.0.0.1:7070"))?,
            None => SocketAddr::from(([127, 0, 0, 1], 7070)),
        };
        let transport_duration = |value: Option<(String, String)>,
                                  default: u64|
         -> anyhow::Result<std::time::Duration> {
            match value {
                Some((value, name)) => tokenvisor_supervisor::parse_duration(&value)
                    .ok()
                    .and_then(|duration| duration.to_std().ok())
                    .filter(|duration| !duration.is_zero())
                    .ok_or_else(|| anyhow::anyhow!("invalid {name}: {value:?} must be a positive duration like 10s")),
                None => Ok(std::time::Duration::from_secs(default)),
            }
        };
        let header_timeout = transport_duration(
            layers.pick(
                raw.admin_header_timeout,
                "admin_header_timeout",
                "TOKENVISOR_ADMIN_HEADER_TIMEOUT",
            ),
            10,
        )?;
        let idle_timeout = transport_duration(
            layers.pick(
                raw.admin_idle_timeout,
                "admin_idle_timeout",
                "TOKENVISOR_ADMIN_IDLE_TIMEOUT",
            ),
            60,
        )?;
        let max_connections = match layers.pick(
            raw.admin_max_connections,
            "admin_max_connections",
            "TOKENVISOR_ADMIN_MAX_CONNECTIONS",
        ) {
            Some((text, name)) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| anyhow::anyhow!("invalid {name}: {text:?} must be a number from 1 to 1000000"))?,
            None => 1024,
        };
        let transport = crate::transport::TransportLimits {
            header_timeout,
            idle_timeout,
            max_connections,
        };
        let admin_tls = admin_tls(layers, raw.admin_tls_cert, raw.admin_tls_key, raw.admin_tls_reload)?;
        let metrics_addr = match layers.pick(raw.metrics_addr, "metrics_addr", "TOKENVISOR_METRICS_ADDR") {
            Some((addr, name)) => Some(
                addr.trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| anyhow::anyhow!("invalid {name}: {addr:?} is not an address like 127.0.0.1:9464"))?,
            ),
            None => None,
        };
        let admin_token = match layers.pick(raw.admin_token, "admin_token", "TOKENVISOR_ADMIN_TOKEN") {
            Some((token, name)) => Some(admin_token(&token, &name)?),
            None => None,
        };
        let auth_failures_per_minute = match layers.pick(
            raw.auth_failures_per_minute,
            "auth_failures_per_minute",
            "TOKENVISOR_AUTH_FAILURES_PER_MINUTE",
        ) {
            Some((text, name)) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 1_000_000)
                .ok_or_else(|| {
                    anyhow::anyhow!("invalid {name}: {text:?} must be a number from 0 (no limit) to 1000000")
                })?,
            None => 30,
        };
        let audit_retention = match layers.pick(raw.audit_retention, "audit_retention", "TOKENVISOR_AUDIT_RETENTION") {
            Some((value, name)) => tokenvisor_supervisor::parse_duration(&value)
                .ok()
                .and_then(|age| age.to_std().ok())
                .filter(|age| !age.is_zero())
                .ok_or_else(|| anyhow::anyhow!("invalid {name}: {value:?} must be a positive duration like 90d"))?,
            None => std::time::Duration::from_secs(90 * 24 * 3600),
        };
        let return_to_hosts = match layers.pick(raw.return_to_hosts, "return_to_hosts", "TOKENVISOR_RETURN_TO_HOSTS") {
            Some((value, name)) => {
                let hosts: Vec<String> = value
                    .split(',')
                    .map(|host| host.trim().to_ascii_lowercase())
                    .filter(|host| !host.is_empty())
                    .collect();
                if let Some(bad) = hosts
                    .iter()
                    .find(|host| host.contains(['/', ':', '@', ' ', '*']) || url::Host::parse(host).is_err())
                {
                    anyhow::bail!(
                        "invalid {name}: {bad:?} is not a host name (give hosts like app.example.com, comma-separated)"
                    );
                }
                hosts
            }
            None => Vec::new(),
        };
        let public_url = match layers.pick(raw.public_url, "public_url", "TOKENVISOR_PUBLIC_URL") {
            Some((url, name)) => Some(http_url(&url, &name)?),
            None => None,
        };

        // The library's settings: the same TOKENVISOR_* variables an embedder's
        // `TokenvisorConfig::from_env()` reads, read by the library from the merged layers.
        let library_values = [
            raw.refresh_lead,
            raw.min_validity,
            raw.min_spacing,
            raw.retry_base,
            raw.retry_cap,
            raw.startup_spread,
            raw.cluster_lease,
            raw.token_wait,
            raw.request_timeout,
            raw.retry_after_cap,
            raw.probe_interval,
            raw.allow_insecure_endpoints,
        ];
        let values: HashMap<&'static str, (String, String)> = LIBRARY_SETTINGS
            .into_iter()
            .zip(library_values)
            .filter_map(|((variable, key), value)| layers.pick(value, key, variable).map(|picked| (variable, picked)))
            .collect();
        let library = TokenvisorConfig::from_lookup(|name| values.get(name).map(|(value, _)| Ok(value.clone())))
            .map_err(|error| {
                // Name where the bad value came from: the variable, or the file's key.
                let name = values
                    .get(error.variable.as_str())
                    .map(|(_, name)| name.clone())
                    .unwrap_or(error.variable);
                anyhow::anyhow!("invalid {name}: {}", error.reason)
            })?;

        let cluster = ClusterSettings {
            enabled: match layers.pick(raw.cluster, "cluster", "TOKENVISOR_CLUSTER") {
                None => true,
                Some((value, name)) => match value.trim().to_ascii_lowercase().as_str() {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    _ => bail!("invalid {name}: {value:?} must be on or off"),
                },
            },
            advertise_url: match layers.pick(raw.advertise_url, "advertise_url", "TOKENVISOR_ADVERTISE_URL") {
                Some((url, name)) => Some(http_url(&url, &name)?),
                None => None,
            },
            lease: match layers.pick(raw.partition_lease, "partition_lease", "TOKENVISOR_PARTITION_LEASE") {
                Some((value, name)) => {
                    let lease = tokenvisor_supervisor::parse_duration(&value)
                        .map_err(|error| anyhow::anyhow!("invalid {name}: {error}"))?
                        .to_std()
                        .map_err(|_| anyhow::anyhow!("invalid {name}: must be positive"))?;
                    if !(std::time::Duration::from_secs(2)..=std::time::Duration::from_secs(300)).contains(&lease) {
                        bail!("invalid {name}: {value:?} must be between 2s and 5m");
                    }
                    lease
                }
                None => std::time::Duration::from_secs(10),
            },
            replica_id: match layers.pick(raw.replica_id, "replica_id", "TOKENVISOR_REPLICA_ID") {
                Some((id, name)) => {
                    let id = id.trim().to_owned();
                    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
                    if id.is_empty() || id.len() > 64 || !id.chars().all(valid) {
                        bail!("invalid {name}: 1 to 64 characters from A-Z a-z 0-9 - _ .");
                    }
                    Some(id)
                }
                None => None,
            },
        };

        let raw_webhooks = raw.webhooks.unwrap_or_default();
        let number = |value: Option<Text>, key: &str, variable: &str, max: u64| -> anyhow::Result<Option<u64>> {
            match layers.pick(value, key, variable) {
                Some((text, name)) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .map(Some)
                    .ok_or_else(|| anyhow::anyhow!("invalid {name}: {text:?} must be a number from 1 to {max}")),
                None => Ok(None),
            }
        };
        let defaults = WebhookLimits::default();
        let webhook_limits = WebhookLimits {
            max_attempts: number(
                raw_webhooks.max_attempts.clone(),
                "webhooks.max_attempts",
                "TOKENVISOR_WEBHOOK_MAX_ATTEMPTS",
                1000,
            )?
            .map_or(defaults.max_attempts, |n| n as u32),
            max_age: match layers.pick(
                raw_webhooks.max_age.clone(),
                "webhooks.max_age",
                "TOKENVISOR_WEBHOOK_MAX_AGE",
            ) {
                Some((value, name)) => tokenvisor_supervisor::parse_duration(&value)
                    .ok()
                    .and_then(|age| age.to_std().ok())
                    .filter(|age| !age.is_zero())
                    .ok_or_else(|| anyhow::anyhow!("invalid {name}: {value:?} must be a positive duration like 24h"))?,
                None => defaults.max_age,
            },
            outbox_cap: number(
                raw_webhooks.outbox_cap.clone(),
                "webhooks.outbox_cap",
                "TOKENVISOR_WEBHOOK_OUTBOX_CAP",
                10_000_000,
            )?
            .unwrap_or(defaults.outbox_cap),
        };
        let urls = match layers.pick(raw_webhooks.urls, "webhooks.urls", "TOKENVISOR_WEBHOOK_URLS") {
            Some((list, name)) => split_list(&list)
                .iter()
                .map(|u| WebhookConfig::parse_url(u))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| anyhow::anyhow!("invalid {name}: {error}"))?,
            None => Vec::new(),
        };
        let secret = layers.pick(raw_webhooks.secret, "webhooks.secret", "TOKENVISOR_WEBHOOK_SECRET");
        let webhooks = match (urls.is_empty(), secret) {
            (true, _) => None,
            (false, None) => bail!(
                "invalid TOKENVISOR_WEBHOOK_SECRET: required when webhook URLs are configured (generate one: {})",
                "whsec_$(head -c32 /dev/urandom | base64)"
            ),
            (false, Some((secret, name))) => {
                let secret =
                    WebhookSecret::parse(&secret).map_err(|error| anyhow::anyhow!("invalid {name}: {error}"))?;
                Some(WebhookConfig::new(urls, secret))
            }
        };

        Ok(Config {
            storage,
            admin_addr,
            transport,
            admin_tls,
            metrics_addr,
            admin_token,
            public_url,
            library,
            webhooks,
            webhook_limits,
            cluster,
            auth_failures_per_minute,
            audit_retention,
            return_to_hosts,
        })
    }
}

/// The admin API's TLS files: both or neither; the reload interval from 1 s to 1 h.
fn admin_tls(
    layers: &Layers,
    cert: Option<Text>,
    key: Option<Text>,
    reload: Option<Text>,
) -> anyhow::Result<Option<crate::transport::TlsFiles>> {
    let cert = layers.pick(cert, "admin_tls_cert", "TOKENVISOR_ADMIN_TLS_CERT");
    let key = layers.pick(key, "admin_tls_key", "TOKENVISOR_ADMIN_TLS_KEY");
    let reload_interval = match layers.pick(reload, "admin_tls_reload", "TOKENVISOR_ADMIN_TLS_RELOAD") {
        Some((value, name)) => tokenvisor_supervisor::parse_duration(&value)
            .ok()
            .and_then(|every| every.to_std().ok())
            .filter(|every| (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600)).contains(every))
            .ok_or_else(|| anyhow::anyhow!("invalid {name}: {value:?} must be a duration from 1s to 1h"))?,
        None => std::time::Duration::from_secs(5),
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some((cert, _)), Some((key, _))) => Ok(Some(crate::transport::TlsFiles {
            cert: PathBuf::from(cert.trim()),
            key: PathBuf::from(key.trim()),
            reload_interval,
        })),
        (Some((_, set)), None) | (None, Some((_, set))) => {
            bail!("{set} is set: set both TOKENVISOR_ADMIN_TLS_CERT and TOKENVISOR_ADMIN_TLS_KEY, or neither")
        }
    }
}

/// An admin token: at least 16 characters, no spaces; errors name the setting.
pub fn admin_token(token: &str, name: &str) -> anyhow::Result<SecretString> {
    let token = token.trim();
    if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("invalid {name}: must be at least 16 characters without spaces");
    }
    Ok(SecretString::new(token))
}

/// An http(s) URL with a host, without a trailing slash; errors name the setting.
fn http_url(url: &str, name: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url.trim()).map_err(|error| anyhow::anyhow!("invalid {name}: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("invalid {name}: must be an http(s) URL with a host");
    }
    Ok(url.trim().trim_end_matches('/').to_owned())
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

impl Storage {
    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.default_database_file().display()),
        }
    }

    /// The embedded default SQLite file in the data directory.
    pub fn default_database_file(&self) -> PathBuf {
        self.data_dir.join("tokenvisor.db")
    }

    /// Whether the database is the embedded default SQLite file.
    pub fn is_embedded_default(&self) -> bool {
        self.database_url.is_none()
    }

    /// The key file in the data directory.
    pub fn key_file(&self) -> PathBuf {
        self.data_dir.join("encryption.key")
    }

    /// The journal of token sets the database did not take yet (replayed at start).
    pub fn journal_file(&self) -> PathBuf {
        self.data_dir.join("pending-tokens.journal")
    }

    /// Locks the data directory (`replica.lock`) for as long as the returned file is
    /// open: two `serve` processes never share one (its journal, its SQLite database,
    /// its replica id). A second one is refused with a message naming the directory.
    pub fn lock_data_dir(&self) -> anyhow::Result<std::fs::File> {
        self.ensure_data_dir()?;
        let lock_path = self.data_dir.join("replica.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("failed to open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another tokenvisor serve uses the data directory {} (TOKENVISOR_DATA_DIR): stop it, or give this one its own",
                self.data_dir.display()
            );
        }
        Ok(lock)
    }

    /// The generated admin token's file in the data directory.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.join(ADMIN_TOKEN_FILE)
    }

    /// Whether keys are configured (not taken from the key file).
    pub fn has_configured_keys(&self) -> bool {
        self.encryption_key.is_some() || self.encryption_keys.is_some()
    }

    /// The configured keys, else the key file's, else `None` (nothing is generated).
    pub async fn existing_keyring(&self) -> anyhow::Result<Option<Keyring>> {
        if let Some(keys) = &self.encryption_keys {
            let keyring = match &self.kek {
                Some(kek) => tokenvisor_store::keys::unwrap_key_list(kek.key_encryption_key(), keys.expose())
                    .await
                    .with_context(|| format!("invalid TOKENVISOR_ENCRYPTION_KEYS (wrapped keys, {})", kek.source()))?,
                None => Keyring::from_key_list(keys.expose()).context("invalid TOKENVISOR_ENCRYPTION_KEYS")?,
            };
            return Ok(Some(keyring));
        }
        if let Some(key) = &self.encryption_key {
            let keyring = Keyring::from_base64(key.expose(), &[]).context("invalid TOKENVISOR_ENCRYPTION_KEY")?;
            return Ok(Some(keyring));
        }
        let path = self.key_file();
        Keyring::load_file(&path).with_context(|| format!("failed to read key file {}", path.display()))
    }

    /// The keyring: the configured key, or the key file. When neither exists, a new key
    /// is generated and returned with `Some(path)`: the caller writes it there only once
    /// the store has accepted it (a database encrypted with another key is never
    /// paired with a new key file).
    pub async fn keyring(&self) -> anyhow::Result<(Keyring, Option<PathBuf>)> {
        if let Some(keyring) = self.existing_keyring().await? {
            return Ok((keyring, None));
        }
        let (keyring, _) = Keyring::generate();
        Ok((keyring, Some(self.key_file())))
    }

    /// Creates the data directory (mode 0700 where it is new).
    pub fn ensure_data_dir(&self) -> anyhow::Result<()> {
        create_private_dir(&self.data_dir)
    }
}

impl Config {
    /// This replica's id: configured, or read from (generated once into) the data
    /// directory's `replica.id`, so a restarted replica takes its partitions back at once.
    /// Call with the data directory locked ([`Storage::lock_data_dir`]).
    pub fn replica_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.cluster.replica_id {
            return Ok(id.clone());
        }
        let path = self.storage.data_dir.join("replica.id");
        if let Ok(id) = std::fs::read_to_string(&path)
            && !id.trim().is_empty()
        {
            return Ok(id.trim().to_owned());
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && h.len() <= 40 && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or_else(|| "replica".to_owned());
        let id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        std::fs::write(&path, &id).with_context(|| format!("failed to write {}", path.display()))?;
        Ok(id)
    }

    /// The supervisor configuration.
    pub fn tokenvisor_config(&self) -> TokenvisorConfig {
        self.library.clone()
    }

    /// The admin token: configured, or read from (or generated into) the data directory's
    /// `admin.token` (mode 0600). Returns the token and the file it lives in, if any.
    pub fn admin_token_or_generate(&self) -> anyhow::Result<(SecretString, Option<PathBuf>)> {
        if let Some(token) = &self.admin_token {
            return Ok((token.clone(), None));
        }
        let path = self.storage.admin_token_file();
        if let Some(token) = read_token_file(&path)? {
            return Ok((token, Some(path)));
        }
        let bytes: [u8; 32] = rand::random();
        let token = format!(
            "tv_{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        );
        write_private_file(&path, &token)
            .with_context(|| format!("failed to write admin token file {}", path.display()))?;
        Ok((SecretString::new(token), Some(path)))
    }
}

fn read_token_file(path: &Path) -> anyhow::Result<Option<SecretString>> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(SecretString::new(text.trim()))),
        Ok(_) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("failed to read admin token file {}", path.display())),
    }
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .with_context(|| format!("failed to create data directory {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library's reading of `vars` (whatever its duration type).
    fn library(vars: &[(&str, &str)]) -> TokenvisorConfig {
        TokenvisorConfig::from_lookup(|name| {
            vars.iter()
                .find(|(variable, _)| *variable == name)
                .map(|(_, value)| Ok((*value).to_owned()))
        })
        .expect("valid")
    }

    fn with_file(path: &Path) -> ServeArgs {
        ServeArgs {
            storage: StorageArgs {
                config: Some(path.to_owned()),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        }
    }

    #[tokio::test]
    async fn several_keys_are_read_the_primary_first_and_never_with_the_single_key() {
        let first = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let second = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
        let storage = StorageArgs {
            encryption_keys: Some(format!("new:{second},old:{first}")),
            ..StorageArgs::default()
        }
        .resolve()
        .expect("valid");
        let keyring = storage.existing_keyring().await.expect("keys").expect("configured");
        assert_eq!(keyring.key_ids().len(), 2);
        assert_eq!(keyring.label(keyring.primary_key_id()), Some("new"));
        assert!(storage.has_configured_keys());

        let message = StorageArgs {
            encryption_key: Some(first.to_owned()),
            encryption_keys: Some(format!("new:{second}")),
            ..StorageArgs::default()
        }
        .resolve()
        .expect_err("both")
        .to_string();
        assert!(
            message.contains("TOKENVISOR_ENCRYPTION_KEY and TOKENVISOR_ENCRYPTION_KEYS"),
            "{message}"
        );
        assert!(!message.contains(first) && !message.contains(second), "{message}");

        let bad = StorageArgs {
            encryption_keys: Some(format!("new:{second},NEW:{first}")),
            ..StorageArgs::default()
        }
        .resolve()
        .expect("resolves");
        let message = format!("{:#}", bad.existing_keyring().await.expect_err("bad label"));
        assert!(
            message.contains("TOKENVISOR_ENCRYPTION_KEYS") && message.contains("key label"),
            "{message}"
        );
        assert!(!message.contains(first) && !message.contains(second), "{message}");
    }

    #[tokio::test]
    async fn wrapped_keys_are_unwrapped_by_the_key_encryption_key_from_a_variable_or_a_file() {
        use tokenvisor_store::keys::{LocalKek, wrap_key};
        let kek_text = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
        let other_kek = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=";
        let kek = LocalKek::from_base64(kek_text).expect("kek");
        let (new, old) = ([2u8; 32], [1u8; 32]);
        let wrapped = format!(
            "{},{}",
            wrap_key(&kek, "new", &new).await.expect("wrap"),
            wrap_key(&kek, "old", &old).await.expect("wrap")
        );
        let plain = Keyring::new(new, vec![old]);
        let dir = tempfile::tempdir().expect("tempdir");
        let kek_file = dir.path().join("kek");
        std::fs::write(&kek_file, format!("{kek_text}\n")).expect("write");
        for kek in [
            KekArgs {
                kek: Some(kek_text.to_owned()),
                kek_file: None,
            },
            KekArgs {
                kek: None,
                kek_file: Some(kek_file.clone()),
            },
        ] {
            let storage = StorageArgs {
                encryption_keys: Some(wrapped.clone()),
                kek,
                ..StorageArgs::default()
            }
            .resolve()
            .expect("valid");
            let keyring = storage.existing_keyring().await.expect("unwraps").expect("configured");
            assert_eq!(keyring.key_ids(), plain.key_ids(), "the same data keys");
            assert_eq!(keyring.label(keyring.primary_key_id()), Some("new"));
        }

        // Debug output of the arguments shows neither the KEK nor the keys.
        let args = StorageArgs {
            encryption_keys: Some(wrapped.clone()),
            kek: KekArgs {
                kek: Some(kek_text.to_owned()),
                kek_file: None,
            },
            ..StorageArgs::default()
        };
        let debug = format!("{args:?}");
        assert!(!debug.contains(kek_text) && !debug.contains(&wrapped), "{debug}");

        // Another KEK: refused, naming where it came from, echoing no key.
        let storage = StorageArgs {
            encryption_keys: Some(wrapped.clone()),
            kek: KekArgs {
                kek: Some(other_kek.to_owned()),
                kek_file: None,
            },
            ..StorageArgs::default()
        }
        .resolve()
        .expect("resolves");
        let message = format!("{:#}", storage.existing_keyring().await.expect_err("other KEK"));
        assert!(
            message.contains("TOKENVISOR_KEK") && message.contains("does not unwrap key \"new\""),
            "{message}"
        );
        assert!(!message.contains(kek_text) && !message.contains(other_kek), "{message}");

        // Plain keys under a KEK fail to unwrap rather than being taken as they are.
        let plain_list = "new:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
        let storage = StorageArgs {
            encryption_keys: Some(plain_list.to_owned()),
            kek: KekArgs {
                kek: Some(kek_text.to_owned()),
                kek_file: None,
            },
            ..StorageArgs::default()
        }
        .resolve()
        .expect("resolves");
        assert!(storage.existing_keyring().await.is_err());

        // Refused combinations, each naming the settings.
        let cases = [
            (
                KekArgs {
                    kek: Some(kek_text.to_owned()),
                    kek_file: Some(kek_file.clone()),
                },
                Some(wrapped.clone()),
                None,
                "set TOKENVISOR_KEK or TOKENVISOR_KEK_FILE, not both",
            ),
            (
                KekArgs {
                    kek: Some(kek_text.to_owned()),
                    kek_file: None,
                },
                None,
                None,
                "TOKENVISOR_ENCRYPTION_KEYS is not",
            ),
            (
                KekArgs {
                    kek: Some(kek_text.to_owned()),
                    kek_file: None,
                },
                None,
                Some("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=".to_owned()),
                "with TOKENVISOR_ENCRYPTION_KEY",
            ),
            (
                KekArgs {
                    kek: None,
                    kek_file: Some(dir.path().join("missing")),
                },
                Some(wrapped.clone()),
                None,
                "cannot read TOKENVISOR_KEK_FILE",
            ),
            (
                KekArgs {
                    kek: Some("not base64!".to_owned()),
                    kek_file: None,
                },
                Some(wrapped.clone()),
                None,
                "invalid TOKENVISOR_KEK",
            ),
        ];
        for (kek, encryption_keys, encryption_key, expected) in cases {
            let message = format!(
                "{:#}",
                StorageArgs {
                    encryption_keys,
                    encryption_key,
                    kek,
                    ..StorageArgs::default()
                }
                .resolve()
                .expect_err(expected)
            );
            assert!(message.contains(expected), "{expected}: {message}");
            assert!(!message.contains(kek_text), "{message}");
        }
    }

    #[test]
    fn the_environment_overrides_the_file_and_errors_name_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenvisor.toml");
        std::fs::write(
            &path,
            "admin_addr = \"127.0.0.1:9000\"\nrefresh_lead = \"10m\"\nmin_validity = \"30s\"\n[webhooks]\nurls = [\"http://127.0.0.1:1/hook\"]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        )
        .expect("write");
        let settings = ServeArgs {
            refresh_lead: Some("5m".into()),
            ..with_file(&path)
        };
        let config = settings.resolve().expect("valid");
        let expected = library(&[("TOKENVISOR_REFRESH_LEAD", "5m"), ("TOKENVISOR_MIN_VALIDITY", "30s")]);
        assert_eq!(config.library.schedule.lead, expected.schedule.lead);
        assert_eq!(config.library.schedule.min_validity, expected.schedule.min_validity);
        assert_eq!(config.admin_addr.port(), 9000);
        assert_eq!(config.webhooks.as_ref().map(|w| w.urls.len()), Some(1));

        let bad = ServeArgs {
            min_validity: Some("soon".into()),
            ..with_file(&path)
        };
        let message = bad.resolve().expect_err("invalid").to_string();
        assert!(message.contains("TOKENVISOR_MIN_VALIDITY"), "{message}");

        std::fs::write(&path, "refresh_lead = \"forever\"\n").expect("write");
        let message = with_file(&path).resolve().expect_err("invalid").to_string();
        assert!(message.contains("refresh_lead in"), "{message}");

        std::fs::write(&path, "refresh_leed = \"1m\"\n").expect("write");
        let message = with_file(&path).resolve().expect_err("unknown key").to_string();
        assert!(message.contains("refresh_leed"), "{message}");

        let missing = dir.path().join("missing.toml");
        let message = with_file(&missing).resolve().expect_err("no file").to_string();
        assert!(message.contains("missing.toml"), "{message}");
    }

    #[test]
    fn the_admin_transport_settings_have_defaults_and_refuse_nonsense() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenvisor.toml");
        std::fs::write(
            &path,
            "admin_idle_timeout = \"90s\"\nmetrics_addr = \"127.0.0.1:9464\"\n",
        )
        .expect("write");
        let config = with_file(&path).resolve().expect("valid");
        assert_eq!(config.transport.header_timeout, std::time::Duration::from_secs(10));
        assert_eq!(config.transport.idle_timeout, std::time::Duration::from_secs(90));
        assert_eq!(config.transport.max_connections, 1024);
        assert_eq!(config.metrics_addr.map(|addr| addr.port()), Some(9464));

        let set = ServeArgs {
            admin_header_timeout: Some("2s".into()),
            admin_max_connections: Some("5".into()),
            ..with_file(&path)
        };
        let config = set.resolve().expect("valid");
        assert_eq!(config.transport.header_timeout, std::time::Duration::from_secs(2));
        assert_eq!(config.transport.max_connections, 5);

        for (bad, variable) in [
            (
                ServeArgs {
                    admin_header_timeout: Some("0s".into()),
                    ..with_file(&path)
                },
                "TOKENVISOR_ADMIN_HEADER_TIMEOUT",
            ),
            (
                ServeArgs {
                    admin_max_connections: Some("0".into()),
                    ..with_file(&path)
                },
                "TOKENVISOR_ADMIN_MAX_CONNECTIONS",
            ),
            (
                ServeArgs {
                    metrics_addr: Some("localhost".into()),
                    ..with_file(&path)
                },
                "TOKENVISOR_METRICS_ADDR",
            ),
        ] {
            let message = bad.resolve().expect_err("invalid").to_string();
            assert!(message.contains(variable), "{message}");
        }
    }

    #[test]
    fn the_admin_tls_files_come_in_pairs_and_reload_within_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenvisor.toml");
        std::fs::write(&path, "admin_tls_cert = \"/etc/tokenvisor/tls.crt\"\n").expect("write");
        let message = with_file(&path)
            .resolve()
            .expect_err("a cert without a key")
            .to_string();
        assert!(
            message.contains("admin_tls_cert") && message.contains("TOKENVISOR_ADMIN_TLS_KEY"),
            "{message}"
        );
        let both = ServeArgs {
            admin_tls_key: Some("/etc/tokenvisor/tls.key".into()),
            ..with_file(&path)
        };
        let files = both.resolve().expect("valid").admin_tls.expect("tls");
        assert_eq!(files.cert, std::path::PathBuf::from("/etc/tokenvisor/tls.crt"));
        assert_eq!(files.key, std::path::PathBuf::from("/etc/tokenvisor/tls.key"));
        assert_eq!(files.reload_interval, std::time::Duration::from_secs(5));
        let too_often = ServeArgs {
            admin_tls_key: Some("/etc/tokenvisor/tls.key".into()),
            admin_tls_reload: Some("100ms".into()),
            ..with_file(&path)
        };
        let message = too_often.resolve().expect_err("too often").to_string();
        assert!(message.contains("TOKENVISOR_ADMIN_TLS_RELOAD"), "{message}");
    }

    #[test]
    fn every_file_key_keeps_its_type_and_the_layers_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenvisor.toml");
        std::fs::write(
            &path,
            "database_pool = 8\nallow_insecure_endpoints = [\"127.0.0.1\", \"localhost\"]\ncluster = \"off\"\n\
             partition_lease = \"30s\"\nretry_cap = \"1h 30m\"\ndata_dir = \"/tmp/from-file\"\n\
             [webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        )
        .expect("write");
        let config = with_file(&path).resolve().expect("valid");
        assert_eq!(config.storage.database_pool, 8);
        assert_eq!(config.library.allow_insecure_hosts, vec!["127.0.0.1", "localhost"]);
        assert!(!config.cluster.enabled);
        assert_eq!(config.cluster.lease, std::time::Duration::from_secs(30));
        let expected = library(&[("TOKENVISOR_RETRY_CAP", "90m")]);
        assert_eq!(config.library.schedule.retry_cap, expected.schedule.retry_cap);
        assert_eq!(config.storage.data_dir, PathBuf::from("/tmp/from-file"));
        assert!(config.webhooks.is_none(), "a secret alone configures no webhook");

        // A flag (or its variable) over the file, key by key, nested tables included.
        let config = ServeArgs {
            storage: StorageArgs {
                config: Some(path.clone()),
                database_pool: Some("4".into()),
                ..StorageArgs::default()
            },
            webhook_urls: Some("http://127.0.0.1:1/a, http://127.0.0.1:1/b".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.storage.database_pool, 4);
        assert_eq!(config.webhooks.as_ref().map(|w| w.urls.len()), Some(2));
        assert_eq!(config.storage.data_dir, PathBuf::from("/tmp/from-file"));

        std::fs::write(&path, "database_pool = 0\n").expect("write");
        let message = with_file(&path).resolve().expect_err("out of range").to_string();
        assert!(message.contains("database_pool in"), "{message}");
    }

    #[test]
    fn storage_settings_ignore_the_server_settings() {
        // `migrate` and `status` do not validate what only `serve` uses.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenvisor.toml");
        std::fs::write(&path, "[webhooks]\nurls = [\"http://127.0.0.1:1/hook\"]\n").expect("write");
        let storage = StorageArgs {
            config: Some(path),
            ..StorageArgs::default()
        }
        .resolve()
        .expect("storage settings");
        assert_eq!(storage.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn durations_without_a_unit_are_refused_with_an_example() {
        let message = ServeArgs {
            refresh_lead: Some("15".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect_err("no unit")
        .to_string();
        assert!(message.contains("TOKENVISOR_REFRESH_LEAD"), "{message}");
        assert!(message.contains("15m"), "{message}");
    }

    #[test]
    fn webhook_urls_need_a_secret() {
        let settings = ServeArgs {
            webhook_urls: Some("http://127.0.0.1:1/hook".into()),
            ..ServeArgs::default()
        };
        let message = settings.resolve().expect_err("no secret").to_string();
        assert!(message.contains("TOKENVISOR_WEBHOOK_SECRET"), "{message}");
    }

    #[test]
    fn webhook_limits_are_read_and_checked() {
        let settings = ServeArgs {
            webhook_max_attempts: Some("3".into()),
            webhook_max_age: Some("1h 30m".into()),
            webhook_outbox_cap: Some("500".into()),
            ..ServeArgs::default()
        };
        let limits = settings.resolve().expect("valid").webhook_limits;
        assert_eq!(
            limits,
            WebhookLimits {
                max_attempts: 3,
                max_age: std::time::Duration::from_secs(5400),
                outbox_cap: 500
            }
        );
        assert_eq!(
            ServeArgs::default().resolve().expect("valid").webhook_limits,
            WebhookLimits::default()
        );
        for (field, bad) in [
            ("TOKENVISOR_WEBHOOK_MAX_ATTEMPTS", "0"),
            ("TOKENVISOR_WEBHOOK_MAX_AGE", "10"),
        ] {
            let settings = if field.ends_with("ATTEMPTS") {
                ServeArgs {
                    webhook_max_attempts: Some(bad.into()),
                    ..ServeArgs::default()
                }
            } else {
                ServeArgs {
                    webhook_max_age: Some(bad.into()),
                    ..ServeArgs::default()
                }
            };
            let message = settings.resolve().expect_err(bad).to_string();
            assert!(message.contains(field), "{message}");
        }
    }
}
