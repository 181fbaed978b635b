//! The scenarios. Each one sets up what it needs, measures, and returns table rows.

use crate::report::Row;
use crate::setup::{self, CountingStore, percentile};
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvisor_core::Connection;
use tokenvisor_store::{MemoryStore, Store};
use tokenvisor_supervisor::{ProviderLimits, Tokenvisor};
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};

pub(crate) async fn fake(dialect: Dialect) -> anyhow::Result<FakeProvider> {
    Ok(FakeProvider::start(FakeConfig {
        dialect,
        expires_in: 3600,
        ..FakeConfig::default()
    })
    .await?)
}

/// Scale, in this process: PostgreSQL holds `size` connections; how long start-up takes
/// (load, decrypt, spawn, schedule) and how much resident memory each connection costs.
/// Run in a child process per size so sizes do not share an allocator.
pub async fn scale_one(size: usize) -> anyhow::Result<serde_json::Value> {
    let (_database, store) = setup::postgres_store().await?;
    let fake = fake(Dialect::Generic).await?;
    let integration = setup::integration(store.as_ref(), &fake).await?;
    let expires_at = Utc::now() + chrono::Duration::hours(1);
    for start in (0..size).step_by(50_000) {
        let batch: Vec<Connection> = (start..(start + 50_000).min(size))
            .map(|i| {
                let label = format!("c{i}");
                setup::connection(
                    integration.id,
                    &label,
                    &format!("at_{i:032}"),
                    &format!("rt_{i:032}"),
                    expires_at,
                )
            })
            .collect();
        store.insert_connections(&batch).await?;
    }
    let rss_before = setup::rss_bytes();
    // Load + decrypt alone first (what start-up does before spawning), for the breakdown.
    let loading = Instant::now();
    let loaded = load_all(store.as_ref()).await?;
    let load = loading.elapsed();
    anyhow::ensure!(loaded == size, "loaded {loaded} of {size} connections");
    let started = Instant::now();
    let tokenvisor = Tokenvisor::start(store.clone(), setup::config()).await?;
    let startup = started.elapsed();
    let rss_after = setup::rss_bytes();
    let supervised = tokenvisor.supervised_count();
    tokenvisor.shutdown().await;
    Ok(serde_json::json!({
        "size": size,
        "supervised": supervised,
        "startup_ms": startup.as_millis() as u64,
        "load_ms": load.as_millis() as u64,
        "rss_before": rss_before,
        "rss_after": rss_after,
    }))
}

/// Rows from the child processes' `scale_one` answers.
pub fn scale_rows(results: &[serde_json::Value]) -> Vec<Row> {
    let mut rows = Vec::new();
    for result in results {
        let size = result["size"].as_u64().unwrap_or(0);
        let startup_ms = result["startup_ms"].as_u64().unwrap_or(0);
        let rss_after = result["rss_after"].as_u64().unwrap_or(0);
        let per_connection = rss_after.saturating_sub(result["rss_before"].as_u64().unwrap_or(0)) / size.max(1);
        let big = size >= 1_000_000;
        rows.push(Row::new(
            "scale: connections supervised",
            size,
            format!("{}", result["supervised"].as_u64().unwrap_or(0)),
            "all",
            Some(result["supervised"].as_u64() == Some(size)),
        ));
        rows.push(Row::new(
            "scale: start-up (load from PostgreSQL, decrypt, spawn, schedule)",
            size,
            format!("{:.2} s", startup_ms as f64 / 1000.0),
            if big { "≤ 30 s" } else { "" },
            big.then_some(startup_ms <= 30_000),
        ));
        rows.push(Row::new(
            "scale: of which load + decrypt alone (measured separately)",
            size,
            format!("{:.2} s", result["load_ms"].as_u64().unwrap_or(0) as f64 / 1000.0),
            "",
            None,
        ));
        rows.push(Row::new(
            "scale: resident memory per connection",
            size,
            format!(
                "{:.1} KB (process RSS {:.0} MB)",
                per_connection as f64 / 1024.0,
                rss_after as f64 / 1e6
            ),
            if big { "RSS ≤ 10 GiB" } else { "" },
            big.then_some(rss_after <= 10 * 1024 * 1024 * 1024),
        ));
    }
    rows
}

/// Embedded `access_token` latency under concurrent load, on tokens valid in memory.
pub async fn token_latency(size: usize, duration: Duration) -> anyhow::Result<Vec<Row>> {
    let store = Arc::new(MemoryStore::new());
    let fake = fake(Dialect::Generic).await?;
    let integration = setup::integration(store.as_ref(), &fake).await?;
    let expires_at = Utc::now() + chrono::Duration::hours(1);
    let mut ids = Vec::with_capacity(size);
    for i in 0..size {
        let connection = setup::connection(
            integration.id,
            &format!("c{i}"),
            &format!("at_{i}"),
            &format!("rt_{i}"),
            expires_at,
        );
        ids.push(connection.id);
        store.insert_connection(&connection).await?;
    }
    let tokenvisor = Tokenvisor::start(store, setup::config()).await?;
    let ids = Arc::new(ids);
    let workers = 4;
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (tokenvisor, ids) = (tokenvisor.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 20);
            let mut index = worker * 7919;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    index = (index + 104_729) % ids.len();
                    let started = Instant::now();
                    let token = tokenvisor.tokens().access_token(ids[index]).await;
                    latencies.push(started.elapsed().as_nanos() as u64);
                    if token.is_err() {
                        return Err(anyhow::anyhow!("access_token failed"));
                    }
                }
                tokio::task::yield_now().await;
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    tokenvisor.shutdown().await;
    all.sort_unstable();
    let rate = all.len() as f64 / duration.as_secs_f64();
    let p = |q| percentile(&all, q).unwrap_or(0) as f64 / 1000.0;
    let p99 = p(0.99);
    Ok(vec![
        Row::new(
            "token latency (embedded): calls/s sustained, 4 tasks",
            size,
            format!("{rate:.0}"),
            "≥ 100k/s",
            Some(rate >= 100_000.0),
        ),
        Row::new(
            "token latency (embedded): p50 / p99 / p99.9",
            size,
            format!("{:.1} / {:.1} / {:.1} µs", p(0.5), p99, p(0.999)),
            "p99 ≤ 20 µs",
            Some(p99 <= 20.0),
        ),
    ])
}

/// How a refresh is committed to PostgreSQL, to compare the paths in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPath {
    /// The compare-and-swap, then the history entry in a second transaction (the first version).
    SplitHistory,
    /// One transaction per refresh: BEGIN, UPDATE, INSERT, COMMIT (before group commit).
    Transaction,
    /// Group commit: the refreshes waiting at a moment share one statement (now).
    GroupCommit,
}

/// Refreshes per second, each a provider call on loopback and a committed
/// compare-and-swap on PostgreSQL: the rows and the rate (the caller sets it beside
/// PostgreSQL's own single-row UPDATE commit rate).
pub async fn refresh_throughput(size: usize, path: CommitPath, concurrency: usize) -> anyhow::Result<(Vec<Row>, f64)> {
    let (database, sql) = setup::postgres_store().await?;
    let sql = if path == CommitPath::GroupCommit {
        sql
    } else {
        Arc::new(Arc::unwrap_or_clone(sql).without_group_commit())
    };
    let fake = fake(Dialect::NonRotating).await?;
    let integration = setup::integration(sql.as_ref(), &fake).await?;
    // Every token is inside its lead: all refresh at start-up.
    let expires_at = Utc::now() + chrono::Duration::minutes(5);
    let connections = setup::granted_connections(&fake, integration.id, size, |_| expires_at);
    sql.insert_connections(&connections).await?;
    let group_stats = {
        let sql = sql.clone();
        move || sql.group_commit_stats()
    };
    let mut counting = CountingStore::new(sql);
    counting.split_history_commit = path == CommitPath::SplitHistory;
    let counting = Arc::new(counting);
    let database_name = database.url().rsplit('/').next().unwrap_or_default().to_owned();
    let cpu_before = (setup::cpu_ms("self"), setup::postgres_cpu_ms(&database_name));
    let started = Instant::now();
    // More refreshes in flight than the default 64: while one group-commit statement
    // runs, the next one gathers more refreshes (fewer, larger statements).
    let mut config = setup::config();
    config.max_concurrent_refreshes = concurrency;
    config.provider_limits.max_concurrent = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let tokenvisor = Tokenvisor::start(counting.clone(), config).await?;
    let deadline = started + Duration::from_secs(600);
    while counting.commits() < size as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let commits = counting.commits();
    // CPU per refresh: this process (supervisor, HTTP client and the fake provider) and
    // the PostgreSQL backends of this database. On a shared machine these are steadier
    // than the rate.
    let per_refresh = |before: u64, after: u64| after.saturating_sub(before) as f64 * 1000.0 / commits.max(1) as f64;
    let mut cpu = format!(
        "CPU per refresh: {:.0} µs here, {:.0} µs PostgreSQL",
        per_refresh(cpu_before.0, setup::cpu_ms("self")),
        per_refresh(cpu_before.1, setup::postgres_cpu_ms(&database_name)),
    );
    let (statements, grouped, statement_us) = group_stats();
    if statements > 0 {
        cpu.push_str(&format!(
            "; {statements} statements, {:.1} refreshes and {:.1} ms each",
            grouped as f64 / statements as f64,
            statement_us as f64 / statements as f64 / 1000.0
        ));
    }
    tokenvisor.shutdown().await;
    let rate = commits as f64 / elapsed.as_secs_f64();
    let before = match path {
        CommitPath::SplitHistory => {
            Some("refresh throughput, before: history in a second transaction (same concurrency)")
        }
        CommitPath::Transaction => {
            Some("refresh throughput, before: one transaction per refresh, 4 round trips (same concurrency)")
        }
        CommitPath::GroupCommit => None,
    };
    if let Some(figure) = before {
        let value = format!(
            "{rate:.0} refreshes/s ({commits} in {:.2} s); {cpu}",
            elapsed.as_secs_f64()
        );
        return Ok((vec![Row::new(figure, size, value, "", None)], rate));
    }
    let rows = vec![Row::new(
        "refresh throughput: provider call + committed CAS on PostgreSQL (group commit)",
        size,
        format!(
            "{rate:.0} refreshes/s ({commits} in {:.2} s); {cpu}",
            elapsed.as_secs_f64()
        ),
        "≥ 5,000/s",
        Some(rate >= 5000.0),
    )];
    Ok((rows, rate))
}

/// How late each refresh starts relative to its plan, and whether any token expired first.
/// Tokens are planned `spread` apart over the window; jitter is off so the plan is known.
pub async fn schedule_precision(size: usize, spread: Duration) -> anyhow::Result<Vec<Row>> {
    let (_database, sql) = setup::postgres_store().await?;
    let fake = fake(Dialect::NonRotating).await?;
    let integration = setup::integration(sql.as_ref(), &fake).await?;
    let lead = chrono::Duration::minutes(15);
    let wall0 = Utc::now();
    let instant0 = tokio::time::Instant::now();
    // The first refresh is planned after set-up (grants, bulk insert, start-up) is over:
    // a plan already in the past when the actors start would count as lateness.
    let first = chrono::Duration::seconds(if size >= 10_000 { 30 } else { 5 });
    let planned_offset =
        |i: usize| first + chrono::Duration::milliseconds((spread.as_millis() as usize * i / size.max(1)) as i64);
    let connections = setup::granted_connections(&fake, integration.id, size, |i| wall0 + planned_offset(i) + lead);
    sql.insert_connections(&connections).await?;
    let tokenvisor = Tokenvisor::start(sql.clone(), setup::config()).await?;
    let wait = first.to_std().unwrap_or_default() + spread + Duration::from_secs(10);
    tokio::time::sleep(wait).await;
    let mut lateness_ms = Vec::with_capacity(size);
    let mut expired = 0usize;
    let mut missing = 0usize;
    for i in 0..size {
        let Some(first_refresh) = fake.refresh_times_for(&format!("c{i}")).first().copied() else {
            missing += 1;
            continue;
        };
        let actual_ms = first_refresh.duration_since(instant0).as_millis() as i64;
        let planned_ms = planned_offset(i).num_milliseconds();
        lateness_ms.push(actual_ms - planned_ms);
        if actual_ms > (planned_offset(i) + lead).num_milliseconds() {
            expired += 1;
        }
    }
    tokenvisor.shutdown().await;
    lateness_ms.sort_unstable();
    let p = |q| percentile(&lateness_ms, q).unwrap_or(0);
    let p99 = p(0.99);
    Ok(vec![
        Row::new(
            "schedule precision: lateness p50 / p99 / max (provider-observed)",
            size,
            format!(
                "{} / {} / {} ms (window {} s)",
                p(0.5),
                p99,
                lateness_ms.last().copied().unwrap_or(0),
                spread.as_secs()
            ),
            "p99 ≤ 1 s",
            Some(p99 <= 1000 && missing == 0),
        ),
        Row::new(
            "schedule precision: tokens expired before refresh (not refreshed at all)",
            size,
            format!("{expired} ({missing})"),
            "0",
            Some(expired == 0 && missing == 0),
        ),
    ])
}

/// A herd: `size` tokens due within `window`; the integration allows `rate` refreshes per
/// second. The provider must never see more, and every token must be refreshed in time.
pub async fn herd(size: usize, window: Duration, rate: u32) -> anyhow::Result<Vec<Row>> {
    let (_database, sql) = setup::postgres_store().await?;
    let fake = fake(Dialect::NonRotating).await?;
    let integration = setup::integration(sql.as_ref(), &fake).await?;
    let wall0 = Utc::now();
    let instant0 = tokio::time::Instant::now();
    let lead = chrono::Duration::minutes(15);
    let expiry = |i: usize| {
        wall0
            + lead
            + chrono::Duration::seconds(2)
            + chrono::Duration::milliseconds(
                ((i * 7919) % size.max(1)) as i64 * window.as_millis() as i64 / size.max(1) as i64,
            )
    };
    let connections = setup::granted_connections(&fake, integration.id, size, expiry);
    sql.insert_connections(&connections).await?;
    let mut config = setup::config();
    config.provider_limits = ProviderLimits {
        max_concurrent: 64,
        per_second: std::num::NonZeroU32::new(rate),
    };
    let tokenvisor = Tokenvisor::start(sql.clone(), config).await?;
    let needed = Duration::from_secs_f64(size as f64 / rate as f64);
    let deadline = Instant::now() + Duration::from_secs(2) + window.max(needed) + Duration::from_secs(30);
    while (fake.refreshes() as usize) < size && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(size);
    let mut late = 0usize;
    for i in 0..size {
        if let Some(at) = fake.refresh_times_for(&format!("c{i}")).first() {
            let since = at.duration_since(instant0);
            times.push(since);
            if chrono::Duration::from_std(since).unwrap_or_default() > expiry(i) - wall0 {
                late += 1;
            }
        }
    }
    tokenvisor.shutdown().await;
    times.sort_unstable();
    let mut max_per_second = 0usize;
    let mut start = 0usize;
    for end in 0..times.len() {
        while times[end] - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        max_per_second = max_per_second.max(end - start + 1);
    }
    let refreshed = times.len();
    Ok(vec![
        Row::new(
            "herd: most provider calls in any 1 s window",
            size,
            format!(
                "{max_per_second} (limit {rate}/s, tokens due within {} s)",
                window.as_secs()
            ),
            &format!("≤ {rate}"),
            Some(max_per_second <= rate as usize + 1),
        ),
        Row::new(
            "herd: refreshed before expiry",
            size,
            format!(
                "{}/{size} in {:.1} s",
                refreshed - late,
                times.last().map_or(0.0, |t| t.as_secs_f64())
            ),
            "all",
            Some(refreshed == size && late == 0),
        ),
    ])
}

/// Loads (and decrypts) every supervised connection as start-up does; answers how many
/// there were.
async fn load_all(store: &dyn tokenvisor_store::Store) -> anyhow::Result<usize> {
    use futures::StreamExt as _;
    let mut total = 0;
    let mut stream = store.load_supervised();
    while let Some(connection) = stream.next().await {
        connection?;
        total += 1;
    }
    Ok(total)
}
