//! Indexes for the dashboard's overview at 100,000 connections and more
//! (`Store::connection_summary`): the counts by integration and status read an index
//! instead of the table, the tokens expiring within the hour are found by their expiry,
//! and the degraded connections are grouped by their last error from an index.

use sea_orm_migration::prelude::*;

/// Adds `tokenvisor_connections_integration_status_idx`,
/// `tokenvisor_connections_expires_at_idx` and `tokenvisor_connections_status_error_idx`.
#[derive(DeriveMigrationName)]
pub struct Migration;

const INTEGRATION_STATUS: &str = "tokenvisor_connections_integration_status_idx";
const EXPIRES_AT: &str = "tokenvisor_connections_expires_at_idx";
const STATUS_ERROR: &str = "tokenvisor_connections_status_error_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INTEGRATION_STATUS)
                    .table(Connections::Table)
                    .col(Connections::IntegrationId)
                    .col(Connections::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(EXPIRES_AT)
                    .table(Connections::Table)
                    .col(Connections::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(STATUS_ERROR)
                    .table(Connections::Table)
                    .col(Connections::Status)
                    .col(Connections::LastErrorCode)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [STATUS_ERROR, EXPIRES_AT, INTEGRATION_STATUS] {
            manager
                .drop_index(Index::drop().name(name).table(Connections::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Connections {
    #[sea_orm(iden = "tokenvisor_connections")]
    Table,
    IntegrationId,
    Status,
    ExpiresAt,
    LastErrorCode,
}
