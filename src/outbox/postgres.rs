//! PostgreSQL outbox, shared by several postbox instances: claims use `FOR UPDATE SKIP LOCKED`
//! and a lease, so instances never publish the same row at the same time.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgPool, PgPoolOptions},
};

use super::{StoreResult, sql::shared_store_impl};

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

    /// Begin the group commit's transaction (row locks are taken as rows are written).
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool.begin().await
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

impl PgStore {
    /// Several instances claim concurrently: skip rows another instance is claiming.
    const CLAIM_LOCK: &'static str = "for update skip locked";

    async fn mark_published(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        seqs: &[i64],
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "update outbox set status = 'published', attempts = attempts + 1, published_at = $1, \
             updated_at = $1, lease_until = null, last_error = null where seq = any($2)",
        )
        .bind(now)
        .bind(seqs)
        .execute(&mut **tx)
        .await
        .map(|_| ())
    }
}

shared_store_impl!(PgStore, sqlx::Postgres, "PostgreSQL");
