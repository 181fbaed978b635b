//! The server-side subcommands: `serve`, `migrate`, `status`.

use crate::exit::Exit;
use crate::settings::{Config, Storage};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_admin::{AdminOptions, WebhookDispatcher};
use tokenvisor_core::ConnectionFilter;
use tokenvisor_store::{SqlStore, Store};
use tokenvisor_supervisor::{ClusterConfig, Tokenvisor};
use tokio_util::sync::CancellationToken;

/// Opens the store: migrations run, the key is checked; a newly generated key file is
/// written only after the store accepted the key.
async fn open_store(config: &Storage) -> anyhow::Result<(SqlStore, tokenvisor_store::Keyring)> {
    if config.is_embedded_default() || !config.has_configured_keys() {
        config.ensure_data_dir()?;
    }
    let (keyring, new_key_file) = config.keyring().await?;
    let url = config.database_url();
    let store = SqlStore::connect_with_pool(&url, keyring.clone(), config.database_pool)
        .await
        .map_err(|error| {
            let hint = match &new_key_file {
                Some(path) => format!(" (no key was configured and {} does not exist)", path.display()),
                None => String::new(),
            };
            anyhow::anyhow!("failed to open the database: {error}{hint}")
        })?;
    if let Some(path) = new_key_file {
        keyring
            .write_file(&path)
            .with_context(|| format!("failed to write key file {}", path.display()))?;
        tracing::warn!(path = %path.display(), "generated a new encryption key; back it up: without it the stored tokens cannot be read");
    }
    Ok((store, keyring))
}

/// `tokenvisor serve`: supervise and serve the admin API until SIGINT or SIGTERM, then
/// stop cleanly (the API stops taking requests, in-flight refreshes commit, queued
/// webhooks get a few seconds).
pub async fn serve(config: &Config, telemetry: &crate::telemetry::TelemetryGuard) -> anyhow::Result<()> {
    let signals = ShutdownSignals::listen()?;
    // The port first: a busy one is refused before anything is written anywhere.
    let listener = match tokio::net::TcpListener::bind(config.admin_addr).await {
        Ok(listener) => listener,
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "TOKENVISOR_ADMIN_ADDR {} is in use: another process listens there (stop it or choose another address)",
            config.admin_addr
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot listen on TOKENVISOR_ADMIN_ADDR {}", config.admin_addr));
        }
    };
    let local_addr = listener.local_addr().context("failed to read the admin address")?;
    // TLS files next: a missing or broken certificate is refused before anything is written.
    let admin_tls = match &config.admin_tls {
        Some(files) => Some(crate::transport::ServerTls::load(files.clone()).map_err(anyhow::Error::msg)?),
        None => None,
    };
    // One serve per data directory (its journal, SQLite file and replica id), checked
    // before anything is written there.
    let _data_dir_lock = config.storage.lock_data_dir()?;
    let (store, keyring) = open_store(&config.storage).await?;
    let store = Arc::new(store);
    let backend = store.backend_name();
    let (admin_token, token_file) = {
        if config.admin_token.is_none() {
            config.storage.ensure_data_dir()?;
        }
        config.admin_token_or_generate()?
    };
    if let Some(path) = &token_file {
        tracing::info!(path = %path.display(), "admin API token is in this file (set TOKENVISOR_ADMIN_TOKEN to choose one)");
    }

    // Subscribe the webhooks before starting, so start-up refreshes reach them too.
    let mut tokenvisor_config = config.tokenvisor_config();
    // Tokens the store could not take survive a crash in the data directory.
    config.storage.ensure_data_dir()?;
    tokenvisor_config.journal = Some(tokenvisor_supervisor::JournalConfig {
        path: config.storage.journal_file(),
        keyring,
    });
    let public_url = config.public_url.clone().unwrap_or_else(|| {
        let scheme = if admin_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{local_addr}")
    });
    // On PostgreSQL, replicas share the work unless told not to.
    if backend == "postgres" && config.cluster.enabled {
        let replica_id = config.replica_id()?;
        let advertise_url = config
            .cluster
            .advertise_url
            .clone()
            .unwrap_or_else(|| public_url.clone());
        if local_addr.ip().is_unspecified() && config.cluster.advertise_url.is_none() && config.public_url.is_none() {
            tracing::warn!(
                advertise_url = %advertise_url,
                "set TOKENVISOR_ADVERTISE_URL: the other replicas cannot forward requests to an unspecified address"
            );
        }
        let mut cluster = ClusterConfig::new(replica_id.clone()).with_lease(config.cluster.lease);
        cluster.advertise_url = Some(advertise_url.clone());
        cluster.forward_bearer = Some(admin_token.clone());
        tracing::info!(replica = %replica_id, advertise_url = %advertise_url, lease_ms = config.cluster.lease.as_millis() as u64, "sharing the work with the replicas on this database (TOKENVISOR_CLUSTER=off to run alone)");
        tokenvisor_config.cluster = Some(cluster);
    }
    let event_bus = tokenvisor_core::EventBus::new(tokenvisor_config.event_capacity);
    tokenvisor_config.event_bus = Some(event_bus.clone());
    // Delivery runs whether or not endpoints are configured: endpoints added through the
    // API are delivered to as well.
    let webhooks = Some(
        WebhookDispatcher::start(
            event_bus.subscribe(),
            config.webhook_limits.apply(config.webhooks.clone()),
            store.webhook_outbox(),
        )
        .await
        .context("failed to start webhook delivery")?,
    );
    let tokenvisor = Tokenvisor::start(store, tokenvisor_config)
        .await
        .context("failed to start the supervisor")?;
    tracing::info!(
        database = backend,
        connections = tokenvisor.supervised_count(),
        "tokenvisor is supervising"
    );

    let shutdown = CancellationToken::new();
    // `/metrics`: open on its own address when one is set, else behind the admin token.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on TOKENVISOR_METRICS_ADDR {addr}"))?,
        ),
        None => None,
    };
    let options = AdminOptions {
        metrics: if metrics_listener.is_some() {
            None
        } else {
            telemetry.prometheus()
        },
        shutdown: shutdown.clone(),
        auth_failures_per_minute: config.auth_failures_per_minute,
        return_to_hosts: config.return_to_hosts.clone(),
        audit: tokenvisor_admin::AuditOptions {
            retention: Some(config.audit_retention),
            ..tokenvisor_admin::AuditOptions::default()
        },
        ..AdminOptions::new(admin_token, public_url.clone())
    };
    // The audit writer and anything else the routes must finish before the exit.
    let admin_tasks = options.tasks.clone();
    let app = tokenvisor_admin::router(tokenvisor.clone(), options);
    if let Some(tls) = &admin_tls {
        tokio::spawn(tls.clone().watch(shutdown.clone()));
    }
    tracing::info!(
        addr = %local_addr,
        tls = admin_tls.is_some(),
        public_url = %public_url,
        header_timeout_ms = config.transport.header_timeout.as_millis() as u64,
        idle_timeout_ms = config.transport.idle_timeout.as_millis() as u64,
        max_connections = config.transport.max_connections,
        "admin API listening"
    );
    let metrics_server = match (metrics_listener, telemetry.prometheus()) {
        (Some(listener), Some(renderer)) => {
            let addr = listener.local_addr().context("failed to read the metrics address")?;
            tracing::info!(addr = %addr, "metrics listening (GET /metrics, no credentials)");
            Some(tokio::spawn(crate::transport::serve(
                listener,
                tokenvisor_admin::metrics_router(renderer),
                config.transport,
                None,
                shutdown.clone(),
            )))
        }
        (Some(_), None) => {
            tracing::warn!("TOKENVISOR_METRICS_ADDR is set but metrics are disabled in this process");
            None
        }
        (None, _) => {
            tracing::info!(
                "GET /metrics needs the admin token or an `admin` API key (set TOKENVISOR_METRICS_ADDR to serve it without credentials on a separate address)"
            );
            None
        }
    };
    // The peer address reaches the admin API: failed authentications are limited per
    // client address, and the audit trail names it.
    let server = tokio::spawn(crate::transport::serve(
        listener,
        app,
        config.transport,
        admin_tls,
        shutdown.clone(),
    ));

    signals.wait().await;
    tracing::info!("shutting down: letting in-flight refreshes commit");
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(error = %error, "admin API stopped with an error"),
        Ok(Err(error)) => tracing::warn!(error = %error, "admin API task failed"),
        Err(_) => tracing::warn!("admin API requests still open after 10 s; stopping anyway"),
    }
    if let Some(metrics_server) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), metrics_server).await;
    }
    // The requests answered during the drain are in the audit trail before the exit.
    admin_tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), admin_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("the audit trail's writer did not finish within 10 s; events still queued are lost");
    }
    let report = tokenvisor.shutdown().await;
    if report.uncommitted > 0 {
        tracing::warn!(
            uncommitted = report.uncommitted,
            journaled = report.journaled,
            path = %config.storage.journal_file().display(),
            "some new tokens are not in the database yet; they are committed from the journal at the next start"
        );
    }
    if let Some(webhooks) = webhooks {
        webhooks.shutdown(Duration::from_secs(3)).await;
    }
    Ok(())
}

/// `tokenvisor migrate`.
pub async fn migrate(config: &Storage) -> anyhow::Result<()> {
    if config.is_embedded_default() {
        config.ensure_data_dir()?;
    }
    tokenvisor_store::sql::migrate(&config.database_url())
        .await
        .map_err(|error| Exit::Unavailable.with(anyhow::anyhow!("migration failed: {error}")))?;
    tracing::info!("migrations applied");
    Ok(())
}

/// `tokenvisor status`: a table of connections, read-only. It opens an existing,
/// migrated database with the configured (or key-file) key and writes nothing: no data
/// directory, no database file, no migration, no key file.
pub async fn status(config: &Storage) -> anyhow::Result<()> {
    let url = config.database_url();
    let sqlite_file = sqlite_path(&url);
    if let Some(path) = &sqlite_file
        && !path.exists()
    {
        return Err(Exit::NotFound.msg(format_args!(
            "no database at {}: nothing is stored yet (`tokenvisor serve` or `tokenvisor migrate` creates it; \
             check TOKENVISOR_DATA_DIR / TOKENVISOR_DATABASE_URL); status writes nothing",
            path.display()
        )));
    }
    let keyring = config.existing_keyring().await?.ok_or_else(|| {
        Exit::Usage.msg(format_args!(
            "no encryption key: set TOKENVISOR_ENCRYPTION_KEY or restore the key file {} (status never generates one)",
            config.key_file().display()
        ))
    })?;
    let read_only_url = match &sqlite_file {
        Some(_) if !url.contains("mode=") => format!("{url}{}mode=ro", if url.contains('?') { '&' } else { '?' }),
        _ => url.clone(),
    };
    let mut options = sea_orm::ConnectOptions::new(read_only_url);
    options.sqlx_logging(false).max_connections(2);
    let db = sea_orm::Database::connect(options)
        .await
        .map_err(|error| Exit::Unavailable.with(anyhow::anyhow!("failed to open the database: {error}")))?;
    let store = SqlStore::from_connection_unmigrated(db, keyring)
        .await
        .map_err(|error| anyhow::anyhow!("failed to open the database: {error}"))?;
    let integrations = store.list_integrations().await?;
    let connections = store.list_connections(&ConnectionFilter::default()).await?;
    let now = chrono::Utc::now();
    let mut table = crate::client::new_table(&[
        "TENANT",
        "INTEGRATION",
        "STATUS",
        "EXPIRES IN",
        "FAILURES",
        "LAST REFRESH",
    ]);
    crate::client::align_right(&mut table, &[3, 4]);
    for connection in &connections {
        let integration = integrations
            .iter()
            .find(|i| i.id == connection.integration_id)
            .map(|i| i.name.as_str())
            .unwrap_or("?");
        let last_refresh = connection
            .last_refresh_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "never".into());
        table.add_row(vec![
            connection.tenant_id.to_string(),
            integration.to_owned(),
            connection.status.to_string(),
            human_duration(connection.expires_at - now),
            connection.refresh_failures.to_string(),
            last_refresh,
        ]);
    }
    crate::client::print_table(&table);
    println!("{} connection(s)", connections.len());
    Ok(())
}

/// The file of a `sqlite:` URL (`None` for in-memory databases and other backends).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// `1h 36m`, `5m 3s`, `expired`.
pub fn human_duration(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds();
    if seconds <= 0 {
        return "expired".into();
    }
    let (hours, minutes, secs) = (seconds / 3600, (seconds % 3600) / 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {secs}s")
    }
}

/// SIGINT and SIGTERM listeners, registered when created: a signal that arrives while
/// the service is still starting is not lost (and does not kill the process).
#[cfg(unix)]
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct ShutdownSignals;

#[cfg(not(unix))]
impl ShutdownSignals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self)
    }

    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_an_operator_would_say_them() {
        assert_eq!(human_duration(chrono::Duration::minutes(96)), "1h 36m");
        assert_eq!(human_duration(chrono::Duration::seconds(303)), "5m 3s");
        assert_eq!(human_duration(chrono::Duration::seconds(-1)), "expired");
    }
}
