//! The database schema of tokenvisor, as sea-orm migrations.
//!
//! The same migrations run on SQLite and PostgreSQL: uuids use the `uuid` column type,
//! times are UTC (`timestamp with time zone`), secrets are encrypted binary columns.
//!
//! tokenvisor can live in a host application's database, next to the host's own tables
//! and the host's own sea-orm-migration migrator:
//!
//! - every table, index, constraint and sequence of ours is named `tokenvisor_*`
//!   ([`TABLE_PREFIX`]);
//! - our migrations are bookkept in our own table, [`MIGRATION_TABLE`]
//!   (`tokenvisor_migrations`), never in sea-orm-migration's default `seaql_migrations`,
//!   so neither migrator ever sees the other's versions;
//! - tables are created without `IF NOT EXISTS`: a table of the same name already there
//!   fails the migration with the database's error, which names it, instead of being
//!   silently taken for ours.
//!
//! - [`Migrator`]: every migration, in order; `Migrator::up(&db, None)` brings a
//!   database to the current schema, upgrading the old unprefixed layout in place first
//!   (see [`legacy`]).
//! - `m20250101_000001_initial`: `tokenvisor_integrations`, `tokenvisor_connections`,
//!   `tokenvisor_refresh_attempts`, `tokenvisor_meta`.
//! - `m20251122_000002_authorizations`: `tokenvisor_authorization_states`
//!   (authorization-code flows in progress).
//! - `m20261122_000003_refresh_leases`: `tokenvisor_refresh_leases` (cluster-wide single flight).
//! - `m20261122_000004_webhook_outbox`: `tokenvisor_webhook_outbox` (events awaiting webhook delivery).
//! - `m20261202_000005_partitions`: `tokenvisor_connections.partition_id`,
//!   `tokenvisor_replicas` and `tokenvisor_partitions` (replicas that share the work).
//! - `m20261202_000006_connection_keys`: `tokenvisor_connections.connection_key`, unique
//!   per integration and tenant (one connection per tenant and key).
//! - `m20261202_000007_webhook_endpoints`: `tokenvisor_webhook_endpoints`,
//!   `tokenvisor_webhook_dead_letters` and the outbox's retry columns.
//! - `m20261202_000008_authorization_keys`: `tokenvisor_authorization_states.connection_key`
//!   (the key a completed authorization connects under).
//! - `m20261202_000009_api_keys`: `tokenvisor_api_keys` (scoped API keys, stored as
//!   hashes) and `tokenvisor_audit_events` (the append-only audit trail).
//! - `m20261202_000010_attempt_times`: an index on `tokenvisor_refresh_attempts.started_at`
//!   (recent refreshes counted per minute).
//! - `m20261202_000011_dashboard_indexes`: indexes on `tokenvisor_connections`
//!   (`integration_id, status`), (`expires_at`) and (`status, last_error_code`) for the
//!   dashboard's overview.
//! - `m20261202_000012_return_to`: `tokenvisor_authorization_states.return_to` (where the
//!   tenant's browser goes after consent).
//! - `m20261202_000013_key_rotations`: `tokenvisor_key_rotations` (progress of
//!   `tokenvisor keys rotate`, per target key and table, so a rotation resumes).
//! - `m20261202_000014_connection_sort_indexes`: (`expires_at, id`),
//!   (`consecutive_failures, id`), (`last_error_at, id`) for the connections' sorted keyset
//!   pages, and prefix indexes of `tenant_id` and `connection_key` for their search.
//! - `m20261202_000015_audit_statuses`: `tokenvisor_audit_events.status_before` and
//!   `status_after` (what a change did to a connection's status) and indexes on the audit
//!   trail's filter columns (key, tenant, connection; each with the id it pages by).

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DbBackend, SqliteTransactionMode, TransactionOptions, TransactionTrait as _,
};
use sea_orm_migration::{IntoSchemaManagerConnection, SchemaManagerConnection};

pub mod legacy;
mod m20250101_000001_initial;
mod m20251122_000002_authorizations;
mod m20261122_000003_refresh_leases;
mod m20261122_000004_webhook_outbox;
mod m20261202_000005_partitions;
mod m20261202_000006_connection_keys;
mod m20261202_000007_webhook_endpoints;
mod m20261202_000008_authorization_keys;
mod m20261202_000009_api_keys;
mod m20261202_000010_attempt_times;
mod m20261202_000011_dashboard_indexes;
mod m20261202_000012_return_to;
mod m20261202_000013_key_rotations;
mod m20261202_000014_connection_sort_indexes;
mod m20261202_000015_audit_statuses;

pub use legacy::has_legacy_layout;
pub use m20261202_000006_connection_keys::DEFAULT_CONNECTION_KEY;

/// The prefix of every table, index, constraint and sequence name of ours.
pub const TABLE_PREFIX: &str = "tokenvisor_";

/// Where our applied migrations are recorded (sea-orm-migration's bookkeeping columns
/// `version`, `applied_at`).
pub const MIGRATION_TABLE: &str = "tokenvisor_migrations";

/// The PostgreSQL advisory lock (`pg_advisory_xact_lock`) held while migrating, so that
/// replicas starting together migrate one after the other ("tokenvis" in ASCII).
pub const POSTGRES_MIGRATION_LOCK: i64 = 0x746f_6b65_6e76_6973;

/// Every tokenvisor migration, in order, bookkept in [`MIGRATION_TABLE`].
///
/// [`MigratorTrait::up`] is tokenvisor's own: in ONE transaction (on PostgreSQL under the
/// advisory lock [`POSTGRES_MIGRATION_LOCK`], on SQLite a `BEGIN IMMEDIATE` write
/// transaction), it first upgrades a database of the old unprefixed layout in place (see
/// [`legacy`]), then applies the pending migrations. Either everything is applied or
/// nothing is (both backends have transactional DDL); concurrent callers wait for each
/// other instead of failing. Migrations must therefore be runnable inside a transaction
/// (no `CREATE INDEX CONCURRENTLY`).
///
/// [`MigratorTrait::fresh`] drops only our tables (it rolls our migrations back and
/// applies them again), never a host's: sea-orm-migration's default drops every table
/// of the database.
///
/// Other methods (`status`, `get_pending_migrations`, `down`, ...) are
/// sea-orm-migration's, on [`MIGRATION_TABLE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

/// The plain sea-orm-migration machinery over our migrations and bookkeeping table;
/// [`Migrator`] wraps its `up` in the transaction and the legacy upgrade.
struct Steps;

#[async_trait::async_trait]
impl MigratorTrait for Steps {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_initial::Migration),
            Box::new(m20251122_000002_authorizations::Migration),
            Box::new(m20261122_000003_refresh_leases::Migration),
            Box::new(m20261122_000004_webhook_outbox::Migration),
            Box::new(m20261202_000005_partitions::Migration),
            Box::new(m20261202_000006_connection_keys::Migration),
            Box::new(m20261202_000007_webhook_endpoints::Migration),
            Box::new(m20261202_000008_authorization_keys::Migration),
            Box::new(m20261202_000009_api_keys::Migration),
            Box::new(m20261202_000010_attempt_times::Migration),
            Box::new(m20261202_000011_dashboard_indexes::Migration),
            Box::new(m20261202_000012_return_to::Migration),
            Box::new(m20261202_000013_key_rotations::Migration),
            Box::new(m20261202_000014_connection_sort_indexes::Migration),
            Box::new(m20261202_000015_audit_statuses::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        Alias::new(MIGRATION_TABLE).into_iden()
    }
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Steps::migrations()
    }

    fn migration_table_name() -> DynIden {
        Steps::migration_table_name()
    }

    async fn up<'c, C>(db: C, steps: Option<u32>) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        let db = db.into_database_executor();
        let txn = begin_migration(&db).await?;
        legacy::adopt(&txn).await?;
        Steps::up(&txn, steps).await?;
        txn.commit().await
    }

    async fn fresh<'c, C>(db: C) -> Result<(), DbErr>
    where
        C: IntoSchemaManagerConnection<'c>,
    {
        let db = db.into_database_executor();
        let txn = begin_migration(&db).await?;
        Steps::down(&txn, None).await?;
        Self::up(&txn, None).await?;
        txn.commit().await
    }
}

/// The transaction migrations run in: on PostgreSQL holding [`POSTGRES_MIGRATION_LOCK`],
/// on SQLite holding the write lock from its start.
async fn begin_migration(
    db: &SchemaManagerConnection<'_>,
) -> Result<sea_orm_migration::sea_orm::DatabaseTransaction, DbErr> {
    let options = match db.get_database_backend() {
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        },
        _ => TransactionOptions::default(),
    };
    let txn = db.begin_with_options(options).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({POSTGRES_MIGRATION_LOCK})"))
            .await?;
    }
    Ok(txn)
}
