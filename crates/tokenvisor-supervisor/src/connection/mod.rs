//! One actor per connection: owns the token state, schedules refreshes, answers token
//! requests, and escalates what it cannot resolve.

mod actor;
pub(crate) mod refresh;

pub(crate) use actor::{ConnectionActor, ConnectionArgs, ConnectionMsg, status_error as status_error_for};
