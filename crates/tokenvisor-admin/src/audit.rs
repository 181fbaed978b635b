//! The audit trail: every token handed out, every call proxied and every change made
//! through `/v1` (who: the key id; what: the route and the connection, tenant or other
//! target, and for a change to a connection its status before and after; when; from
//! where; the trace id), appended to `tokenvisor_audit_events`.
//!
//! Off the request path: `AuditLog::record_request` puts the event on a bounded channel
//! and returns at once; one writer task takes up to [`AuditOptions::batch_rows`] events
//! (or what arrived within [`AuditOptions::flush_interval`]) and writes them in one
//! statement. A full channel (the database slower than the requests for a while)
//! drops the event: the request is never held back for its audit. Each drop counts in
//! `tokenvisor_audit_dropped_total` and is logged as a warning (at most one line a second).
//! The writer also deletes events older than [`AuditOptions::retention`], hourly.
//! Events hold ids, routes, statuses and addresses, never a secret.

use crate::auth::{Need, Principal};
use axum::http::{Method, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokenvisor_core::ConnectionStatus;
use tokenvisor_store::sql::{AccessStore, AuditEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How the audit trail is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// Events waiting for the writer at most; more are dropped (and counted).
    pub capacity: usize,
    /// Events per write at most.
    pub batch_rows: usize,
    /// How long the writer gathers events before it writes what it has.
    pub flush_interval: Duration,
    /// How long events are kept (`None`: forever).
    pub retention: Option<Duration>,
}

impl Default for AuditOptions {
    /// 65,536 waiting events, 500 per write, written within 200 ms, kept 90 days.
    fn default() -> Self {
        Self {
            capacity: 65_536,
            batch_rows: 500,
            flush_interval: Duration::from_millis(200),
            retention: Some(Duration::from_secs(90 * 24 * 3600)),
        }
    }
}

/// What a handler adds to its answer's extensions for the audit trail: the resources it
/// acted on that the path does not name.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditSubject {
    /// The connection.
    pub(crate) connection_id: Option<String>,
    /// Its tenant.
    pub(crate) tenant_id: Option<String>,
    /// Anything else (`api_key:<id>`, `integration:<name>`).
    pub(crate) target: Option<String>,
    /// A change to the connection: its status before (`None`: it did not exist).
    pub(crate) status_before: Option<&'static str>,
    /// A change to the connection: its status after (`deleted` once removed).
    pub(crate) status_after: Option<&'static str>,
}

impl AuditSubject {
    /// The connection and its tenant.
    pub(crate) fn connection(connection: &tokenvisor_core::Connection) -> Self {
        Self {
            connection_id: Some(connection.id.to_string()),
            tenant_id: Some(connection.tenant_id.to_string()),
            target: None,
            status_before: None,
            status_after: None,
        }
    }

    /// A change to the connection: from `before` (`None`: a new connection) to `after`
    /// (a status name, or `deleted`). `connection` is the connection as it was before,
    /// or as created.
    pub(crate) fn change(
        connection: &tokenvisor_core::Connection,
        before: Option<ConnectionStatus>,
        after: &'static str,
    ) -> Self {
        Self {
            status_before: before.map(ConnectionStatus::as_str),
            status_after: Some(after),
            ..Self::connection(connection)
        }
    }
}

/// One request as the guard saw it.
pub(crate) struct Recorded<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) method: &'a Method,
    /// The route template (`/v1/connections/{id}/token`).
    pub(crate) route: &'a str,
    /// The path as requested.
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    pub(crate) caller: Option<IpAddr>,
    pub(crate) trace_id: Option<String>,
    pub(crate) subject: Option<&'a AuditSubject>,
}

/// The audit trail's front: hands events to the writer task.
#[derive(Debug)]
pub(crate) struct AuditLog {
    sender: Option<mpsc::Sender<AuditEvent>>,
    dropped: AtomicU64,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
}

impl AuditLog {
    /// Starts the writer on `access` (none: nothing is recorded), tracked by `tasks`.
    pub(crate) fn start(
        access: Option<AccessStore>,
        options: AuditOptions,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        let sender = access.map(|access| {
            let (sender, receiver) = mpsc::channel(options.capacity.max(1));
            tasks.spawn(write(access, receiver, options, shutdown));
            sender
        });
        Arc::new(Self {
            sender,
            dropped: AtomicU64::new(0),
            last_warning: std::sync::Mutex::new(None),
        })
    }

    /// Records a request if it is one the trail keeps: a token handed out, a call proxied
    /// (whatever the API answered), or a successful change. Refusals are not recorded
    /// (they are counted: `tokenvisor_auth_failures_total`).
    pub(crate) fn record_request(&self, recorded: Recorded<'_>, need: Need) {
        if recorded.route.ends_with("/cluster/forward") {
            // Replica-to-replica forwarding: the replica that took the request audits it.
            return;
        }
        let action = match need {
            // A proxied call, whatever the API answered (the handler marks it once the
            // connection is resolved and allowed).
            Need::Tokens if recorded.route.contains("/proxy/") && recorded.subject.is_some() => "proxy",
            Need::Tokens if recorded.status.is_success() => "token_read",
            Need::Tokens => return,
            _ if *recorded.method == Method::GET => return,
            _ if recorded.status.is_success() => "change",
            _ => return,
        };
        let mut event = AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            at: chrono::Utc::now(),
            action: action.to_owned(),
            request: format!("{} {}", recorded.method, recorded.route),
            status: recorded.status.as_u16(),
            key_id: recorded.principal.key_id.clone(),
            connection_id: None,
            tenant_id: None,
            target: None,
            caller_address: recorded.caller.map(|ip| ip.to_string()),
            trace_id: recorded.trace_id,
            status_before: None,
            status_after: None,
        };
        // What the path names: `{id}` of a connection, `{tenant}`, anything else. Below a
        // nested router the path lacks the prefix the route has (`/v1`, a base path): line
        // them up at the route's first segment after `/v1/`.
        let route = recorded
            .route
            .split_once("/v1/")
            .map_or(recorded.route, |(_, rest)| rest);
        let resource = route.split('/').next().unwrap_or_default();
        let mut segments: Vec<&str> = recorded.path.split('/').filter(|s| !s.is_empty()).collect();
        if let Some(start) = segments.iter().position(|segment| *segment == resource) {
            segments.drain(..start);
        }
        for (template, value) in route.split('/').zip(segments) {
            match template {
                "{id}" if resource == "connections" => event.connection_id = Some(value.to_owned()),
                "{tenant}" => event.tenant_id = Some(value.to_owned()),
                "{integration}" => event.target = Some(format!("integration:{value}")),
                "{id}" => event.target = Some(format!("{resource}:{value}")),
                _ => {}
            }
        }
        if let Some(subject) = recorded.subject {
            event.connection_id = subject.connection_id.clone().or(event.connection_id);
            event.tenant_id = subject.tenant_id.clone().or(event.tenant_id);
            event.target = subject.target.clone().or(event.target);
            event.status_before = subject.status_before.map(str::to_owned);
            event.status_after = subject.status_after.map(str::to_owned);
        }
        self.push(event);
    }

    /// Records an event built elsewhere (the dashboard's actions).
    pub(crate) fn record(&self, event: AuditEvent) {
        self.push(event);
    }

    fn push(&self, event: AuditEvent) {
        // Also an OpenTelemetry event: the telemetry crate has no OTLP logs pipeline, so
        // this INFO event on its own target, emitted inside the request's server span,
        // becomes an event of that span (`tracing-opentelemetry`) and is exported with
        // the trace. The binary's log lines leave it out unless `RUST_LOG` names
        // `tokenvisor::audit` (a line per token read would drown the log).
        tracing::info!(
            target: tokenvisor_telemetry::AUDIT_TARGET,
            action = %event.action,
            request = %event.request,
            status = event.status,
            key_id = %event.key_id,
            connection_id = event.connection_id.as_deref(),
            tenant_id = event.tenant_id.as_deref(),
            audit_target = event.target.as_deref(),
            caller_address = event.caller_address.as_deref(),
            status_before = event.status_before.as_deref(),
            status_after = event.status_after.as_deref(),
            "audit"
        );
        let Some(sender) = &self.sender else { return };
        if sender.try_send(event).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tokenvisor_supervisor::metrics::record_audit_dropped(1);
            let now = std::time::Instant::now();
            if let Ok(mut last) = self.last_warning.lock()
                && last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
            {
                *last = Some(now);
                tracing::warn!(
                    dropped_total = dropped,
                    "audit trail behind: events dropped (the database is slower than the requests)"
                );
            }
        }
    }
}

/// The writer task: batches, writes, trims; on shutdown writes what is queued.
async fn write(
    access: AccessStore,
    mut receiver: mpsc::Receiver<AuditEvent>,
    options: AuditOptions,
    shutdown: CancellationToken,
) {
    let batch_rows = options.batch_rows.max(1);
    let mut batch = Vec::with_capacity(batch_rows);
    // Batches being written: up to the writer's own connections
    // (`tokenvisor_store::sql::AUDIT_WRITER_POOL`), so the next batch is collected and
    // bound while the previous one commits.
    let mut writing = tokio::task::JoinSet::new();
    let mut next_trim = tokio::time::Instant::now();
    // After `shutdown` the writer goes on: requests answered during the graceful stop are
    // recorded too. It ends when every sender is gone (the routes dropped), or at the
    // latest AFTER_SHUTDOWN later.
    let mut stop_by: Option<tokio::time::Instant> = None;
    loop {
        let first = match stop_by {
            None => tokio::select! {
                event = receiver.recv() => event,
                () = shutdown.cancelled() => {
                    stop_by = Some(tokio::time::Instant::now() + AFTER_SHUTDOWN);
                    continue;
                }
            },
            Some(deadline) => tokio::time::timeout_at(deadline, receiver.recv()).await.unwrap_or(None),
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + options.flush_interval;
        while batch.len() < batch_rows {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        while writing.len() >= IN_FLIGHT {
            let _ = writing.join_next().await;
        }
        let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
        let writer = access.clone();
        writing.spawn(async move { flush(&writer, full).await });
        if let Some(retention) = options.retention
            && tokio::time::Instant::now() >= next_trim
        {
            next_trim = tokio::time::Instant::now() + Duration::from_secs(3600);
            let cutoff = chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            match access.delete_audit_events_before(cutoff).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "audit events past their retention deleted"),
                Err(error) => tracing::warn!(error = %error, "failed to trim the audit trail"),
            }
        }
    }
    // Shutting down: the batches being written finish, and what is queued still goes in.
    while writing.join_next().await.is_some() {}
    receiver.close();
    while let Ok(event) = receiver.try_recv() {
        batch.push(event);
        if batch.len() >= batch_rows {
            flush(&access, std::mem::take(&mut batch)).await;
        }
    }
    flush(&access, batch).await;
}

/// How long the writer goes on after the shutdown signal, at most (the admin server's
/// graceful stop takes up to 10 s).
const AFTER_SHUTDOWN: Duration = Duration::from_secs(15);

/// Batches written at once by the writer task.
const IN_FLIGHT: usize = tokenvisor_store::sql::AUDIT_WRITER_POOL as usize;

async fn flush(access: &AccessStore, batch: Vec<AuditEvent>) {
    if batch.is_empty() {
        return;
    }
    if let Err(error) = access.insert_audit_events(&batch).await {
        tokenvisor_supervisor::metrics::record_audit_dropped(batch.len() as u64);
        tracing::warn!(error = %error, dropped = batch.len(), "failed to write audit events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            at: chrono::Utc::now(),
            action: "token_read".into(),
            request: "GET /v1/connections/{id}/token".into(),
            status: 200,
            key_id: "admin".into(),
            connection_id: None,
            tenant_id: None,
            target: None,
            caller_address: None,
            trace_id: None,
            status_before: None,
            status_after: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (sender, mut receiver) = mpsc::channel(2);
        let log = AuditLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
            last_warning: std::sync::Mutex::new(None),
        };
        for _ in 0..5 {
            log.push(event());
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 3);
        assert!(receiver.try_recv().is_ok() && receiver.try_recv().is_ok());
        log.push(event());
        assert_eq!(log.dropped.load(Ordering::Relaxed), 3, "room again");
    }

    #[test]
    fn the_path_is_read_below_a_nested_router_and_a_base_path() {
        let (sender, mut receiver) = mpsc::channel(8);
        let log = AuditLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
            last_warning: std::sync::Mutex::new(None),
        };
        let principal = Principal::admin("admin");
        for (route, path) in [
            ("/v1/connections/{id}/token", "/connections/c1/token"),
            ("/tokenvisor/v1/connections/{id}/token", "/v1/connections/c1/token"),
            (
                "/v1/tenants/{tenant}/connections/{integration}/{key}/token",
                "/tenants/t1/connections/crm/default/token",
            ),
        ] {
            log.record_request(
                Recorded {
                    principal: &principal,
                    method: &Method::GET,
                    route,
                    path,
                    status: StatusCode::OK,
                    caller: None,
                    trace_id: None,
                    subject: None,
                },
                Need::Tokens,
            );
        }
        let first = receiver.try_recv().expect("recorded");
        assert_eq!(first.connection_id.as_deref(), Some("c1"));
        let second = receiver.try_recv().expect("recorded");
        assert_eq!(second.connection_id.as_deref(), Some("c1"));
        let third = receiver.try_recv().expect("recorded");
        assert_eq!(third.tenant_id.as_deref(), Some("t1"));
        assert_eq!(third.target.as_deref(), Some("integration:crm"));
    }
}
