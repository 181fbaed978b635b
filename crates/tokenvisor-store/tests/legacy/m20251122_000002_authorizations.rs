//! Authorizations in progress: the hashed `state` of each authorization-code flow, bound
//! to its tenant, integration and (for re-authorization) connection, with the encrypted
//! PKCE verifier.

use sea_orm_migration::{prelude::*, schema::*};

/// Creates `authorization_states`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuthorizationStates::Table)
                    .if_not_exists()
                    .col(text(AuthorizationStates::StateHash).primary_key())
                    .col(text(AuthorizationStates::TenantId))
                    .col(uuid(AuthorizationStates::IntegrationId))
                    .col(uuid_null(AuthorizationStates::ConnectionId))
                    .col(text(AuthorizationStates::RedirectUri))
                    .col(blob_null(AuthorizationStates::CodeVerifier))
                    .col(timestamp_with_time_zone(AuthorizationStates::CreatedAt))
                    .col(timestamp_with_time_zone(AuthorizationStates::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_authorization_states_integration")
                            .from(AuthorizationStates::Table, AuthorizationStates::IntegrationId)
                            .to(Integrations::Table, Integrations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_authorization_states_expires_at")
                    .table(AuthorizationStates::Table)
                    .col(AuthorizationStates::ExpiresAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuthorizationStates::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum AuthorizationStates {
    Table,
    StateHash,
    TenantId,
    IntegrationId,
    ConnectionId,
    RedirectUri,
    CodeVerifier,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Integrations {
    Table,
    Id,
}
