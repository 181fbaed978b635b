//! tokenvisor's integration tests: one binary, one module per concern. Each test
//! names the invariant of docs/DESIGN.md ("Invariants") it guards.
#![allow(missing_docs, clippy::unwrap_used)]

mod admin_api;
mod admin_e2e;
mod admin_restart;
mod api_keys;
mod binary;
mod cli;
mod cluster;
mod commit_order;
mod dashboard;
mod escalation;
mod interleavings;
mod isolation;
mod keyed;
mod keys;
mod lifecycle;
mod outage;
mod outbox;
mod ownership;
mod providers;
mod proxy;
mod reauthorization;
mod replicas;
mod resources;
mod rotation;
mod schedule;
mod single_flight;
mod startup;
mod storage;
mod telemetry;
mod transient;
mod transport;
mod webhooks;
