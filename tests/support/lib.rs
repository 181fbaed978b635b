//! The harness shared by the integration tests: a fake provider on loopback, a store
//! (in memory, a temporary SQLite file, or a fresh PostgreSQL database), and a started
//! tokenvisor pointed at the fake.
#![allow(missing_docs, clippy::unwrap_used)]

pub mod answer_proxy;
pub mod databases;
pub mod faulty_store;
pub mod interfering_store;
pub mod oauth;
pub mod otlp;
pub mod process;
pub mod scripted_store;
pub mod service;
pub mod tcp_proxy;
pub mod telemetry;

use std::sync::{Arc, Once};
use tokenvisor_core::{Connection, Event, Integration, SecretString, TenantId, TokioClock};
use tokenvisor_store::Store;
use tokenvisor_supervisor::{NewConnection, NewIntegration, Tokenvisor, TokenvisorConfig};
use tokenvisor_testkit::{Dialect, FakeConfig, FakeProvider};
use tokio::sync::broadcast;

/// Installs a test subscriber once; silent unless `TEST_LOG` is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A configuration for tests: loopback allowed over HTTP.
pub fn test_config() -> TokenvisorConfig {
    TokenvisorConfig {
        allow_insecure_hosts: vec!["127.0.0.1".into()],
        ..TokenvisorConfig::default()
    }
}

/// A configuration for paused-time tests: wall time follows tokio's clock. Callers wait
/// up to a minute for a token (through spacing limits, like a patient client); the
/// default few-second wait is tested on its own (`lifecycle::*`).
pub fn paused_config() -> TokenvisorConfig {
    TokenvisorConfig {
        clock: Arc::new(TokioClock::default()),
        token_wait: std::time::Duration::from_secs(60),
        ..test_config()
    }
}

/// `config` with room for every event of a large test (a lagging subscriber loses events).
pub fn many_events(config: TokenvisorConfig) -> TokenvisorConfig {
    TokenvisorConfig {
        event_capacity: 100_000,
        ..config
    }
}

/// Taken by the tests that keep the CPU busy for a minute (three replicas with thousands
/// of connections, simulated days of refreshes): they run one at a time, beside the
/// lighter tests (the suite runs four tests at a time, `.cargo/config.toml`), so two of
/// them never compete for the machine's cores and let tokens expire.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A fake provider with this dialect and token lifetime.
pub async fn fake(dialect: Dialect, expires_in: u64) -> FakeProvider {
    FakeProvider::start(FakeConfig {
        dialect,
        expires_in,
        ..FakeConfig::default()
    })
    .await
    .expect("fake provider starts")
}

/// A started tokenvisor with one integration pointing at the fake provider.
pub struct Harness {
    pub tokenvisor: Tokenvisor,
    pub fake: FakeProvider,
    pub store: Arc<dyn Store>,
    pub integration: Integration,
    pub events: broadcast::Receiver<Event>,
    pub config: TokenvisorConfig,
}

impl Harness {
    pub async fn start(store: Arc<dyn Store>, fake: FakeProvider, config: TokenvisorConfig) -> Harness {
        let integration = integration_for(&fake, "fake");
        Harness::start_with(store, fake, config, integration).await
    }

    /// Like [`Harness::start`] with a custom integration registration.
    pub async fn start_with(
        store: Arc<dyn Store>,
        fake: FakeProvider,
        config: TokenvisorConfig,
        integration: NewIntegration,
    ) -> Harness {
        init_tracing();
        let tokenvisor = Tokenvisor::start(store.clone(), config.clone())
            .await
            .expect("tokenvisor starts");
        let events = tokenvisor.subscribe();
        let integration = tokenvisor
            .integrations()
            .register(integration)
            .await
            .expect("integration registers");
        Harness {
            tokenvisor,
            fake,
            store,
            integration,
            events,
            config,
        }
    }

    /// Starts another tokenvisor on the same store (as after a process restart), reusing
    /// the registered integration.
    pub async fn restart(&self, config: TokenvisorConfig) -> Tokenvisor {
        Tokenvisor::start(self.store.clone(), config)
            .await
            .expect("tokenvisor restarts")
    }

    /// A tenant authorizes: the fake issues a grant labelled `tenant`, which is registered.
    pub async fn connect(&self, tenant: &str) -> Connection {
        let issued = self.fake.issue_grant(tenant);
        let now = self.config.clock.now();
        self.tokenvisor
            .connections()
            .register(NewConnection {
                tenant_id: TenantId::parse(tenant).expect("valid tenant"),
                integration_id: self.integration.id,
                connection_key: Default::default(),
                access_token: SecretString::new(issued.access_token.as_str()),
                refresh_token: Some(SecretString::new(issued.refresh_token.as_str())),
                token_type: Some("Bearer".into()),
                scope: None,
                expires_at: Some(now + chrono::Duration::seconds(issued.expires_in as i64)),
                metadata: Default::default(),
            })
            .await
            .expect("connection registers")
    }

    /// Drains the events received so far.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(event) => events.push(event),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => panic!("test lost {missed} events"),
                Err(_) => break,
            }
        }
        events
    }
}

/// An integration registration for the fake provider.
pub fn integration_for(fake: &FakeProvider, name: &str) -> NewIntegration {
    NewIntegration {
        name: name.into(),
        provider: "generic".into(),
        client_id: fake.client_id().into(),
        client_secret: SecretString::new(fake.client_secret()),
        scopes: vec!["read".into()],
        redirect_uri: Some("http://127.0.0.1:9/callback".into()),
        data_center: None,
        token_url: Some(fake.token_url()),
        authorize_url: Some(fake.authorize_url()),
        revoke_url: Some(fake.revoke_url()),
        settings: serde_json::Value::Null,
    }
}

/// Lets spawned tasks and actors run (paused-time tests).
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Sleeps `seconds` of (possibly paused) tokio time.
pub async fn sleep_secs(seconds: u64) {
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
}
