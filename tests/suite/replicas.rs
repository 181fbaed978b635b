//! Replicas that share the work (docs/CLUSTER.md), tested with real processes: three
//! `tokenvisor serve` on one PostgreSQL database, a fake provider that rotates refresh
//! tokens with no grace period (a refresh token presented twice is a reuse event and
//! revokes the family), short token lifetimes and a 3-second partition lease.

use futures::StreamExt as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokenvisor_testkit::database::TestDatabase;
use tokenvisor_testkit::{Dialect, FakeProvider};
use tokenvisor_tests::fake;
use tokenvisor_tests::service::{Answer, Service, prometheus_samples};
use tokio::time::Instant;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// Every replica's key (they share the database).
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
/// The partition lease of the tests: a dead replica's partitions move after at most this
/// plus one heartbeat (600 ms).
const LEASE: Duration = Duration::from_secs(3);
/// How soon every replica must answer according to a change made through one of them.
/// Typically well under a second (the times are printed); the bound leaves room for a
/// loaded CI machine running three debug replicas beside other tests.
const CHANGE_SEEN_WITHIN: Duration = Duration::from_secs(5);

/// One cluster of three processes at a time in this suite (PostgreSQL's connections and
/// the machine's two cores are shared with the other tests).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three (or more) replicas and where their data lives.
struct Replicas {
    up: Vec<Option<Service>>,
    database: TestDatabase,
    root: tempfile::TempDir,
    /// Dropped last: the processes are gone before the next cluster starts.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Replicas {
    async fn start(count: usize) -> Replicas {
        let serial = ONE_CLUSTER_AT_A_TIME.lock().await;
        let database = TestDatabase::postgres().await;
        let root = tempfile::tempdir().unwrap();
        let mut replicas = Replicas {
            _serial: serial,
            database,
            root,
            up: Vec::new(),
        };
        for n in 0..count {
            let service = replicas.spawn(n);
            replicas.up.push(Some(service));
        }
        replicas.wait_settled(count, Duration::from_secs(30)).await;
        replicas
    }

    fn dir(&self, n: usize) -> PathBuf {
        self.root.path().join(format!("r{n}"))
    }

    fn spawn(&self, n: usize) -> Service {
        let dir = self.dir(n);
        std::fs::create_dir_all(&dir).unwrap();
        Service::start(
            binary(),
            &dir,
            &[
                ("TOKENVISOR_DATABASE_URL", self.database.url().to_owned()),
                ("TOKENVISOR_ENCRYPTION_KEY", KEY.to_owned()),
                ("TOKENVISOR_DATA_DIR", dir.join("data").display().to_string()),
                ("TOKENVISOR_REPLICA_ID", format!("r{n}")),
                ("TOKENVISOR_PARTITION_LEASE", format!("{}s", LEASE.as_secs())),
                ("TOKENVISOR_REQUEST_TIMEOUT", "2s".to_owned()),
                // Three processes next to the rest of the suite on one PostgreSQL.
                ("TOKENVISOR_DATABASE_POOL", "8".to_owned()),
            ],
        )
    }

    fn replica(&self, n: usize) -> &Service {
        self.up[n].as_ref().expect("replica is up")
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Service)> {
        self.up
            .iter()
            .enumerate()
            .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
    }

    /// Waits until `count` replicas are alive, every partition is owned and every live
    /// replica is ready.
    async fn wait_settled(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut settled = true;
            for (_, service) in self.live() {
                let ready = service.get("/readyz").await;
                let cluster = service.get("/v1/cluster").await;
                let alive = cluster.body["replicas"]
                    .as_array()
                    .map_or(0, |r| r.iter().filter(|r| r["alive"] == true).count());
                settled &= ready.status == 200 && alive == count && cluster.body["unowned_partitions"] == 0;
            }
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not settle within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connections supervised by each live replica (its `tokenvisor_supervised_connections`).
    async fn supervised(&self) -> HashMap<usize, usize> {
        let mut counts = HashMap::new();
        for (n, service) in self.live() {
            let text = service.metrics().await;
            let total: f64 = prometheus_samples(&text, "tokenvisor_supervised_connections")
                .iter()
                .map(|(_, v)| v)
                .sum();
            counts.insert(n, total as usize);
        }
        counts
    }

    /// Waits until the live replicas supervise `total` connections together.
    async fn wait_supervised(&self, total: usize, timeout: Duration) -> (Duration, HashMap<usize, usize>) {
        let started = Instant::now();
        loop {
            let counts = self.supervised().await;
            if counts.values().sum::<usize>() == total {
                return (started.elapsed(), counts);
            }
            assert!(
                started.elapsed() < timeout,
                "the replicas supervise {counts:?}, not {total} in all, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Registers `count` connections through `service` (16 at a time); returns their ids by
/// tenant label and when each was registered.
async fn register(
    service: &Service,
    fake: &FakeProvider,
    count: usize,
) -> (Vec<(String, String)>, HashMap<String, Instant>) {
    service.add_integration(fake, "crm").await;
    let registered: Vec<(String, String, Instant)> = futures::stream::iter(0..count)
        .map(|n| async move {
            let tenant = format!("t{n}");
            let view = service.connect(fake, "crm", &tenant).await;
            (tenant, view["id"].as_str().unwrap().to_owned(), Instant::now())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let at = registered.iter().map(|(t, _, at)| (t.clone(), *at)).collect();
    (registered.into_iter().map(|(t, id, _)| (t, id)).collect(), at)
}

/// Asserts that every connection of `tenants` was refreshed before each of its tokens
/// expired, from its registration until now.
fn assert_refreshed_before_expiry(fake: &FakeProvider, registered: &HashMap<String, Instant>, lifetime: Duration) {
    let now = Instant::now();
    let mut late = Vec::new();
    for (tenant, at) in registered {
        let mut issued = *at;
        for refreshed in fake.refresh_times_for(tenant) {
            if refreshed.duration_since(issued) >= lifetime {
                late.push(format!(
                    "{tenant}: {:?} after its token was issued",
                    refreshed.duration_since(issued)
                ));
            }
            issued = refreshed;
        }
        if now.duration_since(issued) >= lifetime {
            late.push(format!("{tenant}: no refresh for {:?}", now.duration_since(issued)));
        }
    }
    assert!(
        late.is_empty(),
        "{} connections let a token expire: {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

/// Polls `read` on every replica but `skip` until each answers `done`; returns the
/// slowest replica's time.
async fn answered_everywhere(
    replicas: &Replicas,
    path: &str,
    done: impl Fn(&Answer) -> bool,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (n, service) in replicas.live() {
        loop {
            let answer = service.get(path).await;
            if done(&answer) {
                slowest = slowest.max(started.elapsed());
                break;
            }
            assert!(
                started.elapsed() < timeout,
                "replica r{n} still answers {} {} for {path} after {timeout:?}",
                answer.status,
                answer.code()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_three_thousand_connections_and_refresh_each_before_it_expires() {
    let _heavy = tokenvisor_tests::heavy().await;
    let lifetime = Duration::from_secs(40);
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, lifetime.as_secs()).await;
    let replicas = Replicas::start(3).await;
    let started = Instant::now();
    let (connections, registered_at) = register(replicas.replica(0), &fake, 3000).await;
    println!("registered 3000 connections through r0 in {:?}", started.elapsed());

    // Each replica supervises its share: the registrations on r0 reached the others.
    let (took, counts) = replicas.wait_supervised(3000, Duration::from_secs(20)).await;
    println!("supervised per replica {counts:?} ({took:?} after the last registration)");
    for (n, count) in &counts {
        let share = *count as f64 / 3000.0;
        assert!((0.25..=0.42).contains(&share), "r{n} supervises {count} of 3000");
    }
    // Every partition has one owner: the replicas' gauges add up to 1,024.
    let mut owned = 0.0;
    for (_, service) in replicas.live() {
        let text = service.metrics().await;
        owned += prometheus_samples(&text, "tokenvisor_owned_partitions")
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>();
    }
    assert_eq!(owned, 1024.0, "tokenvisor_owned_partitions over the replicas");

    // Lifecycle operations through r0 are answered accordingly by r1 and r2 within a second.
    let (_, id) = &connections[7];
    let token_path = format!("/v1/connections/{id}/token");
    let r0 = replicas.replica(0);
    assert_eq!(
        r0.post_empty(&format!("/v1/connections/{id}/deactivate")).await.status,
        200
    );
    let disabled = answered_everywhere(&replicas, &token_path, |a| a.code() == "disabled", CHANGE_SEEN_WITHIN).await;
    assert_eq!(
        r0.post_empty(&format!("/v1/connections/{id}/activate")).await.status,
        200
    );
    let active = answered_everywhere(&replicas, &token_path, |a| a.status == 200, CHANGE_SEEN_WITHIN).await;
    // Re-authorization through r0's callback: every replica hands out the new token.
    let (tenant, reauthorized) = &connections[8];
    let started = r0
        .post(
            "/v1/authorizations",
            serde_json::json!({"tenant_id": tenant, "integration": "crm", "connection_id": reauthorized}),
        )
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let redirect = r0
        .http
        .get(started.body["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    let page = r0.http.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap_or_default());
    let path = format!("/v1/connections/{reauthorized}/token");
    let new_token = r0.get(&path).await.body["access_token"].as_str().unwrap().to_owned();
    assert!(fake.is_access_token_live(&new_token));
    let reauth = answered_everywhere(
        &replicas,
        &path,
        |a| a.body["access_token"].as_str() == Some(new_token.as_str()),
        CHANGE_SEEN_WITHIN,
    )
    .await;
    let (_, deleted) = &connections[9];
    assert_eq!(r0.delete(&format!("/v1/connections/{deleted}")).await.status, 204);
    let gone = answered_everywhere(
        &replicas,
        &format!("/v1/connections/{deleted}/token"),
        |a| a.status == 404,
        CHANGE_SEEN_WITHIN,
    )
    .await;
    println!(
        "seen by every replica after: deactivate {disabled:?}, activate {active:?}, re-authorization {reauth:?}, delete {gone:?}"
    );

    // A lifetime and a half later: every other connection was refreshed before each
    // expiry, never twice at once, never with a rotated-away refresh token.
    tokio::time::sleep((lifetime * 3 / 2).saturating_sub(started_elapsed(&registered_at))).await;
    let mut checked = registered_at.clone();
    for tenant in [&connections[7].0, &connections[8].0, &connections[9].0] {
        checked.remove(tenant);
    }
    assert_refreshed_before_expiry(&fake, &checked, lifetime);
    println!(
        "refreshes {}, reuse events {}, overlapping {}, family revocations {}",
        fake.refreshes(),
        fake.reuse_events(),
        fake.overlapping_refreshes(),
        fake.family_revocations()
    );
    assert_eq!(fake.reuse_events(), 0);
    assert_eq!(fake.overlapping_refreshes(), 0);
    // The one family revoked is the deleted connection's (the delete revokes its grant).
    assert_eq!(fake.revocation_requests(), 1);
    assert_eq!(fake.family_revocations(), 1);
}

/// Time since the earliest registration.
fn started_elapsed(registered: &HashMap<String, Instant>) -> Duration {
    registered.values().min().map_or(Duration::ZERO, |at| at.elapsed())
}

/// Reads every connection's token through `service`; asserts each is live at the fake.
async fn assert_all_tokens_live(service: &Service, fake: &FakeProvider, connections: &[(String, String)]) {
    for (tenant, id) in connections {
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200, "{tenant}: {token:?}");
        assert!(
            fake.is_access_token_live(token.body["access_token"].as_str().unwrap()),
            "{tenant}: a token the provider no longer accepts"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_is_replaced_within_the_lease_and_takes_its_share_back() {
    let lifetime = Duration::from_secs(16);
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, lifetime.as_secs()).await;
    let mut replicas = Replicas::start(3).await;
    let (connections, registered_at) = register(replicas.replica(0), &fake, 300).await;
    let (_, counts) = replicas.wait_supervised(300, Duration::from_secs(10)).await;
    let victim = 1;
    let lost = counts[&victim];

    // kill -9: no hand-over; its leases run out.
    let killed = Instant::now();
    drop(replicas.up[victim].take());
    let (failover, counts) = replicas.wait_supervised(300, LEASE * 4).await;
    println!("r{victim} (supervising {lost}) killed: the survivors supervise {counts:?} after {failover:?}");
    assert!(
        failover <= LEASE + Duration::from_secs(5),
        "failover took {failover:?} (lease {LEASE:?})"
    );
    assert_all_tokens_live(replicas.replica(0), &fake, &connections).await;

    // Restarted (same data directory, same replica id): it takes a share back.
    tokio::time::sleep(lifetime.saturating_sub(killed.elapsed())).await;
    replicas.up[victim] = Some(replicas.spawn(victim));
    replicas.wait_settled(3, Duration::from_secs(20)).await;
    let (_, counts) = replicas.wait_supervised(300, Duration::from_secs(10)).await;
    println!("after the restart: {counts:?}");
    assert!(counts[&victim] > 0, "{counts:?}");
    tokio::time::sleep(lifetime / 2).await;
    assert_all_tokens_live(replicas.replica(2), &fake, &connections).await;
    assert_refreshed_before_expiry(&fake, &registered_at, lifetime);
    assert_eq!(fake.reuse_events(), 0, "a refresh token presented twice");
    assert_eq!(fake.overlapping_refreshes(), 0);
    assert_eq!(fake.family_revocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_presents_no_refresh_token_and_rejoins() {
    // 12-second tokens, refreshed every ~9 s: the frozen replica's refreshes fall due
    // while it is frozen, and its timers fire the moment it resumes.
    let lifetime = Duration::from_secs(12);
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, lifetime.as_secs()).await;
    let mut replicas = Replicas::start(3).await;
    let (connections, registered_at) = register(replicas.replica(0), &fake, 150).await;
    replicas.wait_supervised(150, Duration::from_secs(10)).await;
    let frozen = 2;

    replicas.replica(frozen).server.signal("STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let refreshes_before_resume = fake.refreshes();
    replicas.replica(frozen).server.signal("CONT");
    let replica = replicas.up[frozen].as_mut().unwrap();
    replica.wait_for_log("partitions lost", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "refreshes while resuming: {}, reuse events {}",
        fake.refreshes() - refreshes_before_resume,
        fake.reuse_events()
    );
    assert_eq!(
        fake.reuse_events(),
        0,
        "the resumed replica presented a refresh token it no longer owned"
    );
    assert_eq!(fake.family_revocations(), 0);

    // It rejoins and takes a share again.
    replicas.wait_settled(3, Duration::from_secs(20)).await;
    let (_, counts) = replicas.wait_supervised(150, Duration::from_secs(10)).await;
    assert!(counts[&frozen] > 0, "{counts:?}");
    tokio::time::sleep(lifetime).await;
    assert_all_tokens_live(replicas.replica(frozen), &fake, &connections).await;
    assert_refreshed_before_expiry(&fake, &registered_at, lifetime);
    assert_eq!(fake.reuse_events(), 0);
    assert_eq!(fake.overlapping_refreshes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_steady_reads_fails_no_read_except_retryably() {
    let lifetime = Duration::from_secs(12);
    let fake = std::sync::Arc::new(fake(Dialect::Rotating { grace: Duration::ZERO }, lifetime.as_secs()).await);
    let mut replicas = Replicas::start(3).await;
    let (connections, registered_at) = register(replicas.replica(0), &fake, 60).await;
    replicas.wait_supervised(60, Duration::from_secs(10)).await;

    // Readers: every 20 ms a token of some connection through some replica that is up
    // (what a load balancer does with readiness).
    let bases: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>> = std::sync::Arc::new(std::sync::Mutex::new(
        replicas.up.iter().map(|s| s.as_ref().map(|s| s.base.clone())).collect(),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (bases, stop, fake) = (bases.clone(), stop.clone(), fake.clone());
        let ids: Vec<String> = connections.iter().map(|(_, id)| id.clone()).collect();
        let http = replicas.replica(0).http.clone();
        let token = replicas.replica(0).token.clone();
        tokio::spawn(async move {
            let mut outcomes: HashMap<String, usize> = HashMap::new();
            let mut n = 0usize;
            while !stop.is_cancelled() {
                n += 1;
                let base = {
                    let bases = bases.lock().unwrap();
                    let up: Vec<&String> = bases.iter().flatten().collect();
                    up[n % up.len()].clone()
                };
                let id = &ids[n % ids.len()];
                let response = http
                    .get(format!("{base}/v1/connections/{id}/token"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                let outcome = match response {
                    Ok(response) => {
                        let answer = tokenvisor_tests::service::answer(response).await;
                        match answer.status {
                            200 if fake.is_access_token_live(answer.body["access_token"].as_str().unwrap_or("")) => {
                                "ok".to_owned()
                            }
                            200 => "dead token".to_owned(),
                            status => format!("{status} {}", answer.code()),
                        }
                    }
                    Err(error) => format!("transport: {error}"),
                };
                *outcomes.entry(outcome).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        })
    };

    for n in 0..3 {
        bases.lock().unwrap()[n] = None;
        let service = replicas.up[n].take().unwrap();
        let status = tokio::task::spawn_blocking(move || service.server.terminate())
            .await
            .unwrap();
        assert!(status.success(), "r{n} exited with {status}");
        replicas.up[n] = Some(replicas.spawn(n));
        replicas.wait_settled(3, Duration::from_secs(30)).await;
        bases.lock().unwrap()[n] = Some(replicas.replica(n).base.clone());
        // Half a lifetime with this replica back: refreshes happen across the hand-overs.
        tokio::time::sleep(lifetime / 2).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let outcomes = reader.await.unwrap();
    println!("reads during the rolling restart: {outcomes:?}");
    let retryable = [
        "503 owner_unavailable",
        "503 shutting_down",
        "504 timeout",
        "503 store_unavailable",
    ];
    for (outcome, count) in &outcomes {
        assert!(
            outcome == "ok" || retryable.contains(&outcome.as_str()),
            "{count} reads ended with {outcome:?}"
        );
    }
    // Reads kept succeeding through the restarts (their number depends on the machine's
    // speed: four in five at least, and at least a hundred).
    let ok = outcomes.get("ok").copied().unwrap_or(0);
    let all: usize = outcomes.values().copied().sum();
    assert!(ok >= 100 && ok * 100 >= all * 80, "{outcomes:?}");
    assert_refreshed_before_expiry(&fake, &registered_at, lifetime);
    assert_eq!(fake.reuse_events(), 0);
    assert_eq!(fake.family_revocations(), 0);
}
