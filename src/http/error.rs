//! The one HTTP API error type, its RFC 9457 `application/problem+json` rendering, and the one
//! mapping from each domain error (envelope [`ParseError`](crate::envelope::ParseError),
//! [`IngestError`], outbox query errors) to it.
//!
//! Every variant says what the client sees. 5xx bodies say nothing internal; the cause is
//! logged once where the error is turned into a response.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    ingest::IngestError,
    pointer::{FieldError, summarize},
};

/// An RFC 9457 problem details document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI reference naming the kind of problem (relative to this server).
    #[schema(example = "/problems/schema-violation")]
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    #[schema(example = "Event data does not match its schema")]
    pub title: String,
    /// HTTP status code.
    #[schema(example = 422)]
    pub status: u16,
    /// What happened in this case.
    #[schema(example = "1 error in data of order.paid v1")]
    pub detail: String,
    /// Every field-level error found (validation problems only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<FieldError>,
    /// Versions that exist for the type (unknown version only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub available_versions: Option<Vec<String>>,
}

/// Everything that can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or envelope.
    #[error("{detail}")]
    BadRequest {
        /// Summary.
        detail: String,
        /// Every error.
        errors: Vec<FieldError>,
    },
    /// Content type not accepted.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Body or batch too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No schema for this type/version.
    #[error("{detail}")]
    UnknownSchema {
        /// Summary.
        detail: String,
        /// Versions that do exist.
        available: Vec<String>,
        /// Where in the body (batch).
        errors: Vec<FieldError>,
    },
    /// Data failed its schema.
    #[error("{detail}")]
    SchemaViolation {
        /// Summary.
        detail: String,
        /// Every violation.
        errors: Vec<FieldError>,
    },
    /// Idempotency key (or `(source, id)`) reused with different content.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// The same key is being committed by another request right now.
    #[error("{0}")]
    Conflict(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// Several events share this id (ids are unique per source only).
    #[error("{0}")]
    Ambiguous(String),
    /// The outbox cannot take the event now; nothing was stored.
    #[error("{detail}")]
    Unavailable {
        /// Summary.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The client did not send the request body in time (408).
    #[error("{0}")]
    BodyTimeout(String),
    /// The request took longer than the request timeout (503); it may have been committed.
    #[error("{0}")]
    Timeout(String),
    /// Too many requests in flight (503); nothing was done.
    #[error("{0}")]
    Overloaded(String),
    /// No API key, or one that is not configured (401).
    #[error("{detail}")]
    Unauthorized {
        /// Summary.
        detail: String,
        /// A key was sent but is not valid (`error="invalid_token"` in `WWW-Authenticate`).
        invalid_key: bool,
    },
    /// The key may not do this (403).
    #[error("{detail}")]
    Forbidden {
        /// Summary.
        detail: String,
        /// Which events (batch pointers) it may not send.
        errors: Vec<FieldError>,
    },
    /// The key is over its rate limit (429); nothing was stored.
    #[error("{detail}")]
    RateLimited {
        /// Summary.
        detail: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// A different schema already has this version (409).
    #[error("{0}")]
    SchemaVersionExists(String),
    /// A new schema version must be numbered above the type's versions (409).
    #[error("{0}")]
    SchemaVersionOrder(String),
    /// The schema breaks its type's compatibility mode (422).
    #[error("{detail}")]
    IncompatibleSchema {
        /// Summary.
        detail: String,
        /// What breaks, with pointers into the new schema.
        errors: Vec<FieldError>,
    },
    /// The document is not a JSON Schema (422).
    #[error("{0}")]
    InvalidSchema(String),
    /// A bug or an unexpected failure; logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Shorthand.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A 400 with one error.
    pub fn bad_request(pointer: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::BadRequest {
            detail: message.clone(),
            errors: vec![FieldError::new(pointer, message)],
        }
    }

    /// Read a request body that must be a JSON object (`null` gives `None`). serde would also
    /// read a struct from an array of its fields in order (`[null, true]`), which no client
    /// means and the documents do not allow: anything but an object or `null` is a 400.
    pub fn json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request("", format!("malformed JSON: {e}")))?;
        match value {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Object(_) => serde_json::from_value(value)
                .map(Some)
                .map_err(|e| ApiError::bad_request("", e.to_string())),
            other => Err(ApiError::bad_request(
                "",
                format!("expected a JSON object, not {}", json_kind(&other)),
            )),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "The request is malformed",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported content type",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request too large",
            ),
            UnknownSchema { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-schema",
                "No schema for this event type and version",
            ),
            SchemaViolation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema-violation",
                "Event data does not match its schema",
            ),
            IdempotencyKeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused with different content",
            ),
            Conflict(_) => (
                StatusCode::CONFLICT,
                "request-in-progress",
                "A request with this key is in progress",
            ),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Ambiguous(_) => (
                StatusCode::CONFLICT,
                "ambiguous-event-id",
                "Several sources used this event id",
            ),
            Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox-unavailable",
                "The outbox cannot accept events right now",
            ),
            BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "The request body was not received in time",
            ),
            Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request-timeout",
                "The request took too long",
            ),
            Overloaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many requests in flight",
            ),
            Unauthorized { .. } => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A valid API key is required",
            ),
            Forbidden { .. } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "This API key may not do that",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many events for this API key",
            ),
            SchemaVersionExists(_) => (
                StatusCode::CONFLICT,
                "schema-version-exists",
                "This schema version exists with a different schema",
            ),
            SchemaVersionOrder(_) => (
                StatusCode::CONFLICT,
                "schema-version-order",
                "A new schema version must be numbered above the others",
            ),
            IncompatibleSchema { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "incompatible-schema",
                "The schema breaks its type's compatibility mode",
            ),
            InvalidSchema(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-schema",
                "Not a valid JSON Schema",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// Stable short name of the kind, used as the metrics `reason` label.
    pub fn reason(&self) -> &'static str {
        self.parts().1
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.parts();
        let (errors, available) = match self {
            ApiError::BadRequest { errors, .. }
            | ApiError::SchemaViolation { errors, .. }
            | ApiError::IncompatibleSchema { errors, .. }
            | ApiError::Forbidden { errors, .. } => (errors.clone(), None),
            ApiError::UnknownSchema {
                available, errors, ..
            } => (errors.clone(), Some(available.clone())),
            _ => (Vec::new(), None),
        };
        Problem {
            kind: format!("/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
            available_versions: available,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = ?e, "request failed");
        } else {
            let detail = self.to_string();
            let detail = log_safe(&detail);
            tracing::info!(status = self.status().as_u16(), reason = self.reason(), detail = %detail, "request rejected");
        }
        metrics::counter!("postbox_http_rejected_total", "reason" => self.reason()).increment(1);
        let retry_after = match &self {
            ApiError::Unavailable { retry_after, .. }
            | ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::Conflict(_) | ApiError::Timeout(_) | ApiError::Overloaded(_) => Some(1),
            _ => None,
        };
        let close = matches!(self, ApiError::BodyTimeout(_));
        let mut resp = problem_response(self.status(), &self.problem());
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::Unauthorized { invalid_key, .. } = &self {
            let challenge = if *invalid_key {
                "Bearer realm=\"postbox\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"postbox\""
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if close {
            // The rest of the body is still on the wire: the connection cannot be reused.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Details may quote what the client sent (an id from the path, a JSON key): escape control
/// characters so that no client can forge log lines (CR/LF) or terminal escapes.
fn log_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Ingest's refusals. Only here does a domain error become a status code.
impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let detail = e.to_string();
        // Retry-After counts whole seconds (RFC 9110 §10.2.3); never tell a client "0".
        let retry_after = e
            .retry_after()
            .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
        match e {
            IngestError::Forbidden { errors } => ApiError::Forbidden { detail, errors },
            IngestError::RateLimited { .. } => ApiError::RateLimited {
                detail,
                retry_after,
            },
            IngestError::UnknownSchema { errors, available } => ApiError::UnknownSchema {
                detail,
                available,
                errors,
            },
            IngestError::SchemaViolation { errors } => ApiError::SchemaViolation { detail, errors },
            IngestError::InvalidIdempotencyKey => {
                ApiError::bad_request("header:idempotency-key", detail)
            }
            IngestError::InProgress => ApiError::Conflict(detail),
            IngestError::KeyReused(_) => ApiError::IdempotencyKeyReused(detail),
            IngestError::BacklogFull { .. } | IngestError::Unavailable(_) => {
                ApiError::Unavailable {
                    detail,
                    retry_after,
                }
            }
        }
    }
}

/// A failed outbox query: 503 `outbox-unavailable`. The database's own words stay in the log
/// (they can name hosts, users and tables); the client learns only that it may retry.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "outbox query failed");
        ApiError::Unavailable {
            detail: "the outbox database is unavailable".to_owned(),
            retry_after: 2,
        }
    }
}

/// The schema registry's refusals.
impl From<crate::schema::catalog::CatalogError> for ApiError {
    fn from(e: crate::schema::catalog::CatalogError) -> Self {
        use crate::schema::catalog::CatalogError as C;
        let detail = e.to_string();
        match e {
            C::InvalidName(_) => ApiError::bad_request("/", detail),
            C::InvalidSchema(_) => ApiError::InvalidSchema(detail),
            C::VersionExists { .. } => ApiError::SchemaVersionExists(detail),
            C::VersionOrder { .. } => ApiError::SchemaVersionOrder(detail),
            C::Incompatible { errors, .. } => ApiError::IncompatibleSchema {
                detail,
                errors: errors
                    .into_iter()
                    .map(|i| FieldError::new(i.pointer, i.message))
                    .collect(),
            },
            C::NotFound(_) => ApiError::NotFound(detail),
            C::Store(e) => e.into(),
        }
    }
}

/// Render a problem document with the right content type.
pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body,
    )
        .into_response()
}

impl From<crate::envelope::ParseError> for ApiError {
    fn from(e: crate::envelope::ParseError) -> Self {
        use crate::envelope::ParseError as P;
        match e {
            P::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            P::TooManyEvents { got, max } => ApiError::PayloadTooLarge(format!(
                "the batch holds {got} events; the limit is {max} per request"
            )),
            P::Invalid(errors) => {
                let detail = summarize(&errors, "error");
                ApiError::BadRequest { detail, errors }
            }
        }
    }
}

/// "an array", "a string", … for messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_shape() {
        let e = ApiError::SchemaViolation {
            detail: "d".into(),
            errors: vec![FieldError::new("/3/data/x", "bad")],
        };
        let p = e.problem();
        assert_eq!(p.status, 422);
        assert_eq!(p.kind, "/problems/schema-violation");
        assert_eq!(p.errors[0].index(), Some(3));
        let v = serde_json::to_value(&p).unwrap();
        assert!(v.get("available_versions").is_none());
    }

    #[test]
    fn bodies_must_be_objects() {
        #[derive(serde::Deserialize, Debug, Default)]
        struct Req {
            #[allow(dead_code)]
            a: Option<String>,
            #[allow(dead_code)]
            b: Option<bool>,
        }
        assert!(ApiError::json_object::<Req>(b"{\"a\": \"x\"}").is_ok_and(|r| r.is_some()));
        assert!(ApiError::json_object::<Req>(b"null").is_ok_and(|r| r.is_none()));
        // serde alone reads this array as the struct's fields in order.
        assert!(serde_json::from_slice::<Req>(b"[null, null]").is_ok());
        let e = ApiError::json_object::<Req>(b"[null, null]").expect_err("an array");
        assert_eq!(e.problem().status, 400);
        assert!(
            e.problem().detail.contains("not an array"),
            "{:?}",
            e.problem()
        );
        assert!(ApiError::json_object::<Req>(b"{\"b\": 3}").is_err());
        assert!(ApiError::json_object::<Req>(b"{").is_err());
    }

    #[test]
    fn log_lines_cannot_be_forged() {
        assert_eq!(
            log_safe("no event with id `a\nb\u{1b}[2J`"),
            "no event with id `a\\nb\\u{1b}[2J`"
        );
        assert!(matches!(log_safe("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
