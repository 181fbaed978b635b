//! An integration resolved against its provider profile: concrete, validated
//! endpoints and request options.

use crate::profile::{BodyFormat, ClientAuth, ProviderProfile};
use std::collections::BTreeMap;
use tokenvisor_core::schedule::{RateWindow, SchedulePolicy};
use tokenvisor_core::{Integration, IntegrationId, SecretString};
use url::Url;

/// Connection metadata key holding a per-connection accounts server (Zoho).
pub const ACCOUNTS_SERVER_KEY: &str = "accounts_server";

/// Why an integration or endpoint is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The provider profile name is not in the catalog.
    #[error("unknown provider profile {0:?}: use one of generic, zoho, zoho-desk, manageengine-sdp, atlassian, jira")]
    UnknownProvider(String),
    /// No token endpoint could be determined.
    #[error("integration has no token endpoint: set token_url")]
    MissingTokenUrl,
    /// A URL is malformed.
    #[error("invalid {field} URL: {reason}")]
    InvalidUrl {
        /// Which setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A URL uses plain HTTP for a host not explicitly allowed.
    #[error(
        "{field} must use https (to allow plain HTTP to host {host:?}, add it to TOKENVISOR_ALLOW_INSECURE_ENDPOINTS, \
         or TokenvisorConfig::allow_insecure_hosts when embedded, and restart)"
    )]
    InsecureUrl {
        /// Which setting.
        field: &'static str,
        /// The host.
        host: String,
    },
    /// The data centre is not one of the profile's.
    #[error("unknown data centre {0:?} for this provider")]
    UnknownDataCenter(String),
    /// The integration settings are not valid.
    #[error("invalid integration settings: {0}")]
    InvalidSettings(String),
}

/// Per-integration overrides of the profile, from the integration's `settings` JSON.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSettings {
    /// Client authentication at the token endpoint.
    pub client_auth: Option<ClientAuth>,
    /// Token request body format.
    pub body_format: Option<BodyFormat>,
    /// Lifetime assumed when an answer has no `expires_in`, in seconds.
    pub default_lifetime_secs: Option<u64>,
    /// Whether refresh tokens rotate.
    pub rotates_refresh_tokens: Option<bool>,
    /// Minimum seconds between two refreshes of one connection.
    pub min_spacing_secs: Option<u64>,
    /// At most this many refreshes per connection per `window_secs`.
    pub max_refreshes_per_window: Option<u32>,
    /// The window for `max_refreshes_per_window`, in seconds.
    pub window_secs: Option<u64>,
    /// Extra parameters added to every token request.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// Whether the authorization request uses PKCE (S256).
    pub pkce: Option<bool>,
    /// Where the resources a token reaches are listed (Atlassian `accessible-resources`).
    pub accessible_resources_url: Option<String>,
    /// API base URL for the embedder's calls (overrides the profile's per data centre).
    pub api_base_url: Option<String>,
    /// Refreshes of this integration in flight at once.
    pub max_concurrent_refreshes: Option<u32>,
    /// Refreshes of this integration started per second.
    pub max_refreshes_per_second: Option<u32>,
}

/// Limits on provider calls an integration asks for (applied by the supervisor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallLimits {
    /// Refreshes in flight at once.
    pub max_concurrent_refreshes: Option<u32>,
    /// Refreshes started per second.
    pub max_refreshes_per_second: Option<u32>,
}

/// An integration ready to talk to its provider.
#[derive(Debug, Clone)]
pub struct ResolvedIntegration {
    /// The integration id.
    pub integration_id: IntegrationId,
    /// The profile, with the integration's overrides applied.
    pub profile: ProviderProfile,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// Scopes (with the profile's required scopes added).
    pub scopes: Vec<String>,
    /// Extra token request parameters.
    pub extra_params: BTreeMap<String, String>,
    /// Redirect URI registered with the provider.
    pub redirect_uri: Option<String>,
    /// Limits on provider calls.
    pub limits: CallLimits,
    token_url: Option<Url>,
    authorize_url: Option<Url>,
    revoke_url: Option<Url>,
    accessible_resources_url: Option<Url>,
    api_base_url: Option<String>,
    default_accounts_server: Option<String>,
    allow_insecure_hosts: Vec<String>,
}

impl ResolvedIntegration {
    /// Resolves an integration. `allow_insecure_hosts` lists hosts that may be reached
    /// over plain HTTP (tests, local development); every other endpoint must be https.
    pub fn resolve(integration: &Integration, allow_insecure_hosts: &[String]) -> Result<Self, EndpointError> {
        let mut profile = ProviderProfile::lookup(&integration.provider)
            .ok_or_else(|| EndpointError::UnknownProvider(integration.provider.clone()))?;
        let settings = parse_settings(&integration.settings)?;
        apply_settings(&mut profile, &settings)?;

        let default_accounts_server = match (&integration.data_center, profile.default_data_center) {
            (Some(name), _) if !profile.data_centers.is_empty() => Some(
                profile
                    .data_center(name)
                    .ok_or_else(|| EndpointError::UnknownDataCenter(name.clone()))?
                    .accounts_server
                    .to_owned(),
            ),
            (None, Some(default)) => profile.data_center(default).map(|dc| dc.accounts_server.to_owned()),
            _ => None,
        };

        let token_url = match (&integration.token_url, profile.token_url) {
            (Some(url), _) => Some(validate_url("token_url", url, allow_insecure_hosts)?),
            (None, Some(url)) => Some(validate_url("token_url", url, allow_insecure_hosts)?),
            (None, None) => None,
        };
        if token_url.is_none() && (profile.token_path.is_none() || default_accounts_server.is_none()) {
            return Err(EndpointError::MissingTokenUrl);
        }
        let optional_url =
            |field: &'static str, own: &Option<String>, default: Option<&'static str>| match own.as_deref().or(default)
            {
                Some(url) => validate_url(field, url, allow_insecure_hosts).map(Some),
                None => Ok(None),
            };
        let authorize_url = optional_url("authorize_url", &integration.authorize_url, profile.authorize_url)?;
        let revoke_url = optional_url("revoke_url", &integration.revoke_url, profile.revoke_url)?;
        let accessible_resources_url = optional_url(
            "accessible_resources_url",
            &settings.accessible_resources_url,
            profile.accessible_resources_url,
        )?;
        if let Some(url) = &settings.api_base_url {
            validate_url("api_base_url", url, allow_insecure_hosts)?;
        }
        if let Some(redirect_uri) = &integration.redirect_uri {
            validate_url("redirect_uri", redirect_uri, allow_insecure_hosts)?;
        }
        if settings.max_concurrent_refreshes == Some(0) || settings.max_refreshes_per_second == Some(0) {
            return Err(EndpointError::InvalidSettings(
                "max_concurrent_refreshes and max_refreshes_per_second must be positive".into(),
            ));
        }
        if let Some(pkce) = settings.pkce {
            profile.pkce = pkce;
        }

        let mut scopes = integration.scopes.clone();
        if scopes.is_empty() {
            scopes = profile.default_scopes.iter().map(|s| (*s).to_owned()).collect();
        }
        for required in profile.required_scopes {
            if !scopes.iter().any(|s| s == required) {
                scopes.push((*required).to_owned());
            }
        }
        Ok(Self {
            integration_id: integration.id,
            profile,
            client_id: integration.client_id.clone(),
            client_secret: integration.client_secret.clone(),
            scopes,
            extra_params: settings.extra_params,
            redirect_uri: integration.redirect_uri.clone(),
            limits: CallLimits {
                max_concurrent_refreshes: settings.max_concurrent_refreshes,
                max_refreshes_per_second: settings.max_refreshes_per_second,
            },
            token_url,
            authorize_url,
            revoke_url,
            accessible_resources_url,
            api_base_url: settings.api_base_url,
            default_accounts_server,
            allow_insecure_hosts: allow_insecure_hosts.to_vec(),
        })
    }

    /// The token endpoint for a connection: the integration's fixed one, or the
    /// connection's accounts server (stored in its metadata at authorization) plus the
    /// profile's token path, or the integration's data centre.
    pub fn token_url_for(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Result<Url, EndpointError> {
        if let Some(url) = &self.token_url {
            return Ok(url.clone());
        }
        let path = self.profile.token_path.ok_or(EndpointError::MissingTokenUrl)?;
        let server = self
            .accounts_server_for(metadata)?
            .ok_or(EndpointError::MissingTokenUrl)?;
        validate_url("token_url", &format!("{server}{path}"), &self.allow_insecure_hosts)
    }

    /// The connection's accounts server (from its metadata), or the integration's data
    /// centre; `None` for providers without accounts servers.
    pub fn accounts_server_for(
        &self,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<String>, EndpointError> {
        match metadata.get(ACCOUNTS_SERVER_KEY).and_then(|v| v.as_str()) {
            Some(server) => self.validate_accounts_server(server).map(Some),
            None => Ok(self.default_accounts_server.clone()),
        }
    }

    /// The authorization endpoint: the integration's override, the profile's fixed one,
    /// or the integration's data centre accounts server plus the profile's path.
    pub fn authorize_endpoint(&self) -> Result<Url, EndpointError> {
        if let Some(url) = &self.authorize_url {
            return Ok(url.clone());
        }
        match (&self.default_accounts_server, self.profile.authorize_path) {
            (Some(server), Some(path)) => {
                validate_url("authorize_url", &format!("{server}{path}"), &self.allow_insecure_hosts)
            }
            _ => Err(EndpointError::InvalidUrl {
                field: "authorize_url",
                reason: "not configured".into(),
            }),
        }
    }

    /// The revocation endpoint for a connection, if the provider has one.
    pub fn revoke_endpoint(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<Url> {
        if let Some(url) = &self.revoke_url {
            return Some(url.clone());
        }
        let server = self.accounts_server_for(metadata).ok()??;
        let path = self.profile.revoke_path?;
        validate_url("revoke_url", &format!("{server}{path}"), &self.allow_insecure_hosts).ok()
    }

    /// Where the resources a token reaches are listed (Atlassian), if the provider has it.
    pub fn accessible_resources_endpoint(&self) -> Option<&Url> {
        self.accessible_resources_url.as_ref()
    }

    /// The data centre a connection lives in (its accounts server's, or the integration's).
    pub fn data_center_for(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<&'static str> {
        let server = self.accounts_server_for(metadata).ok()??;
        self.profile
            .data_centers
            .iter()
            .find(|dc| dc.accounts_server == server)
            .map(|dc| dc.name)
    }

    /// The API base URL for a connection's calls: the integration's override, or the
    /// profile's URL for the connection's data centre.
    pub fn api_base_url_for(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        if let Some(url) = &self.api_base_url {
            return Some(url.clone());
        }
        let data_center = self.data_center_for(metadata)?;
        self.profile.api_base_url(data_center).map(str::to_owned)
    }

    /// Checks an accounts server reported by an authorization redirect: it must be one
    /// of the profile's data centres, or a host explicitly allowed for plain HTTP.
    pub fn validate_accounts_server(&self, server: &str) -> Result<String, EndpointError> {
        let trimmed = server.trim_end_matches('/');
        if self.profile.data_centers.iter().any(|dc| dc.accounts_server == trimmed) {
            return Ok(trimmed.to_owned());
        }
        let url = validate_url("accounts_server", trimmed, &self.allow_insecure_hosts)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if self.allow_insecure_hosts.contains(&host) {
            return Ok(trimmed.to_owned());
        }
        Err(EndpointError::UnknownDataCenter(trimmed.to_owned()))
    }

    /// The schedule policy for this integration's connections: `base` with the
    /// profile's spacing, window and default lifetime.
    pub fn schedule_policy(&self, base: &SchedulePolicy) -> SchedulePolicy {
        SchedulePolicy {
            min_spacing: base.min_spacing.max(self.profile.min_spacing),
            window: self.profile.window.or(base.window),
            default_lifetime: self.profile.default_lifetime,
            ..base.clone()
        }
    }
}

fn parse_settings(settings: &serde_json::Value) -> Result<IntegrationSettings, EndpointError> {
    if settings.is_null() {
        return Ok(IntegrationSettings::default());
    }
    serde_json::from_value(settings.clone()).map_err(|e| EndpointError::InvalidSettings(e.to_string()))
}

fn apply_settings(profile: &mut ProviderProfile, settings: &IntegrationSettings) -> Result<(), EndpointError> {
    if let Some(client_auth) = settings.client_auth {
        profile.client_auth = client_auth;
    }
    if let Some(body_format) = settings.body_format {
        profile.body_format = body_format;
    }
    if let Some(rotates) = settings.rotates_refresh_tokens {
        profile.rotates_refresh_tokens = rotates;
    }
    if let Some(secs) = settings.default_lifetime_secs {
        profile.default_lifetime = bounded_seconds("default_lifetime_secs", secs, 1, MAX_SETTING_SECS)?;
    }
    if let Some(secs) = settings.min_spacing_secs {
        profile.min_spacing = bounded_seconds("min_spacing_secs", secs, 0, MAX_SPACING_SECS)?;
    }
    match (settings.max_refreshes_per_window, settings.window_secs) {
        (Some(max), Some(secs)) if max > 0 && secs > 0 => {
            profile.window = Some(RateWindow {
                max,
                per: bounded_seconds("window_secs", secs, 1, MAX_SETTING_SECS)?,
            });
        }
        (None, None) => {}
        _ => {
            return Err(EndpointError::InvalidSettings(
                "max_refreshes_per_window and window_secs go together and must be positive".into(),
            ));
        }
    }
    Ok(())
}

/// Longest duration a setting may name: a lifetime or a window (366 days).
const MAX_SETTING_SECS: u64 = 366 * 24 * 3600;

/// Longest minimum spacing between two refreshes of one connection (a day).
const MAX_SPACING_SECS: u64 = 24 * 3600;

/// `secs` of setting `field` as a duration, if within `min..=max`; never panics,
/// whatever the number.
fn bounded_seconds(field: &'static str, secs: u64, min: u64, max: u64) -> Result<std::time::Duration, EndpointError> {
    if !(min..=max).contains(&secs) {
        return Err(EndpointError::InvalidSettings(format!(
            "{field} must be {min}..={max}, not {secs}"
        )));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// Parses `raw` and requires https, unless its host is in `allow_insecure_hosts`.
pub fn validate_url(field: &'static str, raw: &str, allow_insecure_hosts: &[String]) -> Result<Url, EndpointError> {
    let url = Url::parse(raw).map_err(|e| EndpointError::InvalidUrl {
        field,
        reason: e.to_string(),
    })?;
    let host = url
        .host_str()
        .ok_or_else(|| EndpointError::InvalidUrl {
            field,
            reason: "no host".into(),
        })?
        .to_owned();
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::InvalidUrl {
            field,
            reason: "credentials in URLs are not allowed".into(),
        });
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure_hosts.contains(&host) => Ok(url),
        "http" => Err(EndpointError::InsecureUrl { field, host }),
        other => Err(EndpointError::InvalidUrl {
            field,
            reason: format!("unsupported scheme {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn integration(provider: &str) -> Integration {
        Integration {
            id: IntegrationId::new(),
            name: "test".into(),
            provider: provider.into(),
            client_id: "client".into(),
            client_secret: SecretString::new("secret"),
            scopes: vec!["read".into()],
            redirect_uri: None,
            data_center: None,
            token_url: None,
            authorize_url: None,
            revoke_url: None,
            settings: serde_json::Value::Null,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn plain_http_is_refused_unless_the_host_is_allowed() {
        let mut generic = integration("generic");
        generic.token_url = Some("http://127.0.0.1:9/token".into());
        assert!(matches!(
            ResolvedIntegration::resolve(&generic, &[]),
            Err(EndpointError::InsecureUrl { .. })
        ));
        assert!(ResolvedIntegration::resolve(&generic, &["127.0.0.1".into()]).is_ok());
    }

    #[test]
    fn generic_without_token_url_is_an_error() {
        assert_eq!(
            ResolvedIntegration::resolve(&integration("generic"), &[]).err(),
            Some(EndpointError::MissingTokenUrl)
        );
    }

    #[test]
    fn zoho_refreshes_at_the_connection_accounts_server() {
        let mut zoho = integration("zoho");
        zoho.data_center = Some("in".into());
        let resolved = ResolvedIntegration::resolve(&zoho, &[]).expect("resolves");
        let mut metadata = serde_json::Map::new();
        assert_eq!(
            resolved.token_url_for(&metadata).expect("url").as_str(),
            "https://accounts.zoho.in/oauth/v2/token"
        );
        metadata.insert(ACCOUNTS_SERVER_KEY.into(), "https://accounts.zoho.eu".into());
        assert_eq!(
            resolved.token_url_for(&metadata).expect("url").as_str(),
            "https://accounts.zoho.eu/oauth/v2/token"
        );
        metadata.insert(ACCOUNTS_SERVER_KEY.into(), "https://evil.example".into());
        assert!(resolved.token_url_for(&metadata).is_err());
    }

    #[test]
    fn zoho_desk_has_an_api_base_url_per_data_center_and_default_scopes() {
        let mut desk = integration("zoho-desk");
        desk.scopes.clear();
        desk.data_center = Some("eu".into());
        let resolved = ResolvedIntegration::resolve(&desk, &[]).expect("resolves");
        assert!(resolved.scopes.iter().any(|s| s == "Desk.tickets.ALL"));
        let metadata = serde_json::Map::new();
        assert_eq!(
            resolved.api_base_url_for(&metadata).as_deref(),
            Some("https://desk.zoho.eu/api/v1")
        );
        assert_eq!(
            resolved.authorize_endpoint().expect("url").as_str(),
            "https://accounts.zoho.eu/oauth/v2/auth"
        );
        assert_eq!(
            resolved.revoke_endpoint(&metadata).map(|u| u.to_string()).as_deref(),
            Some("https://accounts.zoho.eu/oauth/v2/token/revoke")
        );
    }

    #[test]
    fn atlassian_always_requests_offline_access() {
        let resolved = ResolvedIntegration::resolve(&integration("jira"), &[]).expect("resolves");
        assert!(resolved.scopes.iter().any(|s| s == "offline_access"));
        assert!(resolved.profile.rotates_refresh_tokens);
    }

    #[test]
    fn unknown_settings_are_rejected() {
        let mut generic = integration("generic");
        generic.token_url = Some("https://example.com/token".into());
        generic.settings = serde_json::json!({"bogus": 1});
        assert!(matches!(
            ResolvedIntegration::resolve(&generic, &[]),
            Err(EndpointError::InvalidSettings(_))
        ));
        generic.settings = serde_json::json!({"client_auth": "basic", "body_format": "json"});
        let resolved = ResolvedIntegration::resolve(&generic, &[]).expect("resolves");
        assert_eq!(resolved.profile.client_auth, ClientAuth::Basic);
    }

    #[test]
    fn an_integration_with_a_window_of_ten_quadrillion_seconds_is_refused_without_panicking() {
        let mut generic = integration("generic");
        generic.token_url = Some("https://example.com/token".into());
        generic.settings =
            serde_json::json!({"max_refreshes_per_window": 10, "window_secs": 10_000_000_000_000_000u64});
        let resolved = std::panic::catch_unwind(|| ResolvedIntegration::resolve(&generic, &[]));
        let Ok(resolved) = resolved else {
            panic!("resolving the integration panicked");
        };
        match resolved {
            Err(EndpointError::InvalidSettings(reason)) => assert!(reason.contains("window_secs"), "{reason}"),
            other => panic!("expected InvalidSettings naming window_secs, got {other:?}"),
        }
    }

    #[test]
    fn every_duration_setting_is_bounded_and_named_when_refused() {
        let mut generic = integration("generic");
        generic.token_url = Some("https://example.com/token".into());
        for (settings, field) in [
            (
                serde_json::json!({"default_lifetime_secs": u64::MAX}),
                "default_lifetime_secs",
            ),
            (serde_json::json!({"default_lifetime_secs": 0}), "default_lifetime_secs"),
            (serde_json::json!({"min_spacing_secs": u64::MAX}), "min_spacing_secs"),
            (serde_json::json!({"min_spacing_secs": 86_401}), "min_spacing_secs"),
            (
                serde_json::json!({"max_refreshes_per_window": 1, "window_secs": u64::MAX}),
                "window_secs",
            ),
            (
                serde_json::json!({"max_refreshes_per_window": 1, "window_secs": 366 * 24 * 3600 + 1}),
                "window_secs",
            ),
        ] {
            generic.settings = settings.clone();
            match ResolvedIntegration::resolve(&generic, &[]) {
                Err(EndpointError::InvalidSettings(reason)) => assert!(reason.contains(field), "{reason}"),
                other => panic!("{settings} gave {other:?}"),
            }
        }
        generic.settings = serde_json::json!({
            "default_lifetime_secs": 366 * 24 * 3600,
            "min_spacing_secs": 86_400,
            "max_refreshes_per_window": 1,
            "window_secs": 366 * 24 * 3600,
        });
        let resolved = ResolvedIntegration::resolve(&generic, &[]).expect("the bounds themselves are accepted");
        assert_eq!(
            resolved.profile.default_lifetime,
            std::time::Duration::from_secs(366 * 24 * 3600)
        );
        assert_eq!(
            resolved.profile.window.map(|w| w.per),
            Some(std::time::Duration::from_secs(366 * 24 * 3600))
        );
    }
}

#[cfg(test)]
mod unknown_provider_tests {
    use super::EndpointError;
    use crate::profile::PROFILE_NAMES;

    #[test]
    fn an_unknown_provider_lists_every_valid_one() {
        let message = EndpointError::UnknownProvider("zohoo".into()).to_string();
        for name in PROFILE_NAMES {
            assert!(message.contains(name), "{message} does not name {name}");
        }
    }
}
