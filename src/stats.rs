//! The figures behind `GET /v1/stats` and the console's overview: a small in-process sampler
//! reads postbox's own counters (the ones `/metrics` shows) and the outbox's backlog every few
//! seconds and keeps the last 15 minutes of them in a ring buffer of fixed size.
//!
//! The counters come from the process's Prometheus recorder, read back from its text rendering
//! (the recorder offers no other read access), so the rates are this process's. The backlog
//! (pending, oldest pending, dead) is the outbox's, shared by every instance on one PostgreSQL.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::outbox::{OutboxStore, Store, now_micros};

/// How far back the series reaches.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Shortest sampling interval accepted (`stats_interval_ms`).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest sampling interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// How long one backlog query may take before the sample goes without it.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(2);

/// One sample: rates over the interval that ended at `at`, and the backlog at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Point {
    /// When the sample was taken.
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Events committed to the outbox per second (`postbox_events_accepted_total`).
    #[schema(example = 120.5)]
    pub accepted_per_second: f64,
    /// Events confirmed by the broker per second (`postbox_published_total`).
    #[schema(example = 118.0)]
    pub published_per_second: f64,
    /// Failed publish attempts per second, whatever the reason
    /// (`postbox_publish_failures_total`).
    #[schema(example = 0.0)]
    pub failed_per_second: f64,
    /// Mean time from commit to the broker's confirm of the events confirmed in the interval
    /// (`postbox_relay_lag_seconds`); null when none was confirmed.
    #[schema(example = 0.012)]
    pub relay_lag_seconds: Option<f64>,
    /// Events waiting to be published; null when the outbox did not answer.
    #[schema(example = 3)]
    pub pending: Option<i64>,
    /// Age of the oldest pending event (0 when none is pending); null when the outbox did not
    /// answer.
    #[schema(example = 0.4)]
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead events; null when the outbox did not answer.
    #[schema(example = 0)]
    pub dead: Option<i64>,
}

/// Counters since this process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Totals {
    /// Events committed to the outbox.
    #[schema(example = 10234)]
    pub accepted: u64,
    /// Events confirmed by the broker.
    #[schema(example = 10230)]
    pub published: u64,
    /// Failed publish attempts.
    #[schema(example = 4)]
    pub publish_failures: u64,
}

/// What the sampler last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// When the newest sample was taken (none yet: `None`).
    pub sampled_at: Option<OffsetDateTime>,
    /// Counters since start.
    pub totals: Totals,
    /// Live instances on the outbox (`postbox_instances`; PostgreSQL only).
    pub instances: Option<u32>,
    /// Partitions this instance publishes (`postbox_partitions_owned`).
    pub partitions_owned: Option<u32>,
    /// Oldest first, at most the window's worth.
    pub series: Vec<Point>,
}

/// The ring buffer of samples, shared by the sampler (writes) and the HTTP handler (reads).
/// Cheap to clone.
#[derive(Clone)]
pub struct Series {
    interval: Duration,
    inner: Arc<Mutex<Ring>>,
}

struct Ring {
    points: VecDeque<Point>,
    capacity: usize,
    last: Option<Reading>,
    snapshot_meta: (Totals, Option<u32>, Option<u32>),
}

impl Series {
    /// An empty series sampled every `interval` (clamped to 1-60 s), holding [`WINDOW`].
    pub fn new(interval: Duration) -> Series {
        let interval = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        let capacity = usize::try_from(WINDOW.as_millis().div_ceil(interval.as_millis()))
            .unwrap_or(900)
            .max(1);
        Series {
            interval,
            inner: Arc::new(Mutex::new(Ring {
                points: VecDeque::with_capacity(capacity),
                capacity,
                last: None,
                snapshot_meta: (Totals::default(), None, None),
            })),
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Everything sampled so far.
    pub fn snapshot(&self) -> Snapshot {
        let Ok(ring) = self.inner.lock() else {
            return Snapshot::default();
        };
        let (totals, instances, partitions_owned) = ring.snapshot_meta;
        Snapshot {
            sampled_at: ring.last.as_ref().map(|r| r.at),
            totals,
            instances,
            partitions_owned,
            series: ring.points.iter().cloned().collect(),
        }
    }

    /// Record a reading taken now: the first only sets the baseline; each later one adds a point
    /// with the rates since the previous one. The oldest point goes when the window is full.
    fn record(&self, reading: Reading, backlog: Option<Backlog>) {
        let Ok(mut ring) = self.inner.lock() else {
            return;
        };
        ring.snapshot_meta = (
            Totals {
                accepted: as_count(reading.accepted),
                published: as_count(reading.published),
                publish_failures: as_count(reading.failed),
            },
            reading.instances.map(as_u32),
            reading.partitions_owned.map(as_u32),
        );
        if let Some(prev) = ring.last.take() {
            let point = reading.point_since(&prev, backlog);
            if ring.points.len() == ring.capacity {
                ring.points.pop_front();
            }
            ring.points.push_back(point);
        }
        ring.last = Some(reading);
    }
}

/// The outbox's backlog at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Backlog {
    pending: i64,
    oldest_age_seconds: f64,
    dead: i64,
}

/// Counter values read at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    at: OffsetDateTime,
    instant: Instant,
    accepted: f64,
    published: f64,
    failed: f64,
    lag_sum: f64,
    lag_count: f64,
    instances: Option<f64>,
    partitions_owned: Option<f64>,
}

impl Reading {
    /// Read the counters out of the Prometheus text exposition format: every series of a name
    /// (whatever its labels) is summed.
    fn parse(text: &str, at: OffsetDateTime, instant: Instant) -> Reading {
        let mut r = Reading {
            at,
            instant,
            accepted: 0.0,
            published: 0.0,
            failed: 0.0,
            lag_sum: 0.0,
            lag_count: 0.0,
            instances: None,
            partitions_owned: None,
        };
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let Some(value) = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
            else {
                continue;
            };
            match &line[..name_end] {
                "postbox_events_accepted_total" => r.accepted += value,
                "postbox_published_total" => r.published += value,
                "postbox_publish_failures_total" => r.failed += value,
                "postbox_relay_lag_seconds_sum" => r.lag_sum += value,
                "postbox_relay_lag_seconds_count" => r.lag_count += value,
                "postbox_instances" => r.instances = Some(value),
                "postbox_partitions_owned" => r.partitions_owned = Some(value),
                _ => {}
            }
        }
        r
    }

    /// The point for the interval from `prev` to this reading.
    fn point_since(&self, prev: &Reading, backlog: Option<Backlog>) -> Point {
        let secs = self
            .instant
            .saturating_duration_since(prev.instant)
            .as_secs_f64()
            .max(1e-3);
        // A counter never goes down; if one did (a recorder reset), count nothing rather than
        // a negative rate.
        let rate = |now: f64, before: f64| round((now - before).max(0.0) / secs, 3);
        let confirmed = self.lag_count - prev.lag_count;
        Point {
            at: self.at,
            accepted_per_second: rate(self.accepted, prev.accepted),
            published_per_second: rate(self.published, prev.published),
            failed_per_second: rate(self.failed, prev.failed),
            relay_lag_seconds: (confirmed > 0.0)
                .then(|| round(((self.lag_sum - prev.lag_sum) / confirmed).max(0.0), 4)),
            pending: backlog.map(|b| b.pending),
            oldest_pending_age_seconds: backlog.map(|b| round(b.oldest_age_seconds, 3)),
            dead: backlog.map(|b| b.dead),
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn as_count(v: f64) -> u64 {
    // Counters are whole, non-negative numbers far below 2^53.
    v.max(0.0).round() as u64
}

fn as_u32(v: f64) -> u32 {
    v.clamp(0.0, f64::from(u32::MAX)).round() as u32
}

/// Sample into `series` every interval until `token` is cancelled.
pub async fn run(
    series: Series,
    store: Store,
    metrics: PrometheusHandle,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(series.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => sample(&series, &store, &metrics).await,
        }
    }
}

/// Take one sample.
async fn sample(series: &Series, store: &Store, metrics: &PrometheusHandle) {
    let backlog = match tokio::time::timeout(BACKLOG_TIMEOUT, store.stats()).await {
        Ok(Ok(s)) => Some(Backlog {
            pending: s.pending,
            oldest_age_seconds: s
                .oldest_pending
                .map(|t| (now_micros() - t).max(0) as f64 / 1e6)
                .unwrap_or(0.0),
            dead: s.dead,
        }),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "stats: backlog unavailable");
            None
        }
        Err(_) => {
            tracing::debug!("stats: the backlog query took too long");
            None
        }
    };
    // Read the counters after the backlog query, so the interval they cover ends now.
    let reading = Reading::parse(&metrics.render(), OffsetDateTime::now_utc(), Instant::now());
    series.record(reading, backlog);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE postbox_events_accepted_total counter
postbox_events_accepted_total{type=\"order.paid\"} 10
postbox_events_accepted_total{type=\"user.signed_up\"} 5
postbox_published_total 12
postbox_publish_failures_total{reason=\"returned\"} 2
postbox_publish_failures_total{reason=\"nacked\"} 1
postbox_relay_lag_seconds_bucket{le=\"0.01\"} 3
postbox_relay_lag_seconds_sum 0.6
postbox_relay_lag_seconds_count 12
postbox_published_total_other 99
postbox_partitions_owned 64
";

    #[test]
    fn counters_are_read_and_summed_over_labels() {
        let r = Reading::parse(TEXT, OffsetDateTime::UNIX_EPOCH, Instant::now());
        assert_eq!(
            (r.accepted, r.published, r.failed),
            (15.0, 12.0, 3.0),
            "{r:?}"
        );
        assert_eq!((r.lag_sum, r.lag_count), (0.6, 12.0));
        assert_eq!((r.instances, r.partitions_owned), (None, Some(64.0)));
    }

    #[test]
    fn points_hold_rates_and_the_window_is_bounded() {
        let series = Series::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut reading = Reading::parse(TEXT, OffsetDateTime::UNIX_EPOCH, t0);
        series.record(reading.clone(), None);
        assert!(series.snapshot().series.is_empty(), "a baseline only");
        assert_eq!(series.snapshot().totals.accepted, 15);
        let backlog = Backlog {
            pending: 4,
            oldest_age_seconds: 1.5,
            dead: 1,
        };
        for i in 1..=1000u32 {
            reading.instant = t0 + Duration::from_secs(u64::from(i) * 2);
            reading.accepted += 20.0;
            reading.lag_sum += if i % 2 == 0 { 0.5 } else { 0.0 };
            reading.lag_count += if i % 2 == 0 { 10.0 } else { 0.0 };
            series.record(reading.clone(), Some(backlog));
        }
        let snap = series.snapshot();
        assert_eq!(snap.series.len(), 900, "15 minutes of 1 s samples, no more");
        let last = snap.series.last().unwrap();
        assert_eq!(last.accepted_per_second, 10.0);
        assert_eq!(last.published_per_second, 0.0);
        assert_eq!(last.relay_lag_seconds, Some(0.05));
        assert_eq!(snap.series[snap.series.len() - 2].relay_lag_seconds, None);
        assert_eq!((last.pending, last.dead), (Some(4), Some(1)));
        assert_eq!(snap.totals.accepted, 15 + 20_000);
    }

    #[test]
    fn a_counter_that_goes_down_counts_nothing() {
        let t0 = Instant::now();
        let a = Reading::parse(TEXT, OffsetDateTime::UNIX_EPOCH, t0);
        let mut b = a.clone();
        b.instant = t0 + Duration::from_secs(5);
        b.accepted = 0.0;
        assert_eq!(b.point_since(&a, None).accepted_per_second, 0.0);
    }

    #[test]
    fn intervals_are_clamped() {
        assert_eq!(Series::new(Duration::ZERO).interval(), MIN_INTERVAL);
        assert_eq!(
            Series::new(Duration::from_secs(3600)).interval(),
            MAX_INTERVAL
        );
        assert_eq!(
            Series::new(Duration::from_secs(5))
                .inner
                .lock()
                .unwrap()
                .capacity,
            180
        );
    }
}
