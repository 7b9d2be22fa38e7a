//! The relay: claim due outbox rows → publish them with confirms → settle the batch. It wakes at
//! once after each commit, polls as a fallback, reconnects to RabbitMQ on its own with backoff,
//! waits while RabbitMQ blocks publishers, and stops between batches on shutdown.

pub mod amqp;
pub mod topology;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::{
    config::{Config, RelayConfig},
    outbox::{Claimed, OutboxStore, Settlement, Store, now_micros, partitions::Partitions},
    trace::otlp::SpanSink,
};
pub use amqp::{Outcome, Publisher, Sent};

/// What the relay knows about RabbitMQ, for `/readyz` and logs.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BrokerState {
    /// Not connected yet.
    Connecting,
    /// Connected; publishing.
    Connected,
    /// Connected, but RabbitMQ has blocked publishers (resource alarm).
    Blocked,
    /// Cannot connect; events are buffered in the outbox.
    Unreachable,
}

/// Shared broker status.
#[derive(Clone)]
pub struct BrokerStatus(Arc<Mutex<(BrokerState, Option<String>)>>);

impl Default for BrokerStatus {
    fn default() -> Self {
        BrokerStatus(Arc::new(Mutex::new((BrokerState::Connecting, None))))
    }
}

impl BrokerStatus {
    /// Current state and last error.
    pub fn get(&self) -> (BrokerState, Option<String>) {
        self.0
            .lock()
            .map(|g| g.clone())
            .unwrap_or((BrokerState::Unreachable, None))
    }

    fn set(&self, state: BrokerState, error: Option<String>) {
        if let Ok(mut g) = self.0.lock() {
            if g.0 != state {
                match (&state, &error) {
                    (BrokerState::Unreachable, Some(e)) => {
                        tracing::warn!(error = %e, "RabbitMQ is unreachable; events stay in the outbox until it is back")
                    }
                    (BrokerState::Blocked, _) => {
                        tracing::warn!("RabbitMQ blocked publishing (resource alarm); relay paused")
                    }
                    (BrokerState::Connected, _) => tracing::info!("connected to RabbitMQ"),
                    _ => {}
                }
            }
            metrics::gauge!("postbox_broker_connected").set(if state == BrokerState::Connected {
                1.0
            } else {
                0.0
            });
            *g = (state, error);
        }
    }
}

/// The relay task.
pub struct Relay {
    store: Store,
    cfg: RelayConfig,
    amqp_url: String,
    exchange: String,
    status: BrokerStatus,
    wake: Arc<Notify>,
    topology: topology::Topology,
    spans: Option<SpanSink>,
    partitions: Partitions,
}

/// Batches sent and awaiting confirms at once (each up to `relay_batch` rows).
pub const PIPELINE_DEPTH: usize = 4;

impl Relay {
    /// A relay for this configuration, claiming from the partitions this instance owns.
    pub fn new(
        config: &Config,
        store: Store,
        status: BrokerStatus,
        wake: Arc<Notify>,
        partitions: Partitions,
    ) -> Relay {
        Relay {
            store,
            cfg: config.relay.clone(),
            amqp_url: config.amqp_url.clone(),
            exchange: config.exchange.clone(),
            status,
            wake,
            topology: config.topology.clone(),
            spans: None,
            partitions,
        }
    }

    /// Export publish spans of traced events to `spans` (OTLP).
    pub fn with_spans(mut self, spans: Option<SpanSink>) -> Relay {
        self.spans = spans;
        self
    }

    /// Run until `token` is cancelled: connect, publish, reconnect with backoff.
    pub async fn run(self, token: CancellationToken) {
        let this = Arc::new(self);
        let mut backoff = Duration::from_millis(200);
        while !token.is_cancelled() {
            let connected = Publisher::connect(
                &this.amqp_url,
                &this.exchange,
                &this.topology,
                this.spans.clone(),
            )
            .await;
            match connected {
                Ok(publisher) => {
                    backoff = Duration::from_millis(200);
                    this.status.set(BrokerState::Connected, None);
                    this.publish_loop(&publisher, &token).await;
                    publisher.close().await;
                    if !token.is_cancelled() {
                        metrics::counter!("postbox_broker_reconnects_total").increment(1);
                    }
                }
                Err(e) => {
                    this.status
                        .set(BrokerState::Unreachable, Some(format!("{e:#}")));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = token.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::info!("relay stopped");
    }

    /// Claim and send batches while earlier batches wait for their confirms (up to
    /// [`PIPELINE_DEPTH`] batches in flight); a second task awaits confirms and settles, in
    /// order. On shutdown or a broken connection, stop claiming and let the settler finish
    /// every batch already sent, so no row is left unsettled.
    async fn publish_loop(self: &Arc<Self>, publisher: &Publisher, token: &CancellationToken) {
        let (tx, rx) = mpsc::channel::<Sent>(PIPELINE_DEPTH);
        let broken = CancellationToken::new();
        let watcher = tokio::spawn(watch_blocked(
            publisher.connection_status(),
            self.status.clone(),
            broken.child_token(),
        ));
        let settler = tokio::spawn({
            let this = self.clone();
            let broken = broken.clone();
            async move { this.settle_loop(rx, broken).await }
        });
        let lease = self.cfg.confirm_timeout * 2 + Duration::from_secs(10);
        loop {
            if token.is_cancelled() || broken.is_cancelled() {
                break;
            }
            if !publisher.is_usable() {
                self.status.set(
                    BrokerState::Unreachable,
                    Some("connection to RabbitMQ lost".to_owned()),
                );
                break;
            }
            if publisher.is_blocked() {
                // connection.blocked (a memory or disk alarm): send nothing more until RabbitMQ
                // unblocks; the blocked-time watcher keeps the state and the metric.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = token.cancelled() => {}
                }
                continue;
            }
            self.status.set(BrokerState::Connected, None);
            match self
                .partitions
                .claim(&self.store, self.cfg.batch, lease)
                .await
            {
                Ok(rows) if rows.is_empty() => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.cfg.poll) => {}
                        () = token.cancelled() => {}
                        () = broken.cancelled() => {}
                    }
                }
                Ok(rows) => {
                    let sent = publisher.send(rows).await;
                    if let Err(mpsc::error::SendError(sent)) = tx.send(sent).await {
                        // The settler is gone: these rows stay leased (sent again after the
                        // lease), but are no longer in flight here.
                        self.partitions.settled(&sent.rows).await;
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox unavailable to the relay; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.cfg.poll) => {}
                        () = token.cancelled() => {}
                    }
                }
            }
        }
        drop(tx);
        if settler.await.is_err() {
            tracing::error!("the relay's settle task panicked");
        }
        broken.cancel();
        let _ = watcher.await;
    }

    /// Await each sent batch's confirms in order and record the results.
    async fn settle_loop(&self, mut rx: mpsc::Receiver<Sent>, broken: CancellationToken) {
        while let Some(sent) = rx.recv().await {
            let started = Instant::now();
            let (rows, outcomes) = sent.confirm(self.cfg.confirm_timeout).await;
            metrics::histogram!("postbox_confirm_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            let (settlements, connection_failed) = self.settlements(&rows, &outcomes);
            if connection_failed {
                broken.cancel();
            }
            if let Err(e) = self.settle(&settlements).await {
                // The rows stay leased and are published again when the lease runs out (or at
                // once by the next owner of their partition): a duplicate, never a loss.
                tracing::error!(error = %e, rows = rows.len(), "could not record publish results");
            }
            self.partitions.settled(&rows).await;
            // A settled keyed event lets the next event of its key be claimed: claim again now
            // rather than at the next poll.
            self.wake.notify_one();
        }
    }

    /// Turn outcomes into settlements (and metrics); also says whether the connection failed.
    fn settlements(&self, rows: &[Claimed], outcomes: &[Outcome]) -> (Vec<Settlement>, bool) {
        let now = now_micros();
        let mut broken = false;
        let settlements = rows
            .iter()
            .zip(outcomes)
            .map(|(row, outcome)| match outcome {
                Outcome::Confirmed => {
                    metrics::counter!("postbox_published_total").increment(1);
                    let lag = (now - row.created_at).max(0) as f64 / 1e6;
                    metrics::histogram!("postbox_relay_lag_seconds").record(lag);
                    Settlement::Published { seq: row.seq }
                }
                Outcome::Failed(error) => {
                    let reason = failure_reason(error);
                    broken |= matches!(reason, "connection" | "timeout");
                    let attempts = row.attempts.saturating_add(1);
                    let dead = u32::try_from(attempts).unwrap_or(u32::MAX) >= self.cfg.max_attempts;
                    metrics::counter!("postbox_publish_failures_total", "reason" => reason)
                        .increment(1);
                    if dead {
                        metrics::counter!("postbox_dead_total").increment(1);
                        tracing::warn!(event_id = %row.event_id, attempts, error = %error, "event is dead after its last attempt");
                    }
                    let delay = retry_delay(attempts, &self.cfg, &mut rand::rng());
                    Settlement::Failed {
                        seq: row.seq,
                        attempts,
                        error: error.clone(),
                        next_attempt_at: now
                            + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2),
                        dead,
                        lease: row.lease,
                    }
                }
            })
            .collect();
        (settlements, broken)
    }

    /// Settle, retrying briefly: the broker has already confirmed these messages, so losing the
    /// settlement would publish them again when the lease runs out (a duplicate, not a loss).
    async fn settle(&self, settlements: &[Settlement]) -> Result<(), sqlx::Error> {
        let mut tries = 0;
        loop {
            match self.store.settle(settlements).await {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(error = %e, "settling publish results failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// While RabbitMQ blocks this connection (`connection.blocked`, AMQP 0-9-1 extension sent on a
/// memory or disk alarm), report the relay as blocked and count the time in
/// `postbox_broker_blocked_milliseconds_total`. Runs beside the publish loop, because a publish
/// that was under way when the block came waits inside lapin until RabbitMQ unblocks.
async fn watch_blocked(
    conn: lapin::ConnectionStatus,
    status: BrokerStatus,
    stop: CancellationToken,
) {
    const TICK: Duration = Duration::from_millis(100);
    let mut last = Instant::now();
    let mut was_blocked = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => return,
        }
        let now = Instant::now();
        let blocked = conn.blocked();
        if blocked {
            if was_blocked {
                let ms = u64::try_from((now - last).as_millis()).unwrap_or(u64::MAX);
                metrics::counter!("postbox_broker_blocked_milliseconds_total").increment(ms);
            }
            status.set(
                BrokerState::Blocked,
                Some("RabbitMQ sent connection.blocked".to_owned()),
            );
        } else if was_blocked {
            tracing::info!("RabbitMQ unblocked publishing; relay resumes");
            status.set(BrokerState::Connected, None);
        }
        was_blocked = blocked;
        last = now;
    }
}

fn failure_reason(error: &str) -> &'static str {
    if error.starts_with("returned") {
        "returned"
    } else if error.starts_with("nacked") {
        "nacked"
    } else if error.starts_with("no confirm") {
        "timeout"
    } else if error.starts_with("invalid message") {
        "invalid"
    } else {
        "connection"
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random, so retries of
/// many events spread out instead of arriving together.
pub fn retry_delay(attempts: i32, cfg: &RelayConfig, rng: &mut impl Rng) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let full = cfg
        .retry_base
        .saturating_mul(2u32.saturating_pow(exp))
        .min(cfg.retry_max);
    let half = full / 2;
    let jitter_ms = rng.random_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RelayConfig {
        RelayConfig {
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            batch: 10,
            confirm_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let d1 = retry_delay(1, &cfg(), &mut rng);
            assert!(
                d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
                "{d1:?}"
            );
            let d3 = retry_delay(3, &cfg(), &mut rng);
            assert!(
                d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4),
                "{d3:?}"
            );
            let d40 = retry_delay(40, &cfg(), &mut rng);
            assert!(
                d40 >= Duration::from_secs(30) && d40 <= Duration::from_secs(60),
                "{d40:?}"
            );
        }
    }

    #[test]
    fn reasons_are_labelled() {
        assert_eq!(
            failure_reason("returned by RabbitMQ: 312 NO_ROUTE"),
            "returned"
        );
        assert_eq!(failure_reason("nacked by RabbitMQ"), "nacked");
        assert_eq!(
            failure_reason("connection lost before the confirm: x"),
            "connection"
        );
    }
}
