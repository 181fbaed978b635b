//! What every actor of one tokenvisor instance shares.

use crate::config::TokenvisorConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokenvisor_core::{Clock, EventBus, Integration, IntegrationId, SchedulePolicy};
use tokenvisor_provider::{EndpointError, ResolvedIntegration, TokenClient};
use tokenvisor_store::Store;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub events: EventBus,
    pub client: TokenClient,
    pub config: TokenvisorConfig,
    /// Bounds the refreshes in flight process-wide.
    pub refresh_slots: Semaphore,
    /// Every refresh and store task, so shutdown can wait for them to commit.
    pub tasks: TaskTracker,
    pub registry: Registry,
    /// This instance's metric instruments.
    pub metrics: Metrics,
    /// This instance's name as the owner of refresh leases (unique per start).
    pub instance_id: String,
    /// The journal of uncommitted token sets, when configured.
    pub journal: Option<Arc<crate::journal::Journal>>,
    /// Whether the store currently takes commits (see [`StoreHealth`]).
    pub store_health: StoreHealth,
    /// What this replica owns, when it shares the work with others.
    pub ownership: Option<Arc<crate::cluster::ownership::Ownership>>,
    /// Sends requests to the replicas that own them (with `ownership`).
    pub forwarder: Option<crate::cluster::forward::Forwarder>,
    /// The membership task (with `ownership`).
    pub membership: Option<crate::cluster::membership::Membership>,
    integrations: std::sync::RwLock<std::collections::HashMap<IntegrationId, IntegrationRef>>,
    shutting_down: AtomicBool,
}

impl Shared {
    pub fn new(
        store: Arc<dyn Store>,
        client: TokenClient,
        config: TokenvisorConfig,
        journal: Option<Arc<crate::journal::Journal>>,
    ) -> Result<Self, crate::error::StartError> {
        let (ownership, forwarder, membership) = match &config.cluster {
            Some(cluster) => {
                if store.partitions().is_none() {
                    return Err(crate::error::StartError::Cluster(
                        "replicas share the work only on PostgreSQL (set TOKENVISOR_CLUSTER=off, or use a PostgreSQL database)".into(),
                    ));
                }
                let forwarder = crate::cluster::forward::Forwarder::new(cluster.forward_bearer.clone())
                    .map_err(crate::error::StartError::Client)?;
                (
                    Some(Arc::new(crate::cluster::ownership::Ownership::new(
                        cluster.replica_id.clone(),
                        cluster.lease,
                    ))),
                    Some(forwarder),
                    Some(crate::cluster::membership::Membership::default()),
                )
            }
            None => (None, None, None),
        };
        Ok(Self {
            ownership,
            forwarder,
            membership,
            store,
            clock: config.clock.clone(),
            metrics: Metrics::new(config.meter.as_ref()),
            events: config
                .event_bus
                .clone()
                .unwrap_or_else(|| tokenvisor_core::EventBus::new(config.event_capacity)),
            client,
            refresh_slots: Semaphore::new(config.max_concurrent_refreshes.max(1)),
            config,
            tasks: TaskTracker::new(),
            registry: Registry::default(),
            integrations: Default::default(),
            shutting_down: AtomicBool::new(false),
            instance_id: uuid::Uuid::new_v4().to_string(),
            journal,
            store_health: StoreHealth::default(),
        })
    }

    /// Whether this process supervises the connection `id` (always, without a cluster).
    pub fn serves(&self, id: tokenvisor_core::ConnectionId) -> bool {
        self.ownership
            .as_ref()
            .is_none_or(|ownership| ownership.serves(tokenvisor_core::partition_of(id)))
    }

    /// The fence of a write to connection `id`: `Ok(None)` without a cluster, `Err` when
    /// this replica does not hold the connection's partition (nothing may be written).
    pub fn fence(&self, id: tokenvisor_core::ConnectionId) -> Result<Option<tokenvisor_store::Fence>, NotOwner> {
        match &self.ownership {
            None => Ok(None),
            Some(ownership) => ownership
                .fence(tokenvisor_core::partition_of(id))
                .map(Some)
                .ok_or(NotOwner),
        }
    }

    /// A compare-and-swap of connection `next`, fenced by its partition's epoch in a
    /// cluster ([`tokenvisor_store::CasOutcome::Fenced`] when this replica lost it).
    pub async fn write(
        &self,
        next: &tokenvisor_core::Connection,
        expected_version: i64,
    ) -> Result<tokenvisor_store::CasOutcome, tokenvisor_store::StoreError> {
        let outcome = match self.fence(next.id) {
            Ok(None) => self.store.compare_and_swap(next, expected_version).await,
            Ok(Some(fence)) => self.store.compare_and_swap_fenced(next, expected_version, fence).await,
            Err(NotOwner) => Ok(tokenvisor_store::CasOutcome::Fenced),
        }?;
        if matches!(outcome, tokenvisor_store::CasOutcome::Fenced) {
            self.metrics.fenced();
        }
        Ok(outcome)
    }
}

/// This replica does not hold the connection's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotOwner;

impl Shared {
    /// The runtime of an integration, loaded from the store once and cached.
    pub async fn integration(&self, id: IntegrationId) -> Result<Option<IntegrationRef>, tokenvisor_store::StoreError> {
        if let Some(runtime) = self.integrations.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(Some(runtime.clone()));
        }
        let Some(integration) = self.store.get_integration(id).await? else {
            return Ok(None);
        };
        Ok(Some(self.cache_integration(&integration)))
    }

    /// The limiters of the integrations in use, as they are now.
    pub fn limiter_snapshots(&self) -> Vec<(IntegrationId, crate::limits::LimiterSnapshot)> {
        let integrations = self.integrations.read().unwrap_or_else(|p| p.into_inner());
        integrations
            .iter()
            .map(|(id, runtime)| (*id, runtime.limiter.snapshot()))
            .collect()
    }

    /// The runtime of an integration if it is cached (no store read).
    pub fn cached_integration(&self, id: IntegrationId) -> Option<IntegrationRef> {
        self.integrations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Caches the runtime of an integration already read from the store (a runtime
    /// cached before wins).
    pub fn cache_integration(&self, integration: &Integration) -> IntegrationRef {
        let runtime = Arc::new(IntegrationRuntime::new(integration, &self.config));
        if let Err(error) = &runtime.resolved {
            tracing::error!(integration = %integration.name, error = %error, "integration cannot be used to refresh");
        }
        let mut cache = self.integrations.write().unwrap_or_else(|p| p.into_inner());
        cache.entry(integration.id).or_insert(runtime).clone()
    }

    /// Puts the current version of an integration in the cache, replacing an older one
    /// (by `updated_at`): owners pick it up at their next message, so the next refresh of
    /// every connection uses it. The new runtime starts with fresh limits and probes.
    pub fn replace_integration(&self, integration: &Integration) -> IntegrationRef {
        let mut cache = self.integrations.write().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = cache.get(&integration.id)
            && cached.updated_at >= integration.updated_at
        {
            return cached.clone();
        }
        let runtime = Arc::new(IntegrationRuntime::new(integration, &self.config));
        if let Err(error) = &runtime.resolved {
            tracing::error!(integration = %integration.name, error = %error, "integration cannot be used to refresh");
        }
        cache.insert(integration.id, runtime.clone());
        runtime
    }

    /// Drops a deleted integration from the cache.
    pub fn forget_integration(&self, id: IntegrationId) {
        self.integrations.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Reads an integration from the store again (another replica changed or deleted it).
    pub async fn reload_integration(&self, id: IntegrationId) -> Result<(), tokenvisor_store::StoreError> {
        match self.store.get_integration(id).await? {
            Some(integration) => {
                self.replace_integration(&integration);
            }
            None => self.forget_integration(id),
        }
        Ok(())
    }

    /// Reads every integration from the store again: the periodic safety net for a lost
    /// change notification.
    pub async fn reload_integrations(&self) -> Result<(), tokenvisor_store::StoreError> {
        let stored = self.store.list_integrations().await?;
        let ids: std::collections::HashSet<IntegrationId> = stored.iter().map(|i| i.id).collect();
        for integration in &stored {
            self.replace_integration(integration);
        }
        self.integrations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| ids.contains(id));
        Ok(())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

/// Whether the store takes commits. A failed commit marks it failing; then one probe
/// task reads from the store every second until a read succeeds (or a commit does).
/// While it is failing, connection owners start no refresh that could wait: a token
/// is refreshed early only when the result can be saved.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    failing: AtomicBool,
    probing: AtomicBool,
}

impl StoreHealth {
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn succeeded(&self) {
        self.failing.store(false, Ordering::Release);
    }
}

/// Marks the store failing and starts the probe (one per process).
pub(crate) fn store_failed(shared: &SharedRef) {
    let health = &shared.store_health;
    health.failing.store(true, Ordering::Release);
    if health.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if shared.is_shutting_down() || !shared.store_health.is_failing() {
                shared.store_health.probing.store(false, Ordering::Release);
                return;
            }
            if shared.store.list_integrations().await.is_ok() {
                tracing::info!("the store answers again");
                shared.store_health.succeeded();
                shared.store_health.probing.store(false, Ordering::Release);
                return;
            }
        }
    });
}

/// An integration as its connection actors use it.
#[derive(Debug)]
pub(crate) struct IntegrationRuntime {
    pub name: String,
    /// The version of the integration this runtime was built from.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub provider: String,
    /// The integration resolved against its profile, or why it cannot be used.
    pub resolved: Result<ResolvedIntegration, EndpointError>,
    /// The schedule for its connections (profile limits applied).
    pub policy: SchedulePolicy,
    /// Concurrency and rate limits on its provider calls.
    pub limiter: crate::limits::IntegrationLimiter,
    /// Read probes of its connections during an outage (see [`ProbeGate`]).
    pub probes: ProbeGate,
}

/// Read probes of one integration's connections: while its provider fails, one probe per
/// interval for the whole integration (a thousand connections backing off cost one call
/// per interval, not a thousand); once any refresh of the integration succeeds again,
/// each waiting connection may try at once.
#[derive(Debug, Default)]
pub(crate) struct ProbeGate {
    state: std::sync::Mutex<ProbeState>,
}

#[derive(Debug, Default)]
struct ProbeState {
    last_probe: Option<chrono::DateTime<chrono::Utc>>,
    last_success: Option<chrono::DateTime<chrono::Utc>>,
}

impl ProbeGate {
    /// Whether a connection that last failed at `failed_at` may probe now: the provider
    /// answered another refresh since, or no probe of the integration ran for `interval`
    /// (then this call takes the slot).
    pub fn may_probe(
        &self,
        failed_at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
        interval: chrono::Duration,
    ) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.last_success.is_some_and(|success| success > failed_at) {
            return true;
        }
        if state.last_probe.is_some_and(|probe| probe + interval > now) {
            return false;
        }
        state.last_probe = Some(now);
        true
    }

    /// A refresh of the integration succeeded at `at`.
    pub fn succeeded(&self, at: chrono::DateTime<chrono::Utc>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_success = Some(state.last_success.map_or(at, |last| last.max(at)));
    }
}

impl IntegrationRuntime {
    pub fn new(integration: &Integration, config: &TokenvisorConfig) -> Self {
        let resolved = ResolvedIntegration::resolve(integration, &config.allow_insecure_hosts);
        let policy = match &resolved {
            Ok(resolved) => resolved.schedule_policy(&config.schedule),
            Err(_) => config.schedule.clone(),
        };
        let mut limits = config.provider_limits;
        if let Ok(resolved) = &resolved {
            if let Some(max) = resolved.limits.max_concurrent_refreshes {
                limits.max_concurrent = max;
            }
            if let Some(per_second) = resolved.limits.max_refreshes_per_second {
                limits.per_second = std::num::NonZeroU32::new(per_second);
            }
        }
        Self {
            limiter: crate::limits::IntegrationLimiter::new(limits),
            probes: ProbeGate::default(),
            name: integration.name.clone(),
            updated_at: integration.updated_at,
            provider: integration.provider.clone(),
            resolved,
            policy,
        }
    }
}

/// Shared handle type.
pub(crate) type SharedRef = Arc<Shared>;

/// Shared handle to an integration runtime.
pub(crate) type IntegrationRef = Arc<IntegrationRuntime>;
