//! The outbox: row types, the [`OutboxStore`] trait, and the two backends behind [`Store`].
//! It knows nothing of the relay or of any broker.
//!
//! Timestamps are stored as integer microseconds since the Unix epoch in both backends, so the
//! same SQL and the same decoding serve SQLite and PostgreSQL (see `sql.rs`).

pub mod housekeeping;
pub mod leases;
mod pool;
mod postgres;
pub mod schemas;
mod sql;
mod sqlite;
mod sqlite_lane;
pub mod wake;
pub mod writer;

use std::{future::Future, time::Duration};

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::config::StoreKind;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Store errors are database errors; callers map them to 503.
pub type StoreResult<T> = Result<T, sqlx::Error>;

/// Delivery state of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Stored, not yet confirmed by RabbitMQ.
    Pending,
    /// Confirmed by RabbitMQ.
    Published,
    /// Gave up after `max_attempts`; redrivable.
    Dead,
}

impl Status {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Published => "published",
            Status::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "published" => Status::Published,
            "dead" => Status::Dead,
            _ => Status::Pending,
        }
    }
}

/// An event ready to insert.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// Event id.
    pub event_id: String,
    /// Event source.
    pub source: String,
    /// Type without version.
    pub event_type: String,
    /// Version.
    pub version: String,
    /// CloudEvents `type` as sent.
    pub ce_type: String,
    /// Subject.
    pub subject: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
    /// Event time, µs since epoch.
    pub event_time: i64,
    /// AMQP routing key.
    pub routing_key: String,
    /// The AMQP body: the structured CloudEvent, serialized once.
    pub body: Vec<u8>,
    /// CloudEvent attributes without `data` (JSON object), for `ce-*` headers.
    pub attributes: String,
    /// Hash of what the client sent.
    pub content_hash: Vec<u8>,
    /// W3C traceparent of the request, if any.
    pub traceparent: Option<String>,
    /// Name of the API key that sent it (none when authentication is off).
    pub api_key: Option<String>,
    /// W3C tracestate of the request (only with a traceparent).
    pub tracestate: Option<String>,
}

impl NewRow {
    /// The partition this event belongs to: all events of one ordering key share one, so the
    /// instance that owns it publishes them in order; unkeyed events spread by id.
    pub fn partition(&self) -> i32 {
        partition_of(self.ordering_key.as_deref().unwrap_or(&self.event_id))
    }
}

/// Number of partitions the outbox is split into (see the relay's partition ownership). Fixed:
/// it is part of the stored data (the `partition_id` column), so changing it would split keys
/// across partitions.
pub const PARTITIONS: i32 = 64;

/// The partition of an ordering key (or event id): FNV-1a, stable across builds and platforms.
pub fn partition_of(key: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // `PARTITIONS` is a small positive constant, so the remainder fits.
    i32::try_from(h % u64::from(PARTITIONS.unsigned_abs())).unwrap_or(0)
}

/// One HTTP request's worth of events, committed atomically.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The events.
    pub rows: Vec<NewRow>,
    /// `Idempotency-Key` header and the hash of the whole request.
    pub idempotency: Option<(String, Vec<u8>)>,
}

/// Reference to a stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct StoredRef {
    /// Event id.
    #[schema(example = "0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11")]
    pub id: String,
    /// Event source.
    #[schema(example = "postbox")]
    pub source: String,
}

/// What became of one write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored (or already stored with the same content).
    Stored {
        /// One per event, in request order.
        refs: Vec<StoredRef>,
        /// True when nothing new was stored: every event (or the idempotency key) was a replay.
        replayed: bool,
    },
    /// A key was already used for different content; nothing of this request was stored.
    KeyReused(String),
    /// Another request with the same key was in the same commit; nothing of this request was
    /// stored (the writer keeps such requests apart, so this is a safety net).
    InProgress,
}

/// A row claimed by the relay.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Commit-order sequence.
    pub seq: i64,
    /// Event id (AMQP `message_id`).
    pub event_id: String,
    /// Event source (with the id, the key brokers deduplicate on).
    pub source: String,
    /// CloudEvents `type` as sent (AMQP `type`).
    pub ce_type: String,
    /// Routing key.
    pub routing_key: String,
    /// Body.
    pub body: Vec<u8>,
    /// CloudEvent attributes JSON.
    pub attributes: String,
    /// Trace context.
    pub traceparent: Option<String>,
    /// Vendor trace state that came with `traceparent`.
    pub tracestate: Option<String>,
    /// Attempts so far.
    pub attempts: i32,
    /// Commit time, µs since epoch (AMQP `timestamp`, relay lag).
    pub created_at: i64,
    /// Partition (see [`partition_of`]).
    pub partition: i32,
    /// Whether it has an ordering key: settling it may let the next event of its key be
    /// claimed.
    pub keyed: bool,
    /// The lease this claim set (µs since epoch). Retries and releases are fenced by it: a
    /// relay whose lease was taken over (or ran out and was claimed again) changes nothing.
    pub lease: i64,
}

/// Result of one publish attempt.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Confirmed by the broker.
    Published {
        /// Row.
        seq: i64,
    },
    /// Failed; retry at `next_attempt_at` or give up.
    Failed {
        /// Row.
        seq: i64,
        /// Attempts including this one.
        attempts: i32,
        /// Why.
        error: String,
        /// When to retry (µs since epoch); ignored when `dead`.
        next_attempt_at: i64,
        /// No attempts left.
        dead: bool,
        /// The claim's lease: the update applies only while the row still carries it.
        lease: i64,
    },
    /// Not attempted after all (shutdown, broker blocked): release the lease.
    Released {
        /// Row.
        seq: i64,
        /// The claim's lease.
        lease: i64,
    },
}

/// Delivery state of an event, as `GET /v1/events/{id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventRecord {
    /// Event id.
    #[schema(example = "0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11")]
    pub id: String,
    /// Source.
    #[schema(example = "postbox")]
    pub source: String,
    /// Event type (without version).
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub event_type: String,
    /// Schema version.
    #[schema(example = "v1")]
    pub version: String,
    /// Subject.
    pub subject: Option<String>,
    /// Ordering key.
    pub key: Option<String>,
    /// Routing key it is published with.
    #[schema(example = "events.order.paid.v1")]
    pub routing_key: String,
    /// Delivery state.
    pub status: Status,
    /// Publish attempts made.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Name of the API key that sent it (absent when authentication is off).
    #[schema(example = "checkout")]
    pub api_key: Option<String>,
    /// The W3C `traceparent` the event was sent with (absent when none, or an invalid one,
    /// came with the request).
    #[schema(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    pub traceparent: Option<String>,
    /// The trace id of `traceparent`: what to search for in a tracing backend.
    #[schema(example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub trace_id: Option<String>,
    /// Event time.
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// When postbox committed it.
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Next attempt (pending only).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// When RabbitMQ confirmed it.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    /// The CloudEvent as published (`null` once its body was dropped: see `body_pruned`).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// The body of this published event is no longer kept (`payload_retention_hours` passed);
    /// its record stays for deduplication until `retention_hours`, but it cannot be redelivered.
    pub body_pruned: bool,
}

/// Which events a listing, a count or a bulk redelivery covers. Every field that is set
/// narrows the set; none set means every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events in this delivery state.
    pub status: Option<Status>,
    /// Only events of this type (without version).
    pub event_type: Option<String>,
    /// Only events of this source.
    pub source: Option<String>,
    /// Only events with this ordering key.
    pub key: Option<String>,
    /// Only events with this id.
    pub id: Option<String>,
    /// Only events committed at or after this time (µs since the epoch).
    pub created_from: Option<i64>,
    /// Only events committed before this time (µs since the epoch).
    pub created_before: Option<i64>,
}

/// Which way a listing runs through commit order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first (`seq` ascending).
    #[default]
    Oldest,
    /// Newest first (`seq` descending).
    Newest,
}

/// One page of a listing: rows past the cursor `after` (a `seq`, exclusive, in the direction of
/// `order`), at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// The last `seq` of the previous page.
    pub after: Option<i64>,
    /// Direction.
    pub order: Order,
    /// Page size.
    pub limit: u32,
}

/// Backlog figures for metrics and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Rows pending.
    pub pending: i64,
    /// Oldest pending commit time, µs since epoch.
    pub oldest_pending: Option<i64>,
    /// Rows dead.
    pub dead: i64,
}

/// What every outbox backend does.
pub trait OutboxStore: Send + Sync {
    /// Apply migrations.
    fn migrate(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Cheap round trip.
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Commit one small durable write the way the group-commit writer commits events.
    fn probe(&self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Group commit: every request in one transaction, each atomic on its own.
    fn commit(
        &self,
        reqs: &[WriteRequest],
    ) -> impl Future<Output = StoreResult<Vec<WriteOutcome>>> + Send;
    /// Events with this id (several sources may share one id).
    fn find(
        &self,
        id: &str,
        source: Option<&str>,
    ) -> impl Future<Output = StoreResult<Vec<EventRecord>>> + Send;
    /// Lease up to `limit` due rows with a `seq` above `after`, oldest first; only rows of
    /// `scope`'s partitions when given (several instances on one PostgreSQL outbox).
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
        after: i64,
        scope: Option<&ClaimScope<'_>>,
    ) -> impl Future<Output = StoreResult<Vec<Claimed>>> + Send;
    /// Record publish results.
    fn settle(&self, results: &[Settlement]) -> impl Future<Output = StoreResult<()>> + Send;
    /// Backlog figures.
    fn stats(&self) -> impl Future<Output = StoreResult<Stats>> + Send;
    /// Delete up to `limit` published rows and idempotency keys older than `before`.
    fn prune(&self, before: i64, limit: u32) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Drop the bodies of up to `limit` events published in `[from, before)`; returns how many
    /// and where the next round starts.
    fn prune_payloads(
        &self,
        before: i64,
        from: i64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<(u64, i64)>> + Send;
    /// One page of the events `filter` selects, with their `seq` (the cursor).
    fn list(
        &self,
        filter: &EventFilter,
        page: PageRequest,
    ) -> impl Future<Output = StoreResult<Vec<(i64, EventRecord)>>> + Send;
    /// How many events `filter` selects.
    fn count(&self, filter: &EventFilter) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Make events pending again with fresh attempts; returns how many.
    fn redeliver(&self, target: Redeliver<'_>) -> impl Future<Output = StoreResult<u64>> + Send;
}

/// The part of a shared outbox one instance may claim from: its partitions, each with the
/// epoch of its lease, so that a claim is fenced in the database: once another instance has
/// taken a partition over (raising its epoch), claims made with the old epoch take nothing.
#[derive(Debug, Clone, Copy)]
pub struct ClaimScope<'a> {
    /// Partitions owned.
    pub partitions: &'a [i32],
    /// The lease epoch of each, in the same order.
    pub epochs: &'a [i64],
    /// This instance (the leases' owner).
    pub owner: &'a str,
}

/// Which events to send again.
#[derive(Debug, Clone, Copy)]
pub enum Redeliver<'a> {
    /// One event (dead or published).
    One {
        /// Event id.
        id: &'a str,
        /// Event source.
        source: &'a str,
    },
    /// Every dead event the filter selects (its `status` is ignored: only dead events are
    /// redriven in bulk).
    Dead(&'a EventFilter),
}

/// The configured backend.
#[derive(Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PgStore),
}

impl Store {
    /// Open (and create, for SQLite) the database the URL names.
    pub async fn open(kind: &StoreKind) -> anyhow::Result<Store> {
        Ok(match kind {
            StoreKind::Sqlite { path } => Store::Sqlite(SqliteStore::open(path).await?),
            StoreKind::Postgres { url } => Store::Postgres(PgStore::open(url).await?),
        })
    }

    /// At start-up of a server. An embedded SQLite outbox has one process: this one takes it
    /// (an exclusive lock on a file beside it, held until the process ends; a second server on
    /// the same file is refused), and leases a previous version stored are stale and released
    /// at once (this version holds SQLite's leases in memory). With PostgreSQL other instances
    /// may hold live leases; those of a dead instance are released when its partitions are
    /// taken over (see the relay's partition ownership).
    pub async fn take_over(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => {
                s.lock_for_this_process()?;
                Ok(s.release_leases().await?)
            }
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Backend name for logs and `/readyz`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl OutboxStore for Store {
    async fn migrate(&self) -> anyhow::Result<()> {
        delegate!(self, s => s.migrate().await)
    }
    async fn ping(&self) -> StoreResult<()> {
        delegate!(self, s => s.ping().await)
    }
    async fn probe(&self) -> StoreResult<()> {
        delegate!(self, s => s.probe().await)
    }
    async fn commit(&self, reqs: &[WriteRequest]) -> StoreResult<Vec<WriteOutcome>> {
        delegate!(self, s => s.commit(reqs).await)
    }
    async fn find(&self, id: &str, source: Option<&str>) -> StoreResult<Vec<EventRecord>> {
        delegate!(self, s => s.find(id, source).await)
    }
    async fn claim(
        &self,
        limit: u32,
        lease: Duration,
        after: i64,
        scope: Option<&ClaimScope<'_>>,
    ) -> StoreResult<Vec<Claimed>> {
        delegate!(self, s => s.claim(limit, lease, after, scope).await)
    }
    async fn settle(&self, results: &[Settlement]) -> StoreResult<()> {
        delegate!(self, s => s.settle(results).await)
    }
    async fn stats(&self) -> StoreResult<Stats> {
        delegate!(self, s => s.stats().await)
    }
    async fn prune(&self, before: i64, limit: u32) -> StoreResult<u64> {
        delegate!(self, s => s.prune(before, limit).await)
    }
    async fn prune_payloads(&self, before: i64, from: i64, limit: u32) -> StoreResult<(u64, i64)> {
        delegate!(self, s => s.prune_payloads(before, from, limit).await)
    }
    async fn list(
        &self,
        filter: &EventFilter,
        page: PageRequest,
    ) -> StoreResult<Vec<(i64, EventRecord)>> {
        delegate!(self, s => s.list(filter, page).await)
    }
    async fn count(&self, filter: &EventFilter) -> StoreResult<u64> {
        delegate!(self, s => s.count(filter).await)
    }
    async fn redeliver(&self, target: Redeliver<'_>) -> StoreResult<u64> {
        delegate!(self, s => s.redeliver(target).await)
    }
}

/// Now, in µs since the epoch.
pub fn now_micros() -> i64 {
    micros(OffsetDateTime::now_utc())
}

/// A timestamp in µs since the epoch.
pub fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// µs since the epoch to a timestamp (clamped to the representable range).
pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, migrate::Migrator};

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(
            super::partition_of("customer-42"),
            super::partition_of("customer-42")
        );
        // FNV-1a of "" is the offset basis.
        assert_eq!(
            super::partition_of(""),
            (0xcbf2_9ce4_8422_2325_u64 % 64) as i32
        );
        let mut seen = [0u32; super::PARTITIONS as usize];
        for i in 0..6400 {
            seen[super::partition_of(&format!("key-{i}")) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (50..=150).contains(n)), "{seen:?}");
    }

    /// The migrations up to `version` only: a database as an older postbox left it.
    fn up_to(m: Migrator, version: i64) -> Migrator {
        let older: Vec<_> = m
            .migrations
            .iter()
            .filter(|x| x.version <= version)
            .cloned()
            .collect();
        Migrator {
            migrations: older.into(),
            ..m
        }
    }

    const OLD_ROW: &str = "insert into outbox (event_id, source, event_type, version, ce_type, \
        routing_key, body, attributes, content_hash, event_time, next_attempt_at, created_at, \
        updated_at) values ('e-1', '/s', 'order.paid', 'v1', 'order.paid', 'events.order.paid.v1', \
        $1, '{\"id\":\"e-1\"}', $2, 0, 0, 0, 0)";
    const MOVED: &str = "select o.event_id, p.body, p.attributes from outbox o \
        join outbox_payload p using (seq)";

    #[tokio::test]
    async fn the_payload_migration_keeps_stored_bodies_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        up_to(super::sqlite::SqliteStore::migrator(), 5)
            .run(&mut c)
            .await
            .unwrap();
        sqlx::query(OLD_ROW)
            .bind(b"{\"data\":1}".as_slice())
            .bind(vec![7u8; 32])
            .execute(&mut c)
            .await
            .unwrap();
        super::sqlite::SqliteStore::migrator()
            .run(&mut c)
            .await
            .unwrap();
        let (id, body, attrs): (String, Vec<u8>, String) =
            sqlx::query_as(MOVED).fetch_one(&mut c).await.unwrap();
        assert_eq!(
            (id.as_str(), body.as_slice(), attrs.as_str()),
            ("e-1", b"{\"data\":1}".as_slice(), "{\"id\":\"e-1\"}")
        );
    }

    #[tokio::test]
    async fn the_payload_migration_keeps_stored_bodies_postgres() {
        let name = format!("postbox_unit_{}", uuid::Uuid::now_v7().simple());
        let admin_url = "postgres://postgres@127.0.0.1:5432/postgres";
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut c =
            sqlx::PgConnection::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
                .await
                .unwrap();
        up_to(super::postgres::PgStore::migrator(), 5)
            .run(&mut c)
            .await
            .unwrap();
        sqlx::query(OLD_ROW)
            .bind(b"{\"data\":1}".as_slice())
            .bind(vec![7u8; 32])
            .execute(&mut c)
            .await
            .unwrap();
        super::postgres::PgStore::migrator()
            .run(&mut c)
            .await
            .unwrap();
        let (id, body, attrs): (String, Vec<u8>, String) =
            sqlx::query_as(MOVED).fetch_one(&mut c).await.unwrap();
        c.close().await.unwrap();
        sqlx::query(&format!("drop database {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            (id.as_str(), body.as_slice(), attrs.as_str()),
            ("e-1", b"{\"data\":1}".as_slice(), "{\"id\":\"e-1\"}")
        );
    }

    fn row(id: &str) -> super::NewRow {
        super::NewRow {
            event_id: id.into(),
            source: "/s".into(),
            event_type: "order.paid".into(),
            version: "v1".into(),
            ce_type: "order.paid".into(),
            subject: None,
            ordering_key: Some("k".into()),
            event_time: 0,
            routing_key: "events.order.paid.v1".into(),
            body: b"{}".to_vec(),
            attributes: "{}".into(),
            content_hash: vec![1; 32],
            traceparent: None,
            api_key: None,
            tracestate: None,
        }
    }

    /// `n` rows `{prefix}-{i}` without an ordering key.
    fn unkeyed(prefix: &str, n: usize) -> Vec<super::NewRow> {
        (0..n)
            .map(|i| super::NewRow {
                ordering_key: None,
                ..row(&format!("{prefix}-{i}"))
            })
            .collect()
    }

    fn req(rows: Vec<super::NewRow>) -> super::WriteRequest {
        super::WriteRequest {
            rows,
            idempotency: None,
        }
    }

    /// A claim whose caller stopped waiting (the relay's database timeout) leaves no leases
    /// behind: SQLite claims run whole on their own thread, which cannot be cancelled half-way
    /// as an awaited transaction could, so the rows it leased for nobody are handed back.
    #[tokio::test]
    async fn an_abandoned_sqlite_claim_leaves_no_leases() {
        use super::OutboxStore;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        store.commit(&[req(unkeyed("a", 5))]).await.unwrap();
        // A big group first keeps the thread busy (it is committed although nobody waits for
        // its answer), so the claims queued behind it cannot be answered within their first poll.
        use futures_util::FutureExt as _;
        assert!(
            store
                .commit(&[req(unkeyed("b", 20_000))])
                .now_or_never()
                .is_none()
        );
        // Each claim is polled once (its job is handed to the thread) and then dropped.
        let mut abandoned = 0;
        for _ in 0..20 {
            let once = store
                .claim(10, std::time::Duration::from_secs(600), 0, None)
                .now_or_never();
            abandoned += usize::from(once.is_none());
        }
        assert_eq!(
            abandoned, 20,
            "a claim was answered before the big group was committed"
        );
        // The lane handles its jobs in order: a claim now comes after every abandoned one.
        let claimed = store
            .claim(30_000, std::time::Duration::from_secs(600), 0, None)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 20_005, "every row is claimable again");
    }

    async fn sqlite_store(dir: &tempfile::TempDir) -> super::Store {
        use super::OutboxStore;
        let store = super::Store::open(&crate::config::StoreKind::Sqlite {
            path: dir.path().join("o.db"),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// A fresh PostgreSQL database, migrated; dropped by [`drop_pg`].
    async fn pg_store() -> (super::Store, String) {
        use super::OutboxStore;
        let name = format!("postbox_unit_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let store = super::Store::open(&crate::config::StoreKind::Postgres {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        (store, name)
    }

    async fn drop_pg(name: &str) {
        let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    /// Two requests of one group with the same `(source, id)` and different content: the
    /// second must not be told its content is stored (it was the first's), and taking it back
    /// must not delete the first's row.
    async fn one_id_twice_in_a_group(store: &super::Store) {
        use super::{OutboxStore, WriteOutcome};
        let mut other = row("same");
        other.content_hash = vec![2; 32];
        other.body = b"{\"other\":true}".to_vec();
        let mut mine = row("mine");
        mine.ordering_key = None;
        let out = store
            .commit(&[req(vec![row("same")]), req(vec![mine, other])])
            .await
            .unwrap();
        assert!(
            matches!(&out[0], WriteOutcome::Stored { replayed: false, refs } if refs.len() == 1)
        );
        assert_eq!(out[1], WriteOutcome::InProgress);
        let same = store.find("same", Some("/s")).await.unwrap();
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].event, serde_json::json!({}));
        assert!(
            store.find("mine", Some("/s")).await.unwrap().is_empty(),
            "nothing of the second request is stored"
        );
    }

    /// Two requests of one group with the same `Idempotency-Key`: the first is stored, the
    /// second answered "in progress"; the group does not fail on the unique index.
    async fn one_idempotency_key_twice_in_a_group(store: &super::Store) {
        use super::{OutboxStore, WriteOutcome, WriteRequest};
        let keyed = |id: &str| WriteRequest {
            rows: vec![row(id)],
            idempotency: Some(("key-1".to_owned(), vec![9; 32])),
        };
        let out = store.commit(&[keyed("k1"), keyed("k2")]).await.unwrap();
        assert!(matches!(
            &out[0],
            WriteOutcome::Stored {
                replayed: false,
                ..
            }
        ));
        assert_eq!(out[1], WriteOutcome::InProgress);
        assert!(store.find("k2", Some("/s")).await.unwrap().is_empty());
    }

    /// Commits cancelled at every point (a timeout, a dropped request) leave no connection
    /// inside a transaction: the next commit goes through at once.
    async fn cancelled_commits_do_not_wedge_the_store(store: &super::Store) {
        for k in 0..300 {
            cancelled_commit(store, k).await;
        }
        commits_promptly(store).await;
    }

    /// A commit cancelled after `k` turns of the scheduler. Timers tick in milliseconds, too
    /// coarse for a begin on a local database; a turn is a microsecond or so.
    async fn cancelled_commit(store: &super::Store, k: usize) {
        use super::OutboxStore;
        let mut r = row(&format!("c{k}"));
        r.ordering_key = None;
        let reqs = [req(vec![r])];
        tokio::select! {
            biased;
            _ = store.commit(&reqs) => {}
            () = async {
                for _ in 0..k * 2 {
                    tokio::task::yield_now().await;
                }
            } => {}
        }
    }

    async fn commits_promptly(store: &super::Store) {
        use super::OutboxStore;
        use std::time::Duration;
        let mut r = row("after");
        r.ordering_key = None;
        tokio::time::timeout(Duration::from_secs(3), store.commit(&[req(vec![r])]))
            .await
            .expect("the commit after the cancelled ones is not stuck behind a lock")
            .expect("the commit after the cancelled ones succeeds");
        tokio::time::timeout(Duration::from_secs(3), store.probe())
            .await
            .expect("probe not stuck")
            .expect("probe succeeds");
    }

    /// A published event's body goes after `payload_retention`; its row stays (a replay of its
    /// `(source, id)` still answers as one), it shows as pruned, and it cannot be redelivered.
    async fn published_bodies_are_dropped_and_rows_kept(store: &super::Store) {
        use super::{OutboxStore, Redeliver, Settlement, WriteOutcome};
        use std::time::Duration;
        let mut a = row("pa");
        a.ordering_key = None;
        store.commit(&[req(vec![a.clone()])]).await.unwrap();
        let claimed = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        store
            .settle(&[Settlement::Published {
                seq: claimed[0].seq,
            }])
            .await
            .unwrap();
        let later = super::now_micros() + 1_000_000;
        let (n, mark) = store.prune_payloads(later, 0, 100).await.unwrap();
        assert_eq!((n, mark), (1, later));
        let (again, _) = store.prune_payloads(later, mark, 100).await.unwrap();
        assert_eq!(again, 0);
        let rec = &store.find("pa", Some("/s")).await.unwrap()[0];
        assert!(rec.body_pruned);
        assert_eq!(rec.event, serde_json::Value::Null);
        let out = store.commit(&[req(vec![a])]).await.unwrap();
        assert!(matches!(
            &out[0],
            WriteOutcome::Stored { replayed: true, .. }
        ));
        let n = store
            .redeliver(Redeliver::One {
                id: "pa",
                source: "/s",
            })
            .await
            .unwrap();
        assert_eq!(n, 0, "no body, no redelivery");
    }

    #[tokio::test]
    async fn published_bodies_are_dropped_and_rows_kept_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        published_bodies_are_dropped_and_rows_kept(&sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn published_bodies_are_dropped_and_rows_kept_postgres() {
        let (store, name) = pg_store().await;
        published_bodies_are_dropped_and_rows_kept(&store).await;
        drop_pg(&name).await;
    }

    #[tokio::test]
    async fn group_commit_keeps_requests_apart_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        one_id_twice_in_a_group(&store).await;
        one_idempotency_key_twice_in_a_group(&store).await;
    }

    #[tokio::test]
    async fn group_commit_keeps_requests_apart_postgres() {
        let (store, name) = pg_store().await;
        one_id_twice_in_a_group(&store).await;
        one_idempotency_key_twice_in_a_group(&store).await;
        drop_pg(&name).await;
    }

    /// A new owner releases the row leases of the partitions it took over. A frozen previous
    /// owner may hold some of those rows in a transaction it cannot end (stopped inside its
    /// claim): releasing must skip them, not wait, or the takeover waits for the frozen one.
    #[tokio::test]
    async fn releasing_a_partition_skips_rows_a_stopped_transaction_holds() {
        use super::OutboxStore;
        let (store, name) = pg_store().await;
        let mut a = row("held");
        a.ordering_key = Some("k-held".into());
        let mut b = row("free");
        b.ordering_key = Some("k-held".into());
        store.commit(&[req(vec![a, b])]).await.unwrap();
        let partition = super::partition_of("k-held");
        let mut frozen =
            sqlx::PgConnection::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
                .await
                .unwrap();
        sqlx::query("update outbox set lease_until = 1")
            .execute(&mut frozen)
            .await
            .unwrap();
        sqlx::query("begin").execute(&mut frozen).await.unwrap();
        sqlx::query("update outbox set lease_until = 2 where event_id = 'held'")
            .execute(&mut frozen)
            .await
            .unwrap();
        let super::Store::Postgres(pg) = &store else {
            unreachable!("pg_store is PostgreSQL")
        };
        let released = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            pg.release_partition_leases(&[partition]),
        )
        .await
        .expect("released without waiting for the open transaction")
        .unwrap();
        sqlx::query("rollback").execute(&mut frozen).await.unwrap();
        drop(frozen);
        drop(store);
        drop_pg(&name).await;
        assert_eq!(released, 1, "the row nobody holds is released");
    }

    #[tokio::test]
    async fn cancelled_commits_do_not_wedge_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        cancelled_commits_do_not_wedge_the_store(&store).await;
    }

    /// On PostgreSQL a begin cancelled after `BEGIN` was sent and before sqlx counted it left
    /// the session `idle in transaction` with sqlx believing it idle: its later statements
    /// were never committed and its locks never freed.
    #[tokio::test]
    async fn cancelled_commits_leave_no_session_idle_in_transaction_postgres() {
        let (store, name) = pg_store().await;
        let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        // Look after each one, before the next begin on the same session could paper over
        // it. A cancelled statement's rollback is on its way for a moment; a session that
        // stays idle in transaction for 300 ms with nothing running is left there.
        let mut worst = 0i64;
        for k in 0..200 {
            cancelled_commit(&store, k).await;
            let mut idle_in_tx = 0;
            for _ in 0..30 {
                idle_in_tx = sqlx::query_scalar(
                    "select count(*) from pg_stat_activity where datname = $1 \
                     and state like 'idle in transaction%'",
                )
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
                if idle_in_tx == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            worst = worst.max(idle_in_tx);
        }
        commits_promptly(&store).await;
        drop(store);
        drop_pg(&name).await;
        assert_eq!(worst, 0, "sessions left idle in transaction");
    }

    /// A TCP proxy to `upstream` that holds every chunk from the server for `delay`: a slow
    /// link, so that a cancellation can be placed inside a round trip.
    async fn slow_link(upstream: &'static str, delay: std::time::Duration) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    /// A begin cancelled after `BEGIN` went out and before its answer came back left the
    /// session `idle in transaction` while sqlx believed it idle (its rollback guard only acts
    /// once the depth is counted): later statements on it were never committed and its locks
    /// never freed. Over a link where every answer takes 40 ms, cancelling commits at every
    /// 10 ms step lands inside that window.
    #[tokio::test]
    async fn a_begin_cancelled_in_flight_leaves_no_session_idle_in_transaction() {
        use super::OutboxStore;
        use std::time::Duration;
        let (direct, name) = pg_store().await;
        drop(direct);
        let port = slow_link("127.0.0.1:5432", Duration::from_millis(40)).await;
        let store = super::Store::open(&crate::config::StoreKind::Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/{name}"),
        })
        .await
        .unwrap();
        let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        let mut stuck = Vec::new();
        for k in 0..30u64 {
            let mut r = row(&format!("s{k}"));
            r.ordering_key = None;
            let reqs = [req(vec![r])];
            let _ = tokio::time::timeout(Duration::from_millis(10 * k), store.commit(&reqs)).await;
            // Let whatever the cancelled commit left in flight come back (a rollback on its
            // way is not a leftover), then look.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where datname = $1 \
                 and state like 'idle in transaction%'",
            )
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            if n > 0 {
                stuck.push(k * 10);
            }
        }
        drop(store);
        drop_pg(&name).await;
        assert!(
            stuck.is_empty(),
            "sessions left idle in transaction after cancelling at {stuck:?} ms"
        );
    }

    /// A relay whose lease ran out and whose rows were claimed and published by another
    /// cannot undo that: its late retry or release is fenced by its lease.
    #[tokio::test]
    async fn a_stale_settlement_changes_nothing_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        a_stale_settlement_changes_nothing(&sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn a_stale_settlement_changes_nothing_postgres() {
        let (store, name) = pg_store().await;
        a_stale_settlement_changes_nothing(&store).await;
        drop_pg(&name).await;
    }

    /// A claim of the two rows `store` holds, one of them without its payload: it fails.
    async fn claim_fails_for_a_missing_payload(store: &super::Store) {
        use super::OutboxStore;
        let err = store
            .claim(10, std::time::Duration::from_secs(60), 0, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("1 of 2 claimed events have no row in outbox_payload"),
            "{err}"
        );
    }

    /// A claim that finds a row without its payload fails, and leaves no lease behind: the
    /// rows are claimable again at once (PostgreSQL reads the payloads in the claim's own
    /// statement, and gives the leases back when one is missing).
    #[tokio::test]
    async fn a_claim_missing_a_payload_fails_and_keeps_no_lease_postgres() {
        use super::OutboxStore;
        let (store, name) = pg_store().await;
        let super::Store::Postgres(pg) = &store else {
            panic!("a PostgreSQL store")
        };
        let (mut a, mut b) = (row("a"), row("b"));
        a.ordering_key = None;
        b.ordering_key = None;
        store.commit(&[req(vec![a, b])]).await.unwrap();
        sqlx::query(
            "delete from outbox_payload where seq = (select seq from outbox where event_id = 'b')",
        )
        .execute(&pg.pool)
        .await
        .unwrap();
        claim_fails_for_a_missing_payload(&store).await;
        let leased: i64 =
            sqlx::query_scalar("select count(*) from outbox where lease_until is not null")
                .fetch_one(&pg.pool)
                .await
                .unwrap();
        assert_eq!(leased, 0, "the failed claim's leases are given back");
        drop_pg(&name).await;
    }

    /// The same on SQLite, whose lane reads the rows and their payloads in one joined
    /// statement: a row without its payload fails the claim, and nothing is held, so the rows
    /// are claimable again as soon as the payload is back.
    #[tokio::test]
    async fn a_claim_missing_a_payload_fails_and_keeps_no_lease_sqlite() {
        use super::OutboxStore;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        store.commit(&[req(unkeyed("p", 2))]).await.unwrap();
        let other = rusqlite::Connection::open(dir.path().join("o.db")).unwrap();
        let seq: i64 = other
            .query_row("select seq from outbox where event_id = 'p-1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let (body, attributes): (Vec<u8>, String) = other
            .query_row(
                "select body, attributes from outbox_payload where seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        other
            .execute("delete from outbox_payload where seq = ?1", [seq])
            .unwrap();
        claim_fails_for_a_missing_payload(&store).await;
        other
            .execute(
                "insert into outbox_payload (seq, body, attributes) values (?1, ?2, ?3)",
                rusqlite::params![seq, body, attributes],
            )
            .unwrap();
        let claimed = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        let ids: Vec<&str> = claimed.iter().map(|c| c.event_id.as_str()).collect();
        assert_eq!(ids, ["p-0", "p-1"], "the failed claim held nothing");
        assert_eq!(claimed[1].body, body);
    }

    /// Partition scopes are PostgreSQL's: a SQLite claim with one is refused, and claims
    /// without one (through the lane) take every partition's rows.
    #[tokio::test]
    async fn a_sqlite_claim_with_a_partition_scope_is_refused() {
        use super::{ClaimScope, OutboxStore};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let rows = ["a", "b", "c"]
            .into_iter()
            .map(|key| {
                let mut r = row(&format!("e-{key}"));
                r.ordering_key = Some(key.into());
                r
            })
            .collect();
        store.commit(&[req(rows)]).await.unwrap();
        let scope = ClaimScope {
            partitions: &[0, 1, 2],
            epochs: &[1, 1, 1],
            owner: "me",
        };
        let refused = store
            .claim(10, Duration::from_secs(60), 0, Some(&scope))
            .await;
        assert!(
            refused.as_ref().is_err_and(|e| e
                .to_string()
                .contains("a claim with a partition scope is for PostgreSQL")),
            "{refused:?}"
        );
        let all = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert_eq!(all.len(), 3, "every partition's rows, through the lane");
    }

    /// A server takes its SQLite outbox for itself: a second one on the same file is refused
    /// with the reason, until the first is gone.
    #[tokio::test]
    async fn a_second_server_on_one_sqlite_outbox_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = sqlite_store(&dir).await;
        first.take_over().await.unwrap();
        first.take_over().await.unwrap();
        let second = sqlite_store(&dir).await;
        let refused = second.take_over().await.unwrap_err().to_string();
        assert!(
            refused.contains("another postbox process serves the SQLite outbox"),
            "{refused}"
        );
        drop(first);
        second.take_over().await.unwrap();
    }

    /// SQLite's leases live in the lane's memory: a claim writes nothing, a second claim skips
    /// the rows the first holds, and after a settlement failed to commit, claims wait until the
    /// database takes writes again (so a full disk does not have the relay publish batches it
    /// cannot record), while the failed batch's rows stay held.
    #[tokio::test]
    async fn sqlite_leases_are_held_in_memory_and_a_failed_settlement_stops_claims() {
        use super::{OutboxStore, Settlement, Status};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        store.commit(&[req(unkeyed("m", 3))]).await.unwrap();
        let first = store
            .claim(2, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        let other = rusqlite::Connection::open(dir.path().join("o.db")).unwrap();
        let written: i64 = other
            .query_row(
                "select count(*) from outbox where lease_until is not null",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(written, 0, "a claim writes no lease");
        let second = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert_eq!(second.len(), 1, "the held rows are skipped");
        assert_eq!(second[0].event_id, "m-2");
        // Another writer holds SQLite's write lock: the settlement fails (after the relay's
        // busy wait), and so does the next claim.
        other.execute_batch("begin immediate").unwrap();
        let published: Vec<Settlement> = first
            .iter()
            .map(|r| Settlement::Published { seq: r.seq })
            .collect();
        assert!(store.settle(&published).await.is_err());
        let refused = store.claim(10, Duration::from_secs(60), 0, None).await;
        assert!(refused.is_err(), "{refused:?}");
        other.execute_batch("commit").unwrap();
        // Writes work again: claims resume, and the unsettled rows are still held.
        let third = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert!(third.is_empty(), "{third:?}");
        store.settle(&published).await.unwrap();
        for r in &first {
            let found = store.find(&r.event_id, Some("/s")).await.unwrap();
            assert_eq!(found[0].status, Status::Published);
        }
    }

    /// A relay whose lease ran out settles late: its retry and release must change nothing.
    async fn a_stale_settlement_changes_nothing(store: &super::Store) {
        use super::{OutboxStore, Settlement, Status, WriteRequest};
        use std::time::Duration;
        store
            .commit(&[WriteRequest {
                rows: vec![row("a"), row("b")],
                idempotency: None,
            }])
            .await
            .unwrap();
        // The first claim's lease is over at once: the "other relay" claims the row again.
        let first = store.claim(10, Duration::ZERO, 0, None).await.unwrap();
        assert_eq!(first.len(), 1, "head of key `k` only");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(first[0].lease, second[0].lease);
        assert_eq!(second[0].body, b"{}");
        store
            .settle(&[Settlement::Published { seq: second[0].seq }])
            .await
            .unwrap();
        // The stale relay's confirm timed out: its retry and release must not touch the row.
        store
            .settle(&[
                Settlement::Failed {
                    seq: first[0].seq,
                    attempts: 1,
                    error: "timeout".into(),
                    next_attempt_at: 0,
                    dead: true,
                    lease: first[0].lease,
                },
                Settlement::Released {
                    seq: first[0].seq,
                    lease: first[0].lease,
                },
            ])
            .await
            .unwrap();
        let a = store.find("a", Some("/s")).await.unwrap();
        assert_eq!(a[0].status, Status::Published);
        assert_eq!(a[0].last_error, None);
        // The next event of the key is free now, and a fenced retry of it applies.
        let next = store
            .claim(10, Duration::from_secs(60), 0, None)
            .await
            .unwrap();
        assert_eq!(next.len(), 1);
        store
            .settle(&[Settlement::Failed {
                seq: next[0].seq,
                attempts: 1,
                error: "nack".into(),
                next_attempt_at: 0,
                dead: true,
                lease: next[0].lease,
            }])
            .await
            .unwrap();
        assert_eq!(
            store.find("b", Some("/s")).await.unwrap()[0].status,
            Status::Dead
        );
    }
}
