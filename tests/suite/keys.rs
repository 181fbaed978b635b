//! Key rotation through the real binary on PostgreSQL: `serve` refreshes short-lived
//! tokens under key `a`, restarts with keys `b,a`, and `tokenvisor keys rotate` runs
//! beside it, is killed with SIGKILL half-way, and run again: it resumes and finishes,
//! every stored value ends under `b`, no refresh failed, and `serve` with only key `b`
//! reads everything (invariant: secrets encrypted at rest; no token lost).

use base64::Engine as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{
    Connection, ConnectionId, ConnectionKey, ConnectionStatus, IntegrationId, SecretString, TenantId,
};
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::databases::TestDatabase;
use tokenvisor_tests::fake;
use tokenvisor_tests::process::command;
use tokenvisor_tests::service::Service;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

const LIVE_TENANTS: usize = 12;
/// Rows beyond the live ones (connections needing re-authorization: stored, never
/// refreshed), so the rotation has enough batches to be killed in the middle.
const PARKED: usize = 3000;

fn random_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

fn parked(integration: IntegrationId, index: usize) -> Connection {
    let now = chrono::Utc::now();
    Connection {
        id: ConnectionId::new(),
        tenant_id: TenantId::parse(format!("parked-{index}")).unwrap(),
        integration_id: integration,
        connection_key: ConnectionKey::default(),
        access_token: SecretString::new(format!("parked-access-{index}")),
        refresh_token: Some(SecretString::new(format!("parked-refresh-{index}"))),
        token_type: "Bearer".to_owned(),
        scope: None,
        issued_at: now,
        expires_at: now,
        next_refresh_at: None,
        last_refresh_at: None,
        status: ConnectionStatus::NeedsReauth,
        is_active: false,
        refresh_failures: 0,
        consecutive_failures: 0,
        last_error: None,
        metadata: serde_json::Map::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// `tokenvisor keys ARGS` on the database with `keys`: exit status and stdout.
fn keys_command(dir: &std::path::Path, url: &str, keys: &str, args: &[&str]) -> Command {
    let mut cmd = command(binary(), dir);
    cmd.env("TOKENVISOR_DATABASE_URL", url)
        .env("TOKENVISOR_ENCRYPTION_KEYS", keys)
        .env("TOKENVISOR_DATA_DIR", dir.join("data"))
        .arg("keys")
        .args(args);
    cmd
}

fn run_keys(dir: &std::path::Path, url: &str, keys: &str, args: &[&str]) -> (bool, String, String) {
    let output = keys_command(dir, url, keys, args)
        .output()
        .expect("run tokenvisor keys");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_half_way_resumes_and_leaves_every_value_under_the_new_key_while_refreshes_run() {
    let database = TestDatabase::postgres().await;
    let url = database.url().to_owned();
    let fake = fake(Dialect::Rotating { grace: Duration::ZERO }, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (random_key(), random_key());
    let keys_a = format!("a:{key_a}");
    let keys_ba = format!("b:{key_b},a:{key_a}");
    let keys_b = format!("b:{key_b}");
    let env = |keys: &str| {
        vec![
            ("TOKENVISOR_DATABASE_URL", url.clone()),
            ("TOKENVISOR_ENCRYPTION_KEYS", keys.to_owned()),
        ]
    };

    // Under key a: live connections refreshing every ~2 s, and parked rows.
    let service = Service::start(binary(), dir.path(), &env(&keys_a));
    let integration = service.add_integration(&fake, "rotating").await;
    let integration_id = IntegrationId(uuid::Uuid::parse_str(integration["id"].as_str().unwrap()).unwrap());
    let mut ids = Vec::new();
    for index in 0..LIVE_TENANTS {
        let view = service.connect(&fake, "rotating", &format!("live-{index}")).await;
        ids.push(view["id"].as_str().unwrap().to_owned());
    }
    let store = SqlStore::connect(&url, Keyring::from_key_list(&keys_a).unwrap())
        .await
        .unwrap();
    let rows: Vec<Connection> = (0..PARKED).map(|index| parked(integration_id, index)).collect();
    store.insert_connections(&rows).await.unwrap();
    store.close().await.unwrap();
    assert!(service.server.terminate().success());

    // New primary b, a still read: serve keeps refreshing (new tokens are sealed under b).
    let service = Service::start(binary(), dir.path(), &env(&keys_ba));
    let refreshes_before = fake.refreshes();

    // The rotation, slowed down, killed with SIGKILL in the middle of the connections.
    let mut child = keys_command(
        dir.path(),
        &url,
        &keys_ba,
        &["rotate", "--batch-size", "100", "--pause", "60ms"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn keys rotate");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::task::block_in_place(|| lines.next())
            .unwrap_or_else(|| panic!("rotate ended before it could be killed: {seen:?}"))
            .unwrap();
        seen.push(line.clone());
        let done: u64 = line
            .strip_prefix("progress: ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if line.contains("now at tokenvisor_connections") && done > 500 {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let (ok, out, err) = run_keys(dir.path(), &url, &keys_ba, &["rotate", "--status"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("in progress"), "{out}");

    let (ok, out, err) = run_keys(dir.path(), &url, &keys_ba, &["status"]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains("not under the primary key: 0\n"), "work was left: {out}");

    // Run again: it resumes from its cursor and finishes.
    let (ok, out, err) = run_keys(dir.path(), &url, &keys_ba, &["rotate", "--batch-size", "500"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("verified: every stored value is under b ("), "{out}");
    let finished = out.lines().find(|line| line.starts_with("rotation to b")).unwrap();
    assert!(finished.contains("finished"), "{finished}");
    let (ok, out, _) = run_keys(dir.path(), &url, &keys_ba, &["status"]);
    assert!(ok);
    assert!(out.contains("not under the primary key: 0\n"), "{out}");
    let per_key = out.split("VALUES PER KEY").nth(1).unwrap();
    let per_key: Vec<&str> = per_key.lines().filter(|line| line.starts_with("  ")).collect();
    assert_eq!(per_key.len(), 1, "only b holds values: {out}");
    assert!(per_key[0].contains(" b ") && per_key[0].contains(" v2 "), "{out}");

    // Refreshes went on the whole time and none failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(fake.refreshes() > refreshes_before, "refreshes ran during the rotation");
    for id in &ids {
        let view = service.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(view.body["status"], "active", "{view:?}");
        assert_eq!(view.body["refresh_failures"], 0, "{view:?}");
        assert_eq!(view.body["consecutive_failures"], 0, "{view:?}");
    }
    assert_eq!(fake.family_revocations(), 0, "a stale refresh token was replayed");
    assert!(service.server.terminate().success());

    // Key a is gone: serve with b alone reads every token.
    let service = Service::start(binary(), dir.path(), &env(&keys_b));
    for id in &ids {
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200, "{token:?}");
        assert!(fake.is_access_token_live(token.body["access_token"].as_str().unwrap()));
    }
    assert!(service.server.terminate().success());
    let store = Arc::new(
        SqlStore::connect(&url, Keyring::from_key_list(&keys_b).unwrap())
            .await
            .unwrap(),
    );
    let parked_back = tokenvisor_store::Store::list_connections(
        store.as_ref(),
        &tokenvisor_core::ConnectionFilter {
            status: Some(ConnectionStatus::NeedsReauth),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(parked_back.len(), PARKED);
    assert!(
        parked_back
            .iter()
            .all(|c| c.access_token.expose().starts_with("parked-access-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_rotates_every_value_to_the_primary_key_and_reports_progress() {
    let fake = fake(Dialect::NonRotating, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (random_key(), random_key());
    let service = Service::start(
        binary(),
        dir.path(),
        &[("TOKENVISOR_ENCRYPTION_KEYS", format!("a:{key_a}"))],
    );
    service.add_integration(&fake, "plain").await;
    let mut ids = Vec::new();
    for index in 0..5 {
        let view = service.connect(&fake, "plain", &format!("tenant-{index}")).await;
        ids.push(view["id"].as_str().unwrap().to_owned());
    }
    let before = service.get("/v1/keys/rotation").await;
    assert_eq!(before.status, 200, "{before:?}");
    assert_eq!(before.body["values_not_under_primary"], 0, "{before:?}");
    assert_eq!(before.body["primary_label"], "a");
    assert!(service.server.terminate().success());

    let service = Service::start(
        binary(),
        dir.path(),
        &[("TOKENVISOR_ENCRYPTION_KEYS", format!("b:{key_b},a:{key_a}"))],
    );
    let pending = service.get("/v1/keys/rotation").await;
    assert_eq!(pending.body["primary_label"], "b", "{pending:?}");
    // 5 access + 5 refresh tokens, the client secret, the key check.
    assert_eq!(pending.body["values_not_under_primary"], 12, "{pending:?}");
    assert!(pending.body["last_rotation"].is_null(), "{pending:?}");

    let started = service.post_empty("/v1/keys/rotate").await;
    assert_eq!(started.status, 202, "{started:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let answer = service.get("/v1/keys/rotation").await;
        if answer.body["running"] == false && answer.body["last_rotation"]["finished"] == true {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.body["values_not_under_primary"], 0, "{done:?}");
    assert_eq!(
        done.body["last_rotation"]["rows_rewritten"], 7,
        "5 connections, the integration, the key check: {done:?}"
    );
    assert!(service.server.terminate().success());

    let service = Service::start(
        binary(),
        dir.path(),
        &[("TOKENVISOR_ENCRYPTION_KEYS", format!("b:{key_b}"))],
    );
    for id in &ids {
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200, "{token:?}");
    }
    assert!(service.server.terminate().success());
}

/// `tokenvisor keys ARGS` with the key-encryption key file `kek` (stdin from `input`).
fn kek_command(
    dir: &std::path::Path,
    kek: &std::path::Path,
    args: &[&str],
    input: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write as _;
    let mut cmd = command(binary(), dir);
    cmd.env("TOKENVISOR_KEK_FILE", kek)
        .arg("keys")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run tokenvisor keys");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_keys_with_a_key_encryption_key_file_serve_the_same_data_and_another_kek_is_refused() {
    let fake = fake(Dialect::NonRotating, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    // The KEK: `keys generate` output serves as one (label:base64).
    let generated = command(binary(), dir.path())
        .args(["keys", "generate", "--label", "kek"])
        .output()
        .expect("generate");
    assert!(generated.status.success());
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, &generated.stdout).unwrap();

    // Data written under a plain key `a`.
    let key_a = random_key();
    let service = Service::start(
        binary(),
        dir.path(),
        &[("TOKENVISOR_ENCRYPTION_KEYS", format!("a:{key_a}"))],
    );
    service.add_integration(&fake, "plain").await;
    let mut ids = Vec::new();
    for index in 0..3 {
        let view = service.connect(&fake, "plain", &format!("tenant-{index}")).await;
        ids.push(view["id"].as_str().unwrap().to_owned());
    }
    assert!(service.server.terminate().success());

    // `a` wrapped (same key id: nothing to rewrite), a new primary `b` generated wrapped.
    let (ok, wrapped_a, stderr) = kek_command(dir.path(), &kek_file, &["wrap"], Some(&format!("a:{key_a}\n")));
    assert!(ok, "{stderr}");
    assert!(
        wrapped_a.starts_with("a:") && !wrapped_a.contains(&key_a),
        "{wrapped_a}"
    );
    let (ok, wrapped_b, stderr) = kek_command(dir.path(), &kek_file, &["generate", "--wrapped", "--label", "b"], None);
    assert!(ok, "{stderr}");
    assert!(wrapped_b.starts_with("b:"), "{wrapped_b}");
    // Without a label, or without a KEK, wrapping is refused with a usage error.
    let (ok, _, stderr) = kek_command(dir.path(), &kek_file, &["wrap"], Some(&key_a));
    assert!(!ok && stderr.contains("no label"), "{stderr}");
    assert!(!stderr.contains(&key_a), "{stderr}");
    let no_kek = command(binary(), dir.path())
        .args(["keys", "generate", "--wrapped"])
        .output()
        .expect("generate");
    assert_eq!(no_kek.status.code(), Some(2), "{no_kek:?}");

    // serve with the wrapped keys and the KEK file reads everything written under `a`,
    // and writes new values under `b`.
    let wrapped = format!("{wrapped_b},{wrapped_a}");
    let service = Service::start(
        binary(),
        dir.path(),
        &[
            ("TOKENVISOR_ENCRYPTION_KEYS", wrapped.clone()),
            ("TOKENVISOR_KEK_FILE", kek_file.display().to_string()),
        ],
    );
    for id in &ids {
        let token = service.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(token.status, 200, "{token:?}");
    }
    let rotation = service.get("/v1/keys/rotation").await;
    assert_eq!(rotation.body["primary_label"], "b", "{rotation:?}");
    assert!(service.server.terminate().success());

    // Another KEK: serve refuses to start and says which key it cannot unwrap.
    let other = dir.path().join("other-kek");
    std::fs::write(&other, format!("{}\n", random_key())).unwrap();
    let output = command(binary(), dir.path())
        .env("TOKENVISOR_DATA_DIR", dir.path().join("data"))
        .env("TOKENVISOR_ENCRYPTION_KEYS", &wrapped)
        .env("TOKENVISOR_KEK_FILE", &other)
        .env("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0")
        .arg("serve")
        .output()
        .expect("serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("TOKENVISOR_KEK_FILE") && stderr.contains("does not unwrap key \"b\""),
        "{stderr}"
    );
    assert!(!stderr.contains(&key_a), "{stderr}");
}
