//! [`SqlStore`]: the [`Store`] over sea-orm, on SQLite (the embedded default, one file)
//! or PostgreSQL (production), with tokens and client secrets encrypted at rest.
//!
//! - The schema comes from `tokenvisor-migration`: every table is named `tokenvisor_*` and
//!   the migrations are bookkept in `tokenvisor_migrations`, so the store can share a host
//!   application's database. [`SqlStore::connect`] and [`SqlStore::from_connection`] run
//!   the migrations; [`SqlStore::from_connection_unmigrated`] does not (the host runs
//!   [`crate::migrate`] when it chooses).
//! - Secrets are encrypted with the [`Keyring`]; each ciphertext is bound to its table,
//!   row id and column (`connections:<id>:access_token`), so a value copied to another
//!   row or column does not decrypt. These labels name the tables as they were first
//!   called (before the `tokenvisor_` prefix) and never change: existing data must decrypt.
//! - The `tokenvisor_meta` row `key_check` proves that the configured keys are the ones the
//!   data was written with: a store opened with the wrong keys refuses to start and writes
//!   nothing (not even the upgrade of an old-layout database).
//! - Every connection write is a single `UPDATE ... WHERE id = ? AND version = ?`.
//!
//! Error messages never contain a secret nor a bound parameter value.

#[cfg(feature = "postgres")]
use crate::PartitionStore;
use crate::crypto::Keyring;
use crate::entity::{authorization_state, connection, integration, meta, refresh_attempt};
use crate::{ATTEMPT_HISTORY_LIMIT, CasOutcome, Fence, LeaseOutcome, Store, StoreError};
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use sea_orm::sea_query::{Expr, ExprTrait, Query};
#[cfg(feature = "sqlite")]
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, Order, PaginatorTrait as _, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;
use std::fmt;
#[cfg(feature = "postgres")]
use std::sync::{Arc, OnceLock};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::time::Duration;
use tokenvisor_core::{
    Connection, ConnectionFilter, ConnectionId, ConnectionKey, ConnectionSort, ConnectionStatus, Integration,
    IntegrationId, LastError, PendingAuthorization, RefreshAttempt, SecretString, SortValue, TenantId,
};
use tokenvisor_migration::Migrator;
use uuid::Uuid;

/// The `tokenvisor_meta` key whose value proves which encryption key the database was
/// created with.
const KEY_CHECK: &str = "key_check";
/// The table holding the key check.
const META_TABLE: &str = "tokenvisor_meta";
/// The table that held the key check in the old unprefixed layout.
const LEGACY_META_TABLE: &str = "meta";
/// Associated data of the key check ciphertext.
const KEY_CHECK_AAD: &[u8] = b"meta:key_check";
/// The plaintext of the key check.
const KEY_CHECK_PLAINTEXT: &[u8] = b"tokenvisor key check v1";
/// How long a SQLite statement waits for another writer before failing.
#[cfg(feature = "sqlite")]
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pool size for a SQLite file (WAL: several readers, one writer at a time).
const SQLITE_FILE_POOL_SIZE: u32 = 4;
/// How long the first connection to PostgreSQL may take before start-up gives up.
#[cfg(feature = "postgres")]
const POSTGRES_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection, made before the pool: an unreachable or refusing server is reported
/// with its cause ("connection refused", "password authentication failed") within
/// [`POSTGRES_PROBE_TIMEOUT`], where the pool would say "pool timed out" after 30 s.
#[cfg(feature = "postgres")]
async fn probe_postgres(database_url: &str) -> Result<(), StoreError> {
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    let options: sea_orm::sqlx::postgres::PgConnectOptions = database_url
        .parse()
        .map_err(|error| StoreError::Database(format!("invalid PostgreSQL URL: {error}")))?;
    match tokio::time::timeout(POSTGRES_PROBE_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        // sqlx's messages name the failure (refused, unknown host, authentication), never
        // the URL or its password.
        Ok(Err(error)) => Err(StoreError::Database(format!("cannot connect to PostgreSQL: {error}"))),
        Err(_) => Err(StoreError::Database(format!(
            "cannot connect to PostgreSQL: no answer within {} s",
            POSTGRES_PROBE_TIMEOUT.as_secs()
        ))),
    }
}

/// Pool size for PostgreSQL: enough for the default 64 refreshes in flight to commit
/// in parallel (PostgreSQL groups their WAL flushes).
pub const POSTGRES_POOL_SIZE: u32 = 32;
/// The history of a connection is trimmed once every this many recorded attempts.
const TRIM_EVERY: i64 = 16;

#[cfg(feature = "postgres")]
mod group_commit;

/// The database's clock in milliseconds since the Unix epoch: every replica judges
/// leases by the same clock.
pub(super) fn now_ms(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        _ => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}
mod access;
mod keys;
mod lease;
mod outbox;
#[cfg(feature = "postgres")]
mod partitions;

pub use access::{AccessStore, ApiKeyRecord, AuditEvent, AuditFilter};
#[cfg(feature = "postgres")]
use group_commit::{GroupCommitter, PreparedCommit};
pub use keys::{KeyRotation, KeyUsage, RotationOptions, RotationProgress, TableProgress, encrypted_columns};
pub use outbox::{
    DeadLetter, DeadLetterReason, EndpointSource, OutboxMessage, ReplayOutcome, WebhookEndpoint, WebhookOutbox,
};

/// A [`Store`] over SQLite or PostgreSQL with secrets encrypted at rest.
#[derive(Clone)]
pub struct SqlStore {
    db: DatabaseConnection,
    keyring: Keyring,
    backend: &'static str,
    /// PostgreSQL: the refresh group committer, started by the first refresh commit
    /// (`None` inside when there was no tokio runtime to start it on).
    #[cfg(feature = "postgres")]
    group_committer: Arc<OnceLock<Option<GroupCommitter>>>,
    /// Whether refresh commits on PostgreSQL go through the group committer.
    group_commit: bool,
    /// The audit trail's writer's own small pool (see [`AUDIT_WRITER_POOL`]), when the
    /// store opened the database itself; else the writer shares `db`.
    audit_db: Option<DatabaseConnection>,
}

/// Connections of the audit trail's writer on PostgreSQL, apart from the store's pool:
/// under load (thousands of token reads queueing for a pooled connection) its batches
/// never wait behind the reads they record; two let one batch commit while the next is
/// bound. A SQLite file gets one (one writer at a time anyway: the second batch in flight
/// waits for it); an in-memory database none (the writer shares the store's connection).
pub const AUDIT_WRITER_POOL: u32 = 2;

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .field("keyring", &self.keyring)
            .finish()
    }
}

impl SqlStore {
    /// Opens the database at `database_url`, brings its schema up to date and checks the
    /// encryption keys.
    ///
    /// - `sqlite://path/to/file.db` (created when missing; WAL journal, 5 s busy timeout,
    ///   foreign keys on) or `sqlite::memory:`;
    /// - `postgres://user@host:port/database` (or `postgresql://`).
    ///
    /// A database that already holds a key check must decrypt it with `keyring`, or this
    /// fails with [`StoreError::Key`] naming the key id the data needs and the configured
    /// ids, and writes nothing. A fresh database records its key check.
    pub async fn connect(database_url: &str, keyring: Keyring) -> Result<Self, StoreError> {
        Self::connect_with_pool(database_url, keyring, POSTGRES_POOL_SIZE).await
    }

    /// [`SqlStore::connect`] with at most `max_connections` pooled PostgreSQL connections
    /// (default [`POSTGRES_POOL_SIZE`]; SQLite ignores it). Each replica also holds one
    /// more for LISTEN when replicas share the work, and the audit trail's writer its own
    /// ([`AUDIT_WRITER_POOL`] on PostgreSQL, one on a SQLite file; none in memory).
    pub async fn connect_with_pool(
        database_url: &str,
        keyring: Keyring,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let db = open(database_url, Ord::max(max_connections, 2)).await?;
        let mut store = match Self::from_connection(db.clone(), keyring).await {
            Ok(store) => store,
            Err(error) => {
                let _ = db.close().await;
                return Err(error);
            }
        };
        if !is_in_memory(database_url) {
            match open_pool(database_url, AUDIT_WRITER_POOL, 1).await {
                Ok(audit_db) => store.audit_db = Some(audit_db),
                Err(error) => {
                    let _ = db.close().await;
                    return Err(error);
                }
            }
        }
        Ok(store)
    }

    /// Wraps a connection the embedder opened itself, running tokenvisor's migrations
    /// first (see [`crate::migrate`]): the same migrations and key check as
    /// [`SqlStore::connect`]. Only SQLite and PostgreSQL are supported.
    ///
    /// The keys are checked before anything is written: against `tokenvisor_meta`, or on a
    /// database of the old unprefixed layout against its `meta` before it is upgraded. A
    /// wrong key fails with [`StoreError::Key`] and leaves the database as it was.
    ///
    /// Everything tokenvisor creates is named `tokenvisor_*` and its migrations are
    /// bookkept in `tokenvisor_migrations`: the host's tables and the host's own
    /// sea-orm-migration bookkeeping (`seaql_migrations`) are never touched, except that
    /// upgrading an old-layout database removes tokenvisor's own rows from
    /// `seaql_migrations`. A host table with one of our names fails this call with an error
    /// naming the table, and the migration leaves nothing behind.
    pub async fn from_connection(db: DatabaseConnection, keyring: Keyring) -> Result<Self, StoreError> {
        let backend = backend_name(db.get_database_backend())?;
        // Verify the keys before anything (migrations included) is written.
        let legacy = tokenvisor_migration::has_legacy_layout(&db)
            .await
            .map_err(db_error("inspecting the schema"))?;
        let meta_table = if legacy { LEGACY_META_TABLE } else { META_TABLE };
        verify_key_check(&db, &keyring, meta_table).await?;
        if legacy {
            tracing::info!("upgrading tokenvisor's old unprefixed tables in place");
        }
        crate::migrate(&db).await?;
        Self::open_migrated(db, keyring, backend).await
    }

    /// Wraps a connection the embedder opened itself WITHOUT running migrations: the
    /// embedder runs [`crate::migrate`] itself (at deploy time, from its own migration
    /// step, ...). Only SQLite and PostgreSQL are supported.
    ///
    /// Creates, alters and renames nothing. It fails with [`StoreError::Database`] when
    /// tokenvisor's schema is not up to date (a migration pending, the database of an
    /// older layout, or of a newer tokenvisor), and with [`StoreError::Key`] when the keys
    /// do not match the data (then it writes nothing). On success it writes at most the
    /// key check row, on a database that has none yet.
    pub async fn from_connection_unmigrated(db: DatabaseConnection, keyring: Keyring) -> Result<Self, StoreError> {
        let backend = backend_name(db.get_database_backend())?;
        let pending = Migrator::get_pending_migrations_read_only(&db)
            .await
            .map_err(db_error("reading the applied migrations"))?;
        if !pending.is_empty() {
            let names: Vec<&str> = pending.iter().map(|migration| migration.name()).collect();
            return Err(StoreError::Database(format!(
                "tokenvisor's schema is not up to date ({} migration(s) pending: {}); run tokenvisor_store::migrate \
                 (or `tokenvisor migrate`) first",
                names.len(),
                names.join(", ")
            )));
        }
        verify_key_check(&db, &keyring, META_TABLE).await?;
        Self::open_migrated(db, keyring, backend).await
    }

    /// Records or verifies the key check on a migrated database.
    async fn open_migrated(
        db: DatabaseConnection,
        keyring: Keyring,
        backend: &'static str,
    ) -> Result<Self, StoreError> {
        ensure_key_check(&db, &keyring).await?;
        tracing::debug!(backend, primary_key_id = %keyring.primary_key_id(), "store opened");
        Ok(Self {
            db,
            keyring,
            backend,
            #[cfg(feature = "postgres")]
            group_committer: Arc::default(),
            group_commit: true,
            audit_db: None,
        })
    }

    /// The underlying sea-orm connection (for embedders and tests).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        self.backend
    }

    /// This store with refresh commits on PostgreSQL written one transaction each
    /// (`BEGIN`, `UPDATE`, `INSERT`, `COMMIT`) instead of grouped into shared statements;
    /// the outcome is the same. For measuring what group commit brings.
    pub fn without_group_commit(mut self) -> Self {
        self.group_commit = false;
        self
    }

    /// PostgreSQL group commit so far: batch statements written, the refresh commits
    /// they carried, and the time they took in microseconds (zeros before the first
    /// refresh commit, and on SQLite).
    pub fn group_commit_stats(&self) -> (u64, u64, u64) {
        #[cfg(feature = "postgres")]
        if let Some(Some(committer)) = self.group_committer.get() {
            return committer.stats();
        }
        (0, 0, 0)
    }

    /// The webhook outbox in this store's database.
    pub fn webhook_outbox(&self) -> WebhookOutbox {
        WebhookOutbox::new(self.db.clone(), self.keyring.clone())
    }

    /// The API key and audit tables in this store's database.
    pub fn access_store(&self) -> AccessStore {
        AccessStore::new(self.db.clone(), self.audit_db.clone())
    }

    /// Key rotation over this store's database: re-encrypts every secret under the
    /// keyring's primary key (see [`KeyRotation`]).
    pub fn key_rotation(&self) -> KeyRotation {
        KeyRotation::new(self.db.clone(), self.keyring.clone())
    }

    /// The keyring this store encrypts with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Inserts many connections in one transaction, in batches (imports, benchmarks).
    /// A duplicate id or unknown integration fails the whole call.
    pub async fn insert_connections(&self, connections: &[Connection]) -> Result<(), StoreError> {
        // SQLite allows 32,766 bound parameters per statement; a row binds 22.
        const BATCH: usize = 1000;
        let txn = begin_write(&self.db).await?;
        for chunk in connections.chunks(BATCH) {
            let rows = chunk
                .iter()
                .map(|connection| self.connection_row(connection, connection.version))
                .collect::<Result<Vec<_>, _>>()?;
            connection::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await
                .map_err(db_error("inserting connections"))?;
        }
        txn.commit().await.map_err(db_error("committing connections"))
    }

    /// Closes the connection pool.
    pub async fn close(self) -> Result<(), StoreError> {
        // Both pools are closed whatever happens to the first.
        let audit = match self.audit_db {
            Some(audit_db) => audit_db
                .close()
                .await
                .map_err(db_error("closing the audit writer's connections")),
            None => Ok(()),
        };
        let main = self.db.close().await.map_err(db_error("closing the database"));
        main.and(audit)
    }

    fn seal(&self, plaintext: &str, aad: &str) -> Result<Vec<u8>, StoreError> {
        self.keyring.encrypt(plaintext.as_bytes(), aad.as_bytes())
    }

    fn open_secret(&self, ciphertext: &[u8], aad: &str) -> Result<SecretString, StoreError> {
        let plaintext = self.keyring.decrypt(ciphertext, aad.as_bytes())?;
        String::from_utf8(plaintext.to_vec())
            .map(SecretString::from)
            .map_err(|_| StoreError::Decryption {
                context: aad.to_owned(),
                reason: "decrypted value is not UTF-8".to_owned(),
            })
    }

    fn integration_row(&self, integration: &Integration) -> Result<integration::ActiveModel, StoreError> {
        let id = integration.id.0;
        Ok(integration::ActiveModel {
            id: Set(id),
            name: Set(integration.name.clone()),
            provider: Set(integration.provider.clone()),
            client_id: Set(integration.client_id.clone()),
            client_secret: Set(self.seal(integration.client_secret.expose(), &integration_secret_aad(id))?),
            scopes: Set(serde_json::Value::from(integration.scopes.clone())),
            redirect_uri: Set(integration.redirect_uri.clone()),
            data_center: Set(integration.data_center.clone()),
            token_url: Set(integration.token_url.clone()),
            authorize_url: Set(integration.authorize_url.clone()),
            revoke_url: Set(integration.revoke_url.clone()),
            settings: Set(integration.settings.clone()),
            created_at: Set(integration.created_at),
            updated_at: Set(integration.updated_at),
        })
    }

    fn integration_from_row(&self, row: integration::Model) -> Result<Integration, StoreError> {
        let client_secret = self.open_secret(&row.client_secret, &integration_secret_aad(row.id))?;
        let scopes: Vec<String> = serde_json::from_value(row.scopes)
            .map_err(|_| StoreError::Corrupt(format!("integrations:{}:scopes is not an array of strings", row.id)))?;
        Ok(Integration {
            id: IntegrationId(row.id),
            name: row.name,
            provider: row.provider,
            client_id: row.client_id,
            client_secret,
            scopes,
            redirect_uri: row.redirect_uri,
            data_center: row.data_center,
            token_url: row.token_url,
            authorize_url: row.authorize_url,
            revoke_url: row.revoke_url,
            settings: row.settings,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    fn connection_row(&self, connection: &Connection, version: i64) -> Result<connection::ActiveModel, StoreError> {
        let id = connection.id.0;
        let access_token = self.seal(connection.access_token.expose(), &connection_aad(id, "access_token"))?;
        let refresh_token = match &connection.refresh_token {
            Some(token) => Some(self.seal(token.expose(), &connection_aad(id, "refresh_token"))?),
            None => None,
        };
        let last_error = connection.last_error.as_ref();
        Ok(connection::ActiveModel {
            id: Set(id),
            tenant_id: Set(connection.tenant_id.as_str().to_owned()),
            integration_id: Set(connection.integration_id.0),
            connection_key: Set(connection.connection_key.as_str().to_owned()),
            access_token: Set(access_token),
            refresh_token: Set(refresh_token),
            token_type: Set(connection.token_type.clone()),
            scope: Set(connection.scope.clone()),
            issued_at: Set(connection.issued_at),
            expires_at: Set(connection.expires_at),
            next_refresh_at: Set(connection.next_refresh_at),
            last_refresh_at: Set(connection.last_refresh_at),
            status: Set(connection.status.as_str().to_owned()),
            is_active: Set(connection.is_active),
            refresh_failures: Set(connection.refresh_failures),
            consecutive_failures: Set(connection.consecutive_failures),
            last_error_code: Set(last_error.map(|error| error.code.clone())),
            last_error_message: Set(last_error.map(|error| error.message.clone())),
            last_error_at: Set(last_error.map(|error| error.at)),
            metadata: Set(serde_json::Value::Object(connection.metadata.clone())),
            version: Set(version),
            partition_id: Set(i32::from(tokenvisor_core::partition_of(connection.id))),
            created_at: Set(connection.created_at),
            updated_at: Set(connection.updated_at),
        })
    }

    fn connection_from_row(&self, row: connection::Model) -> Result<Connection, StoreError> {
        let id = row.id;
        let access_token = self.open_secret(&row.access_token, &connection_aad(id, "access_token"))?;
        let refresh_token = match &row.refresh_token {
            Some(ciphertext) => Some(self.open_secret(ciphertext, &connection_aad(id, "refresh_token"))?),
            None => None,
        };
        let tenant_id = TenantId::parse(row.tenant_id)
            .map_err(|_| StoreError::Corrupt(format!("connections:{id}:tenant_id is not a valid tenant id")))?;
        let connection_key = ConnectionKey::parse(row.connection_key)
            .map_err(|_| StoreError::Corrupt(format!("connections:{id}:connection_key is not a valid key")))?;
        let status: ConnectionStatus = row
            .status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("connections:{id}:status is not a known status")))?;
        let serde_json::Value::Object(metadata) = row.metadata else {
            return Err(StoreError::Corrupt(format!(
                "connections:{id}:metadata is not a JSON object"
            )));
        };
        let last_error = match (row.last_error_code, row.last_error_message, row.last_error_at) {
            (Some(code), Some(message), Some(at)) => Some(LastError { code, message, at }),
            _ => None,
        };
        Ok(Connection {
            id: ConnectionId(id),
            tenant_id,
            integration_id: IntegrationId(row.integration_id),
            connection_key,
            access_token,
            refresh_token,
            token_type: row.token_type,
            scope: row.scope,
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            next_refresh_at: row.next_refresh_at,
            last_refresh_at: row.last_refresh_at,
            status,
            is_active: row.is_active,
            refresh_failures: row.refresh_failures,
            consecutive_failures: row.consecutive_failures,
            last_error,
            metadata,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    fn connections_from_rows(&self, rows: Vec<connection::Model>) -> Result<Vec<Connection>, StoreError> {
        rows.into_iter().map(|row| self.connection_from_row(row)).collect()
    }
}

#[cfg(feature = "postgres")]
impl SqlStore {
    /// The refresh commit of `connection` over `expected_version` with `attempt`,
    /// encrypted and ready for [`group_commit`].
    fn prepared_commit(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
    ) -> Result<PreparedCommit, StoreError> {
        let id = connection.id.0;
        let access_token = self.seal(connection.access_token.expose(), &connection_aad(id, "access_token"))?;
        let refresh_token = match &connection.refresh_token {
            Some(token) => Some(self.seal(token.expose(), &connection_aad(id, "refresh_token"))?),
            None => None,
        };
        let metadata = serde_json::to_string(&connection.metadata)
            .map_err(|_| StoreError::Corrupt(format!("connections:{id}:metadata does not serialise")))?;
        let last_error = connection.last_error.as_ref();
        Ok(PreparedCommit {
            id,
            expected_version,
            tenant_id: connection.tenant_id.as_str().to_owned(),
            integration_id: connection.integration_id.0,
            access_token,
            refresh_token,
            token_type: connection.token_type.clone(),
            scope: connection.scope.clone(),
            issued_at: connection.issued_at,
            expires_at: connection.expires_at,
            next_refresh_at: connection.next_refresh_at,
            last_refresh_at: connection.last_refresh_at,
            status: connection.status.as_str().to_owned(),
            is_active: connection.is_active,
            refresh_failures: connection.refresh_failures,
            consecutive_failures: connection.consecutive_failures,
            last_error_code: last_error.map(|error| error.code.clone()),
            last_error_message: last_error.map(|error| error.message.clone()),
            last_error_at: last_error.map(|error| error.at),
            metadata,
            created_at: connection.created_at,
            updated_at: connection.updated_at,
            started_at: attempt.started_at,
            reason: attempt.reason.as_str().to_owned(),
            outcome: attempt.outcome.as_str().to_owned(),
            error_code: attempt.error_code.clone(),
            http_status: attempt.http_status.map(i32::from),
            duration_ms: attempt.duration_ms,
            trim_history: (expected_version + 1) % TRIM_EVERY == 0,
            fence_epoch: None,
        })
    }

    /// Commits through the group committer (PostgreSQL only); alone when it cannot run.
    /// Whether the compare-and-swap matched (and so committed).
    async fn commit_grouped(&self, commit: PreparedCommit) -> Result<bool, StoreError> {
        let pool = self.db.get_postgres_connection_pool();
        // The history keeps the newest older rows besides the one this commit inserts.
        let keep_older = ATTEMPT_HISTORY_LIMIT.saturating_sub(1) as i64;
        let committer = self
            .group_committer
            .get_or_init(|| GroupCommitter::start(pool.clone(), keep_older));
        let commit = match committer {
            Some(committer) => match committer.commit(commit).await {
                Ok(result) => return result,
                Err(commit) => commit,
            },
            None => commit,
        };
        Ok(group_commit::execute(pool, std::slice::from_ref(&commit), keep_older)
            .await?
            .contains(&commit.id))
    }
}

/// The connections matching `filter` (its `limit` aside).
/// The connections `filter` keeps, before any cursor or order. Its search is a prefix match
/// of the tenant id or the connection key that an index answers, or the connection's
/// integration is one of `named` (the integrations whose name starts with it, looked up
/// first: a short list, so the condition stays indexable). The prefix is written into the
/// SQL as a literal (it holds only `A-Z a-z 0-9 . _ : @ -`, checked here), so that
/// PostgreSQL plans it as an index range even in a generic plan: `LIKE 'prefix%'` (the
/// `text_pattern_ops` indexes of migration 000014, `_` escaped), and SQLite `GLOB 'prefix*'`
/// (its case-sensitive match, which uses the plain indexes).
fn filtered_connections(
    filter: &ConnectionFilter,
    backend: DbBackend,
    named: &[Uuid],
) -> sea_orm::Select<connection::Entity> {
    let mut query = connection::Entity::find();
    if let Some(tenant_id) = &filter.tenant_id {
        query = query.filter(connection::Column::TenantId.eq(tenant_id.as_str()));
    }
    if let Some(status) = filter.status {
        query = query.filter(connection::Column::Status.eq(status.as_str()));
    }
    if let Some(integration_id) = filter.integration_id {
        query = query.filter(connection::Column::IntegrationId.eq(integration_id.0));
    }
    if let Some(key) = &filter.connection_key {
        query = query.filter(connection::Column::ConnectionKey.eq(key.as_str()));
    }
    if let Some(search) = filter.search.as_deref() {
        if !ConnectionFilter::is_valid_search(search) {
            // Nothing starts with what no tenant id, key or name may hold.
            return query.filter(Expr::cust("1 = 0"));
        }
        let starts_with = |column: &str| match backend {
            // `_` is LIKE's one-character wildcard (and a character of tenant ids): escaped
            // with PostgreSQL's default escape character.
            DbBackend::Postgres => Expr::cust(format!("{column} LIKE '{}%'", search.replace('_', "\\_"))),
            _ => Expr::cust(format!("{column} GLOB '{search}*'")),
        };
        let mut any = sea_orm::Condition::any()
            .add(starts_with("tokenvisor_connections.tenant_id"))
            .add(starts_with("tokenvisor_connections.connection_key"));
        if !named.is_empty() {
            any = any.add(connection::Column::IntegrationId.is_in(named.iter().copied()));
        }
        query = query.filter(any);
    }
    query
}

/// The column a sort order reads.
fn sort_column(sort: ConnectionSort) -> connection::Column {
    match sort {
        ConnectionSort::Id => connection::Column::Id,
        ConnectionSort::ExpiresAt => connection::Column::ExpiresAt,
        ConnectionSort::Failures => connection::Column::ConsecutiveFailures,
        ConnectionSort::LastError => connection::Column::LastErrorAt,
    }
}

/// A sort value as a SQL value of its column.
fn sort_value(value: SortValue) -> Value {
    match value {
        SortValue::Count(count) => Value::from(i32::try_from(count).unwrap_or(i32::MAX)),
        SortValue::Time(time) => Value::from(time),
        SortValue::Missing => Value::from(None::<chrono::DateTime<chrono::Utc>>),
    }
}

/// The connections that should have a running owner (`active` or `degraded`, `is_active`).
pub(super) fn supervised_connections() -> sea_orm::Select<connection::Entity> {
    let supervised = [ConnectionStatus::Active, ConnectionStatus::Degraded];
    connection::Entity::find()
        .filter(connection::Column::IsActive.eq(true))
        .filter(connection::Column::Status.is_in(supervised.map(ConnectionStatus::as_str)))
}

impl SqlStore {
    /// The integrations whose name starts with the filter's search (none without one).
    async fn integrations_named(&self, filter: &ConnectionFilter) -> Result<Vec<Uuid>, StoreError> {
        let Some(search) = filter.search.as_deref() else {
            return Ok(Vec::new());
        };
        let names: Vec<(Uuid, String)> = integration::Entity::find()
            .select_only()
            .column(integration::Column::Id)
            .column(integration::Column::Name)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(db_error("reading integration names"))?;
        Ok(names
            .into_iter()
            .filter(|(_, name)| name.starts_with(search))
            .map(|(id, _)| id)
            .collect())
    }

    /// The rows of `query`, decrypted as the stream is polled (one query).
    pub(super) fn stream_connections(
        &self,
        query: sea_orm::Select<connection::Entity>,
    ) -> BoxStream<'_, Result<Connection, StoreError>> {
        let rows = async move {
            match query.stream(&self.db).await {
                Ok(rows) => rows.boxed(),
                Err(error) => futures::stream::once(async move { Err(error) }).boxed(),
            }
        };
        futures::stream::once(rows)
            .flatten()
            .map(move |row| {
                row.map_err(db_error("loading supervised connections"))
                    .and_then(|row| self.connection_from_row(row))
            })
            .boxed()
    }

    /// `UPDATE` of the whole row of `connection` to version `expected_version + 1`, if it
    /// is still at `expected_version` (and, with `fence`, its partition's epoch is current).
    fn cas_update(
        &self,
        connection: &Connection,
        expected_version: i64,
        fence: Option<Fence>,
    ) -> Result<sea_orm::UpdateMany<connection::Entity>, StoreError> {
        let mut row = self.connection_row(connection, expected_version + 1)?;
        row.id = NotSet;
        let mut update = connection::Entity::update_many()
            .set(row)
            .filter(connection::Column::Id.eq(connection.id.0))
            .filter(connection::Column::Version.eq(expected_version));
        if let Some(fence) = fence {
            update = update.filter(self.fence_condition(fence));
        }
        Ok(update)
    }

    /// The compare-and-swap of the whole row, fenced when `fence` is given.
    async fn write_connection(
        &self,
        connection: &Connection,
        expected_version: i64,
        fence: Option<Fence>,
    ) -> Result<CasOutcome, StoreError> {
        let next_version = expected_version + 1;
        let result = self
            .cas_update(connection, expected_version, fence)?
            .exec(&self.db)
            .await
            .map_err(db_error("writing a connection"))?;
        if result.rows_affected == 1 {
            return Ok(CasOutcome::Committed { version: next_version });
        }
        self.refused(connection.id, expected_version, fence).await
    }

    /// A refresh commit (the row and its history entry), fenced when `fence` is given.
    async fn write_refresh(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
        fence: Option<Fence>,
    ) -> Result<CasOutcome, StoreError> {
        let next_version = expected_version + 1;
        #[cfg(feature = "postgres")]
        if self.backend == "postgres" && self.group_commit {
            // One statement with the others waiting (group commit): the UPDATE, the history
            // INSERT and trim, committed together or not at all.
            let mut commit = self.prepared_commit(connection, expected_version, attempt)?;
            commit.fence_epoch = fence.map(|fence| fence.epoch);
            if self.commit_grouped(commit).await? {
                return Ok(CasOutcome::Committed { version: next_version });
            }
            return self.refused(connection.id, expected_version, fence).await;
        }
        let update = self.cas_update(connection, expected_version, fence)?;
        let txn = begin_write(&self.db).await?;
        let result = update.exec(&txn).await.map_err(db_error("writing a connection"))?;
        if result.rows_affected != 1 {
            txn.rollback().await.map_err(db_error("rolling back"))?;
            return self.refused(connection.id, expected_version, fence).await;
        }
        insert_attempt(&txn, attempt, next_version % TRIM_EVERY == 0).await?;
        txn.commit().await.map_err(db_error("committing a refresh"))?;
        Ok(CasOutcome::Committed { version: next_version })
    }

    /// `true` while `fence`'s epoch is its partition's and the lease runs (database clock).
    fn fence_condition(&self, fence: Fence) -> sea_orm::sea_query::SimpleExpr {
        let now = now_ms(self.db.get_database_backend());
        Expr::cust_with_values(
            format!(
                "EXISTS (SELECT 1 FROM tokenvisor_partitions AS fence WHERE fence.partition_id = $1 \
                 AND fence.epoch = $2 AND fence.lease_until_ms > {now})"
            ),
            [Value::from(i32::from(fence.partition)), Value::from(fence.epoch)],
        )
    }

    /// Why a compare-and-swap did not match: the row moved on (or is gone), or, when
    /// fenced and the row is as expected, the fence.
    async fn refused(
        &self,
        id: ConnectionId,
        expected_version: i64,
        fence: Option<Fence>,
    ) -> Result<CasOutcome, StoreError> {
        let current = self.get_connection(id).await?;
        if fence.is_some() && current.as_ref().is_some_and(|row| row.version == expected_version) {
            return Ok(CasOutcome::Fenced);
        }
        Ok(CasOutcome::Conflict {
            current: current.map(Box::new),
        })
    }
}

/// Runs the migrations (see [`crate::migrate`]) on the database at `database_url` (see
/// [`SqlStore::connect`] for the accepted URLs) and closes it. Needs no key.
pub async fn migrate(database_url: &str) -> Result<(), StoreError> {
    let db = open(database_url, POSTGRES_POOL_SIZE).await?;
    let result = crate::migrate(&db).await;
    let _ = db.close().await;
    result
}

/// Runs [`Migrator::up`] on `db`.
pub(crate) async fn run_migrations(db: &DatabaseConnection) -> Result<(), StoreError> {
    backend_name(db.get_database_backend())?;
    Migrator::up(db, None).await.map_err(db_error("running migrations"))
}

/// Opens a pool for the URL with the store's connection settings.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(unreachable_code))]
async fn open(database_url: &str, postgres_pool: u32) -> Result<DatabaseConnection, StoreError> {
    open_pool(database_url, postgres_pool, SQLITE_FILE_POOL_SIZE).await
}

/// Whether a SQLite URL names an in-memory database (which lives in its one connection).
fn is_in_memory(database_url: &str) -> bool {
    database_url.contains(":memory:") || database_url.contains("mode=memory")
}

/// [`open`] with `sqlite_file_pool` connections to a SQLite file.
async fn open_pool(
    database_url: &str,
    postgres_pool: u32,
    sqlite_file_pool: u32,
) -> Result<DatabaseConnection, StoreError> {
    let mut options = ConnectOptions::new(database_url.to_owned());
    // Statements are logged by the store's own tracing, never with their values.
    options.sqlx_logging(false);
    if database_url.starts_with("sqlite:") {
        let in_memory = is_in_memory(database_url);
        // A shared in-memory database must keep one connection open, or it vanishes.
        options
            .max_connections(if in_memory { 1 } else { sqlite_file_pool })
            .min_connections(if in_memory { 1 } else { 0 });
        if in_memory {
            options.idle_timeout(None).max_lifetime(None);
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(StoreError::Database(
            "this build of tokenvisor has no SQLite driver (enable the `sqlite` feature)".to_owned(),
        ));
        #[cfg(feature = "sqlite")]
        options.map_sqlx_sqlite_opts(move |sqlite| {
            let sqlite = sqlite
                .create_if_missing(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            if in_memory {
                sqlite
            } else {
                sqlite.journal_mode(SqliteJournalMode::Wal)
            }
        });
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Database(
            "this build of tokenvisor has no PostgreSQL driver (enable the `postgres` feature)".to_owned(),
        ));
        #[cfg(feature = "postgres")]
        {
            probe_postgres(database_url).await?;
            options.max_connections(postgres_pool);
        }
    } else {
        // The URL is not echoed: it may hold a password.
        return Err(StoreError::Database(
            "unsupported database URL: expected sqlite://<path>, sqlite::memory:, or postgres://...".to_owned(),
        ));
    }
    Database::connect(options)
        .await
        .map_err(db_error("connecting to the database"))
}

fn backend_name(backend: DbBackend) -> Result<&'static str, StoreError> {
    match backend {
        DbBackend::Sqlite => Ok("sqlite"),
        DbBackend::Postgres => Ok("postgres"),
        _ => Err(StoreError::Database(
            "unsupported database backend: only SQLite and PostgreSQL".to_owned(),
        )),
    }
}

/// Checks the key check stored in `table` (`tokenvisor_meta`, or `meta` of the old
/// layout), if there is one, without writing anything.
async fn verify_key_check(db: &DatabaseConnection, keyring: &Keyring, table: &str) -> Result<bool, StoreError> {
    let backend = db.get_database_backend();
    let has_table = match backend {
        DbBackend::Postgres => {
            "SELECT COUNT(*) > 0 AS present FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        _ => "SELECT COUNT(*) > 0 AS present FROM sqlite_master WHERE type = 'table' AND name = $1",
    };
    let present: bool = db
        .query_one_raw(statement(backend, has_table, vec![Value::from(table)]))
        .await
        .and_then(|row| row.map_or(Ok(false), |row| row.try_get("", "present")))
        .map_err(db_error("inspecting the schema"))?;
    if !present {
        return Ok(false);
    }
    let Some(row) = db
        .query_one_raw(statement(
            backend,
            &format!("SELECT value FROM {table} WHERE key = $1"),
            vec![Value::from(KEY_CHECK)],
        ))
        .await
        .map_err(db_error("reading the key check"))?
    else {
        return Ok(false);
    };
    let value: Vec<u8> = row.try_get("", "value").map_err(db_error("reading the key check"))?;
    let matches = keyring
        .decrypt(&value, KEY_CHECK_AAD)
        .is_ok_and(|plaintext| plaintext.as_slice() == KEY_CHECK_PLAINTEXT);
    if matches {
        return Ok(true);
    }
    let configured = keyring.key_ids_list();
    Err(StoreError::Key(match Keyring::ciphertext_key_id(&value) {
        Some(needed) if keyring.key_ids().contains(&needed) => format!(
            "the configured key {needed} does not decrypt this database's key check (the key check is corrupt, \
             or a different key has the same id); configured key ids: {configured}"
        ),
        Some(needed) => format!(
            "this database was encrypted with key id {needed}, which is not configured (configured key ids: \
             {configured}); configure the key this database was created with"
        ),
        None => format!("this database's key check is unreadable; configured key ids: {configured}"),
    }))
}

/// Records the key check on a fresh database, or verifies the existing one.
async fn ensure_key_check(db: &DatabaseConnection, keyring: &Keyring) -> Result<(), StoreError> {
    if verify_key_check(db, keyring, META_TABLE).await? {
        return Ok(());
    }
    let row = meta::ActiveModel {
        key: Set(KEY_CHECK.to_owned()),
        value: Set(keyring.encrypt(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)?),
    };
    // Two processes may open a fresh database together: the first key check wins and
    // the other one is verified against it.
    meta::Entity::insert(row)
        .on_conflict_do_nothing()
        .exec_without_returning(db)
        .await
        .map_err(db_error("writing the key check"))?;
    if verify_key_check(db, keyring, META_TABLE).await? {
        return Ok(());
    }
    Err(StoreError::Database(
        "the key check vanished while opening the store".to_owned(),
    ))
}

fn connection_aad(id: Uuid, column: &str) -> String {
    format!("connections:{id}:{column}")
}

/// Appends an attempt inside `txn`; with `trim`, deletes all but the newest
/// [`ATTEMPT_HISTORY_LIMIT`] of the connection. A deleted connection's attempt is skipped.
async fn insert_attempt(
    txn: &sea_orm::DatabaseTransaction,
    attempt: &RefreshAttempt,
    trim: bool,
) -> Result<(), StoreError> {
    let connection_id = attempt.connection_id.0;
    let row = refresh_attempt::ActiveModel {
        id: NotSet,
        connection_id: Set(connection_id),
        started_at: Set(attempt.started_at),
        reason: Set(attempt.reason.as_str().to_owned()),
        outcome: Set(attempt.outcome.as_str().to_owned()),
        error_code: Set(attempt.error_code.clone()),
        http_status: Set(attempt.http_status.map(i32::from)),
        duration_ms: Set(attempt.duration_ms),
    };
    if let Err(error) = refresh_attempt::Entity::insert(row).exec_without_returning(txn).await {
        if matches!(error.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_))) {
            // The connection was deleted meanwhile: its history went with it.
            tracing::debug!("refresh attempt of a deleted connection not recorded");
            return Ok(());
        }
        return Err(db_error("recording a refresh attempt")(error));
    }
    if !trim {
        return Ok(());
    }
    // Ordered by `id + 0`, not `id`: ordering by the primary key lets PostgreSQL walk the
    // whole primary key backwards looking for this connection's rows; on the expression it
    // takes the rows from the connection_id index and sorts a few dozen ids.
    let newest = Query::select()
        .column(refresh_attempt::Column::Id)
        .from(refresh_attempt::Entity)
        .and_where(refresh_attempt::Column::ConnectionId.eq(connection_id))
        .order_by_expr(Expr::col(refresh_attempt::Column::Id).add(0), Order::Desc)
        .limit(ATTEMPT_HISTORY_LIMIT)
        .to_owned();
    refresh_attempt::Entity::delete_many()
        .filter(refresh_attempt::Column::ConnectionId.eq(connection_id))
        .filter(refresh_attempt::Column::Id.not_in_subquery(newest))
        .exec(txn)
        .await
        .map_err(db_error("trimming the refresh history"))?;
    Ok(())
}

fn authorization_aad(state_hash: &str) -> String {
    format!("authorization_states:{state_hash}:code_verifier")
}

fn integration_secret_aad(id: Uuid) -> String {
    format!("integrations:{id}:client_secret")
}

/// `$n` placeholders on PostgreSQL, `?` (in the same order) on SQLite.
fn statement(backend: DbBackend, postgres: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => postgres.to_owned(),
        _ => {
            let mut sql = String::with_capacity(postgres.len());
            let mut chars = postgres.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    sql.push('?');
                } else {
                    sql.push(c);
                }
            }
            sql
        }
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Maps a database error to [`StoreError::Database`] with what was being done. The
/// driver's message names the failure, never the bound values.
/// Starts a transaction that will write. On SQLite it takes the write lock at `BEGIN
/// IMMEDIATE`, waiting up to the busy timeout: a deferred transaction that reads first and
/// then writes fails at once with "database is locked" when another writer committed in
/// between (its snapshot is stale; the busy timeout does not apply), so a delete that counts
/// before it deletes failed under concurrent refreshes. PostgreSQL ignores the mode.
async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, StoreError> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
    .map_err(db_error("starting a transaction"))
}

fn db_error(doing: &'static str) -> impl Fn(DbErr) -> StoreError {
    move |error| StoreError::Database(format!("{doing}: {error}"))
}

fn parse_stored<T: serde::de::DeserializeOwned>(value: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("refresh_attempts: unknown {what} {value:?}")))
}

#[async_trait]
impl Store for SqlStore {
    #[tracing::instrument(skip_all, fields(integration_id = %integration.id))]
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let row = self.integration_row(integration)?;
        match integration::Entity::insert(row).exec_without_returning(&self.db).await {
            Ok(_) => Ok(()),
            Err(error) => match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => {
                    Err(StoreError::Conflict(format!("integration {:?}", integration.name)))
                }
                _ => Err(db_error("inserting an integration")(error)),
            },
        }
    }

    async fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>, StoreError> {
        integration::Entity::find_by_id(id.0)
            .one(&self.db)
            .await
            .map_err(db_error("reading an integration"))?
            .map(|row| self.integration_from_row(row))
            .transpose()
    }

    async fn find_integration_by_name(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        integration::Entity::find()
            .filter(integration::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(db_error("reading an integration"))?
            .map(|row| self.integration_from_row(row))
            .transpose()
    }

    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        integration::Entity::find()
            .order_by_asc(integration::Column::Name)
            .all(&self.db)
            .await
            .map_err(db_error("listing integrations"))?
            .into_iter()
            .map(|row| self.integration_from_row(row))
            .collect()
    }

    #[tracing::instrument(skip_all, fields(integration_id = %integration.id))]
    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let mut row = self.integration_row(integration)?;
        row.id = NotSet;
        row.created_at = NotSet;
        match integration::Entity::update_many()
            .set(row)
            .filter(integration::Column::Id.eq(integration.id.0))
            .exec(&self.db)
            .await
        {
            Ok(result) => Ok(result.rows_affected > 0),
            Err(error) => match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => {
                    Err(StoreError::Conflict(format!("integration {:?}", integration.name)))
                }
                _ => Err(db_error("updating an integration")(error)),
            },
        }
    }

    #[tracing::instrument(skip_all, fields(integration_id = %id))]
    async fn delete_integration(&self, id: IntegrationId) -> Result<bool, StoreError> {
        let in_use = || StoreError::Conflict(format!("integration {id} still has connections"));
        let txn = begin_write(&self.db).await?;
        let connections = connection::Entity::find()
            .filter(connection::Column::IntegrationId.eq(id.0))
            .count(&txn)
            .await
            .map_err(db_error("counting connections"))?;
        if connections > 0 {
            return Err(in_use());
        }
        authorization_state::Entity::delete_many()
            .filter(authorization_state::Column::IntegrationId.eq(id.0))
            .exec(&txn)
            .await
            .map_err(db_error("deleting pending authorizations"))?;
        let deleted = match integration::Entity::delete_by_id(id.0).exec(&txn).await {
            Ok(deleted) => deleted,
            Err(error) => {
                // A connection inserted meanwhile (SQLite reports it as a plain
                // constraint error).
                return Err(match error.sql_err() {
                    Some(SqlErr::ForeignKeyConstraintViolation(_)) => in_use(),
                    _ if error.to_string().contains("FOREIGN KEY") => in_use(),
                    _ => db_error("deleting an integration")(error),
                });
            }
        };
        txn.commit().await.map_err(db_error("committing a deletion"))?;
        Ok(deleted.rows_affected > 0)
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection.id))]
    async fn insert_connection(&self, connection: &Connection) -> Result<(), StoreError> {
        let row = self.connection_row(connection, connection.version)?;
        match connection::Entity::insert(row).exec_without_returning(&self.db).await {
            Ok(_) => Ok(()),
            Err(error) => match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => Err(StoreError::Conflict(format!(
                    "connection {} (or tenant {} already has a connection {:?} to integration {})",
                    connection.id,
                    connection.tenant_id,
                    connection.connection_key.as_str(),
                    connection.integration_id
                ))),
                Some(SqlErr::ForeignKeyConstraintViolation(_)) => Err(StoreError::Conflict(format!(
                    "connection {}: integration {} does not exist",
                    connection.id, connection.integration_id
                ))),
                _ => Err(db_error("inserting a connection")(error)),
            },
        }
    }

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        connection::Entity::find_by_id(id.0)
            .one(&self.db)
            .await
            .map_err(db_error("reading a connection"))?
            .map(|row| self.connection_from_row(row))
            .transpose()
    }

    /// Keyset pagination in every order: `WHERE (sort value, id) > (cursor value, cursor id)
    /// ORDER BY sort value, id LIMIT n`, which the `(column, id)` indexes answer by a range
    /// scan (migration 000014), however deep the page. The last error's time can be
    /// missing: those rows come last in both directions, as a second range (`IS NULL`,
    /// by id) read once the first is exhausted.
    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError> {
        let backend = self.db.get_database_backend();
        let named = self.integrations_named(filter).await?;
        let order = if filter.descending { Order::Desc } else { Order::Asc };
        let limit = filter.limit.unwrap_or(u64::MAX);
        let column = sort_column(filter.sort);
        let id_after = |id: ConnectionId| {
            if filter.descending {
                connection::Column::Id.lt(id.0)
            } else {
                connection::Column::Id.gt(id.0)
            }
        };
        let mut rows = Vec::new();
        let cursor_value = filter.after.and(filter.after_value);
        let missing_only = cursor_value == Some(SortValue::Missing);
        if filter.sort == ConnectionSort::Id || !missing_only {
            let mut query = filtered_connections(filter, backend, &named);
            if filter.sort == ConnectionSort::Id {
                if let Some(after) = filter.after {
                    query = query.filter(id_after(after));
                }
            } else {
                query = query.filter(Expr::col(column).is_not_null());
                if let (Some(after), Some(value)) = (filter.after, cursor_value) {
                    let row = Expr::tuple([Expr::col(column), Expr::col(connection::Column::Id)]);
                    let cursor = Expr::tuple([Expr::val(sort_value(value)), Expr::val(after.0)]);
                    query = query.filter(if filter.descending {
                        row.lt(cursor)
                    } else {
                        row.gt(cursor)
                    });
                }
                query = query.order_by(column, order.clone());
            }
            query = query.order_by(connection::Column::Id, order.clone());
            if limit != u64::MAX {
                query = query.limit(limit);
            }
            rows = query.all(&self.db).await.map_err(db_error("listing connections"))?;
        }
        let may_be_missing = filter.sort == ConnectionSort::LastError;
        if may_be_missing && (rows.len() as u64) < limit {
            let mut query = filtered_connections(filter, backend, &named).filter(Expr::col(column).is_null());
            if missing_only && let Some(after) = filter.after {
                query = query.filter(id_after(after));
            }
            query = query.order_by(connection::Column::Id, order);
            if limit != u64::MAX {
                query = query.limit(limit - rows.len() as u64);
            }
            rows.extend(query.all(&self.db).await.map_err(db_error("listing connections"))?);
        }
        self.connections_from_rows(rows)
    }

    async fn count_connections(&self, filter: &ConnectionFilter) -> Result<u64, StoreError> {
        let without_cursor = ConnectionFilter {
            after: None,
            after_value: None,
            ..filter.clone()
        };
        let named = self.integrations_named(filter).await?;
        filtered_connections(&without_cursor, self.db.get_database_backend(), &named)
            .count(&self.db)
            .await
            .map_err(db_error("counting connections"))
    }

    async fn connection_summary(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        horizon: chrono::Duration,
    ) -> Result<crate::ConnectionSummary, StoreError> {
        // `COUNT(*)`, not `COUNT(id)`: PostgreSQL then counts from the (integration_id,
        // status) index alone instead of reading the table.
        let grouped: Vec<(Uuid, String, i64)> = connection::Entity::find()
            .select_only()
            .column(connection::Column::IntegrationId)
            .column(connection::Column::Status)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .group_by(connection::Column::IntegrationId)
            .group_by(connection::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(db_error("counting connections by status"))?;
        let mut by_status = grouped
            .into_iter()
            .map(|(integration, status, count)| {
                Ok(crate::StatusCount {
                    integration_id: IntegrationId(integration),
                    status: parse_stored(&status, "status")?,
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // The same order on both backends (collations and NULL ordering differ).
        by_status.sort_by_key(|count| (count.integration_id.0, count.status.as_str()));
        let backend = self.db.get_database_backend();
        let expiring = self
            .db
            .query_one_raw(statement(
                backend,
                "SELECT COUNT(*) AS n, \
                 SUM(CASE WHEN next_refresh_at IS NOT NULL AND next_refresh_at < expires_at THEN 1 ELSE 0 END) AS planned \
                 FROM tokenvisor_connections WHERE is_active = $1 AND expires_at > $2 AND expires_at <= $3",
                vec![Value::from(true), Value::from(now), Value::from(now + horizon)],
            ))
            .await
            .map_err(db_error("counting expiring tokens"))?;
        let read = db_error("reading the expiring tokens' counts");
        let (expiring, planned) = match expiring {
            Some(row) => (
                row.try_get::<i64>("", "n").map_err(&read)?,
                row.try_get::<Option<i64>>("", "planned").map_err(&read)?.unwrap_or(0),
            ),
            None => (0, 0),
        };
        let degraded: Vec<(Option<String>, i64)> = connection::Entity::find()
            .select_only()
            .column(connection::Column::LastErrorCode)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .filter(connection::Column::Status.eq(ConnectionStatus::Degraded.as_str()))
            .group_by(connection::Column::LastErrorCode)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(db_error("counting degraded connections by error"))?;
        let mut degraded_by_error: Vec<(Option<String>, u64)> = degraded
            .into_iter()
            .map(|(code, count)| (code, u64::try_from(count).unwrap_or(0)))
            .collect();
        degraded_by_error.sort();
        Ok(crate::ConnectionSummary {
            by_status,
            expiring: u64::try_from(expiring).unwrap_or(0),
            expiring_planned: u64::try_from(planned).unwrap_or(0),
            degraded_by_error,
        })
    }

    fn load_supervised(&self) -> BoxStream<'_, Result<Connection, StoreError>> {
        self.stream_connections(supervised_connections())
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection.id, expected_version))]
    async fn compare_and_swap(&self, connection: &Connection, expected_version: i64) -> Result<CasOutcome, StoreError> {
        self.write_connection(connection, expected_version, None).await
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection.id, expected_version, epoch = fence.epoch))]
    async fn compare_and_swap_fenced(
        &self,
        connection: &Connection,
        expected_version: i64,
        fence: Fence,
    ) -> Result<CasOutcome, StoreError> {
        self.write_connection(connection, expected_version, Some(fence)).await
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection.id))]
    async fn commit_refresh(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
    ) -> Result<CasOutcome, StoreError> {
        self.write_refresh(connection, expected_version, attempt, None).await
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection.id, epoch = fence.epoch))]
    async fn commit_refresh_fenced(
        &self,
        connection: &Connection,
        expected_version: i64,
        attempt: &RefreshAttempt,
        fence: Fence,
    ) -> Result<CasOutcome, StoreError> {
        self.write_refresh(connection, expected_version, attempt, Some(fence))
            .await
    }

    fn webhooks(&self) -> Option<WebhookOutbox> {
        Some(self.webhook_outbox())
    }

    fn key_rotation(&self) -> Option<KeyRotation> {
        Some(SqlStore::key_rotation(self))
    }

    fn access(&self) -> Option<AccessStore> {
        Some(self.access_store())
    }

    #[cfg(feature = "postgres")]
    fn partitions(&self) -> Option<&dyn PartitionStore> {
        (self.backend == "postgres").then_some(self as &dyn PartitionStore)
    }

    #[tracing::instrument(skip_all, fields(connection_id = %id))]
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        let txn = begin_write(&self.db).await?;
        refresh_attempt::Entity::delete_many()
            .filter(refresh_attempt::Column::ConnectionId.eq(id.0))
            .exec(&txn)
            .await
            .map_err(db_error("deleting refresh attempts"))?;
        let deleted = connection::Entity::delete_by_id(id.0)
            .exec(&txn)
            .await
            .map_err(db_error("deleting a connection"))?;
        txn.commit().await.map_err(db_error("committing a deletion"))?;
        Ok(deleted.rows_affected > 0)
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection))]
    async fn acquire_refresh_lease(
        &self,
        connection: ConnectionId,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        lease::acquire(&self.db, connection, owner, lease).await
    }

    #[tracing::instrument(skip_all, fields(connection_id = %connection))]
    async fn release_refresh_lease(&self, connection: ConnectionId, owner: &str) -> Result<(), StoreError> {
        lease::release(&self.db, connection, owner).await
    }

    #[tracing::instrument(skip_all, fields(connection_id = %attempt.connection_id))]
    async fn record_attempt(&self, attempt: &RefreshAttempt) -> Result<(), StoreError> {
        let txn = begin_write(&self.db).await?;
        insert_attempt(&txn, attempt, true).await?;
        txn.commit().await.map_err(db_error("committing a refresh attempt"))
    }

    async fn list_attempts(&self, id: ConnectionId, limit: u64) -> Result<Vec<RefreshAttempt>, StoreError> {
        let rows = refresh_attempt::Entity::find()
            .filter(refresh_attempt::Column::ConnectionId.eq(id.0))
            .order_by_desc(refresh_attempt::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error("listing refresh attempts"))?;
        rows.into_iter()
            .map(|row| {
                Ok(RefreshAttempt {
                    connection_id: ConnectionId(row.connection_id),
                    started_at: row.started_at,
                    reason: parse_stored(&row.reason, "reason")?,
                    outcome: parse_stored(&row.outcome, "outcome")?,
                    error_code: row.error_code,
                    http_status: row.http_status.and_then(|status| u16::try_from(status).ok()),
                    duration_ms: row.duration_ms,
                })
            })
            .collect()
    }

    async fn attempts_per_minute(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::MinuteCount>, StoreError> {
        let backend = self.db.get_database_backend();
        let minute = match backend {
            DbBackend::Postgres => {
                "to_char(date_trunc('minute', started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI:00\"Z\"')"
            }
            _ => "strftime('%Y-%m-%dT%H:%M:00Z', started_at)",
        };
        let sql = format!(
            "SELECT {minute} AS minute, outcome, COUNT(*) AS n FROM tokenvisor_refresh_attempts \
             WHERE started_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2"
        );
        let rows = self
            .db
            .query_all_raw(statement(backend, &sql, vec![Value::from(since)]))
            .await
            .map_err(db_error("counting refresh attempts"))?;
        let read = db_error("reading refresh attempt counts");
        rows.iter()
            .map(|row| {
                let minute: String = row.try_get("", "minute").map_err(&read)?;
                let outcome: String = row.try_get("", "outcome").map_err(&read)?;
                let count: i64 = row.try_get("", "n").map_err(&read)?;
                Ok(crate::MinuteCount {
                    minute: chrono::DateTime::parse_from_rfc3339(&minute)
                        .map_err(|error| StoreError::Database(format!("a stored minute {minute:?}: {error}")))?
                        .with_timezone(&chrono::Utc),
                    outcome: parse_stored(&outcome, "outcome")?,
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn insert_authorization(&self, authorization: &PendingAuthorization) -> Result<(), StoreError> {
        let aad = authorization_aad(&authorization.state_hash);
        let code_verifier = match &authorization.code_verifier {
            Some(verifier) => Some(self.seal(verifier.expose(), &aad)?),
            None => None,
        };
        authorization_state::Entity::delete_many()
            .filter(authorization_state::Column::ExpiresAt.lt(authorization.created_at))
            .exec(&self.db)
            .await
            .map_err(db_error("forgetting expired authorizations"))?;
        let row = authorization_state::ActiveModel {
            state_hash: Set(authorization.state_hash.clone()),
            tenant_id: Set(authorization.tenant_id.as_str().to_owned()),
            integration_id: Set(authorization.integration_id.0),
            connection_id: Set(authorization.connection_id.map(|id| id.0)),
            connection_key: Set(authorization.connection_key.as_ref().map(|key| key.as_str().to_owned())),
            redirect_uri: Set(authorization.redirect_uri.clone()),
            return_to: Set(authorization.return_to.clone()),
            code_verifier: Set(code_verifier),
            created_at: Set(authorization.created_at),
            expires_at: Set(authorization.expires_at),
        };
        match authorization_state::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => Err(StoreError::Conflict("authorization state".into())),
                Some(SqlErr::ForeignKeyConstraintViolation(_)) => Err(StoreError::Conflict(format!(
                    "integration {} does not exist",
                    authorization.integration_id
                ))),
                _ => Err(db_error("recording an authorization")(error)),
            },
        }
    }

    async fn take_authorization(&self, state_hash: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let txn = begin_write(&self.db).await?;
        let Some(row) = authorization_state::Entity::find_by_id(state_hash.to_owned())
            .one(&txn)
            .await
            .map_err(db_error("reading an authorization"))?
        else {
            return Ok(None);
        };
        let deleted = authorization_state::Entity::delete_by_id(state_hash.to_owned())
            .exec(&txn)
            .await
            .map_err(db_error("consuming an authorization"))?;
        txn.commit().await.map_err(db_error("committing an authorization"))?;
        if deleted.rows_affected == 0 {
            // Another callback consumed it first.
            return Ok(None);
        }
        let aad = authorization_aad(&row.state_hash);
        let code_verifier = match &row.code_verifier {
            Some(ciphertext) => Some(self.open_secret(ciphertext, &aad)?),
            None => None,
        };
        let tenant_id = TenantId::parse(row.tenant_id)
            .map_err(|_| StoreError::Corrupt("authorization_states:tenant_id is not a valid tenant id".into()))?;
        let connection_key = match row.connection_key {
            Some(key) => Some(ConnectionKey::parse(key).map_err(|_| {
                StoreError::Corrupt("authorization_states:connection_key is not a valid connection key".into())
            })?),
            None => None,
        };
        Ok(Some(PendingAuthorization {
            state_hash: row.state_hash,
            tenant_id,
            integration_id: IntegrationId(row.integration_id),
            connection_id: row.connection_id.map(ConnectionId),
            connection_key,
            redirect_uri: row.redirect_uri,
            return_to: row.return_to,
            code_verifier,
            created_at: row.created_at,
            expires_at: row.expires_at,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(db_error("pinging the database"))
    }
}

#[cfg(test)]
mod tests;
