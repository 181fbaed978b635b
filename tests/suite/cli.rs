//! The CLI against a running service (human tables and `--json`), the generated admin
//! token, and configuration errors that name the bad setting.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::process::command;
use tokenvisor_tests::service::{FAST_ENV, Service};

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor"))
}

/// A CLI command against `service`, with the admin token taken from the data directory.
fn cli(service: &Service, args: &[&str]) -> Command {
    let mut cmd = command(binary(), &service.dir);
    cmd.env("TOKENVISOR_ADMIN_URL", &service.base)
        .env("TOKENVISOR_DATA_DIR", service.dir.join("data"))
        .args(args);
    cmd
}

fn run(service: &Service, args: &[&str]) -> Output {
    let output = cli(service, args).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_a_running_service_in_tables_and_json() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    // No TOKENVISOR_ADMIN_TOKEN: the service generates one into the data directory.
    let mut cmd = command(binary(), dir.path());
    cmd.env("TOKENVISOR_DATA_DIR", dir.path().join("data"));
    for (key, value) in FAST_ENV {
        cmd.env(key, value);
    }
    let token_file = dir.path().join("data/admin.token");
    let mut service = Service::spawn(cmd, dir.path(), String::new());
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    service.token = token.clone();
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the generated admin token is private");
    assert!(
        service.server.seen.iter().any(|l| l.contains("admin.token")),
        "the log says where the token is"
    );
    assert!(
        !service.server.seen.iter().any(|l| l.contains(&token)),
        "the log never shows the token"
    );

    let added = run(
        &service,
        &[
            "integrations",
            "add",
            "--name",
            "crm",
            "--provider",
            "generic",
            "--client-id",
            fake.client_id(),
            "--client-secret",
            fake.client_secret(),
            "--scope",
            "read",
            "--token-url",
            &fake.token_url(),
            "--revoke-url",
            &fake.revoke_url(),
            "--authorize-url",
            &fake.authorize_url(),
        ],
    );
    assert!(
        stdout(&added).contains("integration crm registered"),
        "{}",
        stdout(&added)
    );
    let integrations = run(&service, &["integrations", "list"]);
    assert!(stdout(&integrations).contains("crm") && stdout(&integrations).contains("generic"));
    assert!(!stdout(&integrations).contains(fake.client_secret()));
    let integrations = json(&run(&service, &["integrations", "list", "--json"]));
    assert_eq!(integrations["items"][0]["name"], "crm");

    let issued = fake.issue_grant("acme");
    let created = json(&run(
        &service,
        &[
            "connections",
            "add",
            "--json",
            "--tenant",
            "acme",
            "--integration",
            "crm",
            "--access-token",
            &issued.access_token,
            "--refresh-token",
            &issued.refresh_token,
            "--expires-in",
            "3600",
        ],
    ));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "active");

    let table = stdout(&run(&service, &["connections", "list"]));
    let header = table.lines().next().unwrap();
    for column in ["TENANT", "STATUS", "EXPIRES IN", "FAILURES", "LAST ERROR"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.lines().find(|l| l.contains("acme")).expect("a row for acme");
    assert!(
        row.contains("active") && row.contains("crm") && row.contains("59m"),
        "{row}"
    );
    assert!(table.contains("1 connection(s)"));
    let listed = json(&run(&service, &["connections", "list", "--json", "--tenant", "acme"]));
    assert_eq!(listed["items"][0]["id"], id.as_str());

    let shown = stdout(&run(&service, &["connections", "show", &id]));
    assert!(shown.contains("acme") && shown.contains("active"), "{shown}");
    assert!(!shown.contains(&issued.access_token));

    // `token get`: the token alone on stdout (scriptable), the full answer with --json.
    let token_out = stdout(&run(&service, &["token", "get", &id]));
    assert_eq!(token_out.trim(), issued.access_token);
    let token_json = json(&run(&service, &["token", "get", &id, "--json"]));
    assert_eq!(token_json["token_type"], "Bearer");

    let refreshed = json(&run(&service, &["connections", "refresh", &id, "--json"]));
    assert!(refreshed["last_refresh_at"].is_string());
    assert!(fake.refreshes_for("acme") >= 1);

    // `events` tails the stream: a deactivation shows up as one JSON line.
    let mut tail = cli(&service, &["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let tail_stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let deactivated = stdout(&run(&service, &["connections", "deactivate", &id]));
    assert!(deactivated.contains("disabled"), "{deactivated}");
    let event = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_secs(10))).expect("an event line");
    let event: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["type"], "deactivated");
    assert_eq!(event["tenant_id"], "acme");
    let _ = tail.kill();
    let _ = tail.wait();

    // A refused token is an error exit with the code.
    let refused = cli(&service, &["token", "get", &id]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("disabled"));

    run(&service, &["connections", "activate", &id]);
    let authorize = stdout(&run(
        &service,
        &[
            "authorize",
            "--tenant",
            "acme",
            "--integration",
            "crm",
            "--connection",
            &id,
        ],
    ));
    assert!(authorize.contains("state="), "{authorize}");
    let deleted = stdout(&run(&service, &["connections", "delete", &id]));
    assert!(deleted.contains("deleted"));
    let listed = json(&run(&service, &["connections", "list", "--json"]));
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);

    // A wrong token: an error naming the code, nothing changed.
    let wrong = cli(&service, &["connections", "list"])
        .env("TOKENVISOR_ADMIN_TOKEN", "wrong-token-wrong-token")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unauthorized"));
}

#[test]
fn invalid_configuration_exits_with_a_message_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 6] = [
        ("TOKENVISOR_REFRESH_LEAD", "soon", "TOKENVISOR_REFRESH_LEAD"),
        ("TOKENVISOR_MIN_VALIDITY", "-5s", "TOKENVISOR_MIN_VALIDITY"),
        ("TOKENVISOR_ADMIN_ADDR", "localhost", "TOKENVISOR_ADMIN_ADDR"),
        ("TOKENVISOR_PUBLIC_URL", "not a url", "TOKENVISOR_PUBLIC_URL"),
        ("TOKENVISOR_DATABASE_URL", "mysql://db", "TOKENVISOR_DATABASE_URL"),
        (
            "TOKENVISOR_WEBHOOK_URLS",
            "http://127.0.0.1:9/hook",
            "TOKENVISOR_WEBHOOK_SECRET",
        ),
    ];
    for (key, value, named) in cases {
        let output = command(binary(), dir.path())
            .arg("serve")
            .env("TOKENVISOR_DATA_DIR", dir.path().join("data"))
            .env(key, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{key}={value}: {stderr}");
    }

    let config = dir.path().join("tokenvisor.toml");
    std::fs::write(&config, "refresh_lead = \"15m\"\nrefresh_leed = \"1m\"\n").unwrap();
    let output = command(binary(), dir.path())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("refresh_leed"));
}
