//! The `tokenvisor_authorization_states` table: authorization-code flows in progress.

use sea_orm::entity::prelude::*;

/// One row of `tokenvisor_authorization_states`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokenvisor_authorization_states")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub state_hash: String,
    pub tenant_id: String,
    pub integration_id: Uuid,
    pub connection_id: Option<Uuid>,
    pub connection_key: Option<String>,
    pub redirect_uri: String,
    pub return_to: Option<String>,
    pub code_verifier: Option<Vec<u8>>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

/// No relations are navigated through sea-orm.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
