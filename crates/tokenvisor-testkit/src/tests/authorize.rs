//! The authorization-code flow: redirects with code and state, PKCE, single-use and
//! expiring codes, denial, and Zoho's data-centre redirect.

use std::time::Duration;

use serde_json::json;

use super::{
    REDIRECT_URI, authorization_params, authorize, client, get_with, json_of, pkce_pair, post_form, start, text,
    with_query,
};
use crate::config::AUTHORIZATION_CODE_LIFETIME;
use crate::{Dialect, FakeProvider};

/// A form code exchange at `token_url` with `extra` parameters.
async fn exchange_at(
    fake: &FakeProvider,
    token_url: &str,
    code: &str,
    extra: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut params = vec![("grant_type", "authorization_code"), ("code", code)];
    params.extend_from_slice(extra);
    json_of(post_form(fake, token_url, &params).await).await
}

async fn exchange(fake: &FakeProvider, code: &str, extra: &[(&str, &str)]) -> (u16, serde_json::Value) {
    exchange_at(fake, &fake.token_url(), code, extra).await
}

#[tokio::test]
async fn authorization_redirects_with_a_single_use_code_and_the_state() {
    let fake = start(Dialect::Generic).await;
    assert_eq!(fake.authorize_url(), format!("{}/oauth/authorize", fake.base_url()));
    fake.set_authorizing_user("alice", "ignored-outside-zoho");
    let redirect = authorize(
        &fake.authorize_url(),
        &authorization_params(&fake, &[("scope", "read profile")]),
    )
    .await;
    assert_eq!(redirect["state"], "st-123");
    let code = redirect["code"].clone();

    let (status, body) = exchange(&fake, &code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read profile");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(fake.current_refresh_token("alice"), Some(text(&body, "refresh_token")));
    let whoami = get_with(&fake.api_url(), &format!("Bearer {}", text(&body, "access_token"))).await;
    assert_eq!(json_of(whoami).await, (200, json!({"family": "alice"})));
    assert_eq!(fake.code_exchanges(), 1);

    let (status, body) = exchange(&fake, &code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));
    assert_eq!(fake.code_exchanges(), 1);
}

#[tokio::test]
async fn a_redirect_uri_with_a_query_keeps_it_and_must_be_repeated_exactly() {
    let fake = start(Dialect::Generic).await;
    let redirect_uri = format!("{REDIRECT_URI}?tenant=a");
    let response = client()
        .get(with_query(
            &fake.authorize_url(),
            &[
                ("response_type", "code"),
                ("client_id", fake.client_id()),
                ("redirect_uri", redirect_uri.as_str()),
            ],
        ))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().expect("ASCII").to_owned();
    assert!(location.starts_with(&format!("{redirect_uri}&code=")), "{location}");
    assert!(!location.contains("state="), "{location}");
    let code = location.rsplit("code=").next().expect("a code");

    let (status, _) = exchange(&fake, code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!(status, 400, "another redirect_uri fails (and burns the code)");
    let (status, _) = exchange(&fake, code, &[("redirect_uri", redirect_uri.as_str())]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn pkce_verifiers_are_checked_against_the_s256_challenge() {
    let fake = start(Dialect::Generic).await;
    let (verifier, challenge) = pkce_pair();
    let params = authorization_params(
        &fake,
        &[
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    );

    let code = authorize(&fake.authorize_url(), &params).await["code"].clone();
    let wrong = "x".repeat(64);
    let (status, body) = exchange(
        &fake,
        &code,
        &[("redirect_uri", REDIRECT_URI), ("code_verifier", wrong.as_str())],
    )
    .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));

    let code = authorize(&fake.authorize_url(), &params).await["code"].clone();
    let (status, _) = exchange(&fake, &code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!(status, 400, "a missing verifier fails");

    let code = authorize(&fake.authorize_url(), &params).await["code"].clone();
    let (status, body) = exchange(
        &fake,
        &code,
        &[("redirect_uri", REDIRECT_URI), ("code_verifier", verifier.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.code_exchanges(), 1);

    let unknown_method = authorize(
        &fake.authorize_url(),
        &authorization_params(&fake, &[("code_challenge", "abc"), ("code_challenge_method", "S512")]),
    )
    .await;
    assert_eq!(unknown_method["error"], "invalid_request");
}

#[tokio::test(start_paused = true)]
async fn codes_expire_after_sixty_seconds() {
    let fake = start(Dialect::Generic).await;
    let first = authorize(&fake.authorize_url(), &authorization_params(&fake, &[])).await["code"].clone();
    let second = authorize(&fake.authorize_url(), &authorization_params(&fake, &[])).await["code"].clone();
    tokio::time::sleep(AUTHORIZATION_CODE_LIFETIME - Duration::from_secs(1)).await;
    let (status, _) = exchange(&fake, &first, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = exchange(&fake, &second, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));
}

#[tokio::test]
async fn unknown_clients_and_bad_redirect_uris_get_a_page_not_a_redirect() {
    let fake = start(Dialect::Generic).await;
    let cases = [
        vec![
            ("response_type", "code"),
            ("client_id", "someone-else"),
            ("redirect_uri", REDIRECT_URI),
        ],
        vec![("response_type", "code"), ("client_id", fake.client_id())],
        vec![
            ("response_type", "code"),
            ("client_id", fake.client_id()),
            ("redirect_uri", "/relative"),
        ],
    ];
    for params in cases {
        let response = client()
            .get(with_query(&fake.authorize_url(), &params))
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(response.status(), 400, "{params:?}");
        assert!(response.headers().get("location").is_none());
    }
    let token = authorize(
        &fake.authorize_url(),
        &[
            ("response_type", "token"),
            ("client_id", fake.client_id()),
            ("redirect_uri", REDIRECT_URI),
        ],
    )
    .await;
    assert_eq!(token["error"], "unsupported_response_type");
}

#[tokio::test]
async fn deny_next_authorization_redirects_with_access_denied_once() {
    let fake = start(Dialect::Rotating {
        grace: Duration::from_secs(10),
    })
    .await;
    fake.deny_next_authorization();
    let denied = authorize(&fake.authorize_url(), &authorization_params(&fake, &[])).await;
    assert_eq!(denied["error"], "access_denied");
    assert_eq!(denied["state"], "st-123");
    assert!(!denied.contains_key("code"));
    let approved = authorize(&fake.authorize_url(), &authorization_params(&fake, &[])).await;
    assert!(approved.contains_key("code") && !approved.contains_key("error"));
}

#[tokio::test]
async fn zoho_redirects_name_the_users_data_center_and_only_it_exchanges_the_code() {
    let fake = start(Dialect::Zoho).await;
    assert_eq!(
        fake.authorize_url(),
        format!("{}/zoho/us/oauth/v2/auth", fake.base_url())
    );
    fake.set_authorizing_user("acme", "eu");
    let redirect = authorize(
        &fake.authorize_url(),
        &authorization_params(
            &fake,
            &[
                ("scope", "ZohoCRM.users.READ,ZohoCRM.modules.ALL"),
                ("access_type", "offline"),
            ],
        ),
    )
    .await;
    assert_eq!(redirect["state"], "st-123");
    assert_eq!(redirect["location"], "eu");
    assert_eq!(redirect["accounts-server"], fake.zoho_accounts_server("eu"));
    let code = redirect["code"].clone();

    let us = fake.token_url();
    let (status, body) = exchange_at(&fake, &us, &code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!((status, body), (200, json!({"error": "invalid_code"})));

    let eu = format!("{}/oauth/v2/token", redirect["accounts-server"]);
    let (status, body) = exchange_at(&fake, &eu, &code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["api_domain"], "https://www.zohoapis.eu");
    assert_eq!(body["scope"], "ZohoCRM.users.READ,ZohoCRM.modules.ALL");
    let refresh_token = text(&body, "refresh_token");
    assert_eq!(fake.code_exchanges(), 1);

    let refreshed = post_form(
        &fake,
        &eu,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ],
    )
    .await;
    let (status, body) = json_of(refreshed).await;
    assert_eq!(status, 200);
    assert!(body.get("refresh_token").is_none());
    assert_eq!(fake.refreshes_at_data_center("eu"), 1);

    let (status, body) = exchange_at(&fake, &eu, &code, &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!((status, body), (200, json!({"error": "invalid_code"})));
}

#[tokio::test]
async fn zoho_issues_a_refresh_token_only_offline_and_on_first_consent_or_prompt_consent() {
    let fake = start(Dialect::Zoho).await;
    let exchange_once = |extra: &'static [(&'static str, &'static str)]| {
        let fake = fake.clone();
        async move {
            let redirect = authorize(&fake.authorize_url(), &authorization_params(&fake, extra)).await;
            let (status, body) = exchange(&fake, &redirect["code"], &[("redirect_uri", REDIRECT_URI)]).await;
            assert_eq!(status, 200);
            assert!(body["access_token"].is_string(), "{body}");
            body.get("refresh_token").is_some()
        }
    };
    assert!(!exchange_once(&[]).await, "online access has no refresh token");
    assert!(
        exchange_once(&[("access_type", "offline")]).await,
        "first offline consent"
    );
    assert!(
        !exchange_once(&[("access_type", "offline")]).await,
        "consent already given"
    );
    assert!(exchange_once(&[("access_type", "offline"), ("prompt", "consent")]).await);

    let (status, body) = exchange(&fake, "code_unknown", &[("redirect_uri", REDIRECT_URI)]).await;
    assert_eq!((status, body), (200, json!({"error": "invalid_code"})));
}

#[tokio::test]
async fn zoho_china_users_authorize_only_in_china() {
    let fake = start(Dialect::Zoho).await;
    fake.set_authorizing_user("acme-cn", "cn");
    let params = authorization_params(&fake, &[("access_type", "offline")]);
    let elsewhere = client()
        .get(with_query(&fake.authorize_url(), &params))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(elsewhere.status(), 400);
    let china = format!("{}/oauth/v2/auth", fake.zoho_accounts_server("cn"));
    let redirect = authorize(&china, &params).await;
    assert_eq!(redirect["location"], "cn");

    fake.set_authorizing_user("acme", "us");
    let foreign = client()
        .get(with_query(&china, &params))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(foreign.status(), 400);
}
