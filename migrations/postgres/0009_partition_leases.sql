-- Partition ownership by heartbeat leases with a fencing epoch, instead of session advisory
-- locks alone: a process that is alive to TCP but not running (SIGSTOP, a long GC-like stall,
-- a frozen VM) keeps its session and so its locks, but stops renewing its leases, and the
-- other instances take its partitions once the leases expire. Times are µs of the database's
-- clock, so instances never compare their own clocks.
create table relay_instances (
    instance_id text primary key,
    lock_key integer not null,        -- its presence advisory lock, held while its session lives
    expires_at bigint not null        -- heartbeat lease
);

create table partition_leases (
    partition_id integer primary key,
    owner text,                       -- instance_id, or null when free
    epoch bigint not null default 0,  -- raised at every takeover: claims are fenced by it
    expires_at bigint not null default 0
);

insert into partition_leases (partition_id) select generate_series(0, 63);
