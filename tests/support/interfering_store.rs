//! A real store with a second writer: just before the next compare-and-swap of a
//! connection, another writer (another replica, an operator) changes the row.

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, Integration, IntegrationId, PendingAuthorization, RefreshAttempt,
};
use tokenvisor_store::{CasOutcome, Store, StoreError};

type Edit = Box<dyn FnOnce(&mut Connection) + Send>;

/// Wraps a store; [`InterferingStore::before_next_write`] arms a change that another
/// writer commits right before the next compare-and-swap.
pub struct InterferingStore {
    inner: Arc<dyn Store>,
    pending: Mutex<Option<Edit>>,
}

impl std::fmt::Debug for InterferingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterferingStore").finish()
    }
}

impl InterferingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            pending: Mutex::new(None),
        }
    }

    pub fn before_next_write(&self, edit: impl FnOnce(&mut Connection) + Send + 'static) {
        *self.pending.lock().unwrap() = Some(Box::new(edit));
    }
}

#[async_trait]
impl Store for InterferingStore {
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
        let edit = self.pending.lock().unwrap().take();
        if let Some(edit) = edit
            && let Some(mut current) = self.inner.get_connection(connection.id).await?
        {
            let version = current.version;
            edit(&mut current);
            self.inner.compare_and_swap(&current, version).await?;
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
