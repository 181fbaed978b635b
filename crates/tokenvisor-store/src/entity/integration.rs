//! The `tokenvisor_integrations` table.

use sea_orm::entity::prelude::*;

/// One row of `tokenvisor_integrations`; `client_secret` is a ciphertext.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tokenvisor_integrations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub provider: String,
    pub client_id: String,
    pub client_secret: Vec<u8>,
    #[sea_orm(column_type = "JsonBinary")]
    pub scopes: Json,
    pub redirect_uri: Option<String>,
    pub data_center: Option<String>,
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
    pub revoke_url: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub settings: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
