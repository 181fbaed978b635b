//! The Zoho dialect: 200-with-error answers, data centres, throttling, the active access
//! token cap, revocation and the CRM API's header scheme.

use std::time::Duration;

use super::{client, get_with, json_of, post_form, start, text, with_query};
use crate::config::{ZOHO_MAX_ACTIVE_ACCESS_TOKENS, ZOHO_REFRESHES_PER_WINDOW, ZOHO_THROTTLE_WINDOW};
use crate::{Dialect, FakeProvider};

/// A refresh at the token endpoint of data centre `dc`: status and body.
async fn refresh_at(fake: &FakeProvider, dc: &str, refresh_token: &str) -> (u16, serde_json::Value) {
    let url = format!("{}/oauth/v2/token", fake.zoho_accounts_server(dc));
    let response = post_form(
        fake,
        &url,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)],
    )
    .await;
    json_of(response).await
}

/// A successful refresh at `dc`: the new access token.
async fn refreshed_at(fake: &FakeProvider, dc: &str, refresh_token: &str) -> String {
    let (status, body) = refresh_at(fake, dc, refresh_token).await;
    assert_eq!(status, 200);
    text(&body, "access_token")
}

/// `GET` of the CRM API with `Authorization: Zoho-oauthtoken {access_token}`.
async fn crm_status(fake: &FakeProvider, access_token: &str) -> u16 {
    get_with(&fake.zoho_api_url(), &format!("Zoho-oauthtoken {access_token}"))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn refresh_answers_omit_the_refresh_token_and_carry_the_api_domain() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant("acme");
    let (status, body) = refresh_at(&fake, "us", &grant.refresh_token).await;
    assert_eq!(status, 200);
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["api_domain"], "https://www.zohoapis.com");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(crm_status(&fake, &text(&body, "access_token")).await, 200);
    assert_eq!(fake.refreshes_at_data_center("us"), 1);
    assert_eq!(fake.refreshes(), 1);

    // token_url() names the US token endpoint; /oauth/token does not exist for Zoho.
    assert_eq!(fake.token_url(), format!("{}/zoho/us/oauth/v2/token", fake.base_url()));
    let generic = client()
        .post(format!("{}/oauth/token", fake.base_url()))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(generic.status(), 404);
    let unknown_dc = post_form(
        &fake,
        &format!("{}/oauth/v2/token", fake.zoho_accounts_server("xx")),
        &[],
    )
    .await;
    assert_eq!(unknown_dc.status(), 404);
}

#[tokio::test]
async fn parameters_in_the_query_string_work_as_zoho_documents_them() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant("acme");
    let url = with_query(
        &fake.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", grant.refresh_token.as_str()),
            ("client_id", fake.client_id()),
            ("client_secret", fake.client_secret()),
        ],
    );
    let response = client().post(url).send().await.expect("the fake answers");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "{body}");
}

#[tokio::test]
async fn api_domain_follows_the_data_center_of_the_grant() {
    let fake = start(Dialect::Zoho).await;
    let expected = [
        ("us", "https://www.zohoapis.com"),
        ("eu", "https://www.zohoapis.eu"),
        ("in", "https://www.zohoapis.in"),
        ("au", "https://www.zohoapis.com.au"),
        ("jp", "https://www.zohoapis.jp"),
        ("ca", "https://www.zohoapis.ca"),
        ("sa", "https://www.zohoapis.sa"),
        ("uk", "https://www.zohoapis.uk"),
        ("cn", "https://www.zohoapis.com.cn"),
    ];
    for (dc, api_domain) in expected {
        let grant = fake.issue_grant_in(&format!("tenant-{dc}"), dc);
        let (status, body) = refresh_at(&fake, dc, &grant.refresh_token).await;
        assert_eq!(status, 200, "{dc}: {body}");
        assert_eq!(body["api_domain"], api_domain, "{dc}");
        assert_eq!(fake.refreshes_at_data_center(dc), 1, "{dc}");
    }
    assert_eq!(fake.refreshes(), 9);
}

#[tokio::test]
async fn errors_are_http_200_with_a_json_error() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant("acme");

    let (status, body) = refresh_at(&fake, "us", "rt_unknown").await;
    assert_eq!((status, body), (200, serde_json::json!({"error": "invalid_code"})));

    let wrong_client = client()
        .post(fake.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", grant.refresh_token.as_str()),
            ("client_id", fake.client_id()),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(
        json_of(wrong_client).await,
        (200, serde_json::json!({"error": "invalid_client"}))
    );

    // Zoho's revocation endpoint takes the token in the query string.
    let revoked = client()
        .post(with_query(
            &fake.revoke_url(),
            &[("token", grant.refresh_token.as_str())],
        ))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(json_of(revoked).await, (200, serde_json::json!({"status": "success"})));
    assert_eq!(fake.revocation_requests(), 1);
    assert_eq!(fake.family_revocations(), 1);
    let (status, body) = refresh_at(&fake, "us", &grant.refresh_token).await;
    assert_eq!((status, body), (200, serde_json::json!({"error": "invalid_code"})));
    assert_eq!(crm_status(&fake, &grant.access_token).await, 401);
    assert_eq!(fake.refreshes(), 0);
    assert_eq!(fake.token_requests(), 3);
}

#[tokio::test]
async fn a_refresh_at_another_data_center_is_invalid_code() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant_in("acme", "eu");
    let (status, body) = refresh_at(&fake, "us", &grant.refresh_token).await;
    assert_eq!((status, body), (200, serde_json::json!({"error": "invalid_code"})));
    assert_eq!(fake.refreshes_at_data_center("us"), 0);

    // The US revocation endpoint does not know an EU token either.
    let elsewhere = client()
        .post(with_query(
            &fake.revoke_url(),
            &[("token", grant.refresh_token.as_str())],
        ))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(elsewhere.status(), 200);
    assert_eq!(fake.family_revocations(), 0);

    let (status, body) = refresh_at(&fake, "eu", &grant.refresh_token).await;
    assert_eq!(status, 200);
    assert_eq!(body["api_domain"], "https://www.zohoapis.eu");
    assert_eq!(fake.refreshes_at_data_center("eu"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_eleventh_refresh_in_ten_minutes_is_denied_until_the_window_slides_on() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant("acme");
    let other = fake.issue_grant("other");
    let started = tokio::time::Instant::now();
    for _ in 0..ZOHO_REFRESHES_PER_WINDOW {
        refreshed_at(&fake, "us", &grant.refresh_token).await;
    }
    let throttled = serde_json::json!({
        "error": "Access Denied",
        "error_description": "You have made too many requests continuously. Please try again after some time.",
    });
    assert_eq!(
        refresh_at(&fake, "us", &grant.refresh_token).await,
        (200, throttled.clone())
    );
    assert_eq!(fake.throttled_requests(), 1);
    assert_eq!(fake.refreshes_for("acme"), 10);
    // The limit is per refresh token.
    refreshed_at(&fake, "us", &other.refresh_token).await;

    // A sliding window: still closed one second before the first refresh leaves it.
    tokio::time::sleep_until(started + ZOHO_THROTTLE_WINDOW - Duration::from_secs(1)).await;
    assert_eq!(refresh_at(&fake, "us", &grant.refresh_token).await, (200, throttled));
    assert_eq!(fake.throttled_requests(), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    refreshed_at(&fake, "us", &grant.refresh_token).await;
    assert_eq!(fake.refreshes_for("acme"), 11);
}

#[tokio::test(start_paused = true)]
async fn the_sixteenth_active_access_token_evicts_the_oldest() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant("acme");
    let mut access_tokens = vec![grant.access_token.clone()];
    for _ in 0..ZOHO_REFRESHES_PER_WINDOW {
        access_tokens.push(refreshed_at(&fake, "us", &grant.refresh_token).await);
    }
    tokio::time::sleep(ZOHO_THROTTLE_WINDOW).await;
    while access_tokens.len() < ZOHO_MAX_ACTIVE_ACCESS_TOKENS {
        access_tokens.push(refreshed_at(&fake, "us", &grant.refresh_token).await);
    }
    for access_token in &access_tokens {
        assert_eq!(crm_status(&fake, access_token).await, 200);
    }

    let sixteenth = refreshed_at(&fake, "us", &grant.refresh_token).await;
    assert_eq!(crm_status(&fake, &sixteenth).await, 200);
    assert_eq!(crm_status(&fake, &access_tokens[0]).await, 401, "the oldest is evicted");
    assert!(!fake.is_access_token_live(&access_tokens[0]));
    assert_eq!(crm_status(&fake, &access_tokens[1]).await, 200);
}

#[tokio::test]
async fn the_crm_api_wants_the_zoho_oauthtoken_scheme() {
    let fake = start(Dialect::Zoho).await;
    let grant = fake.issue_grant("acme");
    let response = get_with(&fake.zoho_api_url(), &format!("Zoho-oauthtoken {}", grant.access_token)).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["users"][0]["id"], "acme");

    let invalid =
        |body: &serde_json::Value| body["code"] == "INVALID_TOKEN" && body["message"] == "invalid oauth token";
    let bearer = get_with(&fake.zoho_api_url(), &format!("Bearer {}", grant.access_token)).await;
    let (status, body) = json_of(bearer).await;
    assert!(status == 401 && invalid(&body), "{status} {body}");
    let unknown = get_with(&fake.zoho_api_url(), "Zoho-oauthtoken at_unknown").await;
    let (status, body) = json_of(unknown).await;
    assert!(status == 401 && invalid(&body), "{status} {body}");
    let missing = client()
        .get(fake.zoho_api_url())
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(missing.status(), 401);
}
