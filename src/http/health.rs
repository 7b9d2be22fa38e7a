//! `/healthz` (alive), `/readyz` (outbox reachable, schemas loaded, broker state) and `/metrics`.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use crate::{outbox::OutboxStore, relay::BrokerState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = Health, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    pub status: String,
    /// Outbox state.
    pub outbox: OutboxReadiness,
    /// Number of schemas loaded.
    #[schema(example = 3)]
    pub schemas: usize,
    /// RabbitMQ state; does not affect readiness (the outbox buffers while it is away).
    pub broker: BrokerReadiness,
}

/// Outbox part of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxReadiness {
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    pub backend: String,
    /// Whether the database answered.
    pub reachable: bool,
    /// Events waiting to be published (as last counted).
    pub pending: i64,
}

/// Broker part of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokerReadiness {
    /// Connection state.
    pub state: BrokerState,
    /// Why it is not connected, if it is not.
    pub error: Option<String>,
}

/// Ready to accept events: the outbox answers and schemas are loaded. RabbitMQ being away does
/// not make postbox unready: events are stored and delivered when it is back.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Readiness, example = json!({"status": "ready", "outbox": {"backend": "sqlite", "reachable": true, "pending": 0}, "schemas": 3, "broker": {"state": "unreachable", "error": "IO error: Connection refused (os error 111)"}})),
        (status = 503, description = "Not ready: the outbox database does not answer or no schema is loaded.", body = Readiness, example = json!({"status": "not_ready", "outbox": {"backend": "postgres", "reachable": false, "pending": 120}, "schemas": 3, "broker": {"state": "connected", "error": null}})),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await,
        Ok(Ok(()))
    );
    let schemas = state.registry().len();
    let (broker_state, error) = state.broker().get();
    let ready = reachable && schemas > 0;
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.to_owned(),
        outbox: OutboxReadiness {
            backend: state.store().backend().to_owned(),
            reachable,
            pending: state.pending(),
        },
        schemas,
        broker: BrokerReadiness {
            state: broker_state,
            error,
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format; the README lists every metric.", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}
