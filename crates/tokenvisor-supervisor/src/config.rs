//! Configuration of an embedded tokenvisor. Libraries take values: the binary (or the
//! embedding application) reads files and environment variables.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{Clock, SchedulePolicy, SystemClock};
use tokenvisor_provider::TokenClientOptions;

/// How many times a crashing connection actor is restarted before the connection
/// escalates like a permanent failure.
#[derive(Debug, Clone, Copy)]
pub struct RestartBudget {
    /// Restarts allowed...
    pub max_restarts: u32,
    /// ...within this window.
    pub within: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            within: Duration::from_secs(600),
        }
    }
}

/// Everything an embedded tokenvisor needs besides its store.
#[derive(Debug, Clone)]
pub struct TokenvisorConfig {
    /// Refresh schedule (lead, minimum validity, spacing, backoff...).
    pub schedule: SchedulePolicy,
    /// Refreshes in flight at once, process-wide.
    pub max_concurrent_refreshes: usize,
    /// Default per-integration limits (integration settings `max_concurrent_refreshes`
    /// and `max_refreshes_per_second` override them).
    pub provider_limits: crate::limits::ProviderLimits,
    /// Restart budget of a crashing connection actor.
    pub restart_budget: RestartBudget,
    /// Hosts that endpoints may reach over plain HTTP (tests, local development).
    pub allow_insecure_hosts: Vec<String>,
    /// Token endpoint client options.
    pub client: TokenClientOptions,
    /// Events kept per slow subscriber.
    pub event_capacity: usize,
    /// The event stream to publish on. Give one (and subscribe to it) before
    /// [`crate::Tokenvisor::start`] to receive the events of start-up refreshes too;
    /// `None` creates one with `event_capacity`.
    pub event_bus: Option<tokenvisor_core::EventBus>,
    /// How long an authorization `state` is accepted.
    pub authorization_ttl: chrono::Duration,
    /// Wall clock (inject [`tokenvisor_core::TokioClock`] in paused-time tests).
    pub clock: Arc<dyn Clock>,
    /// Where tokenvisor's metrics are recorded (see `tokenvisor_supervisor::metrics`);
    /// `None`: the global meter provider's `tokenvisor` meter, taken at start.
    pub meter: Option<opentelemetry::metrics::Meter>,
    /// Cluster-wide single flight, for several replicas on one database: before calling
    /// the provider, a refresh takes the connection's lease in the store for this long
    /// (raised to at least the client's request + connect timeouts + 10 s, 35 s by
    /// default, and renewed while the refresh runs); a replica that finds it held waits
    /// for the holder's commit and adopts its tokens. `None` (the default): one process
    /// per database.
    pub cluster_lease: Option<std::time::Duration>,
}

impl Default for TokenvisorConfig {
    fn default() -> Self {
        Self {
            schedule: SchedulePolicy::default(),
            max_concurrent_refreshes: 64,
            provider_limits: crate::limits::ProviderLimits::default(),
            restart_budget: RestartBudget::default(),
            allow_insecure_hosts: Vec::new(),
            client: TokenClientOptions::default(),
            event_capacity: 4096,
            event_bus: None,
            authorization_ttl: chrono::Duration::minutes(10),
            clock: Arc::new(SystemClock),
            meter: None,
            cluster_lease: None,
        }
    }
}
