//! The schema registry over HTTP: list types and versions, read a schema, register a version
//! (`PUT`, admin), set a type's compatibility mode, deprecate a version. The checks live in
//! `schema::catalog`; this module extracts and answers.

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    auth::{self, Caller},
    error::{ApiError, ApiResult, Problem},
    responses::{AdminOnly, OutboxUnavailable, Unauthorized},
};
use crate::{
    outbox::from_micros,
    schema::{
        catalog::Registration,
        compat::Mode,
        registry::{SchemaEntry, Snapshot, TypeEntry},
    },
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schemas))
        .routes(routes!(get_type, set_mode))
        .routes(routes!(get_schema, register_schema))
        .routes(routes!(deprecate_schema))
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
    /// The mode its next version must keep.
    #[schema(value_type = String, example = "BACKWARD")]
    pub compatibility: String,
}

/// Every schema postbox knows.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaList {
    /// Types with their versions.
    pub schemas: Vec<SchemaType>,
}

/// One version of a type, as the registry holds it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaVersion {
    /// Event type.
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: String,
    /// Version.
    #[schema(example = "v2")]
    pub version: String,
    /// sha256 of the schema's canonical JSON (keys sorted, no whitespace), hex.
    #[schema(example = "5f2b8e0c6a9d4e1f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f")]
    pub fingerprint: String,
    /// `file` (the schema directory) or `api` (registered over this API).
    #[schema(example = "api")]
    pub origin: String,
    /// When it was registered over the API (absent for a directory version never registered).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime, nullable = false)]
    pub registered_at: Option<OffsetDateTime>,
    /// `active`, or `deprecated` (still accepted, with a `Deprecation` header on the 202).
    #[schema(example = "active")]
    pub state: String,
    /// When it was deprecated.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime, nullable = false)]
    pub deprecated_at: Option<OffsetDateTime>,
}

/// A type: its compatibility mode and versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaTypeDetail {
    /// Event type.
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: String,
    /// The mode its next version must keep.
    #[schema(value_type = String, example = "BACKWARD")]
    pub compatibility: String,
    /// `type` when set for this type (`PUT /v1/schemas/{type}`), `default` when it is the
    /// `schema_compatibility` setting.
    #[schema(example = "default")]
    pub compatibility_from: String,
    /// Its versions, oldest first.
    pub versions: Vec<SchemaVersion>,
}

/// The body of `PUT /v1/schemas/{type}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompatibilityRequest {
    /// `BACKWARD` (events valid under the previous version stay valid), `FORWARD` (events valid
    /// under the new version are valid under the previous one), `FULL` (both), their
    /// `_TRANSITIVE` forms (against every earlier version), or `NONE`.
    #[schema(
        example = "FULL",
        pattern = "^(BACKWARD|BACKWARD_TRANSITIVE|FORWARD|FORWARD_TRANSITIVE|FULL|FULL_TRANSITIVE|NONE)$"
    )]
    pub compatibility: String,
}

fn version_view(t: &str, v: &str, e: &SchemaEntry) -> SchemaVersion {
    SchemaVersion {
        event_type: t.to_owned(),
        version: v.to_owned(),
        fingerprint: e.fingerprint().to_owned(),
        origin: e.origin.as_str().to_owned(),
        registered_at: e.registered_at.map(from_micros),
        state: if e.deprecated_at.is_some() {
            "deprecated"
        } else {
            "active"
        }
        .to_owned(),
        deprecated_at: e.deprecated_at.map(from_micros),
    }
}

fn type_view(s: &Snapshot, t: &str, entry: Option<&TypeEntry>) -> SchemaTypeDetail {
    SchemaTypeDetail {
        event_type: t.to_owned(),
        compatibility: s.mode_of(t).to_string(),
        compatibility_from: if entry.and_then(|e| e.mode).is_some() {
            "type"
        } else {
            "default"
        }
        .to_owned(),
        versions: entry
            .map(|e| {
                e.versions()
                    .map(|(v, entry)| version_view(t, v, entry))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// List event types, their versions and compatibility modes.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "schemas",
    responses((status = 200, description = "Every type that has a version, with its versions.", body = SchemaList,
        example = json!({"schemas": [{"type": "order.paid", "versions": ["v1", "v2"], "compatibility": "BACKWARD"}, {"type": "user.signed_up", "versions": ["v1"], "compatibility": "BACKWARD"}]})))
)]
pub async fn list_schemas(State(state): State<AppState>) -> Json<SchemaList> {
    let s = state.registry().snapshot();
    let schemas = s
        .list()
        .map(|(t, versions)| SchemaType {
            event_type: t.clone(),
            versions: versions.into_iter().cloned().collect(),
            compatibility: s.mode_of(t).to_string(),
        })
        .collect();
    Json(SchemaList { schemas })
}

/// One type: its compatibility mode and every version with its fingerprint, origin and state.
#[utoipa::path(
    get,
    path = "/v1/schemas/{type}",
    tag = "schemas",
    params(("type" = String, Path, description = "Event type", example = "order.paid")),
    responses(
        (status = 200, description = "The type.", body = SchemaTypeDetail,
            example = json!({"type": "order.paid", "compatibility": "BACKWARD", "compatibility_from": "default", "versions": [{"type": "order.paid", "version": "v1", "fingerprint": "0d9c…", "origin": "file", "state": "deprecated", "deprecated_at": "2026-11-30T08:00:00Z"}, {"type": "order.paid", "version": "v3", "fingerprint": "77a1…", "origin": "api", "registered_at": "2026-11-30T07:00:00Z", "state": "active"}]})),
        (status = 404, description = "No version and no mode for this type.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "there is no schema for type `order.refunded`"})),
    )
)]
pub async fn get_type(
    State(state): State<AppState>,
    Path(event_type): Path<String>,
) -> ApiResult<Json<SchemaTypeDetail>> {
    let s = state.registry().snapshot();
    match s.get_type(&event_type) {
        Some(t) => Ok(Json(type_view(&s, &event_type, Some(t)))),
        None => Err(ApiError::NotFound(format!(
            "there is no schema for type `{event_type}`"
        ))),
    }
}

/// Set a type's compatibility mode (also before its first version): what its next versions
/// must keep. Admin scope when API keys are configured.
#[utoipa::path(
    put,
    path = "/v1/schemas/{type}",
    tag = "schemas",
    params(("type" = String, Path, description = "Event type", example = "order.paid", pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*$", max_length = 128)),
    request_body(content = CompatibilityRequest, example = json!({"compatibility": "FULL"})),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Set; the type as it is now.", body = SchemaTypeDetail),
        (status = 400, description = "Not a mode, or not a type name.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "unknown compatibility mode `SIDEWAYS`: expected one of BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE", "errors": [{"pointer": "/compatibility", "message": "unknown compatibility mode `SIDEWAYS`: expected one of BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE"}]})),
        Unauthorized, AdminOnly, OutboxUnavailable,
    )
)]
pub async fn set_mode(
    State(state): State<AppState>,
    caller: Caller,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SchemaTypeDetail>> {
    auth::require_admin(&caller)?;
    let bytes = read_json(
        &state,
        &headers,
        body,
        "send JSON: application/json or application/schema+json",
    )
    .await?;
    let req: CompatibilityRequest = ApiError::json_object(&bytes)?
        .ok_or_else(|| ApiError::bad_request("", "expected {\"compatibility\": MODE}, not null"))?;
    let mode: Mode =
        req.compatibility
            .parse()
            .map_err(|e: crate::schema::compat::UnknownMode| {
                ApiError::bad_request("/compatibility", e.to_string())
            })?;
    state.catalog().set_mode(&event_type, mode).await?;
    let s = state.registry().snapshot();
    Ok(Json(type_view(&s, &event_type, s.get_type(&event_type))))
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
        Some(entry) => {
            let mut r = (
                [(header::CONTENT_TYPE, "application/schema+json")],
                Json(entry.document().clone()),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", entry.fingerprint())) {
                r.headers_mut().insert(header::ETAG, v);
            }
            Ok(r)
        }
        None => Err(not_found(&state, &event_type, version)),
    }
}

/// 404 for an unknown `(type, version)`, naming the versions the type has.
pub(super) fn not_found(state: &AppState, event_type: &str, version: &str) -> ApiError {
    let versions = state.registry().versions(event_type);
    ApiError::NotFound(if versions.is_empty() {
        format!("there is no schema for type `{event_type}`")
    } else {
        format!(
            "type `{event_type}` has no version `{version}`; it has {}",
            versions.join(", ")
        )
    })
}

/// Register a schema version (the body is the JSON Schema). Versions are immutable and
/// numbered upwards; the new version must keep the type's compatibility mode against the
/// earlier versions (the directory's and the registered ones). Usable for events on this
/// instance when the answer comes, on the others within 2 s. Admin scope when API keys are
/// configured.
#[utoipa::path(
    put,
    path = "/v1/schemas/{type}/{version}",
    tag = "schemas",
    params(
        ("type" = String, Path, description = "Event type", example = "order.paid", pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*$", max_length = 128),
        ("version" = String, Path, description = "Version: `v` and a number above the type's others", example = "v3", pattern = r"^v[0-9]{1,9}$"),
    ),
    request_body(content = Object, description = "A JSON Schema (draft 2020-12 unless `$schema` says otherwise).", content_type = "application/schema+json",
        example = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}, "note": {"type": "string"}}, "additionalProperties": false})),
    security((), ("api_key" = [])),
    responses(
        (status = 201, description = "Registered.", body = SchemaVersion,
            headers(("Location" = String, description = "`/v1/schemas/{type}/{version}`"))),
        (status = 200, description = "The identical schema (same fingerprint) already has this version: nothing changed.", body = SchemaVersion),
        (status = 400, description = "Not JSON, or not a type/version name.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "`3` is not a version: `v` and a number, like v3", "errors": [{"pointer": "/", "message": "`3` is not a version: `v` and a number, like v3"}]})),
        (status = 409, description = "`schema-version-exists`: a different schema has this version (versions are immutable); `schema-version-order`: the type has this number or a higher one already.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/schema-version-exists", "title": "This schema version exists with a different schema", "status": 409, "detail": "`order.paid` v2 exists with a different schema (fingerprint 0d9c…); versions are immutable: register the change as a new version"})),
        (status = 422, description = "`incompatible-schema`: it breaks the type's compatibility mode, `errors` says where (pointers into the new schema); `invalid-schema`: it does not compile.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/incompatible-schema", "title": "The schema breaks its type's compatibility mode", "status": 422, "detail": "`order.paid` v3 is not BACKWARD-compatible: /required: `user_id` became required: events valid under v2 may be invalid under v3", "errors": [{"pointer": "/required", "message": "`user_id` became required: events valid under v2 may be invalid under v3"}]})),
        Unauthorized, AdminOnly, OutboxUnavailable,
    )
)]
pub async fn register_schema(
    State(state): State<AppState>,
    caller: Caller,
    Path((event_type, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    auth::require_admin(&caller)?;
    let bytes = read_json(
        &state,
        &headers,
        body,
        "send JSON: application/json or application/schema+json",
    )
    .await?;
    let document: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("/", format!("the body is not JSON: {e}")))?;
    let outcome = state
        .catalog()
        .register(&event_type, &version, document)
        .await?;
    let s = state.registry().snapshot();
    let Some(entry) = s.get(&event_type, &version) else {
        // Registered but not served: a directory file with that version took its place.
        return Err(not_found(&state, &event_type, &version));
    };
    let view = Json(version_view(&event_type, &version, entry));
    Ok(match outcome {
        Registration::Created => {
            let mut r = (StatusCode::CREATED, view).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/schemas/{event_type}/{version}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Registration::Identical => (StatusCode::OK, view).into_response(),
    })
}

/// Deprecate a version: its events are still accepted, and each 202 carries `Deprecation`
/// (RFC 9745) and a `Link` to the newest version. Admin scope when API keys are configured.
#[utoipa::path(
    post,
    path = "/v1/schemas/{type}/{version}/deprecate",
    tag = "schemas",
    params(
        ("type" = String, Path, description = "Event type", example = "order.paid"),
        ("version" = String, Path, description = "Version", example = "v1"),
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Deprecated (deprecating again changes nothing).", body = SchemaVersion),
        (status = 404, description = "No such type or version.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "there is no schema `order.paid` v9"})),
        Unauthorized, AdminOnly, OutboxUnavailable,
    )
)]
pub async fn deprecate_schema(
    State(state): State<AppState>,
    caller: Caller,
    Path((event_type, version)): Path<(String, String)>,
) -> ApiResult<Json<SchemaVersion>> {
    auth::require_admin(&caller)?;
    state.catalog().deprecate(&event_type, &version).await?;
    let s = state.registry().snapshot();
    match s.get(&event_type, &version) {
        Some(entry) => Ok(Json(version_view(&event_type, &version, entry))),
        None => Err(not_found(&state, &event_type, &version)),
    }
}

/// The request body (JSON, or a `+json` type such as `application/schema+json`; none given is
/// taken as JSON), within the body limit; `expected` says what to send in the 415.
pub(super) async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> ApiResult<Bytes> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_none_or(|e| e == "application/json" || e.ends_with("+json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType(expected.to_owned()));
    }
    let limit = state.config().limits.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"))
    })
}
