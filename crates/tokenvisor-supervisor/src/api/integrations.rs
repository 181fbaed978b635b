//! Integrations (OAuth app registrations).

use super::Tokenvisor;
use crate::error::AdminError;
use tokenvisor_core::{Integration, IntegrationId, SecretString};
use tokenvisor_provider::ResolvedIntegration;

/// A new integration (one OAuth app registration).
#[derive(Debug, Clone)]
pub struct NewIntegration {
    /// Unique name.
    pub name: String,
    /// Provider profile (`generic`, `zoho`, `zoho-desk`, `manageengine-sdp`, `atlassian`, `jira`).
    pub provider: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Redirect URI.
    pub redirect_uri: Option<String>,
    /// Data centre (multi-region providers).
    pub data_center: Option<String>,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Authorization endpoint override.
    pub authorize_url: Option<String>,
    /// Revocation endpoint override.
    pub revoke_url: Option<String>,
    /// Profile overrides (see `tokenvisor_provider::endpoint::IntegrationSettings`).
    pub settings: serde_json::Value,
}

/// The integrations of a [`Tokenvisor`]: `tokenvisor.integrations().register(new)`.
#[derive(Debug, Clone, Copy)]
pub struct Integrations<'a> {
    tokenvisor: &'a Tokenvisor,
}

impl<'a> Integrations<'a> {
    pub(super) fn new(tokenvisor: &'a Tokenvisor) -> Self {
        Self { tokenvisor }
    }

    /// Registers an integration after checking its provider, endpoints and settings.
    pub async fn register(self, new: NewIntegration) -> Result<Integration, AdminError> {
        if new.name.trim().is_empty() || new.name.len() > 128 {
            return Err(AdminError::Invalid {
                field: "name",
                reason: "must be 1 to 128 characters".into(),
            });
        }
        if new.client_id.is_empty() || new.client_id.len() > 512 {
            return Err(AdminError::Invalid {
                field: "client_id",
                reason: "must be 1 to 512 characters".into(),
            });
        }
        if new.client_secret.is_empty() {
            return Err(AdminError::Invalid {
                field: "client_secret",
                reason: "must not be empty".into(),
            });
        }
        let now = self.tokenvisor.shared.clock.now();
        let integration = Integration {
            id: IntegrationId::new(),
            name: new.name,
            provider: new.provider,
            client_id: new.client_id,
            client_secret: new.client_secret,
            scopes: new.scopes,
            redirect_uri: new.redirect_uri,
            data_center: new.data_center,
            token_url: new.token_url,
            authorize_url: new.authorize_url,
            revoke_url: new.revoke_url,
            settings: new.settings,
            created_at: now,
            updated_at: now,
        };
        ResolvedIntegration::resolve(&integration, &self.tokenvisor.shared.config.allow_insecure_hosts)?;
        self.tokenvisor.shared.store.insert_integration(&integration).await?;
        Ok(integration)
    }
}
