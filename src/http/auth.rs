//! Authentication of `/v1/events…` requests by API key (`Authorization: Bearer`): the
//! middleware that resolves the key to a [`Caller`], the extractor handlers take it with, and the
//! admin-scope check of operator endpoints. What a caller may send (types, sources, rate) is
//! checked by ingest.

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::{ApiError, ApiResult};
pub use crate::auth::Caller;
use crate::auth::KeyRing;

/// Paths under this prefix need a key when keys are configured; the rest (health, metrics,
/// schemas, documentation) is public.
const PROTECTED: &str = "/v1/events";

/// Under this prefix a key that is sent is checked even where none is needed, so that handlers
/// outside [`PROTECTED`] that take a [`Caller`] (the schema registry's changes) see who calls;
/// a handler that takes one answers 401 when none was sent.
const API: &str = "/v1/";

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
    let path = req.uri().path();
    let checked = path.starts_with(PROTECTED)
        || (path.starts_with(API) && req.headers().contains_key(header::AUTHORIZATION));
    if !checked {
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

/// 403 unless the caller may use operator endpoints.
pub fn require_admin(caller: &Caller) -> ApiResult<()> {
    match caller {
        Caller::Key(k) if !k.admin => Err(ApiError::Forbidden {
            detail: format!(
                "API key `{}` has no admin scope, which this operator endpoint needs",
                k.name
            ),
            errors: Vec::new(),
        }),
        _ => Ok(()),
    }
}
