//! HTTP tests of the Zoho and Atlassian dialects and of the authorization-code flow,
//! through a real client against a started fake.

mod atlassian;
mod authorize;
mod zoho;

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Dialect, FakeConfig, FakeProvider};

/// The redirect URI the tests authorize with.
const REDIRECT_URI: &str = "https://app.example/callback";

async fn start(dialect: Dialect) -> FakeProvider {
    FakeProvider::start(FakeConfig {
        dialect,
        ..FakeConfig::default()
    })
    .await
    .expect("the fake starts")
}

/// A client that does not follow redirects.
/// reqwest is built without a bundled TLS crypto provider in this workspace (the
/// workspace enables `rustls-no-provider`): install ring, as tokenvisor does.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// Status and JSON body of an answer.
async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// `GET url` with `Authorization: {authorization}`.
async fn get_with(url: &str, authorization: &str) -> reqwest::Response {
    client()
        .get(url)
        .header("authorization", authorization)
        .send()
        .await
        .expect("the fake answers")
}

/// `GET authorize_url` with `params`; must answer a redirect, whose query is returned.
async fn authorize(authorize_url: &str, params: &[(&str, &str)]) -> HashMap<String, String> {
    let response = client()
        .get(with_query(authorize_url, params))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(response.status(), 302, "{:?}", response.text().await);
    let location = response.headers()["location"].to_str().expect("an ASCII location");
    let url = reqwest::Url::parse(location).expect("an absolute location");
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    url.query_pairs().into_owned().collect()
}

/// The usual authorization request parameters for `fake`, plus `extra`.
fn authorization_params<'a>(fake: &'a FakeProvider, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", fake.client_id()),
        ("redirect_uri", REDIRECT_URI),
        ("state", "st-123"),
    ];
    params.extend_from_slice(extra);
    params
}

/// A form `POST` to `url` with `params` and the fake's client credentials.
async fn post_form(fake: &FakeProvider, url: &str, params: &[(&str, &str)]) -> reqwest::Response {
    let mut form = vec![("client_id", fake.client_id()), ("client_secret", fake.client_secret())];
    form.extend_from_slice(params);
    client().post(url).form(&form).send().await.expect("the fake answers")
}

/// A PKCE `(verifier, S256 challenge)` pair.
fn pkce_pair() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-verifier".to_owned();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A string field of a JSON answer.
fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
        .to_owned()
}

/// `url` with `pairs` as its query string.
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{url}?{query}")
}
