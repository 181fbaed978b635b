//! An index on `tokenvisor_refresh_attempts.started_at`: the dashboard's refreshes per
//! minute over the last hours count only the recent rows instead of scanning the whole
//! history (up to 50 rows per connection).

use sea_orm_migration::prelude::*;

/// Adds `tokenvisor_refresh_attempts_started_at_idx`.
#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "tokenvisor_refresh_attempts_started_at_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(RefreshAttempts::Table)
                    .col(RefreshAttempts::StartedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(RefreshAttempts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum RefreshAttempts {
    #[sea_orm(iden = "tokenvisor_refresh_attempts")]
    Table,
    StartedAt,
}
