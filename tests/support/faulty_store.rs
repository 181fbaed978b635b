//! A real store behind a switch that makes writes fail, to test what happens when the
//! database is unreachable at the wrong moment.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, Integration, IntegrationId, PendingAuthorization, RefreshAttempt,
};
use tokenvisor_store::{CasOutcome, Store, StoreError};

/// Wraps a store; while `fail_writes` is on, connection writes fail as if the database were down.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fail_writes: AtomicBool,
    failed_writes: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fail_writes: AtomicBool::new(false),
            failed_writes: AtomicU64::new(0),
        }
    }

    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Database("injected: database unreachable".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        self.inner.insert_integration(integration).await
    }
    async fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>, StoreError> {
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
        self.check()?;
        self.inner.insert_connection(connection).await
    }
    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
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
        self.check()?;
        self.inner.compare_and_swap(connection, expected_version).await
    }
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete_connection(id).await
    }
    async fn record_attempt(&self, attempt: &RefreshAttempt) -> Result<(), StoreError> {
        self.check()?;
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
