//! Where a request goes when replicas share the work: to this process's owner of the
//! connection when this replica serves its partition, otherwise to the replica that
//! does (forwarded), answering from the committed row where that suffices. Without a
//! cluster every request is local.

use super::Tokenvisor;
use crate::cluster::forward::{ForwardOp, ForwardRequest, Unanswered, token_digest};
use crate::connection::{ConnectionMsg, LifecycleOp};
use crate::error::TokenError;
use crate::token::AccessToken;
use std::time::Duration;
use tokenvisor_core::{Connection, ConnectionId, SecretString, partition_of, validity_floor};
use tokio::time::Instant;

/// Where a routed request was answered.
pub(super) enum Routed<T> {
    /// By this process's owner.
    Local(T),
    /// By the owning replica: what it did is in the store now.
    Remote,
}

/// How long a caller waits between looks at who owns a connection whose owner cannot be
/// reached (the membership task reads the owners every heartbeat).
const OWNER_POLL: Duration = Duration::from_millis(250);

impl Tokenvisor {
    /// Sends a request to the connection's owner: this process's (`message`) when it
    /// serves the connection, otherwise the owning replica (`op`), waiting at most `wait`
    /// in all. An owner that cannot be reached is looked up again (a replica died and
    /// another takes its partitions over) until `wait` runs out:
    /// [`TokenError::OwnerUnavailable`].
    pub(super) async fn routed<T: Send + 'static>(
        &self,
        id: ConnectionId,
        wait: Duration,
        op: impl Fn() -> ForwardOp,
        message: impl Fn(ractor::RpcReplyPort<Result<T, TokenError>>) -> ConnectionMsg,
    ) -> Result<Routed<T>, TokenError> {
        let (Some(ownership), Some(forwarder)) = (&self.shared.ownership, &self.shared.forwarder) else {
            return self.call(id, wait, message).await.map(Routed::Local);
        };
        let partition = partition_of(id);
        let started = Instant::now();
        let mut last: Option<String> = None;
        loop {
            let remaining = wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(TokenError::OwnerUnavailable {
                    message: last.unwrap_or_else(|| "ownership of the connection is moving between replicas".into()),
                });
            }
            if self.shared.is_shutting_down() {
                return Err(TokenError::ShuttingDown);
            }
            if ownership.serves(partition) {
                match self.call(id, remaining, &message).await {
                    // The partition went elsewhere while asking: ask its new owner.
                    Err(error) if !ownership.serves(partition) && !matches!(error, TokenError::Timeout { .. }) => {
                        last = Some(error.to_string());
                        continue;
                    }
                    other => return other.map(Routed::Local),
                }
            }
            match ownership.owner_url(partition) {
                Some((owner, url)) => {
                    let request = ForwardRequest {
                        connection_id: id,
                        op: op(),
                    };
                    match forwarder.send(&url, &request, remaining).await {
                        Ok(Ok(())) => return Ok(Routed::Remote),
                        Ok(Err(error)) => return Err(error),
                        Err(Unanswered::NotOwner) => last = Some(format!("replica {owner} no longer owns it")),
                        Err(Unanswered::Unreachable(message)) => {
                            tracing::debug!(connection.id = %id, replica = %owner, "owner unreachable: {message}");
                            last = Some(format!("replica {owner} did not answer"));
                        }
                    }
                }
                None => last = Some("no live replica owns the connection's partition yet".into()),
            }
            tokio::time::sleep(OWNER_POLL.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }

    /// The committed row's token, when it may be handed out (active, supervised, valid
    /// for the minimum validity).
    pub(super) fn servable_row_token(&self, row: &Connection) -> Option<AccessToken> {
        if !row.is_active || !row.status.is_supervised() {
            return None;
        }
        let floor = validity_floor(row.issued_at, row.expires_at, &self.shared.config.schedule);
        (row.expires_at - self.shared.clock.now() >= floor).then(|| AccessToken::of(row))
    }

    /// The token of a connection another replica owns: the committed row's when it may
    /// be handed out; otherwise the owner is asked (`op`) and the row read again.
    pub(super) async fn remote_token(
        &self,
        id: ConnectionId,
        wait: Duration,
        op: impl Fn() -> ForwardOp,
        message: impl Fn(ractor::RpcReplyPort<Result<AccessToken, TokenError>>) -> ConnectionMsg,
        row_first: bool,
    ) -> Result<AccessToken, TokenError> {
        if row_first {
            match self.stored_token(id).await {
                // Not valid long enough: the owner refreshes it.
                Err(TokenError::OwnerUnavailable { .. }) => {}
                answer => return answer,
            }
        }
        match self.routed(id, wait, op, message).await? {
            Routed::Local(token) => Ok(token),
            Routed::Remote => self.stored_token(id).await,
        }
    }

    /// The committed row's token when it may be handed out; the row's status error when
    /// it is not supervised; [`TokenError::OwnerUnavailable`] when its token is not valid
    /// long enough.
    async fn stored_token(&self, id: ConnectionId) -> Result<AccessToken, TokenError> {
        let row = self
            .shared
            .store
            .get_connection(id)
            .await?
            .ok_or(TokenError::NotFound)?;
        self.servable_row_token(&row).ok_or_else(|| {
            if row.is_active && row.status.is_supervised() {
                TokenError::OwnerUnavailable {
                    message: "the stored token is not valid long enough and the owning replica has not refreshed it"
                        .into(),
                }
            } else {
                crate::connection::status_error(&row)
            }
        })
    }

    /// A lifecycle operation routed to the owner; the stored row after it.
    pub(super) async fn routed_lifecycle(&self, id: ConnectionId, op: LifecycleOp) -> Result<Connection, TokenError> {
        if self.shared.is_shutting_down() {
            return Err(TokenError::ShuttingDown);
        }
        let wait = self.shared.config.operation_timeout;
        let forward = || match &op {
            LifecycleOp::Deactivate => ForwardOp::Deactivate,
            LifecycleOp::Activate => ForwardOp::Activate,
            LifecycleOp::Remove => ForwardOp::Remove,
            LifecycleOp::ReplaceTokens { tokens, metadata } => ForwardOp::replace_tokens(tokens, metadata),
        };
        match self
            .routed(id, wait, forward, |reply| ConnectionMsg::Lifecycle(op.clone(), reply))
            .await?
        {
            Routed::Local(connection) => connection.ok_or(TokenError::NotFound),
            Routed::Remote => self.shared.store.get_connection(id).await?.ok_or(TokenError::NotFound),
        }
    }

    /// Executes a forwarded request with this process's owner (never forwarded again).
    pub(crate) async fn execute_locally(&self, id: ConnectionId, op: ForwardOp) -> Result<(), TokenError> {
        let config = &self.shared.config;
        match op {
            ForwardOp::AccessToken => self
                .call(id, config.token_wait, |reply| {
                    ConnectionMsg::AccessToken(reply, tracing::Span::current())
                })
                .await
                .map(drop),
            ForwardOp::TokenRejected { token_sha256 } => {
                // Only the digest travels: the rejected token is the current one or stale.
                let current = match self.fast_token(id) {
                    Some(token) => token,
                    None => {
                        self.call(id, config.token_wait, |reply| {
                            ConnectionMsg::AccessToken(reply, tracing::Span::current())
                        })
                        .await?
                    }
                };
                if token_digest(&current.secret) != token_sha256 {
                    return Ok(());
                }
                let token: SecretString = current.secret.clone();
                self.call(id, config.token_wait, |reply| ConnectionMsg::TokenRejected {
                    token: token.clone(),
                    reply,
                    caller: tracing::Span::current(),
                })
                .await
                .map(drop)
            }
            ForwardOp::ForceRefresh => self
                .call(id, config.operation_timeout, |reply| {
                    ConnectionMsg::ForceRefresh(reply, tracing::Span::current())
                })
                .await
                .map(drop),
            op => {
                let lifecycle = match op {
                    ForwardOp::Deactivate => LifecycleOp::Deactivate,
                    ForwardOp::Activate => LifecycleOp::Activate,
                    ForwardOp::Remove => LifecycleOp::Remove,
                    ForwardOp::ReplaceTokens {
                        access_token,
                        refresh_token,
                        token_type,
                        scope,
                        expires_in_secs,
                        token_metadata,
                        metadata,
                    } => LifecycleOp::ReplaceTokens {
                        tokens: tokenvisor_core::TokenSet {
                            access_token: SecretString::new(access_token),
                            refresh_token: refresh_token.map(SecretString::new),
                            token_type,
                            scope,
                            expires_in: std::time::Duration::from_secs(u64::try_from(expires_in_secs).unwrap_or(0)),
                            metadata: token_metadata,
                        },
                        metadata,
                    },
                    _ => return Err(TokenError::Internal("unknown forwarded operation".into())),
                };
                let wait = config.operation_timeout;
                let removing = matches!(lifecycle, LifecycleOp::Remove);
                match self
                    .call(id, wait, |reply| ConnectionMsg::Lifecycle(lifecycle.clone(), reply))
                    .await?
                {
                    Some(_) => Ok(()),
                    None if removing => Ok(()),
                    None => Err(TokenError::NotFound),
                }
            }
        }
    }
}
