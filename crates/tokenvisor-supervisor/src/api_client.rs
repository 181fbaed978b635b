//! For embedders calling provider APIs: adds the connection's authorization header (the
//! profile's scheme, e.g. `Zoho-oauthtoken`) and metadata headers (Zoho Desk `orgId`),
//! and when the API says the token is dead (401; Atlassian's gateway also 403/404),
//! reports the rejected token and retries once with the new one.

use crate::api::Tokenvisor;
use crate::error::TokenError;
use crate::token::AccessToken;
use tokenvisor_core::ConnectionId;

/// Why an API call could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No token could be obtained.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The HTTP request failed.
    #[error("API request failed: {0}")]
    Http(String),
    /// The connection has no API base URL (a `generic` integration without an
    /// `api_base_url` setting): nothing can be forwarded.
    #[error("the connection's integration has no API base URL (set its api_base_url setting)")]
    NoApiBase,
    /// The path would leave the connection's API base (`.`/`..` segments, another host).
    #[error("invalid API path: {0}")]
    InvalidPath(String),
}

/// A request to forward to a connection's API ([`ApiClient::forward`]).
#[derive(Debug, Clone)]
pub struct ForwardedCall {
    /// The method.
    pub method: reqwest::Method,
    /// The path below the API base (no leading slash needed), `/`-separated.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// Headers to send (the caller removes its own credentials and hop-by-hop headers;
    /// `Authorization` is always replaced by the connection's).
    pub headers: reqwest::header::HeaderMap,
    /// The body (sent again as is if the token is refreshed and the call retried).
    pub body: Vec<u8>,
}

/// What a request builder gets: the HTTP client and the connection's API base URL.
#[derive(Debug, Clone)]
pub struct ApiTarget<'a> {
    /// The shared HTTP client.
    pub http: &'a reqwest::Client,
    /// The API base URL for this connection (Zoho `api_domain`, Zoho Desk / ServiceDesk
    /// Plus host per data centre, or the integration's `api_base_url` setting).
    pub base_url: Option<String>,
    /// The connection's metadata (cloud id, org id...).
    pub metadata: &'a serde_json::Map<String, serde_json::Value>,
}

/// Calls provider APIs on behalf of connections.
#[derive(Debug, Clone)]
pub struct ApiClient {
    tokenvisor: Tokenvisor,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client sharing tokenvisor's HTTP connection pool (no redirects followed).
    pub fn new(tokenvisor: Tokenvisor) -> Self {
        let http = tokenvisor.shared().client.http().clone();
        Self { tokenvisor, http }
    }

    /// Sends the request `build` makes, with the connection's authorization. If the API
    /// answers that the token is dead, reports it and sends a rebuilt request once more
    /// with the new token. Returns the last response, whatever its status.
    pub async fn send(
        &self,
        connection_id: ConnectionId,
        build: impl Fn(&ApiTarget<'_>) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let token = self.tokenvisor.tokens().access_token(connection_id).await?;
        let response = self.send_with(&token, &build).await?;
        let dead_statuses = self.dead_token_statuses(&token).await;
        if !dead_statuses.contains(&response.status().as_u16()) {
            return Ok(response);
        }
        tracing::debug!(connection.id = %connection_id, status = response.status().as_u16(), "API rejected the token; refreshing once");
        let fresh = self
            .tokenvisor
            .tokens()
            .token_rejected(connection_id, &token.secret)
            .await?;
        self.send_with(&fresh, &build).await
    }

    /// Forwards `call` to the connection's API base (the profile's and metadata's, or the
    /// integration's `api_base_url`), with the connection's authorization, retried once
    /// with a fresh token when the API says the token is dead. The URL never leaves the
    /// API base: `.` and `..` segments are refused, and the host is checked. Redirects are
    /// not followed (the caller gets them).
    pub async fn forward(
        &self,
        connection_id: ConnectionId,
        call: ForwardedCall,
    ) -> Result<reqwest::Response, ApiError> {
        let token = self.tokenvisor.tokens().access_token(connection_id).await?;
        let runtime = self.runtime(&token).await;
        let resolved = runtime.as_ref().and_then(|r| r.resolved.as_ref().ok());
        let base = base_url(&token, resolved).ok_or(ApiError::NoApiBase)?;
        let url = api_url(&base, &call.path, call.query.as_deref())?;
        let mut headers = call.headers;
        headers.remove(reqwest::header::AUTHORIZATION);
        headers.remove(reqwest::header::HOST);
        self.send(connection_id, |target| {
            target
                .http
                .request(call.method.clone(), url.clone())
                .headers(headers.clone())
                .body(call.body.clone())
        })
        .await
    }

    /// The runtime of the token's integration (cached by the instance).
    async fn runtime(&self, token: &AccessToken) -> Option<crate::shared::IntegrationRef> {
        self.tokenvisor
            .shared()
            .integration(token.integration_id)
            .await
            .ok()
            .flatten()
    }

    async fn send_with(
        &self,
        token: &AccessToken,
        build: &impl Fn(&ApiTarget<'_>) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let runtime = self.runtime(token).await;
        let resolved = runtime.as_ref().and_then(|r| r.resolved.as_ref().ok());
        let base_url = base_url(token, resolved);
        let target = ApiTarget {
            http: &self.http,
            base_url,
            metadata: &token.metadata,
        };
        let scheme = resolved.map_or("Bearer", |r| r.profile.api_auth_scheme);
        let mut request = build(&target).header(
            reqwest::header::AUTHORIZATION,
            format!("{scheme} {}", token.secret.expose()),
        );
        for (header, key) in resolved.map_or(&[][..], |r| r.profile.metadata_headers) {
            if let Some(value) = token.metadata.get(*key).and_then(|v| v.as_str()) {
                request = request.header(*header, value);
            }
        }
        // reqwest's error text names the URL only; no header (and so no token) is in it.
        request
            .send()
            .await
            .map_err(|e| ApiError::Http(e.without_url().to_string()))
    }

    async fn dead_token_statuses(&self, token: &AccessToken) -> Vec<u16> {
        match self.tokenvisor.shared().integration(token.integration_id).await {
            Ok(Some(runtime)) => match &runtime.resolved {
                Ok(resolved) => resolved.profile.expired_token_statuses.to_vec(),
                Err(_) => vec![401],
            },
            _ => vec![401],
        }
    }
}

/// The connection's API base URL: the token's `api_domain`, else the profile's (per
/// metadata) or the integration's `api_base_url`.
fn base_url(token: &AccessToken, resolved: Option<&tokenvisor_provider::ResolvedIntegration>) -> Option<String> {
    token
        .api_domain
        .as_deref()
        .map(str::to_owned)
        .or_else(|| resolved.and_then(|r| r.api_base_url_for(&token.metadata)))
}

/// `base` + `path` + `query`, refusing a path that would leave `base`.
fn api_url(base: &str, path: &str, query: Option<&str>) -> Result<reqwest::Url, ApiError> {
    let base_url = reqwest::Url::parse(base).map_err(|error| ApiError::InvalidPath(format!("API base: {error}")))?;
    let mut url = base_url.clone();
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| ApiError::InvalidPath("the API base cannot take a path".into()))?;
        segments.pop_if_empty();
        for segment in path.split('/').filter(|segment| !segment.is_empty()) {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            if decoded == "." || decoded == ".." || segment.contains('\\') {
                return Err(ApiError::InvalidPath(format!("segment {segment:?} is not allowed")));
            }
            segments.push(segment);
        }
    }
    url.set_query(query.filter(|q| !q.is_empty()));
    if url.scheme() != base_url.scheme() || url.host() != base_url.host() || url.port() != base_url.port() {
        return Err(ApiError::InvalidPath("the URL leaves the API base".into()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_stays_below_the_api_base() {
        let url = api_url("https://www.zohoapis.eu/crm/", "v8/users", Some("page=2")).expect("valid");
        assert_eq!(url.as_str(), "https://www.zohoapis.eu/crm/v8/users?page=2");
        let encoded = api_url("https://api.example", "a b/c", None).expect("valid");
        assert_eq!(encoded.as_str(), "https://api.example/a%20b/c");
        for bad in ["../admin", "v1/./x", "a/../../b", "a\\..\\b", "%2e%2e/admin", "%2E./x"] {
            assert!(api_url("https://api.example/v1", bad, None).is_err(), "{bad}");
        }
        // A segment that looks like a host is only a segment.
        let url = api_url("https://api.example", "//169.254.169.254/latest", None).expect("valid");
        assert_eq!(url.host_str(), Some("api.example"));
    }
}
