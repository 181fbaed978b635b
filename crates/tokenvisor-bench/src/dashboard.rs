//! The dashboard at 100,000 connections (`--dashboard-size`): every page of `/ui` timed
//! over HTTP against the admin router of `tokenvisor serve` on a fresh PostgreSQL database.

use crate::report::Row;
use crate::setup;
use chrono::{Duration as Span, Utc};
use futures::StreamExt as _;
use std::time::{Duration, Instant};
use tokenvisor_core::{
    Connection, ConnectionCursor, ConnectionSort, ConnectionStatus, LastError, RefreshAttempt, SecretString,
};
use tokenvisor_store::Store as _;
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::Dialect;

const TOKEN: &str = "bench-admin-token-0123456789";

/// `size` connections over two integrations (tenants `t0`, `t1`... with one connection to
/// each), 5% `needs_reauth`, 3% `degraded` (half rate limited), expiring in 70 to 190
/// minutes (so nothing refreshes while the pages are timed), 500 of them with ten
/// refresh attempts each; then `requests` requests of each page.
pub async fn pages(size: usize, requests: usize) -> anyhow::Result<Vec<Row>> {
    let (database, store) = setup::postgres_store().await?;
    let fake = crate::scenarios::fake(Dialect::Generic).await?;
    let first = setup::integration(store.as_ref(), &fake).await?;
    let mut second = first.clone();
    second.id = tokenvisor_core::IntegrationId::new();
    second.name = "bench-two".into();
    store.insert_integration(&second).await?;
    let now = Utc::now();
    let loading = Instant::now();
    let mut sample = None;
    // The connection half-way through the table (by id), for the pages deep in it.
    let mut middle = None;
    for start in (0..size).step_by(50_000) {
        let batch: Vec<Connection> = (start..(start + 50_000).min(size))
            .map(|i| {
                let integration = if i % 2 == 0 { first.id } else { second.id };
                let expires_at = now + Span::minutes(70 + (i % 120) as i64);
                let mut connection = setup::connection(
                    integration,
                    &format!("t{}", i / 2),
                    &format!("at_{i:032}"),
                    &format!("rt_{i:032}"),
                    expires_at,
                );
                connection.next_refresh_at = Some(expires_at - Span::minutes(10));
                match i % 100 {
                    0..5 => {
                        connection.status = ConnectionStatus::NeedsReauth;
                        connection.is_active = false;
                    }
                    5..8 => {
                        connection.status = ConnectionStatus::Degraded;
                        connection.last_error = Some(LastError {
                            code: if i % 2 == 0 { "rate_limited" } else { "http_503" }.into(),
                            message: "provider said no".into(),
                            at: now,
                        });
                    }
                    _ => {}
                }
                connection
            })
            .collect();
        sample.get_or_insert_with(|| (batch[10].id, batch[10].tenant_id.clone()));
        if (start..start + batch.len()).contains(&(size / 2)) {
            middle = Some(batch[size / 2 - start].clone());
        }
        store.insert_connections(&batch).await?;
    }
    let (sample, tenant) = sample.ok_or_else(|| anyhow::anyhow!("no connections"))?;
    let middle = middle.ok_or_else(|| anyhow::anyhow!("no connections"))?;
    let ids: Vec<_> = store
        .list_connections(&tokenvisor_core::ConnectionFilter {
            limit: Some(500),
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|c| c.id)
        .chain(std::iter::once(sample))
        .collect();
    let attempts = futures::stream::iter(ids.into_iter().flat_map(|id| {
        (0..10).map(move |n| RefreshAttempt {
            connection_id: id,
            started_at: now - Span::minutes(n * 15),
            reason: tokenvisor_core::RefreshReason::Scheduled,
            outcome: tokenvisor_core::RefreshOutcomeKind::Success,
            error_code: None,
            http_status: Some(200),
            duration_ms: 40,
        })
    }))
    .map(|attempt| {
        let store = store.clone();
        async move { store.record_attempt(&attempt).await }
    })
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    attempts.into_iter().collect::<Result<Vec<()>, _>>()?;
    eprintln!(
        "dashboard: {size} connections and history in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    // What autovacuum does soon after a bulk load: statistics and the visibility map.
    let vacuum = std::process::Command::new("psql")
        .arg(database.url())
        .args(["-q", "-c", "VACUUM ANALYZE"])
        .output()?;
    anyhow::ensure!(
        vacuum.status.success(),
        "VACUUM ANALYZE failed: {}",
        String::from_utf8_lossy(&vacuum.stderr)
    );

    // The overview's counting, the earlier way (four counts per integration) and now (one
    // summary: grouped counts, the expiring tokens, the degraded ones by error).
    let mut rows = Vec::new();
    let mut before = Vec::with_capacity(requests);
    let mut after = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        for integration in [first.id, second.id] {
            for status in [
                ConnectionStatus::Active,
                ConnectionStatus::Degraded,
                ConnectionStatus::NeedsReauth,
                ConnectionStatus::Disabled,
            ] {
                store
                    .count_connections(&tokenvisor_core::ConnectionFilter {
                        integration_id: Some(integration),
                        status: Some(status),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        before.push(started.elapsed());
        let started = Instant::now();
        store.connection_summary(Utc::now(), Span::hours(1)).await?;
        after.push(started.elapsed());
    }
    for (figure, mut times) in [
        (
            "dashboard: status counts, before: 4 count queries per integration (2 integrations), p50 / p95 / max",
            before,
        ),
        (
            "dashboard: Store::connection_summary (counts by integration and status, expiring, degraded by error), p50 / p95 / max",
            after,
        ),
    ] {
        times.sort();
        rows.push(Row::new(figure, size, timings(&times), "", None));
    }

    let tokenvisor = Tokenvisor::start(store.clone(), setup::config()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = tokenvisor_admin::router(
        tokenvisor.clone(),
        tokenvisor_admin::AdminOptions::new(SecretString::new(TOKEN), base.clone()),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // Plain HTTP on loopback, but reqwest is built without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let signed_in = http
        .post(format!("{base}/ui/sign-in"))
        .form(&[("token", TOKEN)])
        .send()
        .await?;
    let cookie = signed_in
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no session cookie: {}", signed_in.status()))?;

    // The second page of the table sorted by failures in a row (one value for most rows:
    // the cursor's id breaks the tie), for a page that starts past a cursor.
    let first_page = http
        .get(format!("{base}/ui/connections?sort=failures&order=desc"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?
        .text()
        .await?;
    let marker = "rel=\"next\" href=\"";
    let next = first_page
        .find(marker)
        .map(|at| &first_page[at + marker.len()..])
        .and_then(|rest| rest.split('"').next())
        .map(|href| href.replace("&amp;", "&"))
        .ok_or_else(|| anyhow::anyhow!("no next page when sorted by failures"))?;
    let pages = [
        ("/ui".to_owned(), "overview"),
        (
            "/ui/connections?sort=expires_at&order=desc".to_owned(),
            "connections by expiry, latest first",
        ),
        (
            "/ui/connections?sort=last_error&order=desc".to_owned(),
            "connections by last error, latest first",
        ),
        (next, "connections by failures in a row, second page by cursor"),
        (
            format!(
                "/ui/connections?cursor={}",
                ConnectionCursor::after(ConnectionSort::Id, &middle)
            ),
            "connections, the page half-way through the table by cursor",
        ),
        (
            format!(
                "/ui/connections?sort=expires_at&cursor={}",
                ConnectionCursor::after(ConnectionSort::ExpiresAt, &middle)
            ),
            "connections by expiry, a page deep in the table by cursor",
        ),
        (
            "/ui/connections?q=t4321".to_owned(),
            "connections, search by tenant prefix",
        ),
        (
            "/ui/connections?q=t4321&sort=expires_at".to_owned(),
            "connections, search by tenant prefix, by expiry",
        ),
        ("/ui/connections".to_owned(), "connections"),
        (
            "/ui/connections?status=needs_reauth".to_owned(),
            "connections, status filter",
        ),
        (format!("/ui/connections?tenant={tenant}"), "connections, tenant filter"),
        (format!("/ui/connections/{sample}"), "a connection"),
        ("/ui/integrations".to_owned(), "integrations"),
    ];
    for (path, name) in pages {
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let answer = http
                .get(format!("{base}{path}"))
                .header(reqwest::header::COOKIE, &cookie)
                .send()
                .await?;
            let status = answer.status();
            let body = answer.text().await?;
            times.push(started.elapsed());
            anyhow::ensure!(status.is_success(), "{path}: {status}: {body:.200}");
            // A page by cursor is timed with its rows, not as an empty page.
            anyhow::ensure!(
                !path.contains("cursor=") || body.contains("data-connection="),
                "{path}: no rows"
            );
        }
        times.sort();
        let p95 = setup::percentile(&times, 0.95).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        rows.push(Row::new(
            &format!("dashboard: GET {path} ({name}), p50 / p95 / max"),
            size,
            timings(&times),
            "< 100 ms",
            Some(p95 < 100.0),
        ));
    }
    server.abort();
    tokenvisor.shutdown().await;
    Ok(rows)
}

/// `p50 / p95 / max ms (n requests)` of sorted durations.
fn timings(sorted: &[Duration]) -> String {
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    format!(
        "{:.1} / {:.1} / {:.1} ms ({} requests)",
        ms(setup::percentile(sorted, 0.5)),
        ms(setup::percentile(sorted, 0.95)),
        ms(sorted.last().copied()),
        sorted.len()
    )
}
