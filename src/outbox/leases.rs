//! Storage of partition ownership on a PostgreSQL outbox (migration 0009): each live instance
//! has a heartbeat row in `relay_instances`, and each partition a row in `partition_leases`
//! with its owner, an expiry and a fencing epoch raised at every takeover. Every time is µs of
//! the database's clock, so the instances never compare their own clocks. The relay decides
//! what to take and give back (`relay::partitions`); this module only reads and writes.
//!
//! An instance counts as alive while its heartbeat has not expired **and** the session that
//! holds its presence advisory lock lives: a crashed instance is gone at once (PostgreSQL ends
//! its session), a frozen one when its heartbeat runs out.

use std::time::Duration;

use sqlx::Row;

use super::{PgStore, StoreResult};

/// Advisory-lock class of an instance's presence lock (`pg_advisory_lock(class, key)`); "posi".
pub const PRESENCE_CLASS: i32 = 0x706F_7369;

/// The database's clock, µs since the epoch.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// Instance `i` is alive: fresh heartbeat and its presence lock held by a live session.
const ALIVE: &str = "i.expires_at > (extract(epoch from clock_timestamp()) * 1000000)::bigint \
    and exists (select 1 from pg_locks k where k.locktype = 'advisory' and k.granted \
    and k.database = (select oid from pg_database where datname = current_database()) \
    and k.classid = 1886352233 and k.objsubid = 2 and k.objid::bigint = i.lock_key)";

/// One partition held: its number and the epoch of the lease.
pub type Held = (i32, i64);

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

impl PgStore {
    /// Announce (or renew) this instance for `ttl`.
    pub async fn heartbeat(&self, instance: &str, lock_key: i32, ttl: Duration) -> StoreResult<()> {
        sqlx::query(&format!(
            "insert into relay_instances (instance_id, lock_key, expires_at) values ($1, $2, {NOW} + $3) \
             on conflict (instance_id) do update set lock_key = excluded.lock_key, expires_at = excluded.expires_at"
        ))
        .bind(instance)
        .bind(lock_key)
        .bind(micros(ttl))
        .execute(&self.relay_pool)
        .await
        .map(|_| ())
    }

    /// The live instances, and how many of them sort before `instance` (its rank).
    pub async fn live_instances(&self, instance: &str) -> StoreResult<(i64, i64)> {
        let r = sqlx::query(&format!(
            "select count(*), count(*) filter (where i.instance_id < $1) \
             from relay_instances i where {ALIVE}"
        ))
        .bind(instance)
        .fetch_one(&self.relay_pool)
        .await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }

    /// Extend the leases this instance still owns; returns them. A lease another instance took
    /// over (its owner changed) is not among them.
    pub async fn renew_partitions(&self, instance: &str, ttl: Duration) -> StoreResult<Vec<Held>> {
        let rows = sqlx::query(&format!(
            "update partition_leases set expires_at = {NOW} + $2 where owner = $1 \
             returning partition_id, epoch"
        ))
        .bind(instance)
        .bind(micros(ttl))
        .fetch_all(&self.relay_pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Take up to `need` partitions that are free, whose lease expired, or whose owner is not
    /// alive, raising each one's epoch; returns them.
    pub async fn acquire_partitions(
        &self,
        instance: &str,
        need: u32,
        ttl: Duration,
    ) -> StoreResult<Vec<Held>> {
        let rows = sqlx::query(&format!(
            "update partition_leases set owner = $1, epoch = epoch + 1, expires_at = {NOW} + $3 \
             where partition_id in (select l.partition_id from partition_leases l \
               where l.owner is null or l.expires_at <= {NOW} \
                 or not exists (select 1 from relay_instances i where i.instance_id = l.owner and {ALIVE}) \
               order by random() limit $2 for update skip locked) \
             returning partition_id, epoch"
        ))
        .bind(instance)
        .bind(i64::from(need))
        .bind(micros(ttl))
        .fetch_all(&self.relay_pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Give partitions back (they are free at once).
    pub async fn release_partitions(&self, instance: &str, partitions: &[i32]) -> StoreResult<()> {
        sqlx::query(
            "update partition_leases set owner = null, expires_at = 0 \
             where owner = $1 and partition_id = any($2)",
        )
        .bind(instance)
        .bind(partitions.to_vec())
        .execute(&self.relay_pool)
        .await
        .map(|_| ())
    }

    /// This instance stops counting as live and gives every partition back.
    pub async fn leave(&self, instance: &str) -> StoreResult<()> {
        sqlx::query("update partition_leases set owner = null, expires_at = 0 where owner = $1")
            .bind(instance)
            .execute(&self.relay_pool)
            .await?;
        sqlx::query("delete from relay_instances where instance_id = $1")
            .bind(instance)
            .execute(&self.relay_pool)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_presence_class_in_sql_is_the_constant() {
        assert!(super::ALIVE.contains(&super::PRESENCE_CLASS.to_string()));
    }
}
