-- W3C tracestate of the request, stored with its traceparent and passed on with it.
alter table outbox add column tracestate text;
