-- Fewer indexes on `outbox`: every insert adds an entry to each, and so does every update that
-- PostgreSQL cannot make HOT (the claim's lease when the row's page is full, and always the
-- settle, which changes `status`, a column the partial indexes name).
--
-- * (source, event_id) and (event_id) become one unique index on (event_id, source): it answers
--   the idempotency conflict (`on conflict (source, event_id)` infers it, column order aside)
--   and the lookups by id, with or without a source.
-- * (partition_id, seq) of pending rows goes: a claim walks `outbox_pending` in commit order
--   and filters by partition (an ordered scan, no sort), and the takeover's release of a
--   partition's leases, which is rare, reads the pending rows through the same index.
create unique index outbox_event_id_source on outbox (event_id, source);
drop index outbox_source_event_id;
drop index outbox_event_id;
drop index outbox_pending_partition;
