//! A PostgreSQL outage with a `kill -9` in the middle of it, through the real binary:
//! tokens the provider issued while the database was unreachable are never dropped
//! (docs/DESIGN.md, "Uncommitted tokens: the journal": a token set whose commit failed
//! is kept, journaled and committed later, across a `kill -9`; invariant 1).
//!
//! The service reaches PostgreSQL through a [`TcpProxy`] the test cuts for 60 s. The
//! provider rotates refresh tokens with NO grace period: presenting a rotated-away token
//! revokes the whole family, so a rotation whose answer was lost shows up as a revocation.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::ConnectionFilter;
use tokenvisor_store::{Keyring, SqlStore, Store};
use tokenvisor_testkit::database::{Backend, TestDatabase};
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};
use tokenvisor_tests::service::Service;
use tokenvisor_tests::tcp_proxy::TcpProxy;
use tokio::time::Instant;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// The address of `database`'s PostgreSQL server.
async fn server_of(database: &TestDatabase) -> std::net::SocketAddr {
    let url = url::Url::parse(database.url()).expect("database URL");
    let host = url.host_str().expect("database host").to_owned();
    tokio::net::lookup_host((host.as_str(), url.port().unwrap_or(5432)))
        .await
        .expect("database host resolves")
        .next()
        .expect("an address")
}

/// `database`'s URL through a proxy on `127.0.0.1:port`.
fn through_proxy(database: &TestDatabase, port: u16) -> String {
    let mut url = url::Url::parse(database.url()).expect("database URL");
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_with_a_kill_during_it_loses_no_rotated_refresh_token() {
    const CONNECTIONS: usize = 20;
    // 20-second tokens: refreshed about 15 s after they were issued (room for the 20
    // registrations on a loaded machine before the cut), so every connection is due for
    // a refresh during the outage, and its token expires during it.
    const LIFETIME: Duration = Duration::from_secs(20);
    const OUTAGE: Duration = Duration::from_secs(30);
    const KILL_AFTER: Duration = Duration::from_secs(25);

    let database = TestDatabase::create(Backend::Postgres).await;
    let proxy = TcpProxy::start(server_of(&database).await).await;
    let proxied_url = through_proxy(&database, proxy.port());
    let (keyring, key) = Keyring::generate();
    let env = vec![
        ("TOKENVISOR_DATABASE_URL", proxied_url.clone()),
        ("TOKENVISOR_ENCRYPTION_KEY", key),
    ];
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Rotating { grace: Duration::ZERO },
        expires_in: LIFETIME.as_secs(),
        ..FakeConfig::default()
    })
    .await
    .expect("fake provider starts");

    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &env);
    service.add_integration(&fake, "rotating").await;
    let mut connections = Vec::new();
    for n in 0..CONNECTIONS {
        let tenant = format!("outage-{n:02}");
        let view = service.connect(&fake, "rotating", &tenant).await;
        connections.push((tenant, view["id"].as_str().unwrap().to_owned()));
    }

    // The database goes away before any of them is due.
    let refreshed_before: u64 = connections.iter().map(|(t, _)| fake.refreshes_for(t)).sum();
    assert_eq!(
        refreshed_before, 0,
        "a refresh came before the cut: the scenario's premise does not hold"
    );
    proxy.cut();
    let cut_at = Instant::now();
    tokio::time::sleep_until(cut_at + KILL_AFTER).await;
    let refreshed_during_outage: u64 = connections.iter().map(|(t, _)| fake.refreshes_for(t)).sum();
    println!(
        "during the outage: {refreshed_during_outage} refreshes at the provider, {} connections to the database refused",
        proxy.refused()
    );
    // Kill at a quiet moment: no token request arrived at the provider in the last 50 ms,
    // so no rotation can be on its way back to the process (with no grace period, a
    // rotation answer lost to the kill itself would revoke its family whatever the code).
    let quiet_from = Instant::now();
    loop {
        let seen = fake.token_requests();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if fake.token_requests() == seen || quiet_from.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    drop(service); // SIGKILL
    tokio::time::sleep_until(cut_at + OUTAGE).await;
    proxy.restore();

    // Restart on the same data directory and database.
    let restarted_at = fake.refreshes();
    let before: Vec<u64> = connections.iter().map(|(t, _)| fake.refreshes_for(t)).collect();
    let service = Service::start(binary(), dir.path(), &env);

    // Settle: every connection active and refreshed twice since the restart (or give up
    // after two lifetimes and report what is wrong).
    let deadline = Instant::now() + LIFETIME * 2 + Duration::from_secs(5);
    let mut statuses = Vec::new();
    loop {
        statuses.clear();
        for (tenant, id) in &connections {
            let view = service.get(&format!("/v1/connections/{id}")).await;
            statuses.push((tenant.clone(), view.body["status"].as_str().unwrap_or("?").to_owned()));
        }
        let all_active = statuses.iter().all(|(_, status)| status == "active");
        let all_refreshed = connections
            .iter()
            .zip(&before)
            .all(|((tenant, _), before)| fake.refreshes_for(tenant) >= before + 2);
        if (all_active && all_refreshed) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let not_active: Vec<_> = statuses.iter().filter(|(_, status)| status != "active").collect();
    println!(
        "after the restart: {} refreshes at the provider, reuse events {}, family revocations {}, not active: {not_active:?}",
        fake.refreshes() - restarted_at,
        fake.reuse_events(),
        fake.family_revocations()
    );
    let status = service.server.terminate();
    println!("the restarted service exited with {status:?}");

    assert_eq!(
        (fake.reuse_events(), fake.family_revocations()),
        (0, 0),
        "(reuse events, family revocations) at the provider: refresh tokens rotated during the outage were lost \
         and their predecessors replayed"
    );
    assert!(
        not_active.is_empty(),
        "connections not active after the restart: {not_active:?}"
    );
    let store = Arc::new(SqlStore::connect(database.url(), keyring).await.unwrap());
    let stored = store.list_connections(&ConnectionFilter::default()).await.unwrap();
    assert_eq!(stored.len(), CONNECTIONS);
    let mut stale = Vec::new();
    for connection in &stored {
        let tenant = connection.tenant_id.as_str();
        let current = fake.current_refresh_token(tenant);
        if connection.refresh_token.as_ref().map(|t| t.expose().to_owned()) != current {
            stale.push((tenant.to_owned(), current.is_some()));
        }
    }
    assert!(
        stale.is_empty(),
        "stored refresh tokens that are not the provider's current one (tenant, family still live): {stale:?}"
    );
}
