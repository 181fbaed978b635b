//! sea-orm entities for the tables created by `tokenvisor-migration`. Secret columns
//! hold ciphertexts (see `crate::crypto`); these rows are never handed out directly.

pub mod authorization_state;
pub mod connection;
pub mod integration;
pub mod meta;
pub mod refresh_attempt;
