//! Replicas that share the work: every connection records its partition
//! (`tokenvisor_core::partition_of`, indexed, so a replica loads the connections of the
//! partitions it owns); `tokenvisor_replicas` holds each replica's heartbeat and
//! advertised address; `tokenvisor_partitions` holds each partition's owner, its lease
//! (milliseconds since the Unix epoch, the database's clock) and its epoch, the fencing
//! token that grows on every change of owner. Partition rows are created by the first
//! claim.

use sea_orm_migration::sea_orm::{ConnectionTrait as _, Statement, Value};
use sea_orm_migration::{prelude::*, schema::*};
use std::collections::BTreeMap;
use tokenvisor_core::{ConnectionId, partition_of};

/// Adds `tokenvisor_connections.partition_id` (filled in for existing rows) and creates
/// `tokenvisor_replicas` and `tokenvisor_partitions`.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// Ids updated per statement while filling in the partitions of existing connections.
const BACKFILL_BATCH: usize = 1000;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .add_column(integer(Connections::PartitionId).default(0))
                    .to_owned(),
            )
            .await?;
        backfill(manager).await?;
        manager
            .create_index(
                Index::create()
                    .name("tokenvisor_connections_partition_idx")
                    .table(Connections::Table)
                    .col(Connections::PartitionId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Replicas::Table)
                    .col(text(Replicas::ReplicaId).primary_key())
                    .col(text_null(Replicas::AdvertiseUrl))
                    .col(big_integer(Replicas::StartedAtMs))
                    .col(big_integer(Replicas::HeartbeatAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Partitions::Table)
                    .col(integer(Partitions::PartitionId).primary_key())
                    .col(text_null(Partitions::Owner))
                    .col(big_integer(Partitions::Epoch))
                    .col(big_integer(Partitions::LeaseUntilMs))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Partitions::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Replicas::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("tokenvisor_connections_partition_idx")
                    .table(Connections::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .drop_column(Connections::PartitionId)
                    .to_owned(),
            )
            .await
    }
}

/// Sets the partition of every existing connection: ids are read once, grouped by
/// partition, and updated [`BACKFILL_BATCH`] at a time.
async fn backfill(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(backend, "SELECT id FROM tokenvisor_connections"))
        .await?;
    let mut by_partition: BTreeMap<u16, Vec<uuid::Uuid>> = BTreeMap::new();
    for row in rows {
        let id: uuid::Uuid = row.try_get("", "id")?;
        by_partition.entry(partition_of(ConnectionId(id))).or_default().push(id);
    }
    for (partition, ids) in by_partition {
        for chunk in ids.chunks(BACKFILL_BATCH) {
            let placeholders = (2..chunk.len() + 2)
                .map(|n| match backend {
                    sea_orm_migration::sea_orm::DbBackend::Postgres => format!("${n}"),
                    _ => "?".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let first = match backend {
                sea_orm_migration::sea_orm::DbBackend::Postgres => "$1",
                _ => "?",
            };
            let mut values = vec![Value::from(i32::from(partition))];
            values.extend(chunk.iter().map(|id| Value::from(*id)));
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                format!("UPDATE tokenvisor_connections SET partition_id = {first} WHERE id IN ({placeholders})"),
                values,
            ))
            .await?;
        }
    }
    Ok(())
}

#[derive(DeriveIden)]
enum Connections {
    #[sea_orm(iden = "tokenvisor_connections")]
    Table,
    PartitionId,
}

#[derive(DeriveIden)]
enum Replicas {
    #[sea_orm(iden = "tokenvisor_replicas")]
    Table,
    ReplicaId,
    AdvertiseUrl,
    StartedAtMs,
    HeartbeatAtMs,
}

#[derive(DeriveIden)]
enum Partitions {
    #[sea_orm(iden = "tokenvisor_partitions")]
    Table,
    PartitionId,
    Owner,
    Epoch,
    LeaseUntilMs,
}
