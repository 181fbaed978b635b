//! The authorization request (RFC 6749 §4.1) with PKCE (RFC 7636, S256).

use crate::endpoint::{EndpointError, ResolvedIntegration};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tokenvisor_core::SecretString;
use url::Url;

/// A PKCE verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The verifier (secret: 64 characters, sent only with the code exchange).
    pub verifier: SecretString,
    /// BASE64URL(SHA256(verifier)), sent with the authorization request.
    pub challenge: String,
}

impl Pkce {
    /// A fresh random verifier (48 random bytes, 64 characters) and its challenge.
    pub fn generate() -> Self {
        let bytes: [u8; 48] = rand::random();
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = challenge_of(&verifier);
        Self {
            verifier: SecretString::new(verifier),
            challenge,
        }
    }
}

/// The S256 challenge of a verifier.
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A random `state` value (32 random bytes, URL-safe).
pub fn random_state() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The URL the tenant is sent to: client id, redirect URI, scopes (with the profile's
/// separator), `state`, the PKCE challenge when given, and the profile's extra
/// parameters (Zoho `access_type=offline&prompt=consent`, Atlassian `audience`).
pub fn authorize_url(
    integration: &ResolvedIntegration,
    redirect_uri: &str,
    state: &str,
    pkce_challenge: Option<&str>,
) -> Result<Url, EndpointError> {
    let mut url = integration.authorize_endpoint()?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &integration.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &integration.scopes.join(integration.profile.scope_separator))
            .append_pair("state", state);
        if let Some(challenge) = pkce_challenge {
            query
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
        }
        for (key, value) in integration.profile.authorize_params {
            query.append_pair(key, value);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s256_challenge_is_unpadded_base64url_of_sha256() {
        // Expected value computed independently (Python hashlib + base64.urlsafe_b64encode).
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mJ92K9Zr0guI9dtW1lGAZjjLbwRyhx"),
            "zgm08CiiLQnFqQfk_DoHIw1hhowGjC8V7IC4ii2oEKw"
        );
    }

    #[test]
    fn verifiers_are_within_the_allowed_length_and_random() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        assert!((43..=128).contains(&a.verifier.expose().len()));
        assert_ne!(a.verifier, b.verifier);
        assert_eq!(a.challenge, challenge_of(a.verifier.expose()));
    }
}
