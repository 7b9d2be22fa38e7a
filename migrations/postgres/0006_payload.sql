-- Bodies move to a table of their own, written once at insert and never updated: the relay's
-- lease and settle updates then rewrite narrow rows only (fewer pages in SQLite's WAL, smaller
-- tuple versions in PostgreSQL). One row per outbox row, same seq; deleted with it.
create table outbox_payload (
    seq        bigint primary key,
    body       bytea    not null,  -- the AMQP body: structured CloudEvent, serialized once
    attributes text     not null   -- CloudEvent attributes without data, for ce-* headers
);
insert into outbox_payload (seq, body, attributes) select seq, body, attributes from outbox;
alter table outbox drop column body;
alter table outbox drop column attributes;
