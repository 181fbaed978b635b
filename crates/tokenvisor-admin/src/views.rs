//! What the admin API reads and answers. Views never carry a secret: a connection shows
//! at most an 8-character `token_preview`, an integration never its client secret. Only
//! [`TokenAnswer`] hands out an access token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvisor_core::{Connection, ConnectionStatus, Integration};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `POST /v1/integrations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// Unique name (1 to 128 characters, not only spaces).
    #[schema(min_length = 1, max_length = 128, example = "acme-crm")]
    pub name: String,
    /// Provider profile: `generic`, `zoho`, `zoho-desk`, `manageengine-sdp`, `atlassian`, `jira`.
    pub provider: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (stored encrypted, never shown again).
    pub client_secret: String,
    /// Scopes requested at authorization.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Redirect URI registered with the provider (default: this service's `/oauth/callback`).
    pub redirect_uri: Option<String>,
    /// Data centre (Zoho: `us`, `eu`, `in`, `au`, `jp`, `ca`, `sa`, `uk`, `cn`).
    pub data_center: Option<String>,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Authorization endpoint override.
    pub authorize_url: Option<String>,
    /// Revocation endpoint override.
    pub revoke_url: Option<String>,
    /// Profile overrides (`client_auth`, `body_format`, `extra_params`, ...).
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>, example = json!({"api_base_url": "https://api.example.com"}))]
    pub settings: Option<serde_json::Value>,
}

/// An integration, without its client secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IntegrationView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Provider profile.
    pub provider: String,
    /// OAuth client id.
    pub client_id: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Redirect URI.
    pub redirect_uri: Option<String>,
    /// Data centre.
    pub data_center: Option<String>,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Authorization endpoint override.
    pub authorize_url: Option<String>,
    /// Revocation endpoint override.
    pub revoke_url: Option<String>,
    /// Profile overrides; `null` when none were given.
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>)]
    pub settings: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl IntegrationView {
    /// The view of a stored integration (the secret left out).
    pub fn of(integration: &Integration) -> Self {
        Self {
            id: integration.id.0,
            name: integration.name.clone(),
            provider: integration.provider.clone(),
            client_id: integration.client_id.clone(),
            scopes: integration.scopes.clone(),
            redirect_uri: integration.redirect_uri.clone(),
            data_center: integration.data_center.clone(),
            token_url: integration.token_url.clone(),
            authorize_url: integration.authorize_url.clone(),
            revoke_url: integration.revoke_url.clone(),
            settings: integration.settings.clone(),
            created_at: integration.created_at,
            updated_at: integration.updated_at,
        }
    }
}

/// `PATCH /v1/integrations/{integration}`: the fields to change (the others stay).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegration {
    /// A new OAuth client id.
    pub client_id: Option<String>,
    /// A new OAuth client secret (stored encrypted, never shown); the next refresh of
    /// every connection uses it.
    pub client_secret: Option<String>,
    /// New scopes (replacing all of them).
    pub scopes: Option<Vec<String>>,
    /// A new redirect URI.
    pub redirect_uri: Option<String>,
    /// New profile overrides (replacing all of them).
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
}

/// `?cascade=` of `DELETE /v1/integrations/{integration}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteIntegrationQuery {
    /// Delete the integration's connections first (each revoked at the provider);
    /// without it, an integration in use is refused with 409 `integration_in_use`.
    pub cascade: Option<bool>,
}

/// `{items: [...]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IntegrationList {
    /// Every integration, by name.
    pub items: Vec<IntegrationView>,
}

/// `POST /v1/connections`: a connection with tokens obtained elsewhere.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    /// The tenant (1 to 128 characters from `A-Z a-z 0-9 . _ : @ -`).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9._:@-]{1,128}$",
        example = "acme-42"
    )]
    pub tenant_id: String,
    /// The integration's name or id.
    pub integration: String,
    /// The caller's name for this connection of the tenant (default `default`; same rules
    /// as `tenant_id`). Registering a tenant again under the same integration and key
    /// replaces that connection's tokens (200) instead of adding one (201).
    pub connection_key: Option<String>,
    /// The current access token.
    pub access_token: String,
    /// The refresh token, if any.
    pub refresh_token: Option<String>,
    /// Seconds until the access token expires (positive).
    pub expires_in: Option<i64>,
    /// When the access token expires (instead of `expires_in`).
    pub expires_at: Option<DateTime<Utc>>,
    /// Token type (default `Bearer`).
    pub token_type: Option<String>,
    /// Granted scope.
    pub scope: Option<String>,
    /// Provider metadata (`api_domain`, `accounts_server`, `org_id`, `cloud_id`...).
    #[schema(value_type = Option<HashMap<String, serde_json::Value>>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The status of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusView {
    /// Refreshing normally.
    Active,
    /// Refreshes fail transiently; retried, recovers by itself.
    Degraded,
    /// The tenant must re-authorize.
    NeedsReauth,
    /// Switched off by an operator.
    Disabled,
}

impl StatusView {
    /// The snake_case name (`needs_reauth`), as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::NeedsReauth => "needs_reauth",
            Self::Disabled => "disabled",
        }
    }
}

impl From<ConnectionStatus> for StatusView {
    fn from(status: ConnectionStatus) -> Self {
        match status {
            ConnectionStatus::Active => Self::Active,
            ConnectionStatus::Degraded => Self::Degraded,
            ConnectionStatus::NeedsReauth => Self::NeedsReauth,
            ConnectionStatus::Disabled => Self::Disabled,
        }
    }
}

/// The last error of a connection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastErrorView {
    /// Code (`invalid_grant`, `timeout`, `http_503`...).
    pub code: String,
    /// Message.
    pub message: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A connection as operators see it: state and counters, never a token (only the first
/// 8 characters of the access token in `token_preview`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionView {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Integration name.
    pub integration: String,
    /// Integration id.
    pub integration_id: Uuid,
    /// The caller's name for it, unique per tenant and integration (`default`).
    pub connection_key: String,
    /// Provider profile.
    pub provider: String,
    /// Status.
    pub status: StatusView,
    /// False once the connection needs re-authorization or is disabled.
    pub is_active: bool,
    /// Escalations to `needs_reauth` so far (kept across re-authorizations).
    pub refresh_failures: i64,
    /// Transient failures in a row.
    pub consecutive_failures: i32,
    /// Last successful refresh.
    pub last_refresh_at: Option<DateTime<Utc>>,
    /// When the current access token expires.
    pub expires_at: DateTime<Utc>,
    /// When the next refresh is planned.
    pub next_refresh_at: Option<DateTime<Utc>>,
    /// The last error.
    pub last_error: Option<LastErrorView>,
    /// At most the first 8 characters of the access token.
    pub token_preview: String,
    /// Provider metadata.
    #[schema(value_type = HashMap<String, serde_json::Value>)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl ConnectionView {
    /// The view of a stored connection; `integration` is its integration when known.
    pub fn of(connection: &Connection, integration: Option<&Integration>) -> Self {
        Self {
            id: connection.id.0,
            tenant_id: connection.tenant_id.to_string(),
            integration: integration.map(|i| i.name.clone()).unwrap_or_default(),
            integration_id: connection.integration_id.0,
            connection_key: connection.connection_key.to_string(),
            provider: integration.map(|i| i.provider.clone()).unwrap_or_default(),
            status: connection.status.into(),
            is_active: connection.is_active,
            refresh_failures: connection.refresh_failures,
            consecutive_failures: connection.consecutive_failures,
            last_refresh_at: connection.last_refresh_at,
            expires_at: connection.expires_at,
            next_refresh_at: connection.next_refresh_at,
            last_error: connection.last_error.as_ref().map(|e| LastErrorView {
                code: e.code.clone(),
                message: e.message.clone(),
                at: e.at,
            }),
            token_preview: connection.access_token.preview(),
            metadata: connection.metadata.clone(),
            created_at: connection.created_at,
            updated_at: connection.updated_at,
        }
    }
}

/// `{items: [...], next_cursor}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionList {
    /// Connections, in the order asked (by id by default).
    pub items: Vec<ConnectionView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/connections`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConnectionQuery {
    /// Only this tenant (1 to 128 characters from `A-Z a-z 0-9 . _ : @ -`).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant_id: Option<String>,
    /// Only this status (`active`, `degraded`, `needs_reauth`, `disabled`).
    #[param(value_type = Option<StatusView>)]
    pub status: Option<String>,
    /// Only this integration (name or id).
    pub integration: Option<String>,
    /// Only connections whose tenant id, connection key or integration name starts with
    /// this (case-sensitive prefix, answered from an index; 1 to 128 characters from
    /// `A-Z a-z 0-9 . _ : @ -`).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
    pub q: Option<String>,
    /// The order (default `id`); ties are broken by id, and connections without a last
    /// error come last when sorted by it. Every order pages through `cursor` (keyset).
    pub sort: Option<SortParam>,
    /// `asc` (default) or `desc`.
    pub order: Option<OrderParam>,
    /// The `next_cursor` of the previous page (of the same `sort`).
    pub cursor: Option<String>,
    /// Page size (1 to 500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

/// The orders of `GET /v1/connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortParam {
    /// By id (creation order).
    Id,
    /// By the access token's expiry.
    ExpiresAt,
    /// By the refresh failures in a row.
    Failures,
    /// By the time of the last error (connections without one last).
    LastError,
}

impl From<SortParam> for tokenvisor_core::ConnectionSort {
    fn from(sort: SortParam) -> Self {
        match sort {
            SortParam::Id => Self::Id,
            SortParam::ExpiresAt => Self::ExpiresAt,
            SortParam::Failures => Self::Failures,
            SortParam::LastError => Self::LastError,
        }
    }
}

/// The direction of a sorted listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderParam {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// Paging of `GET /v1/tenants/{tenant}/connections`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (1 to 500, default 100).
    pub limit: Option<u64>,
}

/// `GET /v1/connections/{id}/token`: the one answer that carries an access token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenAnswer {
    /// The access token, valid for at least the configured minimum.
    pub access_token: String,
    /// Token type (`Bearer`).
    pub token_type: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The API base URL for this connection, when the provider gives one (Zoho).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_domain: Option<String>,
}

/// `POST /v1/connections/{id}/token/rejected`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectedToken {
    /// The access token the API rejected.
    pub access_token: String,
}

/// `POST /v1/authorizations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAuthorization {
    /// The tenant (1 to 128 characters from `A-Z a-z 0-9 . _ : @ -`).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9._:@-]{1,128}$",
        example = "acme-42"
    )]
    pub tenant_id: String,
    /// The integration's name or id.
    pub integration: String,
    /// The connection to re-authorize.
    pub connection_id: Option<Uuid>,
    /// The key to connect under (default `default`; same rules as `tenant_id`). The
    /// completed authorization creates the tenant's connection under this key, or replaces
    /// the tokens of the one it already has under it. With `connection_id`, it must be that
    /// connection's key.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9._:@-]{1,128}$",
        example = "sandbox"
    )]
    pub connection_key: Option<String>,
    /// Where the tenant's browser goes after consent (an `https` or `http` URL on a host
    /// the service allows, `TOKENVISOR_RETURN_TO_HOSTS`; 2048 characters at most), with `tokenvisor_outcome=connected` and the
    /// `connection_id`, or `tokenvisor_outcome=error` and the `error` code, added to its
    /// query. Without it the callback ends on its own page.
    #[schema(example = "https://app.example.com/integrations/done")]
    pub return_to: Option<String>,
}

/// Where to send the tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthorizationView {
    /// The provider's authorization URL.
    pub authorize_url: String,
    /// When the authorization stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// `ok` or `ready`.
    pub status: String,
    /// Supervised connections (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervised: Option<usize>,
}

/// `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What it is for (1 to 128 characters).
    #[schema(min_length = 1, max_length = 128, example = "billing-service")]
    pub name: String,
    /// At least one of `admin` (everything), `operate` (manage connections and
    /// integrations; no token reads, no proxy), `tokens:read` (the token and proxy
    /// endpoints only).
    #[schema(min_items = 1, example = json!(["tokens:read"]))]
    pub scopes: Vec<String>,
    /// Only these tenants (default: every tenant). Not with `admin`.
    pub tenants: Option<Vec<String>>,
    /// Only these integrations, by name or id (stored as ids: a renamed integration
    /// stays covered). Not with `admin`.
    pub integrations: Option<Vec<String>>,
    /// When it stops working (default: never).
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key, without the key (only its visible prefix).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The visible part of the key: `tvk_<prefix>_...`.
    pub prefix: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// The tenants it is restricted to (empty: every tenant).
    pub tenants: Vec<String>,
    /// The integration ids it is restricted to (empty: every integration).
    pub integrations: Vec<Uuid>,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The answer to `POST /v1/api-keys`: the only time the key is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key (`tvk_<prefix>_<secret>`): send it as `Authorization: Bearer <key>`.
    /// Shown once; only its SHA-256 is stored.
    pub key: String,
    /// The key's description.
    #[serde(flatten)]
    pub api_key: ApiKeyView,
}

/// `GET /v1/api-keys`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    /// Every key, oldest first (revoked and expired ones included).
    pub items: Vec<ApiKeyView>,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this connection's events (its id).
    pub connection: Option<String>,
    /// Only this tenant's events.
    pub tenant: Option<String>,
    /// Only this API key's events (its id, or `admin` for the admin token).
    pub key: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// One entry of the audit trail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    /// Id (ordered by time).
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// `token_read`, `proxy` or `change`.
    pub action: String,
    /// Method and route (`GET /v1/connections/{id}/token`).
    pub request: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The API key's id, `admin` (the configured admin token) or `external`.
    pub key_id: String,
    /// The connection, if any.
    pub connection_id: Option<String>,
    /// The tenant, if known.
    pub tenant_id: Option<String>,
    /// What else was acted on (`integration:<name>`, `api-keys:<id>`...).
    pub target: Option<String>,
    /// The caller's address.
    pub caller_address: Option<String>,
    /// The W3C trace id, if the request had one.
    pub trace_id: Option<String>,
    /// A change to a connection: its status before (`active`, `degraded`, `needs_reauth`,
    /// `disabled`; null when it did not exist yet, and for every other event).
    pub status_before: Option<String>,
    /// A change to a connection: its status after (one of the above, or `deleted`).
    pub status_after: Option<String>,
}

/// `GET /v1/audit`: newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// The events.
    pub items: Vec<AuditEventView>,
    /// Pass as `cursor` to get older events; null on the last page.
    pub next_cursor: Option<String>,
}
