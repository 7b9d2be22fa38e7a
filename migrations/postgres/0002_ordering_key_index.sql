-- The relay publishes a keyed event only when it is the oldest pending event of its key;
-- this index answers "is there an older pending event with this key?".
create index outbox_pending_key on outbox (ordering_key, seq)
    where status = 'pending' and ordering_key is not null;
