//! For embedders calling provider APIs: adds the connection's authorization header (the
//! profile's scheme, e.g. `Zoho-oauthtoken`) and metadata headers (Zoho Desk `orgId`),
//! and when the API says the token is dead (401; Atlassian's gateway also 403/404),
//! reports the rejected token and retries once with the new one.
//!
//! [`ApiRequest`] and [`ApiResponse`] are tokenvisor's own types: no HTTP library's
//! types are in this API, so an upgrade of ours is never a breaking change of yours.

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
    /// The request itself is not valid HTTP (method, header name or value, URL, body).
    #[error("invalid API request: {0}")]
    InvalidRequest(String),
}

/// Where an [`ApiRequest`] goes.
#[derive(Debug, Clone)]
enum Target {
    /// A path below the connection's API base; it never leaves the base.
    BelowBase { path: String, query: Option<String> },
    /// An absolute URL the embedder chose.
    Url(String),
}

/// A call to a connection's API, described with no HTTP library's types: what
/// [`ApiClient::send`] sends (and sends again, unchanged but for the token, when the
/// token was dead).
#[derive(Debug, Clone)]
pub struct ApiRequest {
    method: String,
    target: Target,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl ApiRequest {
    /// `method` on `path` below the connection's API base (Zoho `api_domain`, the
    /// profile's base per data centre or cloud id, or the integration's `api_base_url`),
    /// e.g. `ApiRequest::new("GET", "crm/v8/users")`. The URL never leaves the base: `.`
    /// and `..` segments, encoded too, are refused.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            target: Target::BelowBase {
                path: path.into(),
                query: None,
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET` on `path` below the API base.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// `POST` on `path` below the API base.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new("POST", path)
    }

    /// `method` on an absolute URL of the provider's API, which the embedder vouches for
    /// (it is not checked against the API base).
    pub fn to_url(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            target: Target::Url(url.into()),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The query string (without `?`) of a request below the API base. An absolute URL
    /// carries its own.
    pub fn query(mut self, query: impl Into<String>) -> Self {
        if let Target::BelowBase { query: slot, .. } = &mut self.target {
            let query = query.into();
            *slot = (!query.is_empty()).then_some(query);
        }
        self
    }

    /// Adds a header. `Authorization` and `Host` are always replaced by tokenvisor's.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// The body, sent as is.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with `Content-Type: application/json`.
    pub fn json(self, value: &impl serde::Serialize) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value).map_err(|error| ApiError::InvalidRequest(error.to_string()))?;
        Ok(self.header("content-type", "application/json").body(body))
    }
}

/// A provider API's answer, whatever its status; the body is read on demand.
#[derive(Debug)]
pub struct ApiResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: reqwest::Response,
}

impl ApiResponse {
    fn new(response: reqwest::Response) -> Self {
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        Self {
            status: response.status().as_u16(),
            headers,
            body: response,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Every header, names in lower case, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
    }

    /// The next piece of the body, `None` at its end: for streaming it on.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        let chunk = self.body.chunk().await.map_err(http_error)?;
        Ok(chunk.map(|bytes| bytes.to_vec()))
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Vec<u8>, ApiError> {
        Ok(self.body.bytes().await.map_err(http_error)?.to_vec())
    }

    /// The whole body as text (lossy UTF-8).
    pub async fn text(self) -> Result<String, ApiError> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }

    /// The body parsed as JSON into `T`.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, ApiError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::Http(format!("the answer is not the JSON expected: {error}")))
    }
}

/// An HTTP error's text without its URL (a proxied URL may carry a caller's query).
fn http_error(error: reqwest::Error) -> ApiError {
    ApiError::Http(error.without_url().to_string())
}

/// Calls provider APIs on behalf of connections.
#[derive(Debug, Clone)]
pub struct ApiClient {
    tokenvisor: Tokenvisor,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client sharing tokenvisor's HTTP connection pool (no redirects followed: the
    /// caller gets them).
    pub fn new(tokenvisor: Tokenvisor) -> Self {
        let http = tokenvisor.shared().client.http().clone();
        Self { tokenvisor, http }
    }

    /// Sends `request` with the connection's authorization (the profile's scheme, e.g.
    /// `Zoho-oauthtoken`) and metadata headers (Zoho Desk `orgId`). If the API answers
    /// that the token is dead (401; Atlassian's gateway also 403/404), reports it and
    /// sends the request once more with the new token. Returns the last answer,
    /// whatever its status.
    pub async fn send(&self, connection_id: ConnectionId, request: ApiRequest) -> Result<ApiResponse, ApiError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| ApiError::InvalidRequest(format!("{:?} is not an HTTP method", request.method)))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &request.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ApiError::InvalidRequest(format!("{name:?} is not a header name")))?;
            let value = reqwest::header::HeaderValue::from_bytes(value)
                .map_err(|_| ApiError::InvalidRequest(format!("the value of header {name} is not valid")))?;
            if name != reqwest::header::AUTHORIZATION && name != reqwest::header::HOST {
                headers.append(name, value);
            }
        }
        let token = self.tokenvisor.tokens().access_token(connection_id).await?;
        let runtime = self.runtime(&token).await;
        let resolved = runtime.as_ref().and_then(|r| r.resolved.as_ref().ok());
        let url = match &request.target {
            Target::BelowBase { path, query } => {
                let base = base_url(&token, resolved).ok_or(ApiError::NoApiBase)?;
                api_url(&base, path, query.as_deref())?
            }
            Target::Url(url) => {
                reqwest::Url::parse(url).map_err(|error| ApiError::InvalidRequest(format!("invalid URL: {error}")))?
            }
        };
        let call = || {
            self.http
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .body(request.body.clone())
        };
        let response = self.send_with(&token, call()).await?;
        let dead_statuses = self.dead_token_statuses(&token).await;
        if !dead_statuses.contains(&response.status().as_u16()) {
            return Ok(ApiResponse::new(response));
        }
        tracing::debug!(connection.id = %connection_id, status = response.status().as_u16(), "API rejected the token; refreshing once");
        let fresh = self
            .tokenvisor
            .tokens()
            .token_rejected(connection_id, &token.secret)
            .await?;
        Ok(ApiResponse::new(self.send_with(&fresh, call()).await?))
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
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let runtime = self.runtime(token).await;
        let resolved = runtime.as_ref().and_then(|r| r.resolved.as_ref().ok());
        let scheme = resolved.map_or("Bearer", |r| r.profile.api_auth_scheme);
        let mut request = request.header(
            reqwest::header::AUTHORIZATION,
            format!("{scheme} {}", token.secret.expose()),
        );
        for (header, key) in resolved.map_or(&[][..], |r| r.profile.metadata_headers) {
            if let Some(value) = token.metadata.get(*key).and_then(|v| v.as_str()) {
                request = request.header(*header, value);
            }
        }
        // The error text leaves out the URL; no header (and so no token) is in it.
        request.send().await.map_err(http_error)
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
