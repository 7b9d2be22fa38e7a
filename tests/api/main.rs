//! Integration tests against the real RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432).
//! One binary; helpers in `helpers.rs`.

mod helpers;

mod auth;
mod delivery;
mod faults;
mod hostile;
mod http_status;
mod instances;
mod logs;
mod openapi;
mod ordering;
mod topology;
mod trace_context;
