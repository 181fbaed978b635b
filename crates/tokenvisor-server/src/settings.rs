//! Settings: a TOML file (`--config`), then environment variables and flags, which
//! override it. Only the binary reads them; the libraries take values.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokenvisor_admin::{WebhookConfig, WebhookSecret};
use tokenvisor_core::SecretString;
use tokenvisor_store::Keyring;
use tokenvisor_supervisor::TokenvisorConfig;

/// What flags and environment variables say (each overrides the config file).
#[derive(Debug, Default, clap::Args)]
pub struct Settings {
    /// TOML configuration file (environment variables and flags override it).
    #[arg(long, global = true, env = "TOKENVISOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database, the generated encryption key and admin token
    /// [default: ./tokenvisor-data].
    #[arg(long, global = true, env = "TOKENVISOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL (`sqlite://PATH` or `postgres://...`); default: SQLite in the data directory.
    #[arg(long, global = true, env = "TOKENVISOR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Most pooled PostgreSQL connections of this process (1 to 1000) [default: 32].
    #[arg(long, global = true, env = "TOKENVISOR_DATABASE_POOL")]
    pub database_pool: Option<String>,
    /// Base64 AES-256 key for tokens at rest; default: a key file in the data directory,
    /// generated on first run.
    #[arg(long, global = true, env = "TOKENVISOR_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Address of the admin API [default: 127.0.0.1:7070].
    #[arg(long, global = true, env = "TOKENVISOR_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Bearer token of the admin API; default: generated into the data directory.
    #[arg(long, global = true, env = "TOKENVISOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Public base URL of this service (the OAuth callback is `{public_url}/oauth/callback`)
    /// [default: http://ADMIN_ADDR].
    #[arg(long, global = true, env = "TOKENVISOR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Refresh this long before expiry (e.g. `15m`) [default: 15m].
    #[arg(long, global = true, env = "TOKENVISOR_REFRESH_LEAD")]
    pub refresh_lead: Option<String>,
    /// Tokens handed out stay valid at least this long (e.g. `60s`) [default: 60s].
    #[arg(long, global = true, env = "TOKENVISOR_MIN_VALIDITY")]
    pub min_validity: Option<String>,
    /// Two refreshes of one connection are at least this far apart [default: 10s].
    #[arg(long, global = true, env = "TOKENVISOR_MIN_SPACING")]
    pub min_spacing: Option<String>,
    /// First retry delay after a transient failure [default: 2s].
    #[arg(long, global = true, env = "TOKENVISOR_RETRY_BASE")]
    pub retry_base: Option<String>,
    /// Longest retry delay after transient failures [default: 5m].
    #[arg(long, global = true, env = "TOKENVISOR_RETRY_CAP")]
    pub retry_cap: Option<String>,
    /// Start-up refreshes of tokens already due are spread over this window [default: 10s].
    #[arg(long, global = true, env = "TOKENVISOR_STARTUP_SPREAD")]
    pub startup_spread: Option<String>,
    /// Several replicas on one database: a refresh holds the connection's lease in the
    /// database this long, so only one replica calls the provider (raised to at least 35 s, the token request timeouts + 10 s) [default: off].
    #[arg(long, global = true, env = "TOKENVISOR_CLUSTER_LEASE")]
    pub cluster_lease: Option<String>,
    /// On PostgreSQL, replicas on the same database share the work (partitioned
    /// ownership): `on` or `off` [default: on; SQLite always runs alone].
    #[arg(long, global = true, env = "TOKENVISOR_CLUSTER")]
    pub cluster: Option<String>,
    /// Where the other replicas reach this one's admin API (requests for connections it
    /// owns are forwarded there) [default: TOKENVISOR_PUBLIC_URL].
    #[arg(long, global = true, env = "TOKENVISOR_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// A replica that stops heartbeating loses its partitions this long after its last
    /// renewal (heartbeat: a fifth of it) [default: 10s].
    #[arg(long, global = true, env = "TOKENVISOR_PARTITION_LEASE")]
    pub partition_lease: Option<String>,
    /// This replica's id among the replicas [default: generated once into the data directory].
    #[arg(long, global = true, env = "TOKENVISOR_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// A token request to a provider (connection included) gives up after this long [default: 20s].
    #[arg(long, global = true, env = "TOKENVISOR_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Longest a token read waits for a refresh before answering 504 `timeout` [default: 5s].
    #[arg(long, global = true, env = "TOKENVISOR_TOKEN_WAIT")]
    pub token_wait: Option<String>,
    /// A provider's Retry-After is honoured up to this long (and never past the token's expiry) [default: 15m].
    #[arg(long, global = true, env = "TOKENVISOR_RETRY_AFTER_CAP")]
    pub retry_after_cap: Option<String>,
    /// While a connection backs off with an expired token, a reading caller may probe the provider this often [default: 3s].
    #[arg(long, global = true, env = "TOKENVISOR_PROBE_INTERVAL")]
    pub probe_interval: Option<String>,
    /// Hosts that token endpoints may use over plain HTTP (comma-separated).
    #[arg(long, global = true, env = "TOKENVISOR_ALLOW_INSECURE_ENDPOINTS")]
    pub allow_insecure_endpoints: Option<String>,
    /// Webhook endpoints receiving the events (comma-separated URLs).
    #[arg(long, global = true, env = "TOKENVISOR_WEBHOOK_URLS")]
    pub webhook_urls: Option<String>,
    /// Webhook signing secret, `whsec_<base64>`.
    #[arg(long, global = true, env = "TOKENVISOR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

/// The TOML file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    database_pool: Option<u32>,
    encryption_key: Option<String>,
    admin_addr: Option<String>,
    admin_token: Option<String>,
    public_url: Option<String>,
    refresh_lead: Option<String>,
    min_validity: Option<String>,
    min_spacing: Option<String>,
    retry_base: Option<String>,
    retry_cap: Option<String>,
    startup_spread: Option<String>,
    cluster_lease: Option<String>,
    cluster: Option<String>,
    advertise_url: Option<String>,
    partition_lease: Option<String>,
    replica_id: Option<String>,
    token_wait: Option<String>,
    request_timeout: Option<String>,
    retry_after_cap: Option<String>,
    probe_interval: Option<String>,
    allow_insecure_endpoints: Option<Vec<String>>,
    webhooks: Option<FileWebhooks>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhooks {
    urls: Option<Vec<String>>,
    secret: Option<String>,
}

/// The resolved configuration.
#[derive(Debug)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Explicit database URL, if any.
    pub database_url: Option<String>,
    /// Most pooled PostgreSQL connections.
    pub database_pool: u32,
    /// Explicit encryption key, if any.
    pub encryption_key: Option<SecretString>,
    /// Admin API address.
    pub admin_addr: SocketAddr,
    /// Explicit admin token, if any.
    pub admin_token: Option<SecretString>,
    /// Public base URL (no trailing slash), if set.
    pub public_url: Option<String>,
    /// The library's settings (schedule, waits, cluster lease, insecure hosts), read
    /// like `TokenvisorConfig::from_env` with the file under the environment.
    pub library: TokenvisorConfig,
    /// Webhook delivery, when URLs are configured.
    pub webhooks: Option<WebhookConfig>,
    /// How this process shares the work with other replicas on PostgreSQL.
    pub cluster: ClusterSettings,
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

/// Where a value came from, for error messages that name the bad setting.
struct Source<'a> {
    env: &'static str,
    file_key: &'static str,
    file: Option<&'a Path>,
}

impl Source<'_> {
    fn name(&self, from_env: bool) -> String {
        match (from_env, self.file) {
            (true, _) | (false, None) => self.env.to_owned(),
            (false, Some(path)) => format!("{} in {}", self.file_key, path.display()),
        }
    }
}

/// The flag/environment value, else the file value, with the name of where it came from.
fn pick<T>(env_value: Option<T>, file_value: Option<T>, source: &Source<'_>) -> Option<(T, String)> {
    match (env_value, file_value) {
        (Some(value), _) => Some((value, source.name(true))),
        (None, Some(value)) => Some((value, source.name(false))),
        (None, None) => None,
    }
}

impl Settings {
    /// Reads the config file (if any) and merges it under the flags and environment.
    /// Every error names the bad setting.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file_path = self.config.as_deref();
        let file: FileConfig = match file_path {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("failed to read the config file {} (TOKENVISOR_CONFIG)", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|error| anyhow::anyhow!("invalid config file {}: {}", path.display(), error.message()))?
            }
            None => FileConfig::default(),
        };
        let source = |env: &'static str, file_key: &'static str| Source {
            env,
            file_key,
            file: file_path,
        };

        let data_dir = pick(
            self.data_dir.clone(),
            file.data_dir,
            &source("TOKENVISOR_DATA_DIR", "data_dir"),
        )
        .map(|(dir, _)| dir)
        .unwrap_or_else(|| PathBuf::from("./tokenvisor-data"));
        let database_url = match pick(
            self.database_url.clone(),
            file.database_url,
            &source("TOKENVISOR_DATABASE_URL", "database_url"),
        ) {
            Some((url, name)) => {
                let url = url.trim().to_owned();
                if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    bail!("invalid {name}: must start with sqlite://, postgres:// or postgresql://");
                }
                Some(url)
            }
            None => None,
        };
        let database_pool = match (&self.database_pool, file.database_pool) {
            (Some(text), _) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    anyhow::anyhow!("invalid TOKENVISOR_DATABASE_POOL: {text:?} must be a number from 1 to 1000")
                })?,
            (None, Some(n)) if (1..=1000).contains(&n) => n,
            (None, Some(n)) => bail!(
                "invalid {}: {n} must be from 1 to 1000",
                source("TOKENVISOR_DATABASE_POOL", "database_pool").name(false)
            ),
            (None, None) => tokenvisor_store::sql::POSTGRES_POOL_SIZE,
        };
        let encryption_key = pick(
            self.encryption_key.clone(),
            file.encryption_key,
            &source("TOKENVISOR_ENCRYPTION_KEY", "encryption_key"),
        )
        .map(|(key, _)| SecretString::new(key.trim()));
        let admin_addr = match pick(
            self.admin_addr.clone(),
            file.admin_addr,
            &source("TOKENVISOR_ADMIN_ADDR", "admin_addr"),
        ) {
            Some((addr, name)) => addr
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| anyhow::anyhow!("invalid {name}: {addr:?} is not an address like 127.0.0.1:7070"))?,
            None => SocketAddr::from(([127, 0, 0, 1], 7070)),
        };
        let admin_token = match pick(
            self.admin_token.clone(),
            file.admin_token,
            &source("TOKENVISOR_ADMIN_TOKEN", "admin_token"),
        ) {
            Some((token, name)) => {
                let token = token.trim().to_owned();
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    bail!("invalid {name}: must be at least 16 characters without spaces");
                }
                Some(SecretString::new(token))
            }
            None => None,
        };
        let public_url = match pick(
            self.public_url.clone(),
            file.public_url,
            &source("TOKENVISOR_PUBLIC_URL", "public_url"),
        ) {
            Some((url, name)) => Some(http_url(&url, &name)?),
            None => None,
        };

        // The library's settings: the same TOKENVISOR_* variables an embedder's
        // `TokenvisorConfig::from_env()` reads, with this file's values under them.
        let library_settings: [(&'static str, &'static str, &Option<String>, Option<String>); 11] = [
            (
                "TOKENVISOR_REFRESH_LEAD",
                "refresh_lead",
                &self.refresh_lead,
                file.refresh_lead,
            ),
            (
                "TOKENVISOR_MIN_VALIDITY",
                "min_validity",
                &self.min_validity,
                file.min_validity,
            ),
            (
                "TOKENVISOR_MIN_SPACING",
                "min_spacing",
                &self.min_spacing,
                file.min_spacing,
            ),
            ("TOKENVISOR_RETRY_BASE", "retry_base", &self.retry_base, file.retry_base),
            ("TOKENVISOR_RETRY_CAP", "retry_cap", &self.retry_cap, file.retry_cap),
            (
                "TOKENVISOR_STARTUP_SPREAD",
                "startup_spread",
                &self.startup_spread,
                file.startup_spread,
            ),
            (
                "TOKENVISOR_CLUSTER_LEASE",
                "cluster_lease",
                &self.cluster_lease,
                file.cluster_lease,
            ),
            ("TOKENVISOR_TOKEN_WAIT", "token_wait", &self.token_wait, file.token_wait),
            (
                "TOKENVISOR_REQUEST_TIMEOUT",
                "request_timeout",
                &self.request_timeout,
                file.request_timeout,
            ),
            (
                "TOKENVISOR_RETRY_AFTER_CAP",
                "retry_after_cap",
                &self.retry_after_cap,
                file.retry_after_cap,
            ),
            (
                "TOKENVISOR_PROBE_INTERVAL",
                "probe_interval",
                &self.probe_interval,
                file.probe_interval,
            ),
        ];
        let mut values: HashMap<&'static str, (String, String)> = library_settings
            .into_iter()
            .filter_map(|(env, key, env_value, file_value)| {
                pick(env_value.clone(), file_value, &source(env, key)).map(|picked| (env, picked))
            })
            .collect();
        let insecure = match (&self.allow_insecure_endpoints, file.allow_insecure_endpoints) {
            (Some(list), _) => Some((list.clone(), "TOKENVISOR_ALLOW_INSECURE_ENDPOINTS".to_owned())),
            (None, Some(list)) => Some((
                list.join(","),
                source("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "allow_insecure_endpoints").name(false),
            )),
            (None, None) => None,
        };
        if let Some(insecure) = insecure {
            values.insert("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", insecure);
        }
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
            enabled: match pick(
                self.cluster.clone(),
                file.cluster,
                &source("TOKENVISOR_CLUSTER", "cluster"),
            ) {
                None => true,
                Some((value, name)) => match value.trim().to_ascii_lowercase().as_str() {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    _ => bail!("invalid {name}: {value:?} must be on or off"),
                },
            },
            advertise_url: match pick(
                self.advertise_url.clone(),
                file.advertise_url,
                &source("TOKENVISOR_ADVERTISE_URL", "advertise_url"),
            ) {
                Some((url, name)) => Some(http_url(&url, &name)?),
                None => None,
            },
            lease: match pick(
                self.partition_lease.clone(),
                file.partition_lease,
                &source("TOKENVISOR_PARTITION_LEASE", "partition_lease"),
            ) {
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
            replica_id: match pick(
                self.replica_id.clone(),
                file.replica_id,
                &source("TOKENVISOR_REPLICA_ID", "replica_id"),
            ) {
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

        let file_webhooks = file.webhooks.unwrap_or_default();
        let urls = match (&self.webhook_urls, file_webhooks.urls) {
            (Some(list), _) => split_list(list)
                .iter()
                .map(|u| WebhookConfig::parse_url(u))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| anyhow::anyhow!("invalid TOKENVISOR_WEBHOOK_URLS: {error}"))?,
            (None, Some(list)) => list
                .iter()
                .map(|u| WebhookConfig::parse_url(u))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| anyhow::anyhow!("invalid webhooks.urls in the config file: {error}"))?,
            (None, None) => Vec::new(),
        };
        let secret = pick(
            self.webhook_secret.clone(),
            file_webhooks.secret,
            &source("TOKENVISOR_WEBHOOK_SECRET", "webhooks.secret"),
        );
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
            data_dir,
            database_url,
            database_pool,
            encryption_key,
            admin_addr,
            admin_token,
            public_url,
            library,
            webhooks,
            cluster,
        })
    }
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

impl Config {
    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("tokenvisor.db").display()),
        }
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

    /// This replica's id: configured, or read from (generated once into) the data
    /// directory's `replica.id`, so a restarted replica takes its partitions back at once.
    /// Call with the data directory locked ([`Config::lock_data_dir`]).
    pub fn replica_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.cluster.replica_id {
            return Ok(id.clone());
        }
        let path = self.data_dir.join("replica.id");
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

    /// The generated admin token's file in the data directory.
    pub fn admin_token_file(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// The supervisor configuration.
    pub fn tokenvisor_config(&self) -> TokenvisorConfig {
        self.library.clone()
    }

    /// The keyring: the configured key, or the key file. When neither exists, a new key
    /// is generated and returned with `Some(path)`: the caller writes it there only once
    /// the store has accepted it (a database encrypted with another key is never
    /// paired with a new key file).
    pub fn keyring(&self) -> anyhow::Result<(Keyring, Option<PathBuf>)> {
        if let Some(key) = &self.encryption_key {
            let keyring = Keyring::from_base64(key.expose(), &[]).context("invalid TOKENVISOR_ENCRYPTION_KEY")?;
            return Ok((keyring, None));
        }
        let path = self.key_file();
        if let Some(keyring) =
            Keyring::load_file(&path).with_context(|| format!("failed to read key file {}", path.display()))?
        {
            return Ok((keyring, None));
        }
        let (keyring, _) = Keyring::generate();
        Ok((keyring, Some(path)))
    }

    /// Creates the data directory (mode 0700 where it is new).
    pub fn ensure_data_dir(&self) -> anyhow::Result<()> {
        create_private_dir(&self.data_dir)
    }

    /// The admin token: configured, or read from (or generated into) the data directory's
    /// `admin.token` (mode 0600). Returns the token and the file it lives in, if any.
    pub fn admin_token_or_generate(&self) -> anyhow::Result<(SecretString, Option<PathBuf>)> {
        if let Some(token) = &self.admin_token {
            return Ok((token.clone(), None));
        }
        let path = self.admin_token_file();
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

    /// The admin token for CLI requests: configured, or the data directory's file.
    pub fn admin_token_for_client(&self) -> anyhow::Result<Option<SecretString>> {
        if let Some(token) = &self.admin_token {
            return Ok(Some(token.clone()));
        }
        read_token_file(&self.admin_token_file())
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

    #[test]
    fn the_environment_overrides_the_file_and_errors_name_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenvisor.toml");
        std::fs::write(
            &path,
            "admin_addr = \"127.0.0.1:9000\"\nrefresh_lead = \"10m\"\nmin_validity = \"30s\"\n[webhooks]\nurls = [\"http://127.0.0.1:1/hook\"]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        )
        .expect("write");
        let settings = Settings {
            config: Some(path.clone()),
            refresh_lead: Some("5m".into()),
            ..Settings::default()
        };
        let config = settings.resolve().expect("valid");
        assert_eq!(config.library.schedule.lead, std::time::Duration::from_secs(300));
        assert_eq!(config.library.schedule.min_validity, std::time::Duration::from_secs(30));
        assert_eq!(config.admin_addr.port(), 9000);
        assert_eq!(config.webhooks.as_ref().map(|w| w.urls.len()), Some(1));

        let bad = Settings {
            config: Some(path.clone()),
            min_validity: Some("soon".into()),
            ..Settings::default()
        };
        let message = bad.resolve().expect_err("invalid").to_string();
        assert!(message.contains("TOKENVISOR_MIN_VALIDITY"), "{message}");

        std::fs::write(&path, "refresh_lead = \"forever\"\n").expect("write");
        let message = Settings {
            config: Some(path.clone()),
            ..Settings::default()
        }
        .resolve()
        .expect_err("invalid")
        .to_string();
        assert!(message.contains("refresh_lead in"), "{message}");

        std::fs::write(&path, "refresh_leed = \"1m\"\n").expect("write");
        let message = Settings {
            config: Some(path),
            ..Settings::default()
        }
        .resolve()
        .expect_err("unknown key")
        .to_string();
        assert!(message.contains("refresh_leed"), "{message}");
    }

    #[test]
    fn webhook_urls_need_a_secret() {
        let settings = Settings {
            webhook_urls: Some("http://127.0.0.1:1/hook".into()),
            ..Settings::default()
        };
        let message = settings.resolve().expect_err("no secret").to_string();
        assert!(message.contains("TOKENVISOR_WEBHOOK_SECRET"), "{message}");
    }
}
