//! Replicas sharing the work on one PostgreSQL database, through the real `tokenvisor`
//! binary: three `tokenvisor serve` processes on a fresh database holding `3 × size`
//! connections (nothing due), the fake provider in this process. Measured:
//!
//! 1. start-up: from spawning the three until all are ready and together supervise
//!    every connection (and each replica's own load, from its log lines);
//! 2. resident memory of each replica once settled (`VmRSS`);
//! 3. failover: `kill -9` one replica (round-robin), time until the two survivors
//!    supervise every connection (their `/metrics`, polled every 200 ms), then restart it
//!    with the same data directory and replica id and wait until settled again;
//! 4. refresh throughput of the three together: a batch of connections with tokens
//!    inside their lead is written and announced (`NOTIFY`, as a registration on another
//!    replica does); the fake issues short lifetimes (a few seconds) so each connection
//!    is due again right after its refresh and the three stay saturated; refreshes are
//!    counted at the provider over a window, with PostgreSQL's WAL and CPU over the same
//!    window, beside pgbench's single-row UPDATE rate in the same run.

use crate::report::Row;
use crate::setup::{self, percentile};
use chrono::Utc;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenvisor_core::Connection;
use tokenvisor_store::{Keyring, SqlStore, Store as _};
use tokenvisor_testkit::database::TestDatabase;
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const REPLICAS: usize = 3;

/// How big the scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Connections per replica (the database holds three times as many).
    pub per_replica: usize,
    /// Kill/restart rounds.
    pub failovers: usize,
    /// `TOKENVISOR_PARTITION_LEASE`; `None`: the binary's default (10 s).
    pub lease: Option<Duration>,
    /// Connections of the throughput batch.
    pub hot: usize,
    /// Token lifetime the fake issues during the throughput part, in seconds.
    pub hot_lifetime: u64,
    /// The throughput window.
    pub window: Duration,
    /// pgbench's run length, in seconds.
    pub pgbench_seconds: u32,
    /// How long start-up and settling may take before the scenario gives up.
    pub patience: Duration,
}

impl Sizes {
    pub fn full(per_replica: usize) -> Self {
        Self {
            per_replica,
            failovers: 5,
            lease: None,
            hot: 60_000,
            hot_lifetime: 6,
            window: Duration::from_secs(20),
            pgbench_seconds: 5,
            patience: Duration::from_secs(900),
        }
    }

    pub fn quick() -> Self {
        Self {
            per_replica: 1_000,
            failovers: 2,
            lease: Some(Duration::from_secs(2)),
            hot: 600,
            hot_lifetime: 2,
            window: Duration::from_secs(3),
            pgbench_seconds: 2,
            patience: Duration::from_secs(60),
        }
    }
}

/// Where the `tokenvisor` binary is: `TOKENVISOR_BIN`, else next to this executable
/// (target/release or target/debug), built with cargo if missing and run under cargo.
fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TOKENVISOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    let path = dir.join("tokenvisor");
    if path.exists() {
        return Ok(path);
    }
    let release = dir.ends_with("release");
    if let Ok(cargo) = std::env::var("CARGO") {
        eprintln!("… building the tokenvisor binary ({})", path.display());
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "tokenvisor-server"]);
        if release {
            build.arg("--release");
        }
        let status = build.status()?;
        anyhow::ensure!(status.success() && path.exists(), "building tokenvisor-server failed");
        return Ok(path);
    }
    anyhow::bail!(
        "no tokenvisor binary at {}: build it with `cargo build {}-p tokenvisor-server` or set TOKENVISOR_BIN",
        path.display(),
        if release { "--release " } else { "" }
    )
}

/// One `tokenvisor serve` child process.
struct Replica {
    child: Child,
    /// `127.0.0.1:port` of its admin API.
    addr: String,
    spawned: Instant,
    /// The log lines the scenario reads (arrival time, line).
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The last log lines of any kind, for diagnostics.
    tail: Arc<Mutex<std::collections::VecDeque<String>>>,
}

/// Log lines kept (the rest is only in the tail).
const KEPT: [&str; 7] = [
    "admin API listening",
    "claimed partitions",
    "loaded the connections",
    "supervisor started",
    "tokenvisor is supervising",
    "handed partitions over",
    "ERROR",
];

struct Cluster {
    binary: PathBuf,
    root: tempfile::TempDir,
    url: String,
    key: String,
    sizes: Sizes,
    up: Vec<Option<Replica>>,
}

impl Cluster {
    fn spawn(&self, n: usize) -> anyhow::Result<Replica> {
        let dir = self.root.path().join(format!("r{n}"));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new(&self.binary);
        for (key, _) in std::env::vars() {
            if key.starts_with("TOKENVISOR_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(&dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("TOKENVISOR_DATABASE_URL", &self.url)
            .env("TOKENVISOR_ENCRYPTION_KEY", &self.key)
            .env("TOKENVISOR_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOKENVISOR_DATA_DIR", dir.join("data"))
            .env("TOKENVISOR_REPLICA_ID", format!("r{n}"))
            .env("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0")
            .env("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS", "127.0.0.1")
            .env("TOKENVISOR_REQUEST_TIMEOUT", "10s")
            // The throughput part refreshes each connection every few seconds.
            .env("TOKENVISOR_MIN_SPACING", "500ms");
        if let Some(lease) = self.sizes.lease {
            command.env("TOKENVISOR_PARTITION_LEASE", format!("{}ms", lease.as_millis()));
        }
        let spawned = Instant::now();
        let mut child = command
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        {
            let (lines, tail) = (lines.clone(), tail.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let at = Instant::now();
                    if KEPT.iter().any(|needle| line.contains(needle)) {
                        lines.lock().expect("lines").push((at, line.clone()));
                    }
                    let mut tail = tail.lock().expect("tail");
                    tail.push_back(line);
                    if tail.len() > 40 {
                        tail.pop_front();
                    }
                }
            });
        }
        Ok(Replica {
            child,
            addr: String::new(),
            spawned,
            lines,
            tail,
        })
    }

    /// Waits until replica `n`'s admin API listens (it does once its first share is
    /// loaded) and records its address.
    async fn wait_listening(&mut self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.sizes.patience;
        let replica = self.up[n].as_mut().ok_or_else(|| anyhow::anyhow!("r{n} is not up"))?;
        loop {
            if let Some(line) = replica.find("admin API listening") {
                replica.addr = field(&line, "addr").ok_or_else(|| anyhow::anyhow!("no addr in {line}"))?;
                return Ok(());
            }
            if let Some(status) = replica.child.try_wait()? {
                anyhow::bail!("replica r{n} exited ({status}):\n{}", replica.tail());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replica r{n} never listened:\n{}",
                replica.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Replica)> {
        self.up
            .iter()
            .enumerate()
            .filter_map(|(n, r)| r.as_ref().map(|r| (n, r)))
    }

    /// Connections each live replica supervises (`None` where it did not answer).
    async fn supervised(&self) -> Vec<(usize, Option<usize>)> {
        let mut counts = Vec::new();
        for (n, replica) in self.live() {
            let count = match get(&replica.addr, "/metrics").await {
                Ok((200, text)) => Some(metric_sum(&text, "tokenvisor_supervised_connections") as usize),
                _ => None,
            };
            counts.push((n, count));
        }
        counts
    }

    /// `tokenvisor_refreshes_total` (all outcomes) of each live replica.
    async fn refreshes(&self) -> Vec<(usize, f64)> {
        let mut counts = Vec::new();
        for (n, replica) in self.live() {
            let value = match get(&replica.addr, "/metrics").await {
                Ok((200, text)) => metric_sum(&text, "tokenvisor_refreshes_total"),
                _ => f64::NAN,
            };
            counts.push((n, value));
        }
        counts
    }

    /// Waits until every live replica is ready, `expected` replicas are alive, no
    /// partition is unowned, the live replicas supervise `total` together and each at
    /// least a fifth of it. Answers the time waited and each one's count.
    async fn settle(&self, expected: usize, total: usize) -> anyhow::Result<(Duration, Vec<(usize, usize)>)> {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            let mut settled = true;
            for (n, replica) in self.live() {
                let ready = get(&replica.addr, "/readyz").await.map(|(s, _)| s).unwrap_or(0);
                let cluster = get(&replica.addr, "/v1/cluster").await.ok();
                let body: serde_json::Value = cluster
                    .and_then(|(_, text)| serde_json::from_str(&text).ok())
                    .unwrap_or_default();
                let alive = body["replicas"]
                    .as_array()
                    .map_or(0, |r| r.iter().filter(|r| r["alive"] == true).count());
                let unowned = body["unowned_partitions"].as_u64().unwrap_or(u64::MAX);
                settled &= ready == 200 && alive == expected && unowned == 0;
                last = format!("r{n}: ready {ready}, alive {alive}, unowned {unowned}");
            }
            let counts = self.supervised().await;
            let known: Vec<(usize, usize)> = counts.iter().filter_map(|(n, c)| c.map(|c| (*n, c))).collect();
            let sum: usize = known.iter().map(|(_, c)| c).sum();
            let fair = known.len() == counts.len() && known.iter().all(|(_, c)| *c * 5 >= total);
            if settled && sum == total && fair {
                return Ok((started.elapsed(), known));
            }
            anyhow::ensure!(
                started.elapsed() < self.sizes.patience,
                "not settled after {:?}: {last}; supervised {counts:?} of {total}",
                self.sizes.patience
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every replica with SIGKILL (a graceful stop of 100k actors takes longer
    /// than the rest of the scenario and measures nothing here).
    fn stop_all(&mut self) {
        for replica in self.up.iter_mut().filter_map(Option::take) {
            replica.kill9();
        }
    }
}

impl Replica {
    fn find(&self, needle: &str) -> Option<String> {
        let lines = self.lines.lock().expect("lines");
        lines.iter().find(|(_, l)| l.contains(needle)).map(|(_, l)| l.clone())
    }

    /// The kept lines containing `needle`, with their arrival after the spawn.
    fn found(&self, needle: &str) -> Vec<(Duration, String)> {
        let lines = self.lines.lock().expect("lines");
        lines
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .map(|(at, l)| (at.duration_since(self.spawned), l.clone()))
            .collect()
    }

    fn tail(&self) -> String {
        let tail = self.tail.lock().expect("tail");
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=value` in a text log line.
fn field(line: &str, key: &str) -> Option<String> {
    let plain = format!("{key}=");
    let start = line.find(&plain)?;
    let rest = &line[start + plain.len()..];
    let value: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    Some(value.trim_matches('"').to_owned())
}

/// `GET path` on `addr` with the admin token (HTTP/1.0: no chunked body): status and body.
async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
        anyhow::Ok((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await?
}

/// The sum of the samples of Prometheus metric `name` in `text`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One `psql` session held for the whole scenario: connected before the replicas start,
/// so it keeps its slot when their pools fill PostgreSQL's `max_connections`.
struct Psql {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Psql {
    fn connect(url: &str) -> anyhow::Result<Psql> {
        let mut child = Command::new("psql")
            .arg(url)
            .args(["-X", "-q", "-t", "-A"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no psql stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no psql stdout"))?);
        let mut psql = Psql { child, stdin, stdout };
        psql.query("SELECT 1")?;
        Ok(psql)
    }

    /// Runs `sql` (one or more statements); answers the last line printed.
    fn query(&mut self, sql: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        writeln!(self.stdin, "{sql};\n\\echo __end__")?;
        self.stdin.flush()?;
        let mut last = String::new();
        loop {
            let mut line = String::new();
            anyhow::ensure!(self.stdout.read_line(&mut line)? > 0, "psql ended during {sql}");
            let line = line.trim();
            if line == "__end__" {
                return Ok(last);
            }
            if !line.is_empty() {
                last = line.to_owned();
            }
        }
    }

    fn wal_lsn(&mut self) -> anyhow::Result<String> {
        self.query("SELECT pg_current_wal_lsn()")
    }

    fn wal_bytes(&mut self, from: &str, to: &str) -> anyhow::Result<f64> {
        Ok(self
            .query(&format!("SELECT pg_wal_lsn_diff('{to}', '{from}')"))?
            .parse::<f64>()?)
    }

    /// The sum of the hot connections' row versions: each committed refresh adds one.
    fn versions(&mut self, integration: tokenvisor_core::IntegrationId) -> anyhow::Result<u64> {
        Ok(self
            .query(&format!(
                "SELECT coalesce(sum(version), 0) FROM tokenvisor_connections WHERE integration_id = '{integration}'"
            ))?
            .parse()?)
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// Connections with tokens valid for `valid_for` (nothing due), `batch` at a time.
async fn insert_connections(
    store: &SqlStore,
    integration: tokenvisor_core::IntegrationId,
    count: usize,
    valid_for: chrono::Duration,
) -> anyhow::Result<()> {
    let expires_at = Utc::now() + valid_for;
    for start in (0..count).step_by(50_000) {
        let batch: Vec<Connection> = (start..(start + 50_000).min(count))
            .map(|i| {
                setup::connection(
                    integration,
                    &format!("c{i}"),
                    &format!("at_{i:032}"),
                    &format!("rt_{i:032}"),
                    expires_at,
                )
            })
            .collect();
        store.insert_connections(&batch).await?;
    }
    Ok(())
}

/// The scenario; rows for the table.
pub async fn replicas(sizes: Sizes) -> anyhow::Result<Vec<Row>> {
    let binary = binary()?;
    let total = sizes.per_replica * REPLICAS;
    let database = TestDatabase::postgres().await;
    let url = database.url().to_owned();
    let database_name = url.rsplit('/').next().unwrap_or_default().to_owned();
    let (keyring, key) = Keyring::generate();
    let store = SqlStore::connect(&url, keyring).await?;
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::NonRotating,
        expires_in: 3600,
        ..FakeConfig::default()
    })
    .await?;
    let integration = setup::integration(&store, &fake).await?;
    let inserting = Instant::now();
    insert_connections(&store, integration.id, total, chrono::Duration::hours(12)).await?;
    eprintln!(
        "… replicas: {total} connections inserted in {:.1} s",
        inserting.elapsed().as_secs_f64()
    );
    // The throughput batch, written now but inactive (not supervised) until the
    // throughput part: then the bench's own pool is closed, and only one psql session
    // (opened before the replicas) needs a PostgreSQL connection slot.
    let hot_integration = {
        let mut hot = integration.clone();
        hot.id = tokenvisor_core::IntegrationId::new();
        hot.name = "bench-hot".into();
        store.insert_integration(&hot).await?;
        hot
    };
    let expires_at = Utc::now() + chrono::Duration::minutes(5);
    let hot: Vec<Connection> = (0..sizes.hot)
        .map(|i| {
            let label = format!("h{i}");
            let issued = fake.issue_grant(&label);
            let mut connection = setup::connection(
                hot_integration.id,
                &label,
                &issued.access_token,
                &issued.refresh_token,
                expires_at,
            );
            connection.is_active = false;
            connection
        })
        .collect();
    for chunk in hot.chunks(50_000) {
        store.insert_connections(chunk).await?;
    }
    drop(hot);
    store.close().await?;
    let mut psql = Psql::connect(&url)?;
    psql.query("VACUUM ANALYZE tokenvisor_connections")?;
    // pgbench before the replicas start (their pools may hold most of the server's
    // connections later) and after they stop.
    let pgbench_before = crate::pgbench_tps(sizes.pgbench_seconds);

    let mut cluster = Cluster {
        binary,
        root: tempfile::tempdir()?,
        url: url.clone(),
        key,
        sizes: sizes.clone(),
        up: Vec::new(),
    };
    let hot = Hot {
        integration: hot_integration.id,
        pgbench_before,
    };
    let result = run(&mut cluster, &mut psql, &fake, &hot, total, &database_name).await;
    cluster.stop_all();
    drop(psql);
    drop(database);
    result
}

/// The throughput batch and what was measured before the replicas started.
struct Hot {
    integration: tokenvisor_core::IntegrationId,
    pgbench_before: Option<f64>,
}

async fn run(
    cluster: &mut Cluster,
    psql: &mut Psql,
    fake: &FakeProvider,
    hot: &Hot,
    total: usize,
    database_name: &str,
) -> anyhow::Result<Vec<Row>> {
    let sizes = cluster.sizes.clone();
    let size_label = format!("{REPLICAS} × {}", sizes.per_replica);
    let lease_label = match sizes.lease {
        Some(lease) => format!("lease {:.0} s", lease.as_secs_f64()),
        None => "lease 10 s (default)".to_owned(),
    };
    let mut rows = Vec::new();

    // 1. Start-up.
    let started = Instant::now();
    for n in 0..REPLICAS {
        let replica = cluster.spawn(n)?;
        cluster.up.push(Some(replica));
    }
    for n in 0..REPLICAS {
        cluster.wait_listening(n).await?;
    }
    let (_, counts) = cluster.settle(REPLICAS, total).await?;
    let startup = started.elapsed();
    let mut loads = Vec::new();
    for (n, replica) in cluster.live() {
        // At start: the share claimed on joining, loaded before the admin API listens
        // ("supervisor started connections=… elapsed_ms=…"); later claims load in the
        // background ("loaded the connections of claimed partitions connections=…").
        let initial = replica.found("supervisor started");
        let initial = initial.first().map_or("no start line".to_owned(), |(at, line)| {
            format!(
                "{} at start (spawned in {} ms, line at {:.1} s)",
                field(line, "connections").unwrap_or_default(),
                field(line, "elapsed_ms").unwrap_or_default(),
                at.as_secs_f64()
            )
        });
        let loaded = replica.found("loaded the connections");
        let connections: usize = loaded
            .iter()
            .filter_map(|(_, l)| field(l, "connections")?.parse::<usize>().ok())
            .sum();
        let later = match loaded.last() {
            Some((at, _)) => format!(
                "+{connections} in {} later loads, last at {:.1} s",
                loaded.len(),
                at.as_secs_f64()
            ),
            None => "no later loads".to_owned(),
        };
        let handed = replica.found("handed partitions over").len();
        loads.push(format!("r{n}: {initial}, {later}, {handed} hand-overs"));
    }
    let split: Vec<String> = counts.iter().map(|(n, c)| format!("r{n} {c}")).collect();
    rows.push(Row::new(
        "replicas: start-up, spawn of 3 processes → all ready and together supervising every connection",
        &size_label,
        format!("{:.1} s (per replica: {})", startup.as_secs_f64(), split.join(", ")),
        "",
        None,
    ));
    rows.push(Row::new(
        "replicas: each replica's load (its log lines; times after its spawn)",
        &size_label,
        loads.join("; "),
        "",
        None,
    ));
    crate::print_progress(&rows);

    // 2. Memory once settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<String> = cluster
        .live()
        .map(|(n, r)| format!("r{n} {}", mb(rss_of(r.pid()))))
        .collect();
    rows.push(Row::new(
        "replicas: resident memory (VmRSS) per replica once settled",
        &size_label,
        rss.join(", "),
        "",
        None,
    ));
    crate::print_progress(&rows);

    // 3. Failover after kill -9, round-robin.
    let mut failovers = Vec::new();
    let mut rejoins = Vec::new();
    let mut survivor_rss = 0u64;
    for round in 0..sizes.failovers {
        let victim = round % REPLICAS;
        let replica = cluster.up[victim]
            .take()
            .ok_or_else(|| anyhow::anyhow!("r{victim} is not up"))?;
        let killed = Instant::now();
        replica.kill9();
        loop {
            let counts = cluster.supervised().await;
            let sum: usize = counts.iter().filter_map(|(_, c)| *c).sum();
            if sum == total && counts.iter().all(|(_, c)| c.is_some()) {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < sizes.patience,
                "after killing r{victim} the survivors supervise {counts:?}, not {total}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let failover = killed.elapsed();
        failovers.push(failover.as_secs_f64());
        survivor_rss = survivor_rss.max(cluster.live().map(|(_, r)| rss_of(r.pid())).max().unwrap_or(0));
        let restarting = Instant::now();
        let replica = cluster.spawn(victim)?;
        cluster.up[victim] = Some(replica);
        cluster.wait_listening(victim).await?;
        cluster.settle(REPLICAS, total).await?;
        let rejoin = restarting.elapsed();
        rejoins.push(rejoin.as_secs_f64());
        eprintln!(
            "… failover {}: killed r{victim}, survivors supervise all {total} after {:.2} s; restarted and settled in {:.1} s",
            round + 1,
            failover.as_secs_f64(),
            rejoin.as_secs_f64()
        );
    }
    failovers.sort_by(f64::total_cmp);
    rejoins.sort_by(f64::total_cmp);
    let listed = |values: &[f64]| values.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(", ");
    rows.push(Row::new(
        "replicas: failover, kill -9 of one replica → the two survivors supervise every connection (metrics polled every 200 ms)",
        &size_label,
        format!(
            "p50 {:.1} s / max {:.1} s over {} kills ({}; {lease_label}); largest survivor RSS after a take-over {}",
            percentile(&failovers, 0.5).unwrap_or(f64::NAN),
            failovers.last().copied().unwrap_or(f64::NAN),
            failovers.len(),
            listed(&failovers),
            mb(survivor_rss),
        ),
        "",
        None,
    ));
    rows.push(Row::new(
        "replicas: restart of the killed replica (same data dir and id) → settled again (3 ready, shares back)",
        &size_label,
        format!(
            "p50 {:.1} s / max {:.1} s ({})",
            percentile(&rejoins, 0.5).unwrap_or(f64::NAN),
            rejoins.last().copied().unwrap_or(f64::NAN),
            listed(&rejoins)
        ),
        "",
        None,
    ));
    crate::print_progress(&rows);

    // 4. Refresh throughput of the three together.
    let idle_lsn = psql.wal_lsn()?;
    tokio::time::sleep(sizes.window).await;
    let idle_lsn_after = psql.wal_lsn()?;
    let idle_wal = psql.wal_bytes(&idle_lsn, &idle_lsn_after)?;
    fake.set_expires_in(sizes.hot_lifetime);
    let refreshes_before = fake.refreshes();
    let announced = Instant::now();
    // Active now (tokens inside the lead: due at once), and announced as a registration
    // on another replica is.
    psql.query(&format!(
        "UPDATE tokenvisor_connections SET is_active = true, issued_at = now() - interval '55 minutes', \
         expires_at = now() + interval '5 minutes' WHERE integration_id = '{0}'; \
         SELECT count(pg_notify('tokenvisor_connections', id::text)) FROM tokenvisor_connections WHERE integration_id = '{0}'",
        hot.integration
    ))?;
    // First wave: every hot connection loaded by its owner and refreshed once.
    while fake.refreshes() - refreshes_before < sizes.hot as u64 {
        anyhow::ensure!(
            announced.elapsed() < sizes.patience,
            "only {} of {} hot connections refreshed after {:?}",
            fake.refreshes() - refreshes_before,
            sizes.hot,
            sizes.patience
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_wave = announced.elapsed();
    let pids: Vec<u32> = cluster.live().map(|(_, r)| r.pid()).collect();
    let replica_cpu = || pids.iter().map(|pid| setup::cpu_ms(&pid.to_string())).sum::<u64>();
    let replicas_before = cluster.refreshes().await;
    let versions_before = psql.versions(hot.integration)?;
    let lsn_before = psql.wal_lsn()?;
    let cpu_before = (
        replica_cpu(),
        setup::postgres_cpu_ms(database_name),
        setup::cpu_ms("self"),
    );
    let window_start = Instant::now();
    let count_before = fake.refreshes();
    tokio::time::sleep(sizes.window).await;
    let counted = fake.refreshes() - count_before;
    let window = window_start.elapsed();
    let cpu_after = (
        replica_cpu(),
        setup::postgres_cpu_ms(database_name),
        setup::cpu_ms("self"),
    );
    let lsn_after = psql.wal_lsn()?;
    let wal = psql.wal_bytes(&lsn_before, &lsn_after)?;
    let committed = psql.versions(hot.integration)?.saturating_sub(versions_before);
    let replicas_after = cluster.refreshes().await;
    // Calm down: the next refresh of each hot connection gets an hour.
    fake.set_expires_in(3600);
    let rate = counted as f64 / window.as_secs_f64();
    let per_refresh_us = |before: u64, after: u64| after.saturating_sub(before) as f64 * 1000.0 / counted.max(1) as f64;
    let idle_wal_in_window = idle_wal * window.as_secs_f64() / sizes.window.as_secs_f64();
    let wal_per_refresh = (wal - idle_wal_in_window).max(0.0) / counted.max(1) as f64;
    let shares: Vec<String> = replicas_before
        .iter()
        .zip(&replicas_after)
        .map(|((n, before), (_, after))| format!("r{n} {:.0}", after - before))
        .collect();
    rows.push(Row::new(
        "replicas: refresh throughput of the three together (provider calls counted at the fake; tokens of a few seconds keep every hot connection due)",
        format!("{size_label} + {} hot", sizes.hot),
        format!(
            "{rate:.0} refreshes/s ({counted} in {:.1} s; per replica {}; {committed} refresh commits in PostgreSQL (row versions)); first wave (NOTIFY → owner loads → refresh) of {} in {:.1} s; CPU per refresh: {:.0} µs in the replicas, {:.0} µs PostgreSQL, {:.0} µs in the bench (fake provider)",
            window.as_secs_f64(),
            shares.join(", "),
            sizes.hot,
            first_wave.as_secs_f64(),
            per_refresh_us(cpu_before.0, cpu_after.0),
            per_refresh_us(cpu_before.1, cpu_after.1),
            per_refresh_us(cpu_before.2, cpu_after.2),
        ),
        "",
        None,
    ));
    rows.push(Row::new(
        "replicas: WAL per refresh (pg_current_wal_lsn over the window, less the idle cluster's WAL rate)",
        format!("{size_label} + {} hot", sizes.hot),
        format!(
            "{:.0} bytes gross (window WAL ÷ refreshes), {wal_per_refresh:.0} bytes net of the idle rate ({:.1} MB in the window; idle cluster {:.0} KB/s: heartbeats, lease renewals, autovacuum)",
            wal / counted.max(1) as f64,
            wal / 1e6,
            idle_wal / 1e3 / sizes.window.as_secs_f64()
        ),
        "",
        None,
    ));
    crate::print_progress(&rows);

    cluster.stop_all();
    let pgbench_before = hot.pgbench_before;
    let pgbench_after = crate::pgbench_tps(sizes.pgbench_seconds);
    let ceiling = match (pgbench_before, pgbench_after) {
        (Some(before), Some(after)) => Some(before.max(after)),
        (one, other) => one.or(other),
    };
    if let Some(tps) = ceiling {
        rows.push(Row::new(
            "replicas: refresh throughput of the three ÷ pgbench single-row UPDATE commits/s (same run)",
            format!("{size_label} + {} hot", sizes.hot),
            format!(
                "{:.0}% of {tps:.0} tps (pgbench {} before the replicas started, {} after they stopped)",
                rate / tps * 100.0,
                pgbench_before.map_or("-".to_owned(), |t| format!("{t:.0}")),
                pgbench_after.map_or("-".to_owned(), |t| format!("{t:.0}"))
            ),
            "",
            None,
        ));
        crate::print_progress(&rows);
    }
    Ok(rows)
}
