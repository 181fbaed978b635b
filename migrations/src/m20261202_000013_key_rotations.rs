//! Key rotation progress: `tokenvisor_key_rotations`, one row per target key and table
//! (the keyset cursor of the last row re-encrypted, counts, start, last update and end,
//! as Unix milliseconds), so `tokenvisor keys rotate` resumes after a crash where it stopped.

use sea_orm_migration::{prelude::*, schema::*};

/// Creates `tokenvisor_key_rotations`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KeyRotations::Table)
                    .col(text(KeyRotations::TargetKeyId))
                    .col(text(KeyRotations::TableName))
                    .col(text_null(KeyRotations::CursorKey))
                    .col(big_integer(KeyRotations::RowsRewritten))
                    .col(big_integer(KeyRotations::RowsCurrent))
                    .col(big_integer(KeyRotations::RowsRaced))
                    .col(big_integer(KeyRotations::StartedAtMs))
                    .col(big_integer(KeyRotations::UpdatedAtMs))
                    .col(big_integer_null(KeyRotations::FinishedAtMs))
                    .primary_key(
                        Index::create()
                            .name("tokenvisor_pk_key_rotations")
                            .col(KeyRotations::TargetKeyId)
                            .col(KeyRotations::TableName),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeyRotations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum KeyRotations {
    #[sea_orm(iden = "tokenvisor_key_rotations")]
    Table,
    TargetKeyId,
    TableName,
    CursorKey,
    RowsRewritten,
    RowsCurrent,
    RowsRaced,
    StartedAtMs,
    UpdatedAtMs,
    FinishedAtMs,
}
