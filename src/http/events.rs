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
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    auth::Caller,
    error::{ApiError, ApiResult, Problem},
    responses::{EventNotFound, OutboxUnavailable, Unauthorized},
};
use crate::{
    envelope::{self, ParseContext},
    ingest::{DeprecatedUse, Receipt, Submission, TraceContext},
    outbox::{EventRecord, OutboxStore},
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_events))
        .routes(routes!(get_event))
}

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
    /// What it is about (1-256 bytes, no control characters).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub subject: Option<String>,
    /// Ordering key: events with the same key are published in the order they were accepted
    /// (1-256 bytes, no control characters).
    #[schema(
        example = "customer-42",
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
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
    #[schema(pattern = r"/v[0-9]{1,6}$", max_length = 2048)]
    pub dataschema: Option<String>,
    /// Subject (1-256 bytes, no control characters).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
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
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the whole request idempotent (1-255 visible ASCII characters).", pattern = r"^[!-~]{1,255}$"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context; stored, and the relay's publish becomes its child span: the AMQP `traceparent` header has the same trace id and flags with the publish span's id. Ignored when invalid."),
        ("tracestate" = Option<String>, Header, description = "W3C vendor trace state (with a valid `traceparent` only); stored and passed on as an AMQP header. Ignored when invalid or longer than 512 characters."),
    ),
    request_body(
        description = "An event in any of the accepted encodings. CloudEvents binary mode is a fourth: headers `ce-specversion: 1.0`, `ce-id`, `ce-source`, `ce-type` (and optional `ce-*` attributes), the event's `data` as the body (`Content-Type: application/json` or none). It is not listed as parameters because its headers only make sense together; an empty `ce-specversion` is ignored, and the media types `application/cloudevents+json` and `application/cloudevents-batch+json` decide structured mode whatever `ce-*` headers come with them.",
        content(
            (NativeEvent = "application/json", example = json!({"type": "order.paid", "version": "v1", "data": {"order_id": "o-1001", "amount": 25.5, "currency": "EUR"}})),
            (CloudEvent = "application/cloudevents+json", example = json!({"specversion": "1.0", "id": "9f0c2a6e-1d7c-4c51-8f05-5c4d2c7d7c11", "source": "/shop/checkout", "type": "order.paid.v1", "data": {"order_id": "o-1001", "amount": 25.5, "currency": "EUR"}})),
            (Vec<CloudEvent> = "application/cloudevents-batch+json", example = json!([{"specversion": "1.0", "id": "b-1", "source": "/shop/checkout", "type": "order.paid.v1", "data": {"order_id": "o-1", "amount": 1, "currency": "EUR"}}, {"specversion": "1.0", "id": "b-2", "source": "/shop/accounts", "type": "user.signed_up.v1", "data": {"user_id": "u-1", "email": "ada@example.com"}}]))
        )
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 403, description = "The API key may not send this event type or source; `errors` names each event.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/forbidden", "title": "This API key may not do that", "status": 403, "detail": "1 event this key may not send; first: /type: API key `checkout` may not send events of type `user.signed_up`", "errors": [{"pointer": "/type", "message": "API key `checkout` may not send events of type `user.signed_up`"}]})),
        (status = 429, description = "The API key is over its rate limit (`rate_per_sec`, one token per event); nothing was stored. Retry after `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait")),
            example = json!({"type": "/problems/rate-limited", "title": "Too many events for this API key", "status": 429, "detail": "API key `checkout` is over its rate limit; nothing was stored"})),
        (status = 202, description = "Stored in the outbox (or already stored with the same content: then `Idempotent-Replayed: true`). A batch answers `{\"events\": [...]}` in request order.", body = AcceptedResponse,
            headers(("Location" = String, description = "`/v1/events/{id}` of a single event"), ("Idempotent-Replayed" = String, description = "`true` when nothing new was stored"),
                ("Deprecation" = String, description = "RFC 9745, when some events use a deprecated schema version: `@` and the Unix time it was deprecated (the earliest)"),
                ("Link" = String, description = "With `Deprecation`: `</v1/schemas/{type}/{newest}>; rel=\"successor-version\"` per deprecated type, the newest version not deprecated")),
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
        Unauthorized,
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
    let (traceparent, tracestate) = crate::trace::from_headers(&headers);
    let submission = Submission {
        events,
        mode,
        // Not UTF-8 is not visible ASCII either: ingest refuses it like any other bad key.
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        trace: TraceContext {
            traceparent,
            tracestate,
        },
    };
    let receipt = state.ingest().accept(&caller, submission).await?;
    Ok(accepted(receipt, is_batch, &state.config().public_url))
}

fn accepted(receipt: Receipt, is_batch: bool, public_url: &str) -> Response {
    let Receipt {
        refs,
        replayed,
        deprecated,
    } = receipt;
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
    deprecation_headers(&mut resp, &deprecated, public_url);
    resp
}

/// RFC 9745: `Deprecation: @<seconds>` (the earliest deprecation among the events) and one
/// `Link: <…/v1/schemas/{type}/{newest}>; rel="successor-version"` per deprecated type.
fn deprecation_headers(resp: &mut Response, deprecated: &[DeprecatedUse], public_url: &str) {
    let Some(since) = deprecated.iter().map(|d| d.since).min() else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&format!("@{}", since.div_euclid(1_000_000))) {
        resp.headers_mut().insert("deprecation", v);
    }
    let links: Vec<String> = deprecated
        .iter()
        .filter_map(|d| {
            d.successor.as_ref().map(|s| {
                format!(
                    "<{public_url}/v1/schemas/{}/{s}>; rel=\"successor-version\"",
                    d.event_type
                )
            })
        })
        .collect();
    if !links.is_empty()
        && let Ok(v) = HeaderValue::from_str(&links.join(", "))
    {
        resp.headers_mut().insert(header::LINK, v);
    }
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
        (status = 200, description = "The event and its delivery state (`pending`, `published`, `dead`).", body = EventRecord),
        (status = 409, description = "Several sources used this id; add `?source=`.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/ambiguous-event-id", "title": "Several sources used this event id", "status": 409, "detail": "2 events have id `1` (sources: a, b); add ?source="})),
        Unauthorized, EventNotFound, OutboxUnavailable,
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
    let mut found = state.store().find(id, source.as_deref()).await?;
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
