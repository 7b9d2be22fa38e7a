//! `(type, version)` → compiled JSON Schema validator, loaded once from `{dir}/{type}/{version}.json`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::error::FieldError;

/// One loaded schema.
pub struct SchemaEntry {
    /// The schema document as written.
    pub document: Value,
    validator: jsonschema::Validator,
}

/// All schemas, immutable after loading (cheap to clone).
#[derive(Clone, Default)]
pub struct Registry {
    // type -> version -> entry; BTreeMap so listings are sorted.
    schemas: Arc<BTreeMap<String, BTreeMap<String, SchemaEntry>>>,
}

/// Longest message kept per violation, so a huge value cannot blow up an error response.
const MAX_MESSAGE: usize = 300;

impl Registry {
    /// Load and compile every `{type}/{version}.json` under `dir`; any bad file fails the load
    /// (a schema that silently does not load would reject valid events later).
    pub fn load(dir: &Path) -> anyhow::Result<Registry> {
        let mut schemas: BTreeMap<String, BTreeMap<String, SchemaEntry>> = BTreeMap::new();
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
                let entry = compile(&path)?;
                check_names(&event_type, &version, &path)?;
                schemas
                    .entry(event_type.clone())
                    .or_default()
                    .insert(version, entry);
            }
        }
        Ok(Registry {
            schemas: Arc::new(schemas),
        })
    }

    /// The schema for `(type, version)`.
    pub fn get(&self, event_type: &str, version: &str) -> Option<&SchemaEntry> {
        self.schemas.get(event_type)?.get(version)
    }

    /// Versions known for a type, oldest first (empty if the type is unknown).
    pub fn versions(&self, event_type: &str) -> Vec<String> {
        self.schemas
            .get(event_type)
            .map(|v| by_number(v.keys()).into_iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every `(type, versions oldest first)`.
    pub fn list(&self) -> impl Iterator<Item = (&String, Vec<&String>)> {
        self.schemas.iter().map(|(t, v)| (t, by_number(v.keys())))
    }

    /// Number of schemas loaded.
    pub fn len(&self) -> usize {
        self.schemas.values().map(BTreeMap::len).sum()
    }

    /// Whether no schema is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SchemaEntry {
    /// Every violation of `data`, with pointers prefixed by `pointer` (where `data` sits in the
    /// request body).
    pub fn violations(&self, data: &Value, pointer: &str) -> Vec<FieldError> {
        self.validator
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

/// `v2` before `v10`: versions sort by their number, not as text.
fn by_number<'a>(versions: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut v: Vec<&String> = versions.collect();
    v.sort_by_key(|s| s.trim_start_matches('v').parse::<u64>().unwrap_or(u64::MAX));
    v
}

fn compile(path: &PathBuf) -> anyhow::Result<SchemaEntry> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let document: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&document)
        .map_err(|e| anyhow::anyhow!("{} is not a valid JSON Schema: {e}", path.display()))?;
    Ok(SchemaEntry {
        document,
        validator,
    })
}

/// Schema file names must be routable names, the same rule as events' `type` and `version`.
fn check_names(event_type: &str, version: &str, path: &Path) -> anyhow::Result<()> {
    let type_ok = event_type.split('.').all(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    let version_ok = version
        .strip_prefix('v')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    if !type_ok || !version_ok {
        bail!(
            "{}: schema files must be laid out as {{type}}/v{{N}}.json with type like order.paid",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let errs = s.violations(&serde_json::json!({"order_id": 5, "amount": -1}), "/data");
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
}
