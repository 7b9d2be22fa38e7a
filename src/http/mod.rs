//! HTTP API: shared state, the router (each module registers its own routes with utoipa), the
//! OpenAPI document, and the middleware every route shares.

pub mod admin;
pub mod auth;
pub mod console;
pub mod docs;
pub mod error;
pub mod events;
pub mod health;
pub mod limits;
pub mod responses;
pub mod schemas;
pub mod stats;
pub mod validate;

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Instant,
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::decompression::RequestDecompressionLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use self::error::ApiError;
use crate::{
    config::Config,
    ingest::{self, Ingest},
    outbox::{Store, writer::Writer},
    schema::{Catalog, Registry},
    sink::Health,
    stats::Series,
};

/// Cheap handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ingest: Ingest,
    config: Config,
    store: Store,
    catalog: Catalog,
    writer: Writer,
    broker: Health,
    metrics: PrometheusHandle,
    pending: Arc<AtomicI64>,
    stats: Series,
}

impl AppState {
    /// Bundle the handles.
    pub fn new(
        config: Config,
        store: Store,
        catalog: Catalog,
        writer: Writer,
        broker: Health,
        metrics: PrometheusHandle,
        pending: Arc<AtomicI64>,
    ) -> AppState {
        let ingest = Ingest::new(
            ingest::Settings {
                routing_prefix: config.routing_prefix.clone(),
                max_backlog: config.limits.max_backlog,
            },
            catalog.registry().clone(),
            writer.clone(),
            pending.clone(),
        );
        let stats = Series::new(config.stats_interval);
        AppState {
            inner: Arc::new(Inner {
                stats,
                ingest,
                config,
                store,
                catalog,
                writer,
                broker,
                metrics,
                pending,
            }),
        }
    }

    /// The use case every `POST /v1/events` calls.
    pub fn ingest(&self) -> &Ingest {
        &self.inner.ingest
    }

    /// Configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Outbox.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Schemas.
    pub fn registry(&self) -> &Registry {
        self.inner.catalog.registry()
    }

    /// The schema registry service (registrations, modes, deprecations).
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Group-commit writer.
    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    /// Broker status.
    pub fn broker(&self) -> &Health {
        &self.inner.broker
    }

    /// Metrics renderer.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    /// Pending events, as last counted.
    pub fn pending(&self) -> i64 {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// The sampled figures of `GET /v1/stats`.
    pub fn stats(&self) -> &Series {
        &self.inner.stats
    }
}

/// The OpenAPI document's top level; paths are added by each module's router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "postbox",
        description = include_str!("../../openapi/description.md"),
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "events", description = "Send events and follow their delivery"),
        (name = "schemas", description = "The JSON Schemas events are validated against"),
        (name = "operations", description = "Health, readiness, metrics and figures; listing, searching and redelivering events")
    ),
    components(schemas(error::Problem, crate::pointer::FieldError)),
    modifiers(&BearerKeys)
)]
pub struct ApiDoc;

/// The `api_key` security scheme: `Authorization: Bearer <key>`.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`postbox keygen`). Required on /v1/events… when keys are \
                         configured; without keys postbox serves on loopback only.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Routes and their OpenAPI description, before state is attached.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(events::routes())
        .merge(admin::routes())
        .merge(schemas::routes())
        .merge(validate::routes())
        .merge(health::routes())
        .merge(stats::routes())
        .split_for_parts()
}

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let (_, doc) = api();
    let mut s = doc.to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// The complete application.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api();
    let limits = &state.config().limits;
    let in_flight = limits::InFlightLimit::new(limits.max_in_flight);
    let timeout = limits.request_timeout;
    routes
        .merge(docs::routes(doc))
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.config().keys.clone(),
            auth::authenticate,
        ))
        .layer(
            RequestDecompressionLayer::new()
                .gzip(true)
                .no_deflate()
                .no_br()
                .no_zstd(),
        )
        .layer(middleware::from_fn_with_state(
            timeout,
            limits::request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            in_flight,
            limits::limit_in_flight,
        ))
        .layer(middleware::from_fn(record_http))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /docs for the API".to_owned())
}

async fn method_not_allowed() -> Response {
    // Logged and counted like every other rejection (`ApiError::into_response`).
    tracing::info!(
        status = 405,
        reason = "method-not-allowed",
        "request rejected"
    );
    metrics::counter!("postbox_http_rejected_total", "reason" => "method-not-allowed").increment(1);
    let p = error::Problem {
        kind: "/problems/method-not-allowed".to_owned(),
        title: "Method not allowed".to_owned(),
        status: 405,
        detail: "this endpoint does not take that method; see /docs".to_owned(),
        errors: Vec::new(),
        available_versions: None,
    };
    error::problem_response(StatusCode::METHOD_NOT_ALLOWED, &p)
}

/// Request count and latency per route and status.
async fn record_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("postbox_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("postbox_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Serve until `token` is cancelled, then finish in-flight requests (with the header read
/// timeout and the other limits of [`limits`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    token: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let limits = state.config().limits.clone();
    limits::serve(listener, router(state), &limits, token).await
}
