//! Background upkeep of the outbox: backlog gauges every few seconds; the bodies of published
//! events dropped after `payload_retention` (their rows stay, as idempotency records); and
//! published rows pruned past the retention window. All in bounded batches, so the outbox does
//! not bloat and no statement runs long.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{OutboxStore, Store, now_micros};

/// How often backlog figures are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(2);
/// How often pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per statement.
const PRUNE_BATCH: u32 = 5000;

/// Run until cancelled.
/// How long published rows and their bodies are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows (the `(source, id)` and `Idempotency-Key` records).
    pub rows: Duration,
    /// Bodies (at most `rows`).
    pub payloads: Duration,
}

/// Run until cancelled.
pub async fn run(
    store: Store,
    retention: Retention,
    pending: Arc<AtomicI64>,
    token: CancellationToken,
) {
    let mut stats = tokio::time::interval(STATS_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    // Bodies are dropped in `published_at` order; this is where the next round starts (from the
    // beginning after a restart, which costs one index scan of the already-dropped range).
    let mut payload_mark = 0;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = stats.tick() => refresh(&store, &pending).await,
            _ = prune.tick() => {
                payload_mark = prune_payloads(&store, retention.payloads, payload_mark).await;
                prune_all(&store, retention.rows).await
            }
        }
    }
}

async fn refresh(store: &Store, pending: &AtomicI64) {
    match store.stats().await {
        Ok(s) => {
            pending.store(s.pending, Ordering::Relaxed);
            metrics::gauge!("postbox_outbox_pending").set(s.pending as f64);
            metrics::gauge!("postbox_outbox_dead").set(s.dead as f64);
            let age = s
                .oldest_pending
                .map(|t| (now_micros() - t).max(0) as f64 / 1e6)
                .unwrap_or(0.0);
            metrics::gauge!("postbox_outbox_oldest_pending_age_seconds").set(age);
        }
        Err(e) => tracing::debug!(error = %e, "backlog stats unavailable"),
    }
}

async fn prune_payloads(store: &Store, keep: Duration, mut mark: i64) -> i64 {
    let before = now_micros() - i64::try_from(keep.as_micros()).unwrap_or(i64::MAX / 2);
    loop {
        match store.prune_payloads(before, mark, PRUNE_BATCH).await {
            Ok((n, next)) => {
                metrics::counter!("postbox_payloads_pruned_total").increment(n);
                let done = next >= before || next == mark;
                mark = next;
                if done {
                    return mark;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "dropping published bodies skipped");
                return mark;
            }
        }
    }
}

async fn prune_all(store: &Store, retention: Duration) {
    let before = now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX / 2);
    loop {
        match store.prune(before, PRUNE_BATCH).await {
            Ok(n) => {
                metrics::counter!("postbox_pruned_total").increment(n);
                if n < u64::from(PRUNE_BATCH) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "pruning skipped");
                return;
            }
        }
    }
}
