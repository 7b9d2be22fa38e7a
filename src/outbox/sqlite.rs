//! SQLite outbox: one embedded file in WAL mode with `synchronous=FULL`, so a 202 survives a
//! power cut; group commit makes that fsync cheap per event.

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use super::{
    Claimed, EventRecord, OutboxStore, Settlement, Stats, StoreResult, WriteOutcome, WriteRequest,
    now_micros,
    sql::{self, claimed_from_row, shared_store_impl},
};

/// SQLite-backed outbox.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
            .connect_with(opts)
            .await
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        Ok(SqliteStore { pool })
    }

    /// Release every lease (see [`super::Store::release_stale_leases`]).
    pub async fn release_leases(&self) -> StoreResult<()> {
        sqlx::query("update outbox set lease_until = null where lease_until is not null")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// The migrations under `migrations/sqlite/`, embedded in the binary.
    pub fn migrator() -> Migrator {
        Migrator::with_migrations(vec![Migration::new(
            1,
            "outbox".into(),
            MigrationType::Simple,
            include_str!("../../migrations/sqlite/0001_outbox.sql").into_sql_str(),
            false,
        )])
    }
}

shared_store_impl!(SqliteStore, sqlx::Sqlite);

impl OutboxStore for SqliteStore {
    async fn migrate(&self) -> anyhow::Result<()> {
        Self::migrator()
            .run(&self.pool)
            .await
            .context("migrating SQLite outbox")
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    async fn commit(&self, reqs: &[WriteRequest]) -> StoreResult<Vec<WriteOutcome>> {
        self.commit_group(reqs).await
    }

    async fn find(&self, id: &str, source: Option<&str>) -> StoreResult<Vec<EventRecord>> {
        self.find_events(id, source).await
    }

    async fn claim(&self, limit: u32, lease: Duration) -> StoreResult<Vec<Claimed>> {
        let now = now_micros();
        let lease_until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        let q = format!(
            "update outbox set lease_until = $1 where seq in \
             (select seq from outbox where status = 'pending' and next_attempt_at <= $2 \
              and (lease_until is null or lease_until < $2) order by seq limit $3) \
             returning {}",
            sql::CLAIM_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(lease_until)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            claimed.push(claimed_from_row!(r));
        }
        // RETURNING does not promise an order; publish in commit order.
        claimed.sort_by_key(|c| c.seq);
        Ok(claimed)
    }

    async fn settle(&self, results: &[Settlement]) -> StoreResult<()> {
        let now = now_micros();
        let published: Vec<i64> = results
            .iter()
            .filter_map(|s| match s {
                Settlement::Published { seq } => Some(*seq),
                _ => None,
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        if !published.is_empty() {
            // One statement for the whole batch: the seqs travel as one JSON array.
            let ids =
                serde_json::to_string(&published).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query(
                "update outbox set status = 'published', attempts = attempts + 1, published_at = $1, \
                 updated_at = $1, lease_until = null, last_error = null \
                 where seq in (select value from json_each($2))",
            )
            .bind(now)
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        }
        Self::settle_others(&mut tx, results, now).await?;
        tx.commit().await
    }

    async fn stats(&self) -> StoreResult<Stats> {
        self.backlog_stats().await
    }

    async fn prune(&self, before: i64, limit: u32) -> StoreResult<u64> {
        self.prune_before(before, limit).await
    }
}
