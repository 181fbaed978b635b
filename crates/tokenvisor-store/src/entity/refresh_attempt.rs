//! The `tokenvisor_refresh_attempts` table: a bounded history per connection.

use sea_orm::entity::prelude::*;

/// One row of `tokenvisor_refresh_attempts`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokenvisor_refresh_attempts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub connection_id: Uuid,
    pub started_at: DateTimeUtc,
    pub reason: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub http_status: Option<i32>,
    pub duration_ms: i64,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
