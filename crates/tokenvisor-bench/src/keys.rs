//! Key rotation at scale: PostgreSQL holds `size` connections under key `a`; the
//! supervisor runs with keys `b,a` and keeps refreshing; the rotation runs in a child
//! process (this binary, `--keys-rotate-child`), is killed with SIGKILL half-way, and
//! runs again to the end. Reports rows/s, refreshes during the rotation, refresh
//! failures (must be 0) and the values left under another key (must be 0).

use crate::report::Row;
use crate::setup;
use base64::Engine as _;
use chrono::Utc;
use sea_orm::ConnectionTrait as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvisor_store::sql::RotationOptions;
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::Dialect;
use tokenvisor_testkit::database::TestDatabase;

/// The child: rotates the database at `TOKENVISOR_BENCH_URL` with the keys
/// `TOKENVISOR_BENCH_KEYS`, printing `done <rows>` after every batch.
pub async fn rotate_child() -> anyhow::Result<()> {
    let url = std::env::var("TOKENVISOR_BENCH_URL")?;
    let keys = std::env::var("TOKENVISOR_BENCH_KEYS")?;
    let store = SqlStore::connect_with_pool(&url, Keyring::from_key_list(&keys)?, 4).await?;
    let rotation = store.key_rotation();
    let mut stdout = std::io::stdout();
    let progress = rotation
        .rotate(&RotationOptions::default(), |progress| {
            let _ = writeln!(stdout, "done {}", progress.rows_rewritten() + progress.rows_current());
            let _ = stdout.flush();
        })
        .await?;
    println!(
        "finished {} {} {}",
        progress.rows_rewritten(),
        progress.rows_current(),
        progress.rows_raced()
    );
    Ok(())
}

fn child(url: &str, keys: &str) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("--keys-rotate-child")
        .env("TOKENVISOR_BENCH_URL", url)
        .env("TOKENVISOR_BENCH_KEYS", keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// Rows the child reported before stopping (by itself or killed at `kill_at`), and its
/// last line.
fn follow(mut process: std::process::Child, kill_at: Option<u64>) -> anyhow::Result<(u64, String)> {
    let stdout = process.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut done = 0;
    let mut last = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rows) = line.strip_prefix("done ").and_then(|n| n.parse::<u64>().ok()) {
            done = rows;
            if kill_at.is_some_and(|kill_at| rows >= kill_at) {
                process.kill()?; // SIGKILL
                break;
            }
        }
        last = line;
    }
    let status = process.wait()?;
    if kill_at.is_none() && !status.success() {
        anyhow::bail!("the rotation failed: {status}");
    }
    Ok((done, last))
}

/// The scenario (see the module documentation).
pub async fn rotation(size: usize) -> anyhow::Result<Vec<Row>> {
    let database = TestDatabase::postgres().await;
    let url = database.url().to_owned();
    let encode = |key: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(key);
    let (key_a, key_b): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let keys_a = format!("a:{}", encode(&key_a));
    let keys_ba = format!("b:{},a:{}", encode(&key_b), encode(&key_a));

    let fake = crate::scenarios::fake(Dialect::NonRotating).await?;
    let old = SqlStore::connect(&url, Keyring::from_key_list(&keys_a)?).await?;
    let integration = setup::integration(&old, &fake).await?;
    // A share of the connections comes due in the next 40 s (15 min lead), spread out:
    // they refresh while the rotation runs; the rest expire in two hours.
    let now = Utc::now();
    let refreshing = (size / 25).max(10);
    let lead = chrono::Duration::minutes(15);
    let connections = setup::granted_connections(&fake, integration.id, size, |i| {
        if i % (size / refreshing).max(1) == 0 {
            now + lead + chrono::Duration::milliseconds((i as i64 * 40_000) / size as i64)
        } else {
            now + chrono::Duration::hours(2)
        }
    });
    for chunk in connections.chunks(50_000) {
        old.insert_connections(chunk).await?;
    }
    old.close().await?;

    let store = Arc::new(SqlStore::connect(&url, Keyring::from_key_list(&keys_ba)?).await?);
    let tokenvisor = Tokenvisor::start(store.clone(), setup::config()).await?;
    let refreshes_before = fake.refreshes();

    // First run, killed half-way; then the resumed run to the end.
    let started = Instant::now();
    let (killed_at, _) = tokio::task::block_in_place(|| follow(child(&url, &keys_ba)?, Some(size as u64 / 2)))?;
    let first = started.elapsed();
    let progress = store
        .key_rotation()
        .progress(None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no progress recorded"))?;
    let committed_before_kill = progress.rows_rewritten() + progress.rows_current();
    let resumed = Instant::now();
    let (_, last) = tokio::task::block_in_place(|| follow(child(&url, &keys_ba)?, None))?;
    let second = resumed.elapsed();
    let total = started.elapsed();
    let refreshes_during = fake.refreshes() - refreshes_before;
    // Let the refreshes planned inside the window finish, then count failures.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rotation = store.key_rotation();
    let left = rotation.values_not_current().await?;
    let failures = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT COUNT(*) AS n FROM tokenvisor_refresh_attempts WHERE outcome <> 'success'",
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(-1);
    let failed_connections = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT COUNT(*) AS n FROM tokenvisor_connections WHERE refresh_failures > 0 OR status <> 'active'",
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(-1);
    tokenvisor.shutdown().await;
    drop(database);

    let final_progress: Vec<&str> = last.split(' ').collect();
    let raced = final_progress.get(3).copied().unwrap_or("?");
    let rows = size as f64;
    Ok(vec![
        Row::new(
            "keys: rotation to a new key, killed (SIGKILL) half-way and resumed, refreshes running",
            size,
            format!(
                "{:.0} rows/s overall ({rows} rows in {:.1} s: {:.1} s to the kill at {killed_at} rows reported, {committed_before_kill} committed; {:.1} s resumed); {refreshes_during} refreshes during it, {raced} compare-and-sets lost to them and retried",
                rows / (first + second).as_secs_f64(),
                total.as_secs_f64(),
                first.as_secs_f64(),
                second.as_secs_f64(),
            ),
            "",
            None,
        ),
        Row::new(
            "keys: after the rotation, values not under the new key / refresh failures / connections not active",
            size,
            format!("{left} / {failures} / {failed_connections}"),
            "0 / 0 / 0",
            Some(left == 0 && failures == 0 && failed_connections == 0),
        ),
    ])
}
