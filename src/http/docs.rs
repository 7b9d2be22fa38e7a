//! `/docs` (Swagger UI, served from assets vendored into the binary: works offline) and
//! `/openapi.json`: the document the code generates (as committed in `openapi/openapi.json`)
//! plus what the schema registry serves right now: each `(type, version)` as a component
//! schema `{type}.{version}`, and an example body per type for "Try it out" on
//! `POST /v1/events` (the schema's own `examples`, or one generated and checked against it).

use std::sync::Arc;

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Map, Value, json};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::AppState;
use crate::schema::registry::{SchemaEntry, Snapshot};

/// Swagger UI and the OpenAPI document.
pub fn routes(doc: utoipa::openapi::OpenApi) -> Router<AppState> {
    let base = Arc::new(serde_json::to_value(&doc).unwrap_or(Value::Null));
    Router::new()
        .merge(SwaggerUi::new("/docs").config(Config::from("/openapi.json")))
        .route(
            "/openapi.json",
            get(move |State(state): State<AppState>| {
                let base = base.clone();
                async move { Json(live(&base, &state.registry().snapshot())) }
            }),
        )
}

/// `base` with the registry's schemas and examples.
pub fn live(base: &Value, schemas: &Snapshot) -> Value {
    let mut doc = base.clone();
    let mut examples = Map::new();
    let content =
        &mut doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"];
    if let Some(documented) = content.as_object_mut().and_then(|c| c.remove("example")) {
        examples.insert(
            "documented".to_owned(),
            json!({"summary": "order.paid v1 (the documented example)", "value": documented}),
        );
    }
    let mut components = Map::new();
    for (t, versions) in schemas.list() {
        for v in versions {
            let Some(entry) = schemas.get(t, v) else {
                continue;
            };
            let name = format!("{t}.{v}");
            let mut schema = rebase_refs(entry.document(), &format!("#/components/schemas/{name}"));
            if let Value::Object(m) = &mut schema {
                let state = if entry.deprecated_at.is_some() {
                    " Deprecated: still accepted, with a `Deprecation` header."
                } else {
                    ""
                };
                m.entry("description").or_insert_with(|| {
                    Value::String(format!(
                        "`data` of `{t}` {v} events (origin {}, fingerprint {}).{state}",
                        entry.origin.as_str(),
                        entry.fingerprint()
                    ))
                });
            }
            components.insert(name.clone(), schema);
            if let Some(data) = example(entry) {
                examples.insert(
                    name,
                    json!({"summary": format!("{t} {v}"), "value": {"type": t, "version": v, "data": data}}),
                );
            }
        }
    }
    if let Value::Object(c) = content {
        c.insert("examples".to_owned(), Value::Object(examples));
    }
    if let Some(Value::Object(s)) = doc.pointer_mut("/components/schemas") {
        for (k, v) in components {
            s.entry(k).or_insert(v);
        }
    }
    doc
}

/// Local `$ref`s (`#/…`) of a schema embedded at `at`, rewritten to point inside it.
fn rebase_refs(schema: &Value, at: &str) -> Value {
    match schema {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) if r.starts_with('#') => {
                            Value::String(format!("{at}{}", &r[1..]))
                        }
                        _ => rebase_refs(v, at),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| rebase_refs(v, at)).collect()),
        other => other.clone(),
    }
}

/// An example `data` for a schema that passes it: its first `examples` entry, else one
/// generated (every property, or only the required ones); none if neither passes.
fn example(entry: &SchemaEntry) -> Option<Value> {
    let doc = entry.document();
    let passes = |v: &Value| entry.violations(v, "").is_empty();
    if let Some(ex) = doc.get("examples").and_then(|e| e.get(0))
        && passes(ex)
    {
        return Some(ex.clone());
    }
    [true, false]
        .into_iter()
        .filter_map(|all| generate(doc, doc, all, 0))
        .find(passes)
}

fn generate(s: &Value, root: &Value, all: bool, depth: usize) -> Option<Value> {
    if depth > 8 {
        return None;
    }
    let s = match s.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with('#') => root.pointer(&r[1..])?,
        Some(_) => return None,
        None => s,
    };
    for key in ["examples", "enum"] {
        if let Some(v) = s.get(key).and_then(|e| e.get(0)) {
            return Some(v.clone());
        }
    }
    for key in ["const", "default"] {
        if let Some(v) = s.get(key) {
            return Some(v.clone());
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = s.get(key).and_then(|a| a.get(0)) {
            return generate(first, root, all, depth + 1);
        }
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).find(|t| *t != "null")?,
        _ if s.get("properties").is_some() => "object",
        _ => return Some(json!({})),
    };
    let bound = |k: &str| s.get(k).and_then(Value::as_f64);
    Some(match ty {
        "object" => {
            let required: Vec<&str> = s
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut m = Map::new();
            for (k, p) in s
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if all || required.contains(&k.as_str()) {
                    m.insert(k.clone(), generate(p, root, all, depth + 1)?);
                }
            }
            Value::Object(m)
        }
        "array" => {
            let n = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .min(3);
            let items = s.get("items").unwrap_or(&Value::Null);
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(generate(items, root, all, depth + 1)?);
            }
            Value::Array(out)
        }
        "string" => {
            let text = match s.get("format").and_then(Value::as_str) {
                Some("date-time") => "2026-11-30T08:00:00Z",
                Some("date") => "2026-11-30",
                Some("email") => "ada@example.com",
                Some("uuid") => "0193c7c5-7b5e-7a51-9f3c-3f1c2c0e8a11",
                Some("uri") => "https://example.com/",
                _ => "example",
            };
            let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let max = s
                .get("maxLength")
                .and_then(Value::as_u64)
                .map(|m| m as usize);
            let mut t = text.to_owned();
            if let Some(pattern) = s.get("pattern") {
                // A few everyday shapes; the first the pattern takes (none: no example).
                let check =
                    jsonschema::validator_for(&json!({"type": "string", "pattern": pattern}))
                        .ok()?;
                let matches = |c: &str| check.is_valid(&json!(c));
                t = [
                    "EUR",
                    "example",
                    "ABC-123",
                    "abc123",
                    "a",
                    "1",
                    "2026-11-30",
                    "+15555550100",
                ]
                .into_iter()
                .find(|c| matches(c))?
                .to_owned();
            }
            while t.len() < min {
                t.push('x');
            }
            if let Some(max) = max {
                t.truncate(max);
            }
            Value::String(t)
        }
        "integer" | "number" => {
            let low = bound("minimum")
                .or(bound("exclusiveMinimum").map(|m| m + 1.0))
                .unwrap_or(1.0);
            let high = bound("maximum").or(bound("exclusiveMaximum").map(|m| m - 1.0));
            let n = high.map_or(low, |h| low.min(h)).ceil();
            if ty == "integer" {
                json!(n as i64)
            } else {
                json!(n)
            }
        }
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Registry;

    #[test]
    fn the_live_document_has_every_schema_and_an_example_that_passes_it() {
        let reg = Registry::load(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas")
                .as_path(),
        )
        .unwrap();
        let (_, doc) = super::super::api();
        let base = serde_json::to_value(&doc).unwrap();
        let s = reg.snapshot();
        let live = live(&base, &s);
        for name in ["order.paid.v1", "order.paid.v2", "user.signed_up.v1"] {
            assert!(
                live.pointer(&format!("/components/schemas/{name}"))
                    .is_some(),
                "{name}"
            );
        }
        let content =
            &live["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"];
        assert!(
            content.get("example").is_none(),
            "example and examples exclude each other"
        );
        let examples = content["examples"].as_object().unwrap();
        assert_eq!(
            examples.keys().next().map(String::as_str),
            Some("documented")
        );
        let v2 = &examples["order.paid.v2"]["value"];
        assert_eq!(v2["type"], "order.paid");
        let entry = s.get("order.paid", "v2").unwrap();
        assert!(entry.violations(&v2["data"], "").is_empty(), "{v2}");
        assert!(examples.contains_key("user.signed_up.v1"), "{examples:?}");
    }

    #[test]
    fn local_refs_point_inside_the_embedded_schema() {
        let s = json!({"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}, "y": {"$ref": "https://e/x"}}});
        let r = rebase_refs(&s, "#/components/schemas/t.v1");
        assert_eq!(
            r["properties"]["x"]["$ref"],
            "#/components/schemas/t.v1/$defs/a"
        );
        assert_eq!(r["properties"]["y"]["$ref"], "https://e/x");
    }
}
