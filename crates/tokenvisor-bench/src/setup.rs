//! What every scenario needs: a database, the fake provider, an integration, and
//! connections inserted in bulk.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionStatus, Integration, IntegrationId, PendingAuthorization,
    RefreshAttempt, SecretString, TenantId,
};
use tokenvisor_store::{CasOutcome, Keyring, SqlStore, Store, StoreError};
use tokenvisor_supervisor::{ProviderLimits, TokenvisorConfig};
use tokenvisor_testkit::FakeProvider;
use tokenvisor_testkit::database::TestDatabase;

/// A fresh PostgreSQL database with the schema and a key.
pub async fn postgres_store() -> anyhow::Result<(TestDatabase, Arc<SqlStore>)> {
    let database = TestDatabase::postgres().await;
    let (keyring, _) = Keyring::generate();
    let store = Arc::new(SqlStore::connect(database.url(), keyring).await?);
    Ok((database, store))
}

/// An integration pointing at the fake provider, inserted into `store`.
pub async fn integration(store: &dyn Store, fake: &FakeProvider) -> anyhow::Result<Integration> {
    let now = Utc::now();
    let integration = Integration {
        id: IntegrationId::new(),
        name: "bench".into(),
        provider: "generic".into(),
        client_id: fake.client_id().into(),
        client_secret: SecretString::new(fake.client_secret()),
        scopes: vec![],
        redirect_uri: None,
        data_center: None,
        token_url: Some(fake.token_url()),
        authorize_url: None,
        revoke_url: None,
        settings: serde_json::Value::Null,
        created_at: now,
        updated_at: now,
    };
    store.insert_integration(&integration).await?;
    Ok(integration)
}

/// A connection of `integration` with these tokens and expiry (lifetime one hour).
pub fn connection(
    integration: IntegrationId,
    label: &str,
    access_token: &str,
    refresh_token: &str,
    expires_at: DateTime<Utc>,
) -> Connection {
    let now = Utc::now();
    Connection {
        id: ConnectionId::new(),
        tenant_id: TenantId::parse(label).unwrap_or_else(|_| TenantId::parse("tenant").expect("valid")),
        integration_id: integration,
        connection_key: tokenvisor_core::ConnectionKey::default(),
        access_token: SecretString::new(access_token),
        refresh_token: Some(SecretString::new(refresh_token)),
        token_type: "Bearer".into(),
        scope: None,
        issued_at: expires_at - chrono::Duration::hours(1),
        expires_at,
        next_refresh_at: None,
        last_refresh_at: None,
        status: ConnectionStatus::Active,
        is_active: true,
        refresh_failures: 0,
        consecutive_failures: 0,
        last_error: None,
        metadata: Default::default(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// Connections with grants issued by the fake (labels `c0`, `c1`...), expiring as `expiry` says.
pub fn granted_connections(
    fake: &FakeProvider,
    integration: IntegrationId,
    count: usize,
    expiry: impl Fn(usize) -> DateTime<Utc>,
) -> Vec<Connection> {
    (0..count)
        .map(|i| {
            let label = format!("c{i}");
            let issued = fake.issue_grant(&label);
            connection(
                integration,
                &label,
                &issued.access_token,
                &issued.refresh_token,
                expiry(i),
            )
        })
        .collect()
}

/// A benchmark configuration: loopback allowed, no jitter or start-up spread (so the
/// planned time of each refresh is known), generous limits.
pub fn config() -> TokenvisorConfig {
    let mut config = TokenvisorConfig {
        allow_insecure_hosts: vec!["127.0.0.1".into()],
        ..TokenvisorConfig::default()
    };
    config.schedule.jitter = std::time::Duration::ZERO;
    config.schedule.startup_spread = std::time::Duration::ZERO;
    config.max_concurrent_refreshes = 64;
    config.provider_limits = ProviderLimits {
        max_concurrent: 64,
        per_second: None,
    };
    config
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Counts the store calls a job makes (reads and writes), around a real store.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
    pub queries: AtomicU64,
    pub commits: AtomicU64,
    /// Record the refresh history in a second transaction (how it was before the
    /// single-transaction commit), to measure the difference in one run.
    pub split_history_commit: bool,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            queries: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            split_history_commit: false,
        }
    }

    fn query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Store calls so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Committed compare-and-swaps so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        self.query();
        self.inner.insert_integration(integration).await
    }
    async fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>, StoreError> {
        self.query();
        self.inner.get_integration(id).await
    }
    async fn find_integration_by_name(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        self.query();
        self.inner.find_integration_by_name(name).await
    }
    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        self.query();
        self.inner.list_integrations().await
    }
    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        self.query();
        self.inner.update_integration(integration).await
    }
    async fn delete_integration(&self, id: IntegrationId) -> Result<bool, StoreError> {
        self.query();
        self.inner.delete_integration(id).await
    }
    async fn count_connections(&self, filter: &ConnectionFilter) -> Result<u64, StoreError> {
        self.query();
        self.inner.count_connections(filter).await
    }
    async fn connection_summary(
        &self,
        now: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Result<tokenvisor_store::ConnectionSummary, StoreError> {
        self.query();
        self.inner.connection_summary(now, horizon).await
    }
    async fn insert_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.query();
        self.inner.insert_connection(connection).await
    }
    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.query();
        self.inner.get_connection(id).await
    }
    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError> {
        self.query();
        self.inner.list_connections(filter).await
    }
    async fn acquire_refresh_lease(
        &self,
        connection: ConnectionId,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<tokenvisor_store::LeaseOutcome, StoreError> {
        self.inner.acquire_refresh_lease(connection, owner, lease).await
    }
    async fn release_refresh_lease(&self, connection: ConnectionId, owner: &str) -> Result<(), StoreError> {
        self.inner.release_refresh_lease(connection, owner).await
    }
    fn load_supervised(&self) -> futures::stream::BoxStream<'_, Result<Connection, StoreError>> {
        self.query();
        self.inner.load_supervised()
    }
    async fn compare_and_swap(&self, connection: &Connection, expected_version: i64) -> Result<CasOutcome, StoreError> {
        self.query();
        let outcome = self.inner.compare_and_swap(connection, expected_version).await?;
        if matches!(outcome, CasOutcome::Committed { .. }) {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }
    async fn commit_refresh(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
    ) -> Result<CasOutcome, StoreError> {
        if self.split_history_commit {
            let outcome = self.compare_and_swap(connection, expected_version).await?;
            if matches!(outcome, CasOutcome::Committed { .. }) {
                self.record_attempt(attempt).await?;
            }
            return Ok(outcome);
        }
        self.query();
        let outcome = self.inner.commit_refresh(connection, expected_version, attempt).await?;
        if matches!(outcome, CasOutcome::Committed { .. }) {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        self.query();
        self.inner.delete_connection(id).await
    }
    async fn record_attempt(&self, attempt: &RefreshAttempt) -> Result<(), StoreError> {
        self.query();
        self.inner.record_attempt(attempt).await
    }
    async fn list_attempts(&self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, StoreError> {
        self.query();
        self.inner.list_attempts(id, limit).await
    }
    async fn attempts_per_minute(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<tokenvisor_store::MinuteCount>, StoreError> {
        self.query();
        self.inner.attempts_per_minute(since).await
    }
    async fn insert_authorization(&self, authorization: &PendingAuthorization) -> Result<(), StoreError> {
        self.query();
        self.inner.insert_authorization(authorization).await
    }
    async fn take_authorization(&self, state_hash: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        self.query();
        self.inner.take_authorization(state_hash).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.query();
        self.inner.ping().await
    }
}

/// Percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index.min(sorted.len() - 1)).copied()
}

/// CPU time (user + system) of process `pid` ("self" for this one), in milliseconds.
pub fn cpu_ms(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) * 1000 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> u64 {
    // Linux reports CPU times in USER_HZ, 100 on every mainstream architecture.
    100
}

/// CPU time of the PostgreSQL backends serving database `name` (their command line
/// names it), in milliseconds.
pub fn postgres_cpu_ms(name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.starts_with("postgres: ") && cmdline.split_whitespace().any(|word| word == name)
                })
                .unwrap_or(false)
        })
        .map(|pid| cpu_ms(&pid))
        .sum()
}
