//! The webhook outbox on SQLite and PostgreSQL: events waiting for delivery, one row per
//! endpoint and event, delivered oldest first and deleted once the endpoint took them.
//! Event payloads carry ids and codes only (no secret), so they are stored as they are.

use super::{db_error, statement};
use crate::StoreError;
use sea_orm::{ConnectionTrait as _, DatabaseConnection, Value};

/// A message waiting for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Its place in the outbox (increasing).
    pub seq: i64,
    /// The `webhook-id` it is sent with, the same on every attempt.
    pub message_id: String,
    /// The JSON body.
    pub body: String,
}

/// The webhook outbox of a [`super::SqlStore`]'s database (see [`super::SqlStore::webhook_outbox`]).
#[derive(Debug, Clone)]
pub struct WebhookOutbox {
    db: DatabaseConnection,
}

impl WebhookOutbox {
    pub(super) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Appends one message for each endpoint, in one statement.
    pub async fn push(&self, endpoints: &[String], message_id: &str, body: &str) -> Result<(), StoreError> {
        if endpoints.is_empty() {
            return Ok(());
        }
        let mut sql =
            String::from("INSERT INTO tokenvisor_webhook_outbox (endpoint, message_id, body, created_at) VALUES ");
        let mut values = Vec::with_capacity(endpoints.len() * 4);
        for (i, endpoint) in endpoints.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let n = i * 4;
            sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
            values.push(Value::from(endpoint.clone()));
            values.push(Value::from(message_id.to_owned()));
            values.push(Value::from(body.to_owned()));
            values.push(Value::from(chrono::Utc::now()));
        }
        self.db
            .execute_raw(statement(self.db.get_database_backend(), &sql, values))
            .await
            .map_err(db_error("queueing a webhook message"))?;
        Ok(())
    }

    /// The oldest message waiting for `endpoint`.
    pub async fn front(&self, endpoint: &str) -> Result<Option<OutboxMessage>, StoreError> {
        let query = statement(
            self.db.get_database_backend(),
            "SELECT id, message_id, body FROM tokenvisor_webhook_outbox WHERE endpoint = $1 ORDER BY id LIMIT 1",
            vec![Value::from(endpoint.to_owned())],
        );
        let Some(row) = self
            .db
            .query_one_raw(query)
            .await
            .map_err(db_error("reading the webhook outbox"))?
        else {
            return Ok(None);
        };
        let read = db_error("reading the webhook outbox");
        Ok(Some(OutboxMessage {
            seq: row.try_get("", "id").map_err(&read)?,
            message_id: row.try_get("", "message_id").map_err(&read)?,
            body: row.try_get("", "body").map_err(&read)?,
        }))
    }

    /// Deletes a delivered message.
    pub async fn remove(&self, seq: i64) -> Result<(), StoreError> {
        let delete = statement(
            self.db.get_database_backend(),
            "DELETE FROM tokenvisor_webhook_outbox WHERE id = $1",
            vec![Value::from(seq)],
        );
        self.db
            .execute_raw(delete)
            .await
            .map_err(db_error("removing a delivered webhook message"))?;
        Ok(())
    }

    /// How many messages wait for `endpoint`.
    pub async fn count(&self, endpoint: &str) -> Result<u64, StoreError> {
        let query = statement(
            self.db.get_database_backend(),
            "SELECT COUNT(*) AS waiting FROM tokenvisor_webhook_outbox WHERE endpoint = $1",
            vec![Value::from(endpoint.to_owned())],
        );
        let row = self
            .db
            .query_one_raw(query)
            .await
            .map_err(db_error("counting the webhook outbox"))?;
        let waiting: i64 = match row {
            Some(row) => row
                .try_get("", "waiting")
                .map_err(db_error("counting the webhook outbox"))?,
            None => 0,
        };
        Ok(u64::try_from(waiting).unwrap_or(0))
    }
}
