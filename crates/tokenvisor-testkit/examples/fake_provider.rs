//! The fake OAuth provider as a process, for scripts outside Rust (`clients/run.sh`).
//!
//! Binds `127.0.0.1:0`, issues one grant per label given as an argument (default
//! `client`), prints one JSON line to stdout, then serves until killed:
//! `{"base_url", "token_url", "authorize_url", "revoke_url", "api_base_url", "client_id",
//! "client_secret", "grants": {label: {"access_token", "refresh_token", "expires_in"}}}`.
//! `api_base_url` is the fake's echo API (`ANY /api/echo/{*rest}`).

use std::io::Write;
use tokenvisor_testkit::{FakeConfig, FakeProvider};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let fake = FakeProvider::start(FakeConfig::default()).await?;
    let mut labels: Vec<String> = std::env::args().skip(1).collect();
    if labels.is_empty() {
        labels.push("client".to_owned());
    }
    let grants: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|label| {
            let tokens = fake.issue_grant(label);
            let grant = serde_json::json!({
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "expires_in": tokens.expires_in,
            });
            (label.clone(), grant)
        })
        .collect();
    let line = serde_json::json!({
        "base_url": fake.base_url(),
        "token_url": fake.token_url(),
        "authorize_url": fake.authorize_url(),
        "revoke_url": fake.revoke_url(),
        "api_base_url": format!("{}/api/echo", fake.base_url()),
        "client_id": fake.client_id(),
        "client_secret": fake.client_secret(),
        "grants": grants,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    drop(stdout);
    // Serve until killed.
    std::future::pending::<()>().await;
    Ok(())
}
