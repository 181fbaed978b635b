//! Library code installs nothing process-wide: embedding tokenvisor (the supervisor on a
//! `MemoryStore`), the provider's token client, the webhook dispatcher and a telemetry
//! pipeline that is built but not installed leave the process's rustls crypto provider
//! and its global tracing subscriber unset, so a host application can install its own
//! (installing a rustls provider twice fails, a second global subscriber is refused).
//!
//! A test binary of its own: nothing else in this process installs anything, so the
//! checks cannot be satisfied or spoiled by another test.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_admin::{WebhookConfig, WebhookDispatcher, WebhookSecret};
use tokenvisor_provider::{TokenClient, TokenClientOptions};
use tokenvisor_store::{Keyring, MemoryStore, SqlStore};
use tokenvisor_supervisor::{Tokenvisor, TokenvisorConfig};
use tokenvisor_telemetry::TelemetryConfig;

fn assert_nothing_installed(when: &str) {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "{when}: a process-wide rustls crypto provider is installed"
    );
    assert!(
        !tracing::dispatcher::has_been_set(),
        "{when}: a global tracing subscriber is installed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_tokenvisor_installs_no_crypto_provider_and_no_subscriber() {
    assert_nothing_installed("before anything ran");

    // The telemetry pipeline with both OTLP exporters (their HTTP client has TLS), built
    // and handed to the supervisor as its meter, not installed.
    let pipeline = tokenvisor_telemetry::build(TelemetryConfig {
        export_traces: true,
        export_metrics: true,
        ..TelemetryConfig::default()
    });
    assert!(pipeline.problems().is_empty(), "{:?}", pipeline.problems());
    assert_nothing_installed("after building the telemetry pipeline");

    let tokenvisor = Tokenvisor::start(
        Arc::new(MemoryStore::new()),
        TokenvisorConfig {
            meter: Some(pipeline.meter()),
            ..TokenvisorConfig::default()
        },
    )
    .await
    .expect("tokenvisor starts");
    assert_nothing_installed("after starting tokenvisor");

    let client = TokenClient::new(TokenClientOptions::default()).expect("token client");
    drop(client);
    assert_nothing_installed("after building a token client");

    let path = std::env::temp_dir().join(format!("tokenvisor-no-global-state-{}.db", uuid::Uuid::new_v4()));
    let store = SqlStore::connect(&format!("sqlite://{}?mode=rwc", path.display()), Keyring::generate().0)
        .await
        .expect("outbox store");
    let webhooks = WebhookConfig::new(
        vec![WebhookConfig::parse_url("https://hooks.example.invalid/tokenvisor").expect("url")],
        WebhookSecret::parse(&WebhookSecret::generate()).expect("secret"),
    );
    let dispatcher = WebhookDispatcher::start(tokenvisor.subscribe(), webhooks, store.webhook_outbox())
        .await
        .expect("webhook dispatcher starts");
    assert_nothing_installed("after starting the webhook dispatcher");

    dispatcher.shutdown(Duration::from_millis(100)).await;
    tokenvisor.shutdown().await;
    pipeline.into_guard().shutdown();
    drop(store);
    let _ = std::fs::remove_file(&path);
    assert_nothing_installed("after shutting everything down");
}
