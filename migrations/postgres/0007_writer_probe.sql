-- One row the group-commit writer rewrites to prove it can commit again after a failed commit
-- (a full disk, a lost connection): a real, durable write like an event's, so `/readyz` turns
-- ready only when events would be stored.
create table writer_probe (
    id integer primary key check (id = 1),
    at bigint not null
);
