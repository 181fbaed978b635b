//! TLS for tokenvisor's outgoing HTTPS, without touching process-wide state.
//!
//! reqwest is built with `rustls-no-provider`, so it would otherwise need a rustls
//! crypto provider installed process-wide (`CryptoProvider::install_default`). A
//! library must not do that: a host application that installs its own provider later
//! would panic. Instead the rustls configuration is built here with the ring provider
//! passed explicitly and handed to reqwest ready-made.

use rustls_platform_verifier::BuilderVerifierExt;
use std::sync::Arc;

/// The rustls client configuration of tokenvisor's HTTP clients: the ring crypto
/// provider passed explicitly (never installed process-wide), TLS 1.2 and 1.3, the
/// platform's trust roots through `rustls-platform-verifier` (what reqwest itself
/// uses), and HTTP/1.1 over ALPN.
pub fn rustls_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest client builder that uses [`rustls_client_config`]; add timeouts,
/// redirect policy and so on, then `build()`.
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(rustls_client_config()?))
}
