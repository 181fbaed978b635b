//! Webhooks on SQLite and PostgreSQL: the endpoints (`tokenvisor_webhook_endpoints`,
//! signing secrets encrypted with the store's [`Keyring`]), the outbox of messages
//! waiting for delivery (`tokenvisor_webhook_outbox`, one row per endpoint and event,
//! delivered oldest first and deleted once the endpoint took them), and the dead-letter
//! list (`tokenvisor_webhook_dead_letters`) of messages given up on, kept until replayed
//! or their endpoint is deleted. Event payloads carry ids and codes only (no secret), so
//! they are stored as they are.

use super::{begin_write, db_error, statement};
use crate::{Keyring, StoreError};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, Value};
use tokenvisor_core::SecretString;

/// A message waiting for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Its place in the outbox (increasing).
    pub seq: i64,
    /// The `webhook-id` it is sent with, the same on every attempt.
    pub message_id: String,
    /// The event type (`refreshed`, ...; empty for rows queued before types were kept).
    pub event_type: String,
    /// The JSON body.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
}

/// Where an endpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    /// Added through the admin API; managed there.
    Api,
    /// From the service's configuration (`TOKENVISOR_WEBHOOK_URLS`); synced at every
    /// start, managed there.
    Config,
}

impl EndpointSource {
    /// `api` or `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Config => "config",
        }
    }
}

/// A webhook endpoint as stored, secrets decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id (a uuid, or `cfg_<hash of the URL>` for a configured endpoint).
    pub id: String,
    /// Where messages are POSTed.
    pub url: String,
    /// The event types it receives; empty: every type.
    pub event_types: Vec<String>,
    /// Whether it receives new messages and its queue is delivered.
    pub enabled: bool,
    /// Where it comes from.
    pub source: EndpointSource,
    /// The signing secret, `whsec_<base64>`.
    pub secret: SecretString,
    /// The secret before the last rotation, still signing until `previous_secret_expires_at`.
    pub previous_secret: Option<SecretString>,
    /// When the previous secret stops signing.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Failed attempts after which a message goes to dead letter (`None`: the service default).
    pub max_attempts: Option<u32>,
    /// Age in seconds after which a failing message goes to dead letter (`None`: the default).
    pub max_age_seconds: Option<u64>,
    /// Messages the outbox keeps for it; the oldest beyond go to dead letter (`None`: the default).
    pub outbox_cap: Option<u64>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

/// Why a message went to dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// It failed its endpoint's attempt limit.
    Attempts,
    /// It was still failing past its endpoint's age limit.
    Age,
    /// The endpoint's outbox was over its cap and it was the oldest.
    Cap,
}

impl DeadLetterReason {
    /// `attempts`, `age` or `cap`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempts => "attempts",
            Self::Age => "age",
            Self::Cap => "cap",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "attempts" => Ok(Self::Attempts),
            "age" => Ok(Self::Age),
            "cap" => Ok(Self::Cap),
            other => Err(StoreError::Corrupt(format!(
                "webhook_dead_letters: unknown reason {other:?}"
            ))),
        }
    }
}

/// A message given up on, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id (`dl_<outbox seq>`).
    pub id: String,
    /// The endpoint it was for.
    pub endpoint_id: String,
    /// The `webhook-id` it was sent with (kept on replay).
    pub message_id: String,
    /// The event type.
    pub event_type: String,
    /// The JSON body.
    pub body: String,
    /// Failed attempts.
    pub attempts: u32,
    /// The last failure (`http_500`, `timeout`, `connection failed`...).
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was first tried.
    pub first_attempted_at: Option<DateTime<Utc>>,
    /// When it was given up on.
    pub dead_lettered_at: DateTime<Utc>,
    /// Why.
    pub reason: DeadLetterReason,
}

/// What replaying a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Queued again at the end of this endpoint's outbox (with its `webhook-id`).
    Queued {
        /// The endpoint it is queued for.
        endpoint_id: String,
    },
    /// No dead letter has this id.
    NotFound,
}

const ENDPOINT_COLUMNS: &str = "id, url, event_types, enabled, source, secret, previous_secret, \
     previous_secret_expires_at, max_attempts, max_age_seconds, outbox_cap, created_at, updated_at";

const DEAD_LETTER_COLUMNS: &str = "id, endpoint_id, message_id, event_type, body, attempts, last_error, \
     created_at, first_attempted_at, dead_lettered_at, reason";

/// The webhook tables of a [`super::SqlStore`]'s database (see [`super::SqlStore::webhook_outbox`]).
#[derive(Debug, Clone)]
pub struct WebhookOutbox {
    db: DatabaseConnection,
    keyring: Keyring,
}

/// `["a", "b"]` → `",a,b,"`; `[]` → `""` (every type).
fn encode_filter(event_types: &[String]) -> String {
    if event_types.is_empty() {
        String::new()
    } else {
        format!(",{},", event_types.join(","))
    }
}

fn decode_filter(text: &str) -> Vec<String> {
    text.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// `%,<type>,%` with `\`, `%` and `_` escaped for `LIKE ... ESCAPE '\'`.
fn filter_pattern(event_type: &str) -> String {
    let mut escaped = String::with_capacity(event_type.len() + 4);
    for c in event_type.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("%,{escaped},%")
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

fn opt_i64(value: Option<u64>) -> Value {
    Value::from(value.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
}

impl WebhookOutbox {
    pub(super) fn new(db: DatabaseConnection, keyring: Keyring) -> Self {
        Self { db, keyring }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    fn seal(&self, id: &str, column: &str, secret: &SecretString) -> Result<Vec<u8>, StoreError> {
        self.keyring.encrypt(
            secret.expose().as_bytes(),
            format!("webhook_endpoints:{id}:{column}").as_bytes(),
        )
    }

    fn open(&self, id: &str, column: &str, ciphertext: &[u8]) -> Result<SecretString, StoreError> {
        let aad = format!("webhook_endpoints:{id}:{column}");
        let plaintext = self.keyring.decrypt(ciphertext, aad.as_bytes())?;
        String::from_utf8(plaintext.to_vec())
            .map(SecretString::from)
            .map_err(|_| StoreError::Decryption {
                context: aad,
                reason: "decrypted value is not UTF-8".to_owned(),
            })
    }

    // ---- endpoints

    /// Stores a new endpoint (its id must be new).
    pub async fn insert_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError> {
        let previous = match &endpoint.previous_secret {
            Some(secret) => Some(self.seal(&endpoint.id, "previous_secret", secret)?),
            None => None,
        };
        let sql = format!(
            "INSERT INTO tokenvisor_webhook_endpoints ({ENDPOINT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        let values = vec![
            Value::from(endpoint.id.clone()),
            Value::from(endpoint.url.clone()),
            Value::from(encode_filter(&endpoint.event_types)),
            Value::from(endpoint.enabled),
            Value::from(endpoint.source.as_str()),
            Value::from(self.seal(&endpoint.id, "secret", &endpoint.secret)?),
            Value::from(previous),
            Value::from(endpoint.previous_secret_expires_at),
            Value::from(endpoint.max_attempts.map(|v| i32::try_from(v).unwrap_or(i32::MAX))),
            opt_i64(endpoint.max_age_seconds),
            opt_i64(endpoint.outbox_cap),
            Value::from(endpoint.created_at),
            Value::from(endpoint.updated_at),
        ];
        self.db
            .execute_raw(statement(self.backend(), &sql, values))
            .await
            .map_err(|error| {
                let text = error.to_string();
                if text.contains("UNIQUE") || text.contains("duplicate key") {
                    StoreError::Conflict(format!("webhook endpoint {}", endpoint.id))
                } else {
                    StoreError::Database(format!("adding a webhook endpoint: {text}"))
                }
            })?;
        Ok(())
    }

    /// Writes every field of an existing endpoint but its id, source and creation time.
    /// Whether it existed.
    pub async fn update_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<bool, StoreError> {
        let previous = match &endpoint.previous_secret {
            Some(secret) => Some(self.seal(&endpoint.id, "previous_secret", secret)?),
            None => None,
        };
        // Placeholders in order: SQLite binds them by position.
        let sql = "UPDATE tokenvisor_webhook_endpoints SET url = $1, event_types = $2, enabled = $3, secret = $4, \
                   previous_secret = $5, previous_secret_expires_at = $6, max_attempts = $7, max_age_seconds = $8, \
                   outbox_cap = $9, updated_at = $10 WHERE id = $11";
        let values = vec![
            Value::from(endpoint.url.clone()),
            Value::from(encode_filter(&endpoint.event_types)),
            Value::from(endpoint.enabled),
            Value::from(self.seal(&endpoint.id, "secret", &endpoint.secret)?),
            Value::from(previous),
            Value::from(endpoint.previous_secret_expires_at),
            Value::from(endpoint.max_attempts.map(|v| i32::try_from(v).unwrap_or(i32::MAX))),
            opt_i64(endpoint.max_age_seconds),
            opt_i64(endpoint.outbox_cap),
            Value::from(endpoint.updated_at),
            Value::from(endpoint.id.clone()),
        ];
        let result = self
            .db
            .execute_raw(statement(self.backend(), sql, values))
            .await
            .map_err(db_error("updating a webhook endpoint"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Deletes an endpoint with its queued messages and its dead letters. Whether it existed.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let txn = begin_write(&self.db).await?;
        let backend = self.backend();
        for sql in [
            "DELETE FROM tokenvisor_webhook_outbox WHERE endpoint = $1",
            "DELETE FROM tokenvisor_webhook_dead_letters WHERE endpoint_id = $1",
        ] {
            txn.execute_raw(statement(backend, sql, vec![Value::from(id.to_owned())]))
                .await
                .map_err(db_error("deleting a webhook endpoint's messages"))?;
        }
        let deleted = txn
            .execute_raw(statement(
                backend,
                "DELETE FROM tokenvisor_webhook_endpoints WHERE id = $1",
                vec![Value::from(id.to_owned())],
            ))
            .await
            .map_err(db_error("deleting a webhook endpoint"))?;
        txn.commit().await.map_err(db_error("deleting a webhook endpoint"))?;
        Ok(deleted.rows_affected() > 0)
    }

    /// One endpoint.
    pub async fn get_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM tokenvisor_webhook_endpoints WHERE id = $1");
        let row = self
            .db
            .query_one_raw(statement(self.backend(), &sql, vec![Value::from(id.to_owned())]))
            .await
            .map_err(db_error("reading a webhook endpoint"))?;
        row.map(|row| self.endpoint_from_row(&row)).transpose()
    }

    /// Every endpoint, oldest first.
    pub async fn list_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM tokenvisor_webhook_endpoints ORDER BY created_at, id");
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), &sql, vec![]))
            .await
            .map_err(db_error("listing webhook endpoints"))?;
        rows.iter().map(|row| self.endpoint_from_row(row)).collect()
    }

    fn endpoint_from_row(&self, row: &sea_orm::QueryResult) -> Result<WebhookEndpoint, StoreError> {
        let read = db_error("reading a webhook endpoint");
        let id: String = row.try_get("", "id").map_err(&read)?;
        let source: String = row.try_get("", "source").map_err(&read)?;
        let secret: Vec<u8> = row.try_get("", "secret").map_err(&read)?;
        let previous: Option<Vec<u8>> = row.try_get("", "previous_secret").map_err(&read)?;
        let max_attempts: Option<i32> = row.try_get("", "max_attempts").map_err(&read)?;
        let max_age: Option<i64> = row.try_get("", "max_age_seconds").map_err(&read)?;
        let cap: Option<i64> = row.try_get("", "outbox_cap").map_err(&read)?;
        let event_types: String = row.try_get("", "event_types").map_err(&read)?;
        Ok(WebhookEndpoint {
            url: row.try_get("", "url").map_err(&read)?,
            event_types: decode_filter(&event_types),
            enabled: row.try_get("", "enabled").map_err(&read)?,
            source: match source.as_str() {
                "config" => EndpointSource::Config,
                "api" => EndpointSource::Api,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "webhook_endpoints: unknown source {other:?}"
                    )));
                }
            },
            secret: self.open(&id, "secret", &secret)?,
            previous_secret: previous
                .map(|ciphertext| self.open(&id, "previous_secret", &ciphertext))
                .transpose()?,
            previous_secret_expires_at: row.try_get("", "previous_secret_expires_at").map_err(&read)?,
            max_attempts: max_attempts.map(|v| to_u32(i64::from(v))),
            max_age_seconds: max_age.map(|v| u64::try_from(v.max(0)).unwrap_or(0)),
            outbox_cap: cap.map(|v| u64::try_from(v.max(0)).unwrap_or(0)),
            created_at: row.try_get("", "created_at").map_err(&read)?,
            updated_at: row.try_get("", "updated_at").map_err(&read)?,
            id,
        })
    }

    /// Moves the messages queued under `old_key` (the URL, as the outbox keyed them
    /// before endpoints were rows) to endpoint `id`. How many moved.
    pub async fn adopt_messages(&self, old_key: &str, id: &str) -> Result<u64, StoreError> {
        let result = self
            .db
            .execute_raw(statement(
                self.backend(),
                "UPDATE tokenvisor_webhook_outbox SET endpoint = $1 WHERE endpoint = $2",
                vec![Value::from(id.to_owned()), Value::from(old_key.to_owned())],
            ))
            .await
            .map_err(db_error("adopting webhook messages"))?;
        Ok(result.rows_affected())
    }

    // ---- the outbox

    /// Queues one message for every enabled endpoint whose filter takes `event_type`, in
    /// one statement. Answers the endpoints it was queued for.
    pub async fn push(&self, message_id: &str, event_type: &str, body: &str) -> Result<Vec<String>, StoreError> {
        let sql = "INSERT INTO tokenvisor_webhook_outbox (endpoint, message_id, event_type, body, created_at, attempts) \
                   SELECT id, $1, $2, $3, $4, 0 FROM tokenvisor_webhook_endpoints \
                   WHERE enabled = $5 AND (event_types = '' OR event_types LIKE $6 ESCAPE '\\') \
                   RETURNING endpoint";
        let values = vec![
            Value::from(message_id.to_owned()),
            Value::from(event_type.to_owned()),
            Value::from(body.to_owned()),
            Value::from(Utc::now()),
            Value::from(true),
            Value::from(filter_pattern(event_type)),
        ];
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), sql, values))
            .await
            .map_err(db_error("queueing a webhook message"))?;
        rows.iter()
            .map(|row| {
                row.try_get("", "endpoint")
                    .map_err(db_error("queueing a webhook message"))
            })
            .collect()
    }

    /// The oldest message waiting for `endpoint`.
    pub async fn front(&self, endpoint: &str) -> Result<Option<OutboxMessage>, StoreError> {
        let query = statement(
            self.backend(),
            "SELECT id, message_id, event_type, body, attempts, created_at FROM tokenvisor_webhook_outbox \
             WHERE endpoint = $1 ORDER BY id LIMIT 1",
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
        let attempts: i32 = row.try_get("", "attempts").map_err(&read)?;
        Ok(Some(OutboxMessage {
            seq: row.try_get("", "id").map_err(&read)?,
            message_id: row.try_get("", "message_id").map_err(&read)?,
            event_type: row.try_get("", "event_type").map_err(&read)?,
            body: row.try_get("", "body").map_err(&read)?,
            attempts: to_u32(i64::from(attempts)),
            created_at: row.try_get("", "created_at").map_err(&read)?,
        }))
    }

    /// Deletes a delivered message.
    pub async fn remove(&self, seq: i64) -> Result<(), StoreError> {
        let delete = statement(
            self.backend(),
            "DELETE FROM tokenvisor_webhook_outbox WHERE id = $1",
            vec![Value::from(seq)],
        );
        self.db
            .execute_raw(delete)
            .await
            .map_err(db_error("removing a delivered webhook message"))?;
        Ok(())
    }

    /// Records a failed attempt (`error` is a short code, never a response body).
    pub async fn record_failure(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let update = statement(
            self.backend(),
            "UPDATE tokenvisor_webhook_outbox SET attempts = attempts + 1, last_error = $1, \
             first_attempted_at = COALESCE(first_attempted_at, $2) WHERE id = $3",
            vec![Value::from(error.to_owned()), Value::from(Utc::now()), Value::from(seq)],
        );
        self.db
            .execute_raw(update)
            .await
            .map_err(db_error("recording a failed webhook attempt"))?;
        Ok(())
    }

    /// How many messages wait for `endpoint`.
    pub async fn count(&self, endpoint: &str) -> Result<u64, StoreError> {
        let query = statement(
            self.backend(),
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

    // ---- dead letters

    /// Moves the outbox rows matching `condition(n)` (over `values`, numbered from
    /// `$n`) to the dead letters, in one transaction. How many moved. (Placeholders must
    /// appear in order: SQLite binds them by position.)
    async fn move_to_dead_letters(
        &self,
        condition: &(dyn Fn(usize) -> String + Sync),
        values: Vec<Value>,
        reason: DeadLetterReason,
    ) -> Result<u64, StoreError> {
        let insert = format!(
            "INSERT INTO tokenvisor_webhook_dead_letters ({DEAD_LETTER_COLUMNS}) \
             SELECT 'dl_' || CAST(id AS TEXT), endpoint, message_id, event_type, body, attempts, last_error, \
             created_at, first_attempted_at, $1, $2 FROM tokenvisor_webhook_outbox WHERE {}",
            condition(3)
        );
        let delete = format!("DELETE FROM tokenvisor_webhook_outbox WHERE {}", condition(1));
        let backend = self.backend();
        let txn = begin_write(&self.db).await?;
        let mut insert_values = vec![Value::from(Utc::now()), Value::from(reason.as_str())];
        insert_values.extend(values.iter().cloned());
        txn.execute_raw(statement(backend, &insert, insert_values))
            .await
            .map_err(db_error("dead-lettering webhook messages"))?;
        let moved = txn
            .execute_raw(statement(backend, &delete, values))
            .await
            .map_err(db_error("dead-lettering webhook messages"))?;
        txn.commit()
            .await
            .map_err(db_error("dead-lettering webhook messages"))?;
        Ok(moved.rows_affected())
    }

    /// Moves one queued message to the dead letters. Whether it was still queued.
    pub async fn dead_letter(&self, seq: i64, reason: DeadLetterReason) -> Result<bool, StoreError> {
        Ok(self
            .move_to_dead_letters(&|n| format!("id = ${n}"), vec![Value::from(seq)], reason)
            .await?
            > 0)
    }

    /// Keeps at most `cap` messages queued for `endpoint`: the oldest beyond go to the
    /// dead letters (reason [`DeadLetterReason::Cap`]). How many moved.
    pub async fn enforce_cap(&self, endpoint: &str, cap: u64) -> Result<u64, StoreError> {
        let threshold = self
            .db
            .query_one_raw(statement(
                self.backend(),
                "SELECT id FROM tokenvisor_webhook_outbox WHERE endpoint = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
                vec![
                    Value::from(endpoint.to_owned()),
                    Value::from(i64::try_from(cap).unwrap_or(i64::MAX)),
                ],
            ))
            .await
            .map_err(db_error("reading the webhook outbox"))?;
        let Some(row) = threshold else {
            return Ok(0);
        };
        let oldest_kept_before: i64 = row.try_get("", "id").map_err(db_error("reading the webhook outbox"))?;
        self.move_to_dead_letters(
            &|n| format!("endpoint = ${n} AND id <= ${}", n + 1),
            vec![Value::from(endpoint.to_owned()), Value::from(oldest_kept_before)],
            DeadLetterReason::Cap,
        )
        .await
    }

    /// Dead letters, newest first, of one endpoint or of all; at most `limit`.
    pub async fn list_dead_letters(&self, endpoint: Option<&str>, limit: u64) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = Value::from(i64::try_from(limit).unwrap_or(i64::MAX));
        let (sql, values) = match endpoint {
            Some(endpoint) => (
                format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM tokenvisor_webhook_dead_letters WHERE endpoint_id = $1 \
                     ORDER BY dead_lettered_at DESC, id DESC LIMIT $2"
                ),
                vec![Value::from(endpoint.to_owned()), limit],
            ),
            None => (
                format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM tokenvisor_webhook_dead_letters \
                     ORDER BY dead_lettered_at DESC, id DESC LIMIT $1"
                ),
                vec![limit],
            ),
        };
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), &sql, values))
            .await
            .map_err(db_error("listing webhook dead letters"))?;
        rows.iter()
            .map(|row| {
                let read = db_error("reading a webhook dead letter");
                let attempts: i32 = row.try_get("", "attempts").map_err(&read)?;
                let reason: String = row.try_get("", "reason").map_err(&read)?;
                Ok(DeadLetter {
                    id: row.try_get("", "id").map_err(&read)?,
                    endpoint_id: row.try_get("", "endpoint_id").map_err(&read)?,
                    message_id: row.try_get("", "message_id").map_err(&read)?,
                    event_type: row.try_get("", "event_type").map_err(&read)?,
                    body: row.try_get("", "body").map_err(&read)?,
                    attempts: to_u32(i64::from(attempts)),
                    last_error: row.try_get("", "last_error").map_err(&read)?,
                    created_at: row.try_get("", "created_at").map_err(&read)?,
                    first_attempted_at: row.try_get("", "first_attempted_at").map_err(&read)?,
                    dead_lettered_at: row.try_get("", "dead_lettered_at").map_err(&read)?,
                    reason: DeadLetterReason::parse(&reason)?,
                })
            })
            .collect()
    }

    /// Moves dead letters matching `condition(n)` (over `values`, numbered from `$n`)
    /// back to the end of their endpoints' outboxes (same `webhook-id`, attempts from
    /// zero), in one transaction. Answers the endpoints of the replayed messages, one per
    /// message. Dead letters of deleted endpoints stay.
    async fn replay_where(
        &self,
        condition: &(dyn Fn(usize) -> String + Sync),
        values: Vec<Value>,
    ) -> Result<Vec<String>, StoreError> {
        let backend = self.backend();
        let known = "endpoint_id IN (SELECT id FROM tokenvisor_webhook_endpoints)";
        let txn = begin_write(&self.db).await?;
        let select = format!(
            "SELECT endpoint_id FROM tokenvisor_webhook_dead_letters WHERE {} AND {known} ORDER BY created_at, id",
            condition(1)
        );
        let rows = txn
            .query_all_raw(statement(backend, &select, values.clone()))
            .await
            .map_err(db_error("replaying webhook dead letters"))?;
        let endpoints = rows
            .iter()
            .map(|row| row.try_get("", "endpoint_id"))
            .collect::<Result<Vec<String>, _>>()
            .map_err(db_error("replaying webhook dead letters"))?;
        let insert = format!(
            "INSERT INTO tokenvisor_webhook_outbox (endpoint, message_id, event_type, body, created_at, attempts) \
             SELECT endpoint_id, message_id, event_type, body, $1, 0 FROM tokenvisor_webhook_dead_letters \
             WHERE {} AND {known} ORDER BY created_at, id",
            condition(2)
        );
        let mut insert_values = vec![Value::from(Utc::now())];
        insert_values.extend(values.iter().cloned());
        txn.execute_raw(statement(backend, &insert, insert_values))
            .await
            .map_err(db_error("replaying webhook dead letters"))?;
        let delete = format!(
            "DELETE FROM tokenvisor_webhook_dead_letters WHERE {} AND {known}",
            condition(1)
        );
        txn.execute_raw(statement(backend, &delete, values))
            .await
            .map_err(db_error("replaying webhook dead letters"))?;
        txn.commit().await.map_err(db_error("replaying webhook dead letters"))?;
        Ok(endpoints)
    }

    /// Queues a dead letter again at the end of its endpoint's outbox, with its
    /// `webhook-id` and attempts from zero, and removes it from the dead letters.
    pub async fn replay_dead_letter(&self, id: &str) -> Result<ReplayOutcome, StoreError> {
        let mut endpoints = self
            .replay_where(&|n| format!("id = ${n}"), vec![Value::from(id.to_owned())])
            .await?;
        Ok(match endpoints.pop() {
            Some(endpoint_id) => ReplayOutcome::Queued { endpoint_id },
            None => ReplayOutcome::NotFound,
        })
    }

    /// Replays every dead letter of `endpoint`, oldest first. How many.
    pub async fn replay_endpoint_dead_letters(&self, endpoint: &str) -> Result<u64, StoreError> {
        let replayed = self
            .replay_where(
                &|n| format!("endpoint_id = ${n}"),
                vec![Value::from(endpoint.to_owned())],
            )
            .await?;
        Ok(u64::try_from(replayed.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_and_their_patterns_escape_like_wildcards() {
        assert_eq!(encode_filter(&[]), "");
        let types = vec!["refreshed".to_owned(), "needs_reauth".to_owned()];
        assert_eq!(encode_filter(&types), ",refreshed,needs_reauth,");
        assert_eq!(decode_filter(&encode_filter(&types)), types);
        assert!(decode_filter("").is_empty());
        assert_eq!(filter_pattern("needs_reauth"), "%,needs\\_reauth,%");
        assert_eq!(filter_pattern("a%b"), "%,a\\%b,%");
    }
}
