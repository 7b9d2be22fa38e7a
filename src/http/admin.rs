//! Operator endpoints: list events by delivery state (e.g. the dead ones) and send events again.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, auth::Caller};
use crate::{
    error::{ApiError, ApiResult, Problem},
    outbox::{EventRecord, OutboxStore, Redeliver, Status},
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(redeliver_one))
        .routes(routes!(redeliver_all))
}

/// Largest page.
const MAX_LIMIT: u32 = 500;

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Events, oldest first.
    pub events: Vec<EventRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "1042")]
    pub next_cursor: Option<String>,
}

/// How many events were made pending again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    /// Count.
    #[schema(example = 1)]
    pub redelivered: u64,
}

/// Which dead events to send again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Only dead events of this type (all dead events when absent).
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: Option<String>,
}

fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn unavailable(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "outbox query failed");
    ApiError::Unavailable {
        detail: "the outbox database is unavailable".to_owned(),
        retry_after: 2,
    }
}

/// Events in one delivery state, oldest first, paged with `cursor`.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "operations",
    params(
        ("status" = Option<String>, Query, description = "`dead` (default), `pending` or `published`"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-500 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No API key, or not a valid one (only when API keys are configured).", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"postbox\"`")),
            example = json!({"type": "/problems/unauthorized", "title": "A valid API key is required", "status": 401, "detail": "this endpoint needs an API key: send `Authorization: Bearer <key>`"})),
        (status = 403, description = "The API key has no admin scope.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/forbidden", "title": "This API key may not do that", "status": 403, "detail": "API key `checkout` has no admin scope, which this operator endpoint needs"})),
        (status = 200, description = "A page of events.", body = EventPage),
        (status = 400, description = "Bad `status`, `limit` or `cursor`.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "status must be dead, pending or published", "errors": [{"pointer": "query:status", "message": "status must be dead, pending or published"}]})),
        (status = 503, description = "The outbox database is unavailable.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/outbox-unavailable", "title": "The outbox cannot accept events right now", "status": 503, "detail": "the outbox database is unavailable"})),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<EventPage>> {
    caller.require_admin()?;
    let mut status = Status::Dead;
    let mut limit = 100u32;
    let mut after = 0i64;
    for (k, v) in query_params(query.as_deref()) {
        match k.as_str() {
            "status" => {
                status = match v.as_str() {
                    "dead" => Status::Dead,
                    "pending" => Status::Pending,
                    "published" => Status::Published,
                    _ => {
                        return Err(ApiError::bad_request(
                            "query:status",
                            "status must be dead, pending or published",
                        ));
                    }
                }
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request("query:limit", format!("limit must be 1-{MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                after = v.parse().ok().filter(|c| *c >= 0).ok_or_else(|| {
                    ApiError::bad_request("query:cursor", "cursor must be a next_cursor value")
                })?;
            }
            _ => {}
        }
    }
    let rows = state
        .store()
        .list(status, after, limit)
        .await
        .map_err(unavailable)?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|(seq, _)| seq.to_string()))
        .flatten();
    Ok(Json(EventPage {
        events: rows.into_iter().map(|(_, r)| r).collect(),
        next_cursor,
    }))
}

/// Send one event again (a dead one, or a published one to replay it): it becomes `pending`
/// with no attempts and is published as soon as the relay gets to it.
#[utoipa::path(
    post,
    path = "/v1/events/{id}/redeliver",
    tag = "operations",
    params(
        ("id" = String, Path, description = "Event id"),
        ("source" = Option<String>, Query, description = "Event source, needed only when several sources used the same id"),
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No API key, or not a valid one (only when API keys are configured).", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"postbox\"`")),
            example = json!({"type": "/problems/unauthorized", "title": "A valid API key is required", "status": 401, "detail": "this endpoint needs an API key: send `Authorization: Bearer <key>`"})),
        (status = 403, description = "The API key has no admin scope.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/forbidden", "title": "This API key may not do that", "status": 403, "detail": "API key `checkout` has no admin scope, which this operator endpoint needs"})),
        (status = 200, description = "The event is pending again.", body = Redelivered, example = json!({"redelivered": 1})),
        (status = 404, description = "No event with this id.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "no event with id `x`"})),
        (status = 409, description = "Several sources used this id (add `?source=`), or the event is still pending.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/ambiguous-event-id", "title": "Several sources used this event id", "status": 409, "detail": "2 events have id `1` (sources: a, b); add ?source="})),
        (status = 503, description = "The outbox database is unavailable.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/outbox-unavailable", "title": "The outbox cannot accept events right now", "status": 503, "detail": "the outbox database is unavailable"})),
    )
)]
pub async fn redeliver_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Redelivered>> {
    caller.require_admin()?;
    let event = super::events::find_one(&state, &id, query.as_deref()).await?;
    if event.status == Status::Pending {
        return Err(ApiError::Conflict(format!(
            "event `{id}` is still pending; the relay is already delivering it"
        )));
    }
    let redelivered = state
        .store()
        .redeliver(Redeliver::One {
            id: &event.id,
            source: &event.source,
        })
        .await
        .map_err(unavailable)?;
    tracing::info!(event_id = %id, source = %event.source, "event redelivered by an operator");
    Ok(Json(Redelivered { redelivered }))
}

/// Send every dead event again (optionally only one type): bulk redrive after fixing what made
/// them fail (e.g. binding the missing queue).
#[utoipa::path(
    post,
    path = "/v1/events/redeliver",
    tag = "operations",
    request_body(content = RedriveRequest, content_type = "application/json", example = json!({"type": "order.paid"})),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No API key, or not a valid one (only when API keys are configured).", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"postbox\"`")),
            example = json!({"type": "/problems/unauthorized", "title": "A valid API key is required", "status": 401, "detail": "this endpoint needs an API key: send `Authorization: Bearer <key>`"})),
        (status = 403, description = "The API key has no admin scope.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/forbidden", "title": "This API key may not do that", "status": 403, "detail": "API key `checkout` has no admin scope, which this operator endpoint needs"})),
        (status = 200, description = "How many dead events are pending again.", body = Redelivered, example = json!({"redelivered": 42})),
        (status = 400, description = "Malformed body.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "malformed JSON: expected value at line 1 column 1", "errors": [{"pointer": "", "message": "malformed JSON: expected value at line 1 column 1"}]})),
        (status = 503, description = "The outbox database is unavailable.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/outbox-unavailable", "title": "The outbox cannot accept events right now", "status": 503, "detail": "the outbox database is unavailable"})),
    )
)]
pub async fn redeliver_all(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<Redelivered>> {
    caller.require_admin()?;
    let req: RedriveRequest = if body.is_empty() {
        RedriveRequest { event_type: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("", format!("malformed JSON: {e}")))?
    };
    let redelivered = state
        .store()
        .redeliver(Redeliver::AllDead {
            event_type: req.event_type.as_deref(),
        })
        .await
        .map_err(unavailable)?;
    tracing::info!(redelivered, event_type = ?req.event_type, "dead events redriven by an operator");
    Ok(Json(Redelivered { redelivered }))
}
