//! Integrations, connections and token sets, as the store keeps them.

use crate::secret::SecretString;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies a connection (one tenant's authorization of one integration).
    ConnectionId
);
uuid_id!(
    /// Identifies an integration (one OAuth app registration).
    IntegrationId
);

/// A tenant identifier chosen by the embedding application: 1 to 128 characters
/// from `A-Z a-z 0-9 . _ : @ -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// A tenant id that does not follow the rules of [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id: must be 1 to 128 characters from A-Z a-z 0-9 . _ : @ -")]
pub struct InvalidTenantId;

impl TenantId {
    /// Validates and wraps a tenant id.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let value = value.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-');
        if value.is_empty() || value.len() > 128 || !value.chars().all(valid_char) {
            return Err(InvalidTenantId);
        }
        Ok(Self(value))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The caller's name for one of a tenant's connections to an integration: a tenant has at
/// most one connection per (integration, key); [`ConnectionKey::DEFAULT`] (`default`)
/// unless chosen. 1 to 128 characters from `A-Z a-z 0-9 . _ : @ -` (the rules of
/// [`TenantId`]), so it can be a URL path segment as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionKey(String);

/// A connection key that does not follow the rules of [`ConnectionKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection key: must be 1 to 128 characters from A-Z a-z 0-9 . _ : @ -")]
pub struct InvalidConnectionKey;

impl ConnectionKey {
    /// The key of a connection registered without one.
    pub const DEFAULT: &'static str = "default";

    /// Validates and wraps a connection key.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidConnectionKey> {
        let value = value.into();
        TenantId::parse(value.as_str()).map_err(|_| InvalidConnectionKey)?;
        Ok(Self(value))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ConnectionKey {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl TryFrom<String> for ConnectionKey {
    type Error = InvalidConnectionKey;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<ConnectionKey> for String {
    fn from(value: ConnectionKey) -> Self {
        value.0
    }
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The life-cycle state of a connection.
///
/// Deliberately exhaustive (not `#[non_exhaustive]`): a host matches it to decide what
/// to do about a connection (carry on, wait, ask the tenant to re-authorize, leave it
/// off), and a new state would change that decision for every host, so it would come
/// with a major version and a migration of the stored `status` column, not silently
/// through a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Refreshing normally.
    Active,
    /// Refreshes are failing transiently; retried with backoff, recovers by itself.
    Degraded,
    /// The grant is gone: the tenant must re-authorize. Not supervised.
    NeedsReauth,
    /// Switched off by an operator. Not supervised.
    Disabled,
}

impl ConnectionStatus {
    /// The name stored in the database and shown in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::NeedsReauth => "needs_reauth",
            Self::Disabled => "disabled",
        }
    }

    /// Whether a connection in this state has a running actor.
    pub fn is_supervised(self) -> bool {
        matches!(self, Self::Active | Self::Degraded)
    }
}

/// A stored status name that is not one of the four statuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown connection status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for ConnectionStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "degraded" => Ok(Self::Degraded),
            "needs_reauth" => Ok(Self::NeedsReauth),
            "disabled" => Ok(Self::Disabled),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One OAuth app registration: a provider profile plus client credentials and overrides.
#[derive(Debug, Clone)]
pub struct Integration {
    /// Id.
    pub id: IntegrationId,
    /// Unique, human-chosen name.
    pub name: String,
    /// Provider profile name (`generic`, `zoho`, `atlassian`, ...).
    pub provider: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (encrypted at rest).
    pub client_secret: SecretString,
    /// Scopes requested at authorization.
    pub scopes: Vec<String>,
    /// Redirect URI registered with the provider.
    pub redirect_uri: Option<String>,
    /// Data centre (for providers that have several).
    pub data_center: Option<String>,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Authorization endpoint override.
    pub authorize_url: Option<String>,
    /// Revocation endpoint override.
    pub revoke_url: Option<String>,
    /// Profile options (client authentication, body format, limits...), as JSON.
    pub settings: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The last error recorded on a connection. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// A short machine-readable code (`invalid_grant`, `timeout`, `http_503`...).
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// One tenant's authorization of one integration, with its current tokens.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Id.
    pub id: ConnectionId,
    /// The tenant this connection belongs to.
    pub tenant_id: TenantId,
    /// The integration it authorizes.
    pub integration_id: IntegrationId,
    /// The caller's name for it, unique with the tenant and integration (`default`).
    pub connection_key: ConnectionKey,
    /// The current access token.
    pub access_token: SecretString,
    /// The current refresh token, if the provider issued one.
    pub refresh_token: Option<SecretString>,
    /// Token type (`Bearer`).
    pub token_type: String,
    /// Granted scope, as the provider reported it.
    pub scope: Option<String>,
    /// When the current access token was obtained.
    pub issued_at: DateTime<Utc>,
    /// When the current access token expires.
    pub expires_at: DateTime<Utc>,
    /// When the next refresh is planned.
    pub next_refresh_at: Option<DateTime<Utc>>,
    /// When the last successful refresh happened.
    pub last_refresh_at: Option<DateTime<Utc>>,
    /// Status.
    pub status: ConnectionStatus,
    /// False once the connection needs re-authorization or is disabled.
    pub is_active: bool,
    /// How many times the connection escalated to `needs_reauth` (kept across re-authorizations).
    pub refresh_failures: i64,
    /// Transient failures in a row since the last success.
    pub consecutive_failures: i32,
    /// The last error, if any.
    pub last_error: Option<LastError>,
    /// Provider metadata (`api_domain`, accounts server, cloud id...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Row version for compare-and-swap writes; incremented by every write.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Connection {
    /// The lifetime the provider gave the current access token.
    pub fn lifetime(&self) -> std::time::Duration {
        (self.expires_at - self.issued_at).to_std().unwrap_or_default()
    }

    /// Whether both stored connections hold the same token set.
    pub fn same_tokens_as(&self, other: &Connection) -> bool {
        self.access_token == other.access_token && self.refresh_token == other.refresh_token
    }

    /// Applies a new token set: the access token, expiry and scope are replaced; the
    /// refresh token is replaced only when the answer carries one (invariant 1).
    pub fn apply_token_set(&mut self, tokens: &TokenSet, now: DateTime<Utc>) {
        self.access_token = tokens.access_token.clone();
        if let Some(refresh_token) = &tokens.refresh_token {
            self.refresh_token = Some(refresh_token.clone());
        }
        if let Some(token_type) = &tokens.token_type {
            self.token_type = token_type.clone();
        }
        if tokens.scope.is_some() {
            self.scope = tokens.scope.clone();
        }
        for (key, value) in &tokens.metadata {
            self.metadata.insert(key.clone(), value.clone());
        }
        self.issued_at = now;
        self.expires_at = now + crate::schedule::span(tokens.expires_in);
    }
}

/// A token set obtained from a provider (refresh answer, code exchange, or import).
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The new access token.
    pub access_token: SecretString,
    /// A new refresh token, when the provider sent one (absent means: keep the old one).
    pub refresh_token: Option<SecretString>,
    /// Token type, when sent.
    pub token_type: Option<String>,
    /// Granted scope, when sent.
    pub scope: Option<String>,
    /// Lifetime of the access token.
    pub expires_in: std::time::Duration,
    /// Provider metadata found in the answer (e.g. Zoho `api_domain`).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Why a refresh was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshReason {
    /// The schedule said so.
    Scheduled,
    /// A caller needed a token and the current one was too close to expiry.
    OnDemand,
    /// A caller reported that the API rejected the current token.
    Rejected,
    /// An operator forced it.
    Forced,
    /// Start-up found the token inside its lead.
    Startup,
    /// Retry after a transient failure.
    Retry,
}

impl RefreshReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::OnDemand => "on_demand",
            Self::Rejected => "rejected",
            Self::Forced => "forced",
            Self::Startup => "startup",
            Self::Retry => "retry",
        }
    }
}

/// How a refresh attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshOutcomeKind {
    /// New tokens committed.
    Success,
    /// Transient failure (retried).
    Transient,
    /// Throttled by the provider (retried later).
    RateLimited,
    /// The integration is misconfigured (retried slowly).
    Misconfigured,
    /// Permanent failure (escalated).
    Permanent,
}

impl RefreshOutcomeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Misconfigured => "misconfigured",
            Self::Permanent => "permanent",
        }
    }
}

/// One entry of a connection's bounded refresh history.
#[derive(Debug, Clone)]
pub struct RefreshAttempt {
    /// The connection.
    pub connection_id: ConnectionId,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// Why.
    pub reason: RefreshReason,
    /// How it ended.
    pub outcome: RefreshOutcomeKind,
    /// Error code, on failure.
    pub error_code: Option<String>,
    /// The provider's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// How long it took, in milliseconds.
    pub duration_ms: i64,
}

/// An authorization in progress, between the redirect to the provider and its callback.
/// Only a hash of the `state` is kept, so a leaked row cannot be replayed.
#[derive(Debug, Clone)]
pub struct PendingAuthorization {
    /// SHA-256 (hex) of the `state` sent to the provider.
    pub state_hash: String,
    /// The tenant authorizing.
    pub tenant_id: TenantId,
    /// The integration.
    pub integration_id: IntegrationId,
    /// The connection being re-authorized, if any.
    pub connection_id: Option<ConnectionId>,
    /// The key the completed authorization connects under (`None`: the default key).
    pub connection_key: Option<ConnectionKey>,
    /// The redirect URI used (the code exchange must repeat it).
    pub redirect_uri: String,
    /// Where the tenant's browser goes once the callback is done (with the outcome in
    /// its query), if the authorization was started with one.
    pub return_to: Option<String>,
    /// The PKCE verifier, when PKCE is used.
    pub code_verifier: Option<SecretString>,
    /// When the authorization started.
    pub created_at: DateTime<Utc>,
    /// When the `state` stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// Filter for listing connections.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Only this tenant.
    pub tenant_id: Option<TenantId>,
    /// Only this status.
    pub status: Option<ConnectionStatus>,
    /// Only this integration.
    pub integration_id: Option<IntegrationId>,
    /// Only connections with this key.
    pub connection_key: Option<ConnectionKey>,
    /// Only connections whose tenant id, connection key or integration name starts with
    /// this (case-sensitive prefix: an index range, never a scan of every row).
    pub search: Option<String>,
    /// The order of the rows (ties broken by id).
    pub sort: ConnectionSort,
    /// Largest first (rows without the sort value still come last).
    pub descending: bool,
    /// Only rows after this one in the order (the cursor of keyset pagination): after its
    /// id alone when sorted by id, else after its sort value and id.
    pub after: Option<ConnectionId>,
    /// The sort value of the row `after` names (with a sort other than the id).
    pub after_value: Option<SortValue>,
    /// At most this many.
    pub limit: Option<u64>,
}

/// The orders a connection listing can have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnectionSort {
    /// By id (creation order): the default.
    #[default]
    Id,
    /// By the access token's expiry.
    ExpiresAt,
    /// By the count of refresh failures in a row.
    Failures,
    /// By the time of the last error; connections without an error come last.
    LastError,
}

impl ConnectionSort {
    /// Every order, as named in the API.
    pub const ALL: [ConnectionSort; 4] = [Self::Id, Self::ExpiresAt, Self::Failures, Self::LastError];

    /// The order's name in the API (`id`, `expires_at`, `failures`, `last_error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::ExpiresAt => "expires_at",
            Self::Failures => "failures",
            Self::LastError => "last_error",
        }
    }

    /// The order named `name` in the API.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sort| sort.as_str() == name)
    }

    /// The value `connection` is sorted by (`None` when sorted by id).
    pub fn value_of(self, connection: &Connection) -> Option<SortValue> {
        match self {
            Self::Id => None,
            Self::ExpiresAt => Some(SortValue::Time(connection.expires_at)),
            Self::Failures => Some(SortValue::Count(i64::from(connection.consecutive_failures))),
            Self::LastError => Some(
                connection
                    .last_error
                    .as_ref()
                    .map_or(SortValue::Missing, |error| SortValue::Time(error.at)),
            ),
        }
    }
}

/// A connection's value in a sort order other than the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortValue {
    /// A count (failures in a row).
    Count(i64),
    /// A time (expiry, last error).
    Time(DateTime<Utc>),
    /// No value (no last error): such rows come after every other, in both directions.
    Missing,
}

/// The position of a row in a sorted listing, as the API's opaque `cursor`: the id alone
/// when sorted by id (`0190...`), else `sort~value~id` (`expires_at~1767225600000000000~0190...`,
/// times in nanoseconds since 1970, `-` for a missing value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCursor {
    /// The order the cursor belongs to.
    pub sort: ConnectionSort,
    /// The row's sort value (`None` when sorted by id).
    pub value: Option<SortValue>,
    /// The row's id.
    pub id: ConnectionId,
}

impl ConnectionCursor {
    /// The cursor after `connection` in `sort`.
    pub fn after(sort: ConnectionSort, connection: &Connection) -> Self {
        Self {
            sort,
            value: sort.value_of(connection),
            id: connection.id,
        }
    }

    /// Reads a cursor of the order `sort`; `None` for anything this type did not write for
    /// that order.
    pub fn parse(sort: ConnectionSort, text: &str) -> Option<Self> {
        if sort == ConnectionSort::Id {
            let id = text.parse::<ConnectionId>().ok()?;
            return Some(Self { sort, value: None, id });
        }
        let mut parts = text.splitn(3, '~');
        let (name, value, id) = (parts.next()?, parts.next()?, parts.next()?);
        if name != sort.as_str() {
            return None;
        }
        let value = match (sort, value) {
            (ConnectionSort::LastError, "-") => SortValue::Missing,
            (ConnectionSort::Failures, count) => SortValue::Count(count.parse().ok()?),
            (_, nanos) => SortValue::Time(DateTime::from_timestamp_nanos(nanos.parse().ok()?)),
        };
        Some(Self {
            sort,
            value: Some(value),
            id: id.parse().ok()?,
        })
    }
}

impl fmt::Display for ConnectionCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            None => write!(f, "{}", self.id),
            Some(SortValue::Missing) => write!(f, "{}~-~{}", self.sort.as_str(), self.id),
            Some(SortValue::Count(count)) => write!(f, "{}~{count}~{}", self.sort.as_str(), self.id),
            Some(SortValue::Time(time)) => write!(
                f,
                "{}~{}~{}",
                self.sort.as_str(),
                time.timestamp_nanos_opt().unwrap_or(i64::MAX),
                self.id
            ),
        }
    }
}

impl ConnectionFilter {
    /// Whether `connection` comes after the filter's cursor in its order (always, without
    /// a cursor). The stores that sort in memory use it; SQL says the same.
    pub fn is_after_cursor(&self, connection: &Connection) -> bool {
        let Some(after) = self.after else {
            return true;
        };
        let by_id = if self.descending {
            connection.id < after
        } else {
            connection.id > after
        };
        let (Some(mine), Some(theirs)) = (self.sort.value_of(connection), self.after_value) else {
            return by_id;
        };
        match (mine, theirs) {
            (SortValue::Missing, SortValue::Missing) => by_id,
            (SortValue::Missing, _) => true,
            (_, SortValue::Missing) => false,
            _ if mine == theirs => by_id,
            _ => (mine > theirs) != self.descending,
        }
    }

    /// Orders two connections as the listing does: by the sort value (missing values
    /// last), then by id, both in the filter's direction.
    pub fn compare(&self, left: &Connection, right: &Connection) -> std::cmp::Ordering {
        let directed = |ordering: std::cmp::Ordering| {
            if self.descending { ordering.reverse() } else { ordering }
        };
        let by_value = match (self.sort.value_of(left), self.sort.value_of(right)) {
            (Some(SortValue::Missing), Some(SortValue::Missing)) => std::cmp::Ordering::Equal,
            (Some(SortValue::Missing), _) => std::cmp::Ordering::Greater,
            (_, Some(SortValue::Missing)) => std::cmp::Ordering::Less,
            (mine, theirs) => directed(mine.cmp(&theirs)),
        };
        by_value.then_with(|| directed(left.id.cmp(&right.id)))
    }

    /// Whether `text` is a valid search: the characters of tenant ids, connection keys and
    /// integration names (`A-Z a-z 0-9 . _ : @ -`), 1 to 128 of them.
    pub fn is_valid_search(text: &str) -> bool {
        !text.is_empty()
            && text.len() <= 128
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_keys_follow_the_tenant_id_rules_and_default_to_default() {
        assert_eq!(ConnectionKey::default().as_str(), "default");
        assert_eq!(
            ConnectionKey::parse("sandbox:eu-1").expect("valid").to_string(),
            "sandbox:eu-1"
        );
        for bad in ["", "a/b", "a b", &"k".repeat(129)] {
            assert!(ConnectionKey::parse(bad).is_err(), "{bad:?}");
        }
        let parsed: ConnectionKey = serde_json::from_str("\"prod\"").expect("deserializes");
        assert_eq!(parsed.as_str(), "prod");
        assert!(serde_json::from_str::<ConnectionKey>("\"a/b\"").is_err());
    }

    #[test]
    fn tenant_ids_are_validated() {
        assert!(TenantId::parse("acme-corp_1@eu").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("a b").is_err());
        assert!(TenantId::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn a_token_set_without_refresh_token_keeps_the_stored_one() {
        let now = Utc::now();
        let mut connection = sample_connection(now);
        let tokens = TokenSet {
            access_token: SecretString::new("new-access"),
            refresh_token: None,
            token_type: None,
            scope: None,
            expires_in: std::time::Duration::from_secs(3600),
            metadata: Default::default(),
        };
        connection.apply_token_set(&tokens, now);
        assert_eq!(connection.access_token.expose(), "new-access");
        assert_eq!(
            connection.refresh_token.as_ref().map(|t| t.expose()),
            Some("old-refresh")
        );
        assert_eq!(connection.expires_at, now + chrono::Duration::seconds(3600));
    }

    #[test]
    fn a_rotated_refresh_token_replaces_the_stored_one() {
        let now = Utc::now();
        let mut connection = sample_connection(now);
        let tokens = TokenSet {
            access_token: SecretString::new("new-access"),
            refresh_token: Some(SecretString::new("new-refresh")),
            token_type: None,
            scope: None,
            expires_in: std::time::Duration::from_secs(60),
            metadata: Default::default(),
        };
        connection.apply_token_set(&tokens, now);
        assert_eq!(
            connection.refresh_token.as_ref().map(|t| t.expose()),
            Some("new-refresh")
        );
    }

    fn sample_connection(now: DateTime<Utc>) -> Connection {
        Connection {
            id: ConnectionId::new(),
            tenant_id: TenantId::parse("t1").expect("valid"),
            integration_id: IntegrationId::new(),
            connection_key: ConnectionKey::default(),
            access_token: SecretString::new("old-access"),
            refresh_token: Some(SecretString::new("old-refresh")),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now,
            expires_at: now,
            next_refresh_at: None,
            last_refresh_at: None,
            status: ConnectionStatus::Active,
            is_active: true,
            refresh_failures: 0,
            consecutive_failures: 0,
            last_error: None,
            metadata: Default::default(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }
}
