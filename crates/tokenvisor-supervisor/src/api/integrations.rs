//! Integrations (OAuth app registrations).

use super::Tokenvisor;
use crate::error::AdminError;
use tokenvisor_core::{Integration, IntegrationId, SecretString};
use tokenvisor_provider::ResolvedIntegration;
use tokenvisor_provider::endpoint::IntegrationSettings;

/// A new integration (one OAuth app registration). Build one with a constructor per
/// provider and chainable setters:
///
/// ```
/// use tokenvisor_supervisor::NewIntegration;
/// let zoho = NewIntegration::zoho("zoho-eu", "1000.CLIENT", "secret", "eu")
///     .scopes(["ZohoCRM.modules.ALL"])
///     .redirect_uri("https://app.example.com/tokenvisor/oauth/callback");
/// assert_eq!(zoho.provider, "zoho");
/// ```
///
/// The fields stay public (the admin API fills them from JSON); `settings` is the JSON
/// form of [`IntegrationSettings`], checked by [`Integrations::register`].
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

impl NewIntegration {
    /// An integration of any profile in the catalog (`generic`, `zoho`, `zoho-desk`,
    /// `manageengine-sdp`, `atlassian`, `jira`), with no scopes, overrides or settings.
    pub fn new(
        name: impl Into<String>,
        provider: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> Self {
        Self {
            name: name.into(),
            provider: provider.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scopes: Vec::new(),
            redirect_uri: None,
            data_center: None,
            token_url: None,
            authorize_url: None,
            revoke_url: None,
            settings: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// A Zoho integration in one data centre (`us`, `eu`, `in`, `au`, `jp`, `ca`, `cn`, `sa`).
    pub fn zoho(
        name: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
        data_center: impl Into<String>,
    ) -> Self {
        Self::new(name, "zoho", client_id, client_secret).data_center(data_center)
    }

    /// An Atlassian (Jira, Confluence) integration; `offline_access` is added to the scopes
    /// by the profile, and rotating refresh tokens are handled.
    pub fn atlassian(
        name: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> Self {
        Self::new(name, "atlassian", client_id, client_secret)
    }

    /// A generic RFC 6749 authorization server with its token endpoint.
    pub fn generic(
        name: impl Into<String>,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> Self {
        Self::new(name, "generic", client_id, client_secret).token_url(token_url)
    }

    /// Scopes requested at authorization (replaces any set before).
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The redirect URI registered with the provider.
    pub fn redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(redirect_uri.into());
        self
    }

    /// The data centre (multi-region providers).
    pub fn data_center(mut self, data_center: impl Into<String>) -> Self {
        self.data_center = Some(data_center.into());
        self
    }

    /// Overrides the profile's token endpoint.
    pub fn token_url(mut self, token_url: impl Into<String>) -> Self {
        self.token_url = Some(token_url.into());
        self
    }

    /// Overrides the profile's authorization endpoint.
    pub fn authorize_url(mut self, authorize_url: impl Into<String>) -> Self {
        self.authorize_url = Some(authorize_url.into());
        self
    }

    /// Overrides the profile's revocation endpoint.
    pub fn revoke_url(mut self, revoke_url: impl Into<String>) -> Self {
        self.revoke_url = Some(revoke_url.into());
        self
    }

    /// Typed overrides of the profile (client authentication, body format, limits...).
    pub fn settings(mut self, settings: IntegrationSettings) -> Self {
        // Serializing a struct of options, strings and maps of strings cannot fail.
        self.settings =
            serde_json::to_value(settings).unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()));
        self
    }

    /// The typed settings, if `settings` holds valid ones.
    pub fn typed_settings(&self) -> Result<IntegrationSettings, serde_json::Error> {
        if self.settings.is_null() {
            return Ok(IntegrationSettings::default());
        }
        serde_json::from_value(self.settings.clone())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_fill_the_provider_and_setters_chain() {
        let zoho = NewIntegration::zoho("zoho-eu", "id", "secret", "eu")
            .scopes(["ZohoCRM.modules.ALL", "ZohoCRM.users.READ"])
            .redirect_uri("https://app.example.com/cb");
        assert_eq!(zoho.provider, "zoho");
        assert_eq!(zoho.data_center.as_deref(), Some("eu"));
        assert_eq!(zoho.scopes.len(), 2);
        assert_eq!(zoho.redirect_uri.as_deref(), Some("https://app.example.com/cb"));
        assert_eq!(zoho.client_secret.expose(), "secret");

        let jira = NewIntegration::atlassian("jira", "id", "secret");
        assert_eq!(jira.provider, "atlassian");
        assert!(jira.data_center.is_none());

        let generic = NewIntegration::generic("idp", "https://idp.example.com/token", "id", "secret");
        assert_eq!(generic.provider, "generic");
        assert_eq!(generic.token_url.as_deref(), Some("https://idp.example.com/token"));
    }

    #[test]
    fn typed_settings_round_trip_through_the_json_field() {
        let settings = IntegrationSettings {
            rotates_refresh_tokens: Some(true),
            min_spacing_secs: Some(30),
            ..IntegrationSettings::default()
        };
        let new = NewIntegration::generic("idp", "https://idp.example.com/token", "id", "secret").settings(settings);
        assert_eq!(new.settings["rotates_refresh_tokens"], serde_json::json!(true));
        let back = new.typed_settings().expect("valid settings");
        assert_eq!(back.min_spacing_secs, Some(30));
        assert_eq!(
            NewIntegration::atlassian("a", "b", "c")
                .typed_settings()
                .expect("empty")
                .pkce,
            None
        );
    }
}
