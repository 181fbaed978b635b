//! Webhooks you can rely on: endpoints as rows (`tokenvisor_webhook_endpoints`: URL,
//! event-type filter, enabled flag, signing secret encrypted with the store's keyring,
//! the previous secret during its grace period, optional per-endpoint limits), the
//! outbox's retry bookkeeping (`attempts`, `first_attempted_at`, `last_error`, `event_type`), and the
//! dead-letter list (`tokenvisor_webhook_dead_letters`) of messages that were given up
//! (attempt limit, age limit or outbox cap), kept until replayed or deleted.

use sea_orm_migration::{prelude::*, schema::*};

/// Creates `tokenvisor_webhook_endpoints` and `tokenvisor_webhook_dead_letters`, and
/// adds the retry columns to `tokenvisor_webhook_outbox`.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Endpoints::Table)
                    .col(text(Endpoints::Id).primary_key())
                    .col(text(Endpoints::Url))
                    .col(text(Endpoints::EventTypes))
                    .col(boolean(Endpoints::Enabled))
                    .col(text(Endpoints::Source))
                    .col(blob(Endpoints::Secret))
                    .col(blob_null(Endpoints::PreviousSecret))
                    .col(timestamp_with_time_zone_null(Endpoints::PreviousSecretExpiresAt))
                    .col(integer_null(Endpoints::MaxAttempts))
                    .col(big_integer_null(Endpoints::MaxAgeSeconds))
                    .col(big_integer_null(Endpoints::OutboxCap))
                    .col(timestamp_with_time_zone(Endpoints::CreatedAt))
                    .col(timestamp_with_time_zone(Endpoints::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeadLetters::Table)
                    .col(text(DeadLetters::Id).primary_key())
                    .col(text(DeadLetters::EndpointId))
                    .col(text(DeadLetters::MessageId))
                    .col(text(DeadLetters::EventType))
                    .col(text(DeadLetters::Body))
                    .col(integer(DeadLetters::Attempts))
                    .col(text_null(DeadLetters::LastError))
                    .col(timestamp_with_time_zone(DeadLetters::CreatedAt))
                    .col(timestamp_with_time_zone_null(DeadLetters::FirstAttemptedAt))
                    .col(timestamp_with_time_zone(DeadLetters::DeadLetteredAt))
                    .col(text(DeadLetters::Reason))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tokenvisor_idx_webhook_dead_letters_endpoint")
                    .table(DeadLetters::Table)
                    .col(DeadLetters::EndpointId)
                    .col(DeadLetters::DeadLetteredAt)
                    .to_owned(),
            )
            .await?;
        // SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(integer(Outbox::Attempts).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(timestamp_with_time_zone_null(Outbox::FirstAttemptedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(text_null(Outbox::LastError))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Outbox::Table)
                    .add_column(text(Outbox::EventType).default(""))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Outbox::EventType,
            Outbox::LastError,
            Outbox::FirstAttemptedAt,
            Outbox::Attempts,
        ] {
            manager
                .alter_table(Table::alter().table(Outbox::Table).drop_column(column).to_owned())
                .await?;
        }
        manager
            .drop_table(Table::drop().table(DeadLetters::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Endpoints::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Endpoints {
    #[sea_orm(iden = "tokenvisor_webhook_endpoints")]
    Table,
    Id,
    Url,
    EventTypes,
    Enabled,
    Source,
    Secret,
    PreviousSecret,
    PreviousSecretExpiresAt,
    MaxAttempts,
    MaxAgeSeconds,
    OutboxCap,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeadLetters {
    #[sea_orm(iden = "tokenvisor_webhook_dead_letters")]
    Table,
    Id,
    EndpointId,
    MessageId,
    EventType,
    Body,
    Attempts,
    LastError,
    CreatedAt,
    FirstAttemptedAt,
    DeadLetteredAt,
    Reason,
}

#[derive(DeriveIden)]
enum Outbox {
    #[sea_orm(iden = "tokenvisor_webhook_outbox")]
    Table,
    Attempts,
    FirstAttemptedAt,
    LastError,
    EventType,
}
