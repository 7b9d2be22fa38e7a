-- Several instances split the outbox into partitions and own one partition at a time (session
-- advisory locks). The partition is a stable hash of the ordering key (of the event id when
-- there is none) modulo 64, computed by postbox at insert, so all events of a key share one.
-- Rows stored before this migration are in partition 0: the head-of-line rule (oldest pending
-- event of a key first) still orders them with later events of their key.
alter table outbox add column partition_id integer not null default 0;

-- The relay's scan: pending rows of the partitions this instance owns, in commit order.
create index outbox_pending_partition on outbox (partition_id, seq) where status = 'pending';
