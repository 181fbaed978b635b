//! Recovery after a provider outage (tokio's paused clock, in-memory store): the provider
//! answers 503 for 20 minutes, every access token expires during it, and a client reads
//! each connection's token once a second throughout. Measured: how long after the
//! provider's return each connection's reader gets a token again, with read probes (a
//! waiting caller cuts the backoff short, one probe per interval for the integration,
//! everyone once a refresh succeeds again) and without them (`probe_interval` zero:
//! readers wait for the backoff timer, as before), in one run, and what the probes cost
//! the provider during the outage.

use crate::report::Row;
use crate::setup::{self, percentile};
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{Clock, TokioClock};
use tokenvisor_store::{MemoryStore, Store};
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};

const OUTAGE: Duration = Duration::from_secs(20 * 60);
const TOKEN_LIFETIME: u64 = 600;

/// What one run measured.
struct Recovery {
    /// Seconds from the provider's return to each reader's first token, sorted.
    recoveries: Vec<f64>,
    /// Token requests the provider received during the outage.
    calls_during_outage: u64,
}

async fn run(connections: usize, probe_interval: Option<Duration>) -> anyhow::Result<Recovery> {
    let clock = Arc::new(TokioClock::default());
    let store = Arc::new(MemoryStore::new());
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Generic,
        expires_in: TOKEN_LIFETIME,
        ..FakeConfig::default()
    })
    .await?;
    let integration = setup::integration(store.as_ref(), &fake).await?;
    let expiry = clock.now() + chrono::Duration::seconds(TOKEN_LIFETIME as i64);
    let granted = setup::granted_connections(&fake, integration.id, connections, |_| expiry);
    for connection in &granted {
        store.insert_connection(connection).await?;
    }
    let mut config = tokenvisor_supervisor::TokenvisorConfig {
        clock: clock.clone(),
        ..setup::config()
    };
    // Without probes: reads never cut a backoff short.
    config.probe_interval = probe_interval.unwrap_or(Duration::ZERO);
    let tokenvisor = Tokenvisor::start(store, config).await?;

    fake.fail_next(u32::MAX, 503, serde_json::json!({"error": "temporarily_unavailable"}));
    let started = tokio::time::Instant::now();
    let healed_at = started + OUTAGE;
    let readers: Vec<_> = granted
        .iter()
        .map(|connection| {
            let tokenvisor = tokenvisor.clone();
            let id = connection.id;
            tokio::spawn(async move {
                let mut next = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep_until(next).await;
                    next += Duration::from_secs(1);
                    let ok = tokenvisor.tokens().access_token(id).await.is_ok();
                    let now = tokio::time::Instant::now();
                    if ok && now >= healed_at {
                        return Some((now - healed_at).as_secs_f64());
                    }
                    if now > healed_at + Duration::from_secs(30 * 60) {
                        return None;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(healed_at).await;
    let calls_during_outage = fake.token_requests();
    fake.fail_next(0, 503, serde_json::Value::Null);
    let mut recoveries = Vec::with_capacity(connections);
    for reader in readers {
        if let Some(seconds) = reader.await? {
            recoveries.push(seconds);
        }
    }
    recoveries.sort_by(f64::total_cmp);
    let _ = tokenvisor.shutdown().await;
    Ok(Recovery {
        recoveries,
        calls_during_outage,
    })
}

/// Before (no read probes) and after (probes every 3 s, the default), in one run.
pub async fn after_provider_outage(connections: usize) -> anyhow::Result<Vec<Row>> {
    let before = run(connections, None).await?;
    let after = run(connections, Some(Duration::from_secs(3))).await?;
    let describe = |recovery: &Recovery| {
        format!(
            "p50 {:.1} s / max {:.1} s ({} of {connections} recovered; {} provider calls during the 20-minute outage)",
            percentile(&recovery.recoveries, 0.5).unwrap_or(f64::NAN),
            recovery.recoveries.last().copied().unwrap_or(f64::NAN),
            recovery.recoveries.len(),
            recovery.calls_during_outage,
        )
    };
    let met = after.recoveries.len() == connections && after.recoveries.last().is_some_and(|max| *max <= 5.0);
    Ok(vec![
        Row::new(
            "recovery after a provider outage, before: reads wait for the backoff (tokens expired, a read per second per connection)",
            connections,
            describe(&before),
            "",
            None,
        ),
        Row::new(
            "recovery after a provider outage: first token read after the provider's return (read probes every 3 s)",
            connections,
            describe(&after),
            "≤ 5 s",
            Some(met),
        ),
    ])
}
