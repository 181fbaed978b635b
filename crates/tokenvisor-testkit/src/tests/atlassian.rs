//! The Atlassian dialect: JSON-only token endpoint, rotation with grace, family revocation,
//! old access tokens revoked at the end of grace, accessible resources and the gateway.

use std::time::Duration;

use serde_json::{Value, json};

use super::{REDIRECT_URI, authorization_params, authorize, client, get_with, json_of, start, text};
use crate::config::ATLASSIAN_INACTIVITY_EXPIRY;
use crate::{Dialect, FakeProvider};

const GRACE: Duration = Duration::from_secs(600);

async fn start_atlassian() -> FakeProvider {
    start(Dialect::Atlassian { grace: GRACE }).await
}

/// A JSON `POST` to the token endpoint with `fields` and the client credentials.
async fn token_json(fake: &FakeProvider, fields: Value) -> (u16, Value) {
    let mut body = json!({"client_id": fake.client_id(), "client_secret": fake.client_secret()});
    if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
        body.extend(fields);
    }
    let response = client()
        .post(fake.token_url())
        .json(&body)
        .send()
        .await
        .expect("the fake answers");
    json_of(response).await
}

async fn refresh(fake: &FakeProvider, refresh_token: &str) -> (u16, Value) {
    token_json(
        fake,
        json!({"grant_type": "refresh_token", "refresh_token": refresh_token}),
    )
    .await
}

async fn refresh_ok(fake: &FakeProvider, refresh_token: &str) -> Value {
    let (status, body) = refresh(fake, refresh_token).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn invalid_grant() -> (u16, Value) {
    (
        403,
        json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}),
    )
}

async fn gateway_status(fake: &FakeProvider, access_token: &str) -> u16 {
    get_with(&fake.jira_myself_url(), &format!("Bearer {access_token}"))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_token_endpoint_reads_json_bodies_only() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    let form = client()
        .post(fake.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", grant.refresh_token.as_str()),
            ("client_id", fake.client_id()),
            ("client_secret", fake.client_secret()),
        ])
        .send()
        .await
        .expect("the fake answers");
    let (status, body) = json_of(form).await;
    assert_eq!(status, 415);
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(fake.refreshes(), 0);

    let body = refresh_ok(&fake, &grant.refresh_token).await;
    assert_ne!(text(&body, "refresh_token"), grant.refresh_token);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("api_domain").is_none());
    assert_eq!(fake.refreshes(), 1);
}

#[tokio::test]
async fn rotation_allows_the_previous_token_within_grace_and_older_reuse_revokes_the_family() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    let first = refresh_ok(&fake, &grant.refresh_token).await;
    let second_refresh = text(&first, "refresh_token");

    let retry = refresh_ok(&fake, &grant.refresh_token).await;
    assert_eq!(text(&retry, "refresh_token"), second_refresh);
    assert_ne!(text(&retry, "access_token"), text(&first, "access_token"));
    assert_eq!(fake.reuse_events(), 1);
    assert_eq!(fake.family_revocations(), 0);

    let rotated = refresh_ok(&fake, &second_refresh).await;
    let third_refresh = text(&rotated, "refresh_token");
    assert_eq!(refresh(&fake, &grant.refresh_token).await, invalid_grant());
    assert_eq!(fake.reuse_events(), 2);
    assert_eq!(fake.family_revocations(), 1);
    assert_eq!(refresh(&fake, &third_refresh).await, invalid_grant());
    assert_eq!(gateway_status(&fake, &text(&rotated, "access_token")).await, 401);
}

#[tokio::test(start_paused = true)]
async fn reuse_after_grace_revokes_the_family_and_the_error_dialect_can_switch() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    let first = refresh_ok(&fake, &grant.refresh_token).await;
    let current = text(&first, "refresh_token");
    tokio::time::sleep(GRACE + Duration::from_secs(1)).await;
    assert_eq!(refresh(&fake, &grant.refresh_token).await, invalid_grant());
    assert_eq!(fake.family_revocations(), 1);
    assert_eq!(refresh(&fake, &current).await, invalid_grant());
    assert_eq!(fake.current_refresh_token("acme"), None);

    fake.set_atlassian_unauthorized_client(true);
    assert_eq!(
        refresh(&fake, &current).await,
        (
            403,
            json!({"error": "unauthorized_client", "error_description": "refresh_token is invalid"})
        )
    );
    fake.set_atlassian_unauthorized_client(false);
    assert_eq!(refresh(&fake, "rt_unknown").await, invalid_grant());
}

#[tokio::test(start_paused = true)]
async fn the_old_access_token_is_revoked_when_the_grace_period_ends() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    let first = refresh_ok(&fake, &grant.refresh_token).await;
    let new_access = text(&first, "access_token");
    assert_eq!(gateway_status(&fake, &grant.access_token).await, 200);

    tokio::time::sleep(GRACE - Duration::from_secs(1)).await;
    assert_eq!(gateway_status(&fake, &grant.access_token).await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gateway_status(&fake, &grant.access_token).await, 401);
    assert!(!fake.is_access_token_live(&grant.access_token));
    assert_eq!(gateway_status(&fake, &new_access).await, 200);
    assert_eq!(fake.family_revocations(), 0);
}

#[tokio::test(start_paused = true)]
async fn refresh_tokens_die_after_ninety_days_without_use() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    tokio::time::sleep(ATLASSIAN_INACTIVITY_EXPIRY - Duration::from_secs(1)).await;
    let body = refresh_ok(&fake, &grant.refresh_token).await;
    let current = text(&body, "refresh_token");
    tokio::time::sleep(ATLASSIAN_INACTIVITY_EXPIRY).await;
    assert_eq!(refresh(&fake, &current).await, invalid_grant());
}

#[tokio::test]
async fn an_answer_may_omit_the_refresh_token_and_the_old_one_stays_current() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    fake.omit_refresh_token_in_next_answers(1);
    let body = refresh_ok(&fake, &grant.refresh_token).await;
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(fake.current_refresh_token("acme"), Some(grant.refresh_token.clone()));
    let body = refresh_ok(&fake, &grant.refresh_token).await;
    assert_ne!(text(&body, "refresh_token"), grant.refresh_token);
    assert_eq!(fake.reuse_events(), 0);
}

#[tokio::test]
async fn accessible_resources_name_the_cloud_id_of_live_tokens() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    let cloud_id = fake.cloud_id();
    assert_eq!(cloud_id.len(), 36);
    assert_eq!(cloud_id.matches('-').count(), 4);
    assert_eq!(fake.cloud_id(), cloud_id, "fixed per fake");

    let response = get_with(
        &fake.accessible_resources_url(),
        &format!("Bearer {}", grant.access_token),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    let site = &body[0];
    assert_eq!(site["id"], cloud_id.as_str());
    assert_eq!(site["url"], "https://acme.atlassian.net");
    assert!(site["name"].is_string() && site["avatarUrl"].is_string());
    let scopes = site["scopes"].as_array().expect("scopes");
    assert!(scopes.iter().any(|scope| scope == "read:jira-work"), "{scopes:?}");

    fake.revoke_family("acme");
    let dead = get_with(
        &fake.accessible_resources_url(),
        &format!("Bearer {}", grant.access_token),
    )
    .await;
    assert_eq!(dead.status(), 401);
}

#[tokio::test]
async fn the_gateway_answers_the_configured_status_for_dead_tokens() {
    let fake = start_atlassian().await;
    let grant = fake.issue_grant("acme");
    let response = get_with(&fake.jira_myself_url(), &format!("Bearer {}", grant.access_token)).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["displayName"], "acme");
    assert!(fake.jira_myself_url().contains(&fake.cloud_id()));

    let other_site = format!("{}/ex/jira/not-the-cloud-id/rest/api/3/myself", fake.base_url());
    assert_eq!(
        get_with(&other_site, &format!("Bearer {}", grant.access_token))
            .await
            .status(),
        404
    );

    assert_eq!(gateway_status(&fake, "at_unknown").await, 401);
    fake.set_gateway_expired_status(403);
    assert_eq!(gateway_status(&fake, "at_unknown").await, 403);
    fake.set_gateway_expired_status(404);
    assert_eq!(gateway_status(&fake, "at_unknown").await, 404);
    assert_eq!(gateway_status(&fake, &grant.access_token).await, 200);
}

#[tokio::test]
async fn a_code_exchange_answers_a_refresh_token_only_with_offline_access() {
    let fake = start_atlassian().await;
    assert_eq!(fake.authorize_url(), format!("{}/authorize", fake.base_url()));
    let exchange = |code: String| {
        let fake = fake.clone();
        async move {
            token_json(
                &fake,
                json!({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}),
            )
            .await
        }
    };

    let online = authorize(
        &fake.authorize_url(),
        &authorization_params(&fake, &[("audience", "api.atlassian.com"), ("scope", "read:jira-work")]),
    )
    .await;
    let (status, body) = exchange(online["code"].clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["scope"], "read:jira-work");
    assert_eq!(gateway_status(&fake, &text(&body, "access_token")).await, 200);
    assert_eq!(fake.current_refresh_token("user"), None);

    let offline = authorize(
        &fake.authorize_url(),
        &authorization_params(
            &fake,
            &[
                ("audience", "api.atlassian.com"),
                ("scope", "read:jira-work offline_access"),
                ("prompt", "consent"),
            ],
        ),
    )
    .await;
    let (status, body) = exchange(offline["code"].clone()).await;
    assert_eq!(status, 200, "{body}");
    let refresh_token = text(&body, "refresh_token");
    refresh_ok(&fake, &refresh_token).await;

    let reused = exchange(offline["code"].clone()).await;
    assert_eq!(reused.0, 403);
    assert_eq!(reused.1["error"], "invalid_grant");
    assert_eq!(fake.code_exchanges(), 2);

    let no_audience = authorize(&fake.authorize_url(), &authorization_params(&fake, &[])).await;
    assert_eq!(no_audience["error"], "invalid_request");
    assert_eq!(no_audience["state"], "st-123");
}
