//! Least privilege: API keys with scopes (`tokenvisor_api_keys`: a visible prefix, the
//! SHA-256 of the key, scopes, optional tenant and integration restrictions, expiry and
//! revocation times; never the key itself), and the append-only audit trail
//! (`tokenvisor_audit_events`: who read which token or changed what, when, from where).

use sea_orm_migration::{prelude::*, schema::*};

/// Creates `tokenvisor_api_keys` and `tokenvisor_audit_events`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(text(ApiKeys::Id).primary_key())
                    .col(text(ApiKeys::Name))
                    .col(text(ApiKeys::Prefix))
                    .col(text(ApiKeys::SecretHash))
                    .col(text(ApiKeys::Scopes))
                    .col(text(ApiKeys::Tenants))
                    .col(text(ApiKeys::Integrations))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokenvisor_idx_api_keys_prefix")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::Prefix)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(text(AuditEvents::Id).primary_key())
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(text(AuditEvents::Action))
                    .col(text(AuditEvents::Request))
                    .col(integer(AuditEvents::Status))
                    .col(text(AuditEvents::KeyId))
                    .col(text_null(AuditEvents::ConnectionId))
                    .col(text_null(AuditEvents::TenantId))
                    .col(text_null(AuditEvents::Target))
                    .col(text_null(AuditEvents::CallerAddress))
                    .col(text_null(AuditEvents::TraceId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokenvisor_idx_audit_events_at")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ApiKeys::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    #[sea_orm(iden = "tokenvisor_api_keys")]
    Table,
    Id,
    Name,
    Prefix,
    SecretHash,
    Scopes,
    Tenants,
    Integrations,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    #[sea_orm(iden = "tokenvisor_audit_events")]
    Table,
    Id,
    At,
    Action,
    Request,
    Status,
    KeyId,
    ConnectionId,
    TenantId,
    Target,
    CallerAddress,
    TraceId,
}
