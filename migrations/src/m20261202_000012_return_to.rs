//! Where the tenant's browser goes after consent: `tokenvisor_authorization_states.return_to`
//! (nullable; `NULL`: the callback's own page, as for every authorization started before
//! this migration), a URL on a host the service allows (`TOKENVISOR_RETURN_TO_HOSTS`).

use sea_orm_migration::{prelude::*, schema::*};

/// Adds `tokenvisor_authorization_states.return_to`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuthorizationStates::Table)
                    .add_column(text_null(AuthorizationStates::ReturnTo))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuthorizationStates::Table)
                    .drop_column(AuthorizationStates::ReturnTo)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum AuthorizationStates {
    #[sea_orm(iden = "tokenvisor_authorization_states")]
    Table,
    ReturnTo,
}
