//! How tokenvisor talks to authorization servers.
//!
//! - [`profile`]: the catalog of provider profiles (data, not scattered `if`s) and
//!   how an integration's settings override them.
//! - [`endpoint`]: an integration resolved against its profile into concrete,
//!   validated endpoints and request options.
//! - [`authorize`]: the authorization request URL, `state` and PKCE.
//! - [`client`]: the token endpoint client (refresh grant), with timeouts, an answer
//!   size cap and no redirects.
//! - [`error`]: provider errors and their classification (permanent, integration
//!   misconfigured, rate limited, transient).
//! - [`tls`]: the rustls configuration of outgoing HTTPS, with an explicit crypto
//!   provider (nothing is installed process-wide).

pub mod authorize;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod profile;
pub mod tls;

pub use client::{AccessibleResource, TokenClient, TokenClientOptions};
pub use endpoint::{EndpointError, ResolvedIntegration};
pub use error::ProviderError;
pub use profile::{BodyFormat, ClientAuth, ProviderProfile, RevokeStyle, SuccessRule};
