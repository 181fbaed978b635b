//! What a change did to a connection's status, and indexes for the audit trail's filters.
//!
//! - `tokenvisor_audit_events.status_before`, `status_after` (nullable text; `NULL` for
//!   token reads, proxied calls, changes that name no connection and every event written
//!   before this migration): `active` → `disabled` for a deactivation, the status before
//!   → `deleted` for a deletion, no status → `active` for a new connection.
//! - `GET /v1/audit` filters on the key, the tenant or the connection and pages newest
//!   first by id (UUIDv7: ordered by time): one index per filter column with the id
//!   after it, so a page is an index range scan, not a sort of the whole table. (The
//!   retention's trim by `at` has its index since `m20261202_000009_api_keys`.)

use sea_orm_migration::{prelude::*, schema::*};

/// Adds `tokenvisor_audit_events.status_before`, `status_after` and the
/// `tokenvisor_idx_audit_events_{key,tenant,connection}` indexes.
#[derive(DeriveMigrationName)]
pub struct Migration;

const KEY: &str = "tokenvisor_idx_audit_events_key";
const TENANT: &str = "tokenvisor_idx_audit_events_tenant";
const CONNECTION: &str = "tokenvisor_idx_audit_events_connection";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [AuditEvents::StatusBefore, AuditEvents::StatusAfter] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AuditEvents::Table)
                        .add_column(text_null(column))
                        .to_owned(),
                )
                .await?;
        }
        for (name, column) in [
            (KEY, AuditEvents::KeyId),
            (TENANT, AuditEvents::TenantId),
            (CONNECTION, AuditEvents::ConnectionId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(column)
                        .col(AuditEvents::Id)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [CONNECTION, TENANT, KEY] {
            manager
                .drop_index(Index::drop().name(name).table(AuditEvents::Table).to_owned())
                .await?;
        }
        for column in [AuditEvents::StatusAfter, AuditEvents::StatusBefore] {
            manager
                .alter_table(Table::alter().table(AuditEvents::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditEvents {
    #[sea_orm(iden = "tokenvisor_audit_events")]
    Table,
    Id,
    KeyId,
    TenantId,
    ConnectionId,
    StatusBefore,
    StatusAfter,
}
