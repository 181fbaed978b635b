//! The audit trail's cost at high token read rates: `GET /v1/connections/{id}/token` with
//! a `tokens:read` API key, against the admin router of `tokenvisor serve` in this
//! process, on SQLite and PostgreSQL. Two parts per backend and writer:
//!
//! 1. **HTTP, closed loop** (the end-to-end figure): many concurrent clients over real
//!    HTTP on loopback, each one request at a time. On 2 cores the HTTP client and server
//!    cap the rate well below 10,000 reads/s.
//! 2. **In-process, open loop** (the trail at the rate): the same router (API key
//!    authentication, handler, audit guard and audit writer), called with
//!    `tower::ServiceExt::oneshot` instead of through a socket, at a fixed schedule of
//!    `rate` reads per second (every millisecond the reads then due are launched as tasks,
//!    whether or not earlier ones have been answered). Each read's latency is measured
//!    from its *scheduled* start, so a backlog shows up as latency rather than as a slower
//!    client (no coordinated omission). After the last answer the rows of the audit table
//!    are counted until the writer has caught up.
//!
//! There is no switch that turns the audit trail off (and none is added: a trail an
//! operator can silence is not an audit trail). The comparison is against a starved
//! writer instead: a queue of one event, so almost every event is dropped (counted)
//! rather than written; the difference between the two runs is what writing the rows
//! costs the readers. Events dropped are read from `tokenvisor_audit_dropped_total`
//! (this process installs a Prometheus meter provider for it) and cross-checked against
//! reads answered minus rows written.
//!
//! No tracing subscriber is installed here, so the audit's OpenTelemetry event (a
//! `tracing` event per read) costs next to nothing; with `tokenvisor serve`'s telemetry
//! it costs more, and that is not measured.

use crate::report::Row;
use crate::setup;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use chrono::{Duration as Span, Utc};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokenvisor_core::SecretString;
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::database::TestDatabase;
use tokenvisor_testkit::{Dialect, FakeProvider};
use tower::ServiceExt as _;

const TOKEN: &str = "bench-admin-token-0123456789";

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connections read, round robin.
    pub connections: usize,
    /// Concurrent HTTP clients (each one request at a time).
    pub clients: usize,
    /// How long each HTTP run lasts.
    pub duration: Duration,
    /// Token reads per second of the in-process, open-loop part.
    pub rate: u64,
    /// How long the open-loop schedule lasts.
    pub paced_duration: Duration,
    /// Run the HTTP, closed-loop part.
    pub http: bool,
    /// Run the in-process, open-loop part.
    pub paced: bool,
}

/// Both backends, the default writer and the starved one, over HTTP then in-process.
pub async fn audit_cost(plan: Plan, backends: &[String]) -> anyhow::Result<Vec<Row>> {
    // Before any router exists: the drop counter binds to the global meter provider the
    // first time an event is dropped.
    if dropped_total().is_none() {
        eprintln!("… audit: no Prometheus meter provider; dropped events are reads minus rows only");
    }
    let mut rows = Vec::new();
    for backend in backends {
        anyhow::ensure!(
            backend == "sqlite" || backend == "postgres",
            "unknown audit backend {backend} (sqlite, postgres)"
        );
        for (label, options) in writers().into_iter().filter(|_| plan.http) {
            let row = over_http(backend, label, options, plan).await?;
            eprintln!("… {} ({}): {}", row.figure, row.size, row.value);
            rows.push(row);
        }
        for (label, options) in writers().into_iter().filter(|_| plan.paced) {
            let row = paced(backend, label, options, plan).await?;
            eprintln!("… {} ({}): {}", row.figure, row.size, row.value);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The default writer, then the starved one.
fn writers() -> [(&'static str, tokenvisor_admin::AuditOptions); 2] {
    [
        (
            "audit trail written (default writer)",
            tokenvisor_admin::AuditOptions::default(),
        ),
        (
            "audit writer starved (queue of 1: events dropped, not written)",
            tokenvisor_admin::AuditOptions {
                capacity: 1,
                ..tokenvisor_admin::AuditOptions::default()
            },
        ),
    ]
}

/// A fresh database with `connections` connections supervised by a running tokenvisor.
struct Rig {
    /// Dropped last: drops the PostgreSQL database.
    _database: TestDatabase,
    /// The PostgreSQL database's name (its backends' CPU is read by it).
    postgres_name: Option<String>,
    store: Arc<SqlStore>,
    _fake: FakeProvider,
    tokenvisor: Tokenvisor,
    shutdown: tokio_util::sync::CancellationToken,
    /// The connections' ids.
    ids: Vec<String>,
}

impl Rig {
    async fn start(backend: &str, connections: usize) -> anyhow::Result<Self> {
        let database = if backend == "postgres" {
            TestDatabase::postgres().await
        } else {
            TestDatabase::sqlite()
        };
        let postgres_name =
            (backend == "postgres").then(|| database.url().rsplit('/').next().unwrap_or_default().to_owned());
        let (keyring, _) = Keyring::generate();
        let store = Arc::new(SqlStore::connect(database.url(), keyring).await?);
        let fake = crate::scenarios::fake(Dialect::Generic).await?;
        let integration = setup::integration(store.as_ref(), &fake).await?;
        // Two hours of validity: nothing refreshes while the reads are timed.
        let expires_at = Utc::now() + Span::hours(2);
        let rows: Vec<_> = (0..connections)
            .map(|i| {
                setup::connection(
                    integration.id,
                    &format!("t{i}"),
                    &format!("at_{i:032}"),
                    &format!("rt_{i:032}"),
                    expires_at,
                )
            })
            .collect();
        store.insert_connections(&rows).await?;
        let ids = rows.iter().map(|c| c.id.to_string()).collect();
        let tokenvisor = Tokenvisor::start(store.clone(), setup::config()).await?;
        Ok(Self {
            _database: database,
            postgres_name,
            store,
            _fake: fake,
            tokenvisor,
            shutdown: tokio_util::sync::CancellationToken::new(),
            ids,
        })
    }

    /// The admin router of `tokenvisor serve` with this audit writer.
    fn router(&self, audit: tokenvisor_admin::AuditOptions, public_url: &str) -> axum::Router {
        let options = tokenvisor_admin::AdminOptions {
            audit,
            shutdown: self.shutdown.clone(),
            ..tokenvisor_admin::AdminOptions::new(SecretString::new(TOKEN), public_url)
        };
        tokenvisor_admin::router(self.tokenvisor.clone(), options)
    }

    async fn rows(&self) -> anyhow::Result<u64> {
        Ok(self.store.access_store().count_audit_events().await?)
    }

    /// CPU time of this process and of the PostgreSQL backends of the database, in ms.
    fn cpu_ms(&self) -> (u64, u64) {
        (
            setup::cpu_ms("self"),
            self.postgres_name.as_deref().map_or(0, setup::postgres_cpu_ms),
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tokenvisor.shutdown().await;
    }
}

/// A request as a client on loopback sends it (the guard reads the caller's address).
fn request(method: Method, uri: Uri, authorization: HeaderValue, body: Body, port: u16) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    request.headers_mut().insert(header::AUTHORIZATION, authorization);
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], port))));
    request
}

/// A `tokens:read` API key, created through the router with the admin token.
async fn api_key(router: &axum::Router) -> anyhow::Result<String> {
    let mut created = request(
        Method::POST,
        Uri::from_static("/v1/api-keys"),
        HeaderValue::from_str(&format!("Bearer {TOKEN}"))?,
        Body::from(serde_json::json!({"name": "bench", "scopes": ["tokens:read"]}).to_string()),
        40_000,
    );
    created
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let answer = router.clone().oneshot(created).await?;
    anyhow::ensure!(answer.status() == StatusCode::CREATED, "api key: {}", answer.status());
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await?;
    let created: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(created["key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no key in the answer"))?
        .to_owned())
}

/// The global meter provider's Prometheus text, installed on first use (`None`: its
/// exporter could not be built).
fn metrics() -> Option<&'static tokenvisor_admin::MetricsRenderer> {
    static RENDERER: OnceLock<Option<tokenvisor_admin::MetricsRenderer>> = OnceLock::new();
    RENDERER
        .get_or_init(|| {
            let (reader, render) = tokenvisor_telemetry::prometheus_reader().ok()?;
            let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_reader(reader)
                .build();
            opentelemetry::global::set_meter_provider(provider);
            Some(render)
        })
        .as_ref()
}

/// `tokenvisor_audit_dropped_total` so far in this process.
fn dropped_total() -> Option<u64> {
    let text = metrics()?();
    let total: f64 = text
        .lines()
        .filter(|line| line.starts_with("tokenvisor_audit_dropped_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(total as u64)
}

/// CPU time of every other process on the machine so far, by pid, in ms (per process,
/// from `/proc/{pid}/stat`: the kernel's tick-sampled `/proc/stat` undercounts work that
/// follows a 1 ms timer, as this scenario's does).
fn other_processes_cpu_ms() -> std::collections::HashMap<u32, u64> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return std::collections::HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .map(|pid| (pid, setup::cpu_ms(&pid.to_string())))
        .collect()
}

/// CPU the other processes used since `before` (those that ended meanwhile are missed).
fn other_processes_since(before: &std::collections::HashMap<u32, u64>) -> u64 {
    other_processes_cpu_ms()
        .into_iter()
        .map(|(pid, now)| now.saturating_sub(before.get(&pid).copied().unwrap_or(0)))
        .sum()
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Part 1: closed loop over real HTTP on loopback.
async fn over_http(
    backend: &str,
    label: &str,
    audit: tokenvisor_admin::AuditOptions,
    plan: Plan,
) -> anyhow::Result<Row> {
    let rig = Rig::start(backend, plan.connections).await?;
    let ids = Arc::new(rig.ids.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = rig.router(audit, &base);
    let key: Arc<str> = api_key(&app).await?.into();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    // Warm up: every connection's actor has its token in memory.
    for id in ids.iter() {
        http.get(format!("{base}/v1/connections/{id}/token"))
            .bearer_auth(&*key)
            .send()
            .await?
            .error_for_status()?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_before = rig.rows().await?;
    let dropped_before = dropped_total();

    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut clients = Vec::with_capacity(plan.clients);
    for client in 0..plan.clients {
        let http = http.clone();
        let base = base.clone();
        let key = key.clone();
        let ids = ids.clone();
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            let mut n = client;
            while Instant::now() < deadline {
                let id = &ids[n % ids.len()];
                n += 7;
                let sent = Instant::now();
                let answer = http
                    .get(format!("{base}/v1/connections/{id}/token"))
                    .bearer_auth(&*key)
                    .send()
                    .await;
                match answer {
                    Ok(answer) if answer.status().is_success() => {
                        let _ = answer.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for client in clients {
        let (mine, failures) = client.await?;
        latencies.extend(mine);
        failed += failures;
    }
    let elapsed = started.elapsed();
    // The writer flushes within 200 ms; give it a second, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = rig.rows().await? - rows_before;
    let dropped_metric = dropped_total()
        .zip(dropped_before)
        .map(|(after, before)| after - before);
    rig.stop().await;
    server.abort();

    latencies.sort();
    let reads = latencies.len() as u64;
    let value = format!(
        "{:.0} reads/s ({reads} in {:.1} s), p50 {:.2} ms, p99 {:.2} ms; {} rows written, {} dropped{}{}",
        reads as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        ms(setup::percentile(&latencies, 0.5)),
        ms(setup::percentile(&latencies, 0.99)),
        written,
        reads.saturating_sub(written),
        dropped_metric.map_or(String::new(), |n| format!(" ({n} by the metric)")),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    Ok(Row::new(
        &format!("audit: token reads by API key over HTTP (closed loop), {backend}, {label}"),
        format!(
            "{} connections, {} clients, {} s",
            plan.connections,
            plan.clients,
            plan.duration.as_secs()
        ),
        value,
        "",
        None,
    ))
}

/// What the paced reads found, shared by their tasks.
#[derive(Default)]
struct Tally {
    /// From the scheduled start to the answer's last byte, of the reads answered 200.
    latencies: Mutex<Vec<Duration>>,
    failed: AtomicU64,
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
    /// Nanoseconds from the schedule's start to the latest answer.
    last_answer_ns: AtomicU64,
}

/// Part 2: the open-loop schedule through the router in this process.
async fn paced(backend: &str, label: &str, audit: tokenvisor_admin::AuditOptions, plan: Plan) -> anyhow::Result<Row> {
    let rig = Rig::start(backend, plan.connections).await?;
    let router = rig.router(audit, "http://127.0.0.1");
    let key = api_key(&router).await?;
    let authorization = HeaderValue::from_str(&format!("Bearer {key}"))?;
    let uris = rig
        .ids
        .iter()
        .map(|id| format!("/v1/connections/{id}/token").parse::<Uri>())
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!uris.is_empty(), "the audit scenario needs at least one connection");
    let uris = Arc::new(uris);
    // Warm up: every connection's actor has its token in memory.
    for uri in uris.iter() {
        let answer = router
            .clone()
            .oneshot(request(
                Method::GET,
                uri.clone(),
                authorization.clone(),
                Body::empty(),
                40_000,
            ))
            .await?;
        anyhow::ensure!(answer.status() == StatusCode::OK, "warm-up read: {}", answer.status());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_before = rig.rows().await?;
    let dropped_before = dropped_total();
    let cpu_before = rig.cpu_ms();
    let others_before = other_processes_cpu_ms();

    let rate = plan.rate.max(1);
    let total = rate.saturating_mul(plan.paced_duration.as_millis() as u64) / 1000;
    let tally = Arc::new(Tally {
        latencies: Mutex::new(Vec::with_capacity(total as usize)),
        ..Tally::default()
    });
    let scheduled_at = |n: u64| Duration::from_nanos(n.saturating_mul(1_000_000_000) / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let mut ticker = tokio::time::interval_at(start.into(), Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut issued = 0u64;
    let mut launch_lag = Duration::ZERO;
    while issued < total {
        ticker.tick().await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(start);
        // Every read scheduled at or before now.
        let due = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64 + 1;
        while issued < due.min(total) {
            let scheduled = start + scheduled_at(issued);
            launch_lag = launch_lag.max(now.saturating_duration_since(scheduled));
            let n = issued as usize;
            let read = request(
                Method::GET,
                uris[n.wrapping_mul(7) % uris.len()].clone(),
                authorization.clone(),
                Body::empty(),
                40_000 + (n % 20_000) as u16,
            );
            let router = router.clone();
            let tally = tally.clone();
            let in_flight = tally.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            tally.most_in_flight.fetch_max(in_flight, Ordering::Relaxed);
            tokio::spawn(async move {
                let answered = match router.oneshot(read).await {
                    Ok(answer) if answer.status() == StatusCode::OK => {
                        axum::body::to_bytes(answer.into_body(), 1 << 20).await.is_ok()
                    }
                    _ => false,
                };
                let done = Instant::now();
                if answered {
                    if let Ok(mut latencies) = tally.latencies.lock() {
                        latencies.push(done.saturating_duration_since(scheduled));
                    }
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
                tally.last_answer_ns.fetch_max(
                    done.saturating_duration_since(start).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                tally.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
            issued += 1;
        }
    }
    // Every read answered (or given up on after a minute).
    let waited = Instant::now();
    while tally.in_flight.load(Ordering::Relaxed) > 0 && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let unanswered = tally.in_flight.load(Ordering::Relaxed);
    let cpu_load = rig.cpu_ms();
    // Every other process, the PostgreSQL backends of this database excepted.
    let others = other_processes_since(&others_before).saturating_sub(cpu_load.1.saturating_sub(cpu_before.1));
    let end = start + Duration::from_nanos(tally.last_answer_ns.load(Ordering::Relaxed));
    let elapsed = end.saturating_duration_since(start);
    let mut latencies = tally
        .latencies
        .lock()
        .map(|mut latencies| std::mem::take(&mut *latencies))
        .unwrap_or_default();
    latencies.sort();
    let reads = latencies.len() as u64;
    let failed = tally.failed.load(Ordering::Relaxed);

    // The writer catching up: count the rows until every read is either a row or a
    // counted drop, or until the count has stopped growing for 3 s.
    let dropped_since = || {
        dropped_total()
            .zip(dropped_before)
            .map(|(after, before)| after - before)
    };
    let mut backlog_at_end = None;
    let mut written = rig.rows().await? - rows_before;
    let mut grew_at = end;
    let caught_up = loop {
        let now = Instant::now();
        let accounted = written + dropped_since().unwrap_or(0);
        backlog_at_end.get_or_insert(reads.saturating_sub(accounted));
        if accounted >= reads {
            break Some(grew_at.saturating_duration_since(end));
        }
        if now.duration_since(grew_at) > Duration::from_secs(3) || now.duration_since(end) > Duration::from_secs(120) {
            break None;
        }
        // Every 50 ms: a count is a scan of the table, which the writer competes with.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = rig.rows().await? - rows_before;
        if count != written {
            written = count;
            grew_at = Instant::now();
        }
    };
    let cpu_after = rig.cpu_ms();
    let dropped_metric = dropped_since();
    let postgres = rig.postgres_name.is_some();
    rig.stop().await;

    let seconds = elapsed.as_secs_f64().max(1e-9);
    let achieved = reads as f64 / seconds;
    let cores = |from: u64, to: u64| (to.saturating_sub(from)) as f64 / 1000.0 / seconds;
    let per_read = |from: u64, to: u64| (to.saturating_sub(from)) as f64 * 1000.0 / reads.max(1) as f64;
    let dropped = dropped_metric.unwrap_or_else(|| reads.saturating_sub(written));
    let mut value = format!(
        "{achieved:.0} reads/s answered ({reads} of {total} in {:.2} s); from the scheduled start p50 {:.2} ms, \
         p99 {:.2} ms, max {:.1} ms (launch lag max {:.1} ms, {} in flight at most); {written} rows written, \
         {dropped} dropped ({}reads − rows {}); backlog at the last answer {} events, {}; \
         CPU during the reads: bench process {:.2} cores ({:.0} µs/read){}; other processes {:.2} cores (machine: {} cores)",
        seconds,
        ms(setup::percentile(&latencies, 0.5)),
        ms(setup::percentile(&latencies, 0.99)),
        ms(latencies.last().copied()),
        launch_lag.as_secs_f64() * 1000.0,
        tally.most_in_flight.load(Ordering::Relaxed),
        if dropped_metric.is_some() { "metric; " } else { "" },
        reads.saturating_sub(written),
        backlog_at_end.unwrap_or(0),
        match caught_up {
            Some(after) => format!("writer caught up {:.0} ms after it", after.as_secs_f64() * 1000.0),
            None => "writer did not catch up (rows stopped growing)".to_owned(),
        },
        cores(cpu_before.0, cpu_load.0),
        per_read(cpu_before.0, cpu_load.0),
        if postgres {
            format!(
                ", PostgreSQL {:.2} cores ({:.0} µs/read); with the catch-up {:.0} + {:.0} µs/read",
                cores(cpu_before.1, cpu_load.1),
                per_read(cpu_before.1, cpu_load.1),
                per_read(cpu_before.0, cpu_after.0),
                per_read(cpu_before.1, cpu_after.1),
            )
        } else {
            format!("; with the catch-up {:.0} µs/read", per_read(cpu_before.0, cpu_after.0))
        },
        others as f64 / 1000.0 / seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    if failed > 0 || unanswered > 0 {
        value.push_str(&format!("; {failed} failed, {unanswered} unanswered after 60 s"));
    }
    let starved = audit.capacity <= 1;
    // Not the bottleneck: the reads answered on schedule, nothing dropped, and the writer
    // no further behind at the end than a flush interval and a few batches.
    let met = achieved >= rate as f64 * 0.99
        && failed == 0
        && unanswered == 0
        && dropped == 0
        && caught_up.is_some_and(|after| after <= Duration::from_secs(1));
    Ok(Row::new(
        &format!("audit: token reads by API key, router in-process, open loop, {backend}, {label}"),
        format!(
            "{} connections, {rate}/s for {} s",
            plan.connections,
            plan.paced_duration.as_secs_f64()
        ),
        value,
        if starved {
            ""
        } else {
            "the scheduled rate answered, 0 dropped, writer caught up within 1 s"
        },
        (!starved).then_some(met),
    ))
}
