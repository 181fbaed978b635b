//! The CLI against a running service (human tables and `--json`), the generated admin
//! token, and configuration errors that name the bad setting.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::fake;
use tokenvisor_tests::process::command;
use tokenvisor_tests::service::{ADMIN_TOKEN, FAST_ENV, Service};
use tokenvisor_tests::tcp_proxy::TcpProxy;

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
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let tail_stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    // Subscribed before the deactivation: the tail says so on stderr (read to the end
    // by a thread, so the tail never writes to a closed pipe).
    let (err_sender, err_lines) = std::sync::mpsc::channel();
    let tail_stderr = tail.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_stderr).lines().map_while(Result::ok) {
            let _ = err_sender.send(line);
        }
    });
    let mut logged: Vec<String> = Vec::new();
    while !logged.iter().any(|line| line.contains("listening for events")) {
        let line = tokio::task::block_in_place(|| err_lines.recv_timeout(Duration::from_secs(30)))
            .unwrap_or_else(|_| panic!("the tail never subscribed: {logged:?}"));
        logged.push(line);
    }

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
    let cases: [(&str, &str, &[&str]); 8] = [
        ("TOKENVISOR_REFRESH_LEAD", "soon", &["TOKENVISOR_REFRESH_LEAD"]),
        // A number without a unit is refused, with an example, rather than read as seconds.
        ("TOKENVISOR_REFRESH_LEAD", "15", &["TOKENVISOR_REFRESH_LEAD", "15m"]),
        (
            "TOKENVISOR_PARTITION_LEASE",
            "30",
            &["TOKENVISOR_PARTITION_LEASE", "no unit"],
        ),
        ("TOKENVISOR_MIN_VALIDITY", "-5s", &["TOKENVISOR_MIN_VALIDITY"]),
        ("TOKENVISOR_ADMIN_ADDR", "localhost", &["TOKENVISOR_ADMIN_ADDR"]),
        ("TOKENVISOR_PUBLIC_URL", "not a url", &["TOKENVISOR_PUBLIC_URL"]),
        ("TOKENVISOR_DATABASE_URL", "mysql://db", &["TOKENVISOR_DATABASE_URL"]),
        (
            "TOKENVISOR_WEBHOOK_URLS",
            "http://127.0.0.1:9/hook",
            &["TOKENVISOR_WEBHOOK_SECRET"],
        ),
    ];
    for (key, value, named) in cases {
        let output = command(binary(), dir.path())
            .arg("serve")
            .env("TOKENVISOR_DATA_DIR", dir.path().join("data"))
            .env(key, value)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{key}={value}: a configuration error exits 2"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in named {
            assert!(stderr.contains(needle), "{key}={value}: {stderr}");
        }
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

/// A CLI command against `service` (started with [`Service::start`]), with its admin token.
fn admin(service: &Service, args: &[&str]) -> Command {
    let mut cmd = command(binary(), &service.dir);
    cmd.env("TOKENVISOR_ADMIN_URL", &service.base)
        .env("TOKENVISOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(args);
    cmd
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_take_only_their_own_settings() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    // Durations in humantime's words ("1h 30m") start a server.
    let service = Service::start(binary(), dir.path(), &[("TOKENVISOR_RETRY_CAP", "1h 30m".to_owned())]);
    service.add_integration(&fake, "crm").await;
    service.connect(&fake, "crm", "acme").await;

    // Server settings in the environment, one of them invalid for `serve`: a client
    // command neither reads nor validates them.
    let output = admin(&service, &["connections", "list"])
        .env("TOKENVISOR_WEBHOOK_URLS", "http://127.0.0.1:9/hook")
        .env("TOKENVISOR_REFRESH_LEAD", "soon")
        .env("TOKENVISOR_DATABASE_URL", "mysql://db")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("acme"), "{}", stdout(&output));

    // Each subcommand's help shows its own options only.
    let help = |args: &[&str]| stdout(&command(binary(), dir.path()).args(args).output().unwrap());
    let list_help = help(&["connections", "list", "--help"]);
    assert!(
        list_help.contains("--tenant") && list_help.contains("--admin-url"),
        "{list_help}"
    );
    for server_flag in ["--refresh-lead", "--webhook-urls", "--database-url", "--encryption-key"] {
        assert!(!list_help.contains(server_flag), "{server_flag} in {list_help}");
    }
    let serve_help = help(&["serve", "--help"]);
    assert!(serve_help.contains("--refresh-lead") && serve_help.contains("TOKENVISOR_WEBHOOK_URLS"));
    assert!(!serve_help.contains("--admin-url"), "{serve_help}");
    let status_help = help(&["status", "--help"]);
    assert!(status_help.contains("--database-url") && !status_help.contains("--webhook-urls"));
    let top_help = help(&["--help"]);
    assert!(top_help.contains("Exit codes") && top_help.contains("needs re-authorization"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_scripts_what_happened() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let id = service.connect(&fake, "crm", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let exit = |cmd: &mut Command| {
        let output = cmd.output().unwrap();
        (output.status.code(), stderr(&output))
    };

    assert_eq!(exit(&mut admin(&service, &["token", "get", &id])).0, Some(0));
    // 2: usage (clap's own, and values the API refuses).
    assert_eq!(exit(&mut admin(&service, &["connections", "frobnicate"])).0, Some(2));
    let (code, message) = exit(&mut admin(&service, &["connections", "list", "--status", "sleepy"]));
    assert_eq!(code, Some(2), "{message}");
    // 3: not found.
    let (code, message) = exit(&mut admin(
        &service,
        &["connections", "show", "0190f3c2-7d0e-7c6a-9b1e-1234567890ab"],
    ));
    assert_eq!(code, Some(3), "{message}");
    assert!(message.contains("not_found"), "{message}");
    // 6: unauthorized.
    let (code, _) =
        exit(admin(&service, &["connections", "list"]).env("TOKENVISOR_ADMIN_TOKEN", "wrong-token-wrong-token"));
    assert_eq!(code, Some(6));
    // 7: disabled.
    admin(&service, &["connections", "deactivate", &id]).output().unwrap();
    let (code, message) = exit(&mut admin(&service, &["token", "get", &id]));
    assert_eq!(code, Some(7), "{message}");
    admin(&service, &["connections", "activate", &id]).output().unwrap();
    // 4: needs re-authorization (the grant is revoked at the provider).
    fake.revoke_family("acme");
    let _ = admin(&service, &["connections", "refresh", &id]).output().unwrap();
    service
        .wait_for_connection(&id, Duration::from_secs(10), |v| v["status"] == "needs_reauth")
        .await;
    let (code, message) = exit(&mut admin(&service, &["token", "get", &id]));
    assert_eq!(code, Some(4), "{message}");
    assert!(message.contains("tokenvisor authorize"), "{message}");
    // 5: unavailable (nothing listens there).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, message) =
        exit(admin(&service, &["connections", "list"]).env("TOKENVISOR_ADMIN_URL", format!("http://127.0.0.1:{port}")));
    assert_eq!(code, Some(5), "{message}");
    assert!(message.contains("cannot reach the admin API"), "{message}");
    // An id that is not a UUID is refused before any request: usage too.
    let (code, _) = exit(&mut admin(&service, &["connections", "show", "../x"]));
    assert_eq!(code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_stdin_or_a_file() {
    use std::io::Write as _;
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);

    // The client secret from stdin: the integration works (a refresh authenticates with it).
    let mut child = admin(
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
            "--client-secret-file",
            "-",
            "--token-url",
            &fake.token_url(),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", fake.client_secret()).unwrap();
    let added = child.wait_with_output().unwrap();
    assert!(added.status.success(), "{}", stderr(&added));

    // The access token from a file, the refresh token from stdin, the admin token from a file.
    let issued = fake.issue_grant("acme");
    let access_file = dir.path().join("access");
    std::fs::write(&access_file, format!("{}\n", issued.access_token)).unwrap();
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, ADMIN_TOKEN).unwrap();
    let mut cmd = command(binary(), dir.path());
    cmd.env("TOKENVISOR_ADMIN_URL", &service.base).args([
        "connections",
        "add",
        "--json",
        "--tenant",
        "acme",
        "--integration",
        "crm",
        "--access-token-file",
    ]);
    cmd.arg(&access_file)
        .args(["--refresh-token-file", "-", "--expires-in", "1h", "--admin-token-file"])
        .arg(&admin_file);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", issued.refresh_token).unwrap();
    let created = child.wait_with_output().unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    let id = json(&created)["id"].as_str().unwrap().to_owned();

    let token = admin(&service, &["token", "get", &id]).output().unwrap();
    assert_eq!(stdout(&token).trim(), issued.access_token);
    let refreshed = admin(&service, &["connections", "refresh", &id]).output().unwrap();
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    assert_eq!(
        fake.refreshes_for("acme"),
        1,
        "the refresh token and client secret were read right"
    );

    // Two options cannot both read stdin.
    let both = admin(
        &service,
        &[
            "connections",
            "add",
            "--tenant",
            "t",
            "--integration",
            "crm",
            "--access-token-file",
            "-",
            "--refresh-token-file",
            "-",
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_can_live_in_a_file_for_serve_and_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-admin-token-0123456789\n").unwrap();
    let mut cmd = command(binary(), dir.path());
    cmd.env("TOKENVISOR_DATA_DIR", dir.path().join("data"))
        .env("TOKENVISOR_ADMIN_TOKEN_FILE", &token_file);
    for (key, value) in FAST_ENV {
        cmd.env(key, value);
    }
    let service = Service::spawn(cmd, dir.path(), "file-admin-token-0123456789".to_owned());
    assert_eq!(service.get("/v1/integrations").await.status, 200);
    let mut client = command(binary(), dir.path());
    client
        .env("TOKENVISOR_ADMIN_URL", &service.base)
        .args(["integrations", "list", "--admin-token-file"])
        .arg(&token_file);
    let output = client.output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!dir.path().join("data/admin.token").exists(), "no token was generated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tenant_ids_keep_the_columns_aligned() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let long = "tenant-with-a-very-long-identifier-0123456789-0123456789";
    service.connect(&fake, "crm", long).await;
    service.connect(&fake, "crm", "b").await;

    let table = stdout(&admin(&service, &["connections", "list"]).output().unwrap());
    let lines: Vec<&str> = table.lines().collect();
    let column = lines[0].find("INTEGRATION").expect("header");
    let status = lines[0].find("STATUS").expect("header");
    for row in lines.iter().filter(|l| l.contains(long) || l.contains(" b ")) {
        assert_eq!(row.find("crm"), Some(column), "{table}");
        assert_eq!(row.find("active"), Some(status), "{table}");
    }
    assert_eq!(lines.iter().filter(|l| l.contains("crm")).count(), 2, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_token_url_names_the_setting_and_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    let output = admin(
        &service,
        &[
            "integrations",
            "add",
            "--name",
            "crm",
            "--provider",
            "generic",
            "--client-id",
            "id",
            "--client-secret",
            "secret",
            "--token-url",
            "http://auth.example.com/token",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("insecure_url")
            && message.contains("TOKENVISOR_ALLOW_INSECURE_ENDPOINTS")
            && message.contains("restart"),
        "{message}"
    );
}

#[test]
fn completions_cover_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(binary(), dir.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let script = stdout(&output);
    for subcommand in [
        "serve",
        "status",
        "connections",
        "integrations",
        "events",
        "--client-secret-file",
    ] {
        assert!(script.contains(subcommand), "{subcommand} missing");
    }
    let zsh = command(binary(), dir.path())
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(zsh.status.success() && stdout(&zsh).contains("#compdef tokenvisor"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_after_the_stream_breaks_without_duplicates_and_take_filters() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    let acme = service.connect(&fake, "crm", "acme").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = service.connect(&fake, "crm", "other").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let addr: std::net::SocketAddr = service.base.trim_start_matches("http://").parse().unwrap();
    let proxy = TcpProxy::start(addr).await;

    // Only acme's events, through a link the test cuts.
    let mut tail = admin(&service, &["events", "--json", "--tenant", "acme"])
        .env("TOKENVISOR_ADMIN_URL", format!("http://{}", proxy.address()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let tail_stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let (err_sender, err_lines) = std::sync::mpsc::channel();
    let tail_stderr = tail.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_stderr).lines().map_while(Result::ok) {
            let _ = err_sender.send(line);
        }
    });
    let next = |timeout: Duration| -> Option<serde_json::Value> {
        tokio::task::block_in_place(|| lines.recv_timeout(timeout))
            .ok()
            .map(|line| serde_json::from_str(&line).unwrap())
    };
    // Subscribed before the first event (a fixed pause raced a slow start under load).
    let mut logged: Vec<String> = Vec::new();
    while !logged.iter().any(|line| line.contains("listening for events")) {
        let line = tokio::task::block_in_place(|| err_lines.recv_timeout(Duration::from_secs(30)))
            .unwrap_or_else(|_| panic!("the tail never connected: {logged:?}"));
        logged.push(line);
    }

    let path = |id: &str, action: &str| format!("/v1/connections/{id}/{action}");
    assert_eq!(service.post_empty(&path(&other, "deactivate")).await.status, 200);
    assert_eq!(service.post_empty(&path(&acme, "deactivate")).await.status, 200);
    let first = next(Duration::from_secs(10)).expect("the first event");
    assert_eq!(
        (first["type"].as_str(), first["tenant_id"].as_str()),
        (Some("deactivated"), Some("acme"))
    );

    // The link breaks; an event happens meanwhile; the link comes back.
    proxy.cut();
    assert_eq!(service.post_empty(&path(&acme, "activate")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.restore();
    let missed = next(Duration::from_secs(15)).expect("the event from the break");
    assert_eq!(missed["type"], "activated", "{missed}");
    assert_eq!(service.post_empty(&path(&acme, "deactivate")).await.status, 200);
    let live = next(Duration::from_secs(10)).expect("a live event after the break");
    assert_eq!(live["type"], "deactivated", "{live}");
    assert!(
        next(Duration::from_millis(800)).is_none(),
        "no duplicates, no other tenant"
    );
    assert!(tail.try_wait().unwrap().is_none(), "events kept running");
    let _ = tail.kill();
    let _ = tail.wait();
    logged.extend(err_lines.try_iter());
    assert!(logged.iter().any(|l| l.contains("reconnecting")), "{logged:?}");
}

/// An admin CLI command against `service` that must succeed.
fn ok(service: &Service, args: &[&str]) -> Output {
    let output = admin(service, args).output().unwrap();
    assert!(output.status.success(), "{args:?} failed: {}", stderr(&output));
    output
}

/// Runs `cmd` with `input` on its standard input.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_are_shown_changed_and_deleted_and_connections_addressed_by_key() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(binary(), dir.path(), &[]);
    service.add_integration(&fake, "crm").await;
    service.connect(&fake, "crm", "acme").await;
    let sandbox = fake.issue_grant("acme-sandbox");
    let added = admin(
        &service,
        &[
            "connections",
            "add",
            "--tenant",
            "acme",
            "--integration",
            "crm",
            "--key",
            "sandbox",
            "--access-token",
            &sandbox.access_token,
            "--refresh-token",
            &sandbox.refresh_token,
            "--expires-in",
            "1h",
        ],
    )
    .output()
    .unwrap();
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(stdout(&added).contains("sandbox"), "{}", stdout(&added));

    // Show: by name, never the secret.
    let shown = admin(&service, &["integrations", "show", "crm"]).output().unwrap();
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(stdout(&shown).contains(fake.client_id()), "{}", stdout(&shown));
    assert!(!stdout(&shown).contains(fake.client_secret()));

    // Update: the secret rotated from stdin (never printed), the scopes replaced.
    let rotated = fake.rotate_client_secret();
    let updated = with_stdin(
        &mut admin(
            &service,
            &[
                "integrations",
                "update",
                "crm",
                "--client-secret-file",
                "-",
                "--scope",
                "read",
                "--scope",
                "write",
            ],
        ),
        &rotated,
    );
    assert!(updated.status.success(), "{}", stderr(&updated));
    assert!(stdout(&updated).contains("read write"), "{}", stdout(&updated));
    assert!(!stdout(&updated).contains(&rotated) && !stderr(&updated).contains(&rotated));
    let shown = json(&ok(&service, &["integrations", "show", "crm", "--json"]));
    assert_eq!(shown["scopes"], serde_json::json!(["read", "write"]));
    let nothing = admin(&service, &["integrations", "update", "crm"]).output().unwrap();
    assert_eq!(nothing.status.code(), Some(2), "{}", stderr(&nothing));

    // By tenant, integration and key: a refresh authenticates with the rotated secret.
    let refreshes = fake.refreshes();
    let refreshed = admin(
        &service,
        &["connections", "refresh", "--tenant", "acme", "--integration", "crm"],
    )
    .output()
    .unwrap();
    assert!(refreshed.status.success(), "{}", stderr(&refreshed));
    assert_eq!(fake.refreshes(), refreshes + 1);
    assert_eq!(fake.client_authentication_failures(), 0, "the old secret was presented");
    let token = admin(
        &service,
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--integration",
            "crm",
            "--key",
            "sandbox",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(stdout(&token).trim(), sandbox.access_token, "{}", stderr(&token));
    let history = json(&ok(
        &service,
        &[
            "connections",
            "history",
            "--json",
            "--tenant",
            "acme",
            "--integration",
            "crm",
        ],
    ));
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history["items"][0]["reason"], "forced");
    let missing = admin(
        &service,
        &[
            "connections",
            "show",
            "--tenant",
            "acme",
            "--integration",
            "crm",
            "--key",
            "prod",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));

    // A tenant's connections: both keys, in a table and in JSON.
    service.connect(&fake, "crm", "globex").await;
    let table = stdout(&ok(&service, &["tenants", "connections", "acme"]));
    let lines: Vec<&str> = table.lines().collect();
    let key_column = lines[0].find("KEY").expect("a KEY column");
    let mut keys: Vec<&str> = lines[1..3]
        .iter()
        .map(|row| row[key_column..].split(' ').next().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["default", "sandbox"], "{table}");
    assert!(
        !table.contains("globex") && table.contains("2 connection(s)"),
        "{table}"
    );
    let listed = json(&ok(&service, &["tenants", "connections", "acme", "--json"]));
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

    // Delete: refused while connections use it (conflict), then with --cascade.
    let refused = admin(&service, &["integrations", "delete", "crm"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(8), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("integration_in_use"), "{}", stderr(&refused));
    ok(&service, &["integrations", "delete", "crm", "--cascade"]);
    let gone = admin(&service, &["integrations", "show", "crm"]).output().unwrap();
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
    let listed = json(&ok(&service, &["tenants", "connections", "acme", "--json"]));
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
}

/// The `--json` items of `connections list` with `args`, as (tenant, id, sort value).
fn listed(service: &Service, args: &[&str], field: &str) -> Vec<(String, String, serde_json::Value)> {
    let mut all = vec!["connections", "list", "--json"];
    all.extend_from_slice(args);
    json(&ok(service, &all))["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["tenant_id"].as_str().unwrap().to_owned(),
                item["id"].as_str().unwrap().to_owned(),
                item[field].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_list_searches_and_sorts_across_pages() {
    let fake = fake(Dialect::Generic, 3600).await;
    let dir = tempfile::tempdir().unwrap();
    // No automatic retry during the test: the transient failures stay counted.
    let service = Service::start(
        binary(),
        dir.path(),
        &[
            ("TOKENVISOR_RETRY_BASE", "30m".to_owned()),
            ("TOKENVISOR_RETRY_CAP", "1h".to_owned()),
        ],
    );
    service.add_integration(&fake, "crm").await;
    // More than a page (100) of connections: the CLI follows the cursor of each order.
    let mut tenants: Vec<String> = (0..110).map(|i| format!("bulk-{i:03}")).collect();
    tenants.extend(["acme-1", "acme-2", "acme-3", "globex-1", "globex-2"].map(String::from));
    let mut ids = std::collections::HashMap::new();
    for (index, tenant) in tenants.iter().enumerate() {
        let grant = fake.issue_grant(tenant);
        let created = service
            .post(
                "/v1/connections",
                serde_json::json!({
                    "tenant_id": tenant,
                    "integration": "crm",
                    "access_token": grant.access_token,
                    "refresh_token": grant.refresh_token,
                    // Expiries not in creation order, with ties (broken by id).
                    "expires_in": 3600 + ((index * 37) % 50) * 60,
                }),
            )
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        ids.insert(tenant.clone(), created.body["id"].as_str().unwrap().to_owned());
    }
    // Transient failures in a row: globex-1 two, acme-2 one.
    for (tenant, failures) in [("globex-1", 2), ("acme-2", 1)] {
        for _ in 0..failures {
            fake.fail_next(1, 503, serde_json::json!({"error": "temporarily_unavailable"}));
            let refused = admin(&service, &["connections", "refresh", &ids[tenant]])
                .output()
                .unwrap();
            assert!(!refused.status.success(), "{}", stdout(&refused));
        }
        let view = service.get(&format!("/v1/connections/{}", ids[tenant])).await;
        assert_eq!(view.body["consecutive_failures"], failures, "{view:?}");
    }

    // By failures, most first: globex-1, acme-2, then the others by id, latest first.
    let by_failures = listed(
        &service,
        &["--sort", "failures", "--order", "desc"],
        "consecutive_failures",
    );
    assert_eq!(by_failures.len(), tenants.len());
    assert_eq!(
        by_failures[..2].iter().map(|(t, ..)| t.as_str()).collect::<Vec<_>>(),
        ["globex-1", "acme-2"]
    );
    let mut expected = by_failures.clone();
    expected.sort_by(|a, b| b.2.as_i64().cmp(&a.2.as_i64()).then(b.1.cmp(&a.1)));
    assert_eq!(by_failures, expected);

    // By expiry, soonest first (the default order): every connection once, in order.
    let by_expiry = listed(&service, &["--sort", "expires_at"], "expires_at");
    let time = |value: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    let mut expected = by_expiry.clone();
    expected.sort_by(|a, b| time(&a.2).cmp(&time(&b.2)).then(a.1.cmp(&b.1)));
    assert_eq!(by_expiry, expected);
    let mut seen: Vec<&str> = by_expiry.iter().map(|(t, ..)| t.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), tenants.len(), "each connection once");
    assert_ne!(
        by_expiry.iter().map(|(_, id, _)| id).collect::<Vec<_>>(),
        {
            let mut by_id: Vec<&String> = ids.values().collect();
            by_id.sort();
            by_id
        },
        "the expiries are not in creation order"
    );

    // The search: a tenant prefix, alone or with an order; the table too.
    let found = listed(&service, &["-q", "acme"], "expires_at");
    assert_eq!(
        found.iter().map(|(t, ..)| t.as_str()).collect::<Vec<_>>(),
        ["acme-1", "acme-2", "acme-3"]
    );
    let found = listed(
        &service,
        &["--search", "globex", "--sort", "failures", "--order", "desc"],
        "consecutive_failures",
    );
    assert_eq!(
        found.iter().map(|(t, ..)| t.as_str()).collect::<Vec<_>>(),
        ["globex-1", "globex-2"]
    );
    let table = stdout(&ok(
        &service,
        &["connections", "list", "-q", "acme-", "--sort", "expires_at"],
    ));
    assert!(
        table.contains("acme-3") && !table.contains("globex") && !table.contains("bulk"),
        "{table}"
    );
    assert!(table.contains("3 connection(s)"), "{table}");
    let none = json(&ok(&service, &["connections", "list", "--json", "-q", "initech"]));
    assert_eq!(none["items"].as_array().unwrap().len(), 0, "{none}");

    // Bad values are usage errors before any request, naming the choices.
    let bad = admin(&service, &["connections", "list", "--sort", "tenant"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("expires_at") && stderr(&bad).contains("last_error"),
        "{}",
        stderr(&bad)
    );
    let bad = admin(&service, &["connections", "list", "--order", "sideways"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("desc"), "{}", stderr(&bad));
    // A search the API refuses is a usage error too.
    let bad = admin(&service, &["connections", "list", "-q", "a b"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
