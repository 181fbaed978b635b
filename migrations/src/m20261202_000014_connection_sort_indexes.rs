//! Indexes for the connections table's orders and search (`Store::list_connections` with a
//! sort and a search, the dashboard's table and `GET /v1/connections?sort=...&q=...`):
//!
//! - `(expires_at, id)`, `(consecutive_failures, id)`, `(last_error_at, id)`: keyset pages in
//!   each order (`WHERE (value, id) > (?, ?) ORDER BY value, id LIMIT n`) are a range scan
//!   of one index in either direction, however deep the page, with ties broken by id;
//! - on PostgreSQL, `tenant_id` and `connection_key` with `text_pattern_ops`: the search's
//!   `LIKE 'prefix%'` reads an index range whatever the database's collation. SQLite's
//!   `GLOB 'prefix*'` uses the plain indexes (the tenant index of the first migration; the
//!   connection key's is added here).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Adds the sort and search indexes of the connections table.
#[derive(DeriveMigrationName)]
pub struct Migration;

const EXPIRES_AT_ID: &str = "tokenvisor_connections_expires_at_id_idx";
const FAILURES_ID: &str = "tokenvisor_connections_failures_id_idx";
const LAST_ERROR_ID: &str = "tokenvisor_connections_last_error_at_id_idx";
const TENANT_PREFIX: &str = "tokenvisor_connections_tenant_prefix_idx";
const KEY_PREFIX: &str = "tokenvisor_connections_key_prefix_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, column) in [
            (EXPIRES_AT_ID, Connections::ExpiresAt),
            (FAILURES_ID, Connections::ConsecutiveFailures),
            (LAST_ERROR_ID, Connections::LastErrorAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Connections::Table)
                        .col(column)
                        .col(Connections::Id)
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(&format!(
                "CREATE INDEX {TENANT_PREFIX} ON tokenvisor_connections (tenant_id text_pattern_ops)"
            ))
            .await?;
            db.execute_unprepared(&format!(
                "CREATE INDEX {KEY_PREFIX} ON tokenvisor_connections (connection_key text_pattern_ops)"
            ))
            .await?;
        } else {
            manager
                .create_index(
                    Index::create()
                        .name(KEY_PREFIX)
                        .table(Connections::Table)
                        .col(Connections::ConnectionKey)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        let names: &[&str] = if postgres {
            &[KEY_PREFIX, TENANT_PREFIX, LAST_ERROR_ID, FAILURES_ID, EXPIRES_AT_ID]
        } else {
            &[KEY_PREFIX, LAST_ERROR_ID, FAILURES_ID, EXPIRES_AT_ID]
        };
        for name in names {
            manager
                .drop_index(Index::drop().name(*name).table(Connections::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Connections {
    #[sea_orm(iden = "tokenvisor_connections")]
    Table,
    Id,
    ExpiresAt,
    ConsecutiveFailures,
    LastErrorAt,
    ConnectionKey,
}
