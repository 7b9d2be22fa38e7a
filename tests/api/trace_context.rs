//! W3C trace context end to end: the relay's publish is a child span of the request's
//! `traceparent` (the AMQP `traceparent` names the publish span), `tracestate` is passed on,
//! and with `otlp_endpoint` set the publish span is exported over OTLP/HTTP JSON to a
//! collector (here a tiny HTTP listener in the test).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, http::HeaderMap, routing::post};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::helpers::{Backend, Event, TestApp, TestQueue, header, header_str, message_id, unique};

const WAIT: Duration = Duration::from_secs(10);

/// Every OTLP request body the collector received, with its Content-Type.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A minimal OTLP/HTTP collector: `POST /v1/traces` stores the JSON body and answers 200.
async fn collector() -> (String, Received) {
    let got: Received = Arc::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        post({
            let got = got.clone();
            move |headers: HeaderMap, body: Bytes| async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().expect("collector").push((ct, json));
                "{}"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), got)
}

/// Every exported span (with its request's Content-Type).
fn spans(got: &Received) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (ct, body) in got.lock().expect("collector").iter() {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((ct.clone(), s.clone()));
                }
            }
        }
    }
    out
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test]
async fn publish_span_is_a_child_of_the_request_and_is_exported() {
    let (endpoint, got) = collector().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.otlp_endpoint = Some(endpoint.clone());
    })
    .await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let id = unique("traced");
    let event = Event::order_paid("o-1").amount(1).id(&id);
    let resp = app
        .post_with(
            "application/json",
            &[
                ("traceparent", traceparent.as_str()),
                ("tracestate", tracestate),
            ],
            event.body(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    assert!(header(&resp, "location").is_some());

    // An event without trace context: no trace headers, no exported span.
    let untraced = unique("untraced");
    app.accept(&Event::order_paid("o-2").amount(2).id(&untraced))
        .await;

    let messages = q.take(2, WAIT).await;
    let d = messages
        .iter()
        .find(|d| message_id(d) == id)
        .expect("the traced event arrives");
    let amqp_tp = header_str(d, "traceparent").expect("traceparent header");
    let parts: Vec<&str> = amqp_tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{amqp_tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(parts[2], parent_id, "a new span id");
    assert_eq!(parts[3], "01", "same flags");
    assert_eq!(header_str(d, "tracestate").as_deref(), Some(tracestate));
    let plain = messages
        .iter()
        .find(|d| message_id(d) == untraced)
        .expect("the untraced event arrives");
    assert_eq!(header_str(plain, "traceparent"), None);
    assert_eq!(header_str(plain, "tracestate"), None);

    // The collector receives the publish span: this trace, the request's span as parent, and
    // the span id that the AMQP message names as its parent.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (content_type, span) = loop {
        if let Some(found) = spans(&got)
            .into_iter()
            .find(|(_, s)| s["traceId"] == trace_id.as_str())
        {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span of trace {trace_id} was exported; got {:?}",
            spans(&got)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(content_type, "application/json");
    assert_eq!(span["parentSpanId"], parent_id, "{span}");
    assert_eq!(span["spanId"], parts[2], "{span}");
    assert_eq!(span["name"], "publish", "{span}");
    assert_eq!(span["kind"], 4, "SPAN_KIND_PRODUCER: {span}");
    assert_eq!(span["status"]["code"], 1, "STATUS_CODE_OK: {span}");
    assert_eq!(span["traceState"], tracestate, "{span}");
    assert_eq!(attribute(&span, "messaging.system"), Some("rabbitmq"));
    assert_eq!(attribute(&span, "messaging.message.id"), Some(id.as_str()));
    assert_eq!(
        attribute(&span, "messaging.destination.name"),
        Some(app.exchange.as_str())
    );
    let start: u128 = span["startTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("start time");
    let end: u128 = span["endTimeUnixNano"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("end time");
    assert!(start > 0 && end >= start, "{span}");

    // Exactly one span: the untraced event exported none.
    app.stop().await.expect("clean stop");
    let all = spans(&got);
    assert_eq!(all.len(), 1, "{all:?}");
}

#[tokio::test]
async fn invalid_trace_context_is_ignored() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let long_state = format!("k={}", "v".repeat(600));
    for (tp, ts, want_state) in [
        ("garbage", "rojo=1", None),
        (traceparent, "Bad Key=1", None),
        (traceparent, long_state.as_str(), None),
        (traceparent, "rojo=1", Some("rojo=1")),
    ] {
        let id = unique("tc");
        let event = Event::order_paid("o-1").amount(1).id(&id);
        let resp = app
            .post_with(
                "application/json",
                &[("traceparent", tp), ("tracestate", ts)],
                event.body(),
            )
            .await;
        assert_eq!(
            resp.status().as_u16(),
            202,
            "trace context never costs an event"
        );
        let d = q.next(WAIT).await.expect("the event arrives");
        assert_eq!(message_id(&d), id);
        assert_eq!(
            header_str(&d, "traceparent").is_some(),
            tp == traceparent,
            "{tp}"
        );
        assert_eq!(header_str(&d, "tracestate").as_deref(), want_state, "{ts}");
    }
}
