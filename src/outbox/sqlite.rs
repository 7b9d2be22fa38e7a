//! SQLite outbox: one embedded file in WAL mode with `synchronous=FULL`, so a 202 survives a
//! power cut; group commit makes that fsync cheap per event.

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use super::{StoreResult, sql::shared_store_impl};

/// SQLite-backed outbox.
#[derive(Clone)]
pub struct SqliteStore {
    /// Accepting events: `synchronous=FULL`, a 202 survives a power cut.
    pool: SqlitePool,
    /// Pruning, and releasing leases a previous version stored: `synchronous=NORMAL` (no
    /// fsync per commit). Losing one in a power cut only prunes it again.
    relay_pool: SqlitePool,
    /// The hot path's thread and connection (see `sqlite_lane`).
    lane: super::sqlite_lane::Lane,
    /// SQLite has one writer at a time. Taking turns here, instead of in SQLite's busy handler
    /// (which sleeps in steps of up to 100 ms), keeps commit latency flat under load.
    writes: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The database file.
    path: std::path::PathBuf,
    /// This process's lock on the outbox, once a server took it (see
    /// [`SqliteStore::lock_for_this_process`]).
    owner: std::sync::Arc<std::sync::OnceLock<std::fs::File>>,
}

impl SqliteStore {
    /// Open (creating the file and its directory if needed).
    pub async fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = super::pool::guarded(SqlitePoolOptions::new(), "sqlite")
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        let relay_pool = super::pool::guarded(SqlitePoolOptions::new(), "sqlite-relay")
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            // A short busy wait: the relay waits for another process's write lock while
            // holding this process's turn to write (`writes`), and a request's commit queued
            // behind it must still fail within its own busy timeout (a clean "nothing was
            // stored" 503), not after both. A claim or settle that gives up is retried.
            .connect_with(
                opts.synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(1)),
            )
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        Ok(SqliteStore {
            pool,
            relay_pool,
            lane: super::sqlite_lane::Lane::new(path),
            writes: Default::default(),
            path: path.to_owned(),
            owner: Default::default(),
        })
    }

    /// Take the outbox for this process: an exclusive lock (`flock`) on `<database>.lock`,
    /// held until the process ends (the kernel drops it when the process dies, `kill -9` too).
    /// The relay holds its leases in memory, so two servers on one file would each publish
    /// every event; the second is refused instead.
    pub fn lock_for_this_process(&self) -> anyhow::Result<()> {
        if self.owner.get().is_some() {
            return Ok(());
        }
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        let lock = std::path::PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .with_context(|| format!("opening {}", lock.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another postbox process serves the SQLite outbox {} (it holds {}): a SQLite \
                 outbox has one process; stop the other one, or use PostgreSQL for several \
                 instances",
                self.path.display(),
                lock.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock.display()));
            }
        }
        let _ = self.owner.set(file);
        Ok(())
    }

    /// Begin the group commit's transaction holding the write lock (`BEGIN IMMEDIATE`). With a
    /// deferred `BEGIN`, a request whose first statement reads (the `Idempotency-Key` lookup)
    /// holds a WAL read snapshot; upgrading it to a write while the relay writes fails at once
    /// with `SQLITE_BUSY` (SQLite does not call the busy handler for a read-to-write upgrade,
    /// and the snapshot may be stale), which answered 503 instead of waiting `busy_timeout`.
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        super::pool::begin(&self.pool, Some("begin immediate")).await
    }

    /// Group commits, claims and settlements: whole, on one thread (see `sqlite_lane`).
    fn lane(&self) -> Option<&super::sqlite_lane::Lane> {
        Some(&self.lane)
    }

    /// Pruning: on the relay's connections, whose short busy wait makes a prune that meets
    /// another process's write lock give up (it runs again next round) instead of holding this
    /// process's turn to write for 5 s, which a request's commit queued behind it would add to
    /// its own busy wait (10 s: answered "may be stored" instead of "nothing was stored").
    /// Losing a prune in a power cut only prunes it again.
    fn upkeep_pool(&self) -> &SqlitePool {
        &self.relay_pool
    }

    /// Wait for this process's turn to write.
    async fn serialize_writes(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writes.lock().await)
    }

    /// Release every lease stored in the database (see [`super::Store::take_over`]).
    pub async fn release_leases(&self) -> StoreResult<()> {
        sqlx::query("update outbox set lease_until = null where lease_until is not null")
            .execute(&self.relay_pool)
            .await
            .map(|_| ())
    }

    async fn run_migrations(&self) -> Result<(), sqlx::migrate::MigrateError> {
        Self::migrator().run(&self.pool).await
    }

    /// The migrations under `migrations/sqlite/`, embedded in the binary.
    pub fn migrator() -> Migrator {
        let migrations = vec![
            Migration::new(
                1,
                "outbox".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0001_outbox.sql").into(),
                false,
            ),
            Migration::new(
                2,
                "ordering key index".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0002_ordering_key_index.sql").into(),
                false,
            ),
            Migration::new(
                3,
                "api key".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0003_api_key.sql").into(),
                false,
            ),
            Migration::new(
                4,
                "partitions".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0004_partitions.sql").into(),
                false,
            ),
            Migration::new(
                5,
                "tracestate".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0005_tracestate.sql").into(),
                false,
            ),
            Migration::new(
                6,
                "payload table".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0006_payload.sql").into(),
                false,
            ),
            Migration::new(
                7,
                "writer probe".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0007_writer_probe.sql").into(),
                false,
            ),
            Migration::new(
                10,
                "search index".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0010_search_index.sql").into(),
                false,
            ),
            Migration::new(
                11,
                "schema registry".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0011_schema_registry.sql").into(),
                false,
            ),
            Migration::new(
                12,
                "fewer indexes".into(),
                MigrationType::Simple,
                include_str!("../../migrations/sqlite/0012_fewer_indexes.sql").into(),
                false,
            ),
        ];
        Migrator {
            migrations: migrations.into(),
            ..Migrator::DEFAULT
        }
    }
}

impl SqliteStore {
    /// `seq` in the list bound as `$1` (a JSON array).
    const SEQ_IN_1: &'static str = "in (select value from json_each($1))";

    fn bind_seqs<'q>(
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        seqs: &[i64],
    ) -> StoreResult<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
        let ids = serde_json::to_string(seqs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        Ok(query.bind(ids))
    }

    /// New rows (`INSERT … ON CONFLICT DO NOTHING`), then the payloads of those inserted.
    /// Commits go through the lane; this serves the shared code path.
    async fn insert_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rows: &[&super::NewRow],
        now: i64,
    ) -> StoreResult<Vec<(i64, String, String)>> {
        use sqlx::Row as _;
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(super::sql::INSERT_HEAD);
        qb.push_values(rows, |mut b, r| {
            b.push_bind(r.event_id.as_str())
                .push_bind(r.source.as_str())
                .push_bind(r.event_type.as_str())
                .push_bind(r.version.as_str())
                .push_bind(r.ce_type.as_str())
                .push_bind(r.subject.as_deref())
                .push_bind(r.ordering_key.as_deref())
                .push_bind(r.event_time)
                .push_bind(r.routing_key.as_str())
                .push_bind(r.content_hash.as_slice())
                .push_bind(r.traceparent.as_deref())
                .push_bind(r.tracestate.as_deref())
                .push_bind(r.api_key.as_deref())
                .push_bind(now)
                .push_bind(now)
                .push_bind(now)
                .push_bind(r.partition());
        });
        qb.push(super::sql::INSERT_TAIL);
        let mut fresh = std::collections::HashMap::new();
        for row in qb.build().fetch_all(&mut **tx).await? {
            let seq: i64 = row.try_get(0)?;
            let source: String = row.try_get(1)?;
            let id: String = row.try_get(2)?;
            fresh.insert((source, id), seq);
        }
        // The first of a (source, id) twice in `rows` is the one inserted.
        let mut out = Vec::with_capacity(fresh.len());
        let mut payloads = Vec::with_capacity(fresh.len());
        for r in rows {
            if let Some((key, seq)) = fresh.remove_entry(&(r.source.clone(), r.event_id.clone())) {
                payloads.push((seq, *r));
                out.push((seq, key.0, key.1));
            }
        }
        if !payloads.is_empty() {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(super::sql::INSERT_PAYLOAD_HEAD);
            qb.push_values(&payloads, |mut b, (seq, r)| {
                b.push_bind(*seq)
                    .push_bind(r.body.as_slice())
                    .push_bind(r.attributes.as_str());
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(out)
    }

    /// A claim with a partition scope. Only PostgreSQL outboxes split the partitions between
    /// instances; an embedded SQLite outbox has one instance, which owns every partition and
    /// claims through the lane, so no caller makes one.
    async fn claim_rows(
        &self,
        _limit: u32,
        _lease: std::time::Duration,
        _after: i64,
        _scope: Option<&super::ClaimScope<'_>>,
    ) -> StoreResult<Vec<super::Claimed>> {
        Err(sqlx::Error::Protocol(
            "a SQLite outbox has one instance, which claims every partition: \
             a claim with a partition scope is for PostgreSQL"
                .into(),
        ))
    }

    /// One statement for the whole batch: the seqs travel as one JSON array.
    async fn mark_published<'c>(
        conn: impl sqlx::SqliteExecutor<'c>,
        seqs: &[i64],
        now: i64,
    ) -> StoreResult<()> {
        let ids = serde_json::to_string(seqs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(super::sqlite_lane::MARK_PUBLISHED)
            .bind(now)
            .bind(ids)
            .execute(conn)
            .await
            .map(|_| ())
    }
}

super::schemas::schema_store_impl!(SqliteStore);
shared_store_impl!(SqliteStore, sqlx::Sqlite, "SQLite");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{OutboxStore, WriteOutcome, WriteRequest};

    /// A prune that meets another process's write lock gives up after the relay's short busy
    /// wait, not the writer's 5 s: it holds this process's turn to write meanwhile, and a
    /// request's commit queued behind it used to wait 5 s for the prune, then 5 s of its own,
    /// and was answered "may be stored" at the 10 s commit timeout instead of a clean "nothing
    /// was stored" (seen in CI when the first prune ran just after the test took the lock).
    #[tokio::test]
    async fn a_prune_blocked_by_another_writer_gives_up_quickly() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.migrate().await.unwrap();
        let mut other =
            sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
                .await
                .unwrap();
        sqlx::raw_sql("begin exclusive")
            .execute(&mut other)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let pruned = store.prune(crate::outbox::now_micros(), 100).await;
        let took = started.elapsed();
        assert!(pruned.is_err(), "the outbox is locked: {pruned:?}");
        assert!(
            took < Duration::from_secs(3),
            "a blocked prune held the turn to write for {took:?}"
        );
        let payloads = store
            .prune_payloads(crate::outbox::now_micros(), 0, 100)
            .await;
        assert!(started.elapsed() < Duration::from_secs(5), "{payloads:?}");
        sqlx::raw_sql("rollback").execute(&mut other).await.unwrap();
        assert_eq!(
            store.prune(crate::outbox::now_micros(), 100).await.unwrap(),
            0
        );
    }

    /// SQLite ends a transaction by itself on `SQLITE_FULL`, `SQLITE_IOERR` or `SQLITE_NOMEM`;
    /// sqlx's `ROLLBACK` then fails and its transaction depth stays at 1. Such a connection
    /// used to go back to the pool and fail every later `BEGIN IMMEDIATE` ("attempted to call
    /// begin_with at non-zero transaction depth") until its 30-minute lifetime ran out: after
    /// a full disk, every POST answered 503 until a restart.
    #[tokio::test]
    async fn a_connection_whose_transaction_the_database_ended_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("o.db")).await.unwrap();
        store.migrate().await.unwrap();
        // Every connection of both pools, desynchronised the way a disk-full commit does it.
        for pool in [&store.pool, &store.relay_pool] {
            let mut txs = Vec::new();
            for _ in 0..pool.options().get_max_connections() {
                let mut tx = pool.begin().await.unwrap();
                sqlx::raw_sql("rollback").execute(&mut *tx).await.unwrap();
                txs.push(tx);
            }
            drop(txs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = store
            .commit(&[WriteRequest {
                rows: Vec::new(),
                idempotency: None,
            }])
            .await
            .expect("the writer commits again");
        assert!(matches!(out[0], WriteOutcome::Stored { .. }));
        store.probe().await.expect("the probe commits");
        store
            .claim(10, Duration::from_secs(1), 0, None)
            .await
            .expect("the relay claims");
    }
}
