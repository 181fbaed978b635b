//! Cluster-wide single flight: the replica refreshing a connection holds a lease on it
//! until a deadline (milliseconds since the Unix epoch, compared as integers on every
//! backend); the lease goes with its connection.

use sea_orm_migration::{prelude::*, schema::*};

/// Creates `refresh_leases`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RefreshLeases::Table)
                    .if_not_exists()
                    .col(uuid(RefreshLeases::ConnectionId).primary_key())
                    .col(text(RefreshLeases::Owner))
                    .col(big_integer(RefreshLeases::ExpiresAtMs))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_leases_connection")
                            .from(RefreshLeases::Table, RefreshLeases::ConnectionId)
                            .to(Connections::Table, Connections::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RefreshLeases::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum RefreshLeases {
    Table,
    ConnectionId,
    Owner,
    ExpiresAtMs,
}

#[derive(DeriveIden)]
enum Connections {
    Table,
    Id,
}
