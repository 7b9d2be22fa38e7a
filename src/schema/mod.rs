//! JSON Schemas of event data, one per `(type, version)`: the registry (directory and API
//! versions merged), its reloads and changes, and the compatibility check.

pub mod catalog;
pub mod check;
pub mod compat;
pub mod registry;

pub use catalog::Catalog;
pub use registry::{Registry, SchemaEntry};
