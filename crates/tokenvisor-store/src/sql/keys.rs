//! Key rotation: re-encrypts every stored secret under the keyring's primary key, online.
//!
//! - Every encrypted column is listed in [`ENCRYPTED`]: connection tokens, integration
//!   client secrets, PKCE verifiers of pending authorizations, webhook signing secrets and
//!   the key check. A test fails when a table gains a `bytea`/`BLOB` column not listed here.
//! - Rows are read in keyset batches ordered by primary key. A value whose header already
//!   names the primary key in the current layout is left alone, so a rotation is
//!   idempotent and a second run over finished tables changes nothing.
//! - Each row is written with a compare-and-set on its old ciphertexts
//!   (`UPDATE ... WHERE id = ? AND access_token = <old> AND refresh_token = <old>`). Every
//!   write of a secret seals it with a fresh random nonce, so a refresh (or any other
//!   writer) committed in between changes the ciphertext and the rotation's update matches
//!   nothing: it never overwrites a newer commit. Such a row is read again and retried in
//!   the same transaction (its new value is usually already under the primary key, when
//!   the writer has the same keyring). The connection's `version` is not bumped: the
//!   connection actors' own compare-and-swap on `version` keeps working untouched.
//! - One short transaction per batch holds the rewrites and the progress row
//!   (`tokenvisor_key_rotations`: the last key done, counts), so after a crash (`kill -9`)
//!   the next run resumes exactly after the last committed batch. The progress row has
//!   one writer: its update matches the cursor the run read, so a second rotation
//!   towards the same key that moved it first makes this one stop with an error.
//! - At the end, [`KeyRotation::usage`] counts the values per key id: every value should
//!   be under the primary key; one that is not means another process still writes with an
//!   older primary key (a replica not yet restarted with the new keys). Running the
//!   rotation again then goes over every table once more; when nothing is left it returns
//!   the finished progress at once.

use super::{begin_write, db_error, statement};
use crate::StoreError;
use crate::crypto::{CIPHERTEXT_VERSION, KeyId, Keyring};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DatabaseTransaction, DbBackend, QueryResult, Value};
use std::time::Duration;
use uuid::Uuid;

/// How a table's primary key is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Uuid,
    Text,
}

/// One table holding encrypted columns.
#[derive(Debug)]
struct EncryptedTable {
    /// The table's name.
    table: &'static str,
    /// Its primary key column (one column).
    key: &'static str,
    key_kind: KeyKind,
    /// The encrypted columns.
    columns: &'static [&'static str],
    /// Extra condition selecting the encrypted rows, if not all of them are.
    filter: Option<&'static str>,
    /// The associated data of a value, from the row key and the column.
    aad: fn(&str, &str) -> String,
}

/// Every encrypted column of the schema (see the module documentation).
const ENCRYPTED: &[EncryptedTable] = &[
    EncryptedTable {
        table: "tokenvisor_meta",
        key: "key",
        key_kind: KeyKind::Text,
        columns: &["value"],
        filter: Some("key = 'key_check'"),
        aad: |_, _| "meta:key_check".to_owned(),
    },
    EncryptedTable {
        table: "tokenvisor_integrations",
        key: "id",
        key_kind: KeyKind::Uuid,
        columns: &["client_secret"],
        filter: None,
        aad: |key, column| format!("integrations:{key}:{column}"),
    },
    EncryptedTable {
        table: "tokenvisor_webhook_endpoints",
        key: "id",
        key_kind: KeyKind::Text,
        columns: &["secret", "previous_secret"],
        filter: None,
        aad: |key, column| format!("webhook_endpoints:{key}:{column}"),
    },
    EncryptedTable {
        table: "tokenvisor_authorization_states",
        key: "state_hash",
        key_kind: KeyKind::Text,
        columns: &["code_verifier"],
        filter: None,
        aad: |key, column| format!("authorization_states:{key}:{column}"),
    },
    EncryptedTable {
        table: "tokenvisor_connections",
        key: "id",
        key_kind: KeyKind::Uuid,
        columns: &["access_token", "refresh_token"],
        filter: None,
        aad: |key, column| format!("connections:{key}:{column}"),
    },
];

/// The encrypted columns, as `table.column`, for the schema test.
pub fn encrypted_columns() -> Vec<String> {
    ENCRYPTED
        .iter()
        .flat_map(|table| {
            table
                .columns
                .iter()
                .map(move |column| format!("{}.{column}", table.table))
        })
        .collect()
}

/// Called between a batch's read and its write with the table's name.
type BetweenHook = dyn Fn(&'static str) -> futures::future::BoxFuture<'static, ()> + Send + Sync;

/// How many times a row lost to concurrent writers is retried within its batch.
const RACE_RETRIES: usize = 20;

/// How a rotation runs.
#[derive(Debug, Clone)]
pub struct RotationOptions {
    /// Rows read and rewritten per transaction.
    pub batch_size: u32,
    /// A pause after each batch, to spare a busy database.
    pub pause: Duration,
}

impl Default for RotationOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            pause: Duration::ZERO,
        }
    }
}

/// The progress of one table in a rotation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableProgress {
    /// The table.
    pub table: String,
    /// The primary key of the last row done, if any.
    pub cursor: Option<String>,
    /// Rows re-encrypted.
    pub rows_rewritten: u64,
    /// Rows already under the target key (skipped).
    pub rows_current: u64,
    /// Compare-and-set updates lost to a concurrent writer (then retried).
    pub rows_raced: u64,
    /// Whether every row of the table is done.
    pub finished: bool,
}

/// The progress of a rotation towards one key, as persisted in `tokenvisor_key_rotations`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationProgress {
    /// The id of the key every value is rewritten under.
    pub target_key_id: String,
    /// Per table, in the order they are rotated.
    pub tables: Vec<TableProgress>,
    /// When it started (Unix milliseconds).
    pub started_at_ms: i64,
    /// The last batch (Unix milliseconds).
    pub updated_at_ms: i64,
    /// When the last table finished, if it has.
    pub finished_at_ms: Option<i64>,
}

impl RotationProgress {
    /// Rows re-encrypted, over every table.
    pub fn rows_rewritten(&self) -> u64 {
        self.tables.iter().map(|table| table.rows_rewritten).sum()
    }

    /// Rows found already under the target key, over every table.
    pub fn rows_current(&self) -> u64 {
        self.tables.iter().map(|table| table.rows_current).sum()
    }

    /// Updates lost to concurrent writers (and retried), over every table.
    pub fn rows_raced(&self) -> u64 {
        self.tables.iter().map(|table| table.rows_raced).sum()
    }

    /// Whether every table is done.
    pub fn finished(&self) -> bool {
        self.tables.iter().all(|table| table.finished)
    }
}

/// How many stored values of one column are under one key and layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// `table.column`.
    pub column: String,
    /// The ciphertext layout version (2: XChaCha20-Poly1305, 1: AES-256-GCM).
    pub version: u8,
    /// The key id (8 hex characters), or `None` for an unreadable header.
    pub key_id: Option<String>,
    /// Values.
    pub count: u64,
}

/// Key rotation over a [`super::SqlStore`]'s database (see [`super::SqlStore::key_rotation`]).
#[derive(Debug, Clone)]
pub struct KeyRotation {
    db: DatabaseConnection,
    keyring: Keyring,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// One row of a batch: its key and its encrypted columns' values.
struct Row {
    key: String,
    values: Vec<Option<Vec<u8>>>,
}

impl KeyRotation {
    pub(super) fn new(db: DatabaseConnection, keyring: Keyring) -> Self {
        Self { db, keyring }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The keyring whose primary key values are rewritten under.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Re-encrypts every stored secret under the primary key, resuming the rotation
    /// towards that key where a previous run stopped. `on_batch` is called after each
    /// committed batch with the progress so far. Returns the final progress.
    ///
    /// Safe while refreshes run (see the module documentation); an error (a value that
    /// no configured key decrypts, the database gone) stops it, and a later run resumes.
    pub async fn rotate(
        &self,
        options: &RotationOptions,
        on_batch: impl FnMut(&RotationProgress) + Send,
    ) -> Result<RotationProgress, StoreError> {
        self.rotate_with_hook(options, on_batch, None).await
    }

    /// [`KeyRotation::rotate`], calling `between_read_and_write` after each batch is read
    /// and before it is written (tests race a writer there).
    async fn rotate_with_hook(
        &self,
        options: &RotationOptions,
        mut on_batch: impl FnMut(&RotationProgress) + Send,
        between_read_and_write: Option<&BetweenHook>,
    ) -> Result<RotationProgress, StoreError> {
        let target = self.keyring.primary_key_id().to_string();
        if let Some(previous) = self.progress_of(&target).await?
            && previous.finished()
        {
            if self.values_not_current().await? == 0 {
                return Ok(previous);
            }
            // Finished, yet values were written under another key since (a process still
            // running with an older primary key): go over everything again.
            self.db
                .execute_raw(statement(
                    self.backend(),
                    "DELETE FROM tokenvisor_key_rotations WHERE target_key_id = $1",
                    vec![Value::from(target.clone())],
                ))
                .await
                .map_err(db_error("restarting a key rotation"))?;
        }
        let started = now_ms();
        for table in ENCRYPTED {
            let sql = "INSERT INTO tokenvisor_key_rotations (target_key_id, table_name, cursor_key, rows_rewritten, \
                       rows_current, rows_raced, started_at_ms, updated_at_ms, finished_at_ms) \
                       VALUES ($1, $2, NULL, 0, 0, 0, $3, $4, NULL) ON CONFLICT (target_key_id, table_name) DO NOTHING";
            self.db
                .execute_raw(statement(
                    self.backend(),
                    sql,
                    vec![
                        Value::from(target.clone()),
                        Value::from(table.table),
                        Value::from(started),
                        Value::from(started),
                    ],
                ))
                .await
                .map_err(db_error("starting a key rotation"))?;
        }
        let Some(mut progress) = self.progress_of(&target).await? else {
            return Err(StoreError::Database("the key rotation's progress vanished".to_owned()));
        };
        let batch_size = options.batch_size.max(1);
        for (index, table) in ENCRYPTED.iter().enumerate() {
            while !progress.tables[index].finished {
                let cursor = progress.tables[index].cursor.clone();
                let rows = self.read_batch(table, cursor.as_deref(), batch_size).await?;
                if let Some(hook) = between_read_and_write {
                    hook(table.table).await;
                }
                let txn = begin_write(&self.db).await?;
                let mut done = progress.tables[index].clone();
                for row in &rows {
                    self.rotate_row(&txn, table, row, &mut done).await?;
                }
                if let Some(last) = rows.last() {
                    done.cursor = Some(last.key.clone());
                }
                let now = now_ms();
                if rows.len() < batch_size as usize {
                    done.finished = true;
                }
                // The progress row has one writer: the update matches only the cursor
                // this run read. Another rotation towards the same key (the CLI beside the
                // API, another replica) that moved it first makes this one stop here,
                // rolling its batch back, rather than write a stale cursor and counts.
                let same_cursor = match self.backend() {
                    DbBackend::Postgres => "cursor_key IS NOT DISTINCT FROM $9",
                    _ => "cursor_key IS $9",
                };
                let sql = format!(
                    "UPDATE tokenvisor_key_rotations SET cursor_key = $1, rows_rewritten = $2, rows_current = $3, \
                     rows_raced = $4, updated_at_ms = $5, finished_at_ms = $6 \
                     WHERE target_key_id = $7 AND table_name = $8 AND {same_cursor} AND finished_at_ms IS NULL"
                );
                let recorded = txn
                    .execute_raw(statement(
                        self.backend(),
                        &sql,
                        vec![
                            Value::from(done.cursor.clone()),
                            Value::from(to_i64(done.rows_rewritten)),
                            Value::from(to_i64(done.rows_current)),
                            Value::from(to_i64(done.rows_raced)),
                            Value::from(now),
                            Value::from(done.finished.then_some(now)),
                            Value::from(target.clone()),
                            Value::from(table.table),
                            Value::from(cursor.clone()),
                        ],
                    ))
                    .await
                    .map_err(db_error("recording the key rotation's progress"))?;
                if recorded.rows_affected() != 1 {
                    drop(txn);
                    return Err(StoreError::Key(format!(
                        "another key rotation towards key {target} moved its progress on {} while this one ran: \
                         this run stopped and leaves the rest to it (`tokenvisor keys status` shows its progress; \
                         run again once it is done)",
                        table.table
                    )));
                }
                txn.commit()
                    .await
                    .map_err(db_error("committing a key rotation batch"))?;
                progress.tables[index] = done;
                progress.updated_at_ms = now;
                if progress.finished() {
                    progress.finished_at_ms = Some(now);
                }
                on_batch(&progress);
                if !options.pause.is_zero() && !progress.tables[index].finished {
                    tokio::time::sleep(options.pause).await;
                }
            }
        }
        Ok(progress)
    }

    /// Reads up to `limit` rows of `table` after `cursor`, in primary key order.
    async fn read_batch(
        &self,
        table: &EncryptedTable,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(filter) = table.filter {
            conditions.push(filter.to_owned());
        }
        if let Some(cursor) = cursor {
            conditions.push(format!("{} > $1", table.key));
            values.push(key_value(table, cursor)?);
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {}, {} FROM {} {where_clause} ORDER BY {} LIMIT {limit}",
            table.key,
            table.columns.join(", "),
            table.table,
            table.key
        );
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), &sql, values))
            .await
            .map_err(db_error("reading rows to re-encrypt"))?;
        rows.iter().map(|row| read_row(table, row)).collect()
    }

    /// Rewrites one row under the primary key, retrying when a concurrent writer wins.
    async fn rotate_row(
        &self,
        txn: &DatabaseTransaction,
        table: &EncryptedTable,
        row: &Row,
        done: &mut TableProgress,
    ) -> Result<(), StoreError> {
        let mut values = row.values.clone();
        for _ in 0..RACE_RETRIES {
            if values.iter().flatten().all(|value| self.keyring.is_current(value)) {
                done.rows_current += 1;
                return Ok(());
            }
            let mut rewritten = Vec::with_capacity(values.len());
            for (column, value) in table.columns.iter().zip(&values) {
                rewritten.push(match value {
                    Some(value) if !self.keyring.is_current(value) => Some(
                        self.keyring
                            .reencrypt(value, (table.aad)(&row.key, column).as_bytes())?,
                    ),
                    other => other.clone(),
                });
            }
            let mut sets = Vec::new();
            let mut guards = vec![format!("{} = $1", table.key)];
            let mut binds = vec![key_value(table, &row.key)?];
            for ((column, old), new) in table.columns.iter().zip(&values).zip(rewritten) {
                binds.push(Value::from(new));
                sets.push(format!("{column} = ${}", binds.len()));
                match old {
                    Some(old) => {
                        binds.push(Value::from(old.clone()));
                        guards.push(format!("{column} = ${}", binds.len()));
                    }
                    None => guards.push(format!("{column} IS NULL")),
                }
            }
            // Placeholders must appear in the order they are bound (SQLite binds by
            // position): the SET values, then the key, then the guards.
            let sql = renumbered_update(table.table, &sets, &guards);
            let result = txn
                .execute_raw(statement(
                    self.backend(),
                    &sql.0,
                    sql.1.iter().map(|&i| binds[i].clone()).collect(),
                ))
                .await
                .map_err(db_error("re-encrypting a row"))?;
            if result.rows_affected() == 1 {
                done.rows_rewritten += 1;
                return Ok(());
            }
            // A concurrent writer committed first (or the row is gone): read it again.
            done.rows_raced += 1;
            let sql = format!(
                "SELECT {}, {} FROM {} WHERE {} = $1",
                table.key,
                table.columns.join(", "),
                table.table,
                table.key
            );
            let fresh = txn
                .query_one_raw(statement(self.backend(), &sql, vec![key_value(table, &row.key)?]))
                .await
                .map_err(db_error("reading a row to re-encrypt"))?;
            let Some(fresh) = fresh else {
                return Ok(());
            };
            values = read_row(table, &fresh)?.values;
        }
        Err(StoreError::Database(format!(
            "a row of {} kept changing during its re-encryption ({RACE_RETRIES} attempts); run the rotation again",
            table.table
        )))
    }

    async fn progress_of(&self, target: &str) -> Result<Option<RotationProgress>, StoreError> {
        let sql = "SELECT table_name, cursor_key, rows_rewritten, rows_current, rows_raced, started_at_ms, updated_at_ms, \
                   finished_at_ms FROM tokenvisor_key_rotations WHERE target_key_id = $1";
        let rows = self
            .db
            .query_all_raw(statement(self.backend(), sql, vec![Value::from(target)]))
            .await
            .map_err(db_error("reading the key rotation's progress"))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let read = db_error("reading the key rotation's progress");
        let mut tables = Vec::new();
        let (mut started, mut updated, mut finished) = (i64::MAX, 0, Some(0));
        for table in ENCRYPTED {
            let mut found = None;
            for row in &rows {
                let name: String = row.try_get("", "table_name").map_err(&read)?;
                if name == table.table {
                    found = Some(row);
                }
            }
            let Some(row) = found else {
                tables.push(TableProgress {
                    table: table.table.to_owned(),
                    cursor: None,
                    rows_rewritten: 0,
                    rows_current: 0,
                    rows_raced: 0,
                    finished: false,
                });
                finished = None;
                continue;
            };
            let started_at: i64 = row.try_get("", "started_at_ms").map_err(&read)?;
            let updated_at: i64 = row.try_get("", "updated_at_ms").map_err(&read)?;
            let finished_at: Option<i64> = row.try_get("", "finished_at_ms").map_err(&read)?;
            started = started.min(started_at);
            updated = updated.max(updated_at);
            finished = match (finished, finished_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            tables.push(TableProgress {
                table: table.table.to_owned(),
                cursor: row.try_get("", "cursor_key").map_err(&read)?,
                rows_rewritten: to_u64(row.try_get("", "rows_rewritten").map_err(&read)?),
                rows_current: to_u64(row.try_get("", "rows_current").map_err(&read)?),
                rows_raced: to_u64(row.try_get("", "rows_raced").map_err(&read)?),
                finished: finished_at.is_some(),
            });
        }
        Ok(Some(RotationProgress {
            target_key_id: target.to_owned(),
            tables,
            started_at_ms: started,
            updated_at_ms: updated,
            finished_at_ms: finished,
        }))
    }

    /// The progress of the rotation towards `target`, or by default the most recently
    /// updated rotation; `None` if there is none.
    pub async fn progress(&self, target: Option<KeyId>) -> Result<Option<RotationProgress>, StoreError> {
        let target = match target {
            Some(target) => target.to_string(),
            None => {
                let sql = "SELECT target_key_id FROM tokenvisor_key_rotations ORDER BY updated_at_ms DESC LIMIT 1";
                let row = self
                    .db
                    .query_one_raw(statement(self.backend(), sql, Vec::new()))
                    .await
                    .map_err(db_error("reading the key rotation's progress"))?;
                let Some(row) = row else {
                    return Ok(None);
                };
                row.try_get("", "target_key_id")
                    .map_err(db_error("reading the key rotation's progress"))?
            }
        };
        self.progress_of(&target).await
    }

    /// How many stored values each key (and layout) holds, per encrypted column.
    pub async fn usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        let mut usage = Vec::new();
        for table in ENCRYPTED {
            for column in table.columns {
                let filter = table.filter.map(|filter| format!("AND {filter}")).unwrap_or_default();
                let sql = format!(
                    "SELECT substr({column}, 1, 5) AS head, COUNT(*) AS n FROM {} WHERE {column} IS NOT NULL {filter} \
                     GROUP BY substr({column}, 1, 5)",
                    table.table
                );
                let rows = self
                    .db
                    .query_all_raw(statement(self.backend(), &sql, Vec::new()))
                    .await
                    .map_err(db_error("counting values per key"))?;
                for row in rows {
                    let head: Vec<u8> = row.try_get("", "head").map_err(db_error("counting values per key"))?;
                    let count: i64 = row.try_get("", "n").map_err(db_error("counting values per key"))?;
                    let key_id = (head.len() == 5).then(|| head[1..5].iter().map(|b| format!("{b:02x}")).collect());
                    usage.push(KeyUsage {
                        column: format!("{}.{column}", table.table),
                        version: head.first().copied().unwrap_or(0),
                        key_id,
                        count: to_u64(count),
                    });
                }
            }
        }
        Ok(usage)
    }

    /// How many stored values are not under the primary key in the current layout
    /// (0 after a complete rotation, unless a process still writes with an older key).
    pub async fn values_not_current(&self) -> Result<u64, StoreError> {
        let primary = self.keyring.primary_key_id().to_string();
        Ok(self
            .usage()
            .await?
            .iter()
            .filter(|usage| usage.version != CIPHERTEXT_VERSION || usage.key_id.as_deref() != Some(primary.as_str()))
            .map(|usage| usage.count)
            .sum())
    }
}

/// The `UPDATE` with its placeholders renumbered in textual order, and for each
/// placeholder the index of its bound value.
fn renumbered_update(table: &str, sets: &[String], guards: &[String]) -> (String, Vec<usize>) {
    let template = format!("UPDATE {table} SET {} WHERE {}", sets.join(", "), guards.join(" AND "));
    let mut sql = String::with_capacity(template.len());
    let mut order = Vec::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            sql.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        let index = digits.parse::<usize>().unwrap_or(1).saturating_sub(1);
        order.push(index);
        sql.push_str(&format!("${}", order.len()));
    }
    (sql, order)
}

fn key_value(table: &EncryptedTable, key: &str) -> Result<Value, StoreError> {
    match table.key_kind {
        KeyKind::Text => Ok(Value::from(key.to_owned())),
        KeyKind::Uuid => Uuid::parse_str(key)
            .map(Value::from)
            .map_err(|_| StoreError::Database(format!("{}: a key rotation cursor is not a uuid", table.table))),
    }
}

fn read_row(table: &EncryptedTable, row: &QueryResult) -> Result<Row, StoreError> {
    let read = db_error("reading rows to re-encrypt");
    let key = match table.key_kind {
        KeyKind::Text => row.try_get::<String>("", table.key).map_err(&read)?,
        KeyKind::Uuid => row.try_get::<Uuid>("", table.key).map_err(&read)?.to_string(),
    };
    let mut values = Vec::with_capacity(table.columns.len());
    for column in table.columns {
        values.push(row.try_get::<Option<Vec<u8>>>("", column).map_err(&read)?);
    }
    Ok(Row { key, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_in_textual_order() {
        let (sql, order) = renumbered_update(
            "t",
            &["a = $2".to_owned(), "b = $4".to_owned()],
            &["id = $1".to_owned(), "a = $3".to_owned(), "b IS NULL".to_owned()],
        );
        assert_eq!(
            sql,
            "UPDATE t SET a = $1, b = $2 WHERE id = $3 AND a = $4 AND b IS NULL"
        );
        assert_eq!(order, vec![1, 3, 0, 2]);
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod rotation_tests;
