//! `/docs`: the OpenAPI document (`/openapi.json`) rendered for reading by Swagger UI.
//!
//! Swagger UI (`swagger-ui-dist` 5.35.0 from npm, Apache-2.0, its `LICENSE` and `NOTICE`
//! beside the files in `assets/swagger-ui/`) is compiled into the binary: the page, its
//! script and stylesheet come from this service and nothing is fetched from elsewhere at run
//! time (the starter script turns off Swagger UI's public validator badge, and the page's
//! content security policy allows scripts, styles, images and requests from this origin
//! only). Served where `/openapi.json` is (with [`crate::AdminOptions::health_routes`]).

use crate::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

/// Swagger UI's bundle (minified, with its licence comments in
/// `swagger-ui-bundle.js.LICENSE.txt`).
const BUNDLE: &[u8] = include_bytes!("assets/swagger-ui/swagger-ui-bundle.js");
/// Swagger UI's stylesheet.
const CSS: &[u8] = include_bytes!("assets/swagger-ui/swagger-ui.css");
/// Swagger UI's licence, served beside it.
const LICENSE: &str = concat!(
    include_str!("assets/swagger-ui/NOTICE"),
    "\n",
    include_str!("assets/swagger-ui/LICENSE")
);
/// Starts Swagger UI on the page (no inline script).
const STARTER: &str = include_str!("assets/docs.js");

/// The version of Swagger UI bundled, shown on the page.
pub(crate) const SWAGGER_UI_VERSION: &str = "5.35.0";

/// `/docs` and its assets (relative to the base path).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/docs", get(page))
        .route(
            "/docs/assets/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript; charset=utf-8", BUNDLE) }),
        )
        .route(
            "/docs/assets/swagger-ui.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/docs/assets/docs.js",
            get(|| async { asset("text/javascript; charset=utf-8", STARTER.as_bytes()) }),
        )
        .route(
            "/docs/assets/LICENSE",
            get(|| async { asset("text/plain; charset=utf-8", LICENSE.as_bytes()) }),
        )
        .layer(axum::middleware::map_response(headers))
}

/// The content security policy of `/docs`: everything from this origin only. Swagger UI sets
/// some styles through the DOM (allowed without `'unsafe-inline'`); its "Try it out" calls
/// go to this origin (`connect-src 'self'`).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                      base-uri 'none'";

async fn headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn page(State(state): State<AppState>) -> Response {
    let base = &state.options.base_path;
    let markup = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "tokenvisor admin API" }
                link rel="stylesheet" href={ (base) "/docs/assets/swagger-ui.css" };
            }
            body {
                main {
                    div id="swagger-ui" data-openapi={ (base) "/openapi.json" } {
                        noscript { p { "This page needs JavaScript; the document itself is at "
                            a href={ (base) "/openapi.json" } { "openapi.json" } "." } }
                    }
                }
                p.license {
                    "Rendered by Swagger UI " (SWAGGER_UI_VERSION) " ("
                    a href={ (base) "/docs/assets/LICENSE" } { "Apache-2.0" } ")."
                }
                script src={ (base) "/docs/assets/swagger-ui-bundle.js" } {}
                script src={ (base) "/docs/assets/docs.js" } {}
            }
        }
    };
    Html(markup.into_string()).into_response()
}
