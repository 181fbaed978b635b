//! Integrations (OAuth app registrations).

use super::Tokenvisor;
use crate::error::{AdminError, TokenError};
use tokenvisor_core::{ConnectionFilter, Integration, IntegrationId, SecretString};
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

/// A change to an integration: each field set replaces the stored one, the others stay.
/// A rotated `client_secret` is used by the next refresh of every connection (on every
/// replica), without a restart.
///
/// ```
/// use tokenvisor_supervisor::IntegrationUpdate;
/// let rotate = IntegrationUpdate::default().client_secret("new-secret");
/// assert!(rotate.client_id.is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct IntegrationUpdate {
    /// A new OAuth client id.
    pub client_id: Option<String>,
    /// A new OAuth client secret.
    pub client_secret: Option<SecretString>,
    /// New scopes (replacing all of them).
    pub scopes: Option<Vec<String>>,
    /// A new redirect URI.
    pub redirect_uri: Option<String>,
    /// New profile overrides (replacing all of them; see [`IntegrationSettings`]).
    pub settings: Option<serde_json::Value>,
}

impl IntegrationUpdate {
    /// Rotates the client secret.
    pub fn client_secret(mut self, client_secret: impl Into<SecretString>) -> Self {
        self.client_secret = Some(client_secret.into());
        self
    }

    /// Changes the client id.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Replaces the scopes.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Changes the redirect URI.
    pub fn redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(redirect_uri.into());
        self
    }

    /// Replaces the typed settings.
    pub fn settings(mut self, settings: IntegrationSettings) -> Self {
        self.settings =
            Some(serde_json::to_value(settings).unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new())));
        self
    }
}

/// Checks the fields every integration must have right (registration and updates).
fn check_fields(client_id: &str, client_secret: &SecretString) -> Result<(), AdminError> {
    if client_id.is_empty() || client_id.len() > 512 {
        return Err(AdminError::Invalid {
            field: "client_id",
            reason: "must be 1 to 512 characters".into(),
        });
    }
    if client_secret.is_empty() {
        return Err(AdminError::Invalid {
            field: "client_secret",
            reason: "must not be empty".into(),
        });
    }
    Ok(())
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
        check_fields(&new.client_id, &new.client_secret)?;
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

    /// The stored integration (its secret inside a [`SecretString`]).
    pub async fn get(self, id: IntegrationId) -> Result<Integration, AdminError> {
        self.tokenvisor
            .shared
            .store
            .get_integration(id)
            .await?
            .ok_or(AdminError::NotFound("integration"))
    }

    /// Every integration, by name.
    pub async fn list(self) -> Result<Vec<Integration>, AdminError> {
        Ok(self.tokenvisor.shared.store.list_integrations().await?)
    }

    /// Changes an integration (checked like a registration) and makes every connection
    /// use it from its next refresh on: this process's owners at once, the other
    /// replicas' when the change notification reaches them (or at their periodic
    /// reconcile, within 30 s, should it be lost).
    pub async fn update(self, id: IntegrationId, update: IntegrationUpdate) -> Result<Integration, AdminError> {
        let shared = &self.tokenvisor.shared;
        let mut integration = self.get(id).await?;
        if let Some(client_id) = update.client_id {
            integration.client_id = client_id;
        }
        if let Some(client_secret) = update.client_secret {
            integration.client_secret = client_secret;
        }
        if let Some(scopes) = update.scopes {
            integration.scopes = scopes;
        }
        if let Some(redirect_uri) = update.redirect_uri {
            integration.redirect_uri = Some(redirect_uri);
        }
        if let Some(settings) = update.settings {
            integration.settings = settings;
        }
        check_fields(&integration.client_id, &integration.client_secret)?;
        ResolvedIntegration::resolve(&integration, &shared.config.allow_insecure_hosts)?;
        // Strictly newer than the cached version, whatever the clocks say.
        integration.updated_at = shared
            .clock
            .now()
            .max(integration.updated_at + chrono::Duration::milliseconds(1));
        if !shared.store.update_integration(&integration).await? {
            return Err(AdminError::NotFound("integration"));
        }
        shared.replace_integration(&integration);
        self.announce(id).await;
        Ok(integration)
    }

    /// Deletes an integration. While connections use it this is refused with
    /// [`AdminError::InUse`], unless `cascade`: then each of its connections is removed
    /// first through its owner (revoked at the provider, like
    /// [`Connections::remove`](crate::Connections::remove)).
    pub async fn remove(self, id: IntegrationId, cascade: bool) -> Result<(), AdminError> {
        let shared = &self.tokenvisor.shared;
        self.get(id).await?;
        let of_integration = ConnectionFilter {
            integration_id: Some(id),
            ..ConnectionFilter::default()
        };
        // A connection registered meanwhile makes the delete fail: look again (a few times).
        for _ in 0..3 {
            let connections = shared.store.count_connections(&of_integration).await?;
            if connections > 0 && !cascade {
                return Err(AdminError::InUse { connections });
            }
            if cascade {
                for connection in shared.store.list_connections(&of_integration).await? {
                    match self.tokenvisor.connections().remove(connection.id).await {
                        Ok(()) | Err(TokenError::NotFound) => {}
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            match shared.store.delete_integration(id).await {
                Ok(true) => {
                    shared.forget_integration(id);
                    self.announce(id).await;
                    return Ok(());
                }
                Ok(false) => return Err(AdminError::NotFound("integration")),
                Err(tokenvisor_store::StoreError::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        let connections = shared.store.count_connections(&of_integration).await?;
        Err(AdminError::InUse { connections })
    }

    /// Tells the other replicas that the integration changed (LISTEN/NOTIFY; their
    /// periodic reconcile reads it should the notification be lost).
    async fn announce(self, id: IntegrationId) {
        if let Some(store) = self.tokenvisor.shared.store.partitions()
            && let Err(error) = store
                .notify(crate::cluster::INTEGRATIONS_CHANNEL, &id.to_string())
                .await
        {
            tracing::warn!(integration.id = %id, error = %error, "failed to announce an integration change; the replicas' reconcile finds it");
        }
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
