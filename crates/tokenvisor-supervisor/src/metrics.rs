//! tokenvisor's OpenTelemetry metrics. The library only records into a
//! [`Meter`] (the one in
//! [`TokenvisorConfig::meter`](crate::TokenvisorConfig::meter), else the global meter
//! provider's `tokenvisor` meter, taken when [`Tokenvisor::start`](crate::Tokenvisor::start)
//! runs); whoever installed the meter provider exports them.
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `tokenvisor.refreshes` | counter | `provider`, `outcome` (`success`, `transient`, `rate_limited`, `permanent`, `misconfigured`, `commit_failed`, `adopted`, `deleted`) |
//! | `tokenvisor.refresh.duration` (s) | histogram | `provider`, `outcome` |
//! | `tokenvisor.connections` | gauge | `status` (`active`, `degraded`, `needs_reauth`, `disabled`, `starting`) |
//! | `tokenvisor.token.soonest_expiry` (s) | gauge | none: seconds until the soonest expiry of a supervised connection's access token |
//! | `tokenvisor.supervised_connections` | gauge | none: connections whose owner (actor) runs in this process and refreshes them (as [`crate::Tokenvisor::supervised_count`]) |
//! | `tokenvisor.owned_partitions` | gauge | none: partitions this replica serves (replicas that share the work; 0 otherwise) |
//! | `tokenvisor.partition.handovers` | counter | `kind` (`gained`, `released`, `lost`): partitions that changed owner to or from this replica |
//! | `tokenvisor.fenced_writes` | counter | none: writes the database refused because this replica no longer owned the partition |
//! | `tokenvisor.escalations` | counter | `provider`, `error.code` |
//! | `tokenvisor.provider.throttled` | counter | `provider`, `source` (`provider`: it answered 429 or its throttling error; `spacing`: tokenvisor held a refresh back to respect the provider's limits) |
//! | `tokenvisor.events.delivered`, `tokenvisor.events.failed` | counters | `sink`, `event` (recorded by the admin channel with [`record_event_delivery`]) |
//! | `tokenvisor.auth.failures` | counter | `reason` (`unknown`, `revoked`, `expired`): admin API credentials refused ([`record_auth_failure`]) |
//! | `tokenvisor.auth.throttled` | counter | none: admin API requests refused 429 after too many failures ([`record_auth_throttled`]) |
//! | `tokenvisor.audit.dropped` | counter | none: audit events not written ([`record_audit_dropped`]) |
//!
//! Prometheus names replace dots with underscores and add unit and `_total` suffixes
//! (`tokenvisor_refreshes_total`, `tokenvisor_refresh_duration_seconds_bucket`...).

use crate::shared::Shared;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use std::collections::BTreeMap;
use std::sync::{OnceLock, Weak};
use tokenvisor_core::Clock;

/// The name of the meter tokenvisor records into when none is configured.
pub const METER_NAME: &str = "tokenvisor";

/// Histogram buckets of refresh durations, in seconds (token endpoints answer in tens of
/// milliseconds to seconds; the client times out after tens of seconds).
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The observable gauges (kept alive with the instance).
type Gauges = (
    ObservableGauge<u64>,
    ObservableGauge<f64>,
    ObservableGauge<u64>,
    ObservableGauge<u64>,
);

/// The instruments of one tokenvisor instance.
pub(crate) struct Metrics {
    refreshes: Counter<u64>,
    refresh_duration: Histogram<f64>,
    escalations: Counter<u64>,
    throttled: Counter<u64>,
    handovers: Counter<u64>,
    fenced: Counter<u64>,
    gauges: OnceLock<Gauges>,
    meter: Meter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(meter: Option<&Meter>) -> Self {
        let meter = meter
            .cloned()
            .unwrap_or_else(|| opentelemetry::global::meter(METER_NAME));
        Self {
            refreshes: meter
                .u64_counter("tokenvisor.refreshes")
                .with_description("Refresh attempts, by provider and outcome")
                .build(),
            refresh_duration: meter
                .f64_histogram("tokenvisor.refresh.duration")
                .with_unit("s")
                .with_description("Duration of refresh attempts (provider call and commit)")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            escalations: meter
                .u64_counter("tokenvisor.escalations")
                .with_description("Connections marked needs_reauth after a permanent failure")
                .build(),
            throttled: meter
                .u64_counter("tokenvisor.provider.throttled")
                .with_description("Refreshes throttled by the provider or held back by its limits")
                .build(),
            handovers: meter
                .u64_counter("tokenvisor.partition.handovers")
                .with_description("Partitions that changed owner to or from this replica")
                .build(),
            fenced: meter
                .u64_counter("tokenvisor.fenced_writes")
                .with_description("Writes refused because this replica no longer owned the partition")
                .build(),
            gauges: OnceLock::new(),
            meter,
        }
    }

    /// Registers the gauges that read the instance's registry when metrics are collected.
    pub(crate) fn observe(&self, shared: Weak<Shared>) {
        let by_status = shared.clone();
        let supervised_of = shared.clone();
        let partitions_of = shared.clone();
        let connections = self
            .meter
            .u64_observable_gauge("tokenvisor.connections")
            .with_description("Connections known to this process, by status")
            .with_callback(move |observer| {
                let Some(shared) = by_status.upgrade() else {
                    return;
                };
                for (status, count) in connections_by_status(&shared) {
                    observer.observe(count, &[KeyValue::new("status", status)]);
                }
            })
            .build();
        let expiry = self
            .meter
            .f64_observable_gauge("tokenvisor.token.soonest_expiry")
            .with_unit("s")
            .with_description("Seconds until the soonest access token expiry of a supervised connection")
            .with_callback(move |observer| {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if let Some(seconds) = soonest_expiry_secs(&shared) {
                    observer.observe(seconds, &[]);
                }
            })
            .build();
        let supervised = self
            .meter
            .u64_observable_gauge("tokenvisor.supervised_connections")
            .with_description("Connections whose owner runs in this process and refreshes them")
            .with_callback(move |observer| {
                let Some(shared) = supervised_of.upgrade() else {
                    return;
                };
                observer.observe(shared.registry.supervised_count() as u64, &[]);
            })
            .build();
        let partitions = self
            .meter
            .u64_observable_gauge("tokenvisor.owned_partitions")
            .with_description("Partitions this replica serves")
            .with_callback(move |observer| {
                let Some(shared) = partitions_of.upgrade() else {
                    return;
                };
                let served = shared
                    .ownership
                    .as_ref()
                    .map_or(0, |ownership| ownership.served_count());
                observer.observe(served as u64, &[]);
            })
            .build();
        let _ = self.gauges.set((connections, expiry, supervised, partitions));
    }

    /// One refresh attempt ended with `outcome` after `seconds`.
    pub(crate) fn refresh(&self, provider: &str, outcome: &'static str, seconds: f64) {
        let attributes = [
            KeyValue::new("provider", provider.to_owned()),
            KeyValue::new("outcome", outcome),
        ];
        self.refreshes.add(1, &attributes);
        self.refresh_duration.record(seconds, &attributes);
    }

    /// `count` partitions were `gained`, `released` or `lost` by this replica.
    pub(crate) fn handovers(&self, count: u64, kind: &'static str) {
        if count > 0 {
            self.handovers.add(count, &[KeyValue::new("kind", kind)]);
        }
    }

    /// The database refused a write fenced by an epoch that moved on.
    pub(crate) fn fenced(&self) {
        self.fenced.add(1, &[]);
    }

    /// A connection was marked `needs_reauth`.
    pub(crate) fn escalation(&self, provider: &str, code: &str) {
        self.escalations.add(
            1,
            &[
                KeyValue::new("provider", provider.to_owned()),
                KeyValue::new("error.code", code.to_owned()),
            ],
        );
    }

    /// A refresh was throttled by the provider (`source = "provider"`) or held back by its
    /// limits (`source = "spacing"`).
    pub(crate) fn throttled(&self, provider: &str, source: &'static str) {
        self.throttled.add(
            1,
            &[
                KeyValue::new("provider", provider.to_owned()),
                KeyValue::new("source", source),
            ],
        );
    }
}

fn connections_by_status(shared: &Shared) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> = ["active", "degraded", "needs_reauth", "disabled"]
        .into_iter()
        .map(|status| (status, 0))
        .collect();
    for slot in shared.registry.slots() {
        let status = match slot.view().status {
            Some(status) => status.as_str(),
            None => "starting",
        };
        *counts.entry(status).or_default() += 1;
    }
    counts
}

fn soonest_expiry_secs(shared: &Shared) -> Option<f64> {
    let now = Clock::now(shared.clock.as_ref());
    shared
        .registry
        .slots()
        .iter()
        .filter(|slot| slot.view().supervising)
        .filter_map(|slot| slot.token())
        .map(|token| token.expires_at)
        .min()
        .map(|soonest| (soonest - now).num_milliseconds() as f64 / 1000.0)
}

/// Counts one event handed to a sink (`sink`: `webhook`, `sse`...; `event`: the event
/// kind, e.g. `needs_reauthorization`): `tokenvisor.events.delivered` when `delivered`,
/// else `tokenvisor.events.failed`. Records into the global meter provider's `tokenvisor`
/// meter, so install the meter provider before the first call.
pub fn record_event_delivery(sink: &str, event: &str, delivered: bool) {
    static COUNTERS: OnceLock<(Counter<u64>, Counter<u64>)> = OnceLock::new();
    let (delivered_counter, failed_counter) = COUNTERS.get_or_init(|| {
        let meter = opentelemetry::global::meter(METER_NAME);
        (
            meter
                .u64_counter("tokenvisor.events.delivered")
                .with_description("Events delivered to a sink (webhook, stream)")
                .build(),
            meter
                .u64_counter("tokenvisor.events.failed")
                .with_description("Events a sink failed to deliver")
                .build(),
        )
    });
    let attributes = [
        KeyValue::new("sink", sink.to_owned()),
        KeyValue::new("event", event.to_owned()),
    ];
    if delivered {
        delivered_counter.add(1, &attributes);
    } else {
        failed_counter.add(1, &attributes);
    }
}

/// Counts one refused credential of the admin API (`tokenvisor.auth.failures`;
/// `reason`: `unknown`, `revoked`, `expired`). Records into the global meter provider's
/// `tokenvisor` meter.
pub fn record_auth_failure(reason: &str) {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        opentelemetry::global::meter(METER_NAME)
            .u64_counter("tokenvisor.auth.failures")
            .with_description("Admin API requests whose credentials were refused")
            .build()
    });
    counter.add(1, &[KeyValue::new("reason", reason.to_owned())]);
}

/// Counts one admin API request refused with 429 because its client address or key
/// prefix failed to authenticate too often (`tokenvisor.auth.throttled`).
pub fn record_auth_throttled() {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        opentelemetry::global::meter(METER_NAME)
            .u64_counter("tokenvisor.auth.throttled")
            .with_description("Admin API requests refused after too many failed authentications")
            .build()
    });
    counter.add(1, &[]);
}

/// Counts audit events that were not written (`tokenvisor.audit.dropped`): the writer's
/// queue was full, or the database refused the batch.
pub fn record_audit_dropped(count: u64) {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        opentelemetry::global::meter(METER_NAME)
            .u64_counter("tokenvisor.audit.dropped")
            .with_description("Audit events dropped (queue full or write failed)")
            .build()
    });
    counter.add(count, &[]);
}

/// Counts messages moved to a webhook endpoint's dead-letter list
/// (`tokenvisor.webhooks.dead_lettered`; `reason`: `attempts`, `age` or `cap`). Records
/// into the global meter provider's `tokenvisor` meter.
pub fn record_webhook_dead_lettered(reason: &str, count: u64) {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        opentelemetry::global::meter(METER_NAME)
            .u64_counter("tokenvisor.webhooks.dead_lettered")
            .with_description("Webhook messages given up on and kept in the dead-letter list")
            .build()
    });
    counter.add(count, &[KeyValue::new("reason", reason.to_owned())]);
}
