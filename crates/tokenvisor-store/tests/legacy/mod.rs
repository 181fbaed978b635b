//! tokenvisor's schema as it was before its names were prefixed (commit 71bb774): these
//! four migrations are verbatim copies of the ones that created every existing
//! database, with sea-orm-migration's default bookkeeping table `seaql_migrations`.
//! Running [`LegacyMigrator`] builds a database exactly as today's deployments have it.

use sea_orm_migration::prelude::*;

mod m20250101_000001_initial;
mod m20251122_000002_authorizations;
mod m20261122_000003_refresh_leases;
mod m20261122_000004_webhook_outbox;

/// The migrator of the old layout (default `seaql_migrations` bookkeeping).
pub struct LegacyMigrator;

#[async_trait::async_trait]
impl MigratorTrait for LegacyMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_initial::Migration),
            Box::new(m20251122_000002_authorizations::Migration),
            Box::new(m20261122_000003_refresh_leases::Migration),
            Box::new(m20261122_000004_webhook_outbox::Migration),
        ]
    }
}

/// The versions the old layout recorded in `seaql_migrations`.
pub const VERSIONS: [&str; 4] = [
    "m20250101_000001_initial",
    "m20251122_000002_authorizations",
    "m20261122_000003_refresh_leases",
    "m20261122_000004_webhook_outbox",
];

/// The table names of the old layout.
pub const TABLES: [&str; 7] = [
    "authorization_states",
    "connections",
    "integrations",
    "meta",
    "refresh_attempts",
    "refresh_leases",
    "webhook_outbox",
];
