//! The relay engine: claim due outbox rows → publish them through a [`Sink`] → settle each
//! event from its typed [`Outcome`] (published, retry with backoff, dead). It keeps several
//! batches in flight, wakes at once after each commit, polls as a fallback, reconnects with
//! backoff, pauses while the broker blocks publishers, owns partition ownership (for several
//! instances on one PostgreSQL outbox), and stops between batches on shutdown. Nothing here
//! knows which broker it talks to.

pub mod partitions;
pub mod spans;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    outbox::{Claimed, OutboxStore, Settlement, Store, now_micros},
    sink::{Health, Link, LinkState, Message, Outcome, Pending, Sink, SinkState},
    trace::otlp::SpanSink,
};
use partitions::{InFlight, Partitions};
use spans::PublishTrace;

/// Relay settings (the `relay` part of the configuration).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Fallback poll interval.
    pub poll: Duration,
    /// Rows per round.
    pub batch: u32,
    /// Wait before claiming again after a round smaller than [`LINGER_BELOW`] rows.
    pub linger: Duration,
    /// Confirm wait per round.
    pub confirm_timeout: Duration,
}

/// Longest the relay waits for one claim or settlement from the outbox database. sqlx cannot
/// put TCP keepalive on its sockets, so this is what bounds a call on a half-open connection
/// (while a claim runs it holds the partition-ownership lock).
const DB_TIMEOUT: Duration = Duration::from_secs(15);

/// A round with fewer rows than this is followed by the linger (when configured): the relay
/// is keeping up, and waiting a few milliseconds lets the next claim take what was committed
/// meanwhile in one go. Measured on PostgreSQL and SQLite (co-located, 2 cores): every claim
/// and settlement is a few database round trips that compete with the commits the 202s wait
/// for; at steady load a claim per commit group made them slower (see docs/benchmark.md).
/// A full round means a backlog: the next claim follows at once.
const LINGER_BELOW: usize = 64;

/// Batches sent and awaiting confirms at once (each up to `relay_batch` rows).
pub const PIPELINE_DEPTH: usize = 4;

/// How long the broker must have been unreachable before this instance stops counting as able
/// to publish (and, with several instances, hands its partitions to the others). A short blip
/// does not move partitions around.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// The relay task, over any sink.
pub struct Relay<S: Sink> {
    store: Store,
    sink: S,
    cfg: RelayConfig,
    health: Health,
    /// Commits (this process's, and with PostgreSQL other instances') and partition changes.
    wake: Arc<Notify>,
    /// Rows this relay's settlements made claimable: the next event of a settled key, rows
    /// given back. The claim loop claims at once, also during its linger.
    freed: Notify,
    spans: Option<SpanSink>,
    partitions: Partitions,
}

/// A batch between send and settlement.
struct Batch<P> {
    rows: Vec<Claimed>,
    pending: P,
    traces: Vec<Option<PublishTrace>>,
    /// Counts the rows in flight for partition ownership until dropped.
    _in_flight: InFlight,
}

impl<S: Sink> Relay<S> {
    /// A relay publishing through `sink`, claiming from the partitions this instance owns,
    /// reporting the broker's state to `health`.
    pub fn new(
        cfg: RelayConfig,
        store: Store,
        sink: S,
        health: Health,
        wake: Arc<Notify>,
        partitions: Partitions,
    ) -> Relay<S> {
        Relay {
            store,
            sink,
            cfg,
            health,
            wake,
            freed: Notify::new(),
            spans: None,
            partitions,
        }
    }

    /// Export publish spans of traced events to `spans` (OTLP).
    pub fn with_spans(mut self, spans: Option<SpanSink>) -> Relay<S> {
        self.spans = spans;
        self
    }

    /// Run until `token` is cancelled: connect, publish, reconnect with backoff.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !token.is_cancelled() {
            match self.sink.connect().await {
                Ok(link) => {
                    backoff = Duration::from_millis(200);
                    self.health.connected_to(link.peer());
                    self.publish_loop(&link, &token).await;
                    link.close().await;
                    if !token.is_cancelled() {
                        metrics::counter!("postbox_broker_reconnects_total").increment(1);
                    }
                }
                Err(e) => {
                    self.health
                        .set(SinkState::Unreachable, Some(format!("{e:#}")));
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
    /// order. On shutdown or a broken link, stop claiming and let the settler finish every
    /// batch already sent, so no row is left unsettled.
    async fn publish_loop(self: &Arc<Self>, link: &S::Link, token: &CancellationToken) {
        let done = CancellationToken::new();
        let work = async {
            self.claim_loop(link, token).await;
            done.cancel();
        };
        tokio::join!(work, self.watch_blocked(link, &done));
    }

    async fn claim_loop(self: &Arc<Self>, link: &S::Link, token: &CancellationToken) {
        let (tx, rx) = mpsc::channel::<Batch<<S::Link as Link>::Pending>>(PIPELINE_DEPTH);
        let broken = CancellationToken::new();
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
            match link.state() {
                LinkState::Broken(why) => {
                    self.health.set(SinkState::Unreachable, Some(why));
                    break;
                }
                LinkState::Blocked => {
                    // A resource alarm: send nothing more until the broker unblocks (the
                    // watcher reports it and counts the time).
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = token.cancelled() => {}
                    }
                    continue;
                }
                // (Not over the settler's "reconnecting" when it just found the link broken.)
                LinkState::Usable if !broken.is_cancelled() => {
                    self.health.set(SinkState::Connected, None)
                }
                LinkState::Usable => break,
            }
            let claimed = tokio::time::timeout(
                DB_TIMEOUT,
                self.partitions.claim(&self.store, self.cfg.batch, lease),
            )
            .await
            .unwrap_or_else(|_| Err(db_timed_out()));
            match claimed {
                Ok((rows, _)) if rows.is_empty() => self.await_work(token, &broken).await,
                Ok((rows, in_flight)) => {
                    if !self.partitions.fresh().await {
                        // The process was stopped between claim and send long enough for its
                        // leases to expire: another instance may own these rows now. Send
                        // nothing and give the rows back (fenced by their lease: a row the new
                        // owner has claimed meanwhile is left alone).
                        tracing::warn!(
                            rows = rows.len(),
                            "claimed rows not sent: this instance's partition leases may have expired meanwhile"
                        );
                        metrics::counter!("postbox_stale_batches_dropped_total").increment(1);
                        let release: Vec<Settlement> = rows
                            .iter()
                            .map(|r| Settlement::Released {
                                seq: r.seq,
                                lease: r.lease,
                            })
                            .collect();
                        if let Err(e) = self.settle(&release).await {
                            tracing::warn!(error = %e, "could not give the rows back; their lease runs out");
                        }
                        continue;
                    }
                    let small = rows.len() < LINGER_BELOW;
                    // Fewer rows than asked for: the claim took every row that was due.
                    let caught_up = rows.len() < self.cfg.batch as usize;
                    let batch = self.send(link, rows, in_flight).await;
                    if tx.send(batch).await.is_err() {
                        // The settler is gone: these rows stay leased (sent again after the
                        // lease), and dropping the batch counts them out of flight here.
                        break;
                    }
                    // The linger gathers commits, not settlements: the next event of a key
                    // settled meanwhile is claimed at once. (Lingering after each event of a
                    // key capped one key at about one event per linger: at 200 events/s on
                    // one key the relay lag grew past a second.)
                    let mut freed = false;
                    if small && !self.cfg.linger.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(self.cfg.linger) => {}
                            () = self.freed.notified() => freed = true,
                            () = token.cancelled() => {}
                        }
                    }
                    if caught_up && !freed {
                        // The next claim finds something only once a commit (or a
                        // settlement that frees a row) wakes the relay, or at the poll for
                        // retries that came due: wait for that here rather than learn it
                        // from an empty claim. A commit made while this batch was sent (or
                        // during the linger) has left its wake-up waiting, so that claim
                        // follows at once.
                        self.await_work(token, &broken).await;
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
            // Its batches were dropped as it unwound, which counted their rows out of flight;
            // the rows stay leased and are published again (at-least-once). Reconnect.
            tracing::error!("the relay's settle task panicked; reconnecting");
            metrics::counter!("postbox_task_panics_total", "task" => "settler").increment(1);
        }
    }

    /// Until a claim may find something: a commit or partition change (`wake`), a
    /// settlement that freed a row (`freed`), the poll (retries that came due, leases
    /// that ran out), or the loop's end.
    async fn await_work(&self, token: &CancellationToken, broken: &CancellationToken) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = self.freed.notified() => {}
            () = tokio::time::sleep(self.cfg.poll) => {}
            () = token.cancelled() => {}
            () = broken.cancelled() => {}
        }
    }

    /// While the broker blocks the link (RabbitMQ's `connection.blocked` on a memory or disk
    /// alarm), report the relay as blocked and count the time in
    /// `postbox_broker_blocked_milliseconds_total`. Runs beside the claim loop, because a
    /// publish that was under way when the block came waits inside the client until the broker
    /// unblocks.
    async fn watch_blocked(&self, link: &S::Link, stop: &CancellationToken) {
        const TICK: Duration = Duration::from_millis(100);
        let mut last = Instant::now();
        let mut was_blocked = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = stop.cancelled() => return,
            }
            let now = Instant::now();
            let blocked = link.state() == LinkState::Blocked;
            if blocked {
                if was_blocked {
                    let ms = u64::try_from((now - last).as_millis()).unwrap_or(u64::MAX);
                    metrics::counter!("postbox_broker_blocked_milliseconds_total").increment(ms);
                }
                self.health.set(
                    SinkState::Blocked,
                    Some(format!("{} blocked publishers", self.sink.name())),
                );
            } else if was_blocked {
                tracing::info!("{} unblocked publishing; relay resumes", self.sink.name());
                self.health.set(SinkState::Connected, None);
            }
            was_blocked = blocked;
            last = now;
        }
    }

    /// Turn claimed rows into messages (starting publish spans) and put them on the wire.
    async fn send(
        &self,
        link: &S::Link,
        mut rows: Vec<Claimed>,
        in_flight: InFlight,
    ) -> Batch<<S::Link as Link>::Pending> {
        let export = self.spans.is_some();
        let mut traces = Vec::with_capacity(rows.len());
        let messages: Vec<Message> = rows
            .iter_mut()
            .map(|row| {
                let mut m = message(row);
                traces.push(PublishTrace::start(&mut m, &self.sink, export));
                m
            })
            .collect();
        let pending = link.send(messages).await;
        Batch {
            rows,
            pending,
            traces,
            _in_flight: in_flight,
        }
    }

    /// Await each sent batch's verdicts in order and record the results.
    async fn settle_loop(
        &self,
        mut rx: mpsc::Receiver<Batch<<S::Link as Link>::Pending>>,
        broken: CancellationToken,
    ) {
        while let Some(batch) = rx.recv().await {
            let started = Instant::now();
            let outcomes = batch.pending.outcomes(self.cfg.confirm_timeout).await;
            metrics::histogram!("postbox_confirm_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            let end = SystemTime::now();
            for (trace, outcome) in batch.traces.into_iter().zip(&outcomes) {
                if let Some(t) = trace {
                    t.finish(outcome, end, self.spans.as_ref());
                }
            }
            let settlements = self.settlements(&batch.rows, &outcomes);
            if let Some(why) = outcomes
                .iter()
                .find(|o| o.breaks_link())
                .and_then(Outcome::error)
            {
                // Say so now: closing the old link and connecting a new one can take a while
                // on a stalled network, and /readyz should not claim `connected` meanwhile.
                if !broken.is_cancelled() {
                    self.health.set(
                        SinkState::Unreachable,
                        Some(format!("{why}; reconnecting to {}", self.sink.name())),
                    );
                }
                broken.cancel();
            }
            if let Err(e) = self.settle(&settlements).await {
                // The rows stay leased and are published again when the lease runs out (or at
                // once by the next owner of their partition): a duplicate, never a loss.
                tracing::error!(error = %e, rows = batch.rows.len(), "could not record publish results");
            }
            drop(batch._in_flight);
            // A settled keyed event lets the next event of its key be claimed, and a released
            // row is claimable again: claim again now rather than at the next poll. Nothing
            // else a settlement does makes a row claimable (a retry waits for its backoff), so
            // other settlements leave the claim loop waiting for the next commit: at a
            // moderate rate a wake per settlement was an empty claim per batch (a round trip
            // to the database and back, and its thread wake-ups).
            if batch.rows.iter().any(|r| r.keyed)
                || settlements
                    .iter()
                    .any(|s| matches!(s, Settlement::Released { .. }))
            {
                self.freed.notify_one();
            }
        }
    }

    /// Turn outcomes into settlements (and metrics).
    fn settlements(&self, rows: &[Claimed], outcomes: &[Outcome]) -> Vec<Settlement> {
        let now = now_micros();
        rows.iter()
            .zip(outcomes)
            .map(|(row, outcome)| match outcome.error() {
                None => {
                    metrics::counter!("postbox_published_total").increment(1);
                    if *outcome == Outcome::Duplicate {
                        metrics::counter!("postbox_publish_duplicates_total").increment(1);
                    }
                    let lag = (now - row.created_at).max(0) as f64 / 1e6;
                    metrics::histogram!("postbox_relay_lag_seconds").record(lag);
                    Settlement::Published { seq: row.seq }
                }
                Some(error) => {
                    let attempts = row.attempts.saturating_add(1);
                    let dead = u32::try_from(attempts).unwrap_or(u32::MAX) >= self.cfg.max_attempts;
                    metrics::counter!("postbox_publish_failures_total", "reason" => outcome.reason())
                        .increment(1);
                    if dead {
                        metrics::counter!("postbox_dead_total").increment(1);
                        tracing::warn!(event_id = %row.event_id, attempts, error = %error, "event is dead after its last attempt");
                    }
                    let delay = retry_delay(attempts, &self.cfg, &mut rand::rng());
                    Settlement::Failed {
                        seq: row.seq,
                        attempts,
                        error: error.to_owned(),
                        next_attempt_at: now
                            + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2),
                        dead,
                        lease: row.lease,
                    }
                }
            })
            .collect()
    }

    /// Settle, retrying briefly: the broker has already confirmed these messages, so losing the
    /// settlement would publish them again when the lease runs out (a duplicate, not a loss).
    async fn settle(&self, settlements: &[Settlement]) -> Result<(), sqlx::Error> {
        let mut tries = 0;
        loop {
            let settled = tokio::time::timeout(DB_TIMEOUT, self.store.settle(settlements))
                .await
                .unwrap_or_else(|_| Err(db_timed_out()));
            match settled {
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

/// The message of a claimed row; its body and attributes move into it (the row keeps what
/// settling needs).
fn message(row: &mut Claimed) -> Message {
    Message {
        id: row.event_id.clone(),
        source: row.source.clone(),
        ce_type: row.ce_type.clone(),
        subject: row.routing_key.clone(),
        body: std::mem::take(&mut row.body),
        attributes: std::mem::take(&mut row.attributes),
        traceparent: row.traceparent.clone(),
        tracestate: row.tracestate.clone(),
        created_at: row.created_at,
    }
}

/// Whether this instance can publish: false once the broker has been unreachable for
/// [`UNREACHABLE_FOR`]. The plain signal partition ownership is fed with.
pub struct PublishGate {
    health: Health,
    unreachable_since: Option<tokio::time::Instant>,
}

impl PublishGate {
    /// Read from the broker's `health`.
    pub fn new(health: Health) -> PublishGate {
        PublishGate {
            health,
            unreachable_since: None,
        }
    }

    /// Whether this instance can publish now.
    pub fn open(&mut self) -> bool {
        if self.health.get().0 == SinkState::Unreachable {
            let since = *self
                .unreachable_since
                .get_or_insert_with(tokio::time::Instant::now);
            since.elapsed() < UNREACHABLE_FOR
        } else {
            self.unreachable_since = None;
            true
        }
    }
}

fn db_timed_out() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no answer from the outbox database within {} s",
            DB_TIMEOUT.as_secs()
        ),
    ))
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
            linger: Duration::ZERO,
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

    #[tokio::test(start_paused = true)]
    async fn the_gate_closes_after_the_broker_is_unreachable_for_a_while() {
        let health = Health::new("test broker");
        let mut gate = PublishGate::new(health.clone());
        assert!(gate.open());
        health.set(SinkState::Unreachable, Some("refused".into()));
        assert!(gate.open(), "a blip does not close it");
        tokio::time::advance(UNREACHABLE_FOR).await;
        assert!(!gate.open());
        health.set(SinkState::Connected, None);
        assert!(gate.open());
    }
}
