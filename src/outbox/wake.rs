//! Wake relays across instances on one PostgreSQL outbox with `LISTEN`/`NOTIFY`: an event is
//! published by the instance that owns its partition, which is often not the one that committed
//! it. After its commits, an instance sends one `NOTIFY` (bursts coalesce into one); every
//! other instance listens and wakes its relay at once (at most one `NOTIFY` every 5 ms per
//! instance: commits in between share the next). Polling every `poll_ms` stays as the
//! fallback, so a lost notification only delays an event.
//!
//! The `NOTIFY` is sent after the commit, not inside the group-commit transaction: a
//! transaction that notifies takes a cluster-wide lock while it commits, which would serialise
//! every instance's commits.

use std::{sync::Arc, time::Duration};

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::PgStore;

/// The notification channel.
pub const CHANNEL: &str = "postbox_outbox";

/// A tag for this process's notifications, so that it does not wake itself twice.
pub fn instance_tag() -> String {
    format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple())
}

/// Least time between two notifications from one instance. Commits within it share the next
/// one, so another instance's relay hears of a commit up to this much later (plus the round
/// trip). Without it nearly every commit sent its own `NOTIFY` (1,338 for 1,384 commits at
/// 1,000 events/s): a transaction of its own, and a wake-up of every listening session, this
/// instance's own included. With it, at 2,000 events/s on one instance (`bench/curve.sh`, four
/// runs against two), PostgreSQL's CPU per event went from 310-314 to 269-292 µs.
const ANNOUNCE_GAP: Duration = Duration::from_millis(5);

/// After each signal on `commits` (sent by the writer after a commit), notify the other
/// instances, at most once per [`ANNOUNCE_GAP`]. Until `token` is cancelled.
pub async fn announce(store: PgStore, tag: String, commits: Arc<Notify>, token: CancellationToken) {
    loop {
        tokio::select! {
            () = commits.notified() => {}
            () = token.cancelled() => return,
        }
        let sent = tokio::time::timeout(Duration::from_secs(5), store.notify(CHANNEL, &tag)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!("could not notify other instances of a commit; they will poll");
        }
        // Commits meanwhile leave one permit in `commits`: they are announced after the gap.
        tokio::select! {
            () = tokio::time::sleep(ANNOUNCE_GAP) => {}
            () = token.cancelled() => return,
        }
    }
}

/// Wake `relay` whenever another instance announces a commit. Until `token` is cancelled.
pub async fn listen(store: PgStore, tag: String, relay: Arc<Notify>, token: CancellationToken) {
    // A pool of one connection, kept for the listener (PgListener reconnects through it).
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(store.connect_options());
    loop {
        tokio::select! {
            Err(e) = listen_once(&pool, &tag, &relay) => {
                tracing::debug!(error = %e, "LISTEN for other instances' commits failed; retrying");
            }
            () = token.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = token.cancelled() => return,
        }
    }
}

async fn listen_once(
    pool: &sqlx::PgPool,
    tag: &str,
    relay: &Notify,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        // `None`: the connection was lost and is being re-established (LISTEN again).
        if let Some(n) = listener.try_recv().await?
            && n.payload() != tag
        {
            relay.notify_one();
        }
    }
}
