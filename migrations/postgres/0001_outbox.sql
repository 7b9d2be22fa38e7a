-- The outbox. Times are bigint microseconds since the Unix epoch (UTC), as in the SQLite
-- backend, so both share their SQL; the view outbox_readable shows them as timestamptz.
create table outbox (
    seq             bigint generated always as identity primary key, -- commit order
    event_id        text    not null,
    source          text    not null,
    event_type      text    not null,
    version         text    not null,
    ce_type         text    not null,
    subject         text,
    ordering_key    text,
    event_time      bigint  not null,
    routing_key     text    not null,
    body            bytea   not null,  -- the AMQP body: structured CloudEvent, serialized once
    attributes      text    not null,  -- CloudEvent attributes without data, for ce-* headers
    content_hash    bytea   not null,  -- sha-256 of what the client sent
    traceparent     text,
    status          text    not null default 'pending' check (status in ('pending', 'published', 'dead')),
    attempts        integer not null default 0,
    next_attempt_at bigint  not null,
    lease_until     bigint,
    last_error      text,
    created_at      bigint  not null,
    updated_at      bigint  not null,
    published_at    bigint
);

create unique index outbox_source_event_id on outbox (source, event_id);
create index outbox_event_id on outbox (event_id);
create index outbox_pending on outbox (seq) where status = 'pending';
create index outbox_published_at on outbox (published_at) where status = 'published';
create index outbox_dead on outbox (seq) where status = 'dead';

create table idempotency_keys (
    key          text   primary key,
    request_hash bytea  not null,
    response     text   not null,
    created_at   bigint not null
);
create index idempotency_keys_created_at on idempotency_keys (created_at);

create view outbox_readable as
select seq, event_id, source, event_type, version, ordering_key, routing_key, status, attempts,
       last_error,
       to_timestamp(created_at / 1e6)      as created_at,
       to_timestamp(next_attempt_at / 1e6) as next_attempt_at,
       to_timestamp(published_at / 1e6)    as published_at
from outbox;
