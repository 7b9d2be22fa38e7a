-- Searching by ordering key (GET /v1/events?key=…, the console's "every event of customer-42"):
-- a key is a tiny share of the outbox, so without an index such a search reads all of it.
-- Keyed rows only. Type, source and id searches need no new index: a type with recent traffic
-- fills a page after a short walk back through commit order, and (source, event_id) and
-- event_id are indexed already. One index only, since every insert pays for each; measured on
-- PostgreSQL, this one and an (event_type, seq) index together made the outbox insert ~25%
-- slower.
create index outbox_key_seq on outbox (ordering_key, seq) where ordering_key is not null;
