//! Who may call the admin API and what they did, on SQLite and PostgreSQL: API keys
//! (`tokenvisor_api_keys`: a visible prefix, the SHA-256 of the whole key, never the key;
//! scopes and optional tenant and integration restrictions, expiry, revocation) and the
//! append-only audit trail (`tokenvisor_audit_events`; rows are only ever inserted, and
//! deleted past the retention). Neither table holds a secret.

use super::{db_error, statement};
use crate::StoreError;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, Value};
use std::collections::HashMap;

/// An API key as stored (its hash, never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Its id (a UUID).
    pub id: String,
    /// What the operator called it.
    pub name: String,
    /// The visible part of the key (`tvk_<prefix>_...`), unique.
    pub prefix: String,
    /// SHA-256 of the whole key, lowercase hex.
    pub secret_hash: String,
    /// `admin`, `operate`, `tokens:read`.
    pub scopes: Vec<String>,
    /// The tenants it is restricted to; empty: every tenant.
    pub tenants: Vec<String>,
    /// The integration ids it is restricted to; empty: every integration.
    pub integrations: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One entry of the audit trail. Never a secret: ids, codes and addresses only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its id (a UUIDv7: ordered by time).
    pub id: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `token_read`, `proxy` or `change`.
    pub action: String,
    /// The method and route template (`GET /v1/connections/{id}/token`).
    pub request: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The API key's id, or `admin` for the configured admin token.
    pub key_id: String,
    /// The connection concerned, if any.
    pub connection_id: Option<String>,
    /// Its tenant, if known.
    pub tenant_id: Option<String>,
    /// What else was acted on (an integration, an API key, a webhook endpoint), if any.
    pub target: Option<String>,
    /// The caller's address.
    pub caller_address: Option<String>,
    /// The W3C trace id of the request, if any.
    pub trace_id: Option<String>,
    /// A change to a connection: its status before (`active`, `degraded`, `needs_reauth`,
    /// `disabled`; `None` when it did not exist yet).
    pub status_before: Option<String>,
    /// A change to a connection: its status after (one of the above, or `deleted`).
    pub status_after: Option<String>,
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this connection's.
    pub connection_id: Option<String>,
    /// Only this tenant's.
    pub tenant_id: Option<String>,
    /// Only this key's.
    pub key_id: Option<String>,
    /// Only events older than this id (the cursor of the next page).
    pub before: Option<String>,
    /// At most this many (newest first).
    pub limit: u64,
}

const KEY_COLUMNS: &str =
    "id, name, prefix, secret_hash, scopes, tenants, integrations, created_at, expires_at, revoked_at";
const AUDIT_COLUMNS: &str = "id, at, action, request, status, key_id, connection_id, tenant_id, target, \
                             caller_address, trace_id, status_before, status_after";
/// Values per audit row.
const AUDIT_VALUES: usize = 13;
/// Rows per multi-row insert (13 values each: far below PostgreSQL's bind limit).
const INSERT_CHUNK: usize = 500;

/// The API key and audit tables of a [`super::SqlStore`]'s database (see [`crate::Store::access`]).
#[derive(Debug, Clone)]
pub struct AccessStore {
    db: DatabaseConnection,
    /// The audit writer's own connections, if the store has them (else `db`).
    audit_db: Option<DatabaseConnection>,
}

fn encode_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn decode_list(text: &str, what: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt(format!("api_keys: unreadable {what}")))
}

impl AccessStore {
    pub(super) fn new(db: DatabaseConnection, audit_db: Option<DatabaseConnection>) -> Self {
        Self { db, audit_db }
    }

    /// Where the audit trail is written: its own connections when there are.
    fn audit_writer(&self) -> &DatabaseConnection {
        self.audit_db.as_ref().unwrap_or(&self.db)
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Stores a new key. A prefix or id already there is [`StoreError::Conflict`].
    pub async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO tokenvisor_api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
        let values = vec![
            Value::from(key.id.clone()),
            Value::from(key.name.clone()),
            Value::from(key.prefix.clone()),
            Value::from(key.secret_hash.clone()),
            Value::from(encode_list(&key.scopes)),
            Value::from(encode_list(&key.tenants)),
            Value::from(encode_list(&key.integrations)),
            Value::from(key.created_at),
            Value::from(key.expires_at),
            Value::from(key.revoked_at),
        ];
        self.db
            .execute_raw(statement(self.backend(), &sql, values))
            .await
            .map_err(|error| {
                let text = error.to_string();
                if text.contains("UNIQUE") || text.contains("duplicate key") {
                    StoreError::Conflict(format!("api key {}", key.prefix))
                } else {
                    StoreError::Database(format!("adding an api key: {text}"))
                }
            })?;
        Ok(())
    }

    /// The key with this prefix (revoked and expired ones included).
    pub async fn find_api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM tokenvisor_api_keys WHERE prefix = $1");
        let row = self
            .db
            .query_one_raw(statement(self.backend(), &sql, vec![Value::from(prefix.to_owned())]))
            .await
            .map_err(db_error("reading an api key"))?;
        row.map(|row| key_from_row(&row)).transpose()
    }

    /// Every key, oldest first (revoked ones included).
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM tokenvisor_api_keys ORDER BY created_at, id");
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), &sql, vec![]))
            .await
            .map_err(db_error("listing api keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key (a revoked key stays revoked at its first revocation time). Whether
    /// it existed.
    pub async fn revoke_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let result = self
            .db
            .execute_raw(statement(
                self.backend(),
                "UPDATE tokenvisor_api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                vec![Value::from(at), Value::from(id.to_owned())],
            ))
            .await
            .map_err(db_error("revoking an api key"))?;
        Ok(result.rows_affected() > 0)
    }

    /// The tenants of these connections (one query; unknown ids are left out).
    pub async fn tenants_of(&self, ids: &[uuid::Uuid]) -> Result<HashMap<uuid::Uuid, String>, StoreError> {
        Self::tenants_on(&self.db, ids).await
    }

    async fn tenants_on(
        db: &DatabaseConnection,
        ids: &[uuid::Uuid],
    ) -> Result<HashMap<uuid::Uuid, String>, StoreError> {
        use crate::entity::connection;
        use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QuerySelect as _};
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(uuid::Uuid, String)> = connection::Entity::find()
            .select_only()
            .column(connection::Column::Id)
            .column(connection::Column::TenantId)
            .filter(connection::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(db)
            .await
            .map_err(db_error("reading connections' tenants"))?;
        Ok(rows.into_iter().collect())
    }

    /// Appends events, a few hundred rows per statement. An event naming a connection
    /// but no tenant gets the connection's tenant (one query per batch), so the token
    /// path does not look it up.
    pub async fn insert_audit_events(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let missing: Vec<uuid::Uuid> = events
            .iter()
            .filter(|e| e.tenant_id.is_none())
            .filter_map(|e| e.connection_id.as_deref()?.parse().ok())
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let tenants = Self::tenants_on(self.audit_writer(), &missing).await?;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut sql = format!("INSERT INTO tokenvisor_audit_events ({AUDIT_COLUMNS}) VALUES ");
            let mut values = Vec::with_capacity(chunk.len() * AUDIT_VALUES);
            for (row, event) in chunk.iter().enumerate() {
                if row > 0 {
                    sql.push_str(", ");
                }
                let base = row * AUDIT_VALUES;
                sql.push('(');
                for column in 1..=AUDIT_VALUES {
                    if column > 1 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", base + column));
                }
                sql.push(')');
                values.extend([
                    Value::from(event.id.clone()),
                    Value::from(event.at),
                    Value::from(event.action.clone()),
                    Value::from(event.request.clone()),
                    Value::from(i32::from(event.status)),
                    Value::from(event.key_id.clone()),
                    Value::from(event.connection_id.clone()),
                    Value::from(event.tenant_id.clone().or_else(|| {
                        let id: uuid::Uuid = event.connection_id.as_deref()?.parse().ok()?;
                        tenants.get(&id).cloned()
                    })),
                    Value::from(event.target.clone()),
                    Value::from(event.caller_address.clone()),
                    Value::from(event.trace_id.clone()),
                    Value::from(event.status_before.clone()),
                    Value::from(event.status_after.clone()),
                ]);
            }
            self.audit_writer()
                .execute_raw(statement(self.backend(), &sql, values))
                .await
                .map_err(db_error("writing audit events"))?;
        }
        Ok(())
    }

    /// Events matching the filter, newest first.
    pub async fn list_audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        for (column, value) in [
            ("connection_id", &filter.connection_id),
            ("tenant_id", &filter.tenant_id),
            ("key_id", &filter.key_id),
        ] {
            if let Some(value) = value {
                values.push(Value::from(value.clone()));
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        if let Some(before) = &filter.before {
            values.push(Value::from(before.clone()));
            conditions.push(format!("id < ${}", values.len()));
        }
        let condition = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        values.push(Value::from(i64::try_from(filter.limit).unwrap_or(i64::MAX)));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM tokenvisor_audit_events{condition} ORDER BY id DESC LIMIT ${}",
            values.len()
        );
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), &sql, values))
            .await
            .map_err(db_error("listing audit events"))?;
        rows.iter().map(audit_from_row).collect()
    }

    /// How many events the trail holds (benchmarks, checks).
    pub async fn count_audit_events(&self) -> Result<u64, StoreError> {
        let row = self
            .db
            .query_one_raw(statement(
                self.backend(),
                "SELECT COUNT(*) AS n FROM tokenvisor_audit_events",
                vec![],
            ))
            .await
            .map_err(db_error("counting audit events"))?
            .ok_or_else(|| StoreError::Corrupt("COUNT(*) answered no row".into()))?;
        let count: i64 = row.try_get("", "n").map_err(db_error("counting audit events"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes the events older than `before` (the retention). How many went.
    pub async fn delete_audit_events_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = self
            .audit_writer()
            .execute_raw(statement(
                self.backend(),
                "DELETE FROM tokenvisor_audit_events WHERE at < $1",
                vec![Value::from(before)],
            ))
            .await
            .map_err(db_error("trimming the audit trail"))?;
        Ok(result.rows_affected())
    }
}

fn key_from_row(row: &sea_orm::QueryResult) -> Result<ApiKeyRecord, StoreError> {
    let read = db_error("reading an api key");
    let scopes: String = row.try_get("", "scopes").map_err(&read)?;
    let tenants: String = row.try_get("", "tenants").map_err(&read)?;
    let integrations: String = row.try_get("", "integrations").map_err(&read)?;
    Ok(ApiKeyRecord {
        id: row.try_get("", "id").map_err(&read)?,
        name: row.try_get("", "name").map_err(&read)?,
        prefix: row.try_get("", "prefix").map_err(&read)?,
        secret_hash: row.try_get("", "secret_hash").map_err(&read)?,
        scopes: decode_list(&scopes, "scopes")?,
        tenants: decode_list(&tenants, "tenants")?,
        integrations: decode_list(&integrations, "integrations")?,
        created_at: row.try_get("", "created_at").map_err(&read)?,
        expires_at: row.try_get("", "expires_at").map_err(&read)?,
        revoked_at: row.try_get("", "revoked_at").map_err(&read)?,
    })
}

fn audit_from_row(row: &sea_orm::QueryResult) -> Result<AuditEvent, StoreError> {
    let read = db_error("reading an audit event");
    let status: i32 = row.try_get("", "status").map_err(&read)?;
    Ok(AuditEvent {
        id: row.try_get("", "id").map_err(&read)?,
        at: row.try_get("", "at").map_err(&read)?,
        action: row.try_get("", "action").map_err(&read)?,
        request: row.try_get("", "request").map_err(&read)?,
        status: u16::try_from(status).unwrap_or(0),
        key_id: row.try_get("", "key_id").map_err(&read)?,
        connection_id: row.try_get("", "connection_id").map_err(&read)?,
        tenant_id: row.try_get("", "tenant_id").map_err(&read)?,
        target: row.try_get("", "target").map_err(&read)?,
        caller_address: row.try_get("", "caller_address").map_err(&read)?,
        trace_id: row.try_get("", "trace_id").map_err(&read)?,
        status_before: row.try_get("", "status_before").map_err(&read)?,
        status_after: row.try_get("", "status_after").map_err(&read)?,
    })
}
