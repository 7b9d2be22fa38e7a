//! PostgreSQL outbox, shared by several postbox instances: each instance claims only rows of the
//! partitions it owns (see [`super::partitions`]), with `FOR UPDATE SKIP LOCKED` and a lease, so
//! instances never publish the same row at the same time.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};

use super::{StoreResult, sql::shared_store_impl};

/// PostgreSQL-backed outbox.
#[derive(Clone)]
pub struct PgStore {
    /// Accepting events: durable commits (`synchronous_commit` as the server has it).
    pool: PgPool,
    /// The relay's leases and settlements, with `synchronous_commit=off`: no WAL flush wait.
    /// Losing one in a crash only publishes an event again, which at-least-once allows.
    relay_pool: PgPool,
    /// For the partition-ownership connection, which is not pooled (its session holds locks).
    /// (Boxed: it is large, and the store is cloned into every task.)
    options: std::sync::Arc<PgConnectOptions>,
}

impl PgStore {
    /// Connect. The pool connects lazily, so postbox starts (and says so on `/readyz`) while the
    /// database is still coming up.
    pub async fn open(url: &str) -> anyhow::Result<PgStore> {
        let opts: PgConnectOptions = url.parse().context("parsing the PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(12)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts.clone());
        let relay_pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts.clone().options([("synchronous_commit", "off")]));
        Ok(PgStore {
            pool,
            relay_pool,
            options: std::sync::Arc::new(opts),
        })
    }

    /// PostgreSQL takes concurrent writers; nothing to wait for.
    async fn serialize_writes(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    /// Begin the group commit's transaction (row locks are taken as rows are written).
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool.begin().await
    }

    /// The migrations under `migrations/postgres/`, embedded in the binary.
    pub fn migrator() -> Migrator {
        let migrations = vec![
            Migration::new(
                1,
                "outbox".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0001_outbox.sql").into(),
                false,
            ),
            Migration::new(
                2,
                "ordering key index".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0002_ordering_key_index.sql").into(),
                false,
            ),
            Migration::new(
                3,
                "api key".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0003_api_key.sql").into(),
                false,
            ),
            Migration::new(
                4,
                "partitions".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0004_partitions.sql").into(),
                false,
            ),
            Migration::new(
                5,
                "tracestate".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0005_tracestate.sql").into(),
                false,
            ),
            Migration::new(
                6,
                "payload table".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0006_payload.sql").into(),
                false,
            ),
        ];
        Migrator {
            migrations: migrations.into(),
            ..Migrator::DEFAULT
        }
    }
}

impl PgStore {
    /// Several instances claim concurrently: skip rows another instance is claiming.
    const CLAIM_LOCK: &'static str = "for update skip locked";

    /// The partitions this instance owns, as one `int4[]` (`$4`).
    const PARTITION_FILTER: &'static str = "and o.partition_id = any($4)";

    fn bind_partitions<'q>(
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        partitions: &[i32],
    ) -> StoreResult<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>> {
        Ok(query.bind(partitions.to_vec()))
    }

    /// `seq` in the list bound as `$1`.
    const SEQ_IN_1: &'static str = "= any($1)";

    fn bind_seqs<'q>(
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        seqs: &[i64],
    ) -> StoreResult<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>> {
        Ok(query.bind(seqs.to_vec()))
    }

    /// Connection options for a connection of its own (the partition-ownership session).
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::clone(&self.options)
    }

    /// `NOTIFY channel, payload` (see [`super::wake`]).
    pub async fn notify(&self, channel: &str, payload: &str) -> StoreResult<()> {
        sqlx::query("select pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.relay_pool)
            .await
            .map(|_| ())
    }

    /// Make the leased pending rows of `partitions` claimable at once: this instance has just
    /// taken them over, so their leases belong to a previous owner that is gone (it released
    /// its advisory locks by dying, or after settling everything it had in flight). Returns how
    /// many rows were released.
    pub async fn release_partition_leases(&self, partitions: &[i32]) -> StoreResult<u64> {
        sqlx::query(
            "update outbox set lease_until = null where partition_id = any($1) \
             and status = 'pending' and lease_until is not null",
        )
        .bind(partitions.to_vec())
        .execute(&self.relay_pool)
        .await
        .map(|r| r.rows_affected())
    }

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
