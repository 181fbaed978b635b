//! [`FakeProvider`]: the cloneable handle that starts, programs and inspects the fake.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::config::{Dialect, FakeConfig, IssuedTokens, zoho_api_domain};
use crate::server::{
    ACCESSIBLE_RESOURCES_PATH, API_PATH, ATLASSIAN_AUTHORIZE_PATH, AUTHORIZE_PATH, ClientCredentials, REVOKE_PATH,
    ServerState, TOKEN_PATH, ZOHO_API_PATH, ZOHO_AUTHORIZE_SUFFIX, ZOHO_PREFIX, ZOHO_REVOKE_SUFFIX, ZOHO_TOKEN_SUFFIX,
    jira_myself_path, router,
};
use crate::state::{DEFAULT_DATA_CENTER, SharedState, State, lock, random_token};

/// A fake OAuth 2.0 authorization server listening on `127.0.0.1`, and the handle that
/// programs it.
///
/// Clones share one server; it stops when the last clone is dropped. All methods are
/// synchronous and never block on the server: they lock shared state briefly, never
/// across an await.
///
/// Endpoints of the Generic, NonRotating and Rotating dialects (see [`Dialect`] for how
/// Zoho and Atlassian differ, and the crate documentation for their endpoints):
/// - [`token_url`](Self::token_url) `POST /oauth/token`: `grant_type=refresh_token` with
///   `refresh_token`, or `grant_type=authorization_code` with `code`, `redirect_uri` and
///   (after a PKCE challenge) `code_verifier`; as a form or JSON body, client credentials
///   in the body (`client_id`, `client_secret`) or HTTP Basic. Errors follow RFC 6749 §5.2:
///   400 `invalid_request` (missing or repeated parameter, both authentication methods),
///   400 `unsupported_grant_type`, 400 `invalid_grant` (unknown, revoked or reused refresh
///   token; unknown, used or expired code, wrong `redirect_uri` or verifier), 401
///   `invalid_client`. Success is 200 with `Cache-Control: no-store` and
///   `{"access_token", "token_type": "Bearer", "expires_in", "refresh_token", "scope"}`,
///   where `expires_in` and `refresh_token` depend on [`FakeConfig`].
/// - [`authorize_url`](Self::authorize_url) `GET /oauth/authorize`: auto-approves on
///   behalf of [`set_authorizing_user`](Self::set_authorizing_user) and answers `302` to
///   `{redirect_uri}?code=...&state=...`; the code is single use, valid for
///   [`AUTHORIZATION_CODE_LIFETIME`](crate::config::AUTHORIZATION_CODE_LIFETIME), bound to
///   the `redirect_uri` and the PKCE challenge (`code_challenge`, `code_challenge_method`
///   `S256` or `plain`, the default). An unknown `client_id` or a missing or malformed
///   `redirect_uri` answers a 400 page, no redirect; other problems redirect with `error`
///   (`unsupported_response_type`, `invalid_request`, `access_denied` after
///   [`deny_next_authorization`](Self::deny_next_authorization)).
/// - [`revoke_url`](Self::revoke_url) `POST /oauth/revoke` (RFC 7009): parameter `token`;
///   a refresh token revokes its whole family, an access token only itself; 200 even for
///   unknown tokens, 400 `invalid_request` when `token` is missing. Client credentials
///   are not checked.
/// - [`api_url`](Self::api_url) `GET /api/whoami` with `Authorization: Bearer <token>`:
///   200 `{"family": label}` while the access token is live, else 401
///   `{"error": "invalid_token"}`.
#[derive(Clone)]
pub struct FakeProvider {
    inner: Arc<Inner>,
}

struct Inner {
    shared: SharedState,
    credentials: Arc<ClientCredentials>,
    dialect: Dialect,
    address: SocketAddr,
    server: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl fmt::Debug for FakeProvider {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("FakeProvider")
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

impl FakeProvider {
    /// Binds `127.0.0.1:0` and spawns the server on the current tokio runtime with
    /// `tokio::spawn`, so it shares the caller's (possibly paused) clock.
    ///
    /// # Errors
    /// When the listener cannot be bound.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeProvider> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let shared: SharedState = Arc::new(Mutex::new(State::new(&config)));
        let credentials = Arc::new(ClientCredentials::new(
            random_token("tv-fake-client-"),
            random_token("tv-fake-secret-"),
        ));
        let app = router(ServerState {
            shared: shared.clone(),
            credentials: credentials.clone(),
            dialect: config.dialect,
            base_url: Arc::from(format!("http://{address}")),
        });
        let server = tokio::spawn(async move {
            // `serve` only returns on a fatal listener error; the fake then stops answering.
            let _ = axum::serve(listener, app).await;
        })
        .abort_handle();
        Ok(FakeProvider {
            inner: Arc::new(Inner {
                shared,
                credentials,
                dialect: config.dialect,
                address,
                server,
            }),
        })
    }

    /// The dialect the fake was started with.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.inner.shared)
    }

    /// The server's base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.address)
    }

    /// The token endpoint, `{base_url}/oauth/token`; for [`Dialect::Zoho`] the one of the
    /// US data centre, `{base_url}/zoho/us/oauth/v2/token` (`/oauth/token` does not exist
    /// there).
    pub fn token_url(&self) -> String {
        match self.dialect() {
            Dialect::Zoho => format!("{}{ZOHO_TOKEN_SUFFIX}", self.zoho_accounts_server(DEFAULT_DATA_CENTER)),
            _ => format!("{}{TOKEN_PATH}", self.base_url()),
        }
    }

    /// The RFC 7009 revocation endpoint, `{base_url}/oauth/revoke` (served in every
    /// dialect); for [`Dialect::Zoho`] the US data centre's
    /// `{base_url}/zoho/us/oauth/v2/token/revoke`, which reads `token` from the query
    /// string (or a form body), answers 200 `{"status":"success"}`, and only knows tokens
    /// of its own data centre.
    pub fn revoke_url(&self) -> String {
        match self.dialect() {
            Dialect::Zoho => format!("{}{ZOHO_REVOKE_SUFFIX}", self.zoho_accounts_server(DEFAULT_DATA_CENTER)),
            _ => format!("{}{REVOKE_PATH}", self.base_url()),
        }
    }

    /// The authorization endpoint: `{base_url}/oauth/authorize` (Generic, NonRotating,
    /// Rotating), `{base_url}/authorize` (Atlassian; requires
    /// `audience=api.atlassian.com`), or for Zoho the US accounts server's
    /// `{base_url}/zoho/us/oauth/v2/auth` (every data centre's `…/oauth/v2/auth` works,
    /// except that Zoho China only serves users of `cn`, and only there).
    pub fn authorize_url(&self) -> String {
        match self.dialect() {
            Dialect::Generic | Dialect::NonRotating | Dialect::Rotating { .. } => {
                format!("{}{AUTHORIZE_PATH}", self.base_url())
            }
            Dialect::Atlassian { .. } => format!("{}{ATLASSIAN_AUTHORIZE_PATH}", self.base_url()),
            Dialect::Zoho => format!(
                "{}{ZOHO_AUTHORIZE_SUFFIX}",
                self.zoho_accounts_server(DEFAULT_DATA_CENTER)
            ),
        }
    }

    /// Zoho: the accounts server of data centre `dc`, `{base_url}/zoho/{dc}`. Below it:
    /// `POST /oauth/v2/token`, `POST /oauth/v2/token/revoke`, `GET /oauth/v2/auth`.
    /// Data centres the fake does not serve (see
    /// [`ZOHO_DATA_CENTERS`](crate::config::ZOHO_DATA_CENTERS)) answer 404.
    pub fn zoho_accounts_server(&self, dc: &str) -> String {
        format!("{}{ZOHO_PREFIX}/{dc}", self.base_url())
    }

    /// Zoho: the CRM API `{base_url}/zoho/api/crm/v8/users`. `GET` with
    /// `Authorization: Zoho-oauthtoken <access token>` answers 200
    /// `{"users":[{"id": label}]}` while the token is live, else 401
    /// `{"code":"INVALID_TOKEN","message":"invalid oauth token",…}`; a `Bearer` header is
    /// refused the same way. (The answers' `api_domain` are the real Zoho hosts; the fake
    /// serves every data centre's API here.)
    pub fn zoho_api_url(&self) -> String {
        format!("{}{ZOHO_API_PATH}", self.base_url())
    }

    /// Atlassian: `{base_url}/oauth/token/accessible-resources`. `GET` with a Bearer token
    /// answers 200 `[{"id": cloud_id, "name": label, "url": "https://{label}.atlassian.net",
    /// "scopes": [...], "avatarUrl": ...}]` while the token is live, else 401.
    pub fn accessible_resources_url(&self) -> String {
        format!("{}{ACCESSIBLE_RESOURCES_PATH}", self.base_url())
    }

    /// Atlassian: the Jira gateway's `{base_url}/ex/jira/{cloud_id}/rest/api/3/myself` for
    /// this fake's [`cloud_id`](Self::cloud_id). `GET` with a Bearer token answers 200
    /// `{"accountId", "displayName": label, "active": true}` while the token is live, 404
    /// for another cloud id, and for a dead token 401 or the status set with
    /// [`set_gateway_expired_status`](Self::set_gateway_expired_status).
    pub fn jira_myself_url(&self) -> String {
        format!("{}{}", self.base_url(), jira_myself_path(&self.cloud_id()))
    }

    /// Atlassian: the cloud id of the one site this fake serves (random per fake,
    /// UUID-shaped).
    pub fn cloud_id(&self) -> String {
        self.state().cloud_id.clone()
    }

    /// The protected API endpoint, `{base_url}/api/whoami`, served in every dialect (for
    /// Zoho's own API see [`zoho_api_url`](Self::zoho_api_url), for Atlassian's
    /// [`jira_myself_url`](Self::jira_myself_url)).
    pub fn api_url(&self) -> String {
        format!("{}{API_PATH}", self.base_url())
    }

    /// The only client id the token endpoint accepts (random per fake).
    pub fn client_id(&self) -> &str {
        &self.inner.credentials.client_id
    }

    /// The client secret the fake was started with (random per fake): the only one the
    /// token endpoint accepts until [`rotate_client_secret`](Self::rotate_client_secret).
    pub fn client_secret(&self) -> &str {
        &self.inner.credentials.client_secret
    }

    /// Rotates the client secret, as an operator does in the provider's console: from now
    /// on the token endpoint accepts only the returned secret (new and random), and
    /// answers any other, the previous one included, 401 `invalid_client`.
    pub fn rotate_client_secret(&self) -> String {
        let secret = random_token("tv-fake-secret-");
        *self.inner.credentials.rotated.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret.clone());
        secret
    }

    /// Token requests the fake refused for their client authentication (401
    /// `invalid_client`: a wrong or rotated-away secret).
    pub fn client_authentication_failures(&self) -> u64 {
        self.inner
            .credentials
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates a grant (a "token family") labelled `label` (e.g. a tenant id) and returns
    /// its first tokens, as if an authorization code had been exchanged. The access token
    /// lives for the provider's current lifetime.
    ///
    /// A label may be issued again: that creates a new family beside the old one; the
    /// per-label methods then cover all of them, and
    /// [`current_refresh_token`](Self::current_refresh_token) names the newest live one.
    ///
    /// For [`Dialect::Zoho`] the grant lives in data centre `"us"`: see
    /// [`issue_grant_in`](Self::issue_grant_in).
    pub fn issue_grant(&self, label: &str) -> IssuedTokens {
        self.state().issue_grant(label, None, Instant::now())
    }

    /// Like [`issue_grant`](Self::issue_grant), in Zoho data centre `data_center` (`"eu"`,
    /// …): only that data centre's token endpoint knows the refresh token, and answers
    /// carry its `api_domain`. The data centre is ignored by the other dialects.
    ///
    /// # Panics
    /// For [`Dialect::Zoho`], when the fake does not serve `data_center` (see
    /// [`ZOHO_DATA_CENTERS`](crate::config::ZOHO_DATA_CENTERS)).
    pub fn issue_grant_in(&self, label: &str, data_center: &str) -> IssuedTokens {
        let data_center = self.checked_data_center(data_center);
        self.state().issue_grant_in(label, data_center, None, Instant::now())
    }

    /// `data_center` for Zoho (panicking when unknown), `"us"` for the other dialects.
    fn checked_data_center<'a>(&self, data_center: &'a str) -> &'a str {
        if self.dialect() != Dialect::Zoho {
            return DEFAULT_DATA_CENTER;
        }
        assert!(
            zoho_api_domain(data_center).is_some(),
            "the fake serves no Zoho data centre {data_center:?}"
        );
        data_center
    }

    /// Sets who approves the authorization requests from now on: the grants their codes
    /// create are labelled `label`, and for Zoho live in `data_center` (the redirect then
    /// carries `location={data_center}` and that data centre's `accounts-server`, and only
    /// its token endpoint exchanges the code). Default: label `"user"`, data centre `"us"`.
    ///
    /// # Panics
    /// For [`Dialect::Zoho`], when the fake does not serve `data_center`.
    pub fn set_authorizing_user(&self, label: &str, data_center: &str) {
        let data_center = self.checked_data_center(data_center);
        self.state().set_authorizing_user(label, data_center);
    }

    /// Makes the next authorization request (with a known client and a valid
    /// `redirect_uri`) redirect with `error=access_denied` and its `state` instead of a
    /// code.
    pub fn deny_next_authorization(&self) {
        self.state().deny_next_authorization();
    }

    /// Atlassian: `true` makes refresh errors answer 403
    /// `{"error":"unauthorized_client","error_description":"refresh_token is invalid"}`
    /// (seen in the wild), `false` (the default) 403
    /// `{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}`
    /// (documented). Code exchange errors stay `invalid_grant`.
    pub fn set_atlassian_unauthorized_client(&self, on: bool) {
        self.state().atlassian_unauthorized_client = on;
    }

    /// Atlassian: the status the Jira gateway answers for a dead access token (default
    /// 401; the real gateway has been seen answering 403 and 404). A status outside
    /// 100..=999 answers 401.
    pub fn set_gateway_expired_status(&self, status: u16) {
        self.state().gateway_expired_status = status;
    }

    /// Like [`issue_grant`](Self::issue_grant), but every access token of this family, the
    /// first and each refreshed one, lives `expires_in` seconds whatever
    /// [`set_expires_in`](Self::set_expires_in) says.
    pub fn issue_grant_with_lifetime(&self, label: &str, expires_in: u64) -> IssuedTokens {
        self.state().issue_grant(label, Some(expires_in), Instant::now())
    }

    /// Revokes every family labelled `label`: their refresh tokens are refused (400
    /// `invalid_grant`, or the dialect's equivalent) and their access tokens stop being
    /// live.
    pub fn revoke_family(&self, label: &str) {
        self.state().revoke_label(label);
    }

    /// Makes one access token dead before its expiry (as Zoho's active-token cap or the end
    /// of an Atlassian grace period do): the APIs answer 401 for it from now on. Its family
    /// and other tokens are untouched; no counter moves. Unknown tokens are ignored.
    pub fn revoke_access_token(&self, access_token: &str) {
        self.state().revoke_access_token(access_token);
    }

    /// Sets the lifetime in seconds of access tokens issued from now on (families created
    /// with [`issue_grant_with_lifetime`](Self::issue_grant_with_lifetime) keep theirs).
    pub fn set_expires_in(&self, secs: u64) {
        self.state().expires_in = secs;
    }

    /// Sets whether token answers carry `expires_in` from now on.
    pub fn set_include_expires_in(&self, include: bool) {
        self.state().include_expires_in = include;
    }

    /// Makes the next `n` token requests answer `status` with `body`, whatever they ask,
    /// after the configured latency. They count in [`token_requests`](Self::token_requests),
    /// not in [`refreshes`](Self::refreshes), and change no token. Replaces an earlier
    /// `fail_next`; `n == 0` cancels it.
    ///
    /// `body` is sent as JSON, except `Value::Null`, sent as an empty body, and a
    /// `Value::String`, sent as raw `text/plain` (an HTML error page from a proxy, say).
    /// A Zoho-style error is `fail_next(1, 200, json!({"error": "invalid_code"}))`. A status
    /// outside 100..=999 answers 500.
    pub fn fail_next(&self, n: u32, status: u16, body: serde_json::Value) {
        self.state().fail_next(n, status, body);
    }

    /// Makes answers of [`fail_next`](Self::fail_next) carry `Retry-After` with this delay
    /// in whole seconds (rounded up); `None` removes the header.
    pub fn set_retry_after(&self, retry_after: Option<Duration>) {
        self.state().retry_after = retry_after;
    }

    /// Makes every token request sleep `d` (`tokio::time::sleep`) before it is answered.
    pub fn set_latency(&self, d: Duration) {
        self.state().latency = d;
    }

    /// Adds `d` of latency, on top of [`set_latency`](Self::set_latency), to token requests
    /// that present a refresh token of a family labelled `label`; zero removes it.
    pub fn set_family_latency(&self, label: &str, d: Duration) {
        self.state().set_family_latency(label, d);
    }

    /// Makes the next `n` successful refreshes change state server-side (new access token,
    /// rotation, counters) and then answer 500 with an empty body instead of the tokens, as
    /// if the answer were lost on the way. Replaces an earlier call; `n == 0` cancels it.
    pub fn drop_next_answers_after_rotation(&self, n: u32) {
        self.state().lose_next_answers(n);
    }

    /// Makes the next `n` successful refreshes answer WITHOUT `refresh_token` (Atlassian
    /// rarely does this; the client must keep the refresh token it has). Rotating dialects
    /// then do not rotate: the presented token stays current. Replaces an earlier call;
    /// `n == 0` cancels it.
    pub fn omit_refresh_token_in_next_answers(&self, n: u32) {
        self.state().omit_next_refresh_tokens(n);
    }

    /// Every POST to the token endpoint, whatever its outcome.
    pub fn token_requests(&self) -> u64 {
        self.state().counters.token_requests
    }

    /// Successful `refresh_token` grants, lost answers and grace-period reuses included.
    pub fn refreshes(&self) -> u64 {
        self.state().counters.refreshes
    }

    /// Zoho: successful refreshes at the token endpoint of data centre `dc`.
    pub fn refreshes_at_data_center(&self, dc: &str) -> u64 {
        self.state()
            .counters
            .refreshes_by_data_center
            .get(dc)
            .copied()
            .unwrap_or_default()
    }

    /// Zoho: refreshes refused by the throttle ("Access Denied").
    pub fn throttled_requests(&self) -> u64 {
        self.state().counters.throttled_requests
    }

    /// Successful `authorization_code` grants.
    pub fn code_exchanges(&self) -> u64 {
        self.state().counters.code_exchanges
    }

    /// Successful refreshes of the families labelled `label`.
    pub fn refreshes_for(&self, label: &str) -> u64 {
        self.state().refreshes_for(label)
    }

    /// When each successful refresh of the families labelled `label` happened, oldest first
    /// (the last 65,536 per family).
    pub fn refresh_times_for(&self, label: &str) -> Vec<Instant> {
        self.state().refresh_times_for(label)
    }

    /// Token requests presenting a family's refresh token that arrived while another such
    /// request of the same family was still being processed (latency included). Requests
    /// answered by [`fail_next`](Self::fail_next) count too: they are refresh attempts.
    pub fn overlapping_refreshes(&self) -> u64 {
        self.state().counters.overlapping_refreshes
    }

    /// Presentations of a rotated-away refresh token, inside or outside the grace period.
    pub fn reuse_events(&self) -> u64 {
        self.state().counters.reuse_events
    }

    /// Families revoked, for any reason: reuse detection,
    /// [`revoke_family`](Self::revoke_family), or the revocation endpoint.
    pub fn family_revocations(&self) -> u64 {
        self.state().counters.family_revocations
    }

    /// Requests to a revocation endpoint (the RFC 7009 one or Zoho's) that named a token.
    pub fn revocation_requests(&self) -> u64 {
        self.state().counters.revocation_requests
    }

    /// Whether `at` is a live access token: issued here, not expired, not revoked, and its
    /// family not revoked.
    pub fn is_access_token_live(&self, at: &str) -> bool {
        self.state().live_access_token_label(at, Instant::now()).is_some()
    }

    /// The current refresh token of the newest non-revoked family labelled `label`, if any.
    pub fn current_refresh_token(&self, label: &str) -> Option<String> {
        self.state().current_refresh_token(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dialect;
    use serde_json::{Value, json};

    const GRACE: Duration = Duration::from_secs(600);

    async fn start(dialect: Dialect) -> FakeProvider {
        FakeProvider::start(FakeConfig {
            dialect,
            ..FakeConfig::default()
        })
        .await
        .expect("the fake starts")
    }

    fn client() -> reqwest::Client {
        crate::tests::install_crypto_provider();
        reqwest::Client::new()
    }

    async fn refresh(fake: &FakeProvider, refresh_token: &str) -> reqwest::Response {
        client()
            .post(fake.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", fake.client_id()),
                ("client_secret", fake.client_secret()),
            ])
            .send()
            .await
            .expect("the fake answers")
    }

    async fn refresh_ok(fake: &FakeProvider, refresh_token: &str) -> Value {
        let response = refresh(fake, refresh_token).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        response.json().await.expect("a JSON answer")
    }

    async fn error_of(response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON error");
        (status, body["error"].as_str().unwrap_or_default().to_owned())
    }

    async fn whoami(fake: &FakeProvider, access_token: &str) -> reqwest::Response {
        client()
            .get(fake.api_url())
            .bearer_auth(access_token)
            .send()
            .await
            .expect("the fake answers")
    }

    #[tokio::test]
    async fn generic_refresh_answers_the_same_refresh_token() {
        let fake = start(Dialect::Generic).await;
        let grant = fake.issue_grant("tenant-1");
        let answer = refresh_ok(&fake, &grant.refresh_token).await;
        assert_eq!(answer["refresh_token"], grant.refresh_token.as_str());
        assert_eq!(answer["token_type"], "Bearer");
        assert_eq!(answer["expires_in"], 3600);
        assert!(answer["scope"].is_string());
        let access_token = answer["access_token"].as_str().expect("an access token");
        assert!(access_token.starts_with("at_"));
        assert_ne!(access_token, grant.access_token);
        assert_eq!(fake.refreshes(), 1);
        assert_eq!(fake.refreshes_for("tenant-1"), 1);
        assert_eq!(fake.token_requests(), 1);
    }

    #[tokio::test]
    async fn non_rotating_refresh_omits_the_refresh_token() {
        let fake = start(Dialect::NonRotating).await;
        let grant = fake.issue_grant("tenant-1");
        let answer = refresh_ok(&fake, &grant.refresh_token).await;
        assert!(answer.get("refresh_token").is_none(), "{answer}");
        refresh_ok(&fake, &grant.refresh_token).await;
        assert_eq!(fake.refreshes_for("tenant-1"), 2);
        assert_eq!(fake.reuse_events(), 0);
    }

    #[tokio::test]
    async fn json_bodies_and_basic_authentication_are_accepted() {
        let fake = start(Dialect::Generic).await;
        let grant = fake.issue_grant("tenant-1");
        let response = client()
            .post(fake.token_url())
            .json(&json!({
                "grant_type": "refresh_token",
                "refresh_token": grant.refresh_token,
                "client_id": fake.client_id(),
                "client_secret": fake.client_secret(),
            }))
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(response.status(), 200);
        let response = client()
            .post(fake.token_url())
            .basic_auth(fake.client_id(), Some(fake.client_secret()))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", grant.refresh_token.as_str()),
            ])
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(response.status(), 200);
        assert_eq!(fake.refreshes(), 2);
    }

    #[tokio::test]
    async fn bad_requests_get_rfc_6749_errors() {
        let fake = start(Dialect::Generic).await;
        let grant = fake.issue_grant("tenant-1");

        let wrong_secret = client()
            .post(fake.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", grant.refresh_token.as_str()),
                ("client_id", fake.client_id()),
                ("client_secret", "wrong"),
            ])
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(error_of(wrong_secret).await, (401, "invalid_client".to_owned()));

        let no_token = client()
            .post(fake.token_url())
            .basic_auth(fake.client_id(), Some(fake.client_secret()))
            .form(&[("grant_type", "refresh_token")])
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(error_of(no_token).await, (400, "invalid_request".to_owned()));

        let password_grant = client()
            .post(fake.token_url())
            .basic_auth(fake.client_id(), Some(fake.client_secret()))
            .form(&[("grant_type", "password"), ("username", "x")])
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(
            error_of(password_grant).await,
            (400, "unsupported_grant_type".to_owned())
        );

        let unknown_code = client()
            .post(fake.token_url())
            .basic_auth(fake.client_id(), Some(fake.client_secret()))
            .form(&[("grant_type", "authorization_code"), ("code", "x")])
            .send()
            .await
            .expect("the fake answers");
        assert_eq!(error_of(unknown_code).await, (400, "invalid_grant".to_owned()));

        let unknown = refresh(&fake, "rt_unknown").await;
        assert_eq!(error_of(unknown).await, (400, "invalid_grant".to_owned()));

        assert_eq!(fake.token_requests(), 5);
        assert_eq!(fake.refreshes(), 0);
    }

    #[tokio::test]
    async fn rotation_allows_the_previous_token_within_grace_and_revokes_on_older_reuse() {
        let fake = start(Dialect::Rotating { grace: GRACE }).await;
        let grant = fake.issue_grant("tenant-1");
        let first = refresh_ok(&fake, &grant.refresh_token).await;
        let second_refresh = first["refresh_token"].as_str().expect("rotated").to_owned();
        assert_ne!(second_refresh, grant.refresh_token);
        assert_eq!(fake.current_refresh_token("tenant-1"), Some(second_refresh.clone()));

        let retry = refresh_ok(&fake, &grant.refresh_token).await;
        assert_eq!(retry["refresh_token"], second_refresh.as_str());
        assert_eq!(fake.reuse_events(), 1);
        assert_eq!(fake.family_revocations(), 0);

        let rotated = refresh_ok(&fake, &second_refresh).await;
        let third_refresh = rotated["refresh_token"].as_str().expect("rotated").to_owned();
        let live_access = rotated["access_token"].as_str().expect("an access token").to_owned();
        assert!(fake.is_access_token_live(&live_access));

        let reused = refresh(&fake, &grant.refresh_token).await;
        assert_eq!(error_of(reused).await, (400, "invalid_grant".to_owned()));
        assert_eq!(fake.reuse_events(), 2);
        assert_eq!(fake.family_revocations(), 1);
        assert!(!fake.is_access_token_live(&live_access));
        let after = refresh(&fake, &third_refresh).await;
        assert_eq!(error_of(after).await, (400, "invalid_grant".to_owned()));
        assert_eq!(fake.current_refresh_token("tenant-1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_revokes_the_family_when_the_previous_token_comes_after_grace() {
        let fake = start(Dialect::Rotating { grace: GRACE }).await;
        let grant = fake.issue_grant("tenant-1");
        refresh_ok(&fake, &grant.refresh_token).await;
        tokio::time::sleep(GRACE + Duration::from_secs(1)).await;
        let late = refresh(&fake, &grant.refresh_token).await;
        assert_eq!(error_of(late).await, (400, "invalid_grant".to_owned()));
        assert_eq!(fake.reuse_events(), 1);
        assert_eq!(fake.family_revocations(), 1);
    }

    #[tokio::test]
    async fn fail_next_answers_the_injected_failure_then_recovers() {
        let fake = start(Dialect::Generic).await;
        let grant = fake.issue_grant("tenant-1");
        fake.fail_next(2, 503, json!({"error": "temporarily_unavailable"}));
        fake.set_retry_after(Some(Duration::from_secs(7)));
        for _ in 0..2 {
            let response = refresh(&fake, &grant.refresh_token).await;
            assert_eq!(response.headers()["retry-after"], "7");
            assert_eq!(error_of(response).await, (503, "temporarily_unavailable".to_owned()));
        }
        refresh_ok(&fake, &grant.refresh_token).await;
        assert_eq!(fake.token_requests(), 3);
        assert_eq!(fake.refreshes(), 1);
    }

    #[tokio::test]
    async fn fail_next_can_answer_zoho_style_errors_with_200_and_empty_bodies() {
        let fake = start(Dialect::NonRotating).await;
        let grant = fake.issue_grant("tenant-1");
        fake.fail_next(1, 200, json!({"error": "invalid_code"}));
        let response = refresh(&fake, &grant.refresh_token).await;
        assert!(response.headers().get("retry-after").is_none());
        assert_eq!(error_of(response).await, (200, "invalid_code".to_owned()));
        fake.fail_next(1, 502, Value::Null);
        let response = refresh(&fake, &grant.refresh_token).await;
        assert_eq!(response.status(), 502);
        assert!(response.bytes().await.expect("a body").is_empty());
        assert_eq!(fake.refreshes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_refreshes_of_one_family_count_as_overlapping() {
        let fake = start(Dialect::Generic).await;
        let slow = fake.issue_grant("slow");
        let other = fake.issue_grant("other");
        fake.set_family_latency("slow", Duration::from_secs(5));
        let started = Instant::now();
        let (first, second, third) = tokio::join!(
            refresh_ok(&fake, &slow.refresh_token),
            refresh_ok(&fake, &slow.refresh_token),
            refresh_ok(&fake, &other.refresh_token),
        );
        assert!(first["access_token"].is_string() && second["access_token"].is_string());
        assert!(third["access_token"].is_string());
        assert_eq!(fake.overlapping_refreshes(), 1);
        assert!(started.elapsed() >= Duration::from_secs(5));
        let times = fake.refresh_times_for("slow");
        assert_eq!(times.len(), 2);
        assert!(times.iter().all(|time| *time >= started + Duration::from_secs(5)));

        refresh_ok(&fake, &slow.refresh_token).await;
        assert_eq!(fake.overlapping_refreshes(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn global_latency_delays_every_token_request() {
        let fake = start(Dialect::Generic).await;
        fake.set_latency(Duration::from_millis(250));
        let started = Instant::now();
        let response = refresh(&fake, "rt_unknown").await;
        assert_eq!(response.status(), 400);
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_lost_answer_still_rotates_and_the_retry_within_grace_gets_the_new_token() {
        let fake = start(Dialect::Rotating { grace: GRACE }).await;
        let grant = fake.issue_grant("tenant-1");
        fake.drop_next_answers_after_rotation(1);
        let lost = refresh(&fake, &grant.refresh_token).await;
        assert_eq!(lost.status(), 500);
        assert!(lost.bytes().await.expect("a body").is_empty());
        assert_eq!(fake.refreshes(), 1);
        let rotated = fake.current_refresh_token("tenant-1").expect("a live family");
        assert_ne!(rotated, grant.refresh_token);

        let retry = refresh_ok(&fake, &grant.refresh_token).await;
        assert_eq!(retry["refresh_token"], rotated.as_str());
        assert_eq!(fake.reuse_events(), 1);
        assert_eq!(fake.family_revocations(), 0);
    }

    #[tokio::test]
    async fn whoami_answers_only_for_live_access_tokens() {
        let fake = start(Dialect::Generic).await;
        let grant = fake.issue_grant("tenant-1");
        let response = whoami(&fake, &grant.access_token).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("a JSON answer");
        assert_eq!(body["family"], "tenant-1");

        let unknown = whoami(&fake, "at_unknown").await;
        assert_eq!(error_of(unknown).await, (401, "invalid_token".to_owned()));
        let missing = client().get(fake.api_url()).send().await.expect("the fake answers");
        assert_eq!(missing.status(), 401);

        fake.revoke_family("tenant-1");
        let revoked = whoami(&fake, &grant.access_token).await;
        assert_eq!(revoked.status(), 401);
        let refused = refresh(&fake, &grant.refresh_token).await;
        assert_eq!(error_of(refused).await, (400, "invalid_grant".to_owned()));
        assert_eq!(fake.family_revocations(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn access_tokens_expire_on_the_paused_clock() {
        let fake = start(Dialect::Generic).await;
        fake.set_expires_in(60);
        let grant = fake.issue_grant("tenant-1");
        let long_lived = fake.issue_grant_with_lifetime("tenant-2", 7200);
        assert_eq!(grant.expires_in, 60);
        assert_eq!(long_lived.expires_in, 7200);
        assert_eq!(whoami(&fake, &grant.access_token).await.status(), 200);

        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(fake.is_access_token_live(&grant.access_token));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!fake.is_access_token_live(&grant.access_token));
        assert_eq!(whoami(&fake, &grant.access_token).await.status(), 401);
        assert_eq!(whoami(&fake, &long_lived.access_token).await.status(), 200);

        let refreshed = refresh_ok(&fake, &long_lived.refresh_token).await;
        assert_eq!(refreshed["expires_in"], 7200);
        let refreshed = refresh_ok(&fake, &grant.refresh_token).await;
        assert_eq!(refreshed["expires_in"], 60);
    }

    #[tokio::test]
    async fn expires_in_can_be_left_out_of_answers() {
        let fake = FakeProvider::start(FakeConfig {
            include_expires_in: false,
            ..FakeConfig::default()
        })
        .await
        .expect("the fake starts");
        let grant = fake.issue_grant("tenant-1");
        let answer = refresh_ok(&fake, &grant.refresh_token).await;
        assert!(answer.get("expires_in").is_none(), "{answer}");
    }

    #[tokio::test]
    async fn revoking_a_refresh_token_at_the_endpoint_revokes_its_family() {
        let fake = start(Dialect::Generic).await;
        let grant = fake.issue_grant("tenant-1");
        for token in ["unknown", grant.refresh_token.as_str()] {
            let response = client()
                .post(fake.revoke_url())
                .form(&[("token", token)])
                .send()
                .await
                .expect("the fake answers");
            assert_eq!(response.status(), 200);
        }
        assert_eq!(fake.revocation_requests(), 2);
        assert_eq!(fake.family_revocations(), 1);
        assert!(!fake.is_access_token_live(&grant.access_token));
    }

    #[tokio::test]
    async fn the_server_stops_when_the_last_handle_is_dropped() {
        let fake = start(Dialect::Generic).await;
        let url = fake.token_url();
        let clone = fake.clone();
        drop(fake);
        assert!(client().post(&url).send().await.is_ok());
        drop(clone);
        tokio::task::yield_now().await;
        crate::tests::install_crypto_provider();
        let fresh_client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a client");
        assert!(fresh_client.post(&url).send().await.is_err());
    }
}
