//! The committed OpenAPI document (`openapi/openapi.json`) matches what the code generates, and
//! the document describes every endpoint and every error the way clients rely on.

use std::path::PathBuf;

use serde_json::Value;

/// Regenerate with this when the drift test fails.
const REGENERATE: &str = "cargo run -- openapi > openapi/openapi.json";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json")
}

fn generated() -> Value {
    serde_json::from_str(&postbox::http::openapi_json()).expect("generated OpenAPI is JSON")
}

#[test]
fn committed_openapi_matches_the_code() {
    let path = committed_path();
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nrun `{REGENERATE}` and commit the file",
            path.display()
        )
    });
    let generated = postbox::http::openapi_json();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "openapi/openapi.json is out of date with the code (first difference at line \
             {first_diff}: committed {:?}, generated {:?}).\n\
             Run `{REGENERATE}` and commit the result.",
            committed
                .lines()
                .nth(first_diff - 1)
                .unwrap_or("<end of file>"),
            generated
                .lines()
                .nth(first_diff - 1)
                .unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn document_lists_every_endpoint() {
    let doc = generated();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("document has paths");
    for (path, method) in [
        ("/v1/events", "post"),
        ("/v1/events/{id}", "get"),
        ("/v1/schemas", "get"),
        ("/v1/schemas/{type}/{version}", "get"),
        ("/v1/schemas/{type}/{version}/validate", "post"),
        ("/v1/stats", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("path {path} is missing from the OpenAPI document"));
        assert!(
            item.get(method).is_some(),
            "{} {path} is missing from the OpenAPI document",
            method.to_uppercase()
        );
    }
}

/// Error responses whose body is deliberately not a problem document: `/readyz` answers 503
/// with the same readiness report as its 200 (orchestrators and people read it to see *what* is
/// not ready). They must still be documented with an example.
const NOT_PROBLEM_JSON: &[(&str, &str, &str)] = &[("/readyz", "get", "503")];

#[test]
fn every_error_response_is_problem_json_with_an_example() {
    let doc = generated();
    let paths = doc["paths"].as_object().expect("document has paths");
    let mut gaps = Vec::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                continue;
            };
            for (status, resp) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                let here = format!("{} {path} → {status}", method.to_uppercase());
                let content = resp.get("content").and_then(Value::as_object);
                let exempt = NOT_PROBLEM_JSON.contains(&(path.as_str(), method.as_str(), status));
                let media = if exempt {
                    content.and_then(|c| c.values().next())
                } else {
                    content.and_then(|c| c.get("application/problem+json"))
                };
                let Some(media) = media else {
                    gaps.push(format!(
                        "{here}: no application/problem+json content (has {:?})",
                        content.map(|c| c.keys().collect::<Vec<_>>())
                    ));
                    continue;
                };
                let examples = example_values(media);
                if examples.is_empty() {
                    gaps.push(format!("{here}: no example"));
                }
                if exempt {
                    continue;
                }
                for ex in examples {
                    if ex["status"].as_u64().map(|s| s.to_string()).as_deref() != Some(status) {
                        gaps.push(format!(
                            "{here}: example has status {} (must equal the response code)",
                            ex["status"]
                        ));
                    }
                    if !ex["type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("/problems/"))
                    {
                        gaps.push(format!(
                            "{here}: example `type` {} is not a /problems/… URI",
                            ex["type"]
                        ));
                    }
                    for field in ["title", "detail"] {
                        if !ex[field].is_string() {
                            gaps.push(format!("{here}: example has no `{field}`"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        gaps.is_empty(),
        "OpenAPI error responses must be application/problem+json (RFC 9457) with an \
         example; fix the #[utoipa::path] annotations in src/http/*.rs:\n  {}",
        gaps.join("\n  ")
    );
}

/// `example`, or every `examples.*.value`, of one media type object.
fn example_values(media: &Value) -> Vec<&Value> {
    if let Some(ex) = media.get("example") {
        return vec![ex];
    }
    media
        .get("examples")
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(|e| e.get("value")).collect())
        .unwrap_or_default()
}
