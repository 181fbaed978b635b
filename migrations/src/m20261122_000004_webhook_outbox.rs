//! The webhook outbox: every event waiting for delivery to a webhook endpoint, oldest
//! first, so an endpoint that is down (or a restart) loses none of them.

use sea_orm_migration::{prelude::*, schema::*};

/// Creates `tokenvisor_webhook_outbox`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookOutbox::Table)
                    .col(big_pk_auto(WebhookOutbox::Id))
                    .col(text(WebhookOutbox::Endpoint))
                    .col(text(WebhookOutbox::MessageId))
                    .col(text(WebhookOutbox::Body))
                    .col(timestamp_with_time_zone(WebhookOutbox::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokenvisor_idx_webhook_outbox_endpoint_id")
                    .table(WebhookOutbox::Table)
                    .col(WebhookOutbox::Endpoint)
                    .col(WebhookOutbox::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookOutbox::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookOutbox {
    #[sea_orm(iden = "tokenvisor_webhook_outbox")]
    Table,
    Id,
    Endpoint,
    MessageId,
    Body,
    CreatedAt,
}
