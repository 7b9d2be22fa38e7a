//! `POST /v1/schemas/{type}/{version}/validate`: check an event's `data` against its schema
//! without sending it. Answers 200, or the very 422 `schema-violation` problem (same pointers,
//! same messages) that `POST /v1/events` would give for the same event. Public, like the schema
//! reads: it stores nothing and reveals nothing but the schema, which is public already.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::HeaderMap,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    error::{ApiError, ApiResult, Problem},
};
use crate::{ingest::IngestError, pointer::FieldError};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(validate))
}

/// The event to check: `data`, and optionally the rest of a native envelope.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; it is read as a JSON object below
pub struct ValidateRequest {
    /// What the schema validates.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Optional; when present (and not null) it must be the path's type.
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: Option<String>,
    /// Optional; when present (and not null) it must be the path's version.
    #[schema(example = "v1")]
    pub version: Option<String>,
}

/// The event's data matches the schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct Valid {
    /// Always true.
    pub valid: bool,
    /// Event type.
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: String,
    /// Schema version.
    #[schema(example = "v1")]
    pub version: String,
}

/// Validate an event's data against this schema, without sending it.
///
/// The body is a native envelope: `{"data": {...}}`, optionally with the other envelope fields
/// (a whole event may be pasted; `type` and `version`, when present, must match the path, and
/// the other fields are not checked here). A 422 is exactly the problem `POST /v1/events` gives
/// for the same event: pointers into the body (`/data/amount`), every violation listed.
#[utoipa::path(
    post,
    path = "/v1/schemas/{type}/{version}/validate",
    tag = "schemas",
    params(
        ("type" = String, Path, description = "Event type", example = "order.paid"),
        ("version" = String, Path, description = "Version", example = "v1"),
    ),
    request_body(content = ValidateRequest, content_type = "application/json",
        example = json!({"data": {"order_id": "o-1001", "amount": 25.5, "currency": "EUR"}})),
    responses(
        (status = 200, description = "The data matches the schema.", body = Valid,
            example = json!({"valid": true, "type": "order.paid", "version": "v1"})),
        (status = 400, description = "Not a JSON object with `data`, or a `type`/`version` other than the path's.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "1 error; first: /data: `data` is required (it is what the schema validates)", "errors": [{"pointer": "/data", "message": "`data` is required (it is what the schema validates)"}]})),
        (status = 404, description = "No such type or version; `detail` names the versions that exist.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "type `order.paid` has no version `v9`; it has v1, v2"})),
        (status = 413, description = "Body over `max_body_bytes`.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/payload-too-large", "title": "Request too large", "status": 413, "detail": "the request body is larger than 1048576 bytes"})),
        (status = 415, description = "A Content-Type other than JSON.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/unsupported-media-type", "title": "Unsupported content type", "status": 415, "detail": "send the event as application/json"})),
        (status = 422, description = "The data does not match the schema: every violation with its pointer, as `POST /v1/events` reports it.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/schema-violation", "title": "Event data does not match its schema", "status": 422, "detail": "2 schema violations; first: /data/amount: -5 is less than the minimum of 0", "errors": [{"pointer": "/data/amount", "message": "-5 is less than the minimum of 0"}, {"pointer": "/data", "message": "\"currency\" is a required property"}]})),
    )
)]
pub async fn validate(
    State(state): State<AppState>,
    Path((event_type, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Valid>> {
    let bytes =
        super::schemas::read_json(&state, &headers, body, "send the event as application/json")
            .await?;
    let Some(schema) = state.registry().get(&event_type, &version) else {
        return Err(super::schemas::not_found(&state, &event_type, &version));
    };
    let data = read_data(&bytes, &event_type, &version)?;
    let errors = schema.violations(&data, "/data");
    if !errors.is_empty() {
        // Through ingest's own error, so the problem is the one an event POST gets.
        return Err(IngestError::SchemaViolation { errors }.into());
    }
    Ok(Json(Valid {
        valid: true,
        event_type,
        version,
    }))
}

/// The `data` of a native envelope; 400 for anything else, or for a `type`/`version` that is
/// not the path's.
fn read_data(bytes: &[u8], event_type: &str, version: &str) -> ApiResult<Value> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("", format!("malformed JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(ApiError::bad_request(
            "",
            "send the event as a JSON object: {\"data\": {...}}",
        ));
    };
    let mut errors = Vec::new();
    for (field, want) in [("type", event_type), ("version", version)] {
        match envelope.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == want => {}
            Some(other) => errors.push(FieldError::new(
                format!("/{field}"),
                format!("`{field}` is {other}, but this is the schema of {event_type} {version}"),
            )),
        }
    }
    let data = envelope.remove("data");
    if data.is_none() {
        errors.push(FieldError::new(
            "/data",
            "`data` is required (it is what the schema validates)",
        ));
    }
    match data {
        Some(data) if errors.is_empty() => Ok(data),
        _ => Err(ApiError::BadRequest {
            detail: crate::pointer::summarize(&errors, "error"),
            errors,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_taken_from_the_envelope() {
        let d = read_data(br#"{"data": {"a": 1}}"#, "t.x", "v1").unwrap();
        assert_eq!(d, serde_json::json!({"a": 1}));
        let d = read_data(
            br#"{"type": null, "version": null, "data": 6}"#,
            "t.x",
            "v1",
        )
        .unwrap();
        assert_eq!(
            d,
            serde_json::json!(6),
            "null is as good as absent, as documented"
        );
        let d = read_data(
            br#"{"type": "t.x", "version": "v1", "data": 5}"#,
            "t.x",
            "v1",
        )
        .unwrap();
        assert_eq!(d, serde_json::json!(5));
        for bad in [
            &br#"{"type": "t.y", "data": {}}"#[..],
            br#"{"version": "v2", "data": {}}"#,
            br#"{}"#,
            br#"[1]"#,
            br#"{"data": "#,
        ] {
            let e = read_data(bad, "t.x", "v1").unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{}", String::from_utf8_lossy(bad));
        }
    }
}
