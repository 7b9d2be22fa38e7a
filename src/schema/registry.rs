//! The schema set events are validated against: `(type, version)` → compiled JSON Schema, merged
//! from the schema directory (`{dir}/{type}/{version}.json`, origin `file`) and the versions
//! registered over the API (origin `api`, stored in the outbox database), with each type's
//! compatibility mode and deprecations.
//!
//! A [`Snapshot`] is immutable; [`Registry`] holds the current one behind an atomic pointer
//! swap, so validation never takes a lock and a reload never pauses it: requests keep the
//! snapshot they started with, the next ones get the new one. Building a snapshot (what a reload
//! accepts or refuses) is [`build`]; when it runs is `schema::reload`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::compat::{self, Mode};
use crate::{outbox::schemas::SchemaState, pointer::FieldError};

/// Where a version comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A file in the schema directory.
    File,
    /// Registered over the API (stored in the outbox database).
    Api,
}

impl Origin {
    /// `file` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Api => "api",
        }
    }
}

/// A compiled schema document (shared between snapshots while it does not change).
pub struct Compiled {
    /// The schema document as written.
    pub document: Value,
    /// sha256 of its canonical JSON (keys sorted, no spaces), hex.
    pub fingerprint: String,
    validator: jsonschema::Validator,
}

/// One version of a type in a snapshot.
#[derive(Clone)]
pub struct SchemaEntry {
    compiled: Arc<Compiled>,
    /// Where it comes from.
    pub origin: Origin,
    /// When it was registered over the API (µs), if it was.
    pub registered_at: Option<i64>,
    /// When it was deprecated (µs), if it was.
    pub deprecated_at: Option<i64>,
}

/// One event type: its mode (when set) and versions.
#[derive(Clone, Default)]
pub struct TypeEntry {
    /// The mode set for this type (`PUT /v1/schemas/{type}`); the default applies otherwise.
    pub mode: Option<Mode>,
    versions: BTreeMap<String, SchemaEntry>,
}

/// Every schema, as of one moment.
#[derive(Clone)]
pub struct Snapshot {
    types: BTreeMap<String, TypeEntry>,
    default_mode: Mode,
    /// The database revision it was built from.
    pub revision: i64,
}

/// Something a load or reload did not accept (or accepted over something else), explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Event type.
    pub event_type: String,
    /// Version.
    pub version: String,
    /// Fingerprint of the refused document (so that it is reported once).
    pub fingerprint: String,
    /// What happened, one sentence.
    pub reason: String,
    /// True when this is a conflict the directory won (its version is served).
    pub conflict: bool,
}

/// The current schema set (cheap to clone; every clone sees every swap).
#[derive(Clone)]
pub struct Registry {
    current: Arc<ArcSwap<Snapshot>>,
}

/// Longest message kept per violation, so a huge value cannot blow up an error response.
const MAX_MESSAGE: usize = 300;

impl Registry {
    /// A registry serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Registry {
        Registry {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
        }
    }

    /// Load and compile every `{type}/{version}.json` under `dir` (no database), with
    /// `BACKWARD` as the default mode; any bad file fails the load.
    pub fn load(dir: &Path) -> anyhow::Result<Registry> {
        let files = scan_strict(dir)?;
        let (snapshot, _) = build(
            &Snapshot::empty(Mode::Backward),
            &files,
            &SchemaState::default(),
            false,
        );
        Ok(Registry::new(snapshot))
    }

    /// The current snapshot (lock-free: an atomic load and a reference count).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Serve `snapshot` from now on.
    pub fn swap(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// The schema for `(type, version)` in the current snapshot.
    pub fn get(&self, event_type: &str, version: &str) -> Option<SchemaEntry> {
        self.current.load().get(event_type, version).cloned()
    }

    /// Versions known for a type, oldest first (empty if the type is unknown).
    pub fn versions(&self, event_type: &str) -> Vec<String> {
        self.current.load().versions(event_type)
    }

    /// Number of schemas loaded.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether no schema is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Snapshot {
    /// No schema, `default_mode` for every type.
    pub fn empty(default_mode: Mode) -> Snapshot {
        Snapshot {
            types: BTreeMap::new(),
            default_mode,
            revision: -1,
        }
    }

    /// The schema for `(type, version)`.
    pub fn get(&self, event_type: &str, version: &str) -> Option<&SchemaEntry> {
        self.types.get(event_type)?.versions.get(version)
    }

    /// A type (with a version or a mode).
    pub fn get_type(&self, event_type: &str) -> Option<&TypeEntry> {
        self.types.get(event_type)
    }

    /// Versions known for a type, oldest first (empty if the type is unknown).
    pub fn versions(&self, event_type: &str) -> Vec<String> {
        self.types
            .get(event_type)
            .map(|t| t.versions().map(|(v, _)| v.clone()).collect())
            .unwrap_or_default()
    }

    /// Every type with at least one version, and its versions oldest first.
    pub fn list(&self) -> impl Iterator<Item = (&String, Vec<&String>)> {
        self.types
            .iter()
            .filter(|(_, t)| !t.versions.is_empty())
            .map(|(n, t)| (n, t.versions().map(|(v, _)| v).collect()))
    }

    /// Every type, also those with only a mode set.
    pub fn types(&self) -> impl Iterator<Item = (&String, &TypeEntry)> {
        self.types.iter()
    }

    /// The mode a type's next version is checked under.
    pub fn mode_of(&self, event_type: &str) -> Mode {
        self.types
            .get(event_type)
            .and_then(|t| t.mode)
            .unwrap_or(self.default_mode)
    }

    /// The default mode (`schema_compatibility`).
    pub fn default_mode(&self) -> Mode {
        self.default_mode
    }

    /// Number of schemas.
    pub fn len(&self) -> usize {
        self.types.values().map(|t| t.versions.len()).sum()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest version of a type that is not deprecated (the newest at all if every one is).
    pub fn newest(&self, event_type: &str) -> Option<&String> {
        let t = self.types.get(event_type)?;
        let all: Vec<(&String, &SchemaEntry)> = t.versions().collect();
        all.iter()
            .rev()
            .find(|(_, e)| e.deprecated_at.is_none())
            .or(all.last())
            .map(|(v, _)| *v)
    }

    /// Incompatibilities between the versions of every type, each checked against those
    /// before it under the type's mode (what `postbox schemas check` reports).
    pub fn audit(&self) -> Vec<(String, String, compat::Incompatibility)> {
        let mut out = Vec::new();
        for (name, t) in &self.types {
            let mode = t.mode.unwrap_or(self.default_mode);
            let all: Vec<(&String, &SchemaEntry)> = t.versions().collect();
            for i in 1..all.len() {
                let earlier: Vec<(&str, &Value)> = all[..i]
                    .iter()
                    .map(|(v, e)| (v.as_str(), e.document()))
                    .collect();
                let (v, e) = all[i];
                for inc in compat::check(mode, &earlier, (v, e.document())) {
                    out.push((name.clone(), v.clone(), inc));
                }
            }
        }
        out
    }
}

impl TypeEntry {
    /// Versions oldest first (`v2` before `v10`).
    pub fn versions(&self) -> impl DoubleEndedIterator<Item = (&String, &SchemaEntry)> {
        let mut v: Vec<(&String, &SchemaEntry)> = self.versions.iter().collect();
        v.sort_by_key(|(name, _)| version_number(name).unwrap_or(u64::MAX));
        v.into_iter()
    }
}

impl SchemaEntry {
    /// The schema document as written.
    pub fn document(&self) -> &Value {
        &self.compiled.document
    }

    /// sha256 of the canonical JSON, hex.
    pub fn fingerprint(&self) -> &str {
        &self.compiled.fingerprint
    }

    /// Every violation of `data`, with pointers prefixed by `pointer` (where `data` sits in the
    /// request body).
    pub fn violations(&self, data: &Value, pointer: &str) -> Vec<FieldError> {
        self.compiled
            .validator
            .iter_errors(data)
            .map(|e| {
                let mut message = e.to_string();
                if message.len() > MAX_MESSAGE {
                    let cut = (0..=MAX_MESSAGE)
                        .rev()
                        .find(|i| message.is_char_boundary(*i))
                        .unwrap_or(0);
                    message.truncate(cut);
                    message.push('…');
                }
                FieldError::new(format!("{pointer}{}", e.instance_path().as_str()), message)
            })
            .collect()
    }
}

/// `N` of `vN`.
pub fn version_number(version: &str) -> Option<u64> {
    version.strip_prefix('v')?.parse().ok()
}

/// The canonical JSON of a document: object keys sorted at every depth, no whitespace.
pub fn canonical(document: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(document).to_string()
}

/// sha256 of [`canonical`], hex.
pub fn fingerprint(document: &Value) -> String {
    hex::encode(Sha256::digest(canonical(document).as_bytes()))
}

/// Compile a document (formats are checked, as for every event).
pub fn compile(document: Value) -> Result<Arc<Compiled>, String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&document)
        .map_err(|e| format!("not a valid JSON Schema: {e}"))?;
    Ok(Arc::new(Compiled {
        fingerprint: fingerprint(&document),
        document,
        validator,
    }))
}

/// Type and version names must be routable: `order.paid`, `v3`.
pub fn check_names(event_type: &str, version: &str) -> Result<(), String> {
    let type_ok = !event_type.is_empty()
        && event_type.len() <= 128
        && event_type.split('.').all(|s| {
            s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !type_ok {
        return Err(format!(
            "`{event_type}` is not a type name: dot-separated words of letters, digits, `_` and `-`, each starting with a letter or digit, like order.paid"
        ));
    }
    let version_ok = version
        .strip_prefix('v')
        .is_some_and(|d| !d.is_empty() && d.len() <= 9 && d.bytes().all(|b| b.is_ascii_digit()));
    if !version_ok {
        return Err(format!(
            "`{version}` is not a version: `v` and a number, like v3"
        ));
    }
    Ok(())
}

/// One file of the schema directory, read and parsed.
#[derive(Debug, Clone)]
pub struct FileDoc {
    /// The document.
    pub document: Value,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Where it is.
    pub path: PathBuf,
}

/// The schema directory's documents by `(type, version)`, and what could not be read.
pub type Files = BTreeMap<(String, String), FileDoc>;

/// Read every `{type}/{version}.json` under `dir`: the documents, and one sentence per file that
/// is not valid JSON or not laid out as `{type}/v{N}.json`.
pub fn scan(dir: &Path) -> anyhow::Result<(Files, Vec<String>)> {
    let mut files = Files::new();
    let mut bad = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading schema directory {}", dir.display()))?;
    for type_dir in entries {
        let type_dir = type_dir?;
        if !type_dir.file_type()?.is_dir() {
            continue;
        }
        let event_type = type_dir.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(type_dir.path())? {
            let path = file?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let version = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Err(e) = check_names(&event_type, &version) {
                bad.push(format!(
                    "{}: schema files must be laid out as {{type}}/v{{N}}.json ({e})",
                    path.display()
                ));
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    bad.push(format!("{}: cannot be read: {e}", path.display()));
                    continue;
                }
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(document) => {
                    files.insert(
                        (event_type.clone(), version),
                        FileDoc {
                            fingerprint: fingerprint(&document),
                            document,
                            path,
                        },
                    );
                }
                Err(e) => bad.push(format!("{} is not valid JSON: {e}", path.display())),
            }
        }
    }
    Ok((files, bad))
}

/// [`scan`], failing on any bad file or any file that does not compile (start-up: a schema
/// that silently does not load would reject valid events later).
pub fn scan_strict(dir: &Path) -> anyhow::Result<Files> {
    let (files, bad) = scan(dir)?;
    if let Some(first) = bad.first() {
        bail!("{first}");
    }
    for doc in files.values() {
        compile(doc.document.clone())
            .map_err(|e| anyhow::anyhow!("{} is {e}", doc.path.display()))?;
    }
    Ok(files)
}

/// The next snapshot from the directory's `files` and the database's `db`, starting from `prev`
/// (whose compiled documents are reused while they do not change), and what was refused.
///
/// - A version registered over the API is served as stored (it was checked when registered).
/// - A file version the previous snapshot did not serve is new: it must compile and, when
///   `check_new_files` (a running instance), be compatible with the type's earlier versions
///   under its mode; otherwise it is refused and not served.
/// - A file whose version was served with another document may change only annotations
///   (`title`, `description`, `examples`, …): otherwise the edit is refused and the previous
///   document keeps serving.
/// - A file and an API version with the same `(type, version)` and different documents: the
///   file wins, and the conflict is reported.
/// - A file removed from the directory takes its version away (the directory is its owner's).
pub fn build(
    prev: &Snapshot,
    files: &Files,
    db: &SchemaState,
    check_new_files: bool,
) -> (Snapshot, Vec<Refusal>) {
    let mut refusals = Vec::new();
    let mut types: BTreeMap<String, TypeEntry> = BTreeMap::new();
    for (t, m) in &db.modes {
        if let Ok(mode) = m.parse::<Mode>() {
            types.entry(t.clone()).or_default().mode = Some(mode);
        }
    }
    let reuse = |t: &str, v: &str, fp: &str| -> Option<Arc<Compiled>> {
        prev.get(t, v)
            .filter(|e| e.compiled.fingerprint == fp)
            .map(|e| e.compiled.clone())
    };
    // Registered versions first: new files are checked against them too.
    let mut registered: BTreeMap<(String, String), i64> = BTreeMap::new();
    for sv in &db.versions {
        registered.insert(
            (sv.event_type.clone(), sv.version.clone()),
            sv.registered_at,
        );
        if files.contains_key(&(sv.event_type.clone(), sv.version.clone())) {
            continue;
        }
        let compiled = match reuse(&sv.event_type, &sv.version, &sv.fingerprint) {
            Some(c) => Ok(c),
            None => serde_json::from_str::<Value>(&sv.document)
                .map_err(|e| format!("stored document is not JSON: {e}"))
                .and_then(compile),
        };
        match compiled {
            Ok(compiled) => {
                types
                    .entry(sv.event_type.clone())
                    .or_default()
                    .versions
                    .insert(
                        sv.version.clone(),
                        SchemaEntry {
                            compiled,
                            origin: Origin::Api,
                            registered_at: Some(sv.registered_at),
                            deprecated_at: None,
                        },
                    );
            }
            Err(reason) => refusals.push(Refusal {
                event_type: sv.event_type.clone(),
                version: sv.version.clone(),
                fingerprint: sv.fingerprint.clone(),
                reason,
                conflict: false,
            }),
        }
    }
    // Files in version order, so that a new one is checked against the ones before it.
    let mut ordered: Vec<(&(String, String), &FileDoc)> = files.iter().collect();
    ordered.sort_by_key(|((t, v), _)| (t.clone(), version_number(v).unwrap_or(u64::MAX)));
    for ((t, v), doc) in ordered {
        let refuse = |reason: String, conflict: bool| Refusal {
            event_type: t.clone(),
            version: v.clone(),
            fingerprint: doc.fingerprint.clone(),
            reason,
            conflict,
        };
        let stored = db
            .versions
            .iter()
            .find(|s| &s.event_type == t && &s.version == v);
        if let Some(s) = stored.filter(|s| s.fingerprint != doc.fingerprint) {
            refusals.push(refuse(
                format!(
                    "{} differs from the version registered over the API (fingerprint {}); \
                     the directory's document is served",
                    doc.path.display(),
                    s.fingerprint
                ),
                true,
            ));
        }
        let before = prev.get(t, v);
        let compiled = match before {
            Some(e) if e.compiled.fingerprint == doc.fingerprint => e.compiled.clone(),
            Some(e) if e.origin == Origin::File => {
                if !compat::annotations_only_change(&e.compiled.document, &doc.document) {
                    refusals.push(refuse(
                        format!(
                            "{} was edited beyond annotations (title, description, examples, …): \
                             a version is immutable, so the edit is refused and the previous \
                             document keeps serving; publish the change as a new version",
                            doc.path.display()
                        ),
                        false,
                    ));
                    insert(&mut types, t, v, e.clone());
                    continue;
                }
                match compile(doc.document.clone()) {
                    Ok(c) => c,
                    Err(reason) => {
                        refusals.push(refuse(format!("{} is {reason}", doc.path.display()), false));
                        insert(&mut types, t, v, e.clone());
                        continue;
                    }
                }
            }
            _ => {
                let compiled = match compile(doc.document.clone()) {
                    Ok(c) => c,
                    Err(reason) => {
                        refusals.push(refuse(format!("{} is {reason}", doc.path.display()), false));
                        continue;
                    }
                };
                if check_new_files && stored.is_none() && before.is_none() {
                    let entry = types.get(t).cloned().unwrap_or_default();
                    let mode = entry.mode.unwrap_or(prev.default_mode);
                    let n = version_number(v).unwrap_or(u64::MAX);
                    let earlier: Vec<(&String, &SchemaEntry)> = entry
                        .versions()
                        .filter(|(ev, _)| version_number(ev).unwrap_or(u64::MAX) < n)
                        .collect();
                    let earlier: Vec<(&str, &Value)> = earlier
                        .iter()
                        .map(|(ev, e)| (ev.as_str(), e.document()))
                        .collect();
                    let problems = compat::check(mode, &earlier, (v, &doc.document));
                    if !problems.is_empty() {
                        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                        refusals.push(refuse(
                            format!(
                                "{} is not {mode}-compatible with the earlier versions, so it is \
                                 not served: {}",
                                doc.path.display(),
                                list.join("; ")
                            ),
                            false,
                        ));
                        continue;
                    }
                }
                compiled
            }
        };
        insert(
            &mut types,
            t,
            v,
            SchemaEntry {
                compiled,
                origin: Origin::File,
                registered_at: registered.get(&(t.clone(), v.clone())).copied(),
                deprecated_at: None,
            },
        );
    }
    for (t, v, at) in &db.deprecations {
        if let Some(e) = types.get_mut(t).and_then(|e| e.versions.get_mut(v)) {
            e.deprecated_at = Some(*at);
        }
    }
    (
        Snapshot {
            types,
            default_mode: prev.default_mode,
            revision: db.revision,
        },
        refusals,
    )
}

fn insert(types: &mut BTreeMap<String, TypeEntry>, t: &str, v: &str, entry: SchemaEntry) {
    types
        .entry(t.to_owned())
        .or_default()
        .versions
        .insert(v.to_owned(), entry);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::schemas::StoredVersion;
    use serde_json::json;

    #[test]
    fn shipped_schemas_load_and_report_pointers() {
        let reg = Registry::load(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas")
                .as_path(),
        )
        .unwrap();
        assert_eq!(reg.versions("order.paid"), vec!["v1", "v2"]);
        assert!(reg.get("user.signed_up", "v1").is_some());
        let s = reg.get("order.paid", "v1").unwrap();
        let errs = s.violations(&json!({"order_id": 5, "amount": -1}), "/data");
        let ptrs: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert!(ptrs.contains(&"/data/order_id"), "{ptrs:?}");
        assert!(ptrs.contains(&"/data/amount"), "{ptrs:?}");
    }

    #[test]
    fn versions_sort_by_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a.b")).unwrap();
        for v in ["v10", "v2", "v1"] {
            std::fs::write(dir.path().join(format!("a.b/{v}.json")), "{}").unwrap();
        }
        let reg = Registry::load(dir.path()).unwrap();
        assert_eq!(reg.versions("a.b"), vec!["v1", "v2", "v10"]);
    }

    #[test]
    fn bad_schema_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a.b")).unwrap();
        std::fs::write(dir.path().join("a.b/v1.json"), r#"{"type": 12}"#).unwrap();
        assert!(Registry::load(dir.path()).is_err());
    }

    #[test]
    fn fingerprints_ignore_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"b": 2})));
        assert_eq!(canonical(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    }

    fn file(doc: Value) -> FileDoc {
        FileDoc {
            fingerprint: fingerprint(&doc),
            document: doc,
            path: PathBuf::from("x.json"),
        }
    }

    fn closed(props: &[&str], required: &[&str]) -> Value {
        let p: serde_json::Map<String, Value> = props
            .iter()
            .map(|n| ((*n).to_owned(), json!({"type": "string"})))
            .collect();
        json!({"type": "object", "properties": p, "required": required, "additionalProperties": false})
    }

    fn key(t: &str, v: &str) -> (String, String) {
        (t.to_owned(), v.to_owned())
    }

    #[test]
    fn a_new_file_is_checked_and_an_incompatible_one_refused() {
        let mut files = Files::new();
        files.insert(key("a.b", "v1"), file(closed(&["id"], &["id"])));
        let (s1, r) = build(
            &Snapshot::empty(Mode::Backward),
            &files,
            &SchemaState::default(),
            false,
        );
        assert!(r.is_empty());
        // v2 adds an optional field to a closed model: BACKWARD-compatible.
        files.insert(key("a.b", "v2"), file(closed(&["id", "note"], &["id"])));
        let (s2, r) = build(&s1, &files, &SchemaState::default(), true);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(s2.versions("a.b"), vec!["v1", "v2"]);
        // v3 makes it required: v2's events without `note` break.
        files.insert(
            key("a.b", "v3"),
            file(closed(&["id", "note"], &["id", "note"])),
        );
        let (s3, r) = build(&s2, &files, &SchemaState::default(), true);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].reason.contains("BACKWARD"), "{}", r[0].reason);
        assert!(r[0].reason.contains("note"), "{}", r[0].reason);
        assert_eq!(s3.versions("a.b"), vec!["v1", "v2"], "v3 is not served");
        // Under NONE it is accepted.
        let db = SchemaState {
            modes: vec![("a.b".into(), "NONE".into())],
            ..SchemaState::default()
        };
        let (s4, r) = build(&s3, &files, &db, true);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(s4.versions("a.b"), vec!["v1", "v2", "v3"]);
    }

    #[test]
    fn an_edit_beyond_annotations_keeps_the_previous_document() {
        let mut files = Files::new();
        files.insert(key("a.b", "v1"), file(closed(&["id"], &["id"])));
        let empty = SchemaState::default();
        let (s1, _) = build(&Snapshot::empty(Mode::Backward), &files, &empty, false);
        let mut titled = closed(&["id"], &["id"]);
        titled["title"] = json!("A b");
        files.insert(key("a.b", "v1"), file(titled.clone()));
        let (s2, r) = build(&s1, &files, &empty, true);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(s2.get("a.b", "v1").unwrap().document(), &titled);
        files.insert(key("a.b", "v1"), file(closed(&["id", "x"], &["id"])));
        let (s3, r) = build(&s2, &files, &empty, true);
        assert_eq!(r.len(), 1);
        assert!(r[0].reason.contains("immutable"), "{}", r[0].reason);
        assert_eq!(s3.get("a.b", "v1").unwrap().document(), &titled);
    }

    #[test]
    fn the_directory_wins_a_conflict_with_the_api_and_says_so() {
        let mut files = Files::new();
        files.insert(key("a.b", "v1"), file(closed(&["id"], &["id"])));
        let other = closed(&["id", "x"], &["id"]);
        let db = SchemaState {
            revision: 3,
            versions: vec![StoredVersion {
                event_type: "a.b".into(),
                version: "v1".into(),
                document: other.to_string(),
                fingerprint: fingerprint(&other),
                registered_at: 7,
            }],
            deprecations: vec![("a.b".into(), "v1".into(), 9)],
            ..SchemaState::default()
        };
        let (s, r) = build(&Snapshot::empty(Mode::Backward), &files, &db, true);
        assert_eq!(r.len(), 1);
        assert!(r[0].conflict);
        let e = s.get("a.b", "v1").unwrap();
        assert_eq!(e.origin, Origin::File);
        assert_eq!(e.document(), &closed(&["id"], &["id"]));
        assert_eq!(e.deprecated_at, Some(9));
        assert_eq!(s.revision, 3);
    }

    #[test]
    fn registered_versions_are_served_and_the_newest_undeprecated_is_the_successor() {
        let doc = closed(&["id"], &["id"]);
        let sv = |v: &str| StoredVersion {
            event_type: "a.b".into(),
            version: v.into(),
            document: doc.to_string(),
            fingerprint: fingerprint(&doc),
            registered_at: 1,
        };
        let db = SchemaState {
            versions: vec![sv("v1"), sv("v2"), sv("v10")],
            deprecations: vec![("a.b".into(), "v10".into(), 5)],
            ..SchemaState::default()
        };
        let (s, r) = build(&Snapshot::empty(Mode::Backward), &Files::new(), &db, true);
        assert!(r.is_empty());
        assert_eq!(s.versions("a.b"), vec!["v1", "v2", "v10"]);
        assert_eq!(s.get("a.b", "v2").unwrap().origin, Origin::Api);
        assert_eq!(s.newest("a.b").map(String::as_str), Some("v2"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_names("order.paid", "v3").is_ok());
        assert!(check_names("order..paid", "v3").is_err());
        assert!(check_names("order.paid", "3").is_err());
        assert!(check_names("order.paid", "v").is_err());
        assert!(check_names("order paid", "v1").is_err());
        // The documented pattern: every word starts with a letter or a digit.
        assert!(check_names("__main__", "v1").is_err());
        assert!(check_names("order._paid", "v1").is_err());
        assert!(check_names("order.-paid", "v1").is_err());
        assert!(check_names("order_x.paid-2", "v1").is_ok());
    }
}
