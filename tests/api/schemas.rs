//! The schema registry against the real binary: register → validate → break (409/422) →
//! deprecate → `Deprecation` header; a file dropped into the directory of a running instance
//! validates events within 2 s, and one that breaks its type's mode or an edited version is
//! refused while the previous set keeps serving; two instances on one PostgreSQL see each
//! other's registrations within 2 s.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{
    AMQP_URL, Event, PgDatabase, ProcApp, ProcEnv, assert_problem, header, metric_value,
    schemas_dir, unique,
};

/// A copy of the repo's schemas that the test may change.
fn schema_copy(root: &Path) -> std::path::PathBuf {
    let dir = root.join("schemas");
    for entry in walk(&schemas_dir()) {
        let rel = entry
            .strip_prefix(schemas_dir())
            .expect("under the schemas");
        let to = dir.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &to).expect("copy");
    }
    dir
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn closed(props: &[&str], required: &[&str]) -> Value {
    let p: serde_json::Map<String, Value> = props
        .iter()
        .map(|n| ((*n).to_owned(), json!({"type": "string", "minLength": 1})))
        .collect();
    json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": p, "required": required, "additionalProperties": false})
}

async fn put(app: &ProcApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url(path))
        .header("content-type", "application/schema+json")
        .body(body.to_string())
        .send()
        .await
        .expect("PUT")
}

async fn post(app: &ProcApp, path: &str) -> reqwest::Response {
    app.client.post(app.url(path)).send().await.expect("POST")
}

/// Poll until an event of `(ty, version)` with `data` is accepted; how long it took.
async fn until_accepted(
    app: &ProcApp,
    ty: &str,
    version: &str,
    data: Value,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let r = app.post_event(&Event::new(ty, version, data.clone())).await;
        if r.status().as_u16() == 202 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{ty} {version} still refused after {within:?}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_register_validate_break_and_deprecate() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = schema_copy(root.path());
    let env = ProcEnv::new(
        &format!("sqlite://{}", root.path().join("outbox.db").display()),
        AMQP_URL,
        &unique("schemas"),
    )
    .set("POSTBOX_SCHEMAS_DIR", dir.display());
    let app = ProcApp::spawn(&env, &root.path().join("postbox.log")).await;

    // Register, idempotently.
    let v1 = closed(&["order_id", "carrier"], &["order_id"]);
    let r = put(&app, "/v1/schemas/order.shipped/v1", &v1).await;
    assert_eq!(r.status().as_u16(), 201, "{}", app.log_tail(20));
    assert_eq!(
        header(&r, "location").as_deref(),
        Some("/v1/schemas/order.shipped/v1")
    );
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["origin"], "api");
    assert_eq!(created["state"], "active");
    let r = put(&app, "/v1/schemas/order.shipped/v1", &v1).await;
    assert_eq!(r.status().as_u16(), 200);
    let same: Value = r.json().await.expect("json");
    assert_eq!(same["fingerprint"], created["fingerprint"]);

    // Validate against it at once.
    let ok = app
        .post_event(&Event::new(
            "order.shipped",
            "v1",
            json!({"order_id": "o-1"}),
        ))
        .await;
    assert_eq!(ok.status().as_u16(), 202);
    let bad = app
        .post_event(&Event::new(
            "order.shipped",
            "v1",
            json!({"carrier": "dhl"}),
        ))
        .await;
    assert_problem(bad, 422, "schema-violation").await;

    // Break it: a different v1, a v2 that makes a field required, one that does not compile.
    let r = put(
        &app,
        "/v1/schemas/order.shipped/v1",
        &closed(&["order_id"], &["order_id"]),
    )
    .await;
    assert_problem(r, 409, "schema-version-exists").await;
    let r = put(
        &app,
        "/v1/schemas/order.shipped/v2",
        &closed(
            &["order_id", "carrier", "user_id"],
            &["order_id", "user_id"],
        ),
    )
    .await;
    let p = assert_problem(r, 422, "incompatible-schema").await;
    let first = &p["errors"][0];
    assert_eq!(first["pointer"], "/required", "{p}");
    assert!(
        first["message"]
            .as_str()
            .is_some_and(|m| m.contains("user_id")),
        "{p}"
    );
    let r = put(&app, "/v1/schemas/order.shipped/v2", &json!({"type": 12})).await;
    assert_problem(r, 422, "invalid-schema").await;
    let r = put(&app, "/v1/schemas/order.shipped/3", &v1).await;
    assert_problem(r, 400, "invalid-request").await;

    // A compatible v2 (one more optional field), then a mode, then an old number.
    let v2 = closed(&["order_id", "carrier", "eta"], &["order_id"]);
    assert_eq!(
        put(&app, "/v1/schemas/order.shipped/v2", &v2)
            .await
            .status()
            .as_u16(),
        201
    );
    let r = put(
        &app,
        "/v1/schemas/order.shipped",
        &json!({"compatibility": "FULL"}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let r = put(
        &app,
        "/v1/schemas/order.shipped",
        &json!({"compatibility": "SIDEWAYS"}),
    )
    .await;
    assert_problem(r, 400, "invalid-request").await;
    let (status, detail) = app.get_json("/v1/schemas/order.shipped").await;
    assert_eq!(status, 200);
    assert_eq!(detail["compatibility"], "FULL");
    assert_eq!(detail["compatibility_from"], "type");
    let versions: Vec<&str> = detail["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(versions, ["v1", "v2"]);
    let r = put(&app, "/v1/schemas/order.shipped/v1", &v1).await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "an identical old version is still idempotent"
    );

    // Deprecate v1: still accepted, with Deprecation and a Link to v2.
    let r = post(&app, "/v1/schemas/order.shipped/v1/deprecate").await;
    assert_eq!(r.status().as_u16(), 200);
    let dep: Value = r.json().await.expect("json");
    assert_eq!(dep["state"], "deprecated");
    let r = app
        .post_event(&Event::new(
            "order.shipped",
            "v1",
            json!({"order_id": "o-2"}),
        ))
        .await;
    assert_eq!(r.status().as_u16(), 202);
    let deprecation = header(&r, "deprecation").expect("Deprecation header");
    assert!(
        deprecation.starts_with('@') && deprecation[1..].parse::<i64>().is_ok(),
        "{deprecation}"
    );
    let link = header(&r, "link").expect("Link header");
    assert!(
        link.contains("/v1/schemas/order.shipped/v2>") && link.contains("successor-version"),
        "{link}"
    );
    let r = app
        .post_event(&Event::new(
            "order.shipped",
            "v2",
            json!({"order_id": "o-3"}),
        ))
        .await;
    assert_eq!(r.status().as_u16(), 202);
    assert!(header(&r, "deprecation").is_none());
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "postbox_deprecated_events_total{type=\"order.shipped\",version=\"v1\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        post(&app, "/v1/schemas/order.shipped/v9/deprecate")
            .await
            .status()
            .as_u16(),
        404
    );

    // A file dropped into the directory validates events within 2 s.
    std::fs::create_dir_all(dir.join("invoice.sent")).expect("mkdir");
    std::fs::write(
        dir.join("invoice.sent/v1.json"),
        closed(&["invoice_id", "note"], &["invoice_id"]).to_string(),
    )
    .expect("write");
    let took = until_accepted(
        &app,
        "invoice.sent",
        "v1",
        json!({"invoice_id": "i-1"}),
        Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "[schemas] a dropped file validated events {:.2} s after it was written",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // One that breaks BACKWARD is refused, explained in the log, counted; the set keeps serving.
    std::fs::write(
        dir.join("invoice.sent/v2.json"),
        closed(&["invoice_id", "note"], &["invoice_id", "note"]).to_string(),
    )
    .expect("write");
    // An edit of v1 beyond annotations is refused too; a new title is not.
    let mut titled = closed(&["invoice_id", "note"], &["invoice_id"]);
    titled["title"] = json!("invoice.sent v1");
    std::fs::write(dir.join("invoice.sent/v1.json"), titled.to_string()).expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = app
        .post_event(&Event::new(
            "invoice.sent",
            "v2",
            json!({"invoice_id": "i-2", "note": "n"}),
        ))
        .await;
    assert_problem(r, 422, "unknown-schema").await;
    let (_, doc) = app.get_json("/v1/schemas/invoice.sent/v1").await;
    assert_eq!(
        doc["title"], "invoice.sent v1",
        "an annotation edit is taken"
    );
    std::fs::write(
        dir.join("invoice.sent/v1.json"),
        closed(&["invoice_id"], &["invoice_id"]).to_string(),
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = app
        .post_event(&Event::new(
            "invoice.sent",
            "v1",
            json!({"invoice_id": "i-3", "note": "kept"}),
        ))
        .await;
    assert_eq!(
        r.status().as_u16(),
        202,
        "the previous v1 (with `note`) keeps serving"
    );
    let log = app.log_text();
    assert!(
        log.contains("v2.json is not BACKWARD-compatible"),
        "{}",
        app.log_tail(30)
    );
    assert!(
        log.contains("edited beyond annotations"),
        "{}",
        app.log_tail(30)
    );
    let refused = app.metric("postbox_schema_refused_total").await;
    assert!(refused >= 2.0, "refusals counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_two_instances_on_postgres_see_each_others_changes() {
    let root = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create().await;
    let env = ProcEnv::new(&db.url(), AMQP_URL, &unique("schemas-pg"));
    let a = ProcApp::spawn(&env, &root.path().join("a.log")).await;
    let b = ProcApp::spawn(&env, &root.path().join("b.log")).await;

    let r = put(
        &a,
        "/v1/schemas/parcel.lost/v1",
        &closed(&["parcel_id"], &["parcel_id"]),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201, "{}", a.log_tail(20));
    let seen = until_accepted(
        &b,
        "parcel.lost",
        "v1",
        json!({"parcel_id": "p-1"}),
        Duration::from_secs(10),
    )
    .await;
    // Instances on one database share one registry: B refuses what A's mode refuses.
    let r = put(
        &b,
        "/v1/schemas/parcel.lost/v2",
        &closed(&["parcel_id", "why"], &["parcel_id", "why"]),
    )
    .await;
    assert_problem(r, 422, "incompatible-schema").await;
    let r = put(&b, "/v1/schemas/parcel.lost/v1/deprecate", &json!({})).await;
    assert_eq!(r.status().as_u16(), 405, "deprecate is a POST");
    assert_eq!(
        post(&b, "/v1/schemas/parcel.lost/v1/deprecate")
            .await
            .status()
            .as_u16(),
        200
    );
    let started = Instant::now();
    let deprecated_on_a = loop {
        let r = a
            .post_event(&Event::new(
                "parcel.lost",
                "v1",
                json!({"parcel_id": "p-2"}),
            ))
            .await;
        assert_eq!(r.status().as_u16(), 202);
        if header(&r, "deprecation").is_some() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never saw the deprecation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "[schemas] PostgreSQL, two instances: a registration on A validated on B after {:.2} s; \
         a deprecation on B reached A's answers after {:.2} s",
        seen.as_secs_f64(),
        deprecated_on_a.as_secs_f64()
    );
    assert!(
        seen < Duration::from_secs(2),
        "B saw A's registration after {seen:?}"
    );
    assert!(
        deprecated_on_a < Duration::from_secs(2),
        "A saw B's deprecation after {deprecated_on_a:?}"
    );
}
