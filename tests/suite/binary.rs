//! The real `tokenvisor` binary: serve with no configuration, migrate, status, and a
//! wrong key refused at start-up.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_supervisor::Tokenvisor;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::process::Server;
use tokenvisor_tests::{Harness, fake, test_config};

/// The binary cargo built for this suite.
fn command(dir: &std::path::Path) -> std::process::Command {
    tokenvisor_tests::process::command(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor")), dir)
}

#[test]
fn serve_runs_with_no_configuration_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(command(dir.path()));
    server.wait_for("tokenvisor is supervising", Duration::from_secs(30));
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let data = dir.path().join("tokenvisor-data");
    assert!(data.join("tokenvisor.db").exists());
    let mode = std::fs::metadata(data.join("encryption.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the generated key file is private");
}

#[test]
fn migrate_prepares_the_embedded_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path()).arg("migrate").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("tokenvisor-data/tokenvisor.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_connections_and_a_wrong_key_is_refused_without_touching_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tokenvisor-data");
    std::fs::create_dir_all(&data).unwrap();
    let (keyring, encoded) = Keyring::generate();
    let url = format!("sqlite://{}", data.join("tokenvisor.db").display());
    let store = Arc::new(SqlStore::connect(&url, keyring.clone()).await.unwrap());
    let harness = Harness::start(store, fake(Dialect::Generic, 3600).await, test_config()).await;
    harness.connect("acme-corp").await;
    harness.tokenvisor.shutdown().await;
    drop(harness);

    let output = command(dir.path())
        .arg("status")
        .env("TOKENVISOR_ENCRYPTION_KEY", &encoded)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.contains("acme-corp") && stdout.contains("active") && stdout.contains("fake"),
        "{stdout}"
    );
    assert!(stdout.contains("1 connection(s)"));
    let header = stdout.lines().next().unwrap();
    let row = stdout.lines().find(|l| l.contains("acme-corp")).unwrap();
    assert_eq!(header.find("STATUS"), row.find("active"), "{stdout}");
    assert_eq!(header.find("INTEGRATION"), row.find("fake"), "{stdout}");

    // Without the key (no key file either) start-up fails and no key file is created.
    let output = command(dir.path()).arg("status").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("encryption key"), "{stderr}");
    assert!(
        !data.join("encryption.key").exists(),
        "a new key was not paired with an existing database"
    );

    // The right key still reads every token.
    let store = Arc::new(SqlStore::connect(&url, keyring).await.unwrap());
    let tokenvisor = Tokenvisor::start(store, test_config()).await.unwrap();
    assert_eq!(tokenvisor.supervised_count(), 1);
    tokenvisor.shutdown().await;
}

#[test]
fn status_is_read_only_and_says_when_there_is_nothing_to_show() {
    let dir = tempfile::tempdir().unwrap();
    // The default data directory does not exist: nothing is created.
    let output = command(dir.path()).arg("status").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("no database at") && stderr.contains("tokenvisor migrate"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "status wrote something"
    );

    // An empty data directory and a fresh SQLite path stay empty too.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for database in [None, Some(format!("sqlite://{}", data.join("fresh.db").display()))] {
        let mut cmd = command(dir.path());
        cmd.arg("status").env("TOKENVISOR_DATA_DIR", &data);
        if let Some(url) = &database {
            cmd.env("TOKENVISOR_DATABASE_URL", url);
        }
        let output = cmd.output().unwrap();
        assert_eq!(output.status.code(), Some(3), "{database:?}");
        assert_eq!(
            std::fs::read_dir(&data).unwrap().count(),
            0,
            "status wrote into {data:?}"
        );
    }

    // A database that `migrate` prepared: status reads it without a key file being made.
    let output = command(dir.path())
        .arg("migrate")
        .env("TOKENVISOR_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = command(dir.path())
        .arg("status")
        .env("TOKENVISOR_DATA_DIR", &data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no encryption key"), "{stderr}");
    assert!(!data.join("encryption.key").exists(), "status generated a key file");
}

#[test]
fn settings_layer_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenvisor.toml");
    std::fs::write(&config, "database_pool = 0\n").unwrap();
    let migrate = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = command(dir.path());
        cmd.arg("migrate").env("TOKENVISOR_CONFIG", &config);
        if let Some(value) = env {
            cmd.env("TOKENVISOR_DATABASE_POOL", value);
        }
        if let Some(value) = flag {
            cmd.args(["--database-pool", value]);
        }
        let output = cmd.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The file alone: its bad value is named with the file.
    let (code, stderr) = migrate(None, None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("database_pool in") && stderr.contains("tokenvisor.toml"),
        "{stderr}"
    );
    // The environment over the file.
    let (code, stderr) = migrate(Some("4"), None);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = migrate(Some("lots"), None);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("TOKENVISOR_DATABASE_POOL"), "{stderr}");
    // The flag over both.
    let (code, stderr) = migrate(Some("lots"), Some("4"));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_second_serve_on_the_same_data_directory_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut first_command = command(dir.path());
    first_command.env("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0");
    let mut first = Server::spawn(first_command);
    first.wait_for("tokenvisor is supervising", Duration::from_secs(30));

    // Before the lock, both ran silently and refreshed every token twice.
    let second = command(dir.path())
        .env("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!second.status.success(), "the second serve ran");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another tokenvisor serve uses the data directory"),
        "{stderr}"
    );
    let status = first.terminate();
    assert!(status.success(), "the first one still stops cleanly: {status:?}");
}

#[test]
fn a_busy_port_is_refused_as_in_use_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = command(dir.path())
        .env("TOKENVISOR_ADMIN_ADDR", addr.to_string())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("TOKENVISOR_ADMIN_ADDR {addr} is in use")),
        "{stderr}"
    );
    assert!(
        !dir.path().join("tokenvisor-data").exists(),
        "nothing is written to the data directory"
    );
}

#[test]
fn an_unreachable_postgresql_is_reported_with_its_cause_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = std::time::Instant::now();
    let output = command(dir.path())
        .env("TOKENVISOR_ADMIN_ADDR", "127.0.0.1:0")
        .env(
            "TOKENVISOR_DATABASE_URL",
            format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/tokenvisor"),
        )
        .env(
            "TOKENVISOR_ENCRYPTION_KEY",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        )
        .arg("serve")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "the password leaked: {stderr}");
    assert!(took < Duration::from_secs(10), "reported after {took:?}");
}
