//! The OpenAPI 3.1 document, generated from the handlers' annotations and the view types.

use crate::routes;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The admin API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenvisor admin API",
        description = "Integrations, connections and their tokens. Every /v1 route requires \
                       `Authorization: Bearer <admin token>`. Errors are \
                       `{\"error\": {\"code\": \"snake_case\", \"message\": \"...\"}}`."
    ),
    paths(
        routes::integrations::create,
        routes::integrations::list,
        routes::integrations::show,
        routes::integrations::update,
        routes::integrations::delete,
        routes::connections::create,
        routes::connections::list,
        routes::connections::show,
        routes::connections::token,
        routes::connections::token_rejected,
        routes::connections::refresh,
        routes::connections::deactivate,
        routes::connections::activate,
        routes::connections::delete,
        routes::proxy::forward,
        routes::connections::history,
        routes::connections::list_of_tenant,
        routes::connections::show_by_key,
        routes::connections::token_by_key,
        routes::proxy::forward_by_key,
        routes::authorizations::create,
        routes::authorizations::callback,
        routes::events::stream,
        routes::cluster::status,
        routes::cluster::forward,
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`: the document, with a `servers` entry naming the base path the
/// routes are mounted under (`/tokenvisor` when embedded in a host, `/` for the binary),
/// so generated clients call the right URLs.
pub(crate) async fn serve(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document(&state.options.base_path))
}

/// The document for routes mounted under `base_path` (normalized: empty or `/prefix`).
pub(crate) fn document(base_path: &str) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    let url = if base_path.is_empty() { "/" } else { base_path };
    document.servers = Some(vec![utoipa::openapi::server::Server::new(url)]);
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_explicit_id() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        let mut ids = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let id = operation["operationId"].as_str().unwrap_or_default().to_owned();
                // utoipa's default is the handler's name (`create`, `list`...): ours name
                // the resource.
                assert!(
                    id.contains('_') || ["healthz", "readyz", "metrics"].contains(&id.as_str()),
                    "{method} {path}: {id:?}"
                );
                ids.push(id);
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique: {ids:?}");
    }

    #[test]
    fn the_document_names_the_base_path_it_is_served_under() {
        let embedded = serde_json::to_value(document("/tokenvisor")).expect("serializes");
        assert_eq!(embedded["servers"][0]["url"], "/tokenvisor");
        let standalone = serde_json::to_value(document("")).expect("serializes");
        assert_eq!(standalone["servers"][0]["url"], "/");
    }

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        assert!(document["openapi"].as_str().unwrap_or_default().starts_with("3.1"));
        for path in [
            "/v1/integrations",
            "/v1/connections",
            "/v1/connections/{id}",
            "/v1/connections/{id}/token",
            "/v1/connections/{id}/token/rejected",
            "/v1/cluster",
            "/v1/cluster/forward",
            "/v1/connections/{id}/proxy/{path}",
            "/v1/connections/{id}/history",
            "/v1/connections/{id}/refresh",
            "/v1/connections/{id}/deactivate",
            "/v1/connections/{id}/activate",
            "/v1/authorizations",
            "/oauth/callback",
            "/v1/events",
            "/healthz",
            "/readyz",
        ] {
            assert!(document["paths"].get(path).is_some(), "{path} missing");
        }
        let view = &document["components"]["schemas"]["ConnectionView"]["properties"];
        assert!(view.get("token_preview").is_some());
        assert!(view.get("access_token").is_none());
        let integration = &document["components"]["schemas"]["IntegrationView"]["properties"];
        assert!(integration.get("client_secret").is_none());
    }
}
