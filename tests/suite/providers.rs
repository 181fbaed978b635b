//! Provider profiles against their fake dialects: Zoho (data centres, 200-with-error,
//! no refresh token on refresh, 10 tokens per 10 minutes) and Atlassian (JSON, rotation
//! with grace, family revocation, cloud id), and the API client helper.

use std::sync::Arc;
use std::time::Duration;
use tokenvisor_core::{ConnectionStatus, SecretString, TenantId};
use tokenvisor_provider::endpoint::ACCOUNTS_SERVER_KEY;
use tokenvisor_store::MemoryStore;
use tokenvisor_supervisor::{ApiClient, ApiRequest, AuthorizationRequest, NewConnection, NewIntegration, TokenError};
use tokenvisor_testkit::{Dialect, FakeProvider};
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};

fn zoho_integration(fake: &FakeProvider, provider: &str) -> NewIntegration {
    NewIntegration {
        name: format!("{provider}-app"),
        provider: provider.into(),
        client_id: fake.client_id().into(),
        client_secret: SecretString::new(fake.client_secret()),
        scopes: vec!["ZohoCRM.modules.ALL".into()],
        redirect_uri: Some("http://127.0.0.1:9/callback".into()),
        data_center: Some("us".into()),
        token_url: None,
        authorize_url: Some(format!("{}/oauth/v2/auth", fake.zoho_accounts_server("us"))),
        revoke_url: None,
        settings: serde_json::Value::Null,
    }
}

fn atlassian_integration(fake: &FakeProvider) -> NewIntegration {
    NewIntegration {
        name: "jira".into(),
        provider: "jira".into(),
        client_id: fake.client_id().into(),
        client_secret: SecretString::new(fake.client_secret()),
        scopes: vec!["read:jira-work".into()],
        redirect_uri: Some("http://127.0.0.1:9/callback".into()),
        data_center: None,
        token_url: Some(fake.token_url()),
        authorize_url: Some(format!("{}/authorize", fake.base_url())),
        revoke_url: None,
        settings: serde_json::json!({
            "accessible_resources_url": format!("{}/oauth/token/accessible-resources", fake.base_url())
        }),
    }
}

/// Registers a Zoho connection whose grant lives in `data_center`.
async fn zoho_connection(harness: &Harness, tenant: &str, data_center: &str) -> tokenvisor_core::Connection {
    let issued = harness.fake.issue_grant_in(tenant, data_center);
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        ACCOUNTS_SERVER_KEY.into(),
        harness.fake.zoho_accounts_server(data_center).into(),
    );
    harness
        .tokenvisor
        .connections()
        .register(NewConnection {
            tenant_id: TenantId::parse(tenant).unwrap(),
            integration_id: harness.integration.id,
            connection_key: Default::default(),
            access_token: SecretString::new(issued.access_token.as_str()),
            refresh_token: Some(SecretString::new(issued.refresh_token.as_str())),
            token_type: None,
            scope: None,
            expires_at: Some(harness.config.clock.now() + chrono::Duration::seconds(issued.expires_in as i64)),
            metadata,
        })
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_zoho_eu_connection_refreshes_at_the_eu_accounts_server_and_hands_out_its_api_domain() {
    let fake = fake(Dialect::Zoho, 3600).await;
    let integration = zoho_integration(&fake, "zoho");
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    // The tenant authorizes from the EU data centre: the redirect names its accounts server.
    harness.fake.set_authorizing_user("acme-eu", "eu");
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id: TenantId::parse("acme-eu").unwrap(),
            integration_id: harness.integration.id,
            connection_id: None,
            connection_key: None,
            redirect_uri: None,
            return_to: None,
        })
        .await
        .expect("authorization starts");
    assert!(
        start.authorize_url.contains("access_type=offline"),
        "{}",
        start.authorize_url
    );
    let callback = tokenvisor_tests::oauth::follow(&start.authorize_url).await;
    assert_eq!(callback.location.as_deref(), Some("eu"));
    let connection = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect("connected");
    assert_eq!(
        connection.metadata.get(ACCOUNTS_SERVER_KEY).and_then(|v| v.as_str()),
        Some(harness.fake.zoho_accounts_server("eu").as_str())
    );
    let refresh_token = connection
        .refresh_token
        .clone()
        .expect("offline access gives a refresh token");

    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("refresh");
    assert_eq!(harness.fake.refreshes_at_data_center("eu"), 1);
    assert_eq!(harness.fake.refreshes_at_data_center("us"), 0);
    assert_eq!(token.api_domain.as_deref(), Some("https://www.zohoapis.eu"));
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token,
        Some(refresh_token),
        "Zoho never sends one on refresh: kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zoho_connection_with_rejected_tokens_reported_in_a_loop_for_thirty_days_never_exceeds_ten_refreshes_per_ten_minutes()
 {
    let _heavy = tokenvisor_tests::heavy().await;
    let fake = fake(Dialect::Zoho, 3600).await;
    let integration = zoho_integration(&fake, "zoho");
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    let connection = zoho_connection(&harness, "tight-loop", "us").await;
    // A caller that believes every token is bad: every 2 s for the first day, then every
    // minute for the remaining 29 days.
    let day = 24 * 3600;
    let mut elapsed = 0u64;
    while elapsed < 30 * day {
        let step = if elapsed < day { 2 } else { 60 };
        if let Ok(token) = harness.tokenvisor.tokens().access_token(connection.id).await {
            let _ = harness
                .tokenvisor
                .tokens()
                .token_rejected(connection.id, &token.secret)
                .await;
        }
        sleep_secs(step).await;
        elapsed += step;
    }
    settle().await;
    assert_eq!(
        harness.fake.throttled_requests(),
        0,
        "never made Zoho answer Access Denied"
    );
    let times = harness.fake.refresh_times_for("tight-loop");
    assert!(times.len() > 1000, "the caller did get fresh tokens: {}", times.len());
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(600))
            .count();
        assert!(in_window <= 10, "{in_window} refreshes within 10 minutes");
    }
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);
    assert_eq!(stored.refresh_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn zoho_errors_arrive_with_http_200_and_are_classified() {
    let fake = fake(Dialect::Zoho, 3600).await;
    let integration = zoho_integration(&fake, "zoho");
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    let revoked = zoho_connection(&harness, "revoked", "us").await;
    harness.fake.revoke_family("revoked");
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(revoked.id)
        .await
        .expect_err("invalid_code");
    assert!(
        matches!(error, TokenError::NeedsReauthorization { ref code, .. } if code == "invalid_code"),
        "{error:?}"
    );
    settle().await;
    let stored = harness.store.get_connection(revoked.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);
    assert_eq!(stored.refresh_failures, 1);

    // Throttling ("Access Denied", HTTP 200) backs off and never needs re-authorization.
    let throttled = zoho_connection(&harness, "throttled", "us").await;
    harness.fake.fail_next(
        1,
        200,
        serde_json::json!({"error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time."}),
    );
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(throttled.id)
        .await
        .expect_err("throttled");
    assert!(
        matches!(error, TokenError::ProviderUnavailable { ref code, .. } if code == "Access Denied"),
        "{error:?}"
    );
    sleep_secs(3600).await;
    settle().await;
    let stored = harness.store.get_connection(throttled.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active, "recovered after backing off");
}

#[tokio::test(start_paused = true)]
async fn a_wrong_zoho_client_secret_is_an_integration_error_not_a_reauthorization() {
    let fake = fake(Dialect::Zoho, 3600).await;
    let mut integration = zoho_integration(&fake, "zoho");
    integration.client_secret = SecretString::new("wrong-secret");
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    let connection = zoho_connection(&harness, "misconfigured", "us").await;
    let error = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("invalid_client");
    assert!(
        matches!(error, TokenError::IntegrationMisconfigured { ref code, .. } if code == "invalid_client"),
        "{error:?}"
    );
    sleep_secs(6 * 3600).await;
    settle().await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Degraded);
    assert_eq!(
        stored.refresh_failures, 0,
        "re-authorizing the tenant would not help: not escalated"
    );
    assert!(
        harness.fake.token_requests() < 40,
        "retried slowly: {}",
        harness.fake.token_requests()
    );
}

#[tokio::test(start_paused = true)]
async fn the_api_client_uses_the_zoho_header_and_retries_once_with_a_fresh_token() {
    let fake = fake(Dialect::Zoho, 3600).await;
    let integration = zoho_integration(&fake, "zoho");
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    let connection = zoho_connection(&harness, "api-user", "us").await;
    let api = ApiClient::new(harness.tokenvisor.clone());
    let url = format!("{}/zoho/api/crm/v8/users", harness.fake.base_url());
    let response = api
        .send(connection.id, ApiRequest::to_url("GET", &url))
        .await
        .expect("call");
    assert_eq!(response.status(), 200, "Zoho-oauthtoken header accepted");
    assert_eq!(harness.fake.refreshes(), 0);

    // The token dies early (e.g. evicted by Zoho's 15-token cap): 401, one refresh, retried.
    harness.fake.revoke_access_token(connection.access_token.expose());
    let response = api
        .send(connection.id, ApiRequest::to_url("GET", &url))
        .await
        .expect("call");
    assert_eq!(response.status(), 200);
    assert_eq!(harness.fake.refreshes(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_jira_connection_refreshed_for_thirty_days_never_reuses_a_token_and_stays_active() {
    let fake = fake(
        Dialect::Atlassian {
            grace: Duration::from_secs(600),
        },
        3600,
    )
    .await;
    let integration = atlassian_integration(&fake);
    let harness = Harness::start_with(Arc::new(MemoryStore::new()), fake, paused_config(), integration).await;
    harness.fake.set_authorizing_user("jira-tenant", "us");
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id: TenantId::parse("jira-tenant").unwrap(),
            integration_id: harness.integration.id,
            connection_id: None,
            connection_key: None,
            redirect_uri: None,
            return_to: None,
        })
        .await
        .unwrap();
    assert!(
        start.authorize_url.contains("offline_access"),
        "offline_access always requested"
    );
    assert!(start.authorize_url.contains("audience=api.atlassian.com"));
    let callback = tokenvisor_tests::oauth::follow(&start.authorize_url).await;
    let connection = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect("connected");
    assert!(
        connection.refresh_token.is_some(),
        "Jira can refresh: offline_access gives a refresh token"
    );
    assert_eq!(
        connection
            .metadata
            .get(tokenvisor_supervisor::CLOUD_ID_KEY)
            .and_then(|v| v.as_str()),
        Some(harness.fake.cloud_id().as_str())
    );

    sleep_secs(30 * 24 * 3600).await;
    settle().await;
    assert!(harness.fake.refreshes_for("jira-tenant") >= 30 * 24 * 60 / 46);
    assert_eq!(harness.fake.reuse_events(), 0);
    assert_eq!(harness.fake.family_revocations(), 0);
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::Active);

    // A refresh whose answer is lost is retried with the previous token inside the grace period.
    harness.fake.drop_next_answers_after_rotation(1);
    let _ = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect_err("answer lost");
    sleep_secs(60).await;
    settle().await;
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("alive");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
    assert_eq!(harness.fake.family_revocations(), 0);
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose().to_owned()),
        harness.fake.current_refresh_token("jira-tenant")
    );

    // The gateway answers 403 for a dead token: the API client refreshes once and retries.
    harness.fake.set_gateway_expired_status(403);
    harness.fake.revoke_access_token(token.secret.expose());
    let api = ApiClient::new(harness.tokenvisor.clone());
    let url = format!(
        "{}/ex/jira/{}/rest/api/3/myself",
        harness.fake.base_url(),
        harness.fake.cloud_id()
    );
    let response = api
        .send(connection.id, ApiRequest::to_url("GET", &url))
        .await
        .expect("call");
    assert_eq!(response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_connection_revokes_its_grant_at_the_provider() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("leaving").await;
    harness
        .tokenvisor
        .connections()
        .remove(connection.id)
        .await
        .expect("removed");
    assert_eq!(harness.fake.revocation_requests(), 1);
    assert!(!harness.fake.is_access_token_live(connection.access_token.expose()));
    assert!(harness.store.get_connection(connection.id).await.unwrap().is_none());
    assert_eq!(
        harness
            .tokenvisor
            .tokens()
            .access_token(connection.id)
            .await
            .expect_err("gone"),
        TokenError::NotFound
    );
}
