//! The schema registry as a service: load the directory and the database's registrations at
//! start-up, reload both every second (a new file, another instance's registration), and change
//! the registry (register a version, set a type's mode, deprecate a version) with its checks.
//! The HTTP layer only extracts and answers (`http::schemas`).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    compat::{self, Incompatibility, Mode},
    registry::{self, Files, Origin, Registry, Snapshot},
};
use crate::outbox::{
    Store, now_micros,
    schemas::{Registered, StoredVersion},
};

/// How often the directory and the database are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Why a change to the registry was not made.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The type or version is not a valid name.
    #[error("{0}")]
    InvalidName(String),
    /// The document is not a JSON Schema.
    #[error("{0}")]
    InvalidSchema(String),
    /// A different document already has this version.
    #[error(
        "`{event_type}` {version} exists with a different schema (fingerprint {fingerprint}); \
         versions are immutable: register the change as a new version"
    )]
    VersionExists {
        /// Type.
        event_type: String,
        /// Version.
        version: String,
        /// The existing document's fingerprint.
        fingerprint: String,
    },
    /// A new version must be numbered above the type's versions.
    #[error("`{event_type}` already has {latest}; a new version must be numbered above it")]
    VersionOrder {
        /// Type.
        event_type: String,
        /// Its newest version.
        latest: String,
    },
    /// The new version breaks the type's compatibility mode.
    #[error("`{event_type}` {version} is not {mode}-compatible: {}", summary(.errors))]
    Incompatible {
        /// Type.
        event_type: String,
        /// Version.
        version: String,
        /// The mode checked.
        mode: Mode,
        /// What breaks, with pointers into the new schema.
        errors: Vec<Incompatibility>,
    },
    /// No such type or version.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("the outbox database is unavailable")]
    Store(#[from] sqlx::Error),
}

fn summary(errors: &[Incompatibility]) -> String {
    match errors {
        [] => "no reason given".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Registered now (201).
    Created,
    /// The same document already has this version (200).
    Identical,
}

/// The registry service (cheap to clone).
#[derive(Clone)]
pub struct Catalog {
    registry: Registry,
    store: Store,
    dir: Arc<PathBuf>,
    state: Arc<tokio::sync::Mutex<Watch>>,
}

/// What the last reload saw.
struct Watch {
    /// Paths, modification times and sizes of the directory's files.
    signature: Vec<(PathBuf, SystemTime, u64)>,
    files: Files,
    /// Refusals already logged (type, version, fingerprint).
    reported: HashSet<(String, String, String)>,
    /// The database could not be read at the last try (logged once).
    db_failing: bool,
}

impl Catalog {
    /// Load the directory (any bad file fails the start) and the database's registrations.
    /// The directory is taken as it is: incompatibilities between its versions are logged as
    /// warnings (`postbox schemas check` fails on them; a running instance refuses new ones).
    pub async fn start(dir: &Path, store: Store, default_mode: Mode) -> anyhow::Result<Catalog> {
        let files = registry::scan_strict(dir)?;
        let db = store.schema_state().await.map_err(|e| {
            anyhow::anyhow!(
                "reading the schema registry from the outbox database: {e} (with \
                 migrate_on_start = false, run `postbox migrate` first)"
            )
        })?;
        let (snapshot, refusals) =
            registry::build(&Snapshot::empty(default_mode), &files, &db, false);
        for (t, v, inc) in snapshot.audit() {
            tracing::warn!(
                r#type = %t, version = %v,
                "schema directory: {t} {v} is not {}-compatible with the versions before it ({inc}); \
                 taken as it is at start-up: run `postbox schemas check` in the directory's CI",
                snapshot.mode_of(&t)
            );
        }
        let mut reported = HashSet::new();
        report(&refusals, &mut reported);
        metrics::gauge!("postbox_schemas").set(snapshot.len() as f64);
        Ok(Catalog {
            registry: Registry::new(snapshot),
            store,
            dir: Arc::new(dir.to_owned()),
            state: Arc::new(tokio::sync::Mutex::new(Watch {
                signature: signature(dir),
                files,
                reported,
                db_failing: false,
            })),
        })
    }

    /// The registry events are validated against.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reload every [`RELOAD_EVERY`] until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_EVERY) => {}
                () = token.cancelled() => return,
            }
            self.reload(false).await;
        }
    }

    /// Look at the directory and the database; build and serve a new snapshot if either
    /// changed (or `force`).
    pub async fn reload(&self, force: bool) {
        let mut watch = self.state.lock().await;
        let dir = self.dir.clone();
        let now = match tokio::task::spawn_blocking(move || signature(&dir)).await {
            Ok(s) => s,
            Err(_) => return,
        };
        let dir_changed = now != watch.signature;
        if dir_changed {
            let dir = self.dir.clone();
            match tokio::task::spawn_blocking(move || registry::scan(&dir)).await {
                Ok(Ok((mut files, bad))) => {
                    for line in bad {
                        let key = (line.clone(), String::new(), String::new());
                        if watch.reported.insert(key) {
                            tracing::warn!("schema directory: {line}; not loaded");
                            metrics::counter!("postbox_schema_refused_total").increment(1);
                        }
                    }
                    // A file being rewritten (not JSON for a moment) keeps its last version.
                    for (k, old) in &watch.files {
                        if !files.contains_key(k) && old.path.exists() {
                            files.insert(k.clone(), old.clone());
                        }
                    }
                    watch.files = files;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "schema directory cannot be read; the schemas loaded keep serving");
                    return;
                }
                Err(_) => return,
            }
            watch.signature = now;
        }
        let current = self.registry.snapshot();
        let revision = match self.store.schema_revision().await {
            Ok(r) => r,
            Err(e) => {
                if !watch.db_failing {
                    tracing::warn!(error = %e, "schema registry: the database cannot be read; the schemas loaded keep serving");
                    watch.db_failing = true;
                }
                return;
            }
        };
        if !force && !dir_changed && revision == current.revision {
            return;
        }
        let db = match self.store.schema_state().await {
            Ok(db) => db,
            Err(e) => {
                if !watch.db_failing {
                    tracing::warn!(error = %e, "schema registry: the database cannot be read; the schemas loaded keep serving");
                    watch.db_failing = true;
                }
                return;
            }
        };
        watch.db_failing = false;
        let (next, refusals) = registry::build(&current, &watch.files, &db, true);
        report(&refusals, &mut watch.reported);
        metrics::gauge!("postbox_schema_conflicts")
            .set(refusals.iter().filter(|r| r.conflict).count() as f64);
        metrics::gauge!("postbox_schemas").set(next.len() as f64);
        metrics::counter!("postbox_schema_reloads_total").increment(1);
        tracing::debug!(
            schemas = next.len(),
            revision = next.revision,
            "schema set reloaded"
        );
        self.registry.swap(next);
    }

    /// Register `document` as `(event_type, version)` after the checks (names, compiles,
    /// immutable versions, numbered above the others, the type's compatibility mode).
    pub async fn register(
        &self,
        event_type: &str,
        version: &str,
        document: Value,
    ) -> Result<Registration, CatalogError> {
        registry::check_names(event_type, version).map_err(CatalogError::InvalidName)?;
        if !document.is_object() {
            return Err(CatalogError::InvalidSchema(
                "an event schema must be a JSON object (a boolean schema accepts all or nothing)"
                    .to_owned(),
            ));
        }
        let compiled = registry::compile(document.clone()).map_err(CatalogError::InvalidSchema)?;
        let fingerprint = compiled.fingerprint.clone();
        let number = registry::version_number(version).unwrap_or(u64::MAX);
        let snapshot = self.registry.snapshot();
        if let Some(existing) = snapshot.get(event_type, version) {
            return if existing.fingerprint() == fingerprint {
                Ok(Registration::Identical)
            } else {
                Err(CatalogError::VersionExists {
                    event_type: event_type.to_owned(),
                    version: version.to_owned(),
                    fingerprint: existing.fingerprint().to_owned(),
                })
            };
        }
        let order = |versions: &mut dyn Iterator<Item = &str>| -> Option<String> {
            versions
                .filter(|v| registry::version_number(v).unwrap_or(u64::MAX) >= number)
                .max_by_key(|v| registry::version_number(v).unwrap_or(u64::MAX))
                .map(str::to_owned)
        };
        let versions = snapshot.versions(event_type);
        if let Some(latest) = order(&mut versions.iter().map(String::as_str)) {
            return Err(CatalogError::VersionOrder {
                event_type: event_type.to_owned(),
                latest,
            });
        }
        // The directory's versions of the type (the database's come from the transaction).
        let files: Vec<(String, Value)> = snapshot
            .get_type(event_type)
            .map(|t| {
                t.versions()
                    .filter(|(_, e)| e.origin == Origin::File)
                    .map(|(v, e)| (v.clone(), e.document().clone()))
                    .collect()
            })
            .unwrap_or_default();
        let default_mode = snapshot.default_mode();
        let found: StdMutex<Option<CatalogError>> = StdMutex::new(None);
        let check = |stored: &[StoredVersion], mode: Option<&str>| -> Result<(), Vec<String>> {
            let fail = |e: CatalogError| {
                let line = e.to_string();
                if let Ok(mut f) = found.lock() {
                    *f = Some(e);
                }
                Err(vec![line])
            };
            if let Some(latest) = order(&mut stored.iter().map(|s| s.version.as_str())) {
                return fail(CatalogError::VersionOrder {
                    event_type: event_type.to_owned(),
                    latest,
                });
            }
            let mode = mode
                .and_then(|m| m.parse::<Mode>().ok())
                .unwrap_or(default_mode);
            let mut earlier: BTreeMap<u64, (String, Value)> = BTreeMap::new();
            for (v, d) in &files {
                earlier.insert(
                    registry::version_number(v).unwrap_or(u64::MAX),
                    (v.clone(), d.clone()),
                );
            }
            for s in stored {
                if let Ok(d) = serde_json::from_str::<Value>(&s.document) {
                    earlier
                        .entry(registry::version_number(&s.version).unwrap_or(u64::MAX))
                        .or_insert((s.version.clone(), d));
                }
            }
            let earlier: Vec<(&str, &Value)> =
                earlier.values().map(|(v, d)| (v.as_str(), d)).collect();
            let errors = compat::check(mode, &earlier, (version, &document));
            if errors.is_empty() {
                Ok(())
            } else {
                fail(CatalogError::Incompatible {
                    event_type: event_type.to_owned(),
                    version: version.to_owned(),
                    mode,
                    errors,
                })
            }
        };
        let new = StoredVersion {
            event_type: event_type.to_owned(),
            version: version.to_owned(),
            document: registry::canonical(&document),
            fingerprint,
            registered_at: now_micros(),
        };
        let outcome = self
            .store
            .register_schema(&new, i64::try_from(number).unwrap_or(i64::MAX), &check)
            .await?;
        match outcome {
            Registered::Created => {
                self.reload(true).await;
                metrics::counter!("postbox_schema_registered_total").increment(1);
                tracing::info!(r#type = %event_type, %version, fingerprint = %new.fingerprint, "schema version registered");
                Ok(Registration::Created)
            }
            Registered::Identical => Ok(Registration::Identical),
            Registered::Conflict(fingerprint) => Err(CatalogError::VersionExists {
                event_type: event_type.to_owned(),
                version: version.to_owned(),
                fingerprint,
            }),
            Registered::Refused(reasons) => {
                let taken = found.lock().ok().and_then(|mut f| f.take());
                Err(taken.unwrap_or_else(|| CatalogError::InvalidSchema(reasons.join("; "))))
            }
        }
    }

    /// Set a type's compatibility mode (also before its first version).
    pub async fn set_mode(&self, event_type: &str, mode: Mode) -> Result<(), CatalogError> {
        registry::check_names(event_type, "v1").map_err(CatalogError::InvalidName)?;
        self.store
            .set_schema_mode(event_type, mode.as_str())
            .await?;
        self.reload(true).await;
        tracing::info!(r#type = %event_type, %mode, "compatibility mode set");
        Ok(())
    }

    /// Deprecate a version: its events are still accepted, with a `Deprecation` header.
    pub async fn deprecate(&self, event_type: &str, version: &str) -> Result<i64, CatalogError> {
        if self.registry.get(event_type, version).is_none() {
            return Err(CatalogError::NotFound(format!(
                "there is no schema `{event_type}` {version}"
            )));
        }
        let at = self.store.deprecate_schema(event_type, version).await?;
        self.reload(true).await;
        tracing::info!(r#type = %event_type, %version, "schema version deprecated");
        Ok(at)
    }
}

/// Log each refusal once (per document) and count it.
fn report(refusals: &[registry::Refusal], reported: &mut HashSet<(String, String, String)>) {
    for r in refusals {
        let key = (
            r.event_type.clone(),
            r.version.clone(),
            r.fingerprint.clone(),
        );
        if !reported.insert(key) {
            continue;
        }
        if r.conflict {
            tracing::warn!(r#type = %r.event_type, version = %r.version, "schema conflict: {}", r.reason);
        } else {
            tracing::warn!(r#type = %r.event_type, version = %r.version, "schema refused: {}", r.reason);
            metrics::counter!("postbox_schema_refused_total").increment(1);
        }
    }
}

/// Every `*.json` one level below `dir`, with its modification time and size (sorted).
fn signature(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut out = Vec::new();
    let Ok(types) = std::fs::read_dir(dir) else {
        return out;
    };
    for t in types.flatten() {
        let Ok(files) = std::fs::read_dir(t.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            if let Ok(m) = f.metadata() {
                out.push((
                    path,
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                ));
            }
        }
    }
    out.sort();
    out
}
