//! Refresh leases (cluster-wide single flight) on SQLite and PostgreSQL: one upsert that
//! only takes over a lease that ran out or is the caller's own, so of replicas racing
//! for a connection exactly one gets it.

use super::now_ms;
use super::{db_error, statement};
use crate::{LeaseOutcome, StoreError};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, SqlErr, Value};
use std::time::Duration;
use tokenvisor_core::ConnectionId;

/// Takes the lease of `connection` for `owner` for `lease` (see
/// [`crate::Store::acquire_refresh_lease`]).
pub(super) async fn acquire(
    db: &DatabaseConnection,
    connection: ConnectionId,
    owner: &str,
    lease: Duration,
) -> Result<LeaseOutcome, StoreError> {
    let backend = db.get_database_backend();
    let now = now_ms(backend);
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
    let upsert = statement(
        backend,
        &format!(
            "INSERT INTO tokenvisor_refresh_leases (connection_id, owner, expires_at_ms) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (connection_id) DO UPDATE SET owner = excluded.owner, expires_at_ms = excluded.expires_at_ms \
             WHERE tokenvisor_refresh_leases.expires_at_ms < {now} OR tokenvisor_refresh_leases.owner = excluded.owner \
             RETURNING owner"
        ),
        vec![
            Value::from(connection.0),
            Value::from(owner.to_owned()),
            Value::from(lease_ms),
        ],
    );
    // A holder may give the lease back between our upsert and our look at it: ask again.
    for _ in 0..3 {
        match db.query_one_raw(upsert.clone()).await {
            Ok(Some(_)) => return Ok(LeaseOutcome::Acquired),
            Ok(None) => {}
            Err(error) if matches!(error.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) => {
                return Ok(LeaseOutcome::Missing);
            }
            Err(error) => return Err(db_error("taking a refresh lease")(error)),
        }
        let holder = statement(
            backend,
            &format!(
                "SELECT owner, expires_at_ms - {now} AS remaining_ms FROM tokenvisor_refresh_leases WHERE connection_id = $1"
            ),
            vec![Value::from(connection.0)],
        );
        let row = db
            .query_one_raw(holder)
            .await
            .map_err(db_error("reading a refresh lease"))?;
        if let Some(row) = row {
            let owner: String = row.try_get("", "owner").map_err(db_error("reading a refresh lease"))?;
            let remaining_ms: i64 = row
                .try_get("", "remaining_ms")
                .map_err(db_error("reading a refresh lease"))?;
            let remaining = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0));
            return Ok(LeaseOutcome::Held { owner, remaining });
        }
    }
    Err(StoreError::Database(format!(
        "the refresh lease of connection {connection} kept changing hands"
    )))
}

/// Gives the lease of `connection` back if `owner` holds it.
pub(super) async fn release(db: &DatabaseConnection, connection: ConnectionId, owner: &str) -> Result<(), StoreError> {
    let delete = statement(
        db.get_database_backend(),
        "DELETE FROM tokenvisor_refresh_leases WHERE connection_id = $1 AND owner = $2",
        vec![Value::from(connection.0), Value::from(owner.to_owned())],
    );
    db.execute_raw(delete)
        .await
        .map_err(db_error("releasing a refresh lease"))?;
    Ok(())
}
