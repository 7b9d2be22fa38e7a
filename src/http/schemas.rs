//! `GET /v1/schemas` and `GET /v1/schemas/{type}/{version}`: the schemas events are checked against.

use axum::{
    Json,
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use crate::error::{ApiError, ApiResult, Problem};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schemas))
        .routes(routes!(get_schema))
}

/// One event type and its versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaType {
    /// Event type.
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: String,
    /// Its versions, oldest first.
    #[schema(example = json!(["v1", "v2"]))]
    pub versions: Vec<String>,
}

/// Every schema postbox knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaList {
    /// Types with their versions.
    pub schemas: Vec<SchemaType>,
}

/// List event types and their versions.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "schemas",
    responses((status = 200, description = "Every type and its versions.", body = SchemaList,
        example = json!({"schemas": [{"type": "order.paid", "versions": ["v1", "v2"]}, {"type": "user.signed_up", "versions": ["v1"]}]})))
)]
pub async fn list_schemas(State(state): State<AppState>) -> Json<SchemaList> {
    let schemas = state
        .registry()
        .list()
        .map(|(t, versions)| SchemaType {
            event_type: t.clone(),
            versions: versions.into_iter().cloned().collect(),
        })
        .collect();
    Json(SchemaList { schemas })
}

/// One JSON Schema, as written. Its URL is the natural CloudEvents `dataschema` value.
#[utoipa::path(
    get,
    path = "/v1/schemas/{type}/{version}",
    tag = "schemas",
    params(
        ("type" = String, Path, description = "Event type", example = "order.paid"),
        ("version" = String, Path, description = "Version", example = "v1"),
    ),
    responses(
        (status = 200, description = "The JSON Schema document.", body = Object, content_type = "application/schema+json"),
        (status = 404, description = "Unknown type or version; `available_versions` names those that exist.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "type `order.paid` has no version `v9`; it has v1, v2"})),
    )
)]
pub async fn get_schema(
    State(state): State<AppState>,
    Path((event_type, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let version = version.strip_suffix(".json").unwrap_or(&version);
    match state.registry().get(&event_type, version) {
        Some(entry) => Ok((
            [(header::CONTENT_TYPE, "application/schema+json")],
            Json(entry.document.clone()),
        )
            .into_response()),
        None => {
            let versions = state.registry().versions(&event_type);
            Err(ApiError::NotFound(if versions.is_empty() {
                format!("there is no schema for type `{event_type}`")
            } else {
                format!(
                    "type `{event_type}` has no version `{version}`; it has {}",
                    versions.join(", ")
                )
            }))
        }
    }
}
