//! SQL shared by both backends. SQLite and PostgreSQL both take `$N` placeholders, `RETURNING`
//! and `ON CONFLICT`, and both store times as integer µs, so one body of code, expanded per
//! backend by [`shared_store_impl!`], serves them; only claiming and settling differ.

/// Columns the relay reads.
pub const CLAIM_COLUMNS: &str =
    "seq, event_id, ce_type, routing_key, body, attributes, traceparent, attempts, created_at";

/// Columns `GET /v1/events/{id}` reads.
pub const RECORD_COLUMNS: &str = "event_id, source, event_type, version, subject, ordering_key, routing_key, status, attempts, last_error, event_time, created_at, updated_at, next_attempt_at, published_at, body";

pub const INSERT: &str = "insert into outbox (event_id, source, event_type, version, ce_type, subject, ordering_key, event_time, routing_key, body, attributes, content_hash, traceparent, status, attempts, next_attempt_at, created_at, updated_at) \
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', 0, $14, $14, $14) \
     on conflict (source, event_id) do nothing returning seq";

pub const SELECT_HASH: &str = "select content_hash from outbox where source = $1 and event_id = $2";

pub const SELECT_KEY: &str = "select request_hash, response from idempotency_keys where key = $1";

pub const INSERT_KEY: &str = "insert into idempotency_keys (key, request_hash, response, created_at) values ($1, $2, $3, $4)";

pub const STATS: &str = "select \
     (select count(*) from outbox where status = 'pending'), \
     (select min(created_at) from outbox where status = 'pending'), \
     (select count(*) from outbox where status = 'dead')";

pub const PRUNE_ROWS: &str = "delete from outbox where seq in \
     (select seq from outbox where status = 'published' and published_at < $1 order by published_at limit $2)";

pub const PRUNE_KEYS: &str = "delete from idempotency_keys where key in \
     (select key from idempotency_keys where created_at < $1 limit $2)";

pub const RETRY: &str = "update outbox set attempts = $1, last_error = $2, next_attempt_at = $3, status = $4, \
     lease_until = null, updated_at = $5 where seq = $6";

pub const RELEASE: &str = "update outbox set lease_until = null where seq = $1";

/// Decode a relay row.
macro_rules! claimed_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        $crate::outbox::Claimed {
            seq: r.try_get("seq")?,
            event_id: r.try_get("event_id")?,
            ce_type: r.try_get("ce_type")?,
            routing_key: r.try_get("routing_key")?,
            body: r.try_get("body")?,
            attributes: r.try_get("attributes")?,
            traceparent: r.try_get("traceparent")?,
            attempts: r.try_get("attempts")?,
            created_at: r.try_get("created_at")?,
        }
    }};
}
pub(crate) use claimed_from_row;

/// The whole [`OutboxStore`](crate::outbox::OutboxStore) implementation for a type with a
/// `pool: sqlx::Pool<$db>` field, `migrator()`, `mark_published(tx, seqs, now)` and a
/// `CLAIM_LOCK` clause appended to the claim's row selection.
macro_rules! shared_store_impl {
    ($store:ty, $db:ty, $name:literal) => {
        impl $crate::outbox::OutboxStore for $store {
            async fn migrate(&self) -> anyhow::Result<()> {
                use anyhow::Context as _;
                Self::migrator()
                    .run(&self.pool)
                    .await
                    .context(concat!("migrating the ", $name, " outbox"))
            }

            async fn ping(&self) -> $crate::outbox::StoreResult<()> {
                sqlx::query("select 1").execute(&self.pool).await.map(|_| ())
            }

            async fn commit(
                &self,
                reqs: &[$crate::outbox::WriteRequest],
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::WriteOutcome>> {
                self.commit_group(reqs).await
            }

            async fn find(
                &self,
                id: &str,
                source: Option<&str>,
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::EventRecord>> {
                self.find_events(id, source).await
            }

            async fn claim(
                &self,
                limit: u32,
                lease: std::time::Duration,
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::Claimed>> {
                let now = $crate::outbox::now_micros();
                let lease_until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
                let q = format!(
                    "update outbox set lease_until = $1 where seq in \
                     (select seq from outbox where status = 'pending' and next_attempt_at <= $2 \
                      and (lease_until is null or lease_until < $2) order by seq limit $3 {}) \
                     returning {}",
                    Self::CLAIM_LOCK,
                    $crate::outbox::sql::CLAIM_COLUMNS
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(lease_until)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                let mut claimed = Vec::with_capacity(rows.len());
                for r in &rows {
                    claimed.push($crate::outbox::sql::claimed_from_row!(r));
                }
                // RETURNING does not promise an order; publish in commit order.
                claimed.sort_by_key(|c| c.seq);
                Ok(claimed)
            }

            async fn settle(
                &self,
                results: &[$crate::outbox::Settlement],
            ) -> $crate::outbox::StoreResult<()> {
                let now = $crate::outbox::now_micros();
                let published: Vec<i64> = results
                    .iter()
                    .filter_map(|s| match s {
                        $crate::outbox::Settlement::Published { seq } => Some(*seq),
                        _ => None,
                    })
                    .collect();
                let mut tx = self.pool.begin().await?;
                if !published.is_empty() {
                    Self::mark_published(&mut tx, &published, now).await?;
                }
                Self::settle_others(&mut tx, results, now).await?;
                tx.commit().await
            }

            async fn stats(&self) -> $crate::outbox::StoreResult<$crate::outbox::Stats> {
                self.backlog_stats().await
            }

            async fn prune(&self, before: i64, limit: u32) -> $crate::outbox::StoreResult<u64> {
                self.prune_before(before, limit).await
            }
        }

        impl $store {
            /// Group commit: one transaction; requests with several rows get a savepoint so that
            /// one bad request leaves the others intact.
            async fn commit_group(
                &self,
                reqs: &[$crate::outbox::WriteRequest],
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::WriteOutcome>> {
                use sqlx::Acquire as _;
                let now = $crate::outbox::now_micros();
                let mut tx = self.begin_write().await?;
                let mut outcomes = Vec::with_capacity(reqs.len());
                for req in reqs {
                    let outcome = if req.rows.len() > 1 {
                        let mut sp = (&mut tx).begin().await?;
                        let outcome = Self::write_request(&mut sp, req, now).await?;
                        if matches!(outcome, $crate::outbox::WriteOutcome::KeyReused(_)) {
                            sp.rollback().await?;
                        } else {
                            sp.commit().await?;
                        }
                        outcome
                    } else {
                        Self::write_request(&mut tx, req, now).await?
                    };
                    outcomes.push(outcome);
                }
                tx.commit().await?;
                Ok(outcomes)
            }

            async fn write_request(
                conn: &mut sqlx::Transaction<'_, $db>,
                req: &$crate::outbox::WriteRequest,
                now: i64,
            ) -> $crate::outbox::StoreResult<$crate::outbox::WriteOutcome> {
                use $crate::outbox::{StoredRef, WriteOutcome, sql};
                use sqlx::Row as _;
                if let Some((key, hash)) = &req.idempotency {
                    let prior = sqlx::query(sql::SELECT_KEY)
                        .bind(key)
                        .fetch_optional(&mut **conn)
                        .await?;
                    if let Some(row) = prior {
                        let prior_hash: Vec<u8> = row.try_get(0)?;
                        if &prior_hash != hash {
                            return Ok(WriteOutcome::KeyReused(format!(
                                "Idempotency-Key `{key}` was already used for a different request"
                            )));
                        }
                        let response: String = row.try_get(1)?;
                        let refs: Vec<StoredRef> = serde_json::from_str(&response)
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        return Ok(WriteOutcome::Stored {
                            refs,
                            replayed: true,
                        });
                    }
                }
                let mut refs = Vec::with_capacity(req.rows.len());
                let mut all_replayed = true;
                for r in &req.rows {
                    let inserted = sqlx::query(sql::INSERT)
                        .bind(&r.event_id)
                        .bind(&r.source)
                        .bind(&r.event_type)
                        .bind(&r.version)
                        .bind(&r.ce_type)
                        .bind(&r.subject)
                        .bind(&r.ordering_key)
                        .bind(r.event_time)
                        .bind(&r.routing_key)
                        .bind(&r.body)
                        .bind(&r.attributes)
                        .bind(&r.content_hash)
                        .bind(&r.traceparent)
                        .bind(now)
                        .fetch_optional(&mut **conn)
                        .await?;
                    if inserted.is_none() {
                        let prior: Option<Vec<u8>> = sqlx::query_scalar(sql::SELECT_HASH)
                            .bind(&r.source)
                            .bind(&r.event_id)
                            .fetch_optional(&mut **conn)
                            .await?;
                        if prior.as_ref() != Some(&r.content_hash) {
                            return Ok(WriteOutcome::KeyReused(format!(
                                "event id `{}` of source `{}` was already used for different content",
                                r.event_id, r.source
                            )));
                        }
                    } else {
                        all_replayed = false;
                    }
                    refs.push(StoredRef {
                        id: r.event_id.clone(),
                        source: r.source.clone(),
                    });
                }
                if let Some((key, hash)) = &req.idempotency {
                    let response = serde_json::to_string(&refs)
                        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                    sqlx::query(sql::INSERT_KEY)
                        .bind(key)
                        .bind(hash)
                        .bind(response)
                        .bind(now)
                        .execute(&mut **conn)
                        .await?;
                }
                Ok(WriteOutcome::Stored {
                    refs,
                    replayed: all_replayed,
                })
            }

            async fn find_events(
                &self,
                id: &str,
                source: Option<&str>,
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::EventRecord>> {
                use $crate::outbox::{EventRecord, Status, from_micros, sql};
                use sqlx::Row as _;
                let filter = if source.is_some() { " and source = $2" } else { "" };
                let q = format!(
                    "select {} from outbox where event_id = $1{filter} order by seq limit 20",
                    sql::RECORD_COLUMNS
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(id);
                if let Some(source) = source {
                    query = query.bind(source);
                }
                let rows = query.fetch_all(&self.pool).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let status: String = r.try_get("status")?;
                    let status = Status::parse(&status);
                    let body: Vec<u8> = r.try_get("body")?;
                    let next: i64 = r.try_get("next_attempt_at")?;
                    out.push(EventRecord {
                        id: r.try_get("event_id")?,
                        source: r.try_get("source")?,
                        event_type: r.try_get("event_type")?,
                        version: r.try_get("version")?,
                        subject: r.try_get("subject")?,
                        key: r.try_get("ordering_key")?,
                        routing_key: r.try_get("routing_key")?,
                        status,
                        attempts: r.try_get("attempts")?,
                        last_error: r.try_get("last_error")?,
                        time: from_micros(r.try_get("event_time")?),
                        created_at: from_micros(r.try_get("created_at")?),
                        updated_at: from_micros(r.try_get("updated_at")?),
                        next_attempt_at: (status == Status::Pending).then(|| from_micros(next)),
                        published_at: r
                            .try_get::<Option<i64>, _>("published_at")?
                            .map(from_micros),
                        event: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                    });
                }
                Ok(out)
            }

            async fn backlog_stats(&self) -> $crate::outbox::StoreResult<$crate::outbox::Stats> {
                use sqlx::Row as _;
                let r = sqlx::query($crate::outbox::sql::STATS)
                    .fetch_one(&self.pool)
                    .await?;
                Ok($crate::outbox::Stats {
                    pending: r.try_get(0)?,
                    oldest_pending: r.try_get(1)?,
                    dead: r.try_get(2)?,
                })
            }

            async fn prune_before(&self, before: i64, limit: u32) -> $crate::outbox::StoreResult<u64> {
                use $crate::outbox::sql;
                let rows = sqlx::query(sql::PRUNE_ROWS)
                    .bind(before)
                    .bind(i64::from(limit))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                let keys = sqlx::query(sql::PRUNE_KEYS)
                    .bind(before)
                    .bind(i64::from(limit))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(rows + keys)
            }

            /// Failed and released rows: one statement each (rare path), in one transaction.
            async fn settle_others(
                tx: &mut sqlx::Transaction<'_, $db>,
                results: &[$crate::outbox::Settlement],
                now: i64,
            ) -> $crate::outbox::StoreResult<()> {
                use $crate::outbox::{Settlement, Status, sql};
                for s in results {
                    match s {
                        Settlement::Published { .. } => {}
                        Settlement::Failed {
                            seq,
                            attempts,
                            error,
                            next_attempt_at,
                            dead,
                        } => {
                            let status = if *dead { Status::Dead } else { Status::Pending };
                            sqlx::query(sql::RETRY)
                                .bind(*attempts)
                                .bind(error)
                                .bind(*next_attempt_at)
                                .bind(status.as_str())
                                .bind(now)
                                .bind(*seq)
                                .execute(&mut **tx)
                                .await?;
                        }
                        Settlement::Released { seq } => {
                            sqlx::query(sql::RELEASE).bind(*seq).execute(&mut **tx).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    };
}
pub(crate) use shared_store_impl;
