//! Logging (pretty in a terminal, JSON on request) and the Prometheus metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Install the tracing subscriber. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=error,tower_http=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The process-wide metrics recorder (installed on first use; the `metrics` macros need a
/// global one) and the handle that renders it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ];
            let counts = &[
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), counts));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "postbox_events_accepted_total",
        "Events committed to the outbox, by type"
    );
    describe_counter!(
        "postbox_http_rejected_total",
        "Requests rejected, by reason"
    );
    describe_counter!(
        "postbox_http_requests_total",
        "HTTP requests, by method, route and status"
    );
    describe_histogram!("postbox_http_request_seconds", "HTTP request latency");
    describe_histogram!("postbox_commit_seconds", "Outbox group-commit latency");
    describe_histogram!("postbox_commit_events", "Events per group commit");
    describe_histogram!(
        "postbox_sqlite_lane_seconds",
        "SQLite: time the outbox's writing thread spent per operation, by op"
    );
    describe_counter!(
        "postbox_commit_failures_total",
        "Group commits that failed (answered 503)"
    );
    describe_counter!("postbox_published_total", "Events confirmed by RabbitMQ");
    describe_counter!(
        "postbox_publish_failures_total",
        "Failed publish attempts, by reason (returned, nacked, timeout, connection, invalid)"
    );
    describe_counter!("postbox_dead_total", "Events that became dead");
    describe_histogram!(
        "postbox_confirm_wait_seconds",
        "Time from sending a batch to having all its confirms"
    );
    describe_histogram!(
        "postbox_relay_lag_seconds",
        "Commit to confirm lag per event"
    );
    describe_gauge!("postbox_outbox_pending", "Events waiting to be published");
    describe_gauge!(
        "postbox_outbox_oldest_pending_age_seconds",
        "Age of the oldest pending event"
    );
    describe_gauge!("postbox_outbox_dead", "Dead events in the outbox");
    describe_gauge!(
        "postbox_broker_connected",
        "1 when the relay is connected to RabbitMQ"
    );
    describe_counter!(
        "postbox_broker_reconnects_total",
        "Times the relay lost its RabbitMQ connection"
    );
    describe_counter!(
        "postbox_broker_blocked_milliseconds_total",
        "Time publishing was blocked by RabbitMQ (connection.blocked)"
    );
    describe_gauge!(
        "postbox_partitions_owned",
        "Outbox partitions this instance publishes (all 64 with SQLite)"
    );
    describe_gauge!(
        "postbox_instances",
        "Live postbox instances on this PostgreSQL outbox"
    );
    describe_counter!(
        "postbox_partitions_acquired_total",
        "Partitions this instance took (at start, for balance, or from a dead instance)"
    );
    describe_counter!(
        "postbox_partitions_released_total",
        "Partitions this instance handed over to others for balance"
    );
    describe_counter!(
        "postbox_partition_takeover_rows_total",
        "Leased rows of a previous partition owner made claimable at once on takeover"
    );
    describe_counter!(
        "postbox_partition_ownership_lost_total",
        "Times the partition-ownership connection to PostgreSQL was lost"
    );
    describe_counter!(
        "postbox_trace_spans_exported_total",
        "Publish spans accepted by the OTLP collector"
    );
    describe_counter!(
        "postbox_trace_spans_dropped_total",
        "Publish spans not exported, by reason (queue_full, export_failed)"
    );
    describe_counter!(
        "postbox_pruned_total",
        "Published rows and idempotency keys pruned after the retention window"
    );
}
