//! One connection per (integration, tenant, connection key): every connection gets a
//! `connection_key` (the caller's name for it, `default` unless chosen), unique with its
//! integration and tenant, so connecting a tenant again updates its connection instead of
//! adding a second one.
//!
//! Databases written before this migration may hold several connections of one tenant to
//! one integration. The newest of each group (latest `created_at`, then the greatest id)
//! keeps `default`; each older one gets `default-<last 8 hex digits of its id>` (the
//! random end of a v7 uuid; its full id if that is taken), so the unique index can be
//! created and every connection stays addressable.

use sea_orm_migration::sea_orm::{ConnectionTrait as _, Statement, Value};
use sea_orm_migration::{prelude::*, schema::*};
use std::collections::{BTreeMap, HashSet};

/// Adds `tokenvisor_connections.connection_key` (default `default`, older duplicates
/// renamed) and the unique index on (integration, tenant, key).
#[derive(DeriveMigrationName)]
pub struct Migration;

/// The key of a connection registered without one.
pub const DEFAULT_CONNECTION_KEY: &str = "default";

const UNIQUE_INDEX: &str = "tokenvisor_connections_key_idx";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .add_column(text(Connections::ConnectionKey).default(DEFAULT_CONNECTION_KEY))
                    .to_owned(),
            )
            .await?;
        rename_duplicates(manager).await?;
        manager
            .create_index(
                Index::create()
                    .name(UNIQUE_INDEX)
                    .table(Connections::Table)
                    .col(Connections::IntegrationId)
                    .col(Connections::TenantId)
                    .col(Connections::ConnectionKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(UNIQUE_INDEX).table(Connections::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .drop_column(Connections::ConnectionKey)
                    .to_owned(),
            )
            .await
    }
}

/// Gives every connection but the newest of its (integration, tenant) a key of its own.
async fn rename_duplicates(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT id, integration_id, tenant_id FROM tokenvisor_connections \
             ORDER BY created_at DESC, id DESC",
        ))
        .await?;
    let mut groups: BTreeMap<(uuid::Uuid, String), Vec<uuid::Uuid>> = BTreeMap::new();
    for row in rows {
        let id: uuid::Uuid = row.try_get("", "id")?;
        let integration: uuid::Uuid = row.try_get("", "integration_id")?;
        let tenant: String = row.try_get("", "tenant_id")?;
        groups.entry((integration, tenant)).or_default().push(id);
    }
    let placeholder = |n: usize| match backend {
        sea_orm_migration::sea_orm::DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    };
    let update = format!(
        "UPDATE tokenvisor_connections SET connection_key = {} WHERE id = {}",
        placeholder(1),
        placeholder(2)
    );
    for ids in groups.into_values().filter(|ids| ids.len() > 1) {
        let mut taken: HashSet<String> = HashSet::from([DEFAULT_CONNECTION_KEY.to_owned()]);
        // The first is the newest: it keeps `default`.
        for id in ids.into_iter().skip(1) {
            let simple = id.simple().to_string();
            let short = format!("{DEFAULT_CONNECTION_KEY}-{}", &simple[simple.len() - 8..]);
            let key = if taken.contains(&short) {
                format!("{DEFAULT_CONNECTION_KEY}-{simple}")
            } else {
                short
            };
            taken.insert(key.clone());
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                update.clone(),
                vec![Value::from(key), Value::from(id)],
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
    IntegrationId,
    TenantId,
    ConnectionKey,
}
