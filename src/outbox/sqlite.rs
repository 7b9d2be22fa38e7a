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
    /// The relay's leases and settlements: `synchronous=NORMAL` (no fsync per commit). Losing
    /// one in a power cut only publishes an event again, which at-least-once allows.
    relay_pool: SqlitePool,
    /// SQLite has one writer at a time. Taking turns here, instead of in SQLite's busy handler
    /// (which sleeps in steps of up to 100 ms), keeps commit latency flat under load.
    writes: std::sync::Arc<tokio::sync::Mutex<()>>,
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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        let relay_pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.synchronous(SqliteSynchronous::Normal))
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        Ok(SqliteStore {
            pool,
            relay_pool,
            writes: Default::default(),
        })
    }

    /// Begin the group commit's transaction holding the write lock (`BEGIN IMMEDIATE`). With a
    /// deferred `BEGIN`, a request whose first statement reads (the `Idempotency-Key` lookup)
    /// holds a WAL read snapshot; upgrading it to a write while the relay writes fails at once
    /// with `SQLITE_BUSY` (SQLite does not call the busy handler for a read-to-write upgrade,
    /// and the snapshot may be stale), which answered 503 instead of waiting `busy_timeout`.
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("begin immediate").await
    }

    /// Wait for this process's turn to write.
    async fn serialize_writes(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writes.lock().await)
    }

    /// Release every lease (see [`super::Store::release_stale_leases`]).
    pub async fn release_leases(&self) -> StoreResult<()> {
        sqlx::query("update outbox set lease_until = null where lease_until is not null")
            .execute(&self.relay_pool)
            .await
            .map(|_| ())
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
        ];
        Migrator {
            migrations: migrations.into(),
            ..Migrator::DEFAULT
        }
    }
}

impl SqliteStore {
    /// One writer at a time in SQLite: nothing to skip.
    const CLAIM_LOCK: &'static str = "";

    /// The claim's partitions travel as one JSON array (`$4`).
    const PARTITION_FILTER: &'static str =
        "and o.partition_id in (select value from json_each($4))";

    fn bind_partitions<'q>(
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        partitions: &[i32],
    ) -> StoreResult<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
        let ids =
            serde_json::to_string(partitions).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        Ok(query.bind(ids))
    }

    /// `seq` in the list bound as `$1` (a JSON array).
    const SEQ_IN_1: &'static str = "in (select value from json_each($1))";

    fn bind_seqs<'q>(
        query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
        seqs: &[i64],
    ) -> StoreResult<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
        let ids = serde_json::to_string(seqs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        Ok(query.bind(ids))
    }

    /// One statement for the whole batch: the seqs travel as one JSON array.
    async fn mark_published(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        seqs: &[i64],
        now: i64,
    ) -> StoreResult<()> {
        let ids = serde_json::to_string(seqs).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "update outbox set status = 'published', attempts = attempts + 1, published_at = $1, \
             updated_at = $1, lease_until = null, last_error = null \
             where seq in (select value from json_each($2))",
        )
        .bind(now)
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map(|_| ())
    }
}

shared_store_impl!(SqliteStore, sqlx::Sqlite, "SQLite");
