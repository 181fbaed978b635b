//! The initial schema: integrations, connections, their refresh history, and the
//! `meta` table that holds the encryption key check.

use sea_orm_migration::{prelude::*, schema::*};

/// Creates the four tables and their indexes.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Integrations::Table)
                    .if_not_exists()
                    .col(pk_uuid(Integrations::Id))
                    .col(text_uniq(Integrations::Name))
                    .col(text(Integrations::Provider))
                    .col(text(Integrations::ClientId))
                    .col(blob(Integrations::ClientSecret))
                    .col(json_binary(Integrations::Scopes))
                    .col(text_null(Integrations::RedirectUri))
                    .col(text_null(Integrations::DataCenter))
                    .col(text_null(Integrations::TokenUrl))
                    .col(text_null(Integrations::AuthorizeUrl))
                    .col(text_null(Integrations::RevokeUrl))
                    .col(json_binary(Integrations::Settings))
                    .col(timestamp_with_time_zone(Integrations::CreatedAt))
                    .col(timestamp_with_time_zone(Integrations::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Connections::Table)
                    .if_not_exists()
                    .col(pk_uuid(Connections::Id))
                    .col(text(Connections::TenantId))
                    .col(uuid(Connections::IntegrationId))
                    .col(blob(Connections::AccessToken))
                    .col(blob_null(Connections::RefreshToken))
                    .col(text(Connections::TokenType))
                    .col(text_null(Connections::Scope))
                    .col(timestamp_with_time_zone(Connections::IssuedAt))
                    .col(timestamp_with_time_zone(Connections::ExpiresAt))
                    .col(timestamp_with_time_zone_null(Connections::NextRefreshAt))
                    .col(timestamp_with_time_zone_null(Connections::LastRefreshAt))
                    .col(text(Connections::Status))
                    .col(boolean(Connections::IsActive))
                    .col(big_integer(Connections::RefreshFailures))
                    .col(integer(Connections::ConsecutiveFailures))
                    .col(text_null(Connections::LastErrorCode))
                    .col(text_null(Connections::LastErrorMessage))
                    .col(timestamp_with_time_zone_null(Connections::LastErrorAt))
                    .col(json_binary(Connections::Metadata))
                    .col(big_integer(Connections::Version))
                    .col(timestamp_with_time_zone(Connections::CreatedAt))
                    .col(timestamp_with_time_zone(Connections::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_connections_integration_id")
                            .from(Connections::Table, Connections::IntegrationId)
                            .to(Integrations::Table, Integrations::Id)
                            .on_delete(ForeignKeyAction::Restrict)
                            .on_update(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::col(Connections::Status).is_in(["active", "degraded", "needs_reauth", "disabled"]))
                    .to_owned(),
            )
            .await?;

        manager
            .create_index(
                Index::create()
                    .name("idx_connections_tenant_id")
                    .table(Connections::Table)
                    .col(Connections::TenantId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_connections_is_active_status")
                    .table(Connections::Table)
                    .col(Connections::IsActive)
                    .col(Connections::Status)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_connections_integration_id")
                    .table(Connections::Table)
                    .col(Connections::IntegrationId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RefreshAttempts::Table)
                    .if_not_exists()
                    .col(big_pk_auto(RefreshAttempts::Id))
                    .col(uuid(RefreshAttempts::ConnectionId))
                    .col(timestamp_with_time_zone(RefreshAttempts::StartedAt))
                    .col(text(RefreshAttempts::Reason))
                    .col(text(RefreshAttempts::Outcome))
                    .col(text_null(RefreshAttempts::ErrorCode))
                    .col(integer_null(RefreshAttempts::HttpStatus))
                    .col(big_integer(RefreshAttempts::DurationMs))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_attempts_connection_id")
                            .from(RefreshAttempts::Table, RefreshAttempts::ConnectionId)
                            .to(Connections::Table, Connections::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_attempts_connection_id_started_at")
                    .table(RefreshAttempts::Table)
                    .col(RefreshAttempts::ConnectionId)
                    .col(RefreshAttempts::StartedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Meta::Table)
                    .if_not_exists()
                    .col(text(Meta::Key).primary_key())
                    .col(blob(Meta::Value))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Meta::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(RefreshAttempts::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Connections::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Integrations::Table).if_exists().to_owned())
            .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Integrations {
    Table,
    Id,
    Name,
    Provider,
    ClientId,
    ClientSecret,
    Scopes,
    RedirectUri,
    DataCenter,
    TokenUrl,
    AuthorizeUrl,
    RevokeUrl,
    Settings,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Connections {
    Table,
    Id,
    TenantId,
    IntegrationId,
    AccessToken,
    RefreshToken,
    TokenType,
    Scope,
    IssuedAt,
    ExpiresAt,
    NextRefreshAt,
    LastRefreshAt,
    Status,
    IsActive,
    RefreshFailures,
    ConsecutiveFailures,
    LastErrorCode,
    LastErrorMessage,
    LastErrorAt,
    Metadata,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RefreshAttempts {
    Table,
    Id,
    ConnectionId,
    StartedAt,
    Reason,
    Outcome,
    ErrorCode,
    HttpStatus,
    DurationMs,
}

#[derive(DeriveIden)]
enum Meta {
    Table,
    Key,
    Value,
}
