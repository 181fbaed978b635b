//! Token requests: the lock-free hot path, and the calls that wait for the connection's
//! owner (bounded by [`TokenvisorConfig::token_wait`](crate::TokenvisorConfig::token_wait)).

use super::{Tokenvisor, api_span, record_result};
use crate::cluster::forward::{ForwardOp, token_digest};
use crate::connection::ConnectionMsg;
use crate::error::TokenError;
use crate::token::AccessToken;
use tokenvisor_core::{ConnectionId, SecretString};
use tracing::Instrument as _;

/// The token requests of a [`Tokenvisor`]: `tokenvisor.tokens().access_token(id)`.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    tokenvisor: &'a Tokenvisor,
}

impl<'a> Tokens<'a> {
    pub(super) fn new(tokenvisor: &'a Tokenvisor) -> Self {
        Self { tokenvisor }
    }

    /// A valid access token for the connection: from memory when it stays valid for at
    /// least `min(min_validity, lifetime / 4)`, otherwise after a refresh that concurrent
    /// callers share. Never makes a provider call for an inactive connection. Waits at
    /// most [`crate::TokenvisorConfig::token_wait`], then answers [`TokenError::Timeout`].
    ///
    /// When it has to wait for the actor (a refresh, an inactive connection) it is traced
    /// as a `tokenvisor.access_token` span, a child of the caller's current span (so a
    /// request span of the embedding application contains its token fetch); a refresh it
    /// starts is a child of it. Answers from memory are not traced.
    pub async fn access_token(self, id: ConnectionId) -> Result<AccessToken, TokenError> {
        // The hot path (a valid token in memory) creates no span: at 100k calls/s a span
        // each would cost more than the lookup and flood the tracing backend.
        if !self.tokenvisor.shared.is_shutting_down()
            && let Some(token) = self.tokenvisor.fast_token(id)
        {
            return Ok(token);
        }
        let span = api_span("tokenvisor.access_token", id);
        let wait = self.tokenvisor.shared.config.token_wait;
        // Another replica's connection: its committed row usually answers.
        let row_first = !self.tokenvisor.shared.serves(id);
        let result = self
            .tokenvisor
            .remote_token(
                id,
                wait,
                || ForwardOp::AccessToken,
                |reply| ConnectionMsg::AccessToken(reply, tracing::Span::current()),
                row_first,
            )
            .instrument(span.clone())
            .await;
        record_result(&span, &result);
        result
    }

    /// The API rejected `token` (HTTP 401). If it is still the current token, one refresh
    /// happens (within the spacing limit) and the new token is returned; if it was already
    /// replaced, the current token is returned without a provider call.
    pub async fn token_rejected(self, id: ConnectionId, token: &SecretString) -> Result<AccessToken, TokenError> {
        if let Some(current) = self.tokenvisor.fast_token(id)
            && current.secret != *token
        {
            return Ok(current);
        }
        let span = api_span("tokenvisor.token_rejected", id);
        let wait = self.tokenvisor.shared.config.token_wait;
        let result = self
            .tokenvisor
            .remote_token(
                id,
                wait,
                || ForwardOp::TokenRejected {
                    token_sha256: token_digest(token),
                },
                |reply| ConnectionMsg::TokenRejected {
                    token: token.clone(),
                    reply,
                    caller: tracing::Span::current(),
                },
                false,
            )
            .instrument(span.clone())
            .await;
        record_result(&span, &result);
        result
    }

    /// Refreshes now (within the spacing limit) and returns the new token.
    pub async fn force_refresh(self, id: ConnectionId) -> Result<AccessToken, TokenError> {
        let span = api_span("tokenvisor.force_refresh", id);
        let wait = self.tokenvisor.shared.config.operation_timeout;
        let result = self
            .tokenvisor
            .remote_token(
                id,
                wait,
                || ForwardOp::ForceRefresh,
                |reply| ConnectionMsg::ForceRefresh(reply, tracing::Span::current()),
                false,
            )
            .instrument(span.clone())
            .await;
        record_result(&span, &result);
        result
    }
}
