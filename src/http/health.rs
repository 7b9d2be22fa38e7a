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
use crate::{outbox::OutboxStore, sink::SinkState};

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
    /// The broker's state; does not affect readiness (the outbox buffers while it is away).
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
    /// Whether commits succeed: false from a failed commit (a full disk, an I/O error, a lost
    /// connection) until a commit or the writer's own probe write succeeds again.
    pub writable: bool,
    /// Why the outbox cannot take events, when it cannot.
    pub error: Option<String>,
    /// Events waiting to be published (as last counted).
    pub pending: i64,
}

/// Broker part of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokerReadiness {
    /// Which broker the relay publishes to: `RabbitMQ` or `NATS JetStream`.
    #[schema(example = "RabbitMQ")]
    pub name: String,
    /// Connection state.
    pub state: SinkState,
    /// The node the relay publishes through (`host:port` of one `amqp_url` entry), while
    /// connected; with a cluster in `amqp_url`, it changes when postbox fails over.
    #[schema(example = "127.0.0.1:5672")]
    pub node: Option<String>,
    /// Why it is not connected, if it is not.
    pub error: Option<String>,
}

/// Ready to accept events: the outbox answers, its commits succeed, and schemas are loaded.
/// RabbitMQ being away does not make postbox unready: events are stored and delivered when it
/// is back.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Readiness, example = json!({"status": "ready", "outbox": {"backend": "sqlite", "reachable": true, "writable": true, "error": null, "pending": 0}, "schemas": 3, "broker": {"name": "RabbitMQ", "state": "unreachable", "node": null, "error": "IO error: Connection refused (os error 111)"}})),
        (status = 503, description = "Not ready: the outbox database does not answer, its commits fail (`outbox.error` says why, e.g. a full disk), or no schema is loaded.", body = Readiness, example = json!({"status": "not_ready", "outbox": {"backend": "sqlite", "reachable": true, "writable": false, "error": "commits have been failing for 12 s: error returned from database: (code: 13) database or disk is full", "pending": 120}, "schemas": 3, "broker": {"name": "RabbitMQ", "state": "connected", "node": "127.0.0.1:5672", "error": null}})),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await;
    let reachable = matches!(ping, Ok(Ok(())));
    let failing = state.writer().health().failing();
    let writable = failing.is_none();
    let outbox_error = match (ping, failing) {
        (Err(_), _) => Some("the outbox database did not answer within 2 s".to_owned()),
        (Ok(Err(e)), _) => Some(format!("the outbox database is unreachable: {e}")),
        (Ok(Ok(())), Some((e, since))) => Some(format!(
            "commits have been failing for {} s: {e}",
            since.as_secs()
        )),
        (Ok(Ok(())), None) => None,
    };
    let schemas = state.registry().len();
    let (broker_state, error) = state.broker().get();
    let ready = reachable && writable && schemas > 0;
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.to_owned(),
        outbox: OutboxReadiness {
            backend: state.store().backend().to_owned(),
            reachable,
            writable,
            error: outbox_error,
            pending: state.pending(),
        },
        schemas,
        broker: BrokerReadiness {
            name: state.broker().name().to_owned(),
            state: broker_state,
            node: state.broker().node(),
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
