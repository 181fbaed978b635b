//! The provider catalog. A profile is data: endpoints, request format, how success
//! and errors are recognised, rotation, limits. Integrations override any of it
//! through their `settings`.

use std::time::Duration;
use tokenvisor_core::FailureClass;
use tokenvisor_core::schedule::RateWindow;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the request body.
    Body,
    /// HTTP Basic authentication.
    Basic,
}

/// The token request body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (Atlassian).
    Json,
}

/// How a successful token answer is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessRule {
    /// A 2xx status (RFC 6749).
    HttpStatus,
    /// The body has an `access_token`, whatever the status (Zoho answers errors with 200).
    HasAccessToken,
}

/// How a token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeStyle {
    /// RFC 7009: form body `token=...` with client authentication.
    Rfc7009,
    /// Zoho: `POST {revoke_url}?token=...` with no body.
    QueryParameter,
}

/// One data centre of a multi-region provider.
#[derive(Debug, Clone, Copy)]
pub struct DataCenter {
    /// Short name (`us`, `eu`...), as the authorization redirect's `location`.
    pub name: &'static str,
    /// Accounts (authorization) server base URL.
    pub accounts_server: &'static str,
}

/// How to talk to one provider's authorization server.
#[derive(Debug, Clone)]
pub struct ProviderProfile {
    /// Profile name.
    pub name: &'static str,
    /// Default token endpoint, if the provider has a fixed one.
    pub token_url: Option<&'static str>,
    /// Default authorization endpoint.
    pub authorize_url: Option<&'static str>,
    /// Default revocation endpoint.
    pub revoke_url: Option<&'static str>,
    /// Token path appended to a per-connection accounts server (Zoho).
    pub token_path: Option<&'static str>,
    /// Data centres (empty for single-region providers).
    pub data_centers: &'static [DataCenter],
    /// Default data centre.
    pub default_data_center: Option<&'static str>,
    /// Client authentication.
    pub client_auth: ClientAuth,
    /// Body format.
    pub body_format: BodyFormat,
    /// Success rule.
    pub success_rule: SuccessRule,
    /// Whether refresh answers rotate the refresh token.
    pub rotates_refresh_tokens: bool,
    /// Lifetime assumed when an answer has no `expires_in`.
    pub default_lifetime: Duration,
    /// Minimum spacing between two refreshes of one connection that the provider needs
    /// (the configured minimum applies on top).
    pub min_spacing: Duration,
    /// Window limit per refresh token.
    pub window: Option<RateWindow>,
    /// Error codes with a class of their own, on top of the RFC 6749 defaults.
    pub error_classes: &'static [(&'static str, FailureClass)],
    /// Answer fields kept as connection metadata.
    pub metadata_fields: &'static [&'static str],
    /// Scopes always requested.
    pub required_scopes: &'static [&'static str],
    /// Authorization scheme for API calls (`Bearer`, `Zoho-oauthtoken`).
    pub api_auth_scheme: &'static str,
    /// Authorization path appended to the accounts server (Zoho).
    pub authorize_path: Option<&'static str>,
    /// Revocation path appended to the accounts server (Zoho).
    pub revoke_path: Option<&'static str>,
    /// How tokens are revoked.
    pub revoke_style: RevokeStyle,
    /// Separator between scopes in the authorization request.
    pub scope_separator: &'static str,
    /// Whether the authorization request uses PKCE (S256).
    pub pkce: bool,
    /// Extra authorization request parameters.
    pub authorize_params: &'static [(&'static str, &'static str)],
    /// Scopes used when the integration names none.
    pub default_scopes: &'static [&'static str],
    /// API statuses that mean "this access token is dead" (report it and retry once).
    pub expired_token_statuses: &'static [u16],
    /// API base URL per data centre (Zoho Desk, ServiceDesk Plus).
    pub api_base_urls: &'static [(&'static str, &'static str)],
    /// Headers added to API calls from connection metadata: (header, metadata key).
    pub metadata_headers: &'static [(&'static str, &'static str)],
    /// Where the resources (Atlassian cloud ids) a token can reach are listed.
    pub accessible_resources_url: Option<&'static str>,
}

/// RFC 6749 error codes and their classes, used by every profile.
pub const RFC6749_ERROR_CLASSES: &[(&str, FailureClass)] = &[
    ("invalid_grant", FailureClass::Permanent),
    ("unauthorized_client", FailureClass::Permanent),
    ("invalid_client", FailureClass::IntegrationMisconfigured),
    ("invalid_request", FailureClass::IntegrationMisconfigured),
    ("unsupported_grant_type", FailureClass::IntegrationMisconfigured),
    ("invalid_scope", FailureClass::IntegrationMisconfigured),
    ("slow_down", FailureClass::RateLimited),
    ("temporarily_unavailable", FailureClass::Transient),
    ("server_error", FailureClass::Transient),
];

const ZOHO_DATA_CENTERS: &[DataCenter] = &[
    DataCenter {
        name: "us",
        accounts_server: "https://accounts.zoho.com",
    },
    DataCenter {
        name: "eu",
        accounts_server: "https://accounts.zoho.eu",
    },
    DataCenter {
        name: "in",
        accounts_server: "https://accounts.zoho.in",
    },
    DataCenter {
        name: "au",
        accounts_server: "https://accounts.zoho.com.au",
    },
    DataCenter {
        name: "jp",
        accounts_server: "https://accounts.zoho.jp",
    },
    DataCenter {
        name: "sa",
        accounts_server: "https://accounts.zoho.sa",
    },
    DataCenter {
        name: "uk",
        accounts_server: "https://accounts.zoho.uk",
    },
    DataCenter {
        name: "ca",
        accounts_server: "https://accounts.zohocloud.ca",
    },
    DataCenter {
        name: "cn",
        accounts_server: "https://accounts.zoho.com.cn",
    },
];

const ZOHO_ERROR_CLASSES: &[(&str, FailureClass)] = &[
    ("invalid_code", FailureClass::Permanent),
    ("Access Denied", FailureClass::RateLimited),
];

const ATLASSIAN_ERROR_CLASSES: &[(&str, FailureClass)] = &[];

fn generic() -> ProviderProfile {
    ProviderProfile {
        name: "generic",
        token_url: None,
        authorize_url: None,
        revoke_url: None,
        token_path: None,
        data_centers: &[],
        default_data_center: None,
        client_auth: ClientAuth::Body,
        body_format: BodyFormat::Form,
        success_rule: SuccessRule::HttpStatus,
        rotates_refresh_tokens: false,
        default_lifetime: Duration::from_secs(3600),
        // No provider-imposed spacing: the configured minimum applies.
        min_spacing: Duration::ZERO,
        window: None,
        error_classes: &[],
        metadata_fields: &[],
        required_scopes: &[],
        api_auth_scheme: "Bearer",
        authorize_path: None,
        revoke_path: None,
        revoke_style: RevokeStyle::Rfc7009,
        scope_separator: " ",
        pkce: true,
        authorize_params: &[],
        default_scopes: &[],
        expired_token_statuses: &[401],
        api_base_urls: &[],
        metadata_headers: &[],
        accessible_resources_url: None,
    }
}

const ZOHO_DESK_API: &[(&str, &str)] = &[
    ("us", "https://desk.zoho.com/api/v1"),
    ("eu", "https://desk.zoho.eu/api/v1"),
    ("in", "https://desk.zoho.in/api/v1"),
    ("au", "https://desk.zoho.com.au/api/v1"),
    ("jp", "https://desk.zoho.jp/api/v1"),
];

const SDP_API: &[(&str, &str)] = &[
    ("us", "https://sdpondemand.manageengine.com/api/v3"),
    ("eu", "https://sdpondemand.manageengine.eu/api/v3"),
    ("in", "https://sdpondemand.manageengine.in/api/v3"),
    ("au", "https://servicedeskplus.net.au/api/v3"),
    ("cn", "https://servicedeskplus.cn/api/v3"),
];

/// Pairs of names: (data centre, URL) or (header, metadata key).
type Pairs = &'static [(&'static str, &'static str)];

fn zoho(name: &'static str) -> ProviderProfile {
    let (default_scopes, api_base_urls, metadata_headers): (&[&str], Pairs, Pairs) = match name {
        "zoho-desk" => (
            &["Desk.tickets.ALL", "Desk.basic.READ"],
            ZOHO_DESK_API,
            &[("orgId", "org_id")],
        ),
        "manageengine-sdp" => (&["SDPOnDemand.requests.ALL"], SDP_API, &[]),
        _ => (&["ZohoCRM.modules.ALL"], &[], &[]),
    };
    ProviderProfile {
        name,
        authorize_path: Some("/oauth/v2/auth"),
        revoke_path: Some("/oauth/v2/token/revoke"),
        revoke_style: RevokeStyle::QueryParameter,
        scope_separator: ",",
        // Zoho's support for PKCE is unconfirmed: off unless the integration turns it on.
        pkce: false,
        authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
        default_scopes,
        api_base_urls,
        metadata_headers,
        token_path: Some("/oauth/v2/token"),
        data_centers: ZOHO_DATA_CENTERS,
        default_data_center: Some("us"),
        success_rule: SuccessRule::HasAccessToken,
        // Zoho: at most 10 access tokens per refresh token per 10 minutes.
        min_spacing: Duration::from_secs(30),
        window: Some(RateWindow {
            max: 10,
            per: Duration::from_secs(600),
        }),
        error_classes: ZOHO_ERROR_CLASSES,
        metadata_fields: &["api_domain"],
        api_auth_scheme: "Zoho-oauthtoken",
        ..generic()
    }
}

fn atlassian() -> ProviderProfile {
    ProviderProfile {
        name: "atlassian",
        token_url: Some("https://auth.atlassian.com/oauth/token"),
        authorize_url: Some("https://auth.atlassian.com/authorize"),
        body_format: BodyFormat::Json,
        rotates_refresh_tokens: true,
        error_classes: ATLASSIAN_ERROR_CLASSES,
        required_scopes: &["offline_access"],
        pkce: false,
        authorize_params: &[("audience", "api.atlassian.com"), ("prompt", "consent")],
        // The API gateway answers 401, 403 or 404 for an expired token.
        expired_token_statuses: &[401, 403, 404],
        accessible_resources_url: Some("https://api.atlassian.com/oauth/token/accessible-resources"),
        ..generic()
    }
}

/// The names the catalog knows.
pub const PROFILE_NAMES: &[&str] = &["generic", "zoho", "zoho-desk", "manageengine-sdp", "atlassian", "jira"];

impl ProviderProfile {
    /// The built-in profile with this name (`jira` is an alias of `atlassian`).
    pub fn lookup(name: &str) -> Option<ProviderProfile> {
        match name {
            "generic" => Some(generic()),
            "zoho" => Some(zoho("zoho")),
            "zoho-desk" => Some(zoho("zoho-desk")),
            "manageengine-sdp" => Some(zoho("manageengine-sdp")),
            "atlassian" | "jira" => Some(atlassian()),
            _ => None,
        }
    }

    /// The class of a provider error code: the profile's own table first, then RFC 6749.
    pub fn classify_error_code(&self, code: &str) -> Option<FailureClass> {
        self.error_classes
            .iter()
            .chain(RFC6749_ERROR_CLASSES)
            .find(|(known, _)| known.eq_ignore_ascii_case(code))
            .map(|(_, class)| *class)
    }

    /// The API base URL for a data centre, when the profile has one.
    pub fn api_base_url(&self, data_center: &str) -> Option<&'static str> {
        self.api_base_urls
            .iter()
            .find(|(dc, _)| dc.eq_ignore_ascii_case(data_center))
            .map(|(_, url)| *url)
    }

    /// The accounts server of a data centre.
    pub fn data_center(&self, name: &str) -> Option<&'static DataCenter> {
        self.data_centers.iter().find(|dc| dc.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_profile_resolves() {
        for name in PROFILE_NAMES {
            assert!(ProviderProfile::lookup(name).is_some(), "{name}");
        }
        assert!(ProviderProfile::lookup("nope").is_none());
    }

    #[test]
    fn zoho_classifies_its_dialect() {
        let profile = ProviderProfile::lookup("zoho").expect("zoho");
        assert_eq!(
            profile.classify_error_code("invalid_code"),
            Some(FailureClass::Permanent)
        );
        assert_eq!(
            profile.classify_error_code("Access Denied"),
            Some(FailureClass::RateLimited)
        );
        assert_eq!(
            profile.classify_error_code("invalid_client"),
            Some(FailureClass::IntegrationMisconfigured)
        );
        assert_eq!(
            profile.data_center("ca").map(|dc| dc.accounts_server),
            Some("https://accounts.zohocloud.ca")
        );
    }

    #[test]
    fn rfc6749_codes_are_classified_for_generic() {
        let profile = ProviderProfile::lookup("generic").expect("generic");
        assert_eq!(
            profile.classify_error_code("invalid_grant"),
            Some(FailureClass::Permanent)
        );
        assert_eq!(
            profile.classify_error_code("unauthorized_client"),
            Some(FailureClass::Permanent)
        );
        assert_eq!(profile.classify_error_code("something_else"), None);
    }
}
