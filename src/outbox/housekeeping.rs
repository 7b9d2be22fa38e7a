//! Background upkeep of the outbox: backlog gauges every few seconds, and pruning of published
//! rows past the retention window, in bounded batches so the outbox does not bloat.

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
pub async fn run(
    store: Store,
    retention: Duration,
    pending: Arc<AtomicI64>,
    token: CancellationToken,
) {
    let mut stats = tokio::time::interval(STATS_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = stats.tick() => refresh(&store, &pending).await,
            _ = prune.tick() => prune_all(&store, retention).await,
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
