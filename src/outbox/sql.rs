//! SQL shared by both backends. SQLite and PostgreSQL both take `$N` placeholders, `RETURNING`
//! and `ON CONFLICT`, and both store times as integer µs, so one body of code, expanded per
//! backend by [`shared_store_impl!`], serves them; only claiming and settling differ.

/// Columns the relay reads from `outbox` (the body comes from `outbox_payload`). SQLite's lane
/// reads them by position: keep the order.
pub const CLAIM_COLUMNS: &str = "seq, event_id, source, ce_type, routing_key, traceparent, tracestate, attempts, created_at, partition_id, lease_until, ordering_key is not null as keyed";

/// Columns `GET /v1/events/{id}` reads from [`RECORD_FROM`].
pub const RECORD_COLUMNS: &str = "event_id, source, event_type, version, subject, ordering_key, routing_key, status, attempts, last_error, event_time, created_at, updated_at, next_attempt_at, published_at, body, api_key, traceparent";

/// Rows per multi-row insert: 19 parameters each stays far below both backends' limits.
pub const INSERT_CHUNK: usize = 500;

/// Events with their bodies. The body (about 1 KB and more) lives in its own table, written
/// once and never updated, so that the relay's lease and settle updates rewrite narrow rows
/// only: a fraction of the pages (SQLite) and tuple versions (PostgreSQL) they used to. A left
/// join: a published event's body is dropped after `payload_retention_hours` while its row
/// (the idempotency record) stays for `retention_hours`.
pub const RECORD_FROM: &str = "outbox left join outbox_payload using (seq)";

pub const INSERT_PAYLOAD_HEAD: &str = "insert into outbox_payload (seq, body, attributes) ";

/// New rows are `pending` with no attempts (column defaults), due at once.
pub const INSERT_HEAD: &str = "insert into outbox (event_id, source, event_type, version, ce_type, subject, ordering_key, event_time, routing_key, content_hash, traceparent, tracestate, api_key, created_at, next_attempt_at, updated_at, partition_id) ";

pub const INSERT_TAIL: &str =
    " on conflict (source, event_id) do nothing returning seq, source, event_id";

/// [`INSERT_TAIL`] without `returning`: SQLite keeps returned rows in a temporary table made
/// for each execution; its lane reads the new `seq` from `last_insert_rowid()` instead.
pub const INSERT_TAIL_QUIET: &str = " on conflict (source, event_id) do nothing";

pub const DELETE_ROW: &str = "delete from outbox where seq = $1";

pub const DELETE_PAYLOAD: &str = "delete from outbox_payload where seq = $1";

pub const SELECT_HASH: &str = "select content_hash from outbox where source = $1 and event_id = $2";

pub const SELECT_KEY: &str = "select request_hash, response from idempotency_keys where key = $1";

pub const INSERT_KEY: &str = "insert into idempotency_keys (key, request_hash, response, created_at) values ($1, $2, $3, $4)";

pub const STATS: &str = "select \
     (select count(*) from outbox where status = 'pending'), \
     (select min(created_at) from outbox where status = 'pending'), \
     (select count(*) from outbox where status = 'dead')";

pub const PRUNE_ROWS: &str = "delete from outbox where seq in \
     (select seq from outbox where status = 'published' and published_at < $1 order by published_at limit $2) \
     and status = 'published' returning seq";

pub const PRUNE_KEYS: &str = "delete from idempotency_keys where key in \
     (select key from idempotency_keys where created_at < $1 limit $2)";

pub const RETRY: &str = "update outbox set attempts = $1, last_error = $2, next_attempt_at = $3, status = $4, \
     lease_until = null, updated_at = $5 where seq = $6 and status = 'pending' and lease_until = $7";

pub const PROBE: &str = "insert into writer_probe (id, at) values (1, $1) \
     on conflict (id) do update set at = excluded.at";

pub const RELEASE: &str = "update outbox set lease_until = null where seq = $1 and status = 'pending' and lease_until = $2";

/// The `seq`s a claim takes (see [`claim_select`]).
pub fn claim_candidates(filter: &str, lock: &str) -> String {
    claim_select("o.seq", "", filter, lock)
}

/// The claim's selection: `columns` of up to `$3` due rows (`$2` now) with a `seq` above `$4`
/// whose lease (if any) has run out, in commit order; `join` follows `from outbox o`,
/// `filter` narrows the rows (partitions), `lock` is appended. A keyed row is taken only when
/// it is the oldest pending row of its key. PostgreSQL leases the rows it selects in the same
/// statement (`PgStore::claim_rows`); SQLite holds its leases in memory (`sqlite_lane.rs`).
pub fn claim_select(columns: &str, join: &str, filter: &str, lock: &str) -> String {
    format!(
        "select {columns} from outbox o {join} where o.status = 'pending' and o.seq > $4 \
          and o.next_attempt_at <= $2 and (o.lease_until is null or o.lease_until < $2) {filter} \
          and (o.ordering_key is null or not exists \
            (select 1 from outbox p where p.ordering_key = o.ordering_key \
             and p.status = 'pending' and p.seq < o.seq)) \
          order by o.seq limit $3 {lock}"
    )
}

/// Decode a relay row.
macro_rules! claimed_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        $crate::outbox::Claimed {
            seq: r.try_get("seq")?,
            event_id: r.try_get("event_id")?,
            source: r.try_get("source")?,
            ce_type: r.try_get("ce_type")?,
            routing_key: r.try_get("routing_key")?,
            body: Vec::new(),
            attributes: String::new(),
            traceparent: r.try_get("traceparent")?,
            tracestate: r.try_get("tracestate")?,
            attempts: r.try_get("attempts")?,
            created_at: r.try_get("created_at")?,
            partition: r.try_get("partition_id")?,
            keyed: r.try_get("keyed")?,
            lease: r
                .try_get::<Option<i64>, _>("lease_until")?
                .unwrap_or_default(),
        }
    }};
}
pub(crate) use claimed_from_row;

/// The whole [`OutboxStore`](crate::outbox::OutboxStore) implementation for a type with a
/// `pool` (durable) and `relay_pool` (PostgreSQL's leases and settlements; SQLite's pruning)
/// `sqlx::Pool<$db>` fields,
/// `migrator()`, `insert_rows(tx, rows, now)` (new rows and their payloads; returns
/// `(seq, source, event_id)` of those inserted), `mark_published(executor, seqs, now)`, and
/// `claim_rows(limit, lease, after, scope)` (a claim the store's lane does not serve), besides
/// `lane()`, `upkeep_pool()`, `serialize_writes()`, `begin_write()`, `run_migrations()`,
/// `SEQ_IN_1` and `bind_seqs`.
macro_rules! shared_store_impl {
    ($store:ty, $db:ty, $name:literal) => {
        impl $crate::outbox::OutboxStore for $store {
            async fn migrate(&self) -> anyhow::Result<()> {
                use anyhow::Context as _;
                self.run_migrations()
                    .await
                    .context(concat!("migrating the ", $name, " outbox"))
            }

            async fn ping(&self) -> $crate::outbox::StoreResult<()> {
                sqlx::query("select 1").execute(&self.pool).await.map(|_| ())
            }

            /// A real, durable write through the writer's own path (`begin_write`, the
            /// durable pool): succeeds only when an event's commit would.
            async fn probe(&self) -> $crate::outbox::StoreResult<()> {
                let _serial = self.serialize_writes().await;
                let mut tx = self.begin_write().await?;
                sqlx::query($crate::outbox::sql::PROBE)
                    .bind($crate::outbox::now_micros())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }

            async fn commit(
                &self,
                reqs: &[$crate::outbox::WriteRequest],
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::WriteOutcome>> {
                match self.lane() {
                    Some(lane) => {
                        let _serial = self.serialize_writes().await;
                        lane.commit(reqs).await
                    }
                    None => self.commit_group(reqs).await,
                }
            }

            async fn find(
                &self,
                id: &str,
                source: Option<&str>,
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::EventRecord>> {
                self.find_events(id, source).await
            }

            /// Due, unleased rows in commit order (of the given partitions only, when several
            /// instances split the outbox). A keyed row is taken only when it is the oldest
            /// pending row of its key, so events with one key are published one at a time, in
            /// commit order, across retries and instances; a failing event holds back only its
            /// own key. (A dead event no longer holds its key back.)
            async fn claim(
                &self,
                limit: u32,
                lease: std::time::Duration,
                after: i64,
                scope: Option<&$crate::outbox::ClaimScope<'_>>,
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::Claimed>> {
                if scope.is_some_and(|s| s.partitions.is_empty()) {
                    return Ok(Vec::new());
                }
                if let (Some(lane), None) = (self.lane(), scope) {
                    // A read (the lane holds SQLite's leases in memory): no turn to write.
                    return lane.claim(limit, lease, after).await;
                }
                self.claim_rows(limit, lease, after, scope).await
            }

            async fn settle(
                &self,
                results: &[$crate::outbox::Settlement],
            ) -> $crate::outbox::StoreResult<()> {
                if let Some(lane) = self.lane() {
                    let _serial = self.serialize_writes().await;
                    return lane.settle(results).await;
                }
                let now = $crate::outbox::now_micros();
                let published: Vec<i64> = results
                    .iter()
                    .filter_map(|s| match s {
                        $crate::outbox::Settlement::Published { seq } => Some(*seq),
                        _ => None,
                    })
                    .collect();
                if results.is_empty() {
                    return Ok(());
                }
                let _serial = self.serialize_writes().await;
                if published.len() == results.len() {
                    // The common case: one statement, no transaction (one round trip).
                    return Self::mark_published(&self.relay_pool, &published, now).await;
                }
                let mut tx = $crate::outbox::pool::begin(&self.relay_pool, None).await?;
                if !published.is_empty() {
                    Self::mark_published(&mut *tx, &published, now).await?;
                }
                Self::settle_others(&mut tx, results, now).await?;
                tx.commit().await
            }

            async fn stats(&self) -> $crate::outbox::StoreResult<$crate::outbox::Stats> {
                self.backlog_stats().await
            }

            async fn list(
                &self,
                filter: &$crate::outbox::EventFilter,
                page: $crate::outbox::PageRequest,
            ) -> $crate::outbox::StoreResult<Vec<(i64, $crate::outbox::EventRecord)>> {
                self.list_events(filter, page).await
            }

            async fn count(
                &self,
                filter: &$crate::outbox::EventFilter,
            ) -> $crate::outbox::StoreResult<u64> {
                self.count_events(filter).await
            }

            async fn redeliver(
                &self,
                target: $crate::outbox::Redeliver<'_>,
            ) -> $crate::outbox::StoreResult<u64> {
                self.redeliver_events(target).await
            }

            async fn prune(&self, before: i64, limit: u32) -> $crate::outbox::StoreResult<u64> {
                self.prune_before(before, limit).await
            }

            async fn prune_payloads(
                &self,
                before: i64,
                from: i64,
                limit: u32,
            ) -> $crate::outbox::StoreResult<(u64, i64)> {
                self.prune_payloads_before(before, from, limit).await
            }
        }

        impl $store {
            /// Group commit: every request in one transaction and one fsync; rows go in with
            /// multi-row inserts. A request whose key turns out to be reused with other content
            /// has its rows deleted again before the commit, leaving the others intact.
            async fn commit_group(
                &self,
                reqs: &[$crate::outbox::WriteRequest],
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::WriteOutcome>> {
                use $crate::outbox::{StoredRef, WriteOutcome, sql};
                let now = $crate::outbox::now_micros();
                let _serial = self.serialize_writes().await;
                let mut tx = self.begin_write().await?;
                // Idempotency-Key replays and reuses are settled before anything is written.
                // Two requests of one group never share a key: the writer's in-flight key set
                // keeps them apart. Should they anyway, the later one is answered "in progress"
                // (409) instead of failing the whole group on the unique index.
                let mut outcomes: Vec<Option<WriteOutcome>> = Vec::with_capacity(reqs.len());
                let mut group_keys = std::collections::HashSet::new();
                for req in reqs {
                    let seen = req
                        .idempotency
                        .as_ref()
                        .is_some_and(|(k, _)| !group_keys.insert(k.as_str()));
                    outcomes.push(if seen {
                        Some(WriteOutcome::InProgress)
                    } else {
                        Self::check_key(&mut tx, req).await?
                    });
                }
                // Insert every row of the remaining requests; remember which were new.
                let todo: Vec<(usize, usize)> = reqs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| outcomes[*i].is_none())
                    .flat_map(|(i, r)| (0..r.rows.len()).map(move |j| (i, j)))
                    .collect();
                let mut inserted = std::collections::HashMap::new();
                for chunk in todo.chunks(sql::INSERT_CHUNK) {
                    let rows: Vec<&$crate::outbox::NewRow> =
                        chunk.iter().map(|(i, j)| &reqs[*i].rows[*j]).collect();
                    let mut fresh: std::collections::HashMap<(String, String), i64> =
                        Self::insert_rows(&mut tx, &rows, now)
                            .await?
                            .into_iter()
                            .map(|(seq, source, id)| ((source, id), seq))
                            .collect();
                    // When one group holds the same (source, id) twice, the first in the
                    // chunk's order was inserted (with its payload); `remove` makes it the owner.
                    for (i, j) in chunk {
                        let r = &reqs[*i].rows[*j];
                        let key = (r.source.clone(), r.event_id.clone());
                        if let Some(seq) = fresh.remove(&key) {
                            inserted.insert(key, (seq, *i));
                        }
                    }
                }
                // Rows that were not inserted already existed: same content is a replay.
                for (i, req) in reqs.iter().enumerate() {
                    if outcomes[i].is_some() {
                        continue;
                    }
                    let mut reused = None;
                    let mut elsewhere = false;
                    let mut fresh = Vec::new();
                    for r in &req.rows {
                        match inserted.get(&(r.source.clone(), r.event_id.clone())) {
                            // Only rows this request inserted itself are its own: a row another
                            // request of the group inserted says nothing about this content.
                            Some((seq, owner)) if *owner == i => fresh.push(*seq),
                            Some(_) => elsewhere = true,
                            None => {
                                let prior: Option<Vec<u8>> = sqlx::query_scalar(sql::SELECT_HASH)
                                    .bind(&r.source)
                                    .bind(&r.event_id)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                                if prior.as_ref() != Some(&r.content_hash) && reused.is_none() {
                                    reused = Some(format!(
                                        "event id `{}` of source `{}` was already used for different content",
                                        r.event_id, r.source
                                    ));
                                }
                            }
                        }
                    }
                    if elsewhere || reused.is_some() {
                        // Nothing of this request is stored: take back the rows it inserted
                        // (its own only).
                        for seq in fresh {
                            sqlx::query(sql::DELETE_PAYLOAD).bind(seq).execute(&mut *tx).await?;
                            sqlx::query(sql::DELETE_ROW).bind(seq).execute(&mut *tx).await?;
                        }
                        outcomes[i] = Some(match reused {
                            Some(msg) if !elsewhere => WriteOutcome::KeyReused(msg),
                            _ => WriteOutcome::InProgress,
                        });
                        continue;
                    }
                    let refs: Vec<StoredRef> = req
                        .rows
                        .iter()
                        .map(|r| StoredRef {
                            id: r.event_id.clone(),
                            source: r.source.clone(),
                        })
                        .collect();
                    if let Some((key, hash)) = &req.idempotency {
                        let response = serde_json::to_string(&refs)
                            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                        sqlx::query(sql::INSERT_KEY)
                            .bind(key)
                            .bind(hash)
                            .bind(response)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    outcomes[i] = Some(WriteOutcome::Stored {
                        refs,
                        replayed: fresh.is_empty(),
                    });
                }
                tx.commit().await?;
                Ok(outcomes
                    .into_iter()
                    .map(|o| o.unwrap_or(WriteOutcome::KeyReused(String::new())))
                    .collect())
            }

            /// The `Idempotency-Key` verdict, if the key was seen before.
            async fn check_key(
                conn: &mut sqlx::Transaction<'_, $db>,
                req: &$crate::outbox::WriteRequest,
            ) -> $crate::outbox::StoreResult<Option<$crate::outbox::WriteOutcome>> {
                use $crate::outbox::{StoredRef, WriteOutcome, sql};
                use sqlx::Row as _;
                let Some((key, hash)) = &req.idempotency else {
                    return Ok(None);
                };
                let Some(row) = sqlx::query(sql::SELECT_KEY)
                    .bind(key)
                    .fetch_optional(&mut **conn)
                    .await?
                else {
                    return Ok(None);
                };
                let prior_hash: Vec<u8> = row.try_get(0)?;
                if &prior_hash != hash {
                    return Ok(Some(WriteOutcome::KeyReused(format!(
                        "Idempotency-Key `{key}` was already used for a different request"
                    ))));
                }
                let response: String = row.try_get(1)?;
                let refs: Vec<StoredRef> =
                    serde_json::from_str(&response).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                Ok(Some(WriteOutcome::Stored {
                    refs,
                    replayed: true,
                }))
            }

            async fn find_events(
                &self,
                id: &str,
                source: Option<&str>,
            ) -> $crate::outbox::StoreResult<Vec<$crate::outbox::EventRecord>> {
                use $crate::outbox::sql;
                let filter = if source.is_some() { " and source = $2" } else { "" };
                let q = format!(
                    "select {} from {} where event_id = $1{filter} order by seq limit 20",
                    sql::RECORD_COLUMNS,
                    sql::RECORD_FROM
                );
                let mut query = sqlx::query(q.as_str()).bind(id);
                if let Some(source) = source {
                    query = query.bind(source);
                }
                let rows = query.fetch_all(&self.pool).await?;
                rows.iter().map(|r| Self::record(r)).collect()
            }

            /// Decode a row of [`sql::RECORD_COLUMNS`](crate::outbox::sql::RECORD_COLUMNS).
            fn record(
                r: &<$db as sqlx::Database>::Row,
            ) -> $crate::outbox::StoreResult<$crate::outbox::EventRecord> {
                use $crate::outbox::{EventRecord, Status, from_micros};
                use sqlx::Row as _;
                let status: String = r.try_get("status")?;
                let status = Status::parse(&status);
                let body: Option<Vec<u8>> = r.try_get("body")?;
                let next: i64 = r.try_get("next_attempt_at")?;
                let traceparent: Option<String> = r.try_get("traceparent")?;
                // Stored traceparents were checked on the way in: `00-{trace id}-{span}-{flags}`.
                let trace_id = traceparent
                    .as_deref()
                    .and_then(|t| t.split('-').nth(1))
                    .map(str::to_owned);
                Ok(EventRecord {
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
                    api_key: r.try_get("api_key")?,
                    traceparent,
                    trace_id,
                    time: from_micros(r.try_get("event_time")?),
                    created_at: from_micros(r.try_get("created_at")?),
                    updated_at: from_micros(r.try_get("updated_at")?),
                    next_attempt_at: (status == Status::Pending).then(|| from_micros(next)),
                    published_at: r.try_get::<Option<i64>, _>("published_at")?.map(from_micros),
                    body_pruned: body.is_none(),
                    event: body
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(serde_json::Value::Null),
                })
            }

            async fn list_events(
                &self,
                filter: &$crate::outbox::EventFilter,
                page: $crate::outbox::PageRequest,
            ) -> $crate::outbox::StoreResult<Vec<(i64, $crate::outbox::EventRecord)>> {
                use $crate::outbox::{Order, sql};
                use sqlx::Row as _;
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "select seq, {} from {}",
                    sql::RECORD_COLUMNS,
                    sql::RECORD_FROM
                ));
                Self::push_filter(&mut qb, filter);
                let (cmp, dir) = match page.order {
                    Order::Oldest => (" and seq > ", "asc"),
                    Order::Newest => (" and seq < ", "desc"),
                };
                if let Some(after) = page.after {
                    qb.push(cmp).push_bind(after);
                }
                qb.push(format!(" order by seq {dir} limit "))
                    .push_bind(i64::from(page.limit));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get::<i64, _>("seq")?, Self::record(r)?)))
                    .collect()
            }

            async fn count_events(
                &self,
                filter: &$crate::outbox::EventFilter,
            ) -> $crate::outbox::StoreResult<u64> {
                use sqlx::Row as _;
                let mut qb = sqlx::QueryBuilder::<$db>::new("select count(*) from outbox");
                Self::push_filter(&mut qb, filter);
                let n: i64 = qb.build().fetch_one(&self.pool).await?.try_get(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            /// ` where …` selecting what `filter` selects (columns of `outbox` only). Every
            /// value is a bound parameter.
            fn push_filter(
                qb: &mut sqlx::QueryBuilder<'_, $db>,
                filter: &$crate::outbox::EventFilter,
            ) {
                qb.push(" where 1 = 1");
                if let Some(status) = filter.status {
                    qb.push(" and status = ").push_bind(status.as_str());
                }
                let text = [
                    ("event_type", &filter.event_type),
                    ("source", &filter.source),
                    ("ordering_key", &filter.key),
                    ("event_id", &filter.id),
                ];
                for (column, value) in text {
                    if let Some(v) = value {
                        qb.push(format!(" and {column} = ")).push_bind(v.clone());
                    }
                }
                if let Some(from) = filter.created_from {
                    qb.push(" and created_at >= ").push_bind(from);
                }
                if let Some(before) = filter.created_before {
                    qb.push(" and created_at < ").push_bind(before);
                }
            }

            async fn redeliver_events(
                &self,
                target: $crate::outbox::Redeliver<'_>,
            ) -> $crate::outbox::StoreResult<u64> {
                use $crate::outbox::Redeliver;
                const SET: &str = "update outbox set status = 'pending', attempts = 0, \
                    next_attempt_at = $1, lease_until = null, updated_at = $1, published_at = null";
                let now = $crate::outbox::now_micros();
                let _serial = self.serialize_writes().await;
                let done = match target {
                    Redeliver::One { id, source } => {
                        // Only while its body is kept (a published event's is dropped after
                        // `payload_retention_hours`).
                        let q = format!("{SET} where event_id = $2 and source = $3 and status <> 'pending' \
                            and exists (select 1 from outbox_payload p where p.seq = outbox.seq)");
                        sqlx::query(q.as_str()).bind(now).bind(id).bind(source).execute(&self.pool).await?
                    }
                    Redeliver::Dead(filter) => {
                        let dead = $crate::outbox::EventFilter {
                            status: Some($crate::outbox::Status::Dead),
                            ..filter.clone()
                        };
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "update outbox set status = 'pending', attempts = 0, \
                             lease_until = null, published_at = null, next_attempt_at = ",
                        );
                        qb.push_bind(now).push(", updated_at = ").push_bind(now);
                        Self::push_filter(&mut qb, &dead);
                        qb.build().execute(&self.pool).await?
                    }
                };
                Ok(done.rows_affected())
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
                let _serial = self.serialize_writes().await;
                // Rows and their payloads go together, in one transaction.
                let mut tx = $crate::outbox::pool::begin(self.upkeep_pool(), None).await?;
                let seqs: Vec<i64> = sqlx::query_scalar(sql::PRUNE_ROWS)
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                if !seqs.is_empty() {
                    let q = format!("delete from outbox_payload where seq {}", Self::SEQ_IN_1);
                    Self::bind_seqs(sqlx::query(q.as_str()), &seqs)?
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                let rows = seqs.len() as u64;
                let keys = sqlx::query(sql::PRUNE_KEYS)
                    .bind(before)
                    .bind(i64::from(limit))
                    .execute(self.upkeep_pool())
                    .await?
                    .rows_affected();
                Ok(rows + keys)
            }

            /// Drop the bodies of up to `limit` events published before `before` and at or after
            /// `from` (a watermark: bodies are dropped in `published_at` order, so later rounds
            /// start where the last one stopped); returns how many and the new watermark.
            async fn prune_payloads_before(
                &self,
                before: i64,
                from: i64,
                limit: u32,
            ) -> $crate::outbox::StoreResult<(u64, i64)> {
                use sqlx::Row as _;
                let _serial = self.serialize_writes().await;
                let mut tx = $crate::outbox::pool::begin(self.upkeep_pool(), None).await?;
                let rows = sqlx::query(
                    "select seq, published_at from outbox where status = 'published' \
                     and published_at >= $1 and published_at < $2 order by published_at limit $3",
                )
                .bind(from)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                let mut mark = from;
                let mut seqs = Vec::with_capacity(rows.len());
                for r in &rows {
                    seqs.push(r.try_get::<i64, _>(0)?);
                    mark = mark.max(r.try_get::<i64, _>(1)?);
                }
                let mut deleted = 0;
                if !seqs.is_empty() {
                    let q = format!("delete from outbox_payload where seq {}", Self::SEQ_IN_1);
                    deleted = Self::bind_seqs(sqlx::query(q.as_str()), &seqs)?
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                // A full page may end in the middle of one published_at: its rest comes again.
                let next = if rows.len() == limit as usize { mark } else { before };
                Ok((deleted, next))
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
                            lease,
                        } => {
                            let status = if *dead { Status::Dead } else { Status::Pending };
                            sqlx::query(sql::RETRY)
                                .bind(*attempts)
                                .bind(error)
                                .bind(*next_attempt_at)
                                .bind(status.as_str())
                                .bind(now)
                                .bind(*seq)
                                .bind(*lease)
                                .execute(&mut **tx)
                                .await?;
                        }
                        Settlement::Released { seq, lease } => {
                            sqlx::query(sql::RELEASE)
                                .bind(*seq)
                                .bind(*lease)
                                .execute(&mut **tx)
                                .await?;
                        }
                    }
                }
                Ok(())
            }
        }
    };
}
pub(crate) use shared_store_impl;
