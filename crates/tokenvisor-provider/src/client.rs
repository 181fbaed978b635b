//! The token endpoint client: the refresh grant (RFC 6749 §6) over reqwest.

use crate::endpoint::ResolvedIntegration;
use crate::error::{ProviderError, class_of_status, sanitize};
use crate::profile::{BodyFormat, ClientAuth, SuccessRule};
use std::time::Duration;
use tokenvisor_core::{FailureClass, SecretString, TokenSet, check_token};

/// Longest access token lifetime believed (366 days); a longer `expires_in` is clamped.
const MAX_LIFETIME_SECS: i64 = 366 * 24 * 3600;

/// Options of the token client.
#[derive(Debug, Clone)]
pub struct TokenClientOptions {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Largest answer body read (default 1 MiB). A larger answer is unusable: it is
    /// not parsed, so a token it carries is lost; keep this well above any sane answer.
    pub max_answer_bytes: usize,
}

impl Default for TokenClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_answer_bytes: 1024 * 1024,
        }
    }
}

/// Calls token endpoints. Cheap to clone (one shared connection pool). Never follows
/// redirects, never logs a request or answer body.
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    options: TokenClientOptions,
}

/// A refresh or exchange request's grant.
enum Grant<'a> {
    Refresh(&'a SecretString),
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
        verifier: Option<&'a SecretString>,
    },
}

/// One resource (Atlassian site) a token can reach.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct AccessibleResource {
    /// The cloud id.
    pub id: String,
    /// Site name.
    #[serde(default)]
    pub name: String,
    /// Site URL.
    #[serde(default)]
    pub url: String,
}

impl TokenClient {
    /// A client with these options. Its TLS uses the ring crypto provider passed
    /// explicitly (see [`crate::tls`]): nothing is installed process-wide.
    pub fn new(options: TokenClientOptions) -> Result<Self, ProviderError> {
        let http = crate::tls::http_client_builder()
            .map_err(|e| ProviderError::Config(format!("failed to set up TLS: {e}")))?
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .user_agent(concat!("tokenvisor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Config(format!("failed to build HTTP client: {e}")))?;
        Ok(Self { http, options })
    }

    /// The underlying HTTP client (for API calls made on behalf of connections).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Exchanges a refresh token for a new token set. An answer without
    /// `refresh_token` yields `refresh_token: None` (keep the stored one).
    pub async fn refresh(
        &self,
        integration: &ResolvedIntegration,
        metadata: &serde_json::Map<String, serde_json::Value>,
        refresh_token: &SecretString,
    ) -> Result<TokenSet, ProviderError> {
        self.token_request(integration, metadata, Grant::Refresh(refresh_token))
            .await
    }

    /// Exchanges an authorization code (with its PKCE verifier, when one was used) at the
    /// token endpoint for the connection's `metadata` (its accounts server).
    pub async fn exchange_code(
        &self,
        integration: &ResolvedIntegration,
        metadata: &serde_json::Map<String, serde_json::Value>,
        code: &SecretString,
        redirect_uri: &str,
        verifier: Option<&SecretString>,
    ) -> Result<TokenSet, ProviderError> {
        self.token_request(
            integration,
            metadata,
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                verifier,
            },
        )
        .await
    }

    /// Revokes a token at the provider (RFC 7009, or Zoho's query form). Unknown tokens
    /// count as revoked. Does nothing when the provider has no revocation endpoint.
    pub async fn revoke(
        &self,
        integration: &ResolvedIntegration,
        metadata: &serde_json::Map<String, serde_json::Value>,
        token: &SecretString,
    ) -> Result<(), ProviderError> {
        let Some(mut url) = integration.revoke_endpoint(metadata) else {
            return Ok(());
        };
        let request = match integration.profile.revoke_style {
            crate::profile::RevokeStyle::QueryParameter => {
                url.query_pairs_mut().append_pair("token", token.expose());
                self.http.post(url)
            }
            crate::profile::RevokeStyle::Rfc7009 => {
                let mut params = vec![("token", token.expose())];
                if integration.profile.client_auth == ClientAuth::Body {
                    params.push(("client_id", &integration.client_id));
                    params.push(("client_secret", integration.client_secret.expose()));
                }
                let request = self.http.post(url).form(&params);
                if integration.profile.client_auth == ClientAuth::Basic {
                    request.basic_auth(&integration.client_id, Some(integration.client_secret.expose()))
                } else {
                    request
                }
            }
        };
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(ProviderError::Answer {
            status,
            code: format!("http_{status}"),
            description: None,
            class: class_of_status(status),
            retry_after_secs: None,
        })
    }

    /// Lists the resources (Atlassian sites and their cloud ids) an access token reaches.
    pub async fn accessible_resources(
        &self,
        integration: &ResolvedIntegration,
        access_token: &SecretString,
    ) -> Result<Vec<AccessibleResource>, ProviderError> {
        let Some(url) = integration.accessible_resources_endpoint() else {
            return Ok(Vec::new());
        };
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(access_token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let body = read_capped(response, self.options.max_answer_bytes).await?;
        if !(200..300).contains(&status) {
            return Err(ProviderError::Answer {
                status,
                code: format!("http_{status}"),
                description: None,
                class: class_of_status(status),
                retry_after_secs: None,
            });
        }
        serde_json::from_slice(&body).map_err(|_| ProviderError::InvalidAnswer {
            status,
            reason: "accessible resources are not a list".into(),
        })
    }

    async fn token_request(
        &self,
        integration: &ResolvedIntegration,
        metadata: &serde_json::Map<String, serde_json::Value>,
        grant: Grant<'_>,
    ) -> Result<TokenSet, ProviderError> {
        let url = integration
            .token_url_for(metadata)
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        let profile = &integration.profile;
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(8);
        match grant {
            Grant::Refresh(refresh_token) => {
                params.push(("grant_type", "refresh_token"));
                params.push(("refresh_token", refresh_token.expose()));
            }
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                verifier,
            } => {
                params.push(("grant_type", "authorization_code"));
                params.push(("code", code.expose()));
                params.push(("redirect_uri", redirect_uri));
                if let Some(verifier) = verifier {
                    params.push(("code_verifier", verifier.expose()));
                }
            }
        }
        if profile.client_auth == ClientAuth::Body {
            params.push(("client_id", &integration.client_id));
            params.push(("client_secret", integration.client_secret.expose()));
        }
        for (key, value) in &integration.extra_params {
            params.push((key, value));
        }
        let mut request = self.http.post(url).header(reqwest::header::ACCEPT, "application/json");
        if profile.client_auth == ClientAuth::Basic {
            request = request.basic_auth(&integration.client_id, Some(integration.client_secret.expose()));
        }
        request = match profile.body_format {
            BodyFormat::Form => request.form(&params),
            BodyFormat::Json => {
                let body: serde_json::Map<String, serde_json::Value> = params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                    .collect();
                request.json(&body)
            }
        };
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let retry_after_secs = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_capped(response, self.options.max_answer_bytes).await?;
        interpret_answer(integration, status, &body, retry_after_secs)
    }
}

fn transport_error(error: reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        return ProviderError::Timeout;
    }
    // reqwest errors name the URL, which holds no secret (tokens travel in bodies).
    ProviderError::Network(sanitize(&error.without_url().to_string()))
}

async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, ProviderError> {
    let status = response.status().as_u16();
    if response
        .content_length()
        .is_some_and(|len| usize::try_from(len).map_or(true, |len| len > max))
    {
        return Err(ProviderError::InvalidAnswer {
            status,
            reason: format!("answer larger than {max} bytes"),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > max {
            return Err(ProviderError::InvalidAnswer {
                status,
                reason: format!("answer larger than {max} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` as delta-seconds or an HTTP date, capped at a day.
fn parse_retry_after(value: &str) -> Option<u64> {
    let seconds = match value.trim().parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) => {
            let date = httpdate::parse_http_date(value.trim()).ok()?;
            date.duration_since(std::time::SystemTime::now())
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }
    };
    Some(seconds.min(24 * 3600))
}

/// Turns a token endpoint answer into a token set or a classified error.
fn interpret_answer(
    integration: &ResolvedIntegration,
    status: u16,
    body: &[u8],
    retry_after_secs: Option<u64>,
) -> Result<TokenSet, ProviderError> {
    let profile = &integration.profile;
    let json: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(body).ok();
    let has_access_token = json
        .as_ref()
        .is_some_and(|j| j.get("access_token").is_some_and(|v| v.is_string()));
    let success = match profile.success_rule {
        SuccessRule::HttpStatus => (200..300).contains(&status) && has_access_token,
        SuccessRule::HasAccessToken => has_access_token,
    };
    if !success {
        let error = error_answer(integration, status, json.as_ref(), retry_after_secs);
        // A 2xx answer without an access token (nor an error code) may still carry a
        // rotated refresh token: hand it back rather than lose it.
        let salvaged = match (&error, json.as_ref()) {
            (ProviderError::InvalidAnswer { .. }, Some(json)) => refresh_token_of(status, json).ok().flatten(),
            _ => None,
        };
        return Err(match salvaged {
            Some(refresh_token) => ProviderError::AccessTokenRefused {
                status,
                reason: "no access_token in the answer".into(),
                refresh_token: Some(refresh_token),
            },
            None => error,
        });
    }
    let Some(json) = json else {
        return Err(ProviderError::InvalidAnswer {
            status,
            reason: "not a JSON object".into(),
        });
    };
    parse_token_set(integration, status, &json)
}

fn error_answer(
    integration: &ResolvedIntegration,
    status: u16,
    json: Option<&serde_json::Map<String, serde_json::Value>>,
    retry_after_secs: Option<u64>,
) -> ProviderError {
    let code = json.and_then(|j| j.get("error")).and_then(|v| v.as_str()).map(sanitize);
    let description = json
        .and_then(|j| j.get("error_description"))
        .and_then(|v| v.as_str())
        .map(sanitize);
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        if (200..300).contains(&status) {
            return ProviderError::InvalidAnswer {
                status,
                reason: "no access_token in the answer".into(),
            };
        }
        return ProviderError::Answer {
            status,
            code: format!("http_{status}"),
            description: None,
            class: class_of_status(status),
            retry_after_secs,
        };
    };
    // A throttling status wins over whatever code came with it; a 5xx is transient.
    let class = match status {
        429 => FailureClass::RateLimited,
        500..=599 => FailureClass::Transient,
        _ => integration
            .profile
            .classify_error_code(&code)
            .unwrap_or(class_of_status(status)),
    };
    ProviderError::Answer {
        status,
        code,
        description,
        class,
        retry_after_secs,
    }
}

/// Reads a successful answer. The provider has acted on the request by now (a rotating
/// provider has already retired the refresh token presented), so whatever can be kept
/// is kept:
/// - an `expires_in` that is not positive or not a number means the profile's default
///   lifetime; one above 366 days is clamped to 366 days;
/// - an access token failing [`check_token`] is refused with
///   [`ProviderError::AccessTokenRefused`], which carries the answer's refresh token
///   when it had a usable one;
/// - a refresh token failing [`check_token`] (or not a string) makes the whole answer
///   an [`ProviderError::InvalidAnswer`]: it cannot be stored, and nothing of an answer
///   is used without it.
fn parse_token_set(
    integration: &ResolvedIntegration,
    status: u16,
    json: &serde_json::Map<String, serde_json::Value>,
) -> Result<TokenSet, ProviderError> {
    let refresh_token = refresh_token_of(status, json)?;
    let access_token = json.get("access_token").and_then(|v| v.as_str()).unwrap_or_default();
    if let Err(refused) = check_token("access token", access_token) {
        return Err(ProviderError::AccessTokenRefused {
            status,
            reason: refused.to_string(),
            refresh_token,
        });
    }
    // Zoho's legacy `expires_in_sec` means `expires_in` was in milliseconds.
    let expires_in = number_field(json, "expires_in_sec").or_else(|| number_field(json, "expires_in"));
    let default_lifetime = integration.profile.default_lifetime;
    let expires_in = match expires_in {
        None => default_lifetime,
        Some(seconds) if seconds <= 0 => {
            tracing::warn!(
                integration = %integration.integration_id,
                expires_in = seconds,
                default_lifetime_secs = default_lifetime.as_secs(),
                "token answer's expires_in is not positive; assuming the default lifetime"
            );
            default_lifetime
        }
        Some(seconds) if seconds > MAX_LIFETIME_SECS => {
            tracing::warn!(
                integration = %integration.integration_id,
                expires_in = seconds,
                "token answer's expires_in is above 366 days; clamped to 366 days"
            );
            std::time::Duration::from_secs(MAX_LIFETIME_SECS.unsigned_abs())
        }
        Some(seconds) => std::time::Duration::from_secs(seconds.unsigned_abs()),
    };
    let token_type = json.get("token_type").and_then(|v| v.as_str()).map(sanitize);
    let scope = json.get("scope").and_then(|v| v.as_str()).map(sanitize);
    let mut metadata = serde_json::Map::new();
    for field in integration.profile.metadata_fields {
        if let Some(value) = json.get(*field).and_then(|v| v.as_str()) {
            metadata.insert((*field).to_owned(), serde_json::Value::from(sanitize(value)));
        }
    }
    Ok(TokenSet {
        access_token: SecretString::new(access_token),
        refresh_token,
        token_type,
        scope,
        expires_in,
        metadata,
    })
}

/// The answer's refresh token: `None` when absent or null; an
/// [`ProviderError::InvalidAnswer`] when present but not a string passing [`check_token`].
fn refresh_token_of(
    status: u16,
    json: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<SecretString>, ProviderError> {
    match json.get("refresh_token") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(token)) => match check_token("refresh token", token) {
            Ok(()) => Ok(Some(SecretString::new(token.as_str()))),
            Err(refused) => Err(ProviderError::InvalidAnswer {
                status,
                reason: refused.to_string(),
            }),
        },
        Some(_) => Err(ProviderError::InvalidAnswer {
            status,
            reason: "refresh_token is not a string".into(),
        }),
    }
}

fn number_field(json: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<i64> {
    match json.get(key)? {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use tokenvisor_core::{Integration, IntegrationId};

    fn resolved(provider: &str) -> ResolvedIntegration {
        let integration = Integration {
            id: IntegrationId::new(),
            name: "t".into(),
            provider: provider.into(),
            client_id: "id".into(),
            client_secret: SecretString::new("secret"),
            scopes: vec![],
            redirect_uri: None,
            data_center: None,
            token_url: Some("https://example.com/token".into()),
            authorize_url: None,
            revoke_url: None,
            settings: serde_json::Value::Null,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        ResolvedIntegration::resolve(&integration, &[]).expect("resolves")
    }

    #[test]
    fn an_answer_without_refresh_token_keeps_none() {
        let body = br#"{"access_token":"a","expires_in":3600,"token_type":"Bearer"}"#;
        let set = interpret_answer(&resolved("generic"), 200, body, None).expect("ok");
        assert!(set.refresh_token.is_none());
        assert_eq!(set.expires_in, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn a_missing_expires_in_uses_the_default_lifetime() {
        let set = interpret_answer(&resolved("generic"), 200, br#"{"access_token":"a"}"#, None).expect("ok");
        assert_eq!(set.expires_in, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn zoho_errors_with_http_200_are_classified() {
        let zoho = resolved("zoho");
        let err = interpret_answer(&zoho, 200, br#"{"error":"invalid_code"}"#, None).expect_err("error");
        assert_eq!(err.class(), FailureClass::Permanent);
        let err = interpret_answer(
            &zoho,
            200,
            br#"{"error":"Access Denied","error_description":"too many"}"#,
            None,
        )
        .expect_err("error");
        assert_eq!(err.class(), FailureClass::RateLimited);
        let ok = interpret_answer(
            &zoho,
            200,
            br#"{"access_token":"a","api_domain":"https://www.zohoapis.eu"}"#,
            None,
        )
        .expect("ok");
        assert_eq!(
            ok.metadata.get("api_domain").and_then(|v| v.as_str()),
            Some("https://www.zohoapis.eu")
        );
    }

    #[test]
    fn generic_needs_a_2xx_status() {
        let err = interpret_answer(&resolved("generic"), 400, br#"{"error":"invalid_grant"}"#, None).expect_err("e");
        assert_eq!(err.class(), FailureClass::Permanent);
        let err = interpret_answer(&resolved("generic"), 503, b"<html>down</html>", Some(7)).expect_err("e");
        assert_eq!(err.class(), FailureClass::Transient);
        assert_eq!(err.to_failure().retry_after_secs, Some(7));
        let err = interpret_answer(&resolved("generic"), 200, b"not json", None).expect_err("e");
        assert_eq!(err.class(), FailureClass::Transient);
        let err = interpret_answer(&resolved("generic"), 429, br#"{"error":"invalid_grant"}"#, None).expect_err("e");
        assert_eq!(err.class(), FailureClass::RateLimited);
    }

    #[test]
    fn hostile_answers_are_rejected() {
        let generic = resolved("generic");
        assert!(interpret_answer(&generic, 200, br#"{"access_token":""}"#, None).is_err());
        assert!(interpret_answer(&generic, 200, br#"{"access_token":"a","refresh_token":42}"#, None).is_err());
    }

    #[test]
    fn an_access_token_with_cr_lf_is_refused_and_the_rotated_refresh_token_is_kept() {
        let body = br#"{"access_token":"at\r\nX-Injected: 1","refresh_token":"rt-rotated","expires_in":3600}"#;
        let err = interpret_answer(&resolved("atlassian"), 200, body, None).expect_err("refused");
        assert_eq!(err.code(), "invalid_access_token");
        assert_eq!(err.class(), FailureClass::Transient);
        assert_eq!(
            err.salvaged_refresh_token().map(SecretString::expose),
            Some("rt-rotated")
        );
        assert!(!err.to_string().contains("X-Injected"), "{err}");
        assert!(!format!("{err:?}").contains("rt-rotated"), "{err:?}");
    }

    #[test]
    fn an_access_token_over_sixteen_kib_is_refused_and_the_rotated_refresh_token_is_kept() {
        let body = format!(
            r#"{{"access_token":"{}","refresh_token":"rt-rotated","expires_in":3600}}"#,
            "a".repeat(16 * 1024 + 1)
        );
        let err = interpret_answer(&resolved("generic"), 200, body.as_bytes(), None).expect_err("refused");
        assert_eq!(err.code(), "invalid_access_token");
        assert_eq!(
            err.salvaged_refresh_token().map(SecretString::expose),
            Some("rt-rotated")
        );
    }

    #[test]
    fn an_empty_access_token_without_a_refresh_token_is_refused_with_nothing_to_salvage() {
        let err = interpret_answer(&resolved("generic"), 200, br#"{"access_token":""}"#, None).expect_err("refused");
        assert_eq!(err.code(), "invalid_access_token");
        assert!(err.salvaged_refresh_token().is_none());
    }

    #[test]
    fn a_2xx_answer_without_an_access_token_still_hands_back_its_rotated_refresh_token() {
        let body = br#"{"access_token":42,"refresh_token":"rt-rotated"}"#;
        let err = interpret_answer(&resolved("generic"), 200, body, None).expect_err("refused");
        assert_eq!(
            err.salvaged_refresh_token().map(SecretString::expose),
            Some("rt-rotated")
        );
        let err = interpret_answer(&resolved("generic"), 200, br#"{"token_type":"Bearer"}"#, None).expect_err("e");
        assert_eq!(err.code(), "invalid_answer");
    }

    #[test]
    fn a_non_positive_expires_in_keeps_the_answer_with_the_default_lifetime() {
        for expires_in in ["0", "-5", "\"soon\""] {
            let body = format!(r#"{{"access_token":"a","refresh_token":"r","expires_in":{expires_in}}}"#);
            let set = interpret_answer(&resolved("generic"), 200, body.as_bytes(), None).expect("kept");
            assert_eq!(
                set.expires_in,
                std::time::Duration::from_secs(3600),
                "expires_in {expires_in}"
            );
            assert_eq!(set.refresh_token.as_ref().map(SecretString::expose), Some("r"));
        }
    }

    #[test]
    fn an_expires_in_over_366_days_is_clamped_and_the_answer_kept() {
        for expires_in in ["31622401", "99999999999999999999", "1e300"] {
            let body = format!(r#"{{"access_token":"a","refresh_token":"r","expires_in":{expires_in}}}"#);
            let set = interpret_answer(&resolved("generic"), 200, body.as_bytes(), None).expect("kept");
            assert_eq!(
                set.expires_in,
                std::time::Duration::from_secs(366 * 24 * 3600),
                "expires_in {expires_in}"
            );
        }
    }

    #[test]
    fn a_refresh_token_with_control_characters_is_an_invalid_answer() {
        let body = br#"{"access_token":"a","refresh_token":"r\nt","expires_in":3600}"#;
        let err = interpret_answer(&resolved("generic"), 200, body, None).expect_err("invalid");
        assert_eq!(err.code(), "invalid_answer");
        assert!(err.salvaged_refresh_token().is_none());
        // Even alongside an unusable access token, it is an invalid answer.
        let body = br#"{"access_token":"a\nb","refresh_token":"r\nt"}"#;
        let err = interpret_answer(&resolved("generic"), 200, body, None).expect_err("invalid");
        assert_eq!(err.code(), "invalid_answer");
    }

    #[tokio::test]
    async fn an_answer_of_a_few_hundred_kib_is_read_with_the_default_cap() {
        let body = vec![b' '; 300 * 1024];
        let response = reqwest::Response::from(http::Response::new(body));
        let read = read_capped(response, TokenClientOptions::default().max_answer_bytes)
            .await
            .expect("read");
        assert_eq!(read.len(), 300 * 1024);
        let too_big = reqwest::Response::from(http::Response::new(vec![b' '; 1024 * 1024 + 1]));
        let err = read_capped(too_big, TokenClientOptions::default().max_answer_bytes)
            .await
            .expect_err("too big");
        assert_eq!(err.code(), "invalid_answer");
    }

    #[test]
    fn building_a_token_client_leaves_the_process_crypto_provider_unset() {
        let client = TokenClient::new(TokenClientOptions::default());
        assert!(client.is_ok());
        assert!(
            rustls::crypto::CryptoProvider::get_default().is_none(),
            "TokenClient::new installed a process-wide rustls crypto provider"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_caps_them() {
        assert_eq!(parse_retry_after("30"), Some(30));
        assert_eq!(parse_retry_after("999999"), Some(86400));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
