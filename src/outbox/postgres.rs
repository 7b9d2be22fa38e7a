//! PostgreSQL outbox, shared by several postbox instances: each instance claims only rows of the
//! partitions it owns (see the relay's partition ownership), with `FOR UPDATE SKIP LOCKED` and a lease, so
//! instances never publish the same row at the same time.

use std::time::Duration;

use anyhow::Context;
use sqlx::{
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};

use super::{StoreResult, sql::shared_store_impl};

/// Longest a pooled statement may run on the server (`statement_timeout`), in ms.
const STATEMENT_TIMEOUT_MS: &str = "15000";

/// Longest a pooled session may sit idle inside a transaction before the server ends it.
const IDLE_IN_TRANSACTION_MS: &str = "30000";

/// PostgreSQL-backed outbox.
#[derive(Clone)]
pub struct PgStore {
    /// Accepting events: durable commits (`synchronous_commit` as the server has it).
    pub(super) pool: PgPool,
    /// The relay's leases and settlements, with `synchronous_commit=off`: no WAL flush wait.
    /// Losing one in a crash only publishes an event again, which at-least-once allows.
    pub(super) relay_pool: PgPool,
    /// For the partition-ownership connection, which is not pooled (its session holds locks).
    /// (Boxed: it is large, and the store is cloned into every task.)
    options: std::sync::Arc<PgConnectOptions>,
}

impl PgStore {
    /// Connect. The pool connects lazily, so postbox starts (and says so on `/readyz`) while the
    /// database is still coming up.
    pub async fn open(url: &str) -> anyhow::Result<PgStore> {
        let opts: PgConnectOptions = url.parse().context("parsing the PostgreSQL URL")?;
        // Server-side bounds on every pooled session: no statement runs longer than
        // STATEMENT_TIMEOUT (a lock wait or a stuck server cannot hold a claim, a settle or a
        // commit forever), and a session left idle inside a transaction is ended by the server
        // (a last line of defence: the pools never hand one out, see `pool::guarded`). sqlx
        // 0.8 cannot set TCP keepalive on its sockets, so a half-open connection is bounded by
        // the callers' own timeouts (the writer's commit timeout, the relay's claim and settle
        // timeouts) rather than by the kernel.
        //
        // JIT is off: postbox's statements are short, and the planner's cost estimate for a
        // claim over a large backlog (up to a million before `LIMIT` cuts it) passes
        // `jit_above_cost`, which made each claim spend ~200 ms compiling.
        let bounded = opts.clone().options([
            ("statement_timeout", STATEMENT_TIMEOUT_MS),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_MS,
            ),
            ("jit", "off"),
        ]);
        let pool = super::pool::guarded(PgPoolOptions::new(), "postgres")
            .max_connections(12)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(bounded.clone());
        let relay_pool = super::pool::guarded(PgPoolOptions::new(), "postgres-relay")
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            // A claim must walk the pending rows in `seq` order and stop at its `LIMIT`. With
            // the statistics of a table that grows by thousands of rows a second (stale until
            // autovacuum analyzes it) the planner preferred fetching every pending row and
            // sorting them: 96,000 rows and a 6 MB on-disk sort per claim of 1,000 at a 100k
            // backlog (`EXPLAIN ANALYZE`: 128 ms against 6 ms for the ordered index scan).
            // No relay statement needs a sort it could not do without.
            //
            // Every execution is planned for its own parameters and the table's size at that
            // moment (`force_custom_plan`): after five executions PostgreSQL may keep a generic
            // plan for the life of the connection, and one made while the outbox was small
            // stays until something (a VACUUM or ANALYZE) invalidates it. Seen on a new outbox
            // with autovacuum off: every claim's join read all of `outbox_payload` sequentially
            // and every settlement scanned `outbox` (the plan the planner picks for a table of
            // a thousand rows), so the relay lag grew with every event stored: p50 17 → 488 ms
            // over five 10 s rounds at 1,250 events/s (`bench/rounds.sh`; 13 → 20 ms with
            // custom plans). Planning a claim costs a fraction of a millisecond, once per batch.
            .connect_lazy_with(bounded.options([
                ("synchronous_commit", "off"),
                ("enable_sort", "off"),
                ("plan_cache_mode", "force_custom_plan"),
            ]));
        Ok(PgStore {
            pool,
            relay_pool,
            options: std::sync::Arc::new(opts),
        })
    }

    /// No lane: commits, claims and settlements go through the pools.
    fn lane(&self) -> Option<&super::sqlite_lane::Lane> {
        None
    }

    /// Pruning runs on the durable pool (no busy waits on PostgreSQL).
    fn upkeep_pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// PostgreSQL takes concurrent writers; nothing to wait for.
    async fn serialize_writes(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    /// Begin the group commit's transaction (row locks are taken as rows are written).
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        super::pool::begin(&self.pool, None).await
    }

    /// Migrate on a session of its own: the pools' `statement_timeout` would cut a long data
    /// migration short.
    async fn run_migrations(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let unbounded = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(PgConnectOptions::clone(&self.options))
            .await?;
        let done = Self::migrator().run(&unbounded).await;
        unbounded.close().await;
        done
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
            Migration::new(
                7,
                "writer probe".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0007_writer_probe.sql").into(),
                false,
            ),
            Migration::new(
                9,
                "partition leases".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0009_partition_leases.sql").into(),
                false,
            ),
            Migration::new(
                10,
                "search index".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0010_search_index.sql").into(),
                false,
            ),
            Migration::new(
                11,
                "schema registry".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0011_schema_registry.sql").into(),
                false,
            ),
            Migration::new(
                12,
                "fewer indexes".into(),
                MigrationType::Simple,
                include_str!("../../migrations/postgres/0012_fewer_indexes.sql").into(),
                false,
            ),
        ];
        Migrator {
            migrations: migrations.into(),
            ..Migrator::DEFAULT
        }
    }
}

/// See [`PgStore::insert_rows`]. New rows are `pending` with no attempts (column defaults).
const INSERT_ROWS: &str = "with v as (select * from unnest($1::text[], $2::text[], $3::text[], \
     $4::text[], $5::text[], $6::text[], $7::text[], $8::int8[], $9::text[], $10::bytea[], \
     $11::text[], $12::text[], $13::text[], $14::int4[], $15::bytea[], $16::text[]) with ordinality \
     as v(event_id, source, event_type, version, ce_type, subject, ordering_key, event_time, \
     routing_key, content_hash, traceparent, tracestate, api_key, partition_id, body, attributes, ord)), \
     ins as (insert into outbox (event_id, source, event_type, version, ce_type, subject, ordering_key, \
     event_time, routing_key, content_hash, traceparent, tracestate, api_key, created_at, \
     next_attempt_at, updated_at, partition_id) \
     select event_id, source, event_type, version, ce_type, subject, ordering_key, event_time, \
     routing_key, content_hash, traceparent, tracestate, api_key, $17, $17, $17, partition_id \
     from v order by ord \
     on conflict (source, event_id) do nothing returning seq, source, event_id), \
     pay as (insert into outbox_payload (seq, body, attributes) \
     select distinct on (ins.seq) ins.seq, v.body, v.attributes from ins \
     join v on v.source = ins.source and v.event_id = ins.event_id order by ins.seq, v.ord) \
     select seq, source, event_id from ins";

impl PgStore {
    /// Several instances claim concurrently: skip rows another instance is claiming.
    const CLAIM_LOCK: &'static str = "for update skip locked";

    /// The partitions this instance owns (`$5`, `int4[]`), each only while its lease still has
    /// the epoch this instance holds (`$6`, `int8[]`) and has not expired for its owner (`$7`):
    /// a claim after another instance took a partition over takes none of its rows, whatever
    /// this instance believes.
    ///
    /// The valid partitions are computed once per claim (`array(…)`, an init plan) and checked
    /// row by row, so the claim walks the pending index in `seq` order (see `open`).
    const PARTITION_FILTER: &'static str = "and o.partition_id = any(array(select l.partition_id \
        from partition_leases l join unnest($5::int4[], $6::int8[]) as x(p, e) \
        on l.partition_id = x.p and l.epoch = x.e \
        where l.owner = $7 and l.expires_at > (extract(epoch from clock_timestamp()) * 1000000)::bigint))";

    fn bind_partitions<'q>(
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        scope: &crate::outbox::ClaimScope<'_>,
    ) -> StoreResult<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>> {
        Ok(query
            .bind(scope.partitions.to_vec())
            .bind(scope.epochs.to_vec())
            .bind(scope.owner.to_owned()))
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
    ///
    /// Rows locked by a transaction still open are skipped, not waited for: a frozen previous
    /// owner (SIGSTOP) may have been stopped inside its claim or settlement transaction, which
    /// holds its rows until it runs again (or `idle_in_transaction_session_timeout` ends it).
    /// Waiting here would stall the whole ownership round, and with it the takeover. A skipped
    /// row gets the lease that transaction gives it (if it commits), which the resumed instance
    /// hands back as soon as it sees its view of the partition is stale, or which runs out.
    pub async fn release_partition_leases(&self, partitions: &[i32]) -> StoreResult<u64> {
        sqlx::query(
            "update outbox set lease_until = null where seq in (select seq from outbox \
             where partition_id = any($1) and status = 'pending' and lease_until is not null \
             for update skip locked)",
        )
        .bind(partitions.to_vec())
        .execute(&self.relay_pool)
        .await
        .map(|r| r.rows_affected())
    }

    /// New rows and their payloads in one statement (one round trip, one prepared statement
    /// whatever the group's size): the columns travel as arrays, `unnest` makes them rows
    /// again. Of a (source, id) twice in `rows`, the first is inserted, with its own payload.
    async fn insert_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        rows: &[&super::NewRow],
        now: i64,
    ) -> StoreResult<Vec<(i64, String, String)>> {
        // One array per column.
        fn col<'a, T>(rows: &[&'a super::NewRow], f: impl Fn(&'a super::NewRow) -> T) -> Vec<T> {
            rows.iter().map(|r| f(r)).collect()
        }
        sqlx::query_as(INSERT_ROWS)
            .bind(col(rows, |r| r.event_id.as_str()))
            .bind(col(rows, |r| r.source.as_str()))
            .bind(col(rows, |r| r.event_type.as_str()))
            .bind(col(rows, |r| r.version.as_str()))
            .bind(col(rows, |r| r.ce_type.as_str()))
            .bind(col(rows, |r| r.subject.as_deref()))
            .bind(col(rows, |r| r.ordering_key.as_deref()))
            .bind(col(rows, |r| r.event_time))
            .bind(col(rows, |r| r.routing_key.as_str()))
            .bind(col(rows, |r| r.content_hash.as_slice()))
            .bind(col(rows, |r| r.traceparent.as_deref()))
            .bind(col(rows, |r| r.tracestate.as_deref()))
            .bind(col(rows, |r| r.api_key.as_deref()))
            .bind(col(rows, super::NewRow::partition))
            .bind(col(rows, |r| r.body.as_slice()))
            .bind(col(rows, |r| r.attributes.as_str()))
            .bind(now)
            .fetch_all(&mut **tx)
            .await
    }

    /// Settle published rows: one statement for the whole batch.
    async fn mark_published<'c>(
        conn: impl sqlx::PgExecutor<'c>,
        seqs: &[i64],
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "update outbox set status = 'published', attempts = attempts + 1, published_at = $1, \
             updated_at = $1, lease_until = null, last_error = null where seq = any($2)",
        )
        .bind(now)
        .bind(seqs)
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// The claim (see [`super::sql::claim_select`]) and the claimed rows' payloads in one statement:
    /// one round trip, and atomic without a transaction of its own. The rows to lease are an
    /// array computed first (`= any(array(…))`): with `seq in (…)` the planner joined them to a
    /// sequential scan of the whole outbox (17 of 45 ms of a 1,000-row claim, `EXPLAIN
    /// ANALYZE` at a 100k backlog, and every claim on an outbox of up to a few 100k rows).
    async fn claim_rows(
        &self,
        limit: u32,
        lease: std::time::Duration,
        after: i64,
        scope: Option<&super::ClaimScope<'_>>,
    ) -> StoreResult<Vec<super::Claimed>> {
        use sqlx::Row as _;
        let now = super::now_micros();
        let lease_until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        let q = format!(
            "with c as (update outbox set lease_until = $1 where seq = any(array({})) \
             returning {}) \
             select c.*, p.body, p.attributes from c left join outbox_payload p using (seq)",
            super::sql::claim_candidates(
                if scope.is_some() {
                    Self::PARTITION_FILTER
                } else {
                    ""
                },
                Self::CLAIM_LOCK,
            ),
            super::sql::CLAIM_COLUMNS,
        );
        let mut query = sqlx::query(q.as_str())
            .bind(lease_until)
            .bind(now)
            .bind(i64::from(limit))
            .bind(after);
        if let Some(scope) = scope {
            query = Self::bind_partitions(query, scope)?;
        }
        let rows = query.fetch_all(&self.relay_pool).await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut missing = 0;
        for r in &rows {
            let mut c = super::sql::claimed_from_row!(r);
            match r.try_get::<Option<Vec<u8>>, _>("body")? {
                Some(body) => c.body = body,
                None => missing += 1,
            }
            c.attributes = r
                .try_get::<Option<String>, _>("attributes")?
                .unwrap_or_default();
            claimed.push(c);
        }
        drop(rows);
        if missing > 0 {
            // Give the leases back (as a failed transaction would have), so these rows and
            // every later event of their keys do not wait for the lease to run out.
            let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
            sqlx::query(
                "update outbox set lease_until = null where seq = any($1) and lease_until = $2",
            )
            .bind(seqs)
            .bind(lease_until)
            .execute(&self.relay_pool)
            .await?;
            return Err(sqlx::Error::Protocol(format!(
                "{missing} of {} claimed events have no row in outbox_payload",
                claimed.len()
            )));
        }
        // RETURNING does not promise an order; publish in commit order.
        claimed.sort_by_key(|c| c.seq);
        Ok(claimed)
    }
}

super::schemas::schema_store_impl!(PgStore);
shared_store_impl!(PgStore, sqlx::Postgres, "PostgreSQL");
