//! `tokenvisor-bench`: tokenvisor's benchmarks. Prints a table and, with `--write`,
//! writes it to BENCHMARKS.md with the machine, the command and the date.
//!
//! `cargo run --release -p tokenvisor-bench -- --full --write BENCHMARKS.md` (or
//! `scripts/bench.sh`). CI runs `--quick` to check that the harness still runs.

mod audit;
mod baseline;
mod dashboard;
mod keys;
mod recovery;
mod replicas;
mod report;
mod scenarios;
mod setup;

use clap::Parser;
use report::Row;
use scenarios::CommitPath;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "tokenvisor-bench", about = "tokenvisor benchmarks")]
struct Cli {
    /// The sizes of the issue (1k, 10k, 100k; 1M for scale). Slow: minutes.
    #[arg(long)]
    full: bool,
    /// Small sizes only (CI).
    #[arg(long)]
    quick: bool,
    /// Also try one million connections in the scale scenario.
    #[arg(long)]
    million: bool,
    /// Only these scenarios (scale, latency, throughput, precision, herd, dead, baseline, recovery, replicas, dashboard, keys, audit).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write the table to this markdown file.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Throughput only at this size (all three commit paths), e.g. for profiling.
    #[arg(long)]
    throughput_size: Option<usize>,
    /// Refreshes in flight in the throughput scenario (`max_concurrent_refreshes`).
    #[arg(long, default_value_t = 256)]
    throughput_concurrency: usize,
    /// Connections per replica in the replicas scenario (3 replicas). Default: 300,000
    /// with `--full` or `--only replicas`, 1,000 otherwise (and with `--quick`).
    #[arg(long)]
    replicas_size: Option<usize>,
    /// Connections in the dashboard scenario. Default: 100,000; 1,000 with `--quick`.
    #[arg(long)]
    dashboard_size: Option<usize>,
    /// Internal: measure scale at one size and print JSON (run in a child process).
    #[arg(long, hide = true)]
    scale_one: Option<usize>,
    /// Connections in the keys scenario. Default: 100,000; 2,000 with `--quick`.
    #[arg(long)]
    keys_size: Option<usize>,
    /// Internal: the keys scenario's rotation (run in a child process, killed half-way).
    #[arg(long, hide = true)]
    keys_rotate_child: bool,
    /// Token reads per second of the audit scenario's in-process, open-loop part.
    /// Default: 10,000; 2,000 with `--quick`.
    #[arg(long)]
    audit_rate: Option<u64>,
    /// Seconds of the audit scenario's open-loop schedule. Default: 20; 1 with `--quick`.
    #[arg(long)]
    audit_seconds: Option<f64>,
    /// Only these parts of the audit scenario (http, paced). Default: both.
    #[arg(long, value_delimiter = ',')]
    audit_parts: Vec<String>,
    /// Only these backends in the audit scenario (sqlite, postgres). Default: both, SQLite
    /// only with `--quick`.
    #[arg(long, value_delimiter = ',')]
    audit_backends: Vec<String>,
}

fn wants(cli: &Cli, scenario: &str) -> bool {
    cli.only.is_empty() || cli.only.iter().any(|s| s == scenario)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if cli.keys_rotate_child {
        return runtime.block_on(keys::rotate_child());
    }
    if let Some(size) = cli.scale_one {
        let result = runtime.block_on(scenarios::scale_one(size))?;
        println!("{result}");
        return Ok(());
    }
    let sizes: Vec<usize> = if cli.full {
        vec![1_000, 10_000, 100_000]
    } else {
        vec![1_000]
    };
    let mut rows: Vec<Row> = Vec::new();

    if wants(&cli, "scale") {
        let mut scale_sizes = if cli.quick { vec![1_000] } else { sizes.clone() };
        if cli.million {
            scale_sizes.push(1_000_000);
        }
        let mut results = Vec::new();
        for size in scale_sizes {
            let exe = std::env::current_exe()?;
            let output = std::process::Command::new(exe)
                .arg("--scale-one")
                .arg(size.to_string())
                .output()?;
            if !output.status.success() {
                eprintln!("scale at {size} failed: {}", String::from_utf8_lossy(&output.stderr));
                continue;
            }
            results.push(serde_json::from_slice(&output.stdout)?);
        }
        rows.extend(scenarios::scale_rows(&results));
        print_progress(&rows);
    }
    if wants(&cli, "latency") {
        let size = if cli.quick { 1_000 } else { 10_000 };
        let duration = if cli.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        };
        rows.extend(runtime.block_on(scenarios::token_latency(size, duration))?);
        print_progress(&rows);
    }
    if wants(&cli, "throughput") {
        let pgbench_seconds = if cli.quick { 2 } else { 5 };
        let pgbench_before = pgbench_tps(pgbench_seconds);
        let throughput_sizes = match cli.throughput_size {
            Some(size) => vec![size],
            None => sizes.clone(),
        };
        let mut measured: Vec<(usize, f64)> = Vec::new();
        for &size in &throughput_sizes {
            let size = if cli.full { size.max(10_000) } else { size };
            // The earlier commit paths beside the current one, in the same run (they are
            // too slow to run at 100k: minutes).
            if size <= 10_000 {
                for path in [CommitPath::SplitHistory, CommitPath::Transaction] {
                    let (found, _) =
                        runtime.block_on(scenarios::refresh_throughput(size, path, cli.throughput_concurrency))?;
                    rows.extend(found);
                }
            }
            let (found, rate) = runtime.block_on(scenarios::refresh_throughput(
                size,
                CommitPath::GroupCommit,
                cli.throughput_concurrency,
            ))?;
            rows.extend(found);
            measured.push((size, rate));
            if cli.full && size >= 100_000 {
                break;
            }
        }
        // pgbench before and after the refreshes; the ratio is taken against the higher
        // of the two, so a machine busier during one pgbench run does not flatter it.
        let pgbench_after = pgbench_tps(pgbench_seconds);
        let ceiling = match (pgbench_before, pgbench_after) {
            (Some(before), Some(after)) => Some(before.max(after)),
            (one, other) => one.or(other),
        };
        if let Some(tps) = ceiling {
            let both = format!(
                "pgbench {} before, {} after",
                pgbench_before.map_or("-".to_owned(), |t| format!("{t:.0}")),
                pgbench_after.map_or("-".to_owned(), |t| format!("{t:.0}"))
            );
            for (size, rate) in measured {
                let ratio = rate / tps;
                rows.push(Row::new(
                    "refresh throughput (group commit) ÷ pgbench single-row UPDATE commits/s",
                    size,
                    format!("{:.0}% of {tps:.0} tps ({both})", ratio * 100.0),
                    "≥ 55%",
                    Some(ratio >= 0.55),
                ));
            }
        }
        print_progress(&rows);
    }
    if wants(&cli, "precision") {
        let (size, spread) = if cli.full {
            (100_000, Duration::from_secs(60))
        } else {
            (1_000, Duration::from_secs(3))
        };
        rows.extend(runtime.block_on(scenarios::schedule_precision(size, spread))?);
        print_progress(&rows);
    }
    if wants(&cli, "herd") {
        let (size, window, rate) = if cli.full {
            (100_000, Duration::from_secs(60), 1_000)
        } else {
            (1_000, Duration::from_secs(3), 200)
        };
        rows.extend(runtime.block_on(scenarios::herd(size, window, rate))?);
        print_progress(&rows);
    }
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
    };
    if wants(&cli, "dead") {
        rows.extend(paused()?.block_on(baseline::dead_connection())?);
        print_progress(&rows);
    }
    if wants(&cli, "recovery") {
        let size = if cli.quick { 20 } else { 1_000 };
        rows.extend(paused()?.block_on(recovery::after_provider_outage(size))?);
        print_progress(&rows);
    }
    if wants(&cli, "replicas") {
        // Full size when asked for by name or with --full; CI's --quick keeps it small
        // (1,000 per replica, 2-second lease, two kills).
        let named = cli.only.iter().any(|s| s == "replicas");
        let mut sizes = if !cli.quick && (cli.full || named) {
            replicas::Sizes::full(300_000)
        } else {
            replicas::Sizes::quick()
        };
        if let Some(size) = cli.replicas_size {
            sizes.per_replica = size;
        }
        rows.extend(runtime.block_on(replicas::replicas(sizes))?);
        print_progress(&rows);
    }
    if wants(&cli, "dashboard") {
        let (size, requests) = if cli.quick { (1_000, 5) } else { (100_000, 50) };
        let size = cli.dashboard_size.unwrap_or(size);
        rows.extend(runtime.block_on(dashboard::pages(size, requests))?);
        print_progress(&rows);
    }
    if wants(&cli, "keys") {
        let size = cli.keys_size.unwrap_or(if cli.quick { 2_000 } else { 100_000 });
        rows.extend(runtime.block_on(keys::rotation(size))?);
        print_progress(&rows);
    }
    if wants(&cli, "audit") {
        // --quick: SQLite only, one second per run, 2,000 reads/s in the open-loop part.
        let seconds = cli.audit_seconds.unwrap_or(if cli.quick { 1.0 } else { 20.0 });
        let paced_duration = Duration::try_from_secs_f64(seconds)
            .map_err(|_| anyhow::anyhow!("--audit-seconds must be a non-negative number of seconds"))?;
        let part = |name: &str| cli.audit_parts.is_empty() || cli.audit_parts.iter().any(|p| p == name);
        let backends: Vec<String> = if !cli.audit_backends.is_empty() {
            cli.audit_backends.clone()
        } else if cli.quick {
            vec!["sqlite".into()]
        } else {
            vec!["sqlite".into(), "postgres".into()]
        };
        let plan = audit::Plan {
            connections: if cli.quick { 100 } else { 1_000 },
            clients: if cli.quick { 8 } else { 64 },
            duration: Duration::from_secs(if cli.quick { 1 } else { 10 }),
            rate: cli.audit_rate.unwrap_or(if cli.quick { 2_000 } else { 10_000 }),
            paced_duration,
            http: part("http"),
            paced: part("paced"),
        };
        rows.extend(runtime.block_on(audit::audit_cost(plan, &backends))?);
    }
    if wants(&cli, "baseline") {
        let size = if cli.full { 10_000 } else { 200 };
        rows.extend(paused()?.block_on(baseline::versus_baseline(size))?);
    }

    let table = report::markdown(&rows);
    println!("\n{table}");
    if let Some(path) = &cli.write {
        std::fs::write(path, document(&table))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_progress(rows: &[Row]) {
    if let Some(row) = rows.last() {
        eprintln!("… {} ({}): {}", row.figure, row.size, row.value);
    }
}

/// PostgreSQL's own single-row UPDATE commit rate, measured with pgbench in this run.
fn pgbench_tps(seconds: u32) -> Option<f64> {
    let url = std::env::var("TOKENVISOR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let script = std::env::temp_dir().join("tokenvisor-pgbench.sql");
    let setup = "DROP TABLE IF EXISTS tokenvisor_pgbench; \
        CREATE TABLE tokenvisor_pgbench (id int PRIMARY KEY, version bigint NOT NULL, payload bytea NOT NULL); \
        INSERT INTO tokenvisor_pgbench SELECT g, 1, decode(repeat('ab', 200), 'hex') FROM generate_series(1, 10000) g;";
    let psql = std::process::Command::new("psql")
        .arg(&url)
        .arg("-q")
        .arg("-c")
        .arg(setup)
        .output()
        .ok()?;
    if !psql.status.success() {
        eprintln!("pgbench set-up failed: {}", String::from_utf8_lossy(&psql.stderr));
        return None;
    }
    std::fs::write(
        &script,
        "\\set id random(1, 10000)\nUPDATE tokenvisor_pgbench SET version = version + 1, payload = payload WHERE id = :id AND version > 0;\n",
    )
    .ok()?;
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-c", "16", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(&url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text.lines().find_map(|line| {
        let rest = line.strip_prefix("tps = ")?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    });
    let _ = std::process::Command::new("psql")
        .arg(&url)
        .arg("-q")
        .arg("-c")
        .arg("DROP TABLE IF EXISTS tokenvisor_pgbench")
        .output();
    tps
}

fn document(table: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_default();
    let command: Vec<String> = std::env::args().collect();
    format!(
        "# tokenvisor benchmarks\n\nMeasured {} on {cores} cores ({cpu}), {memory} memory, PostgreSQL at 127.0.0.1, the fake provider on loopback in the same process.\n\nCommand: `{}` (release build; `scripts/bench.sh` runs the full set).\n\n{table}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        command.join(" "),
    )
}
