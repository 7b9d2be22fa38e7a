//! `GET /v1/stats`: the current figures and the last 15 minutes of throughput, failures, relay
//! lag and backlog, sampled in-process every few seconds (see [`crate::stats`]). What the
//! console's overview draws; public like `/metrics`, which shows the same counters.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, health::BrokerReadiness};
use crate::{
    outbox::{PARTITIONS, Store},
    stats::{Point, Totals, WINDOW},
};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_stats))
}

/// The figures of this postbox, now and over the last 15 minutes.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsReport {
    /// When the newest sample was taken; null until the first one (a few seconds after start).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub sampled_at: Option<OffsetDateTime>,
    /// Seconds between two samples (`stats_interval_ms`).
    #[schema(example = 5.0)]
    pub interval_seconds: f64,
    /// Seconds the series reaches back at most.
    #[schema(example = 900)]
    pub window_seconds: u64,
    /// The broker the relay publishes to, now.
    pub broker: BrokerReadiness,
    /// The outbox, as last sampled.
    pub outbox: OutboxFigures,
    /// Who publishes what.
    pub relay: RelayFigures,
    /// Counters since this process started.
    pub totals: Totals,
    /// The newest point of `series` (null until there is one).
    pub latest: Option<Point>,
    /// One point per interval, oldest first; the first comes one interval after start.
    pub series: Vec<Point>,
}

/// The outbox's backlog (shared by every instance on one database).
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxFigures {
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    pub backend: String,
    /// Events waiting to be published; null when the outbox did not answer the last sample.
    #[schema(example = 3)]
    pub pending: Option<i64>,
    /// Age of the oldest pending event (0 when none is pending).
    #[schema(example = 0.4)]
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead events.
    #[schema(example = 0)]
    pub dead: Option<i64>,
}

/// Partition ownership (see the scale-out section of the README).
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayFigures {
    /// Live postbox instances on this outbox (1 with SQLite, which has one instance).
    #[schema(example = 1)]
    pub instances: Option<u32>,
    /// Partitions this instance publishes.
    #[schema(example = 64)]
    pub partitions_owned: Option<u32>,
    /// Partitions the outbox is split into.
    #[schema(example = 64)]
    pub partitions: u32,
}

/// Current figures and a 15-minute series: events accepted, published and failed per second,
/// relay lag, and the backlog.
///
/// Sampled in-process every `stats_interval_ms` (5 s by default) into a ring buffer of fixed
/// size, so a request costs no database query. Rates and lag are this instance's (they come
/// from the counters `/metrics` shows); the backlog is the outbox's.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "operations",
    responses(
        (status = 200, description = "Figures now and over the last 15 minutes.", body = StatsReport,
            example = json!({
                "sampled_at": "2026-12-01T08:15:05Z", "interval_seconds": 5.0, "window_seconds": 900,
                "broker": {"name": "RabbitMQ", "state": "connected", "node": "127.0.0.1:5672", "error": null},
                "outbox": {"backend": "sqlite", "pending": 3, "oldest_pending_age_seconds": 0.4, "dead": 0},
                "relay": {"instances": 1, "partitions_owned": 64, "partitions": 64},
                "totals": {"accepted": 10234, "published": 10230, "publish_failures": 4},
                "latest": {"at": "2026-12-01T08:15:05Z", "accepted_per_second": 120.5, "published_per_second": 118.0, "failed_per_second": 0.0, "relay_lag_seconds": 0.012, "pending": 3, "oldest_pending_age_seconds": 0.4, "dead": 0},
                "series": [{"at": "2026-12-01T08:15:05Z", "accepted_per_second": 120.5, "published_per_second": 118.0, "failed_per_second": 0.0, "relay_lag_seconds": 0.012, "pending": 3, "oldest_pending_age_seconds": 0.4, "dead": 0}]
            })),
    )
)]
pub async fn get_stats(State(state): State<AppState>) -> Response {
    let snap = state.stats().snapshot();
    let latest = snap.series.last().cloned();
    let (broker_state, error) = state.broker().get();
    let is_sqlite = matches!(state.store(), Store::Sqlite(_));
    let report = StatsReport {
        sampled_at: snap.sampled_at,
        interval_seconds: state.stats().interval().as_secs_f64(),
        window_seconds: WINDOW.as_secs(),
        broker: BrokerReadiness {
            name: state.broker().name().to_owned(),
            state: broker_state,
            node: state.broker().node(),
            error,
        },
        outbox: OutboxFigures {
            backend: state.store().backend().to_owned(),
            pending: latest.as_ref().and_then(|p| p.pending),
            oldest_pending_age_seconds: latest.as_ref().and_then(|p| p.oldest_pending_age_seconds),
            dead: latest.as_ref().and_then(|p| p.dead),
        },
        relay: RelayFigures {
            instances: snap.instances.or(is_sqlite.then_some(1)),
            partitions_owned: snap.partitions_owned,
            partitions: PARTITIONS.unsigned_abs(),
        },
        totals: snap.totals,
        latest,
        series: snap.series,
    };
    // Figures change every few seconds: no cache may keep them.
    ([(header::CACHE_CONTROL, "no-store")], Json(report)).into_response()
}
