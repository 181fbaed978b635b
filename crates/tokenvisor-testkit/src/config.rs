//! The values a test hands to the fake ([`FakeConfig`], [`Dialect`]) and gets back
//! ([`IssuedTokens`]).

use std::fmt;
use std::time::Duration;

/// Which authorization server the fake imitates: how it answers token requests, which
/// endpoints it serves and how it reports errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// RFC 6749: refresh answers include the SAME refresh token again (no rotation).
    Generic,
    /// Non-rotating: refresh answers OMIT `refresh_token` entirely (like Zoho), otherwise
    /// like [`Dialect::Generic`].
    NonRotating,
    /// Rotating (like Atlassian, Okta, Auth0): every refresh returns a NEW refresh token.
    ///
    /// The token it replaced stays usable for `grace` after the rotation: such a use counts
    /// as a reuse event, is allowed, does not rotate again, and answers a new access token
    /// together with the family's current refresh token. Any use of it after the grace
    /// period, or any use of an older token, revokes the whole family (all its refresh and
    /// access tokens) and answers `invalid_grant`.
    Rotating {
        /// How long the refresh token that was just rotated away stays usable.
        grace: Duration,
    },
    /// Zoho Accounts, one accounts server per data centre under `{base}/zoho/{dc}` (see
    /// [`ZOHO_DATA_CENTERS`]).
    ///
    /// - Token endpoint `POST {accounts}/oauth/v2/token`: parameters in a form body or the
    ///   query string (a JSON body is not read). Refresh answers OMIT `refresh_token`; every
    ///   answer carries `api_domain` (the grant's data centre) and `token_type: "Bearer"`.
    /// - Every error is HTTP **200** with a JSON body: `{"error":"invalid_code"}` (unknown,
    ///   revoked or other-data-centre refresh token, bad code), `{"error":"invalid_client"}`,
    ///   `{"error":"Access Denied","error_description":…}` when throttled.
    /// - Throttling: at most [`ZOHO_REFRESHES_PER_WINDOW`] refreshes per refresh token in
    ///   any [`ZOHO_THROTTLE_WINDOW`] (a SLIDING window over successful refreshes; refused
    ///   attempts do not extend it; the first access token of a grant does not count).
    /// - At most [`ZOHO_MAX_ACTIVE_ACCESS_TOKENS`] unexpired access tokens per refresh
    ///   token: minting one more invalidates the oldest.
    /// - At most [`ZOHO_MAX_REFRESH_TOKENS_PER_USER`] refresh tokens per user (label): one
    ///   more revokes the oldest family of that label.
    /// - A refresh token is only issued by a code exchange when the authorization asked for
    ///   `access_type=offline`, and only on the label's first offline consent unless
    ///   `prompt=consent` was sent too.
    Zoho,
    /// Atlassian 3LO (`auth.atlassian.com`): rotating refresh tokens like
    /// [`Dialect::Rotating`], plus:
    ///
    /// - the token endpoint `POST {base}/oauth/token` reads JSON bodies only (anything else
    ///   answers 415 `invalid_request`);
    /// - refresh errors are 403 `{"error":"invalid_grant","error_description":"Unknown or
    ///   invalid refresh token."}`, or 403 `unauthorized_client` once
    ///   [`set_atlassian_unauthorized_client`](crate::FakeProvider::set_atlassian_unauthorized_client)
    ///   is on;
    /// - when the grace period of a rotation ends, the access tokens issued before that
    ///   rotation are revoked too, before their expiry;
    /// - refresh tokens die after [`ATLASSIAN_INACTIVITY_EXPIRY`] without a refresh and
    ///   [`ATLASSIAN_ABSOLUTE_EXPIRY`] after the grant;
    /// - a code exchange only answers a refresh token when the granted scope includes
    ///   `offline_access`.
    Atlassian {
        /// How long the refresh token that was just rotated away stays usable (Atlassian:
        /// 10 minutes).
        grace: Duration,
    },
}

/// Zoho's data centres as the fake serves them: `(name, api_domain)`. The accounts server
/// of data centre `name` is `{base_url}/zoho/{name}`
/// ([`zoho_accounts_server`](crate::FakeProvider::zoho_accounts_server)).
pub const ZOHO_DATA_CENTERS: [(&str, &str); 9] = [
    ("us", "https://www.zohoapis.com"),
    ("eu", "https://www.zohoapis.eu"),
    ("in", "https://www.zohoapis.in"),
    ("au", "https://www.zohoapis.com.au"),
    ("jp", "https://www.zohoapis.jp"),
    ("ca", "https://www.zohoapis.ca"),
    ("sa", "https://www.zohoapis.sa"),
    ("uk", "https://www.zohoapis.uk"),
    ("cn", "https://www.zohoapis.com.cn"),
];

/// The `api_domain` Zoho answers for grants of data centre `data_center` (`"us"`, `"eu"`,
/// …), or `None` for an unknown data centre.
pub fn zoho_api_domain(data_center: &str) -> Option<&'static str> {
    ZOHO_DATA_CENTERS
        .iter()
        .find(|(name, _)| *name == data_center)
        .map(|(_, api_domain)| *api_domain)
}

/// Zoho: refreshes allowed per refresh token within [`ZOHO_THROTTLE_WINDOW`].
pub const ZOHO_REFRESHES_PER_WINDOW: usize = 10;

/// Zoho: the sliding window of the refresh throttle (10 minutes).
pub const ZOHO_THROTTLE_WINDOW: Duration = Duration::from_secs(600);

/// Zoho: unexpired access tokens per refresh token; minting one more invalidates the oldest.
pub const ZOHO_MAX_ACTIVE_ACCESS_TOKENS: usize = 15;

/// Zoho: refresh tokens per user (label); one more revokes the oldest.
pub const ZOHO_MAX_REFRESH_TOKENS_PER_USER: usize = 20;

/// Atlassian: a refresh token unused for this long (90 days) is dead.
pub const ATLASSIAN_INACTIVITY_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Atlassian: a grant's refresh tokens die this long (365 days) after the grant.
pub const ATLASSIAN_ABSOLUTE_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long an authorization code can be exchanged after it was issued (60 s).
pub const AUTHORIZATION_CODE_LIFETIME: Duration = Duration::from_secs(60);

/// How a [`FakeProvider`](crate::FakeProvider) starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeConfig {
    /// Which server the fake imitates (how refresh answers treat the refresh token, error
    /// shapes, endpoints).
    pub dialect: Dialect,
    /// Lifetime in seconds of the access tokens issued (default 3600); changeable later with
    /// [`FakeProvider::set_expires_in`](crate::FakeProvider::set_expires_in).
    pub expires_in: u64,
    /// Whether token answers carry `expires_in` (default true). When false the tokens still
    /// expire after [`FakeConfig::expires_in`]; the client is just not told.
    pub include_expires_in: bool,
}

impl Default for FakeConfig {
    /// [`Dialect::Generic`], one-hour access tokens, `expires_in` included in answers.
    fn default() -> Self {
        Self {
            dialect: Dialect::Generic,
            expires_in: 3600,
            include_expires_in: true,
        }
    }
}

/// The first tokens of a grant created by
/// [`FakeProvider::issue_grant`](crate::FakeProvider::issue_grant), as if an authorization
/// code had been exchanged. `Debug` does not print the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedTokens {
    /// The access token, live for `expires_in` seconds from issue.
    pub access_token: String,
    /// The grant's refresh token.
    pub refresh_token: String,
    /// The access token's lifetime in seconds.
    pub expires_in: u64,
}

impl fmt::Debug for IssuedTokens {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("IssuedTokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_generic_with_one_hour_tokens() {
        let config = FakeConfig::default();
        assert_eq!(config.dialect, Dialect::Generic);
        assert_eq!(config.expires_in, 3600);
        assert!(config.include_expires_in);
    }

    #[test]
    fn issued_tokens_debug_redacts_the_tokens() {
        let tokens = IssuedTokens {
            access_token: "at_secret".to_owned(),
            refresh_token: "rt_secret".to_owned(),
            expires_in: 60,
        };
        let printed = format!("{tokens:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("60"));
    }

    #[test]
    fn zoho_api_domains_are_known_per_data_center() {
        assert_eq!(zoho_api_domain("us"), Some("https://www.zohoapis.com"));
        assert_eq!(zoho_api_domain("ca"), Some("https://www.zohoapis.ca"));
        assert_eq!(zoho_api_domain("cn"), Some("https://www.zohoapis.com.cn"));
        assert_eq!(zoho_api_domain("xx"), None);
    }
}
