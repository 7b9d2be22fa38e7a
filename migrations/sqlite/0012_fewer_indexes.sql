-- One index fewer on `outbox`, which every insert pays for: (source, event_id) and (event_id)
-- become one unique index on (event_id, source). It answers the idempotency conflict
-- (`on conflict (source, event_id)` matches it, column order aside) and the lookups by id, with
-- or without a source. The same change as PostgreSQL's migration 12.
create unique index outbox_event_id_source on outbox (event_id, source);
drop index outbox_source_event_id;
drop index outbox_event_id;
