//! An in-process [`Store`]: the same compare-and-swap semantics as the SQL store,
//! without a database. Used by paused-time tests and benchmarks, and by embedders
//! who keep tokens elsewhere.

use crate::{ATTEMPT_HISTORY_LIMIT, CasOutcome, LeaseOutcome, Store, StoreError};
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, Integration, IntegrationId, PendingAuthorization, RefreshAttempt,
};

/// An in-memory store. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    integrations: HashMap<IntegrationId, Integration>,
    connections: BTreeMap<ConnectionId, Connection>,
    attempts: HashMap<ConnectionId, VecDeque<RefreshAttempt>>,
    authorizations: HashMap<String, PendingAuthorization>,
    leases: HashMap<ConnectionId, (String, tokio::time::Instant)>,
    writes: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many connection writes (inserts and committed compare-and-swaps) happened.
    pub fn connection_writes(&self) -> u64 {
        self.lock().writes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `connection` passes the filter's conditions (not its cursor); `integrations`
/// names the integrations for the search.
fn matches(
    connection: &Connection,
    filter: &ConnectionFilter,
    integrations: &HashMap<IntegrationId, Integration>,
) -> bool {
    let found = |search: &String| {
        ConnectionFilter::is_valid_search(search)
            && (connection.tenant_id.as_str().starts_with(search.as_str())
                || connection.connection_key.as_str().starts_with(search.as_str())
                || integrations
                    .get(&connection.integration_id)
                    .is_some_and(|integration| integration.name.starts_with(search.as_str())))
    };
    filter.search.as_ref().is_none_or(found)
        && filter.tenant_id.as_ref().is_none_or(|t| *t == connection.tenant_id)
        && filter.status.is_none_or(|s| s == connection.status)
        && filter.integration_id.is_none_or(|i| i == connection.integration_id)
        && filter
            .connection_key
            .as_ref()
            .is_none_or(|k| *k == connection.connection_key)
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.integrations.values().any(|i| i.name == integration.name)
            || inner.integrations.contains_key(&integration.id)
        {
            return Err(StoreError::Conflict(format!("integration {:?}", integration.name)));
        }
        inner.integrations.insert(integration.id, integration.clone());
        Ok(())
    }

    async fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>, StoreError> {
        Ok(self.lock().integrations.get(&id).cloned())
    }

    async fn find_integration_by_name(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        Ok(self.lock().integrations.values().find(|i| i.name == name).cloned())
    }

    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        let mut all: Vec<Integration> = self.lock().integrations.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner
            .integrations
            .values()
            .any(|i| i.name == integration.name && i.id != integration.id)
        {
            return Err(StoreError::Conflict(format!("integration {:?}", integration.name)));
        }
        let Some(stored) = inner.integrations.get_mut(&integration.id) else {
            return Ok(false);
        };
        let created_at = stored.created_at;
        *stored = integration.clone();
        stored.created_at = created_at;
        Ok(true)
    }

    async fn delete_integration(&self, id: IntegrationId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.connections.values().any(|c| c.integration_id == id) {
            return Err(StoreError::Conflict(format!("integration {id} still has connections")));
        }
        inner.authorizations.retain(|_, a| a.integration_id != id);
        Ok(inner.integrations.remove(&id).is_some())
    }

    async fn insert_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.connections.contains_key(&connection.id)
            || inner.connections.values().any(|c| {
                c.integration_id == connection.integration_id
                    && c.tenant_id == connection.tenant_id
                    && c.connection_key == connection.connection_key
            })
        {
            return Err(StoreError::Conflict(format!("connection {}", connection.id)));
        }
        inner.connections.insert(connection.id, connection.clone());
        inner.writes += 1;
        Ok(())
    }

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        Ok(self.lock().connections.get(&id).cloned())
    }

    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError> {
        let inner = self.lock();
        let limit = filter.limit.map_or(usize::MAX, |l| l as usize);
        let mut found: Vec<&Connection> = inner
            .connections
            .values()
            .filter(|c| matches(c, filter, &inner.integrations) && filter.is_after_cursor(c))
            .collect();
        found.sort_by(|left, right| filter.compare(left, right));
        Ok(found.into_iter().take(limit).cloned().collect())
    }

    async fn count_connections(&self, filter: &ConnectionFilter) -> Result<u64, StoreError> {
        let inner = self.lock();
        Ok(inner
            .connections
            .values()
            .filter(|c| matches(c, filter, &inner.integrations))
            .count() as u64)
    }

    async fn connection_summary(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        horizon: chrono::Duration,
    ) -> Result<crate::ConnectionSummary, StoreError> {
        let inner = self.lock();
        let mut by_status = BTreeMap::new();
        let mut degraded = BTreeMap::new();
        let mut summary = crate::ConnectionSummary::default();
        for connection in inner.connections.values() {
            by_status
                .entry((connection.integration_id.0, connection.status.as_str()))
                .or_insert((connection.status, 0))
                .1 += 1;
            if connection.status == tokenvisor_core::ConnectionStatus::Degraded {
                *degraded
                    .entry(connection.last_error.as_ref().map(|error| error.code.clone()))
                    .or_insert(0) += 1;
            }
            if connection.is_active && connection.expires_at > now && connection.expires_at <= now + horizon {
                summary.expiring += 1;
                if connection.next_refresh_at.is_some_and(|at| at < connection.expires_at) {
                    summary.expiring_planned += 1;
                }
            }
        }
        summary.by_status = by_status
            .into_iter()
            .map(|((integration, _), (status, count))| crate::StatusCount {
                integration_id: IntegrationId(integration),
                status,
                count,
            })
            .collect();
        summary.degraded_by_error = degraded.into_iter().collect();
        Ok(summary)
    }

    fn load_supervised(&self) -> BoxStream<'_, Result<Connection, StoreError>> {
        let supervised: Vec<Connection> = self
            .lock()
            .connections
            .values()
            .filter(|c| c.is_active && c.status.is_supervised())
            .cloned()
            .collect();
        futures::stream::iter(supervised.into_iter().map(Ok)).boxed()
    }

    async fn compare_and_swap(&self, connection: &Connection, expected_version: i64) -> Result<CasOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(stored) = inner.connections.get_mut(&connection.id) else {
            return Ok(CasOutcome::Conflict { current: None });
        };
        if stored.version != expected_version {
            return Ok(CasOutcome::Conflict {
                current: Some(Box::new(stored.clone())),
            });
        }
        let mut next = connection.clone();
        next.version = expected_version + 1;
        *stored = next;
        inner.writes += 1;
        Ok(CasOutcome::Committed {
            version: expected_version + 1,
        })
    }

    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        inner.attempts.remove(&id);
        inner.leases.remove(&id);
        Ok(inner.connections.remove(&id).is_some())
    }

    async fn acquire_refresh_lease(
        &self,
        connection: ConnectionId,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        // One process: tokio's clock (paused in tests) is every holder's clock.
        let now = tokio::time::Instant::now();
        let mut inner = self.lock();
        if !inner.connections.contains_key(&connection) {
            return Ok(LeaseOutcome::Missing);
        }
        if let Some((holder, until)) = inner.leases.get(&connection)
            && holder != owner
            && *until >= now
        {
            return Ok(LeaseOutcome::Held {
                owner: holder.clone(),
                remaining: until.duration_since(now),
            });
        }
        inner.leases.insert(connection, (owner.to_owned(), now + lease));
        Ok(LeaseOutcome::Acquired)
    }

    async fn release_refresh_lease(&self, connection: ConnectionId, owner: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.leases.get(&connection).is_some_and(|(holder, _)| holder == owner) {
            inner.leases.remove(&connection);
        }
        Ok(())
    }

    async fn record_attempt(&self, attempt: &RefreshAttempt) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let history = inner.attempts.entry(attempt.connection_id).or_default();
        history.push_front(attempt.clone());
        history.truncate(ATTEMPT_HISTORY_LIMIT as usize);
        Ok(())
    }

    async fn list_attempts(&self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .attempts
            .get(&id)
            .map(|h| h.iter().take(limit as usize).cloned().collect())
            .unwrap_or_default())
    }

    async fn attempts_per_minute(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::MinuteCount>, StoreError> {
        use chrono::{DurationRound as _, TimeDelta};
        let inner = self.lock();
        let mut counts = std::collections::BTreeMap::new();
        for attempt in inner.attempts.values().flatten() {
            if attempt.started_at >= since {
                let minute = attempt
                    .started_at
                    .duration_trunc(TimeDelta::minutes(1))
                    .unwrap_or(attempt.started_at);
                counts
                    .entry((minute, attempt.outcome.as_str()))
                    .or_insert((attempt.outcome, 0))
                    .1 += 1;
            }
        }
        Ok(counts
            .into_iter()
            .map(|((minute, _), (outcome, count))| crate::MinuteCount { minute, outcome, count })
            .collect())
    }

    async fn insert_authorization(&self, authorization: &PendingAuthorization) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let now = authorization.created_at;
        inner.authorizations.retain(|_, pending| pending.expires_at > now);
        if inner.authorizations.contains_key(&authorization.state_hash) {
            return Err(StoreError::Conflict("authorization state".into()));
        }
        inner
            .authorizations
            .insert(authorization.state_hash.clone(), authorization.clone());
        Ok(())
    }

    async fn take_authorization(&self, state_hash: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        Ok(self.lock().authorizations.remove(state_hash))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
