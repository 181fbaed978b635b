//! What a caller receives: an access token with its expiry.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokenvisor_core::{Connection, ConnectionId, IntegrationId, SecretString};

/// A valid access token. Cheap to clone. `Debug` never shows the token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The connection it belongs to.
    pub connection_id: ConnectionId,
    /// The token itself.
    pub secret: SecretString,
    /// Token type (`Bearer`).
    pub token_type: Arc<str>,
    /// When it was obtained.
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The API base URL for this connection, when the provider gives one (Zoho `api_domain`).
    pub api_domain: Option<Arc<str>>,
    /// The integration of the connection.
    pub integration_id: IntegrationId,
    /// The connection's provider metadata (`api_domain`, `accounts_server`, `cloud_id`, `org_id`...).
    pub metadata: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl AccessToken {
    /// The token of a stored connection.
    pub fn of(connection: &Connection) -> Self {
        Self {
            connection_id: connection.id,
            secret: connection.access_token.clone(),
            token_type: Arc::from(connection.token_type.as_str()),
            issued_at: connection.issued_at,
            expires_at: connection.expires_at,
            api_domain: connection
                .metadata
                .get("api_domain")
                .and_then(|v| v.as_str())
                .map(Arc::from),
            integration_id: connection.integration_id,
            metadata: Arc::new(connection.metadata.clone()),
        }
    }
}
