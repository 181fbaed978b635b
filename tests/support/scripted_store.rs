//! A real store whose reads fail on cue: the next N integration lookups, or every
//! connection read while a switch is on, fail as if the database had a blip at the
//! wrong moment (a spawn, a restart). Writes always go through, after an optional delay
//! (a slow database).

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, Integration, IntegrationId, PendingAuthorization, RefreshAttempt,
};
use tokenvisor_store::{CasOutcome, Store, StoreError};

/// Wraps a store; see [`ScriptedStore::fail_next_integration_reads`] and
/// [`ScriptedStore::set_fail_connection_reads`].
#[derive(Debug)]
pub struct ScriptedStore {
    inner: Arc<dyn Store>,
    integration_read_failures: AtomicU64,
    fail_connection_reads: AtomicBool,
    failed_reads: AtomicU64,
    write_delay: Mutex<Duration>,
}

impl ScriptedStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            integration_read_failures: AtomicU64::new(0),
            fail_connection_reads: AtomicBool::new(false),
            failed_reads: AtomicU64::new(0),
            write_delay: Mutex::new(Duration::ZERO),
        }
    }

    /// Every compare-and-swap of a connection takes `delay` (tokio time) before it runs.
    pub fn set_write_delay(&self, delay: Duration) {
        *self.write_delay.lock().unwrap() = delay;
    }

    /// The next `n` integration lookups by id fail.
    pub fn fail_next_integration_reads(&self, n: u64) {
        self.integration_read_failures.store(n, Ordering::SeqCst);
    }

    /// While on, every read of a connection by id fails.
    pub fn set_fail_connection_reads(&self, fail: bool) {
        self.fail_connection_reads.store(fail, Ordering::SeqCst);
    }

    /// Reads failed so far.
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads.load(Ordering::SeqCst)
    }

    fn injected(&self) -> StoreError {
        self.failed_reads.fetch_add(1, Ordering::SeqCst);
        StoreError::Database("injected: database read failed".into())
    }
}

#[async_trait]
impl Store for ScriptedStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        self.inner.insert_integration(integration).await
    }
    async fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>, StoreError> {
        let armed = self
            .integration_read_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if armed {
            return Err(self.injected());
        }
        self.inner.get_integration(id).await
    }
    async fn find_integration_by_name(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        self.inner.find_integration_by_name(name).await
    }
    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        self.inner.list_integrations().await
    }
    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        self.inner.update_integration(integration).await
    }
    async fn delete_integration(&self, id: IntegrationId) -> Result<bool, StoreError> {
        self.inner.delete_integration(id).await
    }
    async fn count_connections(&self, filter: &ConnectionFilter) -> Result<u64, StoreError> {
        self.inner.count_connections(filter).await
    }
    async fn connection_summary(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        horizon: chrono::Duration,
    ) -> Result<tokenvisor_store::ConnectionSummary, StoreError> {
        self.inner.connection_summary(now, horizon).await
    }
    async fn insert_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        self.inner.insert_connection(connection).await
    }
    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        if self.fail_connection_reads.load(Ordering::SeqCst) {
            return Err(self.injected());
        }
        self.inner.get_connection(id).await
    }
    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError> {
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
        self.inner.load_supervised()
    }
    async fn compare_and_swap(&self, connection: &Connection, expected_version: i64) -> Result<CasOutcome, StoreError> {
        let delay = *self.write_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.inner.compare_and_swap(connection, expected_version).await
    }
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        self.inner.delete_connection(id).await
    }
    async fn record_attempt(&self, attempt: &RefreshAttempt) -> Result<(), StoreError> {
        self.inner.record_attempt(attempt).await
    }
    async fn list_attempts(&self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, StoreError> {
        self.inner.list_attempts(id, limit).await
    }

    async fn attempts_per_minute(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<tokenvisor_store::MinuteCount>, StoreError> {
        self.inner.attempts_per_minute(since).await
    }
    async fn insert_authorization(&self, authorization: &PendingAuthorization) -> Result<(), StoreError> {
        self.inner.insert_authorization(authorization).await
    }
    async fn take_authorization(&self, state_hash: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        self.inner.take_authorization(state_hash).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
