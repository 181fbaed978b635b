//! Re-authorization end to end: a revoked connection goes `needs_reauth`, the tenant
//! follows the authorize URL, the callback brings it back, refreshing works again; and
//! every bad-state case is rejected without changing anything.

use std::sync::Arc;
use tokenvisor_core::{ConnectionStatus, EventKind, TenantId};
use tokenvisor_store::MemoryStore;
use tokenvisor_supervisor::{AuthorizationCallback, AuthorizationError, AuthorizationRequest, TokenError};
use tokenvisor_testkit::Dialect;
use tokenvisor_tests::oauth::follow;
use tokenvisor_tests::{Harness, fake, paused_config, settle, sleep_secs};

async fn revoked_connection(harness: &Harness, tenant: &str) -> tokenvisor_core::Connection {
    let connection = harness.connect(tenant).await;
    harness.fake.revoke_family(tenant);
    let _ = harness.tokenvisor.tokens().force_refresh(connection.id).await;
    settle().await;
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);
    stored
}

fn reauthorize(harness: &Harness, connection: &tokenvisor_core::Connection) -> AuthorizationRequest {
    AuthorizationRequest {
        tenant_id: connection.tenant_id.clone(),
        integration_id: harness.integration.id,
        connection_id: Some(connection.id),
        connection_key: None,
        redirect_uri: None,
        return_to: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_revoked_connection_is_reauthorized_in_one_step_and_refreshes_again() {
    let mut harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = revoked_connection(&harness, "comeback").await;
    harness.fake.set_authorizing_user("comeback", "us");
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(reauthorize(&harness, &connection))
        .await
        .expect("starts");
    assert!(
        start.authorize_url.contains("code_challenge_method=S256"),
        "PKCE for the generic profile"
    );
    let callback = follow(&start.authorize_url).await;
    let revived = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect("re-authorized");
    assert_eq!(revived.id, connection.id);
    assert_eq!(revived.status, ConnectionStatus::Active);
    assert!(revived.is_active);
    assert_eq!(revived.refresh_failures, 1, "kept as history");
    assert_eq!(harness.fake.code_exchanges(), 1);

    let token = harness
        .tokenvisor
        .tokens()
        .force_refresh(connection.id)
        .await
        .expect("refreshing works again");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
    sleep_secs(2 * 3600).await;
    settle().await;
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("scheduled refreshes work again");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
    assert!(
        harness
            .drain_events()
            .iter()
            .any(|e| e.connection_id == connection.id && e.kind == EventKind::Reauthorized)
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_reused_and_expired_states_are_rejected_and_change_nothing() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = revoked_connection(&harness, "careful").await;
    harness.fake.set_authorizing_user("careful", "us");

    let unknown = AuthorizationCallback {
        state: "made-up".into(),
        ..AuthorizationCallback::default()
    };
    let error = harness
        .tokenvisor
        .authorizations()
        .complete(unknown)
        .await
        .expect_err("unknown state");
    assert!(matches!(error, AuthorizationError::UnknownState), "{error:?}");

    let start = harness
        .tokenvisor
        .authorizations()
        .begin(reauthorize(&harness, &connection))
        .await
        .unwrap();
    let callback = follow(&start.authorize_url).await;
    harness
        .tokenvisor
        .authorizations()
        .complete(callback.clone())
        .await
        .expect("first use");
    let error = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect_err("reused state");
    assert!(matches!(error, AuthorizationError::UnknownState), "{error:?}");

    harness.fake.revoke_family("careful");
    let _ = harness.tokenvisor.tokens().force_refresh(connection.id).await;
    settle().await;
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(reauthorize(&harness, &connection))
        .await
        .unwrap();
    let callback = follow(&start.authorize_url).await;
    sleep_secs(11 * 60).await;
    let exchanges = harness.fake.code_exchanges();
    let error = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect_err("expired state");
    assert!(matches!(error, AuthorizationError::ExpiredState), "{error:?}");
    assert_eq!(
        harness.fake.code_exchanges(),
        exchanges,
        "no exchange for an expired state"
    );
    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth, "nothing changed");
    assert_eq!(stored.refresh_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn denied_consent_and_a_failed_exchange_are_typed_errors_that_change_nothing() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = revoked_connection(&harness, "hesitant").await;
    harness.fake.set_authorizing_user("hesitant", "us");

    harness.fake.deny_next_authorization();
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(reauthorize(&harness, &connection))
        .await
        .unwrap();
    let callback = follow(&start.authorize_url).await;
    let error = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect_err("denied");
    assert!(
        matches!(error, AuthorizationError::Denied { ref code, .. } if code == "access_denied"),
        "{error:?}"
    );

    let start = harness
        .tokenvisor
        .authorizations()
        .begin(reauthorize(&harness, &connection))
        .await
        .unwrap();
    let callback = follow(&start.authorize_url).await;
    harness
        .fake
        .fail_next(1, 500, serde_json::json!({"error": "server_error"}));
    let error = harness
        .tokenvisor
        .authorizations()
        .complete(callback)
        .await
        .expect_err("exchange failed");
    assert!(matches!(error, AuthorizationError::Exchange { .. }), "{error:?}");

    let stored = harness.store.get_connection(connection.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ConnectionStatus::NeedsReauth);
    assert_eq!(stored.access_token, connection.access_token);
    let error = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect_err("still needs reauth");
    assert!(matches!(error, TokenError::NeedsReauthorization { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_new_tenant_connects_through_the_flow() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    harness.fake.set_authorizing_user("newcomer", "us");
    let start = harness
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id: TenantId::parse("newcomer").unwrap(),
            integration_id: harness.integration.id,
            connection_id: None,
            connection_key: None,
            redirect_uri: None,
            return_to: None,
        })
        .await
        .unwrap();
    let connection = harness
        .tokenvisor
        .authorizations()
        .complete(follow(&start.authorize_url).await)
        .await
        .unwrap();
    assert_eq!(connection.tenant_id.as_str(), "newcomer");
    let token = harness
        .tokenvisor
        .tokens()
        .access_token(connection.id)
        .await
        .expect("token");
    assert!(harness.fake.is_access_token_live(token.secret.expose()));
}

#[tokio::test(start_paused = true)]
async fn a_connection_of_another_tenant_cannot_be_reauthorized() {
    let harness = Harness::start(
        Arc::new(MemoryStore::new()),
        fake(Dialect::Generic, 3600).await,
        paused_config(),
    )
    .await;
    let connection = harness.connect("owner").await;
    let error = harness
        .tokenvisor
        .authorizations()
        .begin(AuthorizationRequest {
            tenant_id: TenantId::parse("intruder").unwrap(),
            integration_id: harness.integration.id,
            connection_id: Some(connection.id),
            connection_key: None,
            redirect_uri: None,
            return_to: None,
        })
        .await
        .expect_err("other tenant");
    assert!(matches!(error, AuthorizationError::Invalid(_)), "{error:?}");
}
