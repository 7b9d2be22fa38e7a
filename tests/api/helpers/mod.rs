//! The integration-test harness, split by what it drives:
//!
//! - [`app`]: postbox in-process ([`TestApp`]) or as the real binary ([`ProcApp`]), and the
//!   HTTP calls both answer ([`Http`]);
//! - [`broker`]: RabbitMQ exchanges (deleted on drop), queues, consuming, message properties,
//!   counting what arrived against what was accepted;
//! - [`database`]: fresh PostgreSQL databases (dropped on drop), SQLite inspection and locks;
//! - [`events`]: the one event builder ([`Event`]);
//! - [`load`]: the one load generator ([`Load`]) and its tally;
//! - [`nats`]: a test's own JetStream stream and subjects ([`NatsScope`]);
//! - [`proxy`]: the one TCP proxy ([`Proxy`]) for every fault: cut, reset, latency, bandwidth,
//!   stall.
//!
//! Everything a test creates outside its temp dir (databases, exchanges, durable queues) is
//! owned by a guard that removes it when the test ends, also when it fails.
// `tests/broker_alarm.rs` compiles this harness too and uses a part of it.
#![allow(dead_code)]

pub mod app;
pub mod broker;
pub mod database;
pub mod events;
pub mod load;
pub mod nats;
pub mod proxy;

#[allow(unused_imports)]
pub use {app::*, broker::*, database::*, events::*, load::*, nats::*, proxy::*};

use serde_json::Value;

/// The shared RabbitMQ of the test machine.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The shared PostgreSQL's admin database (trust authentication).
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `{prefix}-{a fresh UUIDv7}`: a name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A response header as a string.
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Assert the parts of a problem+json response (RFC 9457).
#[track_caller]
pub fn assert_problem_parts(
    status: u16,
    content_type: &str,
    body: &Value,
    want_status: u16,
    kind: &str,
) {
    assert_eq!(status, want_status, "status; body: {body}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type}; body: {body}"
    );
    assert_eq!(
        body["type"],
        format!("/problems/{kind}"),
        "problem type; body: {body}"
    );
    assert_eq!(body["status"], want_status, "problem status; body: {body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
}

/// Read a response and assert it is the problem `kind` with `status`; returns its body.
pub async fn assert_problem(resp: reqwest::Response, status: u16, kind: &str) -> Value {
    let code = resp.status().as_u16();
    let ct = header(&resp, "content-type").unwrap_or_default();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_problem_parts(code, &ct, &body, status, kind);
    body
}

/// Pointers of a problem's `errors`, in order.
pub fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["pointer"].as_str().unwrap_or("<none>").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of one series in Prometheus text: `series` is the metric name with its labels
/// exactly as rendered, e.g. `postbox_publish_failures_total{reason="nacked"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The `q` quantile (0.0..=1.0) of `samples` (nearest rank); zero when empty.
pub fn quantile(samples: &[std::time::Duration], q: f64) -> std::time::Duration {
    if samples.is_empty() {
        return std::time::Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds, for the printed figures.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `bytes` gzip-compressed (for `Content-Encoding: gzip` bodies).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}
