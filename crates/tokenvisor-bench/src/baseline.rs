//! Simulated days (tokio's paused clock, in-memory store): the cost of a dead connection,
//! and tokenvisor beside the baseline the incident write-ups describe — a job that polls
//! the table every 10 minutes and refreshes, one by one, every token expiring within 15
//! minutes — against the same fake provider (500 ms answers) and store.

use crate::report::Row;
use crate::setup::{self, CountingStore, percentile};
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{Clock, ConnectionFilter, TokioClock};
use tokenvisor_provider::{ResolvedIntegration, TokenClient, TokenClientOptions};
use tokenvisor_store::{CasOutcome, MemoryStore, Store};
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};

const DAY: Duration = Duration::from_secs(24 * 3600);
const PROVIDER_LATENCY: Duration = Duration::from_millis(500);

/// What one simulated day cost.
struct Day {
    provider_calls: u64,
    store_queries: u64,
    expired_token_minutes: u64,
    leads_secs: Vec<i64>,
}

/// Provider calls made for a revoked connection over a simulated day.
pub async fn dead_connection() -> anyhow::Result<Vec<Row>> {
    let clock = Arc::new(TokioClock::default());
    let store = Arc::new(MemoryStore::new());
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Generic,
        expires_in: 3600,
        ..FakeConfig::default()
    })
    .await?;
    let integration = setup::integration(store.as_ref(), &fake).await?;
    let connections =
        setup::granted_connections(&fake, integration.id, 1, |_| clock.now() + chrono::Duration::hours(1));
    store.insert_connection(&connections[0]).await?;
    fake.revoke_family("c0");
    let config = tokenvisor_supervisor::TokenvisorConfig {
        clock,
        ..setup::config()
    };
    let tokenvisor = Tokenvisor::start(store, config).await?;
    // Callers keep asking all day long.
    for _ in 0..(24 * 60) {
        let _ = tokenvisor.tokens().access_token(connections[0].id).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    tokenvisor.shutdown().await;
    let calls = fake.token_requests();
    Ok(vec![Row::new(
        "cost of a dead connection: provider calls in a simulated day (caller asks every minute)",
        1,
        format!("{calls}"),
        "exactly 1",
        Some(calls == 1),
    )])
}

/// Tokenvisor and the polling baseline, side by side, over a simulated day.
pub async fn versus_baseline(size: usize) -> anyhow::Result<Vec<Row>> {
    let ours = simulate(size, false).await?;
    let baseline = simulate(size, true).await?;
    let mut rows = Vec::new();
    let mut pair = |figure: &str, ours: String, baseline: String| {
        rows.push(Row::new(
            figure,
            size,
            format!("tokenvisor {ours} · baseline {baseline}"),
            "",
            None,
        ));
    };
    pair(
        "vs baseline: provider calls per simulated day",
        ours.provider_calls.to_string(),
        baseline.provider_calls.to_string(),
    );
    pair(
        "vs baseline: store queries per simulated day",
        ours.store_queries.to_string(),
        baseline.store_queries.to_string(),
    );
    pair(
        "vs baseline: expired token-minutes (sampled each minute)",
        ours.expired_token_minutes.to_string(),
        baseline.expired_token_minutes.to_string(),
    );
    let lead = |day: &Day| {
        let mut leads = day.leads_secs.clone();
        leads.sort_unstable();
        format!(
            "{} / {} s",
            percentile(&leads, 0.5).unwrap_or(0),
            leads.first().copied().unwrap_or(0)
        )
    };
    pair(
        "vs baseline: first refresh before expiry, p50 / min (plan: 900 s)",
        lead(&ours),
        lead(&baseline),
    );
    Ok(rows)
}

async fn simulate(size: usize, baseline: bool) -> anyhow::Result<Day> {
    let clock = Arc::new(TokioClock::default());
    let memory = Arc::new(MemoryStore::new());
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::NonRotating,
        expires_in: 3600,
        ..FakeConfig::default()
    })
    .await?;
    fake.set_latency(PROVIDER_LATENCY);
    let integration = setup::integration(memory.as_ref(), &fake).await?;
    let start = clock.now();
    // Expiries spread over an hour, starting after the 15-minute lead so every first
    // refresh is a planned one.
    let expiry = |i: usize| {
        start + chrono::Duration::minutes(16) + chrono::Duration::milliseconds((3_600_000 * i / size.max(1)) as i64)
    };
    let connections = setup::granted_connections(&fake, integration.id, size, expiry);
    for connection in &connections {
        memory.insert_connection(connection).await?;
    }
    let counting = Arc::new(CountingStore::new(memory.clone()));
    let sampler_store = memory.clone();
    let sampler_clock = clock.clone();
    let sampler = tokio::spawn(async move {
        let mut expired_minutes = 0u64;
        for _ in 0..(24 * 60) {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let now = sampler_clock.now();
            let all = sampler_store
                .list_connections(&ConnectionFilter::default())
                .await
                .unwrap_or_default();
            expired_minutes += all.iter().filter(|c| c.expires_at <= now).count() as u64;
        }
        expired_minutes
    });

    if baseline {
        let job = tokio::spawn(polling_job(counting.clone(), clock.clone(), integration.clone()));
        let expired_token_minutes = sampler.await?;
        job.abort();
        return Ok(day(&fake, &counting, expired_token_minutes, size, expiry, start));
    }
    let config = tokenvisor_supervisor::TokenvisorConfig {
        clock: clock.clone(),
        ..setup::config()
    };
    let tokenvisor = Tokenvisor::start(counting.clone(), config).await?;
    let expired_token_minutes = sampler.await?;
    tokenvisor.shutdown().await;
    Ok(day(&fake, &counting, expired_token_minutes, size, expiry, start))
}

fn day(
    fake: &FakeProvider,
    counting: &CountingStore,
    expired_token_minutes: u64,
    size: usize,
    expiry: impl Fn(usize) -> chrono::DateTime<Utc>,
    start: chrono::DateTime<Utc>,
) -> Day {
    let origin = tokio::time::Instant::now() - DAY;
    let leads_secs = (0..size)
        .filter_map(|i| {
            let first = fake.refresh_times_for(&format!("c{i}")).first().copied()?;
            let at = start + chrono::Duration::from_std(first.duration_since(origin)).unwrap_or_default();
            Some((expiry(i) - at).num_seconds())
        })
        .collect();
    Day {
        provider_calls: fake.token_requests(),
        store_queries: counting.queries(),
        expired_token_minutes,
        leads_secs,
    }
}

/// The baseline: every 10 minutes, read the table, then refresh one by one every token
/// expiring within 15 minutes (provider call, then a compare-and-swap write).
async fn polling_job(store: Arc<CountingStore>, clock: Arc<TokioClock>, integration: tokenvisor_core::Integration) {
    let Ok(resolved) = ResolvedIntegration::resolve(&integration, &["127.0.0.1".to_owned()]) else {
        return;
    };
    let Ok(client) = TokenClient::new(TokenClientOptions::default()) else {
        return;
    };
    let mut interval = tokio::time::interval(Duration::from_secs(600));
    loop {
        interval.tick().await;
        let Ok(all) = store.list_connections(&ConnectionFilter::default()).await else {
            continue;
        };
        for mut connection in all {
            if connection.expires_at - clock.now() > chrono::Duration::minutes(15) {
                continue;
            }
            let Some(refresh_token) = connection.refresh_token.clone() else {
                continue;
            };
            if let Ok(tokens) = client.refresh(&resolved, &connection.metadata, &refresh_token).await {
                let expected = connection.version;
                connection.apply_token_set(&tokens, clock.now());
                if let Ok(CasOutcome::Committed { .. }) = store.compare_and_swap(&connection, expected).await {}
            }
        }
    }
}
