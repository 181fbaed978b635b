//! Authorizations under a connection key: `tokenvisor_authorization_states.connection_key`
//! (nullable; `NULL` is the `default` key, as for every authorization started before this
//! migration), the key the completed callback creates or updates the connection under.

use sea_orm_migration::{prelude::*, schema::*};

/// Adds `tokenvisor_authorization_states.connection_key`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuthorizationStates::Table)
                    .add_column(text_null(AuthorizationStates::ConnectionKey))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuthorizationStates::Table)
                    .drop_column(AuthorizationStates::ConnectionKey)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum AuthorizationStates {
    #[sea_orm(iden = "tokenvisor_authorization_states")]
    Table,
    ConnectionKey,
}
