//! The connection actor: the one writer of its connection in this process.
//!
//! It loads its connection (when spawned without the row), then hands every message to
//! its [`Owner`](super::owner::Owner): token requests, lifecycle operations (deactivate,
//! activate, replace tokens, remove), the `needs_reauth` write, timers and refresh
//! outcomes, each handled in order.

use super::owner::Owner;
use super::refresh::RefreshResult;
use crate::error::TokenError;
use crate::registry::{Slot, SlotView};
use crate::shared::{IntegrationRef, SharedRef};
use crate::supervisor::SupervisorMsg;
use crate::token::AccessToken;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use tokenvisor_core::{Connection, ConnectionId, RefreshFailure, SecretString, TokenSet};

/// The stop reason of an owner that ends on purpose (its connection was removed or
/// does not exist): the supervisor does not restart it.
pub(crate) const RETIRED: &str = "retired";

pub(super) type TokenReply = RpcReplyPort<Result<AccessToken, TokenError>>;

/// The answer to a lifecycle operation: the row after it (`None` once removed).
pub(crate) type OperationReply = RpcReplyPort<Result<Option<Connection>, TokenError>>;

/// A change to the connection that only its owner writes.
#[derive(Debug, Clone)]
pub(crate) enum LifecycleOp {
    /// Disable: no token handed out, no provider call, until activated.
    Deactivate,
    /// Enable a disabled or `needs_reauth` connection.
    Activate,
    /// New tokens from a re-authorization (the connection becomes active).
    ReplaceTokens {
        tokens: TokenSet,
        metadata: serde_json::Map<String, serde_json::Value>,
    },
    /// Delete the connection and revoke its grant.
    Remove,
}

/// Messages a connection actor handles. Requests carry the caller's span: a refresh they
/// start is traced as its child.
pub(crate) enum ConnectionMsg {
    /// A caller needs a token valid for at least the minimum validity.
    AccessToken(TokenReply, tracing::Span),
    /// The API rejected this token (HTTP 401).
    TokenRejected {
        token: SecretString,
        reply: TokenReply,
        caller: tracing::Span,
    },
    /// An operator forces a refresh.
    ForceRefresh(TokenReply, tracing::Span),
    /// An operator (or the authorization flow) changes the connection.
    Lifecycle(LifecycleOp, OperationReply),
    /// The supervisor decided that the grant presented as `refresh_token` is dead: write
    /// `needs_reauth` if the stored row still holds it (`force`: whatever it holds, for a
    /// crash loop). `span` is the supervisor's decision span.
    MarkNeedsReauth {
        failure: RefreshFailure,
        refresh_token: Option<SecretString>,
        force: bool,
        span: tracing::Span,
    },
    /// Shutdown: try to commit kept tokens now; answers when done.
    Flush(RpcReplyPort<()>),
    /// Load the connection (an owner spawned without its row).
    Load,
    /// A scheduled refresh or retry is due (ignored unless `generation` is current).
    Timer { generation: u64 },
    /// The refresh task finished; `span` is the refresh span, still open: the result is
    /// handled inside it (escalations link to it).
    RefreshDone {
        result: Box<RefreshResult>,
        span: tracing::Span,
    },
    /// Test hook: panic inside the actor.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Everything a connection actor starts from.
pub(crate) struct ConnectionArgs {
    pub id: ConnectionId,
    /// The stored row and its integration, when the spawner has them; otherwise the
    /// actor loads them itself (retrying while the store fails).
    pub loaded: Option<(Connection, IntegrationRef)>,
    pub shared: SharedRef,
    pub slot: Arc<Slot>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Spawned at process start-up: spread the refreshes of tokens already due.
    pub startup: bool,
}

/// The connection actor (state lives in [`ConnectionState`]).
pub(crate) struct ConnectionActor;

/// An owner that is loading its row, or that owns it.
pub(crate) enum ConnectionState {
    Loading(Box<Loading>),
    Owning(Box<Owner>),
}

/// An owner spawned without its row: messages wait until it is loaded.
pub(crate) struct Loading {
    id: ConnectionId,
    shared: SharedRef,
    slot: Arc<Slot>,
    supervisor: ActorRef<SupervisorMsg>,
    deferred: Vec<ConnectionMsg>,
    attempt: u32,
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        match args.loaded {
            Some((connection, integration)) => {
                let mut owner = Owner::new(
                    connection,
                    integration,
                    args.shared,
                    args.slot,
                    args.supervisor,
                    args.startup,
                );
                owner.begin(&myself);
                Ok(ConnectionState::Owning(Box::new(owner)))
            }
            None => {
                args.slot.set_view(SlotView {
                    status: None,
                    supervising: false,
                });
                myself.send_message(ConnectionMsg::Load)?;
                Ok(ConnectionState::Loading(Box::new(Loading {
                    id: args.id,
                    shared: args.shared,
                    slot: args.slot,
                    supervisor: args.supervisor,
                    deferred: Vec::new(),
                    attempt: 0,
                })))
            }
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnectionMsg>,
        message: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        match state {
            ConnectionState::Owning(owner) => owner.handle(&myself, message).await,
            ConnectionState::Loading(loading) => {
                if !matches!(message, ConnectionMsg::Load) {
                    loading.deferred.push(message);
                    return Ok(());
                }
                if let Some(mut owner) = loading.load(&myself).await {
                    owner.begin(&myself);
                    let deferred = std::mem::take(&mut loading.deferred);
                    for message in deferred {
                        owner.handle(&myself, message).await;
                    }
                    *state = ConnectionState::Owning(owner);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnectionMsg>,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        if let ConnectionState::Owning(owner) = state {
            owner.cancel_timer();
        }
        Ok(())
    }
}

impl Loading {
    /// Loads the row and its integration. `None` when it cannot yet (retried later) or
    /// must not (the connection does not exist: the actor retires).
    async fn load(&mut self, myself: &ActorRef<ConnectionMsg>) -> Option<Box<Owner>> {
        let loaded = match self.shared.store.get_connection(self.id).await {
            Ok(Some(connection)) => match self.shared.integration(connection.integration_id).await {
                Ok(Some(integration)) => Ok(Some((connection, integration))),
                Ok(None) => {
                    self.retire(TokenError::IntegrationMisconfigured {
                        code: "integration_not_found".into(),
                        message: "the connection's integration does not exist".into(),
                    });
                    myself.stop(Some(RETIRED.into()));
                    return None;
                }
                Err(error) => Err(error),
            },
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        };
        match loaded {
            Ok(Some((connection, integration))) => Some(Box::new(Owner::new(
                connection,
                integration,
                self.shared.clone(),
                self.slot.clone(),
                self.supervisor.clone(),
                false,
            ))),
            Ok(None) => {
                self.retire(TokenError::NotFound);
                myself.stop(Some(RETIRED.into()));
                None
            }
            Err(error) => {
                // A store error is never a verdict: try again, with backoff.
                self.attempt += 1;
                let delay = std::time::Duration::from_millis(100 * 2u64.pow(self.attempt.min(8)))
                    .min(std::time::Duration::from_secs(10));
                tracing::warn!(connection.id = %self.id, error = %error, attempt = self.attempt, "failed to load connection; retrying");
                myself.send_after(delay, || ConnectionMsg::Load);
                None
            }
        }
    }

    /// Answers every waiting message with `error` and forgets the slot.
    fn retire(&mut self, error: TokenError) {
        for message in self.deferred.drain(..) {
            answer_with(message, &error);
        }
        self.shared.registry.remove(self.id);
    }
}

/// Answers a request message with `error` (other messages are dropped).
pub(super) fn answer_with(message: ConnectionMsg, error: &TokenError) {
    match message {
        ConnectionMsg::AccessToken(reply, _)
        | ConnectionMsg::ForceRefresh(reply, _)
        | ConnectionMsg::TokenRejected { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        ConnectionMsg::Lifecycle(_, reply) => {
            let _ = reply.send(Err(error.clone()));
        }
        ConnectionMsg::Flush(reply) => {
            let _ = reply.send(());
        }
        _ => {}
    }
}
