//! Outbox databases for tests: fresh PostgreSQL databases that are dropped when the test ends
//! (also when it fails), SQLite files in the test's temp dir, and ways to look inside them.

use std::{collections::HashSet, path::Path, time::Duration};

use sqlx::{ConnectOptions, Connection, Executor};

use super::{PG_ADMIN_URL, unique};

/// A fresh, empty PostgreSQL database `postbox_test_…`, dropped (`with (force)`, so
/// connections still open do not keep it) when this guard is dropped.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    /// Create the database.
    pub async fn create() -> PgDatabase {
        let name = unique("postbox_test").replace('-', "_");
        pg_admin(format!("create database {name}")).await;
        PgDatabase { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL on the shared server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// Its URL through a proxy listening on `port` of 127.0.0.1.
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("drop database if exists {} with (force)", self.name);
        blocking_cleanup(&format!("drop database {}", self.name), async move {
            let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await?;
            admin.execute(sql.as_str()).await?;
            admin.close().await?;
            Ok(())
        });
    }
}

/// Run async cleanup from a `Drop` (which is synchronous and may run inside a runtime, also
/// while a failed test unwinds): on a thread of its own with a runtime of its own, waited for,
/// bounded in time. Failures are printed, never raised.
pub fn blocking_cleanup<F>(what: &str, work: F)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let what = what.to_owned();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?;
        rt.block_on(async move {
            match tokio::time::timeout(Duration::from_secs(20), work).await {
                Ok(done) => done,
                Err(_) => Err(anyhow::anyhow!("timed out")),
            }
        })
    })
    .join();
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("[cleanup] {what}: {e:#}"),
        Err(_) => eprintln!("[cleanup] {what}: the cleanup thread panicked"),
    }
}

/// Run one statement on the `postgres` admin database.
pub async fn pg_admin(sql: String) {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 (scripts/test.sh starts it)");
    admin
        .execute(sql.as_str())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = admin.close().await;
}

/// Terminate the sessions on database `db` (optionally only those of `application_name`);
/// returns one `true` per session terminated.
pub async fn pg_terminate(db: &str, application_name: Option<&str>) -> Vec<bool> {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL");
    let terminated: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and pid <> pg_backend_pid() \
         and ($2::text is null or application_name = $2)",
    )
    .bind(db)
    .bind(application_name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    let _ = admin.close().await;
    terminated
}

/// `(sessions, encrypted sessions)` on database `db`, from `pg_stat_ssl`.
pub async fn pg_ssl_sessions(db: &str) -> (i64, i64) {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("PostgreSQL");
    let counts = sqlx::query_as(
        "select count(*), count(*) filter (where s.ssl) from pg_stat_activity a \
         join pg_stat_ssl s using (pid) where a.datname = $1",
    )
    .bind(db)
    .fetch_one(&mut admin)
    .await
    .expect("pg_stat_ssl");
    let _ = admin.close().await;
    counts
}

/// The SQLite outbox URL for a file in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("outbox.db").display())
}

/// `(rows in outbox, rows in outbox_payload)` of the outbox at `url` (SQLite or PostgreSQL).
pub async fn outbox_row_counts(url: &str) -> (i64, i64) {
    let count = "select (select count(*) from outbox), (select count(*) from outbox_payload)";
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url)
            .await
            .expect("database");
        sqlx::query_as(count)
            .fetch_one(&mut c)
            .await
            .expect("database")
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("database");
        sqlx::query_as(count)
            .fetch_one(&mut c)
            .await
            .expect("database")
    }
}

/// `PRAGMA integrity_check` of a SQLite outbox file and the event ids it stores.
pub async fn sqlite_inspect(db: &Path) -> (String, HashSet<String>) {
    use sqlx::sqlite::SqliteConnectOptions;
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .expect("open the outbox");
    let check: String = sqlx::query_scalar("pragma integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity_check");
    let ids: Vec<String> = sqlx::query_scalar("select event_id from outbox")
        .fetch_all(&mut conn)
        .await
        .expect("ids");
    (check, ids.into_iter().collect())
}

/// Another writer holding a SQLite outbox's write lock (as another process would), until
/// [`SqliteLock::release`] or drop.
pub struct SqliteLock {
    conn: sqlx::SqliteConnection,
}

impl SqliteLock {
    /// Open the file in WAL mode and `begin {mode}` (`immediate` or `exclusive`).
    pub async fn hold(db_url_or_path: &str, mode: &str) -> SqliteLock {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
        let path = db_url_or_path
            .strip_prefix("sqlite://")
            .unwrap_or(db_url_or_path);
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("a second connection to the outbox");
        sqlx::query(&format!("begin {mode}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("begin {mode}: {e}"));
        SqliteLock { conn }
    }

    /// Roll back: the lock is gone.
    pub async fn release(mut self) {
        sqlx::query("rollback")
            .execute(&mut self.conn)
            .await
            .expect("rollback");
    }
}

/// An outbox database for the real binary: a SQLite file in a test's dir, or a fresh
/// PostgreSQL database (dropped with this).
pub struct Outbox {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    pg: Option<PgDatabase>,
}

impl Outbox {
    /// A SQLite outbox file in `dir`.
    pub fn sqlite(dir: &Path) -> Outbox {
        Outbox {
            url: sqlite_url(dir),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database.
    pub async fn postgres() -> Outbox {
        let db = PgDatabase::create().await;
        Outbox {
            url: db.url(),
            pg: Some(db),
        }
    }

    /// Either, by backend.
    pub async fn new(backend: super::Backend, dir: &Path) -> Outbox {
        match backend {
            super::Backend::Sqlite => Outbox::sqlite(dir),
            super::Backend::Postgres => Outbox::postgres().await,
        }
    }

    /// The PostgreSQL database, if it is one.
    pub fn pg(&self) -> Option<&PgDatabase> {
        self.pg.as_ref()
    }
}
