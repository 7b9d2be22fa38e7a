//! PostgreSQL outbox, shared by several postbox instances: claims use `FOR UPDATE SKIP LOCKED`
//! and a lease, so instances never publish the same row at the same time.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgPool, PgPoolOptions},
};

use super::{
    Claimed, EventRecord, OutboxStore, Settlement, Stats, StoreResult, WriteOutcome, WriteRequest,
    now_micros,
    sql::{self, claimed_from_row, shared_store_impl},
};

/// PostgreSQL-backed outbox.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect. The pool connects lazily, so postbox starts (and says so on `/readyz`) while the
    /// database is still coming up.
    pub async fn open(url: &str) -> anyhow::Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .context("parsing the PostgreSQL URL")?;
        Ok(PgStore { pool })
    }

    /// The migrations under `migrations/postgres/`, embedded in the binary.
    pub fn migrator() -> Migrator {
        Migrator::with_migrations(vec![Migration::new(
            1,
            "outbox".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0001_outbox.sql").into_sql_str(),
            false,
        )])
    }
}

shared_store_impl!(PgStore, sqlx::Postgres);

impl OutboxStore for PgStore {
    async fn migrate(&self) -> anyhow::Result<()> {
        Self::migrator()
            .run(&self.pool)
            .await
            .context("migrating PostgreSQL outbox")
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
              and (lease_until is null or lease_until < $2) order by seq limit $3 \
              for update skip locked) \
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
            sqlx::query(
                "update outbox set status = 'published', attempts = attempts + 1, published_at = $1, \
                 updated_at = $1, lease_until = null, last_error = null where seq = any($2)",
            )
            .bind(now)
            .bind(&published)
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
