//! Partition ownership: several instances on one PostgreSQL outbox split it into
//! [`PARTITIONS`] partitions, and one instance at a time owns a partition and publishes its
//! events. An event's partition is a stable hash of its ordering key (of its id when it has
//! none), so all events of a key are published by one instance at a time.
//!
//! Ownership is a **lease** per partition in the database (`partition_leases`, see
//! `outbox::leases`), renewed every [`REBALANCE_EVERY`] and expiring after [`LEASE_TTL`],
//! with a **fencing epoch** raised at every takeover. Every round each instance renews its
//! heartbeat and its leases, counts the live instances and aims at a fair share of
//! `P / live instances` partitions (one more for some, so that the shares add up to `P`):
//! it takes partitions that are free, expired, or owned by an instance that is not alive, and
//! hands back extra ones once the batches it has in flight for them are settled. Taking a
//! partition over releases the leases of the rows its previous owner had claimed, so they are
//! published at once.
//!
//! How an instance's failure is noticed:
//! - **it dies** (crash, `kill -9`, lost host): its presence advisory lock goes with its
//!   session, so it is not alive any more and its partitions are taken at the others' next
//!   round (about a second);
//! - **it freezes** (SIGSTOP, a stalled VM: alive to TCP but not running): its session and lock
//!   stay, but its leases expire after [`LEASE_TTL`] and are taken then (within
//!   `LEASE_TTL + REBALANCE_EVERY`, 7 s). When it runs again it notices before it publishes:
//!   it claims only while its own view of the leases is fresh (by the monotonic clock, which
//!   counts the time it was stopped), checks again right before sending a batch it had claimed,
//!   and every claim is fenced in the database by the partition's epoch and expiry. A publish
//!   already inside its socket when it froze may still go out: a duplicate, never a loss.
//!
//! An instance whose relay cannot reach its broker for [`UNREACHABLE_FOR`] publishes nothing,
//! so it hands its partitions over and stops counting itself as live until it reaches the
//! broker again. No home-made consensus: PostgreSQL's rows and locks decide.
//!
//! An embedded SQLite outbox has one instance, which owns every partition ([`Partitions::all`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{PublishGate, UNREACHABLE_FOR};
use crate::outbox::{
    ClaimScope, Claimed, OutboxStore, PARTITIONS, PgStore, Store, StoreResult,
    leases::PRESENCE_CLASS,
};

/// Every partition, as a bit mask.
const ALL: u64 = u64::MAX;

/// How often ownership is renewed and rebalanced: it bounds how long a dead instance's
/// partitions wait for a new owner.
pub const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// How long a heartbeat or partition lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// This instance stops claiming this long before its leases would expire (its own view, by the
/// monotonic clock, counted from before the renewal was sent).
const SAFETY: Duration = Duration::from_secs(1);
/// Longest wait for one ownership statement; then the round counts as failed.
const OWNERSHIP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which partitions this instance may claim from now (with their lease epochs), until when its
/// view of them is fresh, and how many claimed rows of each are in flight (claimed and not yet
/// settled). Cheap to clone.
#[derive(Clone)]
pub struct Partitions {
    /// Claims hold this lock across the database call, so ownership never changes under a
    /// claim in progress.
    owned: Arc<tokio::sync::Mutex<Owned>>,
    /// Claimed, unsettled rows per partition; lowered by [`InFlight`]'s drop, so rows held by a
    /// task that panics are counted out as its stack unwinds.
    inflight: Arc<[AtomicU32; PARTITIONS as usize]>,
}

struct Owned {
    /// Bit `p` set: rows of partition `p` may be claimed.
    claimable: u64,
    /// The lease epoch of each partition held.
    epochs: [i64; PARTITIONS as usize],
    /// The lease owner (this instance) on a shared outbox; `None`: it owns everything (SQLite).
    owner: Option<Arc<str>>,
    /// Claim nothing after this (its leases may have expired); `None`: no leases (SQLite).
    fresh_until: Option<Instant>,
    /// Where the next claim starts: the highest `seq` of the last full batch (0: from the
    /// start). See [`Partitions::claim`].
    cursor: i64,
    /// When the next claim must look from the start again.
    rescan_at: Instant,
}

/// While a backlog drains, claims start after the last full batch; at least this often one
/// starts from the beginning, for rows that became due below it (retries, released leases).
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Rows of a claim, counted in flight until this is dropped (after their settlement, or when
/// the batch holding them is given up or lost to a panic).
pub struct InFlight {
    inflight: Arc<[AtomicU32; PARTITIONS as usize]>,
    partitions: Vec<i32>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for p in &self.partitions {
            if let Some(n) = usize::try_from(*p).ok().and_then(|p| self.inflight.get(p)) {
                // Never below zero, whatever happens.
                let _ = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
            }
        }
    }
}

impl Partitions {
    /// Every partition (a single instance: SQLite).
    pub fn all() -> Partitions {
        metrics::gauge!("postbox_partitions_owned").set(f64::from(PARTITIONS));
        Partitions::with(ALL, None)
    }

    /// No partition yet: [`own`] takes them, as `owner`.
    pub fn none(owner: &str) -> Partitions {
        Partitions::with(0, Some(Arc::from(owner)))
    }

    fn with(claimable: u64, owner: Option<Arc<str>>) -> Partitions {
        Partitions {
            owned: Arc::new(tokio::sync::Mutex::new(Owned {
                claimable,
                epochs: [0; PARTITIONS as usize],
                fresh_until: owner.as_ref().map(|_| Instant::now()),
                owner,
                cursor: 0,
                rescan_at: Instant::now(),
            })),
            inflight: Arc::new(std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    /// Claim due rows of the partitions this instance owns; they count as in flight until the
    /// returned [`InFlight`] is dropped. Ownership changes wait for a claim in progress, so a
    /// partition is never handed back while a row of it is between claim and settlement.
    ///
    /// While a backlog drains, each claim starts after the highest `seq` of the last full
    /// batch: otherwise every claim would walk past the rows of the batches still in flight
    /// (leased, not yet settled) and their dead row versions before it found a free one, which
    /// a PostgreSQL profile of the drain showed as its largest cost. A batch that is not full
    /// means the claim caught up: the next one starts from the beginning, as every claim does
    /// at least every [`RESCAN_EVERY`] and after ownership changes, so rows that became due
    /// below the cursor (retries, released leases, partitions taken over) are not left behind.
    pub async fn claim(
        &self,
        store: &Store,
        limit: u32,
        lease: Duration,
    ) -> StoreResult<(Vec<Claimed>, InFlight)> {
        let mut owned = self.owned.lock().await;
        let mut held = InFlight {
            inflight: self.inflight.clone(),
            partitions: Vec::new(),
        };
        if owned.claimable == 0 || owned.fresh_until.is_some_and(|t| Instant::now() >= t) {
            return Ok((Vec::new(), held));
        }
        let now = Instant::now();
        let after = if now >= owned.rescan_at {
            owned.rescan_at = now + RESCAN_EVERY;
            0
        } else {
            owned.cursor
        };
        let rows = match &owned.owner {
            None => store.claim(limit, lease, after, None).await?,
            Some(owner) => {
                let partitions = partitions_in(owned.claimable);
                let epochs: Vec<i64> = partitions
                    .iter()
                    .map(|p| owned.epochs[*p as usize])
                    .collect();
                let scope = ClaimScope {
                    partitions: &partitions,
                    epochs: &epochs,
                    owner,
                };
                store.claim(limit, lease, after, Some(&scope)).await?
            }
        };
        owned.cursor = if rows.len() < limit as usize {
            0
        } else {
            rows.iter().map(|r| r.seq).max().unwrap_or(0)
        };
        for row in &rows {
            if let Some(n) = usize::try_from(row.partition)
                .ok()
                .and_then(|p| self.inflight.get(p))
            {
                n.fetch_add(1, Ordering::AcqRel);
                held.partitions.push(row.partition);
            }
        }
        Ok((rows, held))
    }

    /// Whether this instance's view of its leases is still fresh: checked again right before a
    /// claimed batch is sent, since the process may have been stopped in between.
    pub async fn fresh(&self) -> bool {
        let owned = self.owned.lock().await;
        owned.fresh_until.is_none_or(|t| Instant::now() < t)
    }

    async fn claimable(&self) -> u64 {
        self.owned.lock().await.claimable
    }

    /// Claim from `mask` (with these epochs for partitions newly held) until `fresh_until`.
    async fn set(&self, mask: u64, epochs: &[(i32, i64)], fresh_until: Option<Instant>) {
        let mut owned = self.owned.lock().await;
        if owned.claimable != mask {
            // Partitions came or went: their rows may sit below the cursor.
            owned.cursor = 0;
        }
        owned.claimable = mask;
        for (p, e) in epochs {
            if let Some(slot) = usize::try_from(*p)
                .ok()
                .and_then(|p| owned.epochs.get_mut(p))
            {
                *slot = *e;
            }
        }
        if fresh_until.is_some() {
            owned.fresh_until = fresh_until;
        }
        metrics::gauge!("postbox_partitions_owned").set(f64::from(mask.count_ones()));
    }

    async fn set_claimable(&self, mask: u64) {
        self.set(mask, &[], None).await;
    }

    /// The partitions of `mask` with nothing in flight.
    async fn idle(&self, mask: u64) -> u64 {
        // After any claim in progress has counted its rows.
        let _claims = self.owned.lock().await;
        bits(mask)
            .filter(|p| self.inflight[*p as usize].load(Ordering::Acquire) == 0)
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
    instance: String,
    gate: PublishGate,
    relay: Arc<tokio::sync::Notify>,
    token: CancellationToken,
) {
    // A fresh start (also after a panic, whose state went with it): claim nothing until this
    // run has renewed or taken partitions itself.
    partitions.set_claimable(0).await;
    let mut owner = Owner {
        store,
        partitions,
        instance,
        lock_key: 0,
        gate,
        relay,
        presence: None,
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
    let _ = within(owner.store.leave(&owner.instance)).await;
    if let Some(conn) = owner.presence.take() {
        let _ = tokio::time::timeout(OWNERSHIP_TIMEOUT, conn.close()).await;
    }
    tracing::debug!("partition ownership given back");
}

struct Owner {
    store: PgStore,
    partitions: Partitions,
    /// This instance's id (the leases' owner).
    instance: String,
    /// Key of its presence advisory lock.
    lock_key: i32,
    /// Whether the relay can reach its broker.
    gate: PublishGate,
    /// Wakes the relay (to claim from partitions just taken over).
    relay: Arc<tokio::sync::Notify>,
    /// The session holding the presence lock: while it lives (and the heartbeat is fresh) this
    /// instance counts as alive.
    presence: Option<PgConnection>,
    /// Partitions whose lease this instance holds (claimable ones, and ones being handed back).
    held: u64,
    /// A lost ownership connection was logged (log once until it is back).
    warned: bool,
}

impl Owner {
    /// One round: heartbeat, renew, count the live instances, take or hand back partitions.
    async fn round(&mut self) -> anyhow::Result<()> {
        if self.presence.is_none() {
            // After a failure, wait for this instance's batches in flight to settle: the
            // partitions may be taken back by this instance and their row leases released,
            // which would publish rows it is still publishing a second time.
            if self.partitions.idle(ALL).await != ALL {
                return Ok(());
            }
            self.connect().await?;
        } else if let Some(conn) = self.presence.as_mut() {
            // The presence lock lives with this session: if it is gone, the others already
            // count this instance as dead and take its partitions.
            within(sqlx::query("select 1").execute(&mut *conn)).await?;
        }
        let publishing = self.gate.open();
        if !publishing && self.held == 0 {
            // Not counted as live while it cannot publish; nothing to hand back.
            within(self.store.leave(&self.instance)).await?;
            self.partitions.set_claimable(0).await;
            return Ok(());
        }
        let started = Instant::now();
        within(
            self.store
                .heartbeat(&self.instance, self.lock_key, LEASE_TTL),
        )
        .await?;
        let renewed = within(self.store.renew_partitions(&self.instance, LEASE_TTL)).await?;
        let fresh_until = Some(started + LEASE_TTL - SAFETY);
        let kept = mask_of(&renewed.iter().map(|(p, _)| *p).collect::<Vec<_>>());
        let lost = self.held & !kept;
        if lost != 0 {
            tracing::warn!(partitions = ?partitions_in(lost), "partition leases were taken over by another instance (this one was stopped or too slow to renew them)");
            metrics::counter!("postbox_partitions_lost_total")
                .increment(u64::from(lost.count_ones()));
        }
        self.held = kept;

        let (instances, rank) = within(self.store.live_instances(&self.instance)).await?;
        metrics::gauge!("postbox_instances").set(instances as f64);
        let share = if publishing {
            fair_share(instances, rank)
        } else {
            if self.partitions.claimable().await != 0 {
                tracing::warn!(
                    "broker unreachable for {}s: handing this instance's partitions to the others",
                    UNREACHABLE_FOR.as_secs()
                );
            }
            0
        };

        // Claimable: what is still held, with partitions being handed back taken back first,
        // then new ones, up to the share.
        let mut claimable = self.partitions.claimable().await & self.held;
        let draining = self.held & !claimable;
        let mut need = share.saturating_sub(claimable.count_ones());
        for p in bits(draining).take(need as usize) {
            claimable |= 1u64 << p;
        }
        need = share.saturating_sub(claimable.count_ones());
        let mut epochs = renewed;
        let mut acquired = 0;
        if need > 0 {
            let got = within(
                self.store
                    .acquire_partitions(&self.instance, need, LEASE_TTL),
            )
            .await?;
            if !got.is_empty() {
                let parts: Vec<i32> = got.iter().map(|(p, _)| *p).collect();
                acquired = mask_of(&parts);
                self.held |= acquired;
                claimable |= acquired;
                let released = within(self.store.release_partition_leases(&parts)).await?;
                metrics::counter!("postbox_partitions_acquired_total")
                    .increment(parts.len() as u64);
                if released > 0 {
                    metrics::counter!("postbox_partition_takeover_rows_total").increment(released);
                }
                tracing::info!(partitions = ?parts, released_leases = released, "took over partitions");
                epochs.extend(got);
            }
        }
        // Hand back what exceeds the share: first stop claiming from it...
        let extra = claimable.count_ones().saturating_sub(share);
        if extra > 0 {
            let give: Vec<i32> = bits(claimable).rev().take(extra as usize).collect();
            claimable &= !mask_of(&give);
        }
        self.partitions.set(claimable, &epochs, fresh_until).await;
        if acquired != 0 {
            // Their events (a dead or frozen owner's among them) need not wait for the poll.
            self.relay.notify_one();
        }
        // ...then release it once its batches in flight are settled.
        let idle = self.partitions.idle(self.held & !claimable).await;
        if idle != 0 {
            let give = partitions_in(idle);
            within(self.store.release_partitions(&self.instance, &give)).await?;
            self.held &= !idle;
            metrics::counter!("postbox_partitions_released_total").increment(give.len() as u64);
            tracing::info!(partitions = ?give, "handed partitions over");
        }
        Ok(())
    }

    /// Connect the presence session and take its advisory lock (a fresh random key).
    async fn connect(&mut self) -> anyhow::Result<()> {
        let opts = self
            .store
            .connect_options()
            .application_name("postbox-partition-owner")
            .options([
                ("tcp_keepalives_idle", "5"),
                ("tcp_keepalives_interval", "2"),
                ("tcp_keepalives_count", "3"),
            ]);
        let mut conn = within(PgConnection::connect_with(&opts)).await?;
        loop {
            let key = rand::rng().random_range(0..i32::MAX);
            let locked: bool = within(
                sqlx::query_scalar(&format!(
                    "select pg_try_advisory_lock({PRESENCE_CLASS}, $1)"
                ))
                .bind(key)
                .fetch_one(&mut conn),
            )
            .await?;
            if locked {
                self.lock_key = key;
                break;
            }
        }
        if self.warned {
            tracing::info!("partition ownership connection is back");
            self.warned = false;
        }
        self.presence = Some(conn);
        Ok(())
    }

    /// A round failed (the database, or the presence session): this instance's leases may be
    /// gone (others take them once it is no longer alive), so stop claiming at once and
    /// reconnect at the next round.
    async fn lost(&mut self, error: &anyhow::Error) {
        self.partitions.set_claimable(0).await;
        self.held = 0;
        if let Some(conn) = self.presence.take() {
            metrics::counter!("postbox_partition_ownership_lost_total").increment(1);
            // Do not wait for a broken server: closing only frees the lock sooner.
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.close()).await;
        }
        if !self.warned {
            tracing::warn!(error = %format!("{error:#}"), "partition ownership lost; not publishing until it is back");
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

    /// A relay task that panics while it holds claimed rows (its settler, say) must not leave
    /// them counted in flight: this instance could never hand those partitions over again.
    #[tokio::test]
    async fn rows_held_by_a_panicking_task_are_counted_out_of_flight() {
        use crate::outbox::{NewRow, WriteRequest};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::config::StoreKind::Sqlite {
            path: dir.path().join("o.db"),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let rows = (0..20)
            .map(|i| NewRow {
                event_id: format!("e{i}"),
                source: "/s".into(),
                event_type: "t".into(),
                version: "v1".into(),
                ce_type: "t".into(),
                subject: None,
                ordering_key: None,
                event_time: 0,
                routing_key: "events.t.v1".into(),
                body: b"{}".to_vec(),
                attributes: "{}".into(),
                content_hash: vec![0; 32],
                traceparent: None,
                api_key: None,
                tracestate: None,
            })
            .collect();
        store
            .commit(&[WriteRequest {
                rows,
                idempotency: None,
            }])
            .await
            .unwrap();
        let partitions = Partitions::all();
        let (claimed, held) = partitions
            .claim(&store, 100, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 20);
        assert_ne!(partitions.idle(ALL).await, ALL, "counted in flight");
        let settler = tokio::spawn(async move {
            let _held = held;
            panic!("a bug while settling");
        });
        assert!(settler.await.unwrap_err().is_panic());
        assert_eq!(partitions.idle(ALL).await, ALL);
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
