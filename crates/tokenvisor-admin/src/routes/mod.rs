//! The handlers, one module per resource.

pub(crate) mod api_keys;
pub(crate) mod authorizations;
pub(crate) mod cluster;
pub(crate) mod connections;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod integrations;
pub(crate) mod keys;
pub(crate) mod proxy;
pub(crate) mod webhooks;

use crate::error::ApiError;
use tokenvisor_core::{Integration, IntegrationId};
use tokenvisor_store::Store;

/// An integration by name or id; 404 when there is none.
pub(crate) async fn find_integration(store: &dyn Store, name_or_id: &str) -> Result<Integration, ApiError> {
    let name_or_id = name_or_id.trim();
    if name_or_id.is_empty() || name_or_id.len() > 128 {
        return Err(ApiError::invalid(
            "integration",
            "must be a name or id of 1 to 128 characters",
        ));
    }
    if let Ok(id) = name_or_id.parse::<IntegrationId>()
        && let Some(integration) = store.get_integration(id).await?
    {
        return Ok(integration);
    }
    store
        .find_integration_by_name(name_or_id)
        .await?
        .ok_or_else(|| ApiError::not_found("integration"))
}
