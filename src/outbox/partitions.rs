//! Partition ownership: several instances on one PostgreSQL outbox split it into
//! [`PARTITIONS`] partitions, and one instance at a time owns a partition and publishes its
//! events. An event's partition is a stable hash of its ordering key (of its id when it has
//! none), so all events of a key are published by one instance at a time.
//!
//! Ownership is a PostgreSQL session advisory lock per partition, held on a dedicated
//! connection, plus a shared "presence" advisory lock per instance so that the live instances
//! can be counted in `pg_locks`. Every [`REBALANCE_EVERY`] each instance aims at a fair share
//! of `P / live instances` partitions (one more for some, so that the shares add up to `P`):
//! it locks free partitions up to its share and hands back extra ones, but only once the
//! batches it has in flight for them are settled. When an instance
//! dies, PostgreSQL ends its session and its locks go with it; the others see fewer instances
//! and free partitions at their next round and take them over, releasing the leases of the
//! rows the dead instance had claimed so that they are published at once rather than when
//! their lease runs out. No home-made consensus: PostgreSQL's locks decide.
//!
//! An instance whose relay cannot reach RabbitMQ for [`UNREACHABLE_FOR`] publishes nothing, so
//! it hands its partitions over and stops counting itself as live until it reaches RabbitMQ
//! again.
//!
//! An embedded SQLite outbox has one instance, which owns every partition ([`Partitions::all`]).

use std::{sync::Arc, time::Duration};

use rand::Rng;
use sqlx::{Connection, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use super::{Claimed, OutboxStore, PgStore, Store, StoreResult};
use crate::relay::{BrokerState, BrokerStatus};

/// Number of partitions. Fixed: it is part of the stored data (the `partition_id` column), so
/// changing it would split keys across partitions.
pub const PARTITIONS: i32 = 64;

/// Every partition, as a bit mask.
const ALL: u64 = u64::MAX;

/// Advisory-lock class of the partition locks (`pg_try_advisory_lock(class, partition)`); the
/// ASCII of "post".
const LOCK_CLASS: i32 = 0x706F_7374;
/// Advisory-lock class of the presence lock every live instance holds shared; "posi".
const PRESENCE_CLASS: i32 = 0x706F_7369;

/// How often ownership is checked and rebalanced: it bounds how long a dead instance's
/// partitions wait for a new owner.
pub const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// How long the relay must have been unable to reach RabbitMQ before this instance hands its
/// partitions to the others (a short broker blip does not move partitions around).
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(5);
/// Longest wait for one statement on the ownership connection; then it counts as lost.
const OWNERSHIP_TIMEOUT: Duration = Duration::from_secs(5);

/// The partition of an ordering key (or event id): FNV-1a, stable across builds and platforms.
pub fn partition_of(key: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // `PARTITIONS` is a small positive constant, so the remainder fits.
    i32::try_from(h % u64::from(PARTITIONS.unsigned_abs())).unwrap_or(0)
}

/// Which partitions this instance may claim from now, and how many claimed rows of each are in
/// flight (claimed and not yet settled). Cheap to clone.
#[derive(Clone)]
pub struct Partitions(Arc<tokio::sync::Mutex<State>>);

struct State {
    /// Bit `p` set: rows of partition `p` may be claimed.
    claimable: u64,
    /// Claimed, unsettled rows per partition.
    inflight: [u32; PARTITIONS as usize],
}

impl Partitions {
    /// Every partition (a single instance: SQLite).
    pub fn all() -> Partitions {
        metrics::gauge!("postbox_partitions_owned").set(f64::from(PARTITIONS));
        Partitions::with(ALL)
    }

    /// No partition yet: [`own`] acquires them.
    pub fn none() -> Partitions {
        Partitions::with(0)
    }

    fn with(claimable: u64) -> Partitions {
        Partitions(Arc::new(tokio::sync::Mutex::new(State {
            claimable,
            inflight: [0; PARTITIONS as usize],
        })))
    }

    /// Claim due rows of the partitions this instance owns, and count them in flight until
    /// [`Partitions::settled`]. Ownership changes wait for a claim in progress, so a partition
    /// is never handed back while a row of it is between claim and settlement.
    pub async fn claim(
        &self,
        store: &Store,
        limit: u32,
        lease: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        let mut state = self.0.lock().await;
        if state.claimable == 0 {
            return Ok(Vec::new());
        }
        let only = (state.claimable != ALL).then(|| partitions_in(state.claimable));
        let rows = store.claim(limit, lease, only.as_deref()).await?;
        for row in &rows {
            if let Some(n) = slot(&mut state.inflight, row.partition) {
                *n += 1;
            }
        }
        Ok(rows)
    }

    /// These rows are settled (or given up): no longer in flight.
    pub async fn settled(&self, rows: &[Claimed]) {
        let mut state = self.0.lock().await;
        for row in rows {
            if let Some(n) = slot(&mut state.inflight, row.partition) {
                *n = n.saturating_sub(1);
            }
        }
    }

    async fn claimable(&self) -> u64 {
        self.0.lock().await.claimable
    }

    async fn set_claimable(&self, mask: u64) {
        self.0.lock().await.claimable = mask;
        metrics::gauge!("postbox_partitions_owned").set(f64::from(mask.count_ones()));
    }

    /// The partitions of `mask` with nothing in flight.
    async fn idle(&self, mask: u64) -> u64 {
        let state = self.0.lock().await;
        bits(mask)
            .filter(|p| state.inflight[*p as usize] == 0)
            .fold(0, |m, p| m | 1u64 << p)
    }
}

/// This instance's share of the partitions: `P / n`, plus one for the first `P mod n`
/// instances (by rank), so that the shares add up to exactly `P` and each instance knows its
/// own without asking the others.
fn fair_share(instances: i64, rank: i64) -> u32 {
    let p = PARTITIONS.unsigned_abs();
    let n = u32::try_from(instances.max(1)).unwrap_or(u32::MAX);
    let rank = u32::try_from(rank.max(0)).unwrap_or(u32::MAX);
    p / n + u32::from(rank < p % n)
}

fn slot(inflight: &mut [u32; PARTITIONS as usize], partition: i32) -> Option<&mut u32> {
    usize::try_from(partition)
        .ok()
        .and_then(|p| inflight.get_mut(p))
}

/// The partition numbers set in `mask`.
fn bits(mask: u64) -> impl DoubleEndedIterator<Item = i32> {
    (0..PARTITIONS).filter(move |p| mask & (1u64 << p) != 0)
}

fn partitions_in(mask: u64) -> Vec<i32> {
    bits(mask).collect()
}

fn mask_of(partitions: &[i32]) -> u64 {
    partitions
        .iter()
        .filter(|p| (0..PARTITIONS).contains(*p))
        .fold(0, |m, p| m | 1u64 << p)
}

/// Keep this instance's fair share of the partitions until `token` is cancelled; then stop
/// claiming, wait for the rows in flight to be settled and give every partition back.
pub async fn own(
    store: PgStore,
    partitions: Partitions,
    broker: BrokerStatus,
    relay: Arc<tokio::sync::Notify>,
    token: CancellationToken,
) {
    let mut owner = Owner {
        store,
        partitions,
        broker,
        relay,
        unreachable_since: None,
        conn: None,
        present: false,
        held: 0,
        warned: false,
    };
    loop {
        if let Err(e) = owner.round().await {
            owner.lost(&e).await;
        }
        tokio::select! {
            () = tokio::time::sleep(REBALANCE_EVERY) => {}
            () = token.cancelled() => break,
        }
    }
    owner.partitions.set_claimable(0).await;
    while owner.partitions.idle(owner.held).await != owner.held {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(conn) = owner.conn.take() {
        let _ = tokio::time::timeout(OWNERSHIP_TIMEOUT, conn.close()).await;
    }
    tracing::debug!("partition ownership given back");
}

struct Owner {
    store: PgStore,
    partitions: Partitions,
    /// The relay's view of RabbitMQ.
    broker: BrokerStatus,
    /// Wakes the relay (to claim from partitions just taken over).
    relay: Arc<tokio::sync::Notify>,
    /// Since when the relay has been unable to reach RabbitMQ, as seen by the rounds.
    unreachable_since: Option<std::time::Instant>,
    /// The session holding this instance's advisory locks.
    conn: Option<PgConnection>,
    /// This session holds the presence lock (this instance counts as live).
    present: bool,
    /// Partitions locked by this session (claimable ones, and ones being handed back).
    held: u64,
    /// A lost ownership connection was logged (log once until it is back).
    warned: bool,
}

impl Owner {
    /// One round: (re)connect, count the live instances, take or hand back partitions.
    async fn round(&mut self) -> anyhow::Result<()> {
        if self.conn.is_none() {
            // After a lost session, wait for this instance's batches in flight to settle: the
            // new session could take the same partitions again and release the leases of rows
            // this instance is still publishing, which would publish them a second time.
            if self.partitions.idle(ALL).await != ALL {
                return Ok(());
            }
            self.connect().await?;
        }
        let publishing = self.publishing();
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if publishing != self.present {
            let f = if publishing {
                "pg_advisory_lock_shared"
            } else {
                "pg_advisory_unlock_shared"
            };
            within(sqlx::query(&format!("select {f}({PRESENCE_CLASS}, 0)")).execute(&mut *conn))
                .await?;
            self.present = publishing;
            if publishing {
                tracing::info!("relay can publish: taking a share of the partitions");
            } else {
                tracing::warn!(
                    "RabbitMQ unreachable for {}s: handing this instance's partitions to the others",
                    UNREACHABLE_FOR.as_secs()
                );
            }
        }
        // The live instances, and how many of them have a lower backend pid than this one.
        let (instances, rank): (i64, i64) = within(
            sqlx::query_as(&format!(
                "select count(*), count(*) filter (where pid < pg_backend_pid()) from pg_locks \
                 where locktype = 'advisory' and granted \
                 and database = (select oid from pg_database where datname = current_database()) \
                 and classid = {PRESENCE_CLASS} and objid = 0 and objsubid = 2"
            ))
            .fetch_one(&mut *conn),
        )
        .await?;
        metrics::gauge!("postbox_instances").set(instances as f64);
        let share = if publishing {
            fair_share(instances, rank)
        } else {
            0
        };

        let mut claimable = self.partitions.claimable().await;
        // Take back partitions that were being handed over, then free ones, up to the share.
        let draining = self.held & !claimable;
        let mut need = share.saturating_sub(claimable.count_ones());
        for p in bits(draining).take(need as usize) {
            claimable |= 1u64 << p;
        }
        need = share.saturating_sub(claimable.count_ones());
        let mut acquired = 0;
        if need > 0 {
            acquired = self.acquire(need).await?;
            claimable |= acquired;
        }
        // Hand back what exceeds the share: first stop claiming from it...
        let extra = claimable.count_ones().saturating_sub(share);
        if extra > 0 {
            let give: Vec<i32> = bits(claimable).rev().take(extra as usize).collect();
            claimable &= !mask_of(&give);
        }
        self.partitions.set_claimable(claimable).await;
        if acquired != 0 {
            // Their events (a dead owner's among them) need not wait for the next poll.
            self.relay.notify_one();
        }
        // ...then unlock it once its batches in flight are settled.
        let idle = self.partitions.idle(self.held & !claimable).await;
        if idle != 0 {
            self.unlock(idle).await?;
        }
        Ok(())
    }

    /// Connect the ownership session (the next round takes the presence lock on it).
    async fn connect(&mut self) -> anyhow::Result<()> {
        // If this host or its network dies without closing the connection, the server notices
        // through keepalives within ~10 s and frees the locks; a clean exit or a kill -9 closes
        // the socket and frees them at once.
        let opts = self
            .store
            .connect_options()
            .application_name("postbox-partition-owner")
            .options([
                ("tcp_keepalives_idle", "5"),
                ("tcp_keepalives_interval", "2"),
                ("tcp_keepalives_count", "3"),
            ]);
        let conn = within(PgConnection::connect_with(&opts)).await?;
        if self.warned {
            tracing::info!("partition ownership connection is back");
            self.warned = false;
        }
        self.held = 0;
        self.present = false;
        self.conn = Some(conn);
        Ok(())
    }

    /// Whether this instance's relay can publish: not when it has been unable to reach
    /// RabbitMQ for [`UNREACHABLE_FOR`].
    fn publishing(&mut self) -> bool {
        if self.broker.get().0 == BrokerState::Unreachable {
            let since = *self
                .unreachable_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= UNREACHABLE_FOR {
                return false;
            }
        } else {
            self.unreachable_since = None;
        }
        true
    }

    /// Lock up to `need` partitions nobody holds; release the leases their rows still carry
    /// from a previous owner. Returns the partitions locked.
    async fn acquire(&mut self, need: u32) -> anyhow::Result<u64> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(0);
        };
        let taken: Vec<i32> = within(
            sqlx::query_scalar(&format!(
                "select objid::int4 from pg_locks where locktype = 'advisory' \
                 and database = (select oid from pg_database where datname = current_database()) \
                 and classid = {LOCK_CLASS} and objsubid = 2"
            ))
            .fetch_all(&mut *conn),
        )
        .await?;
        let free = ALL & !mask_of(&taken) & !self.held;
        if free == 0 {
            return Ok(0);
        }
        // Start at a random free partition, so instances starting together rarely collide.
        let mut candidates = partitions_in(free);
        let start = rand::rng().random_range(0..candidates.len());
        candidates.rotate_left(start);
        candidates.truncate(need as usize);
        let rows = within(
            sqlx::query(&format!(
                "select p, pg_try_advisory_lock({LOCK_CLASS}, p) from unnest($1::int4[]) as p"
            ))
            .bind(&candidates)
            .fetch_all(&mut *conn),
        )
        .await?;
        let mut got = Vec::new();
        for row in rows {
            if row.try_get::<bool, _>(1)? {
                got.push(row.try_get::<i32, _>(0)?);
            }
        }
        if got.is_empty() {
            return Ok(0);
        }
        got.sort_unstable();
        let mask = mask_of(&got);
        self.held |= mask;
        let released = within(self.store.release_partition_leases(&got)).await?;
        metrics::counter!("postbox_partitions_acquired_total").increment(got.len() as u64);
        if released > 0 {
            metrics::counter!("postbox_partition_takeover_rows_total").increment(released);
        }
        tracing::info!(
            partitions = ?got,
            released_leases = released,
            "took over partitions"
        );
        Ok(mask)
    }

    /// Unlock partitions (handed back to the other instances).
    async fn unlock(&mut self, mask: u64) -> anyhow::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let give = partitions_in(mask);
        within(
            sqlx::query(&format!(
                "select pg_advisory_unlock({LOCK_CLASS}, p) from unnest($1::int4[]) as p"
            ))
            .bind(&give)
            .execute(&mut *conn),
        )
        .await?;
        self.held &= !mask;
        metrics::counter!("postbox_partitions_released_total").increment(give.len() as u64);
        tracing::info!(partitions = ?give, "handed partitions over");
        Ok(())
    }

    /// The ownership session failed: its locks may be gone, so stop claiming at once (another
    /// instance may own those partitions now) and reconnect at the next round.
    async fn lost(&mut self, error: &anyhow::Error) {
        self.partitions.set_claimable(0).await;
        self.held = 0;
        self.present = false;
        if let Some(conn) = self.conn.take() {
            metrics::counter!("postbox_partition_ownership_lost_total").increment(1);
            // Do not wait for a broken server: closing only frees the locks sooner.
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.close()).await;
        }
        if !self.warned {
            tracing::warn!(error = %format!("{error:#}"), "partition ownership connection lost; not publishing until it is back");
            self.warned = true;
        }
    }
}

/// A statement on the ownership connection, with its timeout.
async fn within<T, E>(fut: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(OWNERSHIP_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!(
            "no answer from PostgreSQL within {}s",
            OWNERSHIP_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("customer-42"), partition_of("customer-42"));
        // FNV-1a of "" is the offset basis.
        assert_eq!(partition_of(""), (0xcbf2_9ce4_8422_2325_u64 % 64) as i32);
        let mut seen = [0u32; PARTITIONS as usize];
        for i in 0..6400 {
            seen[partition_of(&format!("key-{i}")) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (50..=150).contains(n)), "{seen:?}");
    }

    #[test]
    fn shares_add_up_to_every_partition() {
        for n in 1..=70 {
            let total: u32 = (0..n).map(|rank| fair_share(n, rank)).sum();
            assert_eq!(total, 64, "{n} instances");
        }
        assert_eq!(fair_share(3, 0), 22);
        assert_eq!(fair_share(3, 2), 21);
        assert_eq!(fair_share(0, 0), 64);
    }

    #[test]
    fn masks_round_trip() {
        let parts = vec![0, 5, 63];
        assert_eq!(partitions_in(mask_of(&parts)), parts);
        assert_eq!(mask_of(&[64, -1]), 0);
        assert_eq!(partitions_in(ALL).len(), 64);
    }
}
