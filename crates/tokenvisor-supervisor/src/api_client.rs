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
pub enum ApiError {
    /// No token could be obtained.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The HTTP request failed.
    #[error("API request failed: {0}")]
    Http(String),
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

    async fn send_with(
        &self,
        token: &AccessToken,
        build: &impl Fn(&ApiTarget<'_>) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let runtime = self
            .tokenvisor
            .shared()
            .integration(token.integration_id)
            .await
            .ok()
            .flatten();
        let resolved = runtime.as_ref().and_then(|r| r.resolved.as_ref().ok());
        let base_url = token
            .api_domain
            .as_deref()
            .map(str::to_owned)
            .or_else(|| resolved.and_then(|r| r.api_base_url_for(&token.metadata)));
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
