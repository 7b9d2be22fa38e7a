-- Name of the API key that sent the event (NULL when authentication is off).
alter table outbox add column api_key text;
