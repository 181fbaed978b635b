//! The audit trail's cost at high token read rates: `GET /v1/connections/{id}/token` with
//! a `tokens:read` API key from many concurrent clients, against the admin router of
//! `tokenvisor serve` in this process, on SQLite and PostgreSQL.
//!
//! There is no switch that turns the audit trail off (and none is added: a trail an
//! operator can silence is not an audit trail). The comparison is against a starved
//! writer instead: a queue of one event, so almost every event is dropped (counted)
//! rather than written; the difference between the two runs is what writing the rows
//! costs the readers. Each run reports reads per second, p50 and p99 latency, the rows
//! written and the events dropped (reads answered minus rows written).

use crate::report::Row;
use crate::setup;
use chrono::{Duration as Span, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvisor_core::SecretString;
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::Dialect;
use tokenvisor_testkit::database::TestDatabase;

const TOKEN: &str = "bench-admin-token-0123456789";

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connections read, round robin.
    pub connections: usize,
    /// Concurrent clients (each one request at a time).
    pub clients: usize,
    /// How long each run lasts.
    pub duration: Duration,
    /// PostgreSQL too (SQLite always).
    pub postgres: bool,
}

/// Both backends, the default writer and the starved one.
pub async fn audit_cost(plan: Plan) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let backends: &[&str] = if plan.postgres {
        &["sqlite", "postgres"]
    } else {
        &["sqlite"]
    };
    for backend in backends {
        for (label, options) in [
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
        ] {
            let row = run(backend, label, options, plan).await?;
            eprintln!("… {} ({}): {}", row.figure, row.size, row.value);
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn run(backend: &str, label: &str, audit: tokenvisor_admin::AuditOptions, plan: Plan) -> anyhow::Result<Row> {
    let database = if backend == "postgres" {
        TestDatabase::postgres().await
    } else {
        TestDatabase::sqlite()
    };
    let (keyring, _) = Keyring::generate();
    let store = Arc::new(SqlStore::connect(database.url(), keyring).await?);
    let fake = crate::scenarios::fake(Dialect::Generic).await?;
    let integration = setup::integration(store.as_ref(), &fake).await?;
    // Two hours of validity: nothing refreshes while the reads are timed.
    let expires_at = Utc::now() + Span::hours(2);
    let connections: Vec<_> = (0..plan.connections)
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
    store.insert_connections(&connections).await?;
    let ids: Arc<Vec<String>> = Arc::new(connections.iter().map(|c| c.id.to_string()).collect());

    let tokenvisor = Tokenvisor::start(store.clone(), setup::config()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let options = tokenvisor_admin::AdminOptions {
        audit,
        shutdown: shutdown.clone(),
        ..tokenvisor_admin::AdminOptions::new(SecretString::new(TOKEN), base.clone())
    };
    let app = tokenvisor_admin::router(tokenvisor.clone(), options);
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
    let created = http
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": "bench", "scopes": ["tokens:read"]}))
        .send()
        .await?;
    anyhow::ensure!(created.status() == 201, "api key: {}", created.status());
    let created: serde_json::Value = created.json().await?;
    let key: Arc<str> = created["key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no key in {created}"))?
        .into();
    // Warm up: every connection's actor has its token in memory.
    for id in ids.iter().take(plan.connections) {
        http.get(format!("{base}/v1/connections/{id}/token"))
            .bearer_auth(&*key)
            .send()
            .await?
            .error_for_status()?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows_before = store.access_store().count_audit_events().await?;

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
    let written = store.access_store().count_audit_events().await? - rows_before;
    shutdown.cancel();
    tokenvisor.shutdown().await;
    server.abort();

    latencies.sort();
    let reads = latencies.len() as u64;
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let value = format!(
        "{:.0} reads/s ({reads} in {:.1} s), p50 {:.2} ms, p99 {:.2} ms; {} rows written, {} dropped{}",
        reads as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        ms(setup::percentile(&latencies, 0.5)),
        ms(setup::percentile(&latencies, 0.99)),
        written,
        reads.saturating_sub(written),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    Ok(Row::new(
        &format!("audit: token reads by API key, {backend}, {label}"),
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
