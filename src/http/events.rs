//! `POST /v1/events` (every encoding, batches) and `GET /v1/events/{id}`.

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, auth::Caller};
use crate::{
    envelope::{self, Event, Mode, ParseContext},
    error::{ApiError, ApiResult, FieldError, Problem, summarize},
    outbox::{
        EventRecord, NewRow, OutboxStore, StoredRef, WriteOutcome, WriteRequest, micros,
        writer::WriteError,
    },
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_events))
        .routes(routes!(get_event))
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// postbox's own envelope (`application/json`). A JSON array of these is a batch.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; parsing is in `envelope`
pub struct NativeEvent {
    /// Event type: dot-separated words of letters, digits, `_`, `-`.
    #[serde(rename = "type")]
    #[schema(
        example = "order.paid",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*$",
        max_length = 128
    )]
    pub event_type: String,
    /// Schema version, always explicit.
    #[schema(example = "v1", pattern = r"^v[0-9]{1,6}$")]
    pub version: String,
    /// The payload, validated against `/v1/schemas/{type}/{version}`.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Your id for the event; makes `(source, id)` an idempotency key. Default: a UUIDv7.
    #[schema(example = "order-1001-paid", pattern = r"^[A-Za-z0-9._~:@+=-]{1,128}$")]
    pub id: Option<String>,
    /// Who sent it (a URI-reference). Default: `postbox`.
    #[schema(example = "/shop/checkout", max_length = 256)]
    pub source: Option<String>,
    /// What it is about.
    #[schema(max_length = 256)]
    pub subject: Option<String>,
    /// Ordering key: events with the same key are published in the order they were accepted.
    #[schema(example = "customer-42", max_length = 256)]
    pub key: Option<String>,
    /// Event time, RFC 3339. Default: when postbox accepted it.
    #[schema(format = DateTime)]
    pub time: Option<String>,
}

/// A CloudEvents 1.0 event in structured mode (`application/cloudevents+json`). The version is
/// a `.vN` suffix on `type` or the last segment of `dataschema`. Extension attributes (1-20
/// lowercase letters/digits) are kept; `partitionkey` is the ordering key.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; parsing is in `envelope`
pub struct CloudEvent {
    /// Always `1.0`.
    #[schema(example = "1.0")]
    pub specversion: String,
    /// Event id, unique per source.
    #[schema(example = "9f0c2a6e-1d7c-4c51-8f05-5c4d2c7d7c11")]
    pub id: String,
    /// Source URI-reference.
    #[schema(example = "/shop/checkout")]
    pub source: String,
    /// Type, optionally with a `.vN` version suffix.
    #[serde(rename = "type")]
    #[schema(example = "order.paid.v1")]
    pub event_type: String,
    /// Must be JSON when present.
    #[schema(example = "application/json")]
    pub datacontenttype: Option<String>,
    /// Schema URL ending in the version, e.g. `http://127.0.0.1:8080/v1/schemas/order.paid/v1`.
    pub dataschema: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// RFC 3339 time.
    #[schema(format = DateTime)]
    pub time: Option<String>,
    /// The payload, validated against its schema.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// One accepted event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Event id (yours, or a UUIDv7 postbox assigned).
    #[schema(example = "0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11")]
    pub id: String,
    /// Event source.
    #[schema(example = "postbox")]
    pub source: String,
    /// Where to follow its delivery.
    #[schema(example = "/v1/events/0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11")]
    pub location: String,
}

/// Answer to a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedBatch {
    /// One entry per event, in request order.
    pub events: Vec<Accepted>,
}

/// Answer to `POST /v1/events`: one event, or `{"events": [...]}` for a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AcceptedResponse {
    /// A single event.
    One(Accepted),
    /// A batch (a JSON array of events, even of one).
    Batch(AcceptedBatch),
}

/// Send one event or a batch.
///
/// Answers 202 only after the events are committed to the outbox; the relay then publishes them
/// to RabbitMQ. See the API description for the encodings.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the whole request idempotent (1-255 visible ASCII characters)."),
        ("traceparent" = Option<String>, Header, description = "W3C trace context; stored, and the relay's publish becomes its child span: the AMQP `traceparent` header has the same trace id and flags with the publish span's id. Ignored when invalid."),
        ("tracestate" = Option<String>, Header, description = "W3C vendor trace state (with a valid `traceparent` only); stored and passed on as an AMQP header. Ignored when invalid or longer than 512 characters."),
        ("ce-specversion" = Option<String>, Header, description = "CloudEvents binary mode: `1.0`; then `ce-id`, `ce-source`, `ce-type` are required and the body is `data`."),
    ),
    request_body(
        description = "An event in any of the accepted encodings.",
        content(
            (NativeEvent = "application/json", example = json!({"type": "order.paid", "version": "v1", "data": {"order_id": "o-1001", "amount": 25.5, "currency": "EUR"}})),
            (CloudEvent = "application/cloudevents+json", example = json!({"specversion": "1.0", "id": "9f0c2a6e-1d7c-4c51-8f05-5c4d2c7d7c11", "source": "/shop/checkout", "type": "order.paid.v1", "data": {"order_id": "o-1001", "amount": 25.5, "currency": "EUR"}})),
            (Vec<CloudEvent> = "application/cloudevents-batch+json", example = json!([{"specversion": "1.0", "id": "b-1", "source": "/shop/checkout", "type": "order.paid.v1", "data": {"order_id": "o-1", "amount": 1, "currency": "EUR"}}, {"specversion": "1.0", "id": "b-2", "source": "/shop/accounts", "type": "user.signed_up.v1", "data": {"user_id": "u-1", "email": "ada@example.com"}}]))
        )
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No API key, or not a valid one (only when API keys are configured).", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"postbox\"`")),
            example = json!({"type": "/problems/unauthorized", "title": "A valid API key is required", "status": 401, "detail": "this endpoint needs an API key: send `Authorization: Bearer <key>`"})),
        (status = 403, description = "The API key may not send this event type or source; `errors` names each event.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/forbidden", "title": "This API key may not do that", "status": 403, "detail": "1 event this key may not send; first: /type: API key `checkout` may not send events of type `user.signed_up`", "errors": [{"pointer": "/type", "message": "API key `checkout` may not send events of type `user.signed_up`"}]})),
        (status = 429, description = "The API key is over its rate limit (`rate_per_sec`, one token per event); nothing was stored. Retry after `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait")),
            example = json!({"type": "/problems/rate-limited", "title": "Too many events for this API key", "status": 429, "detail": "API key `checkout` is over its rate limit; nothing was stored"})),
        (status = 202, description = "Stored in the outbox (or already stored with the same content: then `Idempotent-Replayed: true`). A batch answers `{\"events\": [...]}` in request order.", body = AcceptedResponse,
            headers(("Location" = String, description = "`/v1/events/{id}` of a single event"), ("Idempotent-Replayed" = String, description = "`true` when nothing new was stored")),
            example = json!({"id": "0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11", "source": "postbox", "location": "/v1/events/0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11"})),
        (status = 400, description = "Malformed JSON or envelope; `errors` lists every problem.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "1 error; first: /version: `version` is required", "errors": [{"pointer": "/version", "message": "`version` is required"}]})),
        (status = 408, description = "The request body did not arrive within the body timeout (`body_timeout_ms`); nothing was stored and the connection is closed.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/body-timeout", "title": "The request body was not received in time", "status": 408, "detail": "the request body did not arrive within 30000 ms"})),
        (status = 409, description = "A request with the same key is being committed right now; retry after `Retry-After`.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/request-in-progress", "title": "A request with this key is in progress", "status": 409, "detail": "a request with the same idempotency key or event id is being committed; retry shortly"})),
        (status = 413, description = "Body (after decompression) or batch over the limit.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/payload-too-large", "title": "Request too large", "status": 413, "detail": "the request body is larger than 1048576 bytes"})),
        (status = 415, description = "Content type not accepted.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/unsupported-media-type", "title": "Unsupported content type", "status": 415, "detail": "unsupported Content-Type `text/plain`; send application/json, application/cloudevents+json or application/cloudevents-batch+json"})),
        (status = 422, description = "Unknown type/version (naming the versions that exist), data that fails its schema (every violation with its pointer), or a key reused with different content.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/schema-violation", "title": "Event data does not match its schema", "status": 422, "detail": "2 schema violations; first: /data/amount: -5 is less than the minimum of 0", "errors": [{"pointer": "/data/amount", "message": "-5 is less than the minimum of 0"}, {"pointer": "/data", "message": "\"currency\" is a required property"}]})),
        (status = 503, description = "The outbox cannot take events now (`outbox-unavailable`: database unreachable or backlog limit; nothing was stored), postbox is at its `max_in_flight` limit (`overloaded`; nothing was done), or the request took longer than `request_timeout_ms` (`request-timeout`: the events may have been stored; a retry with the same event id or `Idempotency-Key` answers as a replay). Retry after `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait")),
            example = json!({"type": "/problems/outbox-unavailable", "title": "The outbox cannot accept events right now", "status": 503, "detail": "the outbox database is unavailable; nothing was stored"})),
    )
)]
pub async fn post_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let limits = &state.config().limits;
    let bytes = tokio::time::timeout(limits.body_timeout, read_body(body, limits.max_body_bytes))
        .await
        .map_err(|_| {
            ApiError::BodyTimeout(format!(
                "the request body did not arrive within {} ms",
                limits.body_timeout.as_millis()
            ))
        })??;
    let mode = envelope::mode(&headers)?;
    let ctx = ParseContext {
        public_url: &state.config().public_url,
        max_batch_events: state.config().limits.max_batch_events,
    };
    let (events, is_batch) = envelope::parse(mode, &headers, &bytes, &ctx)?;
    caller.authorize_send(&events, mode)?;
    validate(&state, &events, mode)?;
    let idempotency = idempotency_key(&headers, &events)?;
    let (traceparent, tracestate) = crate::trace::from_headers(&headers);

    let mut keys: Vec<String> = events
        .iter()
        .filter(|e| e.id_supplied)
        .map(|e| format!("e\u{0}{}\u{0}{}", e.source, e.id))
        .collect();
    if let Some((k, _)) = &idempotency {
        keys.push(format!("k\u{0}{k}"));
    }
    let _in_flight = state.claim_keys(keys).ok_or_else(|| {
        ApiError::Conflict(
            "a request with the same idempotency key or event id is being committed; retry shortly"
                .to_owned(),
        )
    })?;

    let max_backlog = state.config().limits.max_backlog;
    if max_backlog > 0 && state.pending() >= i64::try_from(max_backlog).unwrap_or(i64::MAX) {
        return Err(ApiError::Unavailable {
            detail: format!(
                "the outbox holds more than {max_backlog} undelivered events; nothing was stored"
            ),
            retry_after: 5,
        });
    }

    let api_key = caller.key_name();
    let rows = events
        .iter()
        .map(|e| {
            to_row(
                &state,
                e,
                (traceparent.clone(), tracestate.clone()),
                api_key.clone(),
            )
        })
        .collect();
    let outcome = state
        .writer()
        .submit(WriteRequest { rows, idempotency })
        .await
        .map_err(|e| match e {
            WriteError::QueueFull => ApiError::Unavailable {
                detail: "postbox is at capacity (writer queue full); nothing was stored".to_owned(),
                retry_after: 1,
            },
            WriteError::Store(_) => ApiError::Unavailable {
                detail: "the outbox database is unavailable; nothing was stored".to_owned(),
                retry_after: 2,
            },
            WriteError::Closed => ApiError::Unavailable {
                detail: "postbox is shutting down; nothing was stored".to_owned(),
                retry_after: 1,
            },
        })?;
    match outcome {
        WriteOutcome::KeyReused(detail) => Err(ApiError::IdempotencyKeyReused(detail)),
        WriteOutcome::Stored { refs, replayed } => {
            for e in &events {
                metrics::counter!("postbox_events_accepted_total", "type" => e.event_type.clone())
                    .increment(1);
            }
            Ok(accepted(refs, replayed, is_batch))
        }
    }
}

fn accepted(refs: Vec<StoredRef>, replayed: bool, is_batch: bool) -> Response {
    let mut list: Vec<Accepted> = refs
        .into_iter()
        .map(|r| Accepted {
            location: location(&r.id, &r.source),
            id: r.id,
            source: r.source,
        })
        .collect();
    let one = if is_batch || list.len() != 1 {
        None
    } else {
        list.pop()
    };
    let mut resp = match one {
        None => (
            StatusCode::ACCEPTED,
            Json(AcceptedResponse::Batch(AcceptedBatch { events: list })),
        )
            .into_response(),
        Some(one) => {
            let loc = one.location.clone();
            let mut r = (StatusCode::ACCEPTED, Json(AcceptedResponse::One(one))).into_response();
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
    };
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// `/v1/events/{id}`, plus `?source=` unless the source is postbox's default (ids are unique
/// per source only).
fn location(id: &str, source: &str) -> String {
    if source == envelope::DEFAULT_SOURCE {
        format!("/v1/events/{id}")
    } else {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("source", source)
            .finish();
        format!("/v1/events/{id}?{q}")
    }
}

async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge(format!(
                    "the request body is larger than {limit} bytes (after decompression)"
                ));
            }
            source = err.source();
        }
        ApiError::bad_request("", format!("could not read the request body: {e}"))
    })
}

/// Every event against its schema; all problems of all events are reported together.
fn validate(state: &AppState, events: &[Event], mode: Mode) -> ApiResult<()> {
    let mut unknown: Vec<FieldError> = Vec::new();
    let mut available = Vec::new();
    let mut violations: Vec<FieldError> = Vec::new();
    for e in events {
        match state.registry().get(&e.event_type, &e.version) {
            None => {
                let versions = state.registry().versions(&e.event_type);
                let msg = if versions.is_empty() {
                    format!("there is no schema for type `{}`", e.event_type)
                } else {
                    format!(
                        "type `{}` has no version `{}`; it has {}",
                        e.event_type,
                        e.version,
                        versions.join(", ")
                    )
                };
                let field = match (mode, e.native && !versions.is_empty()) {
                    (Mode::Binary, _) => "header:ce-type".to_owned(),
                    // The type exists, so the native envelope's `version` is what is wrong.
                    (_, true) => format!("{}/version", e.pointer),
                    (_, false) => format!("{}/type", e.pointer),
                };
                unknown.push(FieldError::new(field, msg));
                available = versions;
            }
            Some(schema) => {
                let at = if mode == Mode::Binary {
                    String::new()
                } else {
                    format!("{}/data", e.pointer)
                };
                violations.extend(schema.violations(e.data(), &at));
            }
        }
    }
    if !unknown.is_empty() {
        let detail = summarize(&unknown, "unknown type or version");
        return Err(ApiError::UnknownSchema {
            detail,
            available,
            errors: unknown,
        });
    }
    if !violations.is_empty() {
        let detail = summarize(&violations, "schema violation");
        return Err(ApiError::SchemaViolation {
            detail,
            errors: violations,
        });
    }
    Ok(())
}

/// `Idempotency-Key` header and the hash of the request's content.
fn idempotency_key(headers: &HeaderMap, events: &[Event]) -> ApiResult<Option<(String, Vec<u8>)>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .map(|s| s.trim_matches('"'))
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_IDEMPOTENCY_KEY
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "header:idempotency-key",
                format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )
        })?;
    let mut h = Sha256::new();
    for e in events {
        h.update(e.content_hash);
    }
    Ok(Some((key.to_owned(), h.finalize().to_vec())))
}

/// `trace` is the request's `(traceparent, tracestate)`.
fn to_row(
    state: &AppState,
    e: &Event,
    trace: (Option<String>, Option<String>),
    api_key: Option<String>,
) -> NewRow {
    let body = serde_json::to_vec(&e.cloudevent).unwrap_or_default();
    // Attributes for the ce-* headers: everything but `data` (not cloned: it can be large).
    let attrs: std::collections::BTreeMap<&String, &Value> = e
        .cloudevent
        .iter()
        .filter(|(k, _)| k.as_str() != "data")
        .collect();
    let attributes = serde_json::to_string(&attrs).unwrap_or_default();
    NewRow {
        event_id: e.id.clone(),
        source: e.source.clone(),
        event_type: e.event_type.clone(),
        version: e.version.clone(),
        ce_type: e.ce_type().to_owned(),
        subject: e.subject.clone(),
        ordering_key: e.key.clone(),
        event_time: micros(e.time),
        routing_key: format!(
            "{}.{}.{}",
            state.config().routing_prefix,
            e.event_type,
            e.version
        ),
        body,
        attributes,
        content_hash: e.content_hash.to_vec(),
        traceparent: trace.0,
        tracestate: trace.1,
        api_key,
    }
}

/// Delivery state of one event.
///
/// Ids are unique per source; when several sources used the same id, add `?source=`.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    params(
        ("id" = String, Path, description = "Event id"),
        ("source" = Option<String>, Query, description = "Event source, needed only when several sources used the same id"),
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No API key, or not a valid one (only when API keys are configured).", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"postbox\"`")),
            example = json!({"type": "/problems/unauthorized", "title": "A valid API key is required", "status": 401, "detail": "this endpoint needs an API key: send `Authorization: Bearer <key>`"})),
        (status = 200, description = "The event and its delivery state (`pending`, `published`, `dead`).", body = EventRecord),
        (status = 404, description = "No event with this id.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "no event with id `x`"})),
        (status = 409, description = "Several sources used this id; add `?source=`.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/ambiguous-event-id", "title": "Several sources used this event id", "status": 409, "detail": "2 events have id `1` (sources: a, b); add ?source="})),
        (status = 503, description = "The outbox database is unavailable.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/outbox-unavailable", "title": "The outbox cannot accept events right now", "status": 503, "detail": "the outbox database is unavailable"})),
    )
)]
pub async fn get_event(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<EventRecord>> {
    let found = find_one(&state, &id, query.as_deref()).await?;
    if !caller.may_read(&found.event_type) {
        // The same answer as for a missing event: a key learns nothing about other types.
        return Err(ApiError::NotFound(format!("no event with id `{id}`")));
    }
    Ok(Json(found))
}

/// The one event with this id (and `source` from the query string, if given): 404 if none,
/// 409 if several sources used the id, 503 if the outbox does not answer.
pub async fn find_one(state: &AppState, id: &str, query: Option<&str>) -> ApiResult<EventRecord> {
    let source = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "source")
            .map(|(_, v)| v.into_owned())
    });
    let mut found = state
        .store()
        .find(id, source.as_deref())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading an event failed");
            ApiError::Unavailable {
                detail: "the outbox database is unavailable".to_owned(),
                retry_after: 2,
            }
        })?;
    match found.len() {
        0 => Err(ApiError::NotFound(format!("no event with id `{id}`"))),
        1 => Ok(found.remove(0)),
        n => Err(ApiError::Ambiguous(format!(
            "{n} events have id `{id}` (sources: {}); add ?source=",
            found
                .iter()
                .map(|r| r.source.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_adds_source_when_needed() {
        assert_eq!(location("a", "postbox"), "/v1/events/a");
        assert_eq!(
            location("a", "/shop/x y"),
            "/v1/events/a?source=%2Fshop%2Fx+y"
        );
    }
}
