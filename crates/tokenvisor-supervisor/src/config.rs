//! Configuration of an embedded tokenvisor. Libraries take values: the binary (or the
//! embedding application) reads files and environment variables.

use crate::journal::JournalConfig;
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
    pub authorization_ttl: Duration,
    /// Wall clock (inject [`tokenvisor_core::TokioClock`] in paused-time tests).
    pub clock: Arc<dyn Clock>,
    /// Where tokenvisor's metrics are recorded (see `tokenvisor_supervisor::metrics`);
    /// `None`: the global meter provider's `tokenvisor` meter, taken at start. The type
    /// is `opentelemetry` 0.33's: a meter of another version does not compile here (a
    /// global provider of another version would be silently invisible), see
    /// docs/TELEMETRY.md.
    pub meter: Option<opentelemetry::metrics::Meter>,
    /// Cluster-wide single flight, for several replicas on one database: before calling
    /// the provider, a refresh takes the connection's lease in the store for this long
    /// (raised to at least the client's request + connect timeouts + 10 s, 35 s by
    /// default, and renewed while the refresh runs); a replica that finds it held waits
    /// for the holder's commit and adopts its tokens. `None` (the default): one process
    /// per database.
    pub cluster_lease: Option<std::time::Duration>,
    /// Longest a token read ([`crate::Tokens::access_token`],
    /// [`crate::Tokens::token_rejected`]) waits for the connection's owner (a refresh,
    /// a load); then it answers [`crate::TokenError::Timeout`], which is retryable.
    pub token_wait: Duration,
    /// Longest an operation that may wait for a provider call or a commit
    /// ([`crate::Tokens::force_refresh`], deactivate, activate, replace tokens,
    /// remove) waits; then it answers [`crate::TokenError::Timeout`] (the operation is
    /// still applied, in order, when the owner gets to it).
    pub operation_timeout: Duration,
    /// A provider's `Retry-After` is honoured up to this long, and never past the moment
    /// the current token stops being handed out.
    pub retry_after_cap: Duration,
    /// While callers wait on a token that cannot be handed out and the connection backs
    /// off after transient failures, one caller may cut the backoff short with a probe
    /// refresh at most this often per connection (so a client reading every second
    /// gets a token within this long plus one second of the provider's return). Default
    /// 3 s: at 5 s a client reading every second could wait just over 5 s. Probes are
    /// counted per integration: while its provider fails, one probe per interval for all
    /// its connections; once any of its refreshes succeeds, every waiting connection may
    /// refresh on its next read. `Duration::ZERO` turns probes off (readers wait for the
    /// backoff timer).
    pub probe_interval: Duration,
    /// The journal of uncommitted token sets (see [`JournalConfig`]); `None` keeps them
    /// in memory only (a crash while the store is down can then lose rotated tokens).
    pub journal: Option<JournalConfig>,
    /// Share the work with other replicas on the same PostgreSQL database (see
    /// [`crate::cluster`]); `None` (the default): this process supervises every
    /// connection of the database.
    pub cluster: Option<crate::cluster::ClusterConfig>,
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
            authorization_ttl: Duration::from_secs(600),
            clock: Arc::new(SystemClock),
            meter: None,
            cluster_lease: None,
            token_wait: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(60),
            retry_after_cap: Duration::from_secs(15 * 60),
            probe_interval: Duration::from_secs(3),
            journal: None,
            cluster: None,
        }
    }
}
