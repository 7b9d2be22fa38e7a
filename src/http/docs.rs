//! `/docs` (Swagger UI, served from assets vendored into the binary: works offline) and
//! `/openapi.json`.

use axum::Router;
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;

/// Swagger UI and the OpenAPI document.
pub fn routes(doc: utoipa::openapi::OpenApi) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
}
