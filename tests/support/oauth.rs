//! Following an authorization URL as a tenant's browser would: the fake auto-approves and
//! redirects to the callback, whose query becomes an [`AuthorizationCallback`].

use tokenvisor_core::SecretString;
use tokenvisor_supervisor::AuthorizationCallback;

/// GETs the authorize URL without following redirects and parses the redirect's query.
pub async fn follow(authorize_url: &str) -> AuthorizationCallback {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client.get(authorize_url).send().await.expect("authorize request");
    assert!(
        response.status().is_redirection(),
        "the fake did not redirect: {}",
        response.status()
    );
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .expect("location")
        .to_str()
        .expect("ascii");
    callback_from(location)
}

/// The callback parameters of a redirect URL.
pub fn callback_from(redirect: &str) -> AuthorizationCallback {
    let url = url::Url::parse(redirect).expect("redirect URL");
    let mut callback = AuthorizationCallback::default();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "state" => callback.state = value.into_owned(),
            "code" => callback.code = Some(SecretString::new(value.as_ref())),
            "error" => callback.error = Some(value.into_owned()),
            "error_description" => callback.error_description = Some(value.into_owned()),
            "accounts-server" => callback.accounts_server = Some(value.into_owned()),
            "location" => callback.location = Some(value.into_owned()),
            _ => {}
        }
    }
    callback
}
