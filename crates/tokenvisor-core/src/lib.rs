//! Domain types shared by every tokenvisor layer.
//!
//! - [`secret`]: the [`SecretString`] newtype that never prints its value.
//! - [`model`]: integrations, connections, statuses and token sets as stored.
//! - [`schedule`]: the pure refresh-schedule function and its policy.
//! - [`clock`]: wall-clock time, injectable for tests.
//! - [`event`]: the typed events an embedder subscribes to.
//! - [`failure`]: how a failed refresh is classified.
//! - [`token_check`]: [`check_token`], the validation every incoming token passes.

pub mod clock;
pub mod event;
pub mod failure;
pub mod model;
pub mod partition;
pub mod schedule;
pub mod secret;
pub mod token_check;

pub use clock::{Clock, SystemClock, TokioClock};
pub use event::{Event, EventBus, EventKind};
pub use failure::{FailureClass, RefreshFailure};
pub use model::{
    Connection, ConnectionCursor, ConnectionFilter, ConnectionId, ConnectionKey, ConnectionSort, ConnectionStatus,
    Integration, IntegrationId, InvalidConnectionKey, LastError, PendingAuthorization, RefreshAttempt,
    RefreshOutcomeKind, RefreshReason, SortValue, TenantId, TokenSet,
};
pub use partition::{PARTITIONS, Partition, partition_of};
pub use schedule::{SchedulePolicy, next_refresh_at, validity_floor};
pub use secret::SecretString;
pub use token_check::{InvalidToken, MAX_TOKEN_BYTES, TokenProblem, check_token};
