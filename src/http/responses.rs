//! Problem responses that several operations share, declared once for the OpenAPI document
//! (`responses(..., Unauthorized, OutboxUnavailable)` in `#[utoipa::path]`). Each keeps its
//! description, headers and example, so every error in the document stays an
//! `application/problem+json` answer with an example.
//!
//! These types only describe answers; the answers themselves are made by
//! [`ApiError`](super::error::ApiError).

use utoipa::IntoResponses;

use super::error::Problem;

/// 401: no API key, or not a valid one.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "No API key, or not a valid one (only when API keys are configured).",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"postbox\"`")),
    example = json!({"type": "/problems/unauthorized", "title": "A valid API key is required", "status": 401, "detail": "this endpoint needs an API key: send `Authorization: Bearer <key>`"})
)]
pub struct Unauthorized(pub Problem);

/// 403 of the operator endpoints: the key has no admin scope.
#[derive(IntoResponses)]
#[response(
    status = 403,
    description = "The API key has no admin scope.",
    content_type = "application/problem+json",
    example = json!({"type": "/problems/forbidden", "title": "This API key may not do that", "status": 403, "detail": "API key `checkout` has no admin scope, which this operator endpoint needs"})
)]
pub struct AdminOnly(pub Problem);

/// 404: no event with this id.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No event with this id.",
    content_type = "application/problem+json",
    example = json!({"type": "/problems/not-found", "title": "Not found", "status": 404, "detail": "no event with id `x`"})
)]
pub struct EventNotFound(pub Problem);

/// 503 of the reading and operator endpoints: an outbox query failed.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "The outbox database is unavailable.",
    content_type = "application/problem+json",
    example = json!({"type": "/problems/outbox-unavailable", "title": "The outbox cannot accept events right now", "status": 503, "detail": "the outbox database is unavailable"})
)]
pub struct OutboxUnavailable(pub Problem);
