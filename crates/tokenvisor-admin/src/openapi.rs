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
                       `Authorization: Bearer <admin token or API key>`; an API key's scopes \
                       and restrictions are checked on every route (403 `forbidden`). Errors are \
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
        routes::connections::token_rejected_by_key,
        routes::connections::refresh_by_key,
        routes::connections::deactivate_by_key,
        routes::connections::activate_by_key,
        routes::connections::delete_by_key,
        routes::connections::history_by_key,
        routes::proxy::forward_by_key,
        routes::authorizations::create,
        routes::authorizations::callback,
        routes::events::stream,
        routes::webhooks::create_endpoint,
        routes::webhooks::list_endpoints,
        routes::webhooks::update_endpoint,
        routes::webhooks::delete_endpoint,
        routes::webhooks::rotate_secret,
        routes::webhooks::replay_endpoint_dead_letters,
        routes::webhooks::list_dead_letters,
        routes::webhooks::replay_dead_letter,
        routes::cluster::status,
        routes::cluster::forward,
        routes::keys::rotate,
        routes::keys::status,
        routes::api_keys::create,
        routes::api_keys::list,
        routes::api_keys::revoke,
        routes::api_keys::audit,
        routes::health::healthz,
        routes::health::readyz,
        routes::health::metrics,
    ),
    // Referenced only by query parameters, which do not register their schemas.
    components(schemas(crate::views::SortParam, crate::views::OrderParam)),
    modifiers(&BearerAuth, &CommonErrors)
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

/// The errors any operation of a kind can answer, added to each operation's own: 401,
/// 403 `forbidden` and 429 `too_many_attempts` where a bearer token is required, 400 `invalid_id` for a path id, the JSON body's
/// rejections, 400 `invalid_query` for query parameters, 503/504 for the database or an
/// owner being unavailable, 500 for the unexpected.
struct CommonErrors;

impl CommonErrors {
    fn add(operation: &mut utoipa::openapi::path::Operation, status: &str, codes: &[&str]) {
        use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
        let listed = codes.iter().map(|code| format!("`{code}`")).collect::<Vec<_>>();
        let error_body = ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
            .build();
        match operation.responses.responses.get_mut(status) {
            Some(RefOr::T(response)) => {
                for code in listed {
                    if !response.description.contains(&code) {
                        response.description = format!("{}, {code}", response.description);
                    }
                }
                response
                    .content
                    .entry("application/json".to_owned())
                    .or_insert(error_body);
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                let response = ResponseBuilder::new()
                    .description(listed.join(", "))
                    .content("application/json", error_body)
                    .build();
                operation
                    .responses
                    .responses
                    .insert(status.to_owned(), RefOr::T(response));
            }
        }
    }
}

impl CommonErrors {
    /// The proxy passes the API's answer back whatever its status, so every status it
    /// documents may also carry the API's own body, of any content type and shape.
    fn passed_through(operation: &mut utoipa::openapi::path::Operation) {
        use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType};
        use utoipa::openapi::{ContentBuilder, RefOr};
        for response in operation.responses.responses.values_mut() {
            if let RefOr::T(response) = response {
                response.content.entry("*/*".to_owned()).or_insert_with(|| {
                    ContentBuilder::new()
                        .schema(Some(RefOr::T(Schema::Object(
                            ObjectBuilder::new().schema_type(SchemaType::AnyValue).build(),
                        ))))
                        .build()
                });
                if !response.description.contains("the API's own answer") {
                    response.description =
                        format!("{}; or the API's own answer with this status", response.description);
                }
            }
        }
    }
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
                item.head.as_mut(),
                item.options.as_mut(),
                item.trace.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let parameters = operation.parameters.as_deref().unwrap_or_default();
                let has_id = path.contains("{id}");
                let has_query = parameters.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query));
                let json_body = operation
                    .request_body
                    .as_ref()
                    .is_some_and(|body| body.content.contains_key("application/json"));
                if secured {
                    Self::add(operation, "401", &["unauthorized"]);
                    Self::add(operation, "403", &["forbidden"]);
                    Self::add(operation, "429", &["too_many_attempts"]);
                }
                if has_id {
                    Self::add(operation, "400", &["invalid_id"]);
                }
                if has_query {
                    Self::add(operation, "400", &["invalid_query"]);
                }
                if json_body {
                    Self::add(operation, "400", &["malformed_json"]);
                    Self::add(operation, "413", &["payload_too_large"]);
                    Self::add(operation, "415", &["unsupported_media_type"]);
                    Self::add(operation, "422", &["invalid_input"]);
                }
                if path.starts_with("/v1/") {
                    Self::add(operation, "503", &["store_unavailable", "shutting_down"]);
                    Self::add(operation, "504", &["timeout"]);
                }
                Self::add(operation, "500", &["internal"]);
                if matches!(
                    operation.operation_id.as_deref(),
                    Some("proxy_request" | "proxy_request_by_key")
                ) {
                    Self::passed_through(operation);
                }
            }
        }
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
    fn every_operation_documents_the_errors_it_can_answer_and_the_code_is_an_enum() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let responses = &operation["responses"];
                let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
                if secured {
                    assert!(responses.get("401").is_some(), "{method} {path}: 401");
                }
                if path.contains("{id}") {
                    let text = responses["400"]["description"].as_str().unwrap_or_default();
                    assert!(text.contains("invalid_id"), "{method} {path}: 400 invalid_id");
                }
                if path.starts_with("/v1/") {
                    assert!(responses.get("503").is_some(), "{method} {path}: 503");
                    assert!(responses.get("504").is_some(), "{method} {path}: 504");
                }
                assert!(responses.get("500").is_some(), "{method} {path}: 500");
            }
        }
        let code = &document["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
        let values: Vec<&str> = code["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for expected in [
            "needs_reauth",
            "unauthorized",
            "invalid_id",
            "timeout",
            "unsupported_media_type",
        ] {
            assert!(values.contains(&expected), "{expected} in {values:?}");
        }
    }

    #[test]
    fn the_document_states_the_rules_the_api_enforces() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serializes");
        let schemas = &document["components"]["schemas"];
        for schema in ["CreateConnection", "CreateAuthorization"] {
            let tenant = &schemas[schema]["properties"]["tenant_id"];
            assert_eq!(tenant["pattern"], "^[A-Za-z0-9._:@-]{1,128}$", "{schema}");
            assert_eq!(tenant["maxLength"], 128, "{schema}");
        }
        assert_eq!(schemas["CreateIntegration"]["properties"]["name"]["maxLength"], 128);
        // An integration registered without settings shows `null`.
        let settings = &schemas["IntegrationView"]["properties"]["settings"];
        assert!(settings.to_string().contains("null"), "{settings}");
        let parameter = |path: &str, name: &str| {
            document["paths"][path]["get"]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{path} {name}"))
        };
        assert_eq!(parameter("/v1/connections", "limit")["schema"]["minimum"], 1);
        assert_eq!(
            parameter("/v1/connections/{id}/history", "limit")["schema"]["minimum"],
            1
        );
        assert_eq!(parameter("/v1/webhooks/dead-letters", "limit")["schema"]["minimum"], 1);
        assert_eq!(parameter("/oauth/callback", "state")["schema"]["minLength"], 1);
        let status = parameter("/v1/connections", "status").to_string();
        for value in ["active", "degraded", "needs_reauth", "disabled"] {
            assert!(
                status.contains(value) || schemas["StatusView"].to_string().contains(value),
                "{value}"
            );
        }
        // The proxy forwards any bytes and passes back the API's answers of any type.
        let proxy = &document["paths"]["/v1/connections/{id}/proxy/{path}"]["post"];
        let body = &proxy["requestBody"]["content"]["application/octet-stream"]["schema"];
        let body = match body["$ref"].as_str() {
            Some(reference) => &schemas[reference.trim_start_matches("#/components/schemas/")],
            None => body,
        };
        assert_eq!(body["format"], "binary", "{body}");
        assert!(proxy["responses"]["400"]["content"].get("*/*").is_some());
        let list = &document["paths"]["/v1/connections"]["get"]["responses"];
        assert!(list.get("404").is_some() && list.get("422").is_some());
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
            "/v1/keys/rotate",
            "/v1/keys/rotation",
            "/v1/connections/{id}/proxy/{path}",
            "/v1/connections/{id}/history",
            "/v1/connections/{id}/refresh",
            "/v1/connections/{id}/deactivate",
            "/v1/connections/{id}/activate",
            "/v1/tenants/{tenant}/connections",
            "/v1/tenants/{tenant}/connections/{integration}/{key}",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/token",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/token/rejected",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/refresh",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/deactivate",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/activate",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/history",
            "/v1/tenants/{tenant}/connections/{integration}/{key}/proxy/{path}",
            "/v1/authorizations",
            "/oauth/callback",
            "/v1/events",
            "/v1/webhooks/endpoints",
            "/v1/webhooks/endpoints/{id}",
            "/v1/webhooks/endpoints/{id}/rotate-secret",
            "/v1/webhooks/endpoints/{id}/replay-dead-letters",
            "/v1/webhooks/dead-letters",
            "/v1/webhooks/dead-letters/{id}/replay",
            "/v1/api-keys",
            "/v1/api-keys/{id}",
            "/v1/audit",
            "/healthz",
            "/readyz",
        ] {
            assert!(document["paths"].get(path).is_some(), "{path} missing");
        }
        let key = &document["components"]["schemas"]["ApiKeyView"]["properties"];
        assert!(key.get("prefix").is_some());
        assert!(key.get("key").is_none(), "listed keys carry no key");
        let token = &document["paths"]["/v1/connections/{id}/token"]["get"]["responses"];
        assert!(
            token["403"]["description"]
                .as_str()
                .unwrap_or_default()
                .contains("forbidden")
        );
        assert!(
            token["429"]["description"]
                .as_str()
                .unwrap_or_default()
                .contains("too_many_attempts")
        );
        let view = &document["components"]["schemas"]["ConnectionView"]["properties"];
        assert!(view.get("token_preview").is_some());
        assert!(view.get("access_token").is_none());
        let integration = &document["components"]["schemas"]["IntegrationView"]["properties"];
        assert!(integration.get("client_secret").is_none());
        let endpoint = &document["components"]["schemas"]["WebhookEndpointView"]["properties"];
        assert!(endpoint.get("url").is_some());
        assert!(endpoint.get("secret").is_none(), "listed endpoints carry no secret");
    }
}
