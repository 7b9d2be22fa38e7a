//! Operator endpoints: list and search events (by delivery state, type, source, key, id, commit
//! time) and send events again, one or a filtered set of the dead ones.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    auth::{self, Caller},
    error::{ApiError, ApiResult, Problem},
    responses::{AdminOnly, EventNotFound, OutboxUnavailable, Unauthorized},
};
use crate::outbox::{
    EventFilter, EventRecord, Order, OutboxStore, PageRequest, Redeliver, Status, micros,
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
/// Page size when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// Longest value of a text filter (`type`, `source`, `key`, `id`), the longest any event has.
const MAX_FILTER_LEN: usize = 256;

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Events, in the order asked for (`order`).
    pub events: Vec<EventRecord>,
    /// Pass as `cursor` (with the same filters and `order`) for the next page; absent on the
    /// last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "1042")]
    pub next_cursor: Option<String>,
}

/// What a redelivery did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    /// How many events were made pending again (0 on a dry run).
    #[schema(example = 1)]
    pub redelivered: u64,
    /// How many events the request selected: on a dry run, how many it would redeliver.
    #[schema(example = 1)]
    pub matched: u64,
}

/// Which dead events to send again. Every field narrows the set; with none (or no body at
/// all) every dead event is sent again.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Only dead events of this type.
    #[serde(rename = "type")]
    #[schema(example = "order.paid", min_length = 1, max_length = 256)]
    pub event_type: Option<String>,
    /// Only dead events of this source.
    #[schema(example = "/shop/checkout", min_length = 1, max_length = 256)]
    pub source: Option<String>,
    /// Only dead events with this ordering key.
    #[schema(example = "customer-42", min_length = 1, max_length = 256)]
    pub key: Option<String>,
    /// Only dead events committed at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<OffsetDateTime>,
    /// Only dead events committed before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<OffsetDateTime>,
    /// Count the events the filter selects and change nothing (`matched` says how many): what
    /// a confirmation asks about before the real request.
    #[serde(default)]
    pub dry_run: bool,
}

/// Delivery states `GET /v1/events` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Dead events (the default).
    Dead,
    /// Pending events.
    Pending,
    /// Published events.
    Published,
    /// Every event, whatever its state.
    Any,
}

/// The query of `GET /v1/events` (documentation; parsed by [`parse_list_query`], which names
/// the parameter in each 400).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query; parsing is in `parse_list_query`
pub struct ListQuery {
    /// Delivery state. Default `dead`.
    #[param(inline)]
    status: Option<StatusFilter>,
    /// Only events of this type (exact, without version).
    #[serde(rename = "type")]
    #[param(example = "order.paid", min_length = 1, max_length = 256)]
    event_type: Option<String>,
    /// Only events of this source (exact).
    #[param(example = "/shop/checkout", min_length = 1, max_length = 256)]
    source: Option<String>,
    /// Only events with this ordering key (exact).
    #[param(example = "customer-42", min_length = 1, max_length = 256)]
    key: Option<String>,
    /// Only events with this id (ids are unique per source: several sources may share one).
    #[param(example = "order-1001-paid", min_length = 1, max_length = 256)]
    id: Option<String>,
    /// Only events committed at or after this time (RFC 3339).
    #[param(format = DateTime, example = "2026-12-01T08:00:00Z")]
    since: Option<String>,
    /// Only events committed before this time (RFC 3339).
    #[param(format = DateTime, example = "2026-12-01T09:00:00Z")]
    until: Option<String>,
    /// `asc`: oldest first (the default); `desc`: newest first.
    #[param(pattern = "^(asc|desc)$", example = "desc")]
    order: Option<String>,
    /// Page size. Default 100.
    #[param(minimum = 1, maximum = 500, example = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (same filters, same `order`).
    #[param(pattern = "^[0-9]{1,18}$", example = "1042")]
    cursor: Option<String>,
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

/// A filter value: 1-256 characters. `at` locates it in errors (`query:type`, `/type`).
fn text_filter(at: &str, name: &str, v: String) -> ApiResult<Option<String>> {
    let n = v.chars().count();
    if n == 0 || n > MAX_FILTER_LEN {
        return Err(ApiError::bad_request(
            at,
            format!("{name} must be 1-{MAX_FILTER_LEN} characters"),
        ));
    }
    Ok(Some(v))
}

/// An RFC 3339 time as µs since the epoch.
fn time_filter(name: &str, v: &str) -> ApiResult<Option<i64>> {
    OffsetDateTime::parse(v, &Rfc3339)
        .map(|t| Some(micros(t)))
        .map_err(|_| {
            ApiError::bad_request(
                &format!("query:{name}"),
                format!("{name} must be an RFC 3339 time, e.g. 2026-12-01T08:00:00Z"),
            )
        })
}

/// The filter and page a `GET /v1/events` query asks for; 400 naming the first bad parameter.
/// Unknown parameters are ignored.
pub fn parse_list_query(query: Option<&str>) -> ApiResult<(EventFilter, PageRequest)> {
    let mut filter = EventFilter {
        status: Some(Status::Dead),
        ..EventFilter::default()
    };
    let mut page = PageRequest {
        after: None,
        order: Order::Oldest,
        limit: DEFAULT_LIMIT,
    };
    for (k, v) in query_params(query) {
        match k.as_str() {
            "status" => {
                filter.status = match v.as_str() {
                    "dead" => Some(Status::Dead),
                    "pending" => Some(Status::Pending),
                    "published" => Some(Status::Published),
                    "any" => None,
                    _ => {
                        return Err(ApiError::bad_request(
                            "query:status",
                            "status must be dead, pending, published or any",
                        ));
                    }
                }
            }
            "type" => filter.event_type = text_filter("query:type", "type", v)?,
            "source" => filter.source = text_filter("query:source", "source", v)?,
            "key" => filter.key = text_filter("query:key", "key", v)?,
            "id" => filter.id = text_filter("query:id", "id", v)?,
            "since" => filter.created_from = time_filter("since", &v)?,
            "until" => filter.created_before = time_filter("until", &v)?,
            "order" => {
                page.order = match v.as_str() {
                    "asc" => Order::Oldest,
                    "desc" => Order::Newest,
                    _ => {
                        return Err(ApiError::bad_request(
                            "query:order",
                            "order must be asc or desc",
                        ));
                    }
                }
            }
            "limit" => {
                page.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request("query:limit", format!("limit must be 1-{MAX_LIMIT}"))
                    })?;
            }
            "cursor" => {
                page.after = Some(v.parse().ok().filter(|c| *c >= 0).ok_or_else(|| {
                    ApiError::bad_request("query:cursor", "cursor must be a next_cursor value")
                })?);
            }
            _ => {}
        }
    }
    Ok((filter, page))
}

/// List and search events: by delivery state (dead ones by default), type, source, ordering
/// key, id and commit time, oldest or newest first, paged with `cursor`.
///
/// Every filter given must match (exact values). Key, source and id searches are indexed; a
/// type or a time range narrows a walk through commit order, which stops once a page is full
/// (quick for a type with recent events; on PostgreSQL bounded by the statement timeout).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "operations",
    params(ListQuery),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "A page of events.", body = EventPage),
        (status = 400, description = "A bad parameter; `errors[0].pointer` names it (`query:limit`).", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "status must be dead, pending, published or any", "errors": [{"pointer": "query:status", "message": "status must be dead, pending, published or any"}]})),
        Unauthorized, AdminOnly, OutboxUnavailable,
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<EventPage>> {
    auth::require_admin(&caller)?;
    let (filter, page) = parse_list_query(query.as_deref())?;
    let rows = state.store().list(&filter, page).await?;
    let next_cursor = (rows.len() == page.limit as usize)
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
        (status = 200, description = "The event is pending again.", body = Redelivered, example = json!({"redelivered": 1, "matched": 1})),
        (status = 409, description = "Several sources used this id (add `?source=`), or the event is still pending.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/ambiguous-event-id", "title": "Several sources used this event id", "status": 409, "detail": "2 events have id `1` (sources: a, b); add ?source="})),
        Unauthorized, AdminOnly, EventNotFound, OutboxUnavailable,
    )
)]
pub async fn redeliver_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Redelivered>> {
    auth::require_admin(&caller)?;
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
        .await?;
    if redelivered == 0 && event.body_pruned {
        return Err(ApiError::Conflict(format!(
            "event `{id}` was published longer ago than payload_retention_hours: its body is no \
             longer kept, so it cannot be sent again"
        )));
    }
    tracing::info!(event_id = %id, source = %event.source, "event redelivered by an operator");
    Ok(Json(Redelivered {
        redelivered,
        matched: 1,
    }))
}

/// Send dead events again: all of them, or those a filter selects (type, source, ordering key,
/// commit time). Bulk redrive after fixing what made them fail (e.g. binding the missing
/// queue); `dry_run` first tells how many that is.
#[utoipa::path(
    post,
    path = "/v1/events/redeliver",
    tag = "operations",
    request_body(
        description = "Optional: no body (or `{}`) sends every dead event again.",
        content(
            (Option<RedriveRequest> = "application/json", example = json!({"type": "order.paid", "dry_run": true}))
        )
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "How many dead events are pending again (or, with `dry_run`, would be).", body = Redelivered, example = json!({"redelivered": 42, "matched": 42})),
        (status = 400, description = "Malformed body.", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/invalid-request", "title": "The request is malformed", "status": 400, "detail": "malformed JSON: expected value at line 1 column 1", "errors": [{"pointer": "", "message": "malformed JSON: expected value at line 1 column 1"}]})),
        Unauthorized, AdminOnly, OutboxUnavailable,
    )
)]
pub async fn redeliver_all(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<Redelivered>> {
    auth::require_admin(&caller)?;
    // No body, or JSON `null`, selects every dead event (as the document says).
    let req: RedriveRequest = if body.is_empty() {
        RedriveRequest::default()
    } else {
        ApiError::json_object::<RedriveRequest>(&body)?.unwrap_or_default()
    };
    let text = |name: &str, v: Option<String>| match v {
        Some(v) => text_filter(&format!("/{name}"), name, v),
        None => Ok(None),
    };
    let filter = EventFilter {
        status: Some(Status::Dead),
        event_type: text("type", req.event_type)?,
        source: text("source", req.source)?,
        key: text("key", req.key)?,
        id: None,
        created_from: req.since.map(micros),
        created_before: req.until.map(micros),
    };
    if req.dry_run {
        let matched = state.store().count(&filter).await?;
        return Ok(Json(Redelivered {
            redelivered: 0,
            matched,
        }));
    }
    let redelivered = state.store().redeliver(Redeliver::Dead(&filter)).await?;
    tracing::info!(redelivered, filter = ?filter, "dead events redriven by an operator");
    Ok(Json(Redelivered {
        redelivered,
        matched: redelivered,
    }))
}
