//! `postbox schemas check`: the registry's checks on a schema directory, for producers' CI: every
//! file is valid JSON, laid out as `{type}/v{N}.json` and compiles; each version keeps its type's
//! compatibility mode against the versions before it; and, against a running postbox, a version
//! it already has is unchanged and a new one keeps the mode against what it serves.

use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

use super::{
    compat::{self, Mode},
    registry::{self, version_number},
};

/// What a running postbox serves for one type.
#[derive(Debug, Default)]
struct Remote {
    mode: Option<Mode>,
    /// Version → (document, fingerprint).
    versions: BTreeMap<String, (Value, String)>,
}

/// Every violation, one line each (empty: all good). `against` is a postbox base URL; `mode`
/// overrides every type's mode; `token` is an API key for a postbox that wants one.
pub async fn run(
    dir: &Path,
    against: Option<&str>,
    mode: Option<Mode>,
    token: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let (files, bad) = registry::scan(dir)?;
    let mut out = bad;
    for ((t, v), doc) in &files {
        if let Err(e) = registry::compile(doc.document.clone()) {
            out.push(format!("{}: {t} {v} is {e}", doc.path.display()));
        }
    }
    let remote = match against {
        Some(url) => fetch(url.trim_end_matches('/'), token).await?,
        None => BTreeMap::new(),
    };
    let mut types: Vec<&String> = files.keys().map(|(t, _)| t).collect();
    types.dedup();
    for t in types {
        let r = remote.get(t);
        let mode = mode
            .or_else(|| r.and_then(|r| r.mode))
            .unwrap_or(Mode::Backward);
        // The versions as they will be: the server's, with the directory's beside them.
        let mut all: BTreeMap<u64, (String, Value, bool)> = BTreeMap::new();
        if let Some(r) = r {
            for (v, (d, _)) in &r.versions {
                all.insert(
                    version_number(v).unwrap_or(u64::MAX),
                    (v.clone(), d.clone(), false),
                );
            }
        }
        for ((ft, v), doc) in files.iter().filter(|((ft, _), _)| ft == t) {
            if let Some((_, fp)) = r.and_then(|r| r.versions.get(v))
                && *fp != doc.fingerprint
            {
                out.push(format!(
                    "{}: {ft} {v} differs from the version the server has (fingerprint {fp}); \
                     versions are immutable: publish the change as a new version",
                    doc.path.display()
                ));
                continue;
            }
            let number = version_number(v).unwrap_or(u64::MAX);
            let known = r.is_some_and(|r| r.versions.contains_key(v));
            all.insert(number, (v.clone(), doc.document.clone(), !known));
        }
        let list: Vec<&(String, Value, bool)> = all.values().collect();
        for i in 1..list.len() {
            let (v, d, new) = list[i];
            // What the server already serves was checked when it came; without a server every
            // version of the directory is checked.
            if against.is_some() && !new {
                continue;
            }
            let earlier: Vec<(&str, &Value)> =
                list[..i].iter().map(|(v, d, _)| (v.as_str(), d)).collect();
            let path = files
                .get(&(t.clone(), v.clone()))
                .map(|f| f.path.display().to_string())
                .unwrap_or_else(|| format!("{t}/{v}"));
            for inc in compat::check(mode, &earlier, (v, d)) {
                out.push(format!("{path}: {t} {v} is not {mode}-compatible: {inc}"));
            }
        }
    }
    Ok(out)
}

/// What the postbox at `base` serves: every type's mode and versions with their documents.
async fn fetch(base: &str, token: Option<&str>) -> anyhow::Result<BTreeMap<String, Remote>> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let get = |path: String| {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await?;
            let status = resp.status();
            if !status.is_success() {
                anyhow::bail!("GET {path}: {status}");
            }
            Ok::<Value, anyhow::Error>(resp.json().await?)
        }
    };
    let list = get("/v1/schemas".to_owned()).await?;
    let mut out = BTreeMap::new();
    for t in list["schemas"].as_array().into_iter().flatten() {
        let Some(name) = t["type"].as_str() else {
            continue;
        };
        let detail = get(format!("/v1/schemas/{name}")).await?;
        let mut remote = Remote {
            mode: detail["compatibility"]
                .as_str()
                .and_then(|m| m.parse().ok()),
            ..Remote::default()
        };
        for v in detail["versions"].as_array().into_iter().flatten() {
            let (Some(version), Some(fp)) = (v["version"].as_str(), v["fingerprint"].as_str())
            else {
                continue;
            };
            let doc = get(format!("/v1/schemas/{name}/{version}")).await?;
            remote
                .versions
                .insert(version.to_owned(), (doc, fp.to_owned()));
        }
        out.insert(name.to_owned(), remote);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, t: &str, v: &str, doc: &Value) {
        std::fs::create_dir_all(dir.join(t)).unwrap();
        std::fs::write(dir.join(t).join(format!("{v}.json")), doc.to_string()).unwrap();
    }

    #[tokio::test]
    async fn a_directory_is_checked_version_by_version() {
        let dir = tempfile::tempdir().unwrap();
        let closed = |req: &[&str]| serde_json::json!({"type": "object", "properties": {"id": {"type": "string"}, "note": {"type": "string"}}, "required": req, "additionalProperties": false});
        write(dir.path(), "a.b", "v1", &closed(&["id"]));
        write(dir.path(), "a.b", "v2", &closed(&["id"]));
        assert!(run(dir.path(), None, None, None).await.unwrap().is_empty());
        write(dir.path(), "a.b", "v3", &closed(&["id", "note"]));
        let lines = run(dir.path(), None, None, None).await.unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("v3.json"), "{}", lines[0]);
        assert!(lines[0].contains("BACKWARD"), "{}", lines[0]);
        assert!(
            run(dir.path(), None, Some(Mode::None), None)
                .await
                .unwrap()
                .is_empty()
        );
        std::fs::write(dir.path().join("a.b/v4.json"), "{not json").unwrap();
        let lines = run(dir.path(), None, Some(Mode::None), None).await.unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("not valid JSON"), "{}", lines[0]);
    }
}
