//! SQLite's hot path on one thread of its own: a group commit, a claim or a settlement runs
//! whole (`BEGIN` to `COMMIT`, every statement between) as one message to a thread holding its
//! own connection.
//!
//! Why: sqlx runs each SQLite connection on a thread and makes every statement a round trip to
//! it. A group commit was five or more of them (`BEGIN IMMEDIATE`, the inserts and their rows,
//! the payloads, `COMMIT`), a claim four, a settlement three, and SQLite takes one writer at a
//! time, so these round trips queued behind each other. Measured at 2,500 events/s on this
//! 2-core machine, a commit of ~11 events took 4-5 ms, of which the fsync is ~0.15 ms: the rest
//! was waiting for threads to be scheduled (`BEGIN` alone 0.75 ms, the relay's turn 1.4 ms),
//! and the one writer was busy all the time at half of peak. Here each operation costs one
//! hand-off each way.
//!
//! Semantics are those of the sqlx code in `sql.rs` (which PostgreSQL and SQLite's other
//! queries keep using): the same outcomes, except that the relay's leases live in memory
//! instead of the database (see [`Held`]). The statements are the same where they cost SQLite
//! nothing extra; where SQLite would build a temporary B-tree per execution (`RETURNING`, an
//! `in` list of one row) the lane says it another way.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    ops::Deref,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    Claimed, Settlement, Status, StoreResult, StoredRef, WriteOutcome, WriteRequest, now_micros,
    sql,
};

/// The update that records a publication (`$1` now), for the rows `$where` selects.
macro_rules! mark_published {
    ($where:literal) => {
        concat!(
            "update outbox set status = 'published', attempts = attempts + 1, ",
            "published_at = $1, updated_at = $1, lease_until = null, last_error = null where ",
            $where
        )
    };
}

/// Settle published rows: `$2` their `seq`s as a JSON array.
pub(super) const MARK_PUBLISHED: &str = mark_published!("seq in (select value from json_each($2))");

/// Settle one published row (the lane's form of [`MARK_PUBLISHED`]): `$2` its `seq`.
const MARK_ONE_PUBLISHED: &str = mark_published!("seq = $2");

/// Busy wait of a group commit (as the durable pool's).
const COMMIT_BUSY: Duration = Duration::from_secs(5);
/// Busy wait of a claim or settlement (as the relay pool's): see `sqlite.rs`.
const RELAY_BUSY: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<StoreResult<T>>;

enum Job {
    Commit(Vec<WriteRequest>, Reply<Vec<WriteOutcome>>),
    Claim {
        limit: u32,
        lease: Duration,
        after: i64,
        reply: Reply<Vec<Claimed>>,
    },
    Settle(Vec<Settlement>, Reply<()>),
}

/// The thread's mailbox. Cloning shares the thread.
#[derive(Clone)]
pub struct Lane {
    path: PathBuf,
    jobs: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
    /// The relay's leases: here rather than on the thread's stack, so that a thread started
    /// again (after a panic) still knows which rows are in flight.
    held: Arc<Mutex<Held>>,
}

impl Lane {
    /// A lane for the database at `path` (its thread starts on first use).
    pub fn new(path: &Path) -> Lane {
        Lane {
            path: path.to_owned(),
            jobs: Arc::new(Mutex::new(None)),
            held: Arc::new(Mutex::new(Held::default())),
        }
    }

    /// Commit a group (see `commit_group` in `sql.rs`).
    pub async fn commit(&self, reqs: &[WriteRequest]) -> StoreResult<Vec<WriteOutcome>> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Commit(reqs.to_vec(), tx))?;
        answer(rx).await
    }

    /// Claim due rows (see `claim_select` in `sql.rs` and [`Held`]; one instance, no
    /// partitions).
    pub async fn claim(
        &self,
        limit: u32,
        lease: Duration,
        after: i64,
    ) -> StoreResult<Vec<Claimed>> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Claim {
            limit,
            lease,
            after,
            reply: tx,
        })?;
        answer(rx).await
    }

    /// Record publish results.
    pub async fn settle(&self, results: &[Settlement]) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Settle(results.to_vec(), tx))?;
        answer(rx).await
    }

    /// Hand `job` to the thread, starting it (again) if it is not running.
    fn send(&self, job: Job) -> StoreResult<()> {
        let mut jobs = self
            .jobs
            .lock()
            .map_err(|_| lane_error("the SQLite thread's mailbox is poisoned"))?;
        let job = match jobs.as_ref() {
            Some(s) => match s.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel();
        let path = self.path.clone();
        let held = self.held.clone();
        std::thread::Builder::new()
            .name("postbox-sqlite".into())
            .spawn(move || run(&path, &held, &rx))
            .map_err(sqlx::Error::Io)?;
        tx.send(job)
            .map_err(|_| lane_error("the SQLite thread stopped at once"))?;
        *jobs = Some(tx);
        Ok(())
    }
}

async fn answer<T>(rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
    rx.await
        .unwrap_or_else(|_| Err(lane_error("the SQLite thread stopped during the operation")))
}

/// The thread: one connection, opened on the first job (and again after it failed to open).
fn run(path: &Path, held: &Mutex<Held>, jobs: &mpsc::Receiver<Job>) {
    let mut conn: Option<Lanes> = None;
    while let Ok(job) = jobs.recv() {
        if conn.is_none() {
            match Lanes::open(path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail(job, db(e));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = std::time::Instant::now();
        let op = match &job {
            Job::Commit(..) => "commit",
            Job::Claim { .. } => "claim",
            Job::Settle(..) => "settle",
        };
        match job {
            Job::Commit(reqs, reply) => {
                let out = c.durable().and_then(|c| commit(c, &reqs));
                let _ = reply.send(out);
            }
            Job::Claim {
                limit,
                lease,
                after,
                reply,
            } => {
                // A caller that stopped waiting (the relay's database timeout) takes no leases:
                // as a claim cancelled half-way rolls back, so its rows are not held back
                // until their leases run out.
                if reply.is_closed() {
                    continue;
                }
                let mut held = lock(held);
                let out = c
                    .relay()
                    .and_then(|c| claim(c, &mut held, limit, lease, after));
                if let Err(Ok(abandoned)) = reply.send(out) {
                    for r in abandoned {
                        held.release(r.seq, r.lease);
                    }
                }
            }
            Job::Settle(results, reply) => {
                let mut held = lock(held);
                let out = c.relay().and_then(|c| settle(c, &mut held, &results));
                let _ = reply.send(out);
            }
        }
        // The thread's busy time (the sum's rate) is how close SQLite's one writer is to full.
        metrics::histogram!("postbox_sqlite_lane_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
    }
}

/// The leases, also after a panic while they were held: a half-made change to them can at worst
/// publish a row twice, where refusing every later claim would stop the relay.
fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fail(job: Job, e: sqlx::Error) {
    match job {
        Job::Commit(_, r) => drop(r.send(Err(e))),
        Job::Claim { reply, .. } => drop(reply.send(Err(e))),
        Job::Settle(_, r) => drop(r.send(Err(e))),
    }
}

/// The connection and the durability it is set to: `synchronous=FULL` and the writer's busy
/// wait for commits (a 202 survives a power cut), `NORMAL` and the relay's for claims and
/// settlements (losing one only publishes an event again).
struct Lanes {
    conn: Connection,
    durable: Option<bool>,
}

impl Lanes {
    fn open(path: &Path) -> rusqlite::Result<Lanes> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Lanes {
            conn,
            durable: None,
        })
    }

    fn set(&mut self, durable: bool) -> StoreResult<&mut Connection> {
        if self.durable != Some(durable) {
            // A cached statement: `pragma_update` parses the pragma again at every switch,
            // and the lane switches twice per commit-claim-settle round.
            let (sync, busy) = if durable {
                ("pragma synchronous = full", COMMIT_BUSY)
            } else {
                ("pragma synchronous = normal", RELAY_BUSY)
            };
            self.conn
                .prepare_cached(sync)
                .and_then(|mut s| s.execute([]))
                .map_err(db)?;
            self.conn.busy_timeout(busy).map_err(db)?;
            self.durable = Some(durable);
        }
        Ok(&mut self.conn)
    }

    fn durable(&mut self) -> StoreResult<&mut Connection> {
        self.set(true)
    }

    fn relay(&mut self) -> StoreResult<&mut Connection> {
        self.set(false)
    }
}

/// A transaction begun and ended by cached statements (rolled back when dropped unfinished).
/// rusqlite's `Transaction` runs `BEGIN` and `COMMIT` through `execute_batch`, which parses
/// them again every time: with the pragma switches that was about a quarter of the lane's
/// instructions per event at a moderate rate (callgrind, one event per commit).
struct Tx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Tx<'c> {
    /// `BEGIN IMMEDIATE` (takes the write lock now) or `BEGIN DEFERRED` (a read snapshot).
    fn begin(conn: &'c Connection, immediate: bool) -> rusqlite::Result<Tx<'c>> {
        let sql = if immediate {
            "begin immediate"
        } else {
            "begin deferred"
        };
        conn.prepare_cached(sql)?.execute([])?;
        Ok(Tx { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("commit")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // As rusqlite's `Transaction`: whatever ended it (an error, a failed `COMMIT`), a
        // transaction still open is rolled back.
        if self.open && !self.conn.is_autocommit() {
            let _ = self
                .conn
                .prepare_cached("rollback")
                .and_then(|mut s| s.execute([]));
        }
    }
}

/// `$N` placeholders (shared with PostgreSQL) as SQLite's numbered `?N`.
fn numbered(q: &str) -> String {
    q.replace('$', "?")
}

fn commit(c: &mut Connection, reqs: &[WriteRequest]) -> StoreResult<Vec<WriteOutcome>> {
    let now = now_micros();
    let tx = Tx::begin(c, true).map_err(db)?;
    // Idempotency-Key replays and reuses first; a key twice in one group is "in progress".
    let mut outcomes: Vec<Option<WriteOutcome>> = Vec::with_capacity(reqs.len());
    let mut group_keys = HashSet::new();
    for req in reqs {
        let seen = req
            .idempotency
            .as_ref()
            .is_some_and(|(k, _)| !group_keys.insert(k.as_str()));
        outcomes.push(if seen {
            Some(WriteOutcome::InProgress)
        } else {
            check_key(&tx, req)?
        });
    }
    // Every row of the remaining requests; remember which were new, and whose.
    let mut inserted: HashMap<(&str, &str), (i64, usize)> = HashMap::new();
    {
        let insert = format!(
            "{}values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?14, ?15){}",
            sql::INSERT_HEAD,
            sql::INSERT_TAIL_QUIET
        );
        let mut rows = tx.prepare_cached(&insert).map_err(db)?;
        let mut payloads = tx
            .prepare_cached(&format!("{}values (?1, ?2, ?3)", sql::INSERT_PAYLOAD_HEAD))
            .map_err(db)?;
        for (i, req) in reqs.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            for r in &req.rows {
                let inserted_rows = rows
                    .execute(params![
                        r.event_id,
                        r.source,
                        r.event_type,
                        r.version,
                        r.ce_type,
                        r.subject,
                        r.ordering_key,
                        r.event_time,
                        r.routing_key,
                        r.content_hash,
                        r.traceparent,
                        r.tracestate,
                        r.api_key,
                        now,
                        r.partition(),
                    ])
                    .map_err(db)?;
                // Nothing inserted: the (source, id) exists (`on conflict do nothing`).
                let seq = (inserted_rows > 0).then(|| tx.last_insert_rowid());
                // Twice in one group: the first inserted it and gets its payload.
                if let Some(seq) = seq {
                    inserted.insert((r.source.as_str(), r.event_id.as_str()), (seq, i));
                    payloads
                        .execute(params![seq, r.body, r.attributes])
                        .map_err(db)?;
                }
            }
        }
    }
    // Rows that were not inserted already existed: the same content is a replay.
    for (i, req) in reqs.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let mut reused = None;
        let mut elsewhere = false;
        let mut fresh = Vec::new();
        for r in &req.rows {
            match inserted.get(&(r.source.as_str(), r.event_id.as_str())) {
                // Only rows this request inserted itself are its own.
                Some((seq, owner)) if *owner == i => fresh.push(*seq),
                Some(_) => elsewhere = true,
                None => {
                    let prior: Option<Vec<u8>> = tx
                        .prepare_cached(&numbered(sql::SELECT_HASH))
                        .and_then(|mut s| {
                            s.query_row(params![r.source, r.event_id], |row| row.get(0))
                                .optional()
                        })
                        .map_err(db)?;
                    if prior.as_ref() != Some(&r.content_hash) && reused.is_none() {
                        reused = Some(format!(
                            "event id `{}` of source `{}` was already used for different content",
                            r.event_id, r.source
                        ));
                    }
                }
            }
        }
        if elsewhere || reused.is_some() {
            // Nothing of this request is stored: take back the rows it inserted.
            for seq in fresh {
                tx.execute(&numbered(sql::DELETE_PAYLOAD), params![seq])
                    .map_err(db)?;
                tx.execute(&numbered(sql::DELETE_ROW), params![seq])
                    .map_err(db)?;
            }
            outcomes[i] = Some(match reused {
                Some(msg) if !elsewhere => WriteOutcome::KeyReused(msg),
                _ => WriteOutcome::InProgress,
            });
            continue;
        }
        let refs: Vec<StoredRef> = req
            .rows
            .iter()
            .map(|r| StoredRef {
                id: r.event_id.clone(),
                source: r.source.clone(),
            })
            .collect();
        if let Some((key, hash)) = &req.idempotency {
            let response =
                serde_json::to_string(&refs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            tx.execute(
                &numbered(sql::INSERT_KEY),
                params![key, hash, response, now],
            )
            .map_err(db)?;
        }
        outcomes[i] = Some(WriteOutcome::Stored {
            refs,
            replayed: fresh.is_empty(),
        });
    }
    tx.commit().map_err(db)?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(WriteOutcome::KeyReused(String::new())))
        .collect())
}

/// The `Idempotency-Key` verdict, if the key was seen before.
fn check_key(tx: &Connection, req: &WriteRequest) -> StoreResult<Option<WriteOutcome>> {
    let Some((key, hash)) = &req.idempotency else {
        return Ok(None);
    };
    let prior: Option<(Vec<u8>, String)> = tx
        .prepare_cached(&numbered(sql::SELECT_KEY))
        .and_then(|mut s| {
            s.query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    let Some((prior_hash, response)) = prior else {
        return Ok(None);
    };
    if &prior_hash != hash {
        return Ok(Some(WriteOutcome::KeyReused(format!(
            "Idempotency-Key `{key}` was already used for a different request"
        ))));
    }
    let refs: Vec<StoredRef> =
        serde_json::from_str(&response).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Some(WriteOutcome::Stored {
        refs,
        replayed: true,
    }))
}

/// The rows this process has claimed and not settled: `seq` → the end of its lease.
///
/// One process owns a SQLite outbox (its start releases every lease a previous one left), so a
/// lease need not be written to the database: a claim is a read, and a claimed row is written
/// once, when it is settled. (Written, the lease was a second write of every row, and a second
/// write transaction per batch, on the thread the 202s' commits wait for.) A row whose lease ran
/// out is claimable again, and a settlement of a lease that is no longer the row's changes
/// nothing, as with the leases PostgreSQL stores; a late retry of a lease that ran out but was
/// not taken again still applies (for [`LATE`]). If this process stops, the database holds no
/// lease: every unsettled row is published again by the next start, at once. The start takes
/// a lock that keeps a second process away (`SqliteStore::lock_for_this_process`).
#[derive(Default)]
struct Held {
    until: HashMap<i64, i64>,
    /// The last settlement failed to commit: a claim first checks that the database takes
    /// writes again, so that a full disk does not have the relay publish batch after batch it
    /// cannot record (each one published again when its lease runs out).
    settle_failed: bool,
}

impl Held {
    /// Forget the leases over for longer than [`LATE`] at `now`.
    fn expire(&mut self, now: i64) {
        self.until.retain(|_, until| *until >= now - LATE);
    }

    /// How many rows with a `seq` above `after` are held at `now` (a claim skips them).
    fn count_above(&self, now: i64, after: i64) -> u64 {
        self.until
            .iter()
            .filter(|&(seq, until)| *seq > after && *until >= now)
            .count() as u64
    }

    /// Whether `seq` is held at `now`.
    fn holds_at(&self, seq: i64, now: i64) -> bool {
        self.until.get(&seq).is_some_and(|until| *until >= now)
    }

    /// Whether `lease` is `seq`'s current lease.
    fn holds(&self, seq: i64, lease: i64) -> bool {
        self.until.get(&seq) == Some(&lease)
    }

    /// Give `seq` back if `lease` is still its lease.
    fn release(&mut self, seq: i64, lease: i64) {
        if self.holds(seq, lease) {
            self.until.remove(&seq);
        }
    }
}

/// How long a lease that ran out is remembered (µs): a late retry of it still applies until
/// the row is claimed again, as a stored lease would let it.
const LATE: i64 = 600_000_000;

/// A retry or a death of a row this process holds (see [`sql::RETRY`]; the lease is checked
/// in memory, see [`Held`]).
const RETRY_HELD: &str = "update outbox set attempts = $1, last_error = $2, next_attempt_at = $3, \
     status = $4, lease_until = null, updated_at = $5 where seq = $6 and status = 'pending'";

fn claim(
    c: &mut Connection,
    held: &mut Held,
    limit: u32,
    lease: Duration,
    after: i64,
) -> StoreResult<Vec<Claimed>> {
    let now = now_micros();
    let lease_until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
    if held.settle_failed {
        // A settlement failed: claim nothing until a write commits again.
        let tx = Tx::begin(c, true).map_err(db)?;
        tx.prepare_cached(&numbered(sql::PROBE))
            .and_then(|mut q| q.execute(params![now]))
            .map_err(db)?;
        tx.commit().map_err(db)?;
        held.settle_failed = false;
    }
    held.expire(now);
    // The rows and their payloads from one snapshot, in one statement. Rows this process
    // holds are skipped here, not in SQL (a `not in` list is a temporary table built for each
    // claim): as many more rows are read as are held above `after`.
    let fetch = u64::from(limit) + held.count_above(now, after);
    let tx = Tx::begin(c, false).map_err(db)?;
    let mut claimed = Vec::new();
    let mut missing = 0;
    {
        let mut q = tx
            .prepare_cached(&numbered(&sql::claim_select(
                &format!("{}, p.body, p.attributes", sql::CLAIM_COLUMNS),
                "left join outbox_payload p using (seq)",
                "",
                "",
            )))
            .map_err(db)?;
        let mut rows = q
            .query(params![
                rusqlite::types::Null,
                now,
                i64::try_from(fetch).unwrap_or(i64::MAX),
                after
            ])
            .map_err(db)?;
        while claimed.len() < limit as usize
            && let Some(r) = rows.next().map_err(db)?
        {
            let seq: i64 = r.get(0).map_err(db)?;
            if held.holds_at(seq, now) {
                continue;
            }
            // By position, in the columns' order: a lookup by name compares every column's
            // name for every field of every row (measured: ~2% of the relay's CPU in a NATS
            // drain).
            let body: Option<Vec<u8>> = r.get(12).map_err(db)?;
            missing += usize::from(body.is_none());
            claimed.push(Claimed {
                seq,
                event_id: r.get(1).map_err(db)?,
                source: r.get(2).map_err(db)?,
                ce_type: r.get(3).map_err(db)?,
                routing_key: r.get(4).map_err(db)?,
                body: body.unwrap_or_default(),
                attributes: r
                    .get::<_, Option<String>>(13)
                    .map_err(db)?
                    .unwrap_or_default(),
                traceparent: r.get(5).map_err(db)?,
                tracestate: r.get(6).map_err(db)?,
                attempts: r.get(7).map_err(db)?,
                created_at: r.get(8).map_err(db)?,
                partition: r.get(9).map_err(db)?,
                keyed: r.get(11).map_err(db)?,
                lease: lease_until,
            });
        }
    }
    if missing > 0 {
        return Err(sqlx::Error::Protocol(format!(
            "{missing} of {} claimed events have no row in outbox_payload",
            claimed.len()
        )));
    }
    drop(tx);
    for r in &claimed {
        held.until.insert(r.seq, lease_until);
    }
    Ok(claimed)
}

fn settle(c: &mut Connection, held: &mut Held, results: &[Settlement]) -> StoreResult<()> {
    let settled = write_settlements(c, held, results);
    match settled {
        Ok(true) => held.settle_failed = false,
        Ok(false) => {}
        Err(_) => held.settle_failed = true,
    }
    if settled.is_ok() {
        for s in results {
            match s {
                Settlement::Published { seq } => drop(held.until.remove(seq)),
                Settlement::Failed { seq, lease, .. } | Settlement::Released { seq, lease } => {
                    held.release(*seq, *lease);
                }
            }
        }
    }
    settled.map(|_| ())
}

/// The settlements' writes, in one transaction. A retry or release whose lease is no longer
/// held changes nothing; a publication is always recorded. Returns whether anything was
/// written.
fn write_settlements(c: &mut Connection, held: &Held, results: &[Settlement]) -> StoreResult<bool> {
    let now = now_micros();
    let published: Vec<i64> = results
        .iter()
        .filter_map(|s| match s {
            Settlement::Published { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    let retries = results
        .iter()
        .any(|s| matches!(s, Settlement::Failed { seq, lease, .. } if held.holds(*seq, *lease)));
    if published.is_empty() && !retries {
        return Ok(false);
    }
    let tx = Tx::begin(c, true).map_err(db)?;
    // Every execution of an update of `outbox` builds a temporary table for the `status`
    // check's list, and an `in` list (`json_each`) is one more: one row is cheapest by its
    // `seq`, several in one statement.
    match published.as_slice() {
        [] => {}
        [seq] => {
            tx.prepare_cached(&numbered(MARK_ONE_PUBLISHED))
                .and_then(|mut s| s.execute(params![now, seq]))
                .map_err(db)?;
        }
        seqs => {
            let seqs = serde_json::to_string(seqs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            tx.prepare_cached(&numbered(MARK_PUBLISHED))
                .and_then(|mut s| s.execute(params![now, seqs]))
                .map_err(db)?;
        }
    }
    for s in results {
        match s {
            Settlement::Published { .. } => {}
            Settlement::Failed {
                seq,
                attempts,
                error,
                next_attempt_at,
                dead,
                lease,
            } if held.holds(*seq, *lease) => {
                let status = if *dead { Status::Dead } else { Status::Pending };
                tx.prepare_cached(&numbered(RETRY_HELD))
                    .and_then(|mut q| {
                        q.execute(params![
                            attempts,
                            error,
                            next_attempt_at,
                            status.as_str(),
                            now,
                            seq
                        ])
                    })
                    .map_err(db)?;
            }
            // A stale retry, or a release (nothing stored to undo).
            Settlement::Failed { .. } | Settlement::Released { .. } => {}
        }
    }
    tx.commit().map_err(db)?;
    Ok(true)
}

/// A SQLite error as the store reports every database error (`sqlx::Error::Database`), with
/// SQLite's message ("database or disk is full", "database is locked") and extended code.
fn db(e: rusqlite::Error) -> sqlx::Error {
    let code = e.sqlite_error().map(|c| c.extended_code.to_string());
    sqlx::Error::Database(Box::new(LaneError {
        message: e.to_string(),
        code,
    }))
}

fn lane_error(message: &str) -> sqlx::Error {
    sqlx::Error::Database(Box::new(LaneError {
        message: message.to_owned(),
        code: None,
    }))
}

#[derive(Debug)]
struct LaneError {
    message: String,
    code: Option<String>,
}

impl std::fmt::Display for LaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LaneError {}

impl sqlx::error::DatabaseError for LaneError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}
