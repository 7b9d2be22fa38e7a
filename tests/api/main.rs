//! Integration tests against the real RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432).
//! One binary; one harness in `helpers/` (apps, broker, databases, events, load, proxy) that
//! every test uses.

mod helpers;

mod auth;
mod cluster;
mod console;
mod delivery;
mod disk;
mod faults;
mod hostile;
mod http_status;
mod instances;
mod logs;
mod nats;
mod network;
mod openapi;
mod ordering;
mod schemas;
mod tcp_proxy;
mod topology;
mod trace_context;
