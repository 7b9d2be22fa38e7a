-- The partition of an event: a stable hash of its ordering key (of its id when there is none)
-- modulo 64, computed by postbox at insert. An embedded SQLite outbox has one instance, which
-- owns every partition; the column keeps both backends' rows and SQL alike.
alter table outbox add column partition_id integer not null default 0;
