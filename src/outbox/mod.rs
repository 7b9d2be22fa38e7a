//! The outbox: row types, the [`OutboxStore`] trait, and the two backends behind [`Store`].
//!
//! Timestamps are stored as integer microseconds since the Unix epoch in both backends, so the
//! same SQL and the same decoding serve SQLite and PostgreSQL (see `sql.rs`).

pub mod housekeeping;
pub mod partitions;
mod postgres;
mod sql;
mod sqlite;
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
        partitions::partition_of(self.ordering_key.as_deref().unwrap_or(&self.event_id))
    }
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
}

/// A row claimed by the relay.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Commit-order sequence.
    pub seq: i64,
    /// Event id (AMQP `message_id`).
    pub event_id: String,
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
    /// Partition (see [`partitions`]).
    pub partition: i32,
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
    /// The CloudEvent as published.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
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
    /// Lease up to `limit` due rows, oldest first; only rows of `partitions` when given.
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
        partitions: Option<&[i32]>,
    ) -> impl Future<Output = StoreResult<Vec<Claimed>>> + Send;
    /// Record publish results.
    fn settle(&self, results: &[Settlement]) -> impl Future<Output = StoreResult<()>> + Send;
    /// Backlog figures.
    fn stats(&self) -> impl Future<Output = StoreResult<Stats>> + Send;
    /// Delete up to `limit` published rows and idempotency keys older than `before`.
    fn prune(&self, before: i64, limit: u32) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Up to `limit` events with `status`, after the cursor `after` (a `seq`), oldest first.
    fn list(
        &self,
        status: Status,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<(i64, EventRecord)>>> + Send;
    /// Make events pending again with fresh attempts; returns how many.
    fn redeliver(&self, target: Redeliver<'_>) -> impl Future<Output = StoreResult<u64>> + Send;
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
    /// Every dead event, optionally of one type.
    AllDead {
        /// Only this type.
        event_type: Option<&'a str>,
    },
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

    /// At start-up: an embedded SQLite outbox has one relay (this process), so leases left by a
    /// crash are stale and released at once. With PostgreSQL other instances may hold live
    /// leases; those of a dead instance are released when its partitions are taken over (see
    /// [`partitions`]).
    pub async fn release_stale_leases(&self) -> StoreResult<()> {
        match self {
            Store::Sqlite(s) => s.release_leases().await,
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
        partitions: Option<&[i32]>,
    ) -> StoreResult<Vec<Claimed>> {
        delegate!(self, s => s.claim(limit, lease, partitions).await)
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
    async fn list(
        &self,
        status: Status,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, EventRecord)>> {
        delegate!(self, s => s.list(status, after, limit).await)
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

    /// A relay whose lease ran out and whose rows were claimed and published by another
    /// cannot undo that: its late retry or release is fenced by its lease.
    #[tokio::test]
    async fn a_stale_settlement_changes_nothing() {
        use super::{OutboxStore, Settlement, Status, WriteRequest};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(&crate::config::StoreKind::Sqlite {
            path: dir.path().join("o.db"),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
            .commit(&[WriteRequest {
                rows: vec![row("a"), row("b")],
                idempotency: None,
            }])
            .await
            .unwrap();
        // The first claim's lease is over at once: the "other relay" claims the row again.
        let first = store.claim(10, Duration::ZERO, None).await.unwrap();
        assert_eq!(first.len(), 1, "head of key `k` only");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = store
            .claim(10, Duration::from_secs(60), None)
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
            .claim(10, Duration::from_secs(60), None)
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
