//! One actor per connection, the one writer of its connection in this process: owns the
//! token state, schedules refreshes, answers token requests, applies lifecycle
//! operations, and escalates what it cannot resolve.
//!
//! - `actor`: the [`ConnectionActor`] and its messages; it loads its row when spawned
//!   without it, then hands every message to its owner.
//! - `owner`: the connection's state and one function per transition (requests,
//!   refresh outcomes, escalation, lifecycle operations, the schedule).
//! - `phase`: the phases of an owner and their transitions.
//! - `refresh`: where a refresh happens (provider call, then compare-and-swap commit).

mod actor;
mod owner;
mod phase;
pub(crate) mod refresh;

pub(crate) use actor::{ConnectionActor, ConnectionArgs, ConnectionMsg, LifecycleOp, RETIRED};
pub(crate) use owner::status_error;
pub(crate) use refresh::PendingTokens;
