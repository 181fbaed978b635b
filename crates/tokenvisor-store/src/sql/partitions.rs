//! [`PartitionStore`] on PostgreSQL: heartbeats in `tokenvisor_replicas`, partition
//! leases in `tokenvisor_partitions` (each change of owner is one atomic upsert that
//! raises the epoch), LISTEN/NOTIFY on a dedicated connection. "Now" is always the
//! database's clock.

use super::{SqlStore, db_error, now_ms, statement, supervised_connections};
use crate::StoreError;
use crate::entity::connection;
use crate::partitions::{Claimed, Notification, PartitionRecord, PartitionStore, ReplicaRecord};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ColumnTrait as _, ConnectionTrait as _, DbBackend, QueryFilter as _, QuerySelect as _, Value};
use std::time::Duration;
use tokenvisor_core::{Connection, ConnectionId, Partition};

/// Replicas silent this long are forgotten (their rows pruned by the next heartbeat).
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}

fn positive(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `(partitions, epochs)` as two PostgreSQL arrays.
fn split(held: &[(Partition, i64)]) -> (Value, Value) {
    let partitions: Vec<i32> = held.iter().map(|(partition, _)| i32::from(*partition)).collect();
    let epochs: Vec<i64> = held.iter().map(|(_, epoch)| *epoch).collect();
    (Value::from(partitions), Value::from(epochs))
}

#[async_trait]
impl PartitionStore for SqlStore {
    async fn heartbeat(&self, replica_id: &str, advertise_url: Option<&str>) -> Result<(), StoreError> {
        let backend = self.db.get_database_backend();
        let now = now_ms(backend);
        let upsert = statement(
            backend,
            &format!(
                "INSERT INTO tokenvisor_replicas (replica_id, advertise_url, started_at_ms, heartbeat_at_ms) \
                 VALUES ($1, $2, {now}, {now}) ON CONFLICT (replica_id) DO UPDATE \
                 SET advertise_url = excluded.advertise_url, heartbeat_at_ms = excluded.heartbeat_at_ms"
            ),
            vec![
                Value::from(replica_id.to_owned()),
                Value::from(advertise_url.map(str::to_owned)),
            ],
        );
        self.db
            .execute_raw(upsert)
            .await
            .map_err(db_error("recording a heartbeat"))?;
        let prune = statement(
            backend,
            &format!("DELETE FROM tokenvisor_replicas WHERE heartbeat_at_ms < {now} - $1"),
            vec![Value::from(FORGET_AFTER_MS)],
        );
        self.db
            .execute_raw(prune)
            .await
            .map_err(db_error("forgetting silent replicas"))?;
        Ok(())
    }

    async fn leave(&self, replica_id: &str) -> Result<(), StoreError> {
        let delete = statement(
            self.db.get_database_backend(),
            "DELETE FROM tokenvisor_replicas WHERE replica_id = $1",
            vec![Value::from(replica_id.to_owned())],
        );
        self.db
            .execute_raw(delete)
            .await
            .map_err(db_error("leaving the cluster"))?;
        Ok(())
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        let backend = self.db.get_database_backend();
        let now = now_ms(backend);
        let select = statement(
            backend,
            &format!(
                "SELECT replica_id, advertise_url, started_at_ms, {now} - heartbeat_at_ms AS age_ms \
                 FROM tokenvisor_replicas ORDER BY replica_id"
            ),
            vec![],
        );
        let rows = self
            .db
            .query_all_raw(select)
            .await
            .map_err(db_error("listing replicas"))?;
        rows.into_iter()
            .map(|row| {
                let read = db_error("reading a replica");
                Ok(ReplicaRecord {
                    replica_id: row.try_get("", "replica_id").map_err(&read)?,
                    advertise_url: row.try_get("", "advertise_url").map_err(&read)?,
                    started_at_ms: row.try_get("", "started_at_ms").map_err(&read)?,
                    heartbeat_age: positive(row.try_get("", "age_ms").map_err(&read)?),
                })
            })
            .collect()
    }

    async fn partitions(&self) -> Result<Vec<PartitionRecord>, StoreError> {
        let backend = self.db.get_database_backend();
        let now = now_ms(backend);
        let select = statement(
            backend,
            &format!(
                "SELECT partition_id, owner, epoch, lease_until_ms - {now} AS remaining_ms \
                 FROM tokenvisor_partitions ORDER BY partition_id"
            ),
            vec![],
        );
        let rows = self
            .db
            .query_all_raw(select)
            .await
            .map_err(db_error("listing partitions"))?;
        rows.into_iter()
            .map(|row| {
                let read = db_error("reading a partition");
                let partition: i32 = row.try_get("", "partition_id").map_err(&read)?;
                Ok(PartitionRecord {
                    partition: Partition::try_from(partition)
                        .map_err(|_| StoreError::Corrupt(format!("partitions: partition {partition}")))?,
                    owner: row.try_get("", "owner").map_err(&read)?,
                    epoch: row.try_get("", "epoch").map_err(&read)?,
                    lease_remaining: positive(row.try_get("", "remaining_ms").map_err(&read)?),
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        replica_id: &str,
        partitions: &[Partition],
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        // In ascending order: replicas claiming overlapping sets lock rows in one order.
        let mut sorted: Vec<i32> = partitions.iter().map(|p| i32::from(*p)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let now = now_ms(DbBackend::Postgres);
        let upsert = statement(
            DbBackend::Postgres,
            &format!(
                "WITH prior AS (SELECT partition_id, owner FROM tokenvisor_partitions WHERE partition_id = ANY($2::int4[])) \
                 INSERT INTO tokenvisor_partitions (partition_id, owner, epoch, lease_until_ms) \
                 SELECT p, $1, 1, {now} + $3 FROM unnest($2::int4[]) AS p ORDER BY p \
                 ON CONFLICT (partition_id) DO UPDATE SET owner = excluded.owner, \
                   epoch = tokenvisor_partitions.epoch + 1, lease_until_ms = excluded.lease_until_ms \
                 WHERE tokenvisor_partitions.owner IS NULL OR tokenvisor_partitions.lease_until_ms <= {now} \
                   OR tokenvisor_partitions.owner = excluded.owner \
                 RETURNING partition_id, epoch, \
                   (SELECT owner FROM prior WHERE prior.partition_id = tokenvisor_partitions.partition_id) AS taken_from"
            ),
            vec![
                Value::from(replica_id.to_owned()),
                Value::from(sorted),
                Value::from(millis(lease)),
            ],
        );
        let rows = self
            .db
            .query_all_raw(upsert)
            .await
            .map_err(db_error("claiming partitions"))?;
        let read = db_error("reading a claimed partition");
        let mut taken_from = Vec::with_capacity(rows.len());
        for row in &rows {
            taken_from.push(row.try_get::<Option<String>>("", "taken_from").map_err(&read)?);
        }
        Ok(held_rows(rows)?
            .into_iter()
            .zip(taken_from)
            .map(|((partition, epoch), taken_from)| Claimed {
                partition,
                epoch,
                taken_from,
            })
            .collect())
    }

    async fn renew(
        &self,
        replica_id: &str,
        held: &[(Partition, i64)],
        lease: Duration,
    ) -> Result<Vec<Partition>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms(DbBackend::Postgres);
        let (partitions, epochs) = split(held);
        let update = statement(
            DbBackend::Postgres,
            &format!(
                "UPDATE tokenvisor_partitions AS p SET lease_until_ms = {now} + $4 \
                 FROM unnest($2::int4[], $3::int8[]) AS h(partition_id, epoch) \
                 WHERE p.partition_id = h.partition_id AND p.epoch = h.epoch AND p.owner = $1 \
                 RETURNING p.partition_id, p.epoch"
            ),
            vec![
                Value::from(replica_id.to_owned()),
                partitions,
                epochs,
                Value::from(millis(lease)),
            ],
        );
        let rows = self
            .db
            .query_all_raw(update)
            .await
            .map_err(db_error("renewing partition leases"))?;
        Ok(held_rows(rows)?.into_iter().map(|(partition, _)| partition).collect())
    }

    async fn release(&self, replica_id: &str, held: &[(Partition, i64)]) -> Result<(), StoreError> {
        if held.is_empty() {
            return Ok(());
        }
        let (partitions, epochs) = split(held);
        let update = statement(
            DbBackend::Postgres,
            "UPDATE tokenvisor_partitions AS p SET owner = NULL, lease_until_ms = 0 \
             FROM unnest($2::int4[], $3::int8[]) AS h(partition_id, epoch) \
             WHERE p.partition_id = h.partition_id AND p.epoch = h.epoch AND p.owner = $1",
            vec![Value::from(replica_id.to_owned()), partitions, epochs],
        );
        self.db
            .execute_raw(update)
            .await
            .map_err(db_error("releasing partitions"))?;
        Ok(())
    }

    fn load_supervised_in(&self, partitions: Vec<Partition>) -> BoxStream<'_, Result<Connection, StoreError>> {
        self.stream_connections(
            supervised_connections()
                .filter(connection::Column::PartitionId.is_in(partitions.into_iter().map(i32::from))),
        )
    }

    async fn supervised_changed_since(
        &self,
        partitions: &[Partition],
        since: DateTime<Utc>,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<uuid::Uuid> = supervised_connections()
            .select_only()
            .column(connection::Column::Id)
            .filter(connection::Column::PartitionId.is_in(partitions.iter().map(|p| i32::from(*p))))
            .filter(connection::Column::UpdatedAt.gte(since))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(db_error("listing changed connections"))?;
        Ok(ids.into_iter().map(ConnectionId).collect())
    }

    async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        let notify = statement(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            vec![Value::from(channel.to_owned()), Value::from(payload.to_owned())],
        );
        self.db
            .execute_raw(notify)
            .await
            .map_err(db_error("sending a notification"))?;
        Ok(())
    }

    async fn listen(
        &self,
        channels: &[&str],
    ) -> Result<BoxStream<'static, Result<Notification, StoreError>>, StoreError> {
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = PgListener::connect_with(pool)
            .await
            .map_err(|error| StoreError::Database(format!("opening a listener: {error}")))?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(|error| StoreError::Database(format!("listening: {error}")))?;
        Ok(listener
            .into_stream()
            .map(|received| {
                received
                    .map(|notification| Notification {
                        channel: notification.channel().to_owned(),
                        payload: notification.payload().to_owned(),
                    })
                    .map_err(|error| StoreError::Database(format!("receiving a notification: {error}")))
            })
            .boxed())
    }
}

fn held_rows(rows: Vec<sea_orm::QueryResult>) -> Result<Vec<(Partition, i64)>, StoreError> {
    rows.into_iter()
        .map(|row| {
            let read = db_error("reading a partition");
            let partition: i32 = row.try_get("", "partition_id").map_err(&read)?;
            let epoch: i64 = row.try_get("", "epoch").map_err(&read)?;
            let partition = Partition::try_from(partition)
                .map_err(|_| StoreError::Corrupt(format!("partitions: partition {partition}")))?;
            Ok((partition, epoch))
        })
        .collect()
}
