//! A programmable fake OAuth 2.0 authorization server for tests and benchmarks.
//!
//! [`FakeProvider::start`] binds a real HTTP server (axum) to `127.0.0.1:0` and spawns it
//! with `tokio::spawn` on the caller's runtime, so it keeps working under
//! `#[tokio::test(start_paused = true)]`: every clock reading inside the fake is a
//! [`tokio::time::Instant`]. The returned handle is cheap to clone and programs the fake
//! from Rust (fail the next requests, add latency, lose answers, change lifetimes) and reads
//! its counters. The server stops when the last clone of the handle is dropped.
//!
//! Dialects ([`Dialect`], chosen in [`FakeConfig`]):
//! - [`Dialect::Generic`]: RFC 6749; refresh answers repeat the refresh token.
//! - [`Dialect::NonRotating`]: refresh answers omit the refresh token.
//! - [`Dialect::Rotating`]: a new refresh token per refresh, the previous one usable for a
//!   grace period, reuse after it (or of an older one) revokes the family.
//! - [`Dialect::Zoho`]: Zoho Accounts with its data centres (`{base}/zoho/{dc}`), HTTP 200
//!   errors, no refresh token in refresh answers, `api_domain`, a throttle of 10 refreshes
//!   per 10 minutes per refresh token, at most 15 active access tokens per refresh token,
//!   and the CRM API's `Zoho-oauthtoken` scheme.
//! - [`Dialect::Atlassian`]: Atlassian 3LO: rotation with grace like `Rotating`, JSON-only
//!   token endpoint, 403 errors, refresh tokens only with `offline_access`, old access
//!   tokens revoked when the grace period ends, accessible resources and the Jira gateway.
//!
//! Endpoints, by dialect (`{base}` is [`FakeProvider::base_url`]):
//!
//! | | Generic, NonRotating, Rotating | Atlassian | Zoho (per data centre `dc`) |
//! |---|---|---|---|
//! | token | `POST /oauth/token` | `POST /oauth/token` (JSON) | `POST /zoho/{dc}/oauth/v2/token` |
//! | authorize | `GET /oauth/authorize` | `GET /authorize` | `GET /zoho/{dc}/oauth/v2/auth` |
//! | revoke | `POST /oauth/revoke` | `POST /oauth/revoke` | `POST /zoho/{dc}/oauth/v2/token/revoke?token=` |
//! | API | `GET /api/whoami` | `GET /oauth/token/accessible-resources`, `GET /ex/jira/{cloud_id}/rest/api/3/myself` | `GET /zoho/api/crm/v8/users` |
//!
//! `POST /oauth/revoke` and `GET /api/whoami` (Bearer) are served in every dialect.
//!
//! Every dialect supports the authorization-code flow: the authorization endpoint
//! auto-approves on behalf of [`FakeProvider::set_authorizing_user`] and redirects at once
//! with a single-use code, valid 60 s, bound to the `redirect_uri` and the PKCE challenge;
//! the token endpoint exchanges it (`grant_type=authorization_code`).
//!
//! Layout:
//! - [`config`]: [`Dialect`], [`FakeConfig`] and [`IssuedTokens`], the values a test hands in
//!   and gets back, and the dialects' constants (data centres, limits).
//! - `state`: the synchronous state machine (token families, rotation, grace, reuse
//!   detection, throttling, authorization codes, counters), unit-tested without HTTP.
//! - `server`: the axum router and the token and revocation endpoints; `authorize`: the
//!   authorization endpoints; `resource`: the protected APIs.
//! - [`provider`]: [`FakeProvider`], the handle.
//! - [`database`]: fresh SQLite and PostgreSQL databases for tests.
//!
//! The fake never logs tokens or client credentials.

mod authorize;
pub mod config;
pub mod database;
pub mod provider;
mod resource;
mod server;
mod state;
#[cfg(test)]
mod tests;

pub use config::{Dialect, FakeConfig, IssuedTokens, ZOHO_DATA_CENTERS, zoho_api_domain};
pub use provider::FakeProvider;
