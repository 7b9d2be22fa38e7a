//! One test (at least) per row of DESIGN.md's status-code table, against a real SQLite outbox
//! (PostgreSQL for the 503), asserting the status, the problem type and the fields that matter.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Backend, Event, SqliteLock, TestApp, TestQueue, assert_problem, batch, gzip, header, pg_admin,
    pg_terminate, pointers,
};

/// `order.paid` for `order` with this id and source, as a native envelope.
fn paid(id: &str, source: &str, order: &str) -> Value {
    Event::order_paid(order).id(id).source(source).json()
}

/// A structured CloudEvent (`order.paid.v1`).
fn cloudevent(id: &str, source: &str) -> Value {
    Event::order_paid("o-ce")
        .amount(3)
        .id(id)
        .source(source)
        .cloudevent()
}

/// The shortest native envelope: type, version and data.
fn order_paid(order: &str) -> Value {
    Event::order_paid(order).json()
}

// ---------------------------------------------------------------------------------------------
// 202

#[tokio::test]
async fn native_event_is_accepted_with_location_and_readable() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    // A bound queue keeps the event routable, so it is pending or published, never dead.
    let _q = TestQueue::bind(&app.exchange, "#").await;
    let resp = app.post_json(&order_paid("o-1")).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(header(&resp, "idempotent-replayed"), None);
    let location = header(&resp, "location").expect("Location header");
    let body: Value = resp.json().await.unwrap();
    let id = body["id"].as_str().expect("id").to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "assigned id is a UUID: {id}"
    );
    assert_eq!(location, format!("/v1/events/{id}"));
    assert_eq!(body["location"], location.as_str());
    assert_eq!(body["source"], "postbox");

    let (code, ev) = app.get_json(&location).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["id"], id.as_str());
    assert!(
        ev["status"] == "pending" || ev["status"] == "published",
        "{ev}"
    );
    assert_eq!(ev["type"], "order.paid");
    assert_eq!(ev["version"], "v1");
    assert_eq!(ev["routing_key"], "events.order.paid.v1");
    assert_eq!(ev["event"]["data"], order_paid("o-1")["data"]);
}

#[tokio::test]
async fn structured_cloudevent_is_accepted() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let resp = app
        .post(
            "application/cloudevents+json",
            cloudevent("ce-1", "/shop/checkout").to_string(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let location = header(&resp, "location").expect("Location");
    assert_eq!(location, "/v1/events/ce-1?source=%2Fshop%2Fcheckout");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "ce-1");
    assert_eq!(body["source"], "/shop/checkout");
    let (code, ev) = app.get_json(&location).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["type"], "order.paid");
    assert_eq!(ev["version"], "v1");
    assert_eq!(ev["routing_key"], "events.order.paid.v1");
    assert_eq!(ev["event"]["type"], "order.paid.v1");
}

#[tokio::test]
async fn binary_mode_cloudevent_is_accepted() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let data = Event::order_paid("o-bin")
        .amount(7.25)
        .data_field("currency", "USD")
        .data_value()
        .clone();
    let resp = app
        .post_with(
            "application/json",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "bin-1"),
                ("ce-source", "/shop/binary"),
                ("ce-type", "order.paid.v1"),
                ("ce-subject", "order-o-bin"),
            ],
            data.to_string(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let location = header(&resp, "location").expect("Location");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "bin-1");
    assert_eq!(body["source"], "/shop/binary");
    let (code, ev) = app.get_json(&location).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["type"], "order.paid");
    assert_eq!(ev["version"], "v1");
    assert_eq!(ev["subject"], "order-o-bin");
    assert_eq!(ev["event"]["data"], data, "the body is the data");
}

#[tokio::test]
async fn cloudevents_batch_is_accepted_in_order() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let batch = json!([
        cloudevent("b-1", "/shop/checkout"),
        Event::user_signed_up("u-1")
            .id("b-2")
            .source("/shop/accounts")
            .cloudevent()
    ]);
    let resp = app
        .post("application/cloudevents-batch+json", batch.to_string())
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let events = body["events"].as_array().expect("events array");
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(events[0]["id"], "b-1");
    assert_eq!(events[0]["source"], "/shop/checkout");
    assert_eq!(events[1]["id"], "b-2");
    assert_eq!(events[1]["source"], "/shop/accounts");
    let (code, ev) = app.get_json(events[1]["location"].as_str().unwrap()).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["type"], "user.signed_up");
    assert_eq!(ev["routing_key"], "events.user.signed_up.v1");
}

#[tokio::test]
async fn json_array_of_native_events_is_a_batch() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let batch = batch([
        Event::order_paid("o-a"),
        Event::user_signed_up("u-2").data_field("email", "bob@example.com"),
        Event::order_paid("o-c"),
    ]);
    let resp = app.post_json(&batch).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        header(&resp, "location"),
        None,
        "a batch has no single Location"
    );
    let body: Value = resp.json().await.unwrap();
    let events = body["events"].as_array().expect("events array");
    assert_eq!(events.len(), 3, "{body}");
    let types: Vec<Value> = futures_util::future::join_all(events.iter().map(|e| async {
        let (code, ev) = app.get_json(e["location"].as_str().unwrap()).await;
        assert_eq!(code, 200, "{ev}");
        assert_eq!(ev["id"], e["id"]);
        ev["type"].clone()
    }))
    .await;
    assert_eq!(
        types,
        vec![
            json!("order.paid"),
            json!("user.signed_up"),
            json!("order.paid")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Idempotency: 202 replay, 422 reuse

#[tokio::test]
async fn same_source_and_id_is_replayed() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let event = paid("pay-1", "/shop/checkout", "o-1");
    let first = app.post_json(&event).await;
    assert_eq!(first.status().as_u16(), 202);
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let first: Value = first.json().await.unwrap();

    // Same content, keys in another order: still the same event.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"data":{},"source":"/shop/checkout","id":"pay-1","version":"v1","type":"order.paid"}}"#,
        event["data"]
    ))
    .unwrap();
    let second = app.post_json(&reordered).await;
    assert_eq!(second.status().as_u16(), 202);
    assert_eq!(
        header(&second, "idempotent-replayed").as_deref(),
        Some("true")
    );
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(second["id"], "pay-1");

    let changed = paid("pay-1", "/shop/checkout", "o-2");
    let p = assert_problem(app.post_json(&changed).await, 422, "idempotency-key-reused").await;
    assert!(
        p["detail"].as_str().unwrap().contains("pay-1"),
        "detail names the id: {p}"
    );
    // The same id from another source is another event.
    let other = app.post_json(&paid("pay-1", "/shop/other", "o-2")).await;
    assert_eq!(other.status().as_u16(), 202);
    assert_eq!(header(&other, "idempotent-replayed"), None);
}

#[tokio::test]
async fn batch_reusing_an_id_stores_none_of_its_events() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let first = app.post_json(&paid("pay-b", "/shop/checkout", "o-1")).await;
    assert_eq!(first.status().as_u16(), 202);
    // A batch with a new event and the old id with other content: all or nothing.
    let batch = json!([
        paid("pay-new", "/shop/checkout", "o-9"),
        paid("pay-b", "/shop/checkout", "o-2")
    ]);
    assert_problem(app.post_json(&batch).await, 422, "idempotency-key-reused").await;
    let (code, _) = app
        .get_json("/v1/events/pay-new?source=%2Fshop%2Fcheckout")
        .await;
    assert_eq!(
        code, 404,
        "the new event of the rejected batch was not stored"
    );
    // A batch mixing a replay (same content) and a new event stores the new one only.
    let batch = json!([
        paid("pay-b", "/shop/checkout", "o-1"),
        paid("pay-new", "/shop/checkout", "o-9")
    ]);
    let resp = app.post_json(&batch).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(header(&resp, "idempotent-replayed"), None);
    let (code, body) = app
        .get_json("/v1/events/pay-new?source=%2Fshop%2Fcheckout")
        .await;
    assert_eq!(code, 200, "{body}");
    // The same batch again is a full replay.
    let resp = app.post_json(&batch).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        header(&resp, "idempotent-replayed").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn idempotency_key_header_is_replayed() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let key = [("idempotency-key", "checkout-42")];
    let body = order_paid("o-42").to_string();
    let first = app.post_with("application/json", &key, body.clone()).await;
    assert_eq!(first.status().as_u16(), 202);
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let loc1 = header(&first, "location");
    let first: Value = first.json().await.unwrap();

    let second = app.post_with("application/json", &key, body).await;
    assert_eq!(second.status().as_u16(), 202);
    assert_eq!(
        header(&second, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(header(&second, "location"), loc1);
    let second: Value = second.json().await.unwrap();
    assert_eq!(
        second["id"], first["id"],
        "the replay answers the id assigned the first time"
    );

    let p = assert_problem(
        app.post_with("application/json", &key, order_paid("o-43").to_string())
            .await,
        422,
        "idempotency-key-reused",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("checkout-42"), "{p}");
}

// ---------------------------------------------------------------------------------------------
// 409

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_while_first_is_committing_is_409() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    // Hold SQLite's write lock, so postbox's writer waits (busy timeout 5 s) inside its commit.
    // (Regression: with a deferred BEGIN, A's key lookup made it fail at once with SQLITE_BUSY.)
    let locker = SqliteLock::hold(&app.database_url, "immediate").await;

    let key = [("idempotency-key", "order-7-payment")];
    let body = order_paid("o-7").to_string();
    let a = {
        let client = app.client.clone();
        let url = app.url("/v1/events");
        let body = body.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "order-7-payment")
                .body(body)
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    if a.is_finished() {
        let r = a.await.unwrap();
        panic!(
            "A must still be waiting for its commit, but answered {} {}",
            r.status(),
            r.text().await.unwrap()
        );
    }

    let b = app.post_with("application/json", &key, body.clone()).await;
    let retry_after = header(&b, "retry-after");
    assert_problem(b, 409, "request-in-progress").await;
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(retry_after >= 1);
    assert!(
        !a.is_finished(),
        "A is still in its commit when B is refused"
    );

    locker.release().await;
    let a = tokio::time::timeout(Duration::from_secs(8), a)
        .await
        .expect("A answers once the lock is gone")
        .unwrap();
    assert_eq!(a.status().as_u16(), 202);
    let a_id = a.json::<Value>().await.unwrap()["id"].clone();

    // Now the key is committed: the same request is a replay.
    let c = app.post_with("application/json", &key, body).await;
    assert_eq!(c.status().as_u16(), 202);
    assert_eq!(header(&c, "idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(c.json::<Value>().await.unwrap()["id"], a_id);
}

// ---------------------------------------------------------------------------------------------
// 400

#[tokio::test]
async fn malformed_envelopes_are_400_with_pointers() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let p = assert_problem(
        app.post("application/json", r#"{"type": "order.paid", "#)
            .await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), vec![""]);
    assert!(
        p["detail"].as_str().unwrap().contains("malformed JSON"),
        "{p}"
    );

    let p = assert_problem(
        app.post_event(&Event::order_paid("").data(json!({})).without("version"))
            .await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), vec!["/version"]);

    let unknown_field = Event::order_paid("o-1").field("sujbect", "typo");
    let p = assert_problem(app.post_event(&unknown_field).await, 400, "invalid-request").await;
    assert!(p["detail"].as_str().unwrap().contains("sujbect"), "{p}");

    let p = assert_problem(
        app.post("application/json", "").await,
        400,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("empty"), "{p}");

    let p = assert_problem(
        app.post("application/json", "[]").await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), vec![""]);

    let p = assert_problem(
        app.post_with(
            "application/json",
            &[("idempotency-key", "")],
            order_paid("o-1").to_string(),
        )
        .await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), vec!["header:idempotency-key"]);
}

#[tokio::test]
async fn binary_mode_without_ce_id_is_400() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let p = assert_problem(
        app.post_with(
            "application/json",
            &[
                ("ce-specversion", "1.0"),
                ("ce-source", "/shop/binary"),
                ("ce-type", "order.paid.v1"),
            ],
            Event::order_paid("o-1").amount(1).data_value().to_string(),
        )
        .await,
        400,
        "invalid-request",
    )
    .await;
    assert_eq!(pointers(&p), vec!["header:ce-id"]);
}

#[tokio::test]
async fn batch_envelope_errors_point_at_their_item() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let batch = json!([
        paid("keep-0", "/shop/batch", "o-0"),
        Event::order_paid("")
            .data(json!({}))
            .without("version")
            .json(),
        Event::order_paid("")
            .data(json!({}))
            .source("/s")
            .cloudevent(),
    ]);
    let p = assert_problem(app.post_json(&batch).await, 400, "invalid-request").await;
    assert_eq!(pointers(&p), vec!["/1/version", "/2/id"]);
    // Nothing of the batch was stored.
    let (code, _) = app
        .get_json("/v1/events/keep-0?source=%2Fshop%2Fbatch")
        .await;
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------------
// 422

#[tokio::test]
async fn unknown_type_or_version_is_422_naming_versions() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let e = Event::order_paid("o-1").version("v9");
    let p = assert_problem(app.post_event(&e).await, 422, "unknown-schema").await;
    assert_eq!(p["available_versions"], json!(["v1", "v2"]));
    assert_eq!(pointers(&p), vec!["/version"]);
    assert!(p["detail"].as_str().unwrap().contains("v9"), "{p}");

    let e = Event::order_paid("o-1").ty("order.refunded");
    let p = assert_problem(app.post_event(&e).await, 422, "unknown-schema").await;
    assert_eq!(p["available_versions"], json!([]));
    assert_eq!(pointers(&p), vec!["/type"]);
}

#[tokio::test]
async fn schema_violations_are_422_listing_every_error() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let e = Event::order_paid("o-1").amount(-5).data_without("currency");
    let p = assert_problem(app.post_event(&e).await, 422, "schema-violation").await;
    let mut got = pointers(&p);
    got.sort();
    assert_eq!(got, vec!["/data", "/data/amount"], "{p}");
    let errors = p["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["pointer"] == "/data" && e["message"].as_str().unwrap().contains("currency")),
        "the missing field is named: {p}"
    );
}

#[tokio::test]
async fn batch_schema_violation_stores_nothing() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let batch = json!([
        paid("keep-1", "/shop/batch", "o-1"),
        Event::order_paid("o-2")
            .id("bad-1")
            .source("/shop/batch")
            .amount("ten")
            .json(),
        Event::order_paid("o-3")
            .amount(1)
            .data_field("currency", "euro")
            .json(),
    ]);
    let p = assert_problem(app.post_json(&batch).await, 422, "schema-violation").await;
    assert_eq!(
        pointers(&p),
        vec!["/1/data/amount", "/2/data/currency"],
        "{p}"
    );
    let (code, body) = app
        .get_json("/v1/events/keep-1?source=%2Fshop%2Fbatch")
        .await;
    assert_eq!(code, 404, "the valid item was not stored either: {body}");
    // Once fixed, the same batch goes through: nothing half-stored blocks it.
    let mut fixed = batch.clone();
    fixed[1]["data"]["amount"] = json!(10);
    fixed[2]["data"]["currency"] = json!("EUR");
    let resp = app.post_json(&fixed).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(header(&resp, "idempotent-replayed"), None);
}

// ---------------------------------------------------------------------------------------------
// 415

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let body = order_paid("o-1").to_string();
    let p = assert_problem(
        app.post("text/plain", body.clone()).await,
        415,
        "unsupported-media-type",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("text/plain"), "{p}");
    let p = assert_problem(
        app.post_with("", &[], body).await,
        415,
        "unsupported-media-type",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("missing"), "{p}");
}

// ---------------------------------------------------------------------------------------------
// 413

#[tokio::test]
async fn body_over_the_limit_is_413_also_after_decompression() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.max_body_bytes = Some(1024)).await;
    let big = Event::order_paid(&"x".repeat(2000)).amount(1).body();
    let p = assert_problem(
        app.post("application/json", big.clone()).await,
        413,
        "payload-too-large",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("1024"), "{p}");

    // Small on the wire, large once inflated.
    let bomb = gzip(big.as_bytes());
    assert!(bomb.len() < 1024, "compressed body is under the limit");
    assert_problem(
        app.post_with("application/json", &[("content-encoding", "gzip")], bomb)
            .await,
        413,
        "payload-too-large",
    )
    .await;

    // A gzip body that fits is read normally.
    let small = gzip(order_paid("o-gz").to_string().as_bytes());
    let resp = app
        .post_with("application/json", &[("content-encoding", "gzip")], small)
        .await;
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn batch_over_max_events_is_413() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.max_batch_events = Some(2)).await;
    let three = json!([order_paid("o-1"), order_paid("o-2"), order_paid("o-3")]);
    let p = assert_problem(app.post_json(&three).await, 413, "payload-too-large").await;
    assert!(p["detail"].as_str().unwrap().contains('3'), "{p}");
    let two = json!([order_paid("o-1"), order_paid("o-2")]);
    assert_eq!(app.post_json(&two).await.status().as_u16(), 202);
}

// ---------------------------------------------------------------------------------------------
// 404 and the schema endpoints

#[tokio::test]
async fn unknown_event_and_route_are_404() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let resp = app
        .client
        .get(app.url("/v1/events/nope"))
        .send()
        .await
        .unwrap();
    let p = assert_problem(resp, 404, "not-found").await;
    assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
    let resp = app.client.get(app.url("/v1/nowhere")).send().await.unwrap();
    assert_problem(resp, 404, "not-found").await;
}

#[tokio::test]
async fn schemas_are_listed_and_served() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (code, list) = app.get_json("/v1/schemas").await;
    assert_eq!(code, 200);
    assert_eq!(
        list,
        json!({"schemas": [
            {"type": "order.paid", "versions": ["v1", "v2"], "compatibility": "BACKWARD"},
            {"type": "user.signed_up", "versions": ["v1"], "compatibility": "BACKWARD"},
        ]})
    );

    let resp = app
        .client
        .get(app.url("/v1/schemas/order.paid/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/schema+json")
    );
    let served: Value = resp.json().await.unwrap();
    let on_disk: Value =
        serde_json::from_str(include_str!("../../schemas/order.paid/v1.json")).unwrap();
    assert_eq!(served, on_disk);

    let resp = app
        .client
        .get(app.url("/v1/schemas/order.paid/v9"))
        .send()
        .await
        .unwrap();
    let p = assert_problem(resp, 404, "not-found").await;
    assert!(p["detail"].as_str().unwrap().contains("v1, v2"), "{p}");
}

// ---------------------------------------------------------------------------------------------
// 503

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_outbox_is_503_never_202_and_recovers() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let db = app.database_url.rsplit('/').next().unwrap().to_owned();
    assert!(db.starts_with("postbox_test_"), "{db}");
    let event = paid("outage-1", "/shop/outage", "o-1");

    // Warm up: the pool has live connections that are about to be cut.
    assert_eq!(
        app.post_json(&order_paid("o-0")).await.status().as_u16(),
        202
    );

    pg_admin(format!("alter database {db} allow_connections false")).await;
    pg_terminate(&db, None).await;

    let resp = tokio::time::timeout(Duration::from_secs(15), app.post_json(&event))
        .await
        .expect("postbox answers while the database is away");
    let retry_after = header(&resp, "retry-after");
    let p = assert_problem(resp, 503, "outbox-unavailable").await;
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(retry_after >= 1);
    assert!(
        p["detail"].as_str().unwrap().contains("nothing was stored"),
        "{p}"
    );

    pg_admin(format!("alter database {db} allow_connections true")).await;

    // Same process, no restart: the next POST is stored, and it is new (the 503 stored nothing).
    let resp = app.post_json(&event).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        header(&resp, "idempotent-replayed"),
        None,
        "the event answered 503 must not have been stored"
    );
    let (code, ev) = app
        .get_json("/v1/events/outage-1?source=%2Fshop%2Foutage")
        .await;
    assert_eq!(code, 200, "{ev}");
}

// ---------------------------------------------------------------------------------------------
// Operations

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (code, health) = app.get_json("/healthz").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "ok");

    let (code, ready) = app.get_json("/readyz").await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["outbox"]["reachable"], true);
    assert_eq!(ready["outbox"]["backend"], "sqlite");
    assert_eq!(ready["schemas"], 3);
    assert!(ready["broker"]["state"].is_string(), "{ready}");

    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        header(&resp, "content-type")
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("postbox_http_requests_total"), "{text}");
}
