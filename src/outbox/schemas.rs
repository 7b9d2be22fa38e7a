//! Storage of the schema registry in the outbox database (migration 0011): versions registered
//! over the API, each type's compatibility mode, deprecations, and a revision number every change
//! raises in its own transaction, so that every instance on one database notices a change by
//! reading one row. The registry itself (what is compiled and served) is `schema::registry`.

use super::{Store, StoreResult};

/// A version registered over the API, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Event type.
    pub event_type: String,
    /// Version, `v{N}`.
    pub version: String,
    /// The JSON Schema as registered (canonical JSON).
    pub document: String,
    /// sha256 of the canonical JSON, hex.
    pub fingerprint: String,
    /// When it was registered, µs since the epoch.
    pub registered_at: i64,
}

/// Everything the registry keeps in the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    /// Raised by every change.
    pub revision: i64,
    /// `(type, mode name)` for types whose mode was set.
    pub modes: Vec<(String, String)>,
    /// Registered versions.
    pub versions: Vec<StoredVersion>,
    /// `(type, version, deprecated at µs)`.
    pub deprecations: Vec<(String, String, i64)>,
}

/// What registering a version did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Stored now.
    Created,
    /// The same document was registered before (versions are immutable; this is idempotent).
    Identical,
    /// Another document has that version; its fingerprint.
    Conflict(String),
    /// The check refused it (nothing stored); what it said.
    Refused(Vec<String>),
}

/// `check` of a registration: given the type's versions in the database and its stored mode,
/// `Ok` to store it, or the reasons not to.
pub type Check<'a> = &'a (dyn Fn(&[StoredVersion], Option<&str>) -> Result<(), Vec<String>> + Sync);

/// Every statement of the registry, for a store with `pool`, `begin_write()` and
/// `serialize_writes()` (expanded in `sqlite.rs` and `postgres.rs`).
macro_rules! schema_store_impl {
    ($store:ty) => {
        impl $store {
            /// The revision only (polled every second).
            pub async fn schema_revision(&self) -> $crate::outbox::StoreResult<i64> {
                sqlx::query_scalar("select revision from schema_revision where id = 1")
                    .fetch_one(&self.pool)
                    .await
            }

            /// Everything, read in one transaction so that it is one revision's state.
            pub async fn schema_state(
                &self,
            ) -> $crate::outbox::StoreResult<$crate::outbox::schemas::SchemaState> {
                use sqlx::Row as _;
                let mut tx = $crate::outbox::pool::begin(&self.pool, None).await?;
                let revision: i64 =
                    sqlx::query_scalar("select revision from schema_revision where id = 1")
                        .fetch_one(&mut *tx)
                        .await?;
                let modes = sqlx::query("select event_type, compatibility from schema_types")
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<sqlx::Result<Vec<_>>>()?;
                let versions = sqlx::query(
                    "select event_type, version, document, fingerprint, registered_at \
                     from schema_versions order by event_type, version_number",
                )
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok($crate::outbox::schemas::StoredVersion {
                        event_type: r.try_get(0)?,
                        version: r.try_get(1)?,
                        document: r.try_get(2)?,
                        fingerprint: r.try_get(3)?,
                        registered_at: r.try_get(4)?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?;
                let deprecations = sqlx::query(
                    "select event_type, version, deprecated_at from schema_deprecations",
                )
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<sqlx::Result<Vec<_>>>()?;
                tx.commit().await?;
                Ok($crate::outbox::schemas::SchemaState {
                    revision,
                    modes,
                    versions,
                    deprecations,
                })
            }

            /// Store `version` unless it exists or `check` refuses it. The revision row is
            /// updated first, so registrations (of any instance) take turns: `check` sees
            /// every version committed before.
            pub async fn register_schema(
                &self,
                new: &$crate::outbox::schemas::StoredVersion,
                version_number: i64,
                check: $crate::outbox::schemas::Check<'_>,
            ) -> $crate::outbox::StoreResult<$crate::outbox::schemas::Registered> {
                use $crate::outbox::schemas::Registered;
                use sqlx::Row as _;
                let _serial = self.serialize_writes().await;
                let mut tx = self.begin_write().await?;
                sqlx::query("update schema_revision set revision = revision + 1 where id = 1")
                    .execute(&mut *tx)
                    .await?;
                let existing: Option<String> = sqlx::query_scalar(
                    "select fingerprint from schema_versions where event_type = $1 and version = $2",
                )
                .bind(&new.event_type)
                .bind(&new.version)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(fp) = existing {
                    tx.rollback().await?;
                    return Ok(if fp == new.fingerprint {
                        Registered::Identical
                    } else {
                        Registered::Conflict(fp)
                    });
                }
                let mode: Option<String> = sqlx::query_scalar(
                    "select compatibility from schema_types where event_type = $1",
                )
                .bind(&new.event_type)
                .fetch_optional(&mut *tx)
                .await?;
                let versions = sqlx::query(
                    "select version, document, fingerprint, registered_at from schema_versions \
                     where event_type = $1 order by version_number",
                )
                .bind(&new.event_type)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok($crate::outbox::schemas::StoredVersion {
                        event_type: new.event_type.clone(),
                        version: r.try_get(0)?,
                        document: r.try_get(1)?,
                        fingerprint: r.try_get(2)?,
                        registered_at: r.try_get(3)?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?;
                if let Err(reasons) = check(&versions, mode.as_deref()) {
                    tx.rollback().await?;
                    return Ok(Registered::Refused(reasons));
                }
                sqlx::query(
                    "insert into schema_versions (event_type, version, version_number, document, \
                     fingerprint, registered_at) values ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&new.event_type)
                .bind(&new.version)
                .bind(version_number)
                .bind(&new.document)
                .bind(&new.fingerprint)
                .bind(new.registered_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Registered::Created)
            }

            /// Set a type's compatibility mode (also before it has a version).
            pub async fn set_schema_mode(
                &self,
                event_type: &str,
                mode: &str,
            ) -> $crate::outbox::StoreResult<()> {
                let _serial = self.serialize_writes().await;
                let mut tx = self.begin_write().await?;
                sqlx::query("update schema_revision set revision = revision + 1 where id = 1")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "insert into schema_types (event_type, compatibility, updated_at) \
                     values ($1, $2, $3) on conflict (event_type) do update \
                     set compatibility = excluded.compatibility, updated_at = excluded.updated_at",
                )
                .bind(event_type)
                .bind(mode)
                .bind($crate::outbox::now_micros())
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }

            /// Mark a version deprecated (kept from the first time); returns since when.
            pub async fn deprecate_schema(
                &self,
                event_type: &str,
                version: &str,
            ) -> $crate::outbox::StoreResult<i64> {
                let _serial = self.serialize_writes().await;
                let mut tx = self.begin_write().await?;
                sqlx::query("update schema_revision set revision = revision + 1 where id = 1")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "insert into schema_deprecations (event_type, version, deprecated_at) \
                     values ($1, $2, $3) on conflict (event_type, version) do nothing",
                )
                .bind(event_type)
                .bind(version)
                .bind($crate::outbox::now_micros())
                .execute(&mut *tx)
                .await?;
                let at: i64 = sqlx::query_scalar(
                    "select deprecated_at from schema_deprecations \
                     where event_type = $1 and version = $2",
                )
                .bind(event_type)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(at)
            }
        }
    };
}
pub(crate) use schema_store_impl;

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// The registry's revision (raised by every change).
    pub async fn schema_revision(&self) -> StoreResult<i64> {
        dispatch!(self, s => s.schema_revision().await)
    }

    /// The registry's whole state.
    pub async fn schema_state(&self) -> StoreResult<SchemaState> {
        dispatch!(self, s => s.schema_state().await)
    }

    /// Register a version (see [`Registered`]); `check` runs inside the transaction.
    pub async fn register_schema(
        &self,
        new: &StoredVersion,
        version_number: i64,
        check: Check<'_>,
    ) -> StoreResult<Registered> {
        dispatch!(self, s => s.register_schema(new, version_number, check).await)
    }

    /// Set a type's compatibility mode.
    pub async fn set_schema_mode(&self, event_type: &str, mode: &str) -> StoreResult<()> {
        dispatch!(self, s => s.set_schema_mode(event_type, mode).await)
    }

    /// Deprecate a version; returns since when (µs).
    pub async fn deprecate_schema(&self, event_type: &str, version: &str) -> StoreResult<i64> {
        dispatch!(self, s => s.deprecate_schema(event_type, version).await)
    }
}
