//! Hostile input and slow clients: every case answers a precise 4xx (or 503 for the limits)
//! problem document, quickly, and never a 5xx, a panic or a hang.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{Backend, Event, TestApp, assert_problem, batch, gzip, header, pointers};

/// Every hostile request must be answered within this.
const QUICK: Duration = Duration::from_secs(10);

async fn quick<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(QUICK, f)
        .await
        .expect("postbox answered within the deadline")
}

/// A `user.signed_up` envelope with this `data`.
fn signed_up(data: Value) -> Value {
    Event::new("user.signed_up", "v1", data).json()
}

/// Write `head` then `body` on a raw connection, then stall; return everything the server sent
/// until it closed the connection, and how long that took.
async fn stall_after(app: &TestApp, head: &str, body: &[u8], wait: Duration) -> (String, Duration) {
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(app.addr()).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    s.flush().await.expect("flush");
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "server kept a stalled connection open for {wait:?}; got so far: {}",
        String::from_utf8_lossy(&got)
    );
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

fn post_head(content_length: usize) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nhost: postbox\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Size

#[tokio::test]
async fn oversized_bodies_and_batches_are_413() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.max_body_bytes = Some(4096);
        s.max_batch_events = Some(3);
    })
    .await;
    let big = signed_up(json!({"user_id": "u", "email": "a@example.com", "pad": "x".repeat(5000)}));
    let p = assert_problem(quick(app.post_json(&big)).await, 413, "payload-too-large").await;
    assert!(p["detail"].as_str().unwrap_or("").contains("4096"), "{p}");

    let four = batch(vec![Event::order_paid("o"); 4]);
    let p = assert_problem(quick(app.post_json(&four)).await, 413, "payload-too-large").await;
    assert!(p["detail"].as_str().unwrap_or("").contains('3'), "{p}");
}

#[tokio::test]
async fn gzip_bomb_is_413_without_inflating_it() {
    // 10 MB of zeros compress to ~10 KB; the 1 MiB default limit stops the inflation early.
    let app = TestApp::spawn(Backend::Sqlite).await;
    let bomb = gzip(&vec![b'0'; 10 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let started = std::time::Instant::now();
    let resp = quick(app.post_with(
        "application/json",
        &[("content-encoding", "gzip")],
        bomb.clone(),
    ))
    .await;
    assert_problem(resp, 413, "payload-too-large").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // A bomb whose prefix is a valid-looking event is cut off the same way.
    let mut sneaky = br#"{"type":"order.paid","version":"v1","data":{"order_id":""#.to_vec();
    sneaky.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    let resp = quick(app.post_with(
        "application/json",
        &[("content-encoding", "gzip")],
        gzip(&sneaky),
    ))
    .await;
    assert_problem(resp, 413, "payload-too-large").await;
    // Garbage that claims to be gzip is a 400, not a 5xx.
    let resp = quick(app.post_with(
        "application/json",
        &[("content-encoding", "gzip")],
        b"not gzip at all".to_vec(),
    ))
    .await;
    assert_problem(resp, 400, "invalid-request").await;
}

// ---------------------------------------------------------------------------------------------
// Malformed JSON

#[tokio::test]
async fn deep_nesting_invalid_utf8_and_empty_bodies_are_400() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let deep = "[".repeat(100_000);
    let p = assert_problem(
        quick(app.post("application/json", deep)).await,
        400,
        "invalid-request",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap_or("").contains("recursion"),
        "{p}"
    );
    let deep_data = format!(
        r#"{{"type":"user.signed_up","version":"v1","data":{{"user_id":"u","email":"a@example.com","x":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_problem(
        quick(app.post("application/json", deep_data)).await,
        400,
        "invalid-request",
    )
    .await;
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
    assert_problem(
        quick(app.post("application/cloudevents+json", deep_objects)).await,
        400,
        "invalid-request",
    )
    .await;

    // Invalid UTF-8: raw bytes, and inside a string.
    let mut bad = br#"{"type":"order.paid","version":"v1","data":{"order_id":""#.to_vec();
    bad.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad.extend_from_slice(br#"","amount":1,"currency":"EUR"}}"#);
    assert_problem(
        quick(app.post("application/json", bad)).await,
        400,
        "invalid-request",
    )
    .await;
    assert_problem(
        quick(app.post("application/json", vec![0xffu8, 0x00, 0x80])).await,
        400,
        "invalid-request",
    )
    .await;
    // A lone UTF-16 surrogate escape is not a Unicode scalar value.
    let lone = r#"{"type":"user.signed_up","version":"v1","data":{"user_id":"\ud800","email":"a@example.com"}}"#;
    assert_problem(
        quick(app.post("application/json", lone)).await,
        400,
        "invalid-request",
    )
    .await;
    // A raw (unescaped) control character in a JSON string is malformed JSON.
    let raw_nul = "{\"type\":\"user.signed_up\",\"version\":\"v1\",\"data\":{\"user_id\":\"a\u{0}b\",\"email\":\"a@example.com\"}}";
    assert_problem(
        quick(app.post("application/json", raw_nul)).await,
        400,
        "invalid-request",
    )
    .await;

    for ct in [
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
    ] {
        let p = assert_problem(quick(app.post(ct, "")).await, 400, "invalid-request").await;
        assert_eq!(pointers(&p), vec![""], "{ct}: {p}");
    }
    for junk in ["null", "42", "\"x\"", "[]", "{} {}", "{", "\u{feff}{}"] {
        assert_problem(
            quick(app.post("application/json", junk)).await,
            400,
            "invalid-request",
        )
        .await;
    }
}

#[tokio::test]
async fn huge_numbers_out_of_range_are_400_big_integers_become_doubles() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let body = r#"{"type":"user.signed_up","version":"v1","data":{"user_id":"u","email":"a@example.com","n":1e400}}"#;
    let p = assert_problem(
        quick(app.post("application/json", body)).await,
        400,
        "invalid-request",
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("number out of range"),
        "{p}"
    );
    let body = r#"{"type":"user.signed_up","version":"v1","data":{"user_id":"u","email":"a@example.com","n":-1e400}}"#;
    assert_problem(
        quick(app.post("application/json", body)).await,
        400,
        "invalid-request",
    )
    .await;

    // 2^70: beyond 64-bit integers, kept as the nearest IEEE-754 double (documented).
    let body = r#"{"type":"user.signed_up","version":"v1","data":{"user_id":"u","email":"a@example.com","n":1180591620717411303424,"m":18446744073709551615}}"#;
    let resp = quick(app.post("application/json", body)).await;
    assert_eq!(resp.status().as_u16(), 202);
    let location = header(&resp, "location").expect("location");
    let (code, ev) = app.get_json(&location).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(
        ev["event"]["data"]["n"].as_f64(),
        Some(1_180_591_620_717_411_303_424f64)
    );
    assert_eq!(ev["event"]["data"]["m"].as_u64(), Some(u64::MAX));
}

#[tokio::test]
async fn duplicate_keys_are_400_with_the_pointer_of_the_second() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cases = [
        (
            "application/json",
            r#"{"type":"order.paid","version":"v1","type":"user.signed_up","data":{}}"#,
            "/type",
        ),
        (
            "application/json",
            r#"{"type":"order.paid","version":"v1","data":{"order_id":"o","amount":-1,"amount":1,"currency":"EUR"}}"#,
            "/data/amount",
        ),
        (
            "application/cloudevents-batch+json",
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"order.paid.v1","data":{}},
                {"specversion":"1.0","id":"2","id":"3","source":"/s","type":"order.paid.v1","data":{}}]"#,
            "/1/id",
        ),
    ];
    for (ct, body, ptr) in cases {
        let p = assert_problem(quick(app.post(ct, body)).await, 400, "invalid-request").await;
        assert_eq!(pointers(&p), vec![ptr], "{body}: {p}");
        assert!(
            p["detail"].as_str().unwrap_or("").contains("duplicate key"),
            "{p}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Content types and binary-mode headers

#[tokio::test]
async fn wrong_content_types_are_415() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let body = Event::order_paid("o-ct").body();
    for ct in [
        "",
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/cloudevents+xml",
        "*/*",
    ] {
        let resp = quick(app.post_with(ct, &[], body.clone())).await;
        assert_problem(resp, 415, "unsupported-media-type").await;
    }
    // Binary mode must carry JSON data.
    let resp = quick(app.post_with(
        "text/plain",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "order.paid.v1"),
        ],
        "hi",
    ))
    .await;
    assert_problem(resp, 415, "unsupported-media-type").await;
}

#[tokio::test]
async fn missing_or_garbled_binary_headers_are_400_pointing_at_the_header() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let data = Event::order_paid("o-b").amount(1).data_value().to_string();
    let good = [
        ("ce-specversion", "1.0"),
        ("ce-id", "b-1"),
        ("ce-source", "/s"),
        ("ce-type", "order.paid.v1"),
    ];
    let with = |name: &'static str, value: Option<&'static str>| {
        let mut h: Vec<(&str, &str)> = good.iter().filter(|(n, _)| *n != name).copied().collect();
        if let Some(v) = value {
            h.push((name, v));
        }
        h
    };
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (with("ce-specversion", Some("2.0")), "header:ce-specversion"),
        (with("ce-id", None), "header:ce-id"),
        (with("ce-source", None), "header:ce-source"),
        (with("ce-type", None), "header:ce-type"),
        (with("ce-source", Some("%zz")), "header:ce-source"),
        (with("ce-source", Some("%+1")), "header:ce-source"),
        (with("ce-source", Some("%00")), "header:ce-source"),
        (with("ce-source", Some("%ff%fe")), "header:ce-source"),
        (with("ce-type", Some("order.*.v1")), "header:ce-type"),
        (with("ce-type", Some("order.#")), "header:ce-type"),
        (with("ce-id", Some("..")), "header:ce-id"),
        (with("ce-id", Some("a%2Fb")), "header:ce-id"),
        (with("ce-subject", Some("a%0Ab")), "header:ce-subject"),
        (
            with("ce-partitionkey", Some("%1b[2J")),
            "header:ce-partitionkey",
        ),
        (with("ce-bad*name", Some("x")), "header:ce-bad*name"),
        (with("ce-traceinfo", Some("%07bell")), "header:ce-traceinfo"),
    ];
    for (headers, ptr) in cases {
        let resp = quick(app.post_with("application/json", &headers, data.clone())).await;
        let p = assert_problem(resp, 400, "invalid-request").await;
        assert_eq!(pointers(&p), vec![ptr], "{headers:?}: {p}");
    }
    // A header value that is not visible ASCII (obs-text bytes).
    let resp = quick(
        app.client
            .post(app.url("/v1/events"))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "b-2")
            .header("ce-type", "order.paid.v1")
            .header(
                "ce-source",
                reqwest::header::HeaderValue::from_bytes(b"/s\xff").expect("obs-text"),
            )
            .body(data.clone())
            .send(),
    )
    .await
    .expect("request");
    let p = assert_problem(resp, 400, "invalid-request").await;
    assert_eq!(pointers(&p), vec!["header:ce-source"], "{p}");
}

// ---------------------------------------------------------------------------------------------
// Envelope strings

#[tokio::test]
async fn wildcards_dot_segments_slashes_and_long_strings_are_400_with_pointers() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let native = |field: &str, value: Value| Event::order_paid("o-w").field(field, value).json();
    let long = |n: usize| Value::String("a".repeat(n));
    let cases = vec![
        (native("type", json!("order.*")), "/type"),
        (native("type", json!("order.#")), "/type"),
        (native("type", json!("#")), "/type"),
        (native("type", json!("order..paid")), "/type"),
        (native("type", json!("../order.paid")), "/type"),
        (native("type", json!("order/paid")), "/type"),
        (native("type", json!("order.paid ")), "/type"),
        (native("type", json!("ordér.paid")), "/type"),
        (native("type", long(129)), "/type"),
        (native("type", json!(42)), "/type"),
        (native("version", json!("v*")), "/version"),
        (native("version", json!("v1.#")), "/version"),
        (native("version", json!("../v1")), "/version"),
        (native("version", json!("v1234567")), "/version"),
        (native("id", json!("a*b")), "/id"),
        (native("id", json!("a#b")), "/id"),
        (native("id", json!("..")), "/id"),
        (native("id", json!(".")), "/id"),
        (native("id", json!("a/b")), "/id"),
        (native("id", json!("a b")), "/id"),
        (native("id", json!("")), "/id"),
        (native("id", long(129)), "/id"),
        (native("source", long(257)), "/source"),
        (native("source", json!("")), "/source"),
        (native("key", long(257)), "/key"),
        (native("subject", long(257)), "/subject"),
        (native("time", json!("yesterday")), "/time"),
        (native("extra", json!("x")), ""),
    ];
    for (body, ptr) in cases {
        let p = assert_problem(quick(app.post_json(&body)).await, 400, "invalid-request").await;
        assert_eq!(pointers(&p), vec![ptr], "{body}: {p}");
    }

    let ce = |field: &str, value: Value| {
        let mut e = Event::order_paid("o")
            .amount(1)
            .id("c-1")
            .source("/s")
            .cloudevent();
        e[field] = value;
        e
    };
    let cases = vec![
        (ce("type", json!("order.*.v1")), "/type"),
        (ce("type", json!("order.paid.v1.#")), "/type"),
        (ce("Bad*Name", json!("x")), "/Bad*Name"),
        (ce("a#", json!("x")), "/a#"),
        (ce("a/b", json!("x")), "/a~1b"),
        (ce("a~b", json!("x")), "/a~0b"),
        (ce("x..y", json!("x")), "/x..y"),
        (
            ce(&"e".repeat(21), json!("x")),
            &*Box::leak(format!("/{}", "e".repeat(21)).into_boxed_str()),
        ),
        (ce("myext", long(1025)), "/myext"),
        (ce("myext", json!("a\u{0}b")), "/myext"),
        (ce("myext", json!({"nested": 1})), "/myext"),
        (ce("partitionkey", long(257)), "/partitionkey"),
        (
            ce(
                "dataschema",
                json!("http://x/v1/schemas/order.paid/v1\u{0}"),
            ),
            "/dataschema",
        ),
        (
            ce("datacontenttype", json!("text/plain")),
            "/datacontenttype",
        ),
        (ce("data_base64", json!("AAAA")), "/data_base64"),
        (ce("specversion", json!("0.3")), "/specversion"),
    ];
    for (body, ptr) in cases {
        let resp = quick(app.post("application/cloudevents+json", body.to_string())).await;
        let p = assert_problem(resp, 400, "invalid-request").await;
        assert_eq!(pointers(&p), vec![ptr], "{body}: {p}");
    }
    // Too many extension attributes (each becomes an AMQP header).
    let mut many = ce("type", json!("order.paid.v1"));
    for i in 0..33 {
        many[format!("ext{i}")] = json!("x");
    }
    let resp = quick(app.post("application/cloudevents+json", many.to_string())).await;
    assert_problem(resp, 400, "invalid-request").await;
}

#[tokio::test]
async fn control_characters_are_refused_in_envelope_strings_but_kept_in_data() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for field in ["source", "subject", "key"] {
        for bad in [
            "a\u{0}b",
            "\u{1b}[2J",
            "line\nbreak",
            "tab\there",
            "\u{7f}",
            "\u{85}",
        ] {
            let e = Event::order_paid("o-c").field(field, bad);
            let p = assert_problem(quick(app.post_event(&e)).await, 400, "invalid-request").await;
            assert_eq!(pointers(&p), vec![format!("/{field}")], "{}: {p}", e.body());
        }
    }
    let data =
        json!({"user_id": "nul\u{0}inside", "email": "a@example.com", "bell": "\u{7}\u{1b}[31m"});
    let resp = quick(app.post_json(&signed_up(data.clone()))).await;
    assert_eq!(resp.status().as_u16(), 202);
    let location = header(&resp, "location").expect("location");
    let (code, ev) = app.get_json(&location).await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["event"]["data"], data);
}

async fn sql_ish_strings_are_stored_verbatim(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let nasty = [
        "'; drop table outbox; --",
        "\" or 1=1 --",
        "Robert'); DELETE FROM idempotency_keys;--",
        "\\'\\\"\\\\ %_ $1 ?",
        "Ω≈ç√ 🦀 עברית 日本語 \u{200b}\u{feff}",
        "<script>alert(1)</script> ${jndi:ldap://x}",
    ];
    for (i, s) in nasty.iter().enumerate() {
        let body = Event::user_signed_up(s)
            .data_field("email", "a@example.com")
            .data_field("note", json!({*s: [s]}))
            .id(&format!("sql-{i}"))
            .source(s)
            .subject(s)
            .key(s);
        let resp = quick(app.post_event(&body)).await;
        assert_eq!(resp.status().as_u16(), 202, "{}", body.body());
        let location = header(&resp, "location").expect("location");
        let (code, ev) = app.get_json(&location).await;
        assert_eq!(code, 200, "{location}: {ev}");
        assert_eq!(ev["source"], *s);
        assert_eq!(ev["subject"], *s);
        assert_eq!(ev["key"], *s);
        assert_eq!(ev["event"]["source"], *s);
        assert_eq!(ev["event"]["subject"], *s);
        assert_eq!(ev["event"]["partitionkey"], *s);
        assert_eq!(&ev["event"]["data"], body.data_value());
        // The same id under the same source is a replay, not a second row.
        let again = quick(app.post_event(&body)).await;
        assert_eq!(
            header(&again, "idempotent-replayed").as_deref(),
            Some("true")
        );
    }
    // The outbox is still there and answers.
    let (code, _) = app
        .get_json("/v1/events/sql-0?source=%27%3B+drop+table+outbox%3B+--")
        .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn sql_ish_strings_are_stored_verbatim_sqlite() {
    sql_ish_strings_are_stored_verbatim(Backend::Sqlite).await;
}

#[tokio::test]
async fn sql_ish_strings_are_stored_verbatim_postgres() {
    sql_ish_strings_are_stored_verbatim(Backend::Postgres).await;
}

#[tokio::test]
async fn hostile_idempotency_keys_are_400() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let body = Event::order_paid("o-k").body();
    let values: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_bytes(b"k\xff\xfe").expect("obs-text"),
        reqwest::header::HeaderValue::from_static("tab\tinside"),
        reqwest::header::HeaderValue::from_static("with space"),
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&"k".repeat(256)).expect("long"),
    ];
    for v in values {
        let resp = quick(
            app.client
                .post(app.url("/v1/events"))
                .header("content-type", "application/json")
                .header("idempotency-key", v.clone())
                .body(body.clone())
                .send(),
        )
        .await
        .expect("request");
        let p = assert_problem(resp, 400, "invalid-request").await;
        assert_eq!(pointers(&p), vec!["header:idempotency-key"], "{v:?}: {p}");
    }
}

#[tokio::test]
async fn hostile_paths_and_queries_on_get_are_4xx() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for path in [
        "/v1/events/%00",
        "/v1/events/'%3B%20drop%20table%20outbox%3B--",
        "/v1/events/x?source=%ff%fe",
        "/v1/events/x?source=%00",
        "/v1/events/%F0%9F%A6%80",
        "/v1/schemas/..%2F..%2Fetc/passwd",
        "/v1/schemas/order.paid/..%2Fv1",
        "/v1/schemas/order.paid/v1%00",
    ] {
        let (code, body) = quick(app.get_json(path)).await;
        assert!((400..500).contains(&code), "{path} answered {code}: {body}");
        assert!(body["type"].is_string(), "{path}: {body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients and limits

#[tokio::test]
async fn a_stalled_body_is_cut_off_with_408() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.body_timeout_ms = Some(500)).await;
    let (resp, took) =
        stall_after(&app, &post_head(100), b"{\"type\":", Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("/problems/body-timeout"), "{resp}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // A client trickling one byte at a time is cut off the same way.
    let started = tokio::time::Instant::now();
    let mut s = TcpStream::connect(app.addr()).await.expect("connect");
    s.write_all(post_head(1000).as_bytes()).await.expect("head");
    let mut answered = String::new();
    for _ in 0..100 {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 2048];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            answered.push_str(&String::from_utf8_lossy(&buf[..n]));
            break;
        }
    }
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn stalled_headers_are_cut_off() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.header_timeout_ms = Some(500)).await;
    let (resp, took) = stall_after(
        &app,
        "POST /v1/events HTTP/1.1\r\nhost: postbox\r\ncontent-ty",
        b"",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "{resp}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // An idle connection that never sends anything is closed too.
    let (resp, took) = stall_after(&app, "", b"", Duration::from_secs(5)).await;
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 408"),
        "{resp}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // So is an idle keep-alive connection after its first answer.
    let (resp, took) = stall_after(
        &app,
        "GET /healthz HTTP/1.1\r\nhost: postbox\r\n\r\n",
        b"",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn requests_beyond_max_in_flight_are_503_but_probes_pass() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.max_in_flight = Some(1);
        s.body_timeout_ms = Some(3000);
    })
    .await;
    // Holds the only slot: headers sent, body stalled.
    let mut hog = TcpStream::connect(app.addr()).await.expect("connect");
    hog.write_all(post_head(100).as_bytes())
        .await
        .expect("head");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = quick(app.post_event(&Event::order_paid("o-busy"))).await;
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
    assert_problem(resp, 503, "overloaded").await;
    let (code, _) = quick(app.get_json("/healthz")).await;
    assert_eq!(code, 200);
    // Once the hog is cut off, the slot is free again.
    let mut buf = Vec::new();
    let _ = quick(hog.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"));
    let resp = quick(app.post_event(&Event::order_paid("o-free"))).await;
    assert_eq!(resp.status().as_u16(), 202);
}

#[tokio::test]
async fn a_request_over_the_request_timeout_is_503_with_retry_after() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.request_timeout_ms = Some(300);
        s.body_timeout_ms = Some(5000);
    })
    .await;
    let (resp, took) = stall_after(&app, &post_head(100), b"{", Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1"),
        "{resp}"
    );
    assert!(resp.contains("/problems/request-timeout"), "{resp}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
