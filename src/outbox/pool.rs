//! Connection-pool hygiene shared by both backends: a pool never hands out a connection that is
//! (or may be) inside a transaction, and a transaction is never half-begun by a cancelled caller.
//!
//! Why: sqlx 0.8.6 tracks a transaction depth per connection beside the database's own state,
//! and the two can disagree. SQLite rolls a transaction back by itself on `SQLITE_FULL`,
//! `SQLITE_IOERR` or `SQLITE_NOMEM`; sqlx-sqlite lowers its depth only on a successful
//! `COMMIT`/`ROLLBACK`, so after such a failure its `ROLLBACK` fails, the depth stays at 1, the
//! ping on release passes, and every later `BEGIN IMMEDIATE` on that connection fails with
//! "attempted to call begin_with at non-zero transaction depth" (the full-disk wedge). A begin
//! cancelled between the `BEGIN` and sqlx's bookkeeping leaves the opposite: a real open
//! transaction holding SQLite's write lock, or a PostgreSQL session `idle in transaction`
//! that sqlx believes is idle.

use std::borrow::Cow;

use sqlx::{Connection, Database, Pool, Transaction, pool::PoolOptions};

/// Add the checks to a pool: on release and before every acquire, a connection whose
/// transaction depth is not zero is closed instead of reused (closing rolls back whatever the
/// database still holds open). `name` labels the log line and the metric.
pub fn guarded<DB: Database>(options: PoolOptions<DB>, name: &'static str) -> PoolOptions<DB> {
    options
        .after_release(move |conn, _| Box::pin(async move { Ok(reusable::<DB>(conn, name)) }))
        .before_acquire(move |conn, _| Box::pin(async move { Ok(reusable::<DB>(conn, name)) }))
}

fn reusable<DB: Database>(conn: &DB::Connection, pool: &'static str) -> bool {
    if !conn.is_in_transaction() {
        return true;
    }
    tracing::warn!(
        pool,
        "closing a database connection left inside a transaction (after a failed commit or \
         rollback); the pool opens a fresh one"
    );
    metrics::counter!("postbox_db_connections_discarded_total", "pool" => pool).increment(1);
    false
}

/// Begin a transaction on `pool` (with `statement`, e.g. `BEGIN IMMEDIATE`, or the default) in
/// a task of its own, so that a caller cancelled while the `BEGIN` is under way (a timeout, a
/// dropped request) cannot leave the connection half-begun: the task finishes the begin, and
/// the transaction it produced is rolled back and returned to the pool when nobody takes it.
pub async fn begin<DB: Database>(
    pool: &Pool<DB>,
    statement: Option<&'static str>,
) -> sqlx::Result<Transaction<'static, DB>> {
    let pool = pool.clone();
    let task = tokio::spawn(async move {
        match statement {
            Some(s) => pool.begin_with(Cow::Borrowed(s)).await,
            None => pool.begin().await,
        }
    });
    match task.await {
        Ok(tx) => tx,
        Err(e) => Err(sqlx::Error::WorkerCrashed).inspect_err(|_| {
            tracing::error!(error = %e, "beginning a transaction panicked");
        }),
    }
}
