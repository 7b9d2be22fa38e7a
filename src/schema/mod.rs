//! JSON Schemas of event data, one per `(type, version)`.

pub mod registry;

pub use registry::{Registry, SchemaEntry};
