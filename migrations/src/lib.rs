//! The database schema of tokenvisor, as sea-orm migrations.
//!
//! The same migrations run on SQLite and PostgreSQL: uuids use the `uuid` column type,
//! times are UTC (`timestamp with time zone`), secrets are encrypted binary columns.
//!
//! - [`Migrator`]: every migration, in order; `Migrator::up(&db, None)` brings a
//!   database to the current schema.
//! - `m20250101_000001_initial`: `integrations`, `connections`, `refresh_attempts`, `meta`.
//! - `m20251122_000002_authorizations`: `authorization_states` (authorization-code flows in progress).
//! - `m20261122_000003_refresh_leases`: `refresh_leases` (cluster-wide single flight).
//! - `m20261122_000004_webhook_outbox`: `webhook_outbox` (events awaiting webhook delivery).

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m20250101_000001_initial;
mod m20251122_000002_authorizations;
mod m20261122_000003_refresh_leases;
mod m20261122_000004_webhook_outbox;

/// Every tokenvisor migration, in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_initial::Migration),
            Box::new(m20251122_000002_authorizations::Migration),
            Box::new(m20261122_000003_refresh_leases::Migration),
            Box::new(m20261122_000004_webhook_outbox::Migration),
        ]
    }
}
