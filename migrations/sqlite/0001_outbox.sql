-- The outbox. Times are integer microseconds since the Unix epoch (UTC).
create table outbox (
    seq             integer primary key autoincrement, -- commit order
    event_id        text    not null,
    source          text    not null,
    event_type      text    not null,
    version         text    not null,
    ce_type         text    not null,
    subject         text,
    ordering_key    text,
    event_time      integer not null,
    routing_key     text    not null,
    body            blob    not null,  -- the AMQP body: structured CloudEvent, serialized once
    attributes      text    not null,  -- CloudEvent attributes without data, for ce-* headers
    content_hash    blob    not null,  -- sha-256 of what the client sent
    traceparent     text,
    status          text    not null default 'pending' check (status in ('pending', 'published', 'dead')),
    attempts        integer not null default 0,
    next_attempt_at integer not null,
    lease_until     integer,
    last_error      text,
    created_at      integer not null,
    updated_at      integer not null,
    published_at    integer
);

-- idempotency: one row per (source, id)
create unique index outbox_source_event_id on outbox (source, event_id);
create index outbox_event_id on outbox (event_id);
-- the relay's scan: pending rows in commit order
create index outbox_pending on outbox (seq) where status = 'pending';
create index outbox_published_at on outbox (published_at) where status = 'published';
create index outbox_dead on outbox (seq) where status = 'dead';

-- Idempotency-Key header: the request's hash and the response it got.
create table idempotency_keys (
    key          text    primary key,
    request_hash blob    not null,
    response     text    not null,
    created_at   integer not null
);
create index idempotency_keys_created_at on idempotency_keys (created_at);
