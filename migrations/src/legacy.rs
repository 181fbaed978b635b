//! The upgrade of a database created with the old, unprefixed layout (tokenvisor before
//! its names were prefixed): tables `integrations`, `connections`, ..., bookkept in
//! sea-orm-migration's default `seaql_migrations`.
//!
//! # Which databases are upgraded
//!
//! An old migration counts as ours, and is adopted, when
//!
//! 1. `seaql_migrations` exists in the current schema (PostgreSQL: `current_schema()`;
//!    SQLite: `main`) and lists its version, and
//! 2. every table it created exists there with exactly the columns it created (a host
//!    table that merely shares a name has other columns).
//!
//! A listed version none of whose tables look like ours is not ours (a host migration of
//! the same name, say) and is left alone. A listed version with only some of its tables
//! looking like ours, or one already recorded in `tokenvisor_migrations`, is an error:
//! the database is in a state this code does not guess about. A database without
//! `seaql_migrations`, or where it lists none of our versions, is fresh for us: nothing
//! is renamed, and the migrations create the `tokenvisor_*` tables.
//!
//! # What adoption does
//!
//! In the migration transaction (see [`crate::Migrator`]), for each adopted version: its
//! tables are renamed `tokenvisor_<name>` and so are their indexes (SQLite cannot rename
//! an index: it is dropped and created again under the new name) and, on PostgreSQL,
//! their constraints and identity sequences, so the result is exactly the schema a fresh
//! database gets (data, row ids and sequences untouched; SQLite renames its automatic
//! indexes and `sqlite_sequence` rows itself). The version is then recorded in
//! `tokenvisor_migrations` with its original `applied_at`, and its row is deleted from
//! `seaql_migrations`: left there, it would make a host's sea-orm-migration refuse to
//! run ("Migration file of version ... is missing"). The host's rows are never touched;
//! `seaql_migrations` itself is dropped only when it is then empty, i.e. it held nothing
//! but our versions (a host that uses sea-orm-migration later creates it again).
//!
//! Ciphertexts are bound to labels such as `connections:<id>:access_token`; those are
//! labels, not table names, and do not change, so every secret still decrypts.

use crate::{MIGRATION_TABLE, Migrator, TABLE_PREFIX};
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use std::collections::{BTreeSet, HashMap};

/// sea-orm-migration's default bookkeeping table, where the old layout recorded its versions.
pub const LEGACY_MIGRATION_TABLE: &str = "seaql_migrations";

/// One table of the old layout.
struct LegacyTable {
    /// Its old name; the new one is [`TABLE_PREFIX`] + this.
    name: &'static str,
    /// Exactly the columns the old migrations gave it.
    columns: &'static [&'static str],
    /// Its explicitly named indexes and their columns (renamed with the prefix).
    indexes: &'static [(&'static str, &'static [&'static str])],
    /// PostgreSQL: its constraints (primary key, unique, check, foreign keys), renamed
    /// with the prefix; the indexes behind primary keys and unique constraints follow.
    constraints: &'static [&'static str],
    /// PostgreSQL: the identity sequences of its columns, renamed with the prefix.
    sequences: &'static [&'static str],
}

/// One migration of the old layout and the tables it created.
struct LegacyVersion {
    version: &'static str,
    tables: &'static [LegacyTable],
}

/// The old layout, migration by migration, as `pg_dump` and `sqlite_master` show it.
const LEGACY: &[LegacyVersion] = &[
    LegacyVersion {
        version: "m20250101_000001_initial",
        tables: &[
            LegacyTable {
                name: "integrations",
                columns: &[
                    "id",
                    "name",
                    "provider",
                    "client_id",
                    "client_secret",
                    "scopes",
                    "redirect_uri",
                    "data_center",
                    "token_url",
                    "authorize_url",
                    "revoke_url",
                    "settings",
                    "created_at",
                    "updated_at",
                ],
                indexes: &[],
                constraints: &["integrations_pkey", "integrations_name_key"],
                sequences: &[],
            },
            LegacyTable {
                name: "connections",
                columns: &[
                    "id",
                    "tenant_id",
                    "integration_id",
                    "access_token",
                    "refresh_token",
                    "token_type",
                    "scope",
                    "issued_at",
                    "expires_at",
                    "next_refresh_at",
                    "last_refresh_at",
                    "status",
                    "is_active",
                    "refresh_failures",
                    "consecutive_failures",
                    "last_error_code",
                    "last_error_message",
                    "last_error_at",
                    "metadata",
                    "version",
                    "created_at",
                    "updated_at",
                ],
                indexes: &[
                    ("idx_connections_tenant_id", &["tenant_id"]),
                    ("idx_connections_is_active_status", &["is_active", "status"]),
                    ("idx_connections_integration_id", &["integration_id"]),
                ],
                constraints: &[
                    "connections_pkey",
                    "connections_status_check",
                    "fk_connections_integration_id",
                ],
                sequences: &[],
            },
            LegacyTable {
                name: "refresh_attempts",
                columns: &[
                    "id",
                    "connection_id",
                    "started_at",
                    "reason",
                    "outcome",
                    "error_code",
                    "http_status",
                    "duration_ms",
                ],
                indexes: &[(
                    "idx_refresh_attempts_connection_id_started_at",
                    &["connection_id", "started_at"],
                )],
                constraints: &["refresh_attempts_pkey", "fk_refresh_attempts_connection_id"],
                sequences: &["refresh_attempts_id_seq"],
            },
            LegacyTable {
                name: "meta",
                columns: &["key", "value"],
                indexes: &[],
                constraints: &["meta_pkey"],
                sequences: &[],
            },
        ],
    },
    LegacyVersion {
        version: "m20251122_000002_authorizations",
        tables: &[LegacyTable {
            name: "authorization_states",
            columns: &[
                "state_hash",
                "tenant_id",
                "integration_id",
                "connection_id",
                "redirect_uri",
                "code_verifier",
                "created_at",
                "expires_at",
            ],
            indexes: &[("idx_authorization_states_expires_at", &["expires_at"])],
            constraints: &["authorization_states_pkey", "fk_authorization_states_integration"],
            sequences: &[],
        }],
    },
    LegacyVersion {
        version: "m20261122_000003_refresh_leases",
        tables: &[LegacyTable {
            name: "refresh_leases",
            columns: &["connection_id", "owner", "expires_at_ms"],
            indexes: &[],
            constraints: &["refresh_leases_pkey", "fk_refresh_leases_connection"],
            sequences: &[],
        }],
    },
    LegacyVersion {
        version: "m20261122_000004_webhook_outbox",
        tables: &[LegacyTable {
            name: "webhook_outbox",
            columns: &["id", "endpoint", "message_id", "body", "created_at"],
            indexes: &[("idx_webhook_outbox_endpoint_id", &["endpoint", "id"])],
            constraints: &["webhook_outbox_pkey"],
            sequences: &["webhook_outbox_id_seq"],
        }],
    },
];

/// The old migrations that are ours and not adopted yet, each with its `applied_at`
/// (see the module documentation). Reads only.
async fn plan<C: ConnectionTrait>(db: &C) -> Result<Vec<(&'static LegacyVersion, i64)>, DbErr> {
    if !has_table(db, LEGACY_MIGRATION_TABLE).await? {
        return Ok(Vec::new());
    }
    let mut recorded = HashMap::new();
    for row in db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT version, applied_at FROM {LEGACY_MIGRATION_TABLE}"),
        ))
        .await?
    {
        let version: String = row.try_get("", "version")?;
        let applied_at: i64 = row.try_get("", "applied_at")?;
        recorded.insert(version, applied_at);
    }
    let already_ours = if has_table(db, MIGRATION_TABLE).await? {
        versions(db, MIGRATION_TABLE).await?
    } else {
        BTreeSet::new()
    };

    let mut plan = Vec::new();
    for legacy in LEGACY {
        let Some(&applied_at) = recorded.get(legacy.version) else {
            continue;
        };
        let mut ours = Vec::new();
        for table in legacy.tables {
            let columns = columns(db, table.name).await?;
            let expected: BTreeSet<String> = table.columns.iter().map(|c| (*c).to_owned()).collect();
            if columns == expected {
                ours.push(table.name);
            }
        }
        if ours.is_empty() {
            // Not ours (a host migration of the same name), or its tables are gone.
            continue;
        }
        if ours.len() < legacy.tables.len() {
            return Err(DbErr::Migration(format!(
                "{LEGACY_MIGRATION_TABLE} lists tokenvisor's migration {} but only some of its tables ({}) are \
                 tokenvisor's old tables; refusing to upgrade a database in a state it does not recognise",
                legacy.version,
                ours.join(", ")
            )));
        }
        if already_ours.contains(legacy.version) {
            return Err(DbErr::Migration(format!(
                "tokenvisor's migration {} is recorded both in {LEGACY_MIGRATION_TABLE} (with the old tables {}) and \
                 in {MIGRATION_TABLE}; refusing to upgrade a database holding both layouts",
                legacy.version,
                ours.join(", ")
            )));
        }
        plan.push((legacy, applied_at));
    }
    Ok(plan)
}

/// Whether the database holds tokenvisor's old layout, due to be upgraded by the next
/// [`Migrator::up`](sea_orm_migration::MigratorTrait::up): `seaql_migrations` lists the
/// old initial migration and its tables (`integrations`, `connections`,
/// `refresh_attempts`, `meta`) are tokenvisor's. Reads only.
pub async fn has_legacy_layout<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    Ok(plan(db)
        .await?
        .iter()
        .any(|(legacy, _)| legacy.version == LEGACY[0].version))
}

/// Adopts the old layout (see the module documentation). Returns the versions adopted.
/// Runs inside the caller's transaction.
pub(crate) async fn adopt<C: ConnectionTrait>(db: &C) -> Result<Vec<&'static str>, DbErr> {
    let plan = plan(db).await?;
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    for (legacy, _) in &plan {
        for table in legacy.tables {
            rename(db, backend, table).await?;
        }
    }
    <Migrator as MigratorTrait>::install(db).await?;
    for (legacy, applied_at) in &plan {
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(
                backend,
                &format!("INSERT INTO {MIGRATION_TABLE} (version, applied_at) VALUES ($1, $2)"),
            ),
            [Value::from(legacy.version), Value::from(*applied_at)],
        ))
        .await?;
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(
                backend,
                &format!("DELETE FROM {LEGACY_MIGRATION_TABLE} WHERE version = $1"),
            ),
            [Value::from(legacy.version)],
        ))
        .await?;
    }
    if versions(db, LEGACY_MIGRATION_TABLE).await?.is_empty() {
        db.execute_unprepared(&format!("DROP TABLE {LEGACY_MIGRATION_TABLE}"))
            .await?;
    }
    Ok(plan.iter().map(|(legacy, _)| legacy.version).collect())
}

/// Renames one old table and everything named after it.
async fn rename<C: ConnectionTrait>(db: &C, backend: DbBackend, table: &LegacyTable) -> Result<(), DbErr> {
    let old = table.name;
    let new = format!("{TABLE_PREFIX}{old}");
    let mut statements = vec![format!(r#"ALTER TABLE "{old}" RENAME TO "{new}""#)];
    match backend {
        DbBackend::Postgres => {
            for constraint in table.constraints {
                statements.push(format!(
                    r#"ALTER TABLE "{new}" RENAME CONSTRAINT "{constraint}" TO "{TABLE_PREFIX}{constraint}""#
                ));
            }
            for (index, _) in table.indexes {
                statements.push(format!(r#"ALTER INDEX "{index}" RENAME TO "{TABLE_PREFIX}{index}""#));
            }
            for sequence in table.sequences {
                statements.push(format!(
                    r#"ALTER SEQUENCE "{sequence}" RENAME TO "{TABLE_PREFIX}{sequence}""#
                ));
            }
        }
        _ => {
            for (index, columns) in table.indexes {
                let columns = columns
                    .iter()
                    .map(|c| format!(r#""{c}""#))
                    .collect::<Vec<_>>()
                    .join(", ");
                statements.push(format!(r#"DROP INDEX "{index}""#));
                statements.push(format!(
                    r#"CREATE INDEX "{TABLE_PREFIX}{index}" ON "{new}" ({columns})"#
                ));
            }
        }
    }
    for statement in statements {
        db.execute_unprepared(&statement).await?;
    }
    Ok(())
}

/// The columns of `table` in the current schema (empty when there is no such table).
async fn columns<C: ConnectionTrait>(db: &C, table: &str) -> Result<BTreeSet<String>, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT column_name::text AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        _ => "SELECT name FROM pragma_table_info($1)",
    };
    db.query_all_raw(Statement::from_sql_and_values(
        backend,
        placeholders(backend, sql),
        [Value::from(table)],
    ))
    .await?
    .into_iter()
    .map(|row| row.try_get::<String>("", "name"))
    .collect()
}

/// Whether `table` exists in the current schema.
async fn has_table<C: ConnectionTrait>(db: &C, table: &str) -> Result<bool, DbErr> {
    Ok(!columns(db, table).await?.is_empty())
}

/// The versions recorded in a sea-orm-migration bookkeeping table.
async fn versions<C: ConnectionTrait>(db: &C, table: &str) -> Result<BTreeSet<String>, DbErr> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT version FROM {table}"),
    ))
    .await?
    .into_iter()
    .map(|row| row.try_get::<String>("", "version"))
    .collect()
}

/// `$1`, `$2` on PostgreSQL; `?` on SQLite.
fn placeholders(backend: DbBackend, sql: &str) -> String {
    match backend {
        DbBackend::Postgres => sql.to_owned(),
        _ => sql.replace("$1", "?").replace("$2", "?"),
    }
}
