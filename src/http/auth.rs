//! Authentication of `/v1/events…` requests by API key (`Authorization: Bearer`), and the
//! checks handlers make with the result: event types and sources a key may send, the admin
//! scope of operator endpoints, and the key's rate limit.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    auth::{ApiKey, KeyRing},
    envelope::{Event, Mode},
    error::{ApiError, ApiResult, FieldError, summarize},
};

/// Who is calling, as established by [`authenticate`].
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off (no key configured): everything is allowed.
    Open,
    /// A configured key.
    Key(Arc<ApiKey>),
}

/// Paths under this prefix need a key when keys are configured; the rest (health, metrics,
/// schemas, documentation) is public.
const PROTECTED: &str = "/v1/events";

/// Middleware: resolve `Authorization: Bearer <key>` to a [`Caller`] for protected paths, or
/// answer 401.
pub async fn authenticate(
    State(keys): State<Arc<KeyRing>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !keys.is_enabled() {
        req.extensions_mut().insert(Caller::Open);
        return next.run(req).await;
    }
    if !req.uri().path().starts_with(PROTECTED) {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(header::AUTHORIZATION) else {
        return ApiError::Unauthorized {
            detail: "this endpoint needs an API key: send `Authorization: Bearer <key>`".to_owned(),
            invalid_key: false,
        }
        .into_response();
    };
    let token = raw.to_str().ok().and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let Some(token) = token else {
        return ApiError::Unauthorized {
            detail: "the Authorization header must be `Bearer <key>`".to_owned(),
            invalid_key: true,
        }
        .into_response();
    };
    match keys.authenticate(token) {
        Some(key) => {
            req.extensions_mut().insert(Caller::Key(key));
            next.run(req).await
        }
        None => ApiError::Unauthorized {
            detail: "this API key is not valid".to_owned(),
            invalid_key: true,
        }
        .into_response(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Absent only if the route is outside `PROTECTED` while keys are on: treat as no key.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized {
                detail: "this endpoint needs an API key: send `Authorization: Bearer <key>`"
                    .to_owned(),
                invalid_key: false,
            })
    }
}

impl Caller {
    /// The key's name, recorded with the events it sends.
    pub fn key_name(&self) -> Option<String> {
        match self {
            Caller::Open => None,
            Caller::Key(k) => Some(k.name.clone()),
        }
    }

    /// 403 unless the caller may use operator endpoints.
    pub fn require_admin(&self) -> ApiResult<()> {
        match self {
            Caller::Open => Ok(()),
            Caller::Key(k) if k.admin => Ok(()),
            Caller::Key(k) => Err(ApiError::Forbidden {
                detail: format!(
                    "API key `{}` has no admin scope, which this operator endpoint needs",
                    k.name
                ),
                errors: Vec::new(),
            }),
        }
    }

    /// Whether the caller may read an event of this type (admins read everything; a key reads
    /// the types it may send).
    pub fn may_read(&self, event_type: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(k) => k.admin || k.may_send_type(event_type),
        }
    }

    /// 403 naming every event of the request the key may not send (type or source), then 429
    /// if the key is over its rate (one token per event).
    pub fn authorize_send(&self, events: &[Event], mode: Mode) -> ApiResult<()> {
        let Caller::Key(key) = self else {
            return Ok(());
        };
        let mut denied = Vec::new();
        for e in events {
            if !key.may_send_type(&e.event_type) {
                let at = match mode {
                    Mode::Binary => "header:ce-type".to_owned(),
                    _ => format!("{}/type", e.pointer),
                };
                denied.push(FieldError::new(
                    at,
                    format!(
                        "API key `{}` may not send events of type `{}`",
                        key.name, e.event_type
                    ),
                ));
            }
            if !key.may_use_source(&e.source) {
                let at = match mode {
                    Mode::Binary => "header:ce-source".to_owned(),
                    _ => format!("{}/source", e.pointer),
                };
                denied.push(FieldError::new(
                    at,
                    format!(
                        "API key `{}` may not send events with source `{}`",
                        key.name, e.source
                    ),
                ));
            }
        }
        if !denied.is_empty() {
            return Err(ApiError::Forbidden {
                detail: summarize(&denied, "event this key may not send"),
                errors: denied,
            });
        }
        key.take(events.len(), Instant::now())
            .map_err(|wait| ApiError::RateLimited {
                detail: format!(
                    "API key `{}` is over its rate limit; nothing was stored",
                    key.name
                ),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
    }
}
