//! The host's own schema, with its own sea-orm-migration migrator (bookkept in the
//! default `seaql_migrations` table). Its `connections` table has nothing to do with
//! tokenvisor's `tokenvisor_connections`.

use sea_orm_migration::prelude::*;

/// The host's migrator.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(AccountsAndConnections)]
    }
}

struct AccountsAndConnections;

impl MigrationName for AccountsAndConnections {
    fn name(&self) -> &str {
        "m20240301_000001_accounts_and_connections"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AccountsAndConnections {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("accounts")
                    .col(ColumnDef::new("id").integer().not_null().primary_key())
                    .col(ColumnDef::new("email").text().not_null())
                    .to_owned(),
            )
            .await?;
        // The host's notion of a connection (a peer it syncs with), not an OAuth grant.
        manager
            .create_table(
                Table::create()
                    .table("connections")
                    .col(ColumnDef::new("id").integer().not_null().primary_key())
                    .col(ColumnDef::new("account_id").integer().not_null())
                    .col(ColumnDef::new("peer").text().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("connections").to_owned())
            .await?;
        manager.drop_table(Table::drop().table("accounts").to_owned()).await
    }
}
