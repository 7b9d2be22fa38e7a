//! The NATS JetStream sink against a real NATS server: what lands in the stream (subject,
//! CloudEvents headers, `Nats-Msg-Id`, body), duplicates JetStream already holds, a stream that
//! conflicts (explained on `/readyz`, no attempt used, healed once fixed), a subject no stream
//! captures (retried, then dead), the consumer topology with its dead-letter stream and
//! `postbox nats-replay`; and the faults the RabbitMQ tests cover, on a NATS server of the
//! test's own: kill -9 mid-load, the server down for 5 s, several instances with per-key order.

use std::time::Duration;

use async_nats::jetstream::{self, stream::Config as StreamConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Load, NatsScope, PgDatabase, PrivateNats, ProcApp, TestApp, metric_value, nats_header,
    nats_msg_id, unique,
};

#[tokio::test]
async fn nats_events_land_in_the_stream_as_cloudevents() {
    let nats = NatsScope::new().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| nats.settings(s)).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let event = json!({
        "specversion": "1.0", "id": "n-1", "source": "/shop/checkout", "type": "order.paid.v1",
        "partitionkey": "customer-42",
        "data": {"order_id": "o-1", "amount": 25.5, "currency": "EUR"},
    });
    let resp = app
        .post_with(
            "application/cloudevents+json",
            &[("traceparent", traceparent), ("tracestate", "rojo=1")],
            event.to_string(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let msgs = nats.messages(1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.subject.as_str(), format!("{}.order.paid.v1", nats.prefix));
    let body: Value = serde_json::from_slice(&m.payload).expect("JSON body");
    assert_eq!(body["id"], "n-1");
    assert_eq!(body["source"], "/shop/checkout");
    assert_eq!(body["type"], "order.paid.v1");
    assert_eq!(body["data"]["amount"], 25.5);
    assert_eq!(
        nats_header(m, "content-type").as_deref(),
        Some("application/cloudevents+json")
    );
    assert_eq!(nats_header(m, "ce-id").as_deref(), Some("n-1"));
    assert_eq!(
        nats_header(m, "ce-source").as_deref(),
        Some("/shop/checkout")
    );
    assert_eq!(nats_header(m, "ce-type").as_deref(), Some("order.paid.v1"));
    assert_eq!(nats_header(m, "ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(
        nats_header(m, "ce-partitionkey").as_deref(),
        Some("customer-42")
    );
    assert_eq!(
        nats_header(m, "Nats-Msg-Id"),
        Some(nats_msg_id("/shop/checkout", "n-1"))
    );
    // The publish is a child span of the request's trace.
    let tp = nats_header(m, "traceparent").expect("traceparent");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(!tp.contains("b7ad6b7169203331"), "a new span id: {tp}");
    assert_eq!(nats_header(m, "tracestate").as_deref(), Some("rojo=1"));
    // The message is in the stream as soon as JetStream stored it; the relay settles the row
    // after the PubAck reaches it, a moment later.
    app.wait_status(
        "/v1/events/n-1?source=%2Fshop%2Fcheckout",
        "published",
        Duration::from_secs(5),
    )
    .await;
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["broker"]["name"], "NATS JetStream");
    assert_eq!(ready["broker"]["state"], "connected");
}

/// A message JetStream already stored (the publish before a crash, say) is acknowledged as a
/// duplicate: the event counts as delivered, once in the stream, and is counted.
#[tokio::test]
async fn nats_a_duplicate_pub_ack_counts_as_delivered() {
    let nats = NatsScope::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The stream exists already, and holds this event (same Nats-Msg-Id) from "before".
    nats.js
        .create_stream(StreamConfig {
            name: nats.stream.clone(),
            subjects: vec![format!("{}.>", nats.prefix)],
            ..StreamConfig::default()
        })
        .await
        .expect("create stream");
    let subject = format!("{}.order.paid.v1", nats.prefix);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", nats_msg_id("/dup", "d-1").as_str());
    nats.js
        .publish_with_headers(subject, headers, "earlier".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let env = nats.env(&format!("sqlite://{}", dir.path().join("o.db").display()));
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .header("content-type", "application/json")
        .body(
            json!({"type": "order.paid", "version": "v1", "id": "d-1", "source": "/dup",
                   "data": {"order_id": "o", "amount": 1, "currency": "EUR"}})
            .to_string(),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, ev) = app.get_json("/v1/events/d-1?source=%2Fdup").await;
        if ev["status"] == "published" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ev}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "postbox_publish_duplicates_total"),
        Some(1.0)
    );
    let msgs = nats.messages(1, Duration::from_secs(1)).await;
    assert_eq!(msgs.len(), 1, "JetStream kept one copy");
    assert_eq!(&msgs[0].payload[..], b"earlier");
}

/// A stream of postbox's name that does not capture its subjects is never changed: `/readyz`
/// explains, events wait without using attempts, and delivery starts by itself once an
/// operator fixes it.
#[tokio::test]
async fn nats_a_conflicting_stream_is_explained_and_heals_once_fixed() {
    let nats = NatsScope::new().await;
    nats.js
        .create_stream(StreamConfig {
            name: nats.stream.clone(),
            subjects: vec![format!("other{}.>", nats.prefix)],
            ..StreamConfig::default()
        })
        .await
        .expect("create stream");
    let app = TestApp::spawn_with(Backend::Sqlite, |s| nats.settings(s)).await;
    let (_, location) = app
        .post_accepted(&json!({"type": "order.paid", "version": "v1", "id": "c-1",
            "data": {"order_id": "o", "amount": 1, "currency": "EUR"}}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (_, ready) = app.get_json("/readyz").await;
        if ready["broker"]["state"] == "unreachable" {
            break ready;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why = ready["broker"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("do not capture"), "{why}");
    let (_, ev) = app.get_json(&location).await;
    assert_eq!(
        (ev["status"].as_str(), ev["attempts"].as_i64()),
        (Some("pending"), Some(0))
    );
    // The operator removes the stream; postbox creates its own and delivers.
    nats.js.delete_stream(&nats.stream).await.expect("delete");
    app.wait_status(&location, "published", Duration::from_secs(30))
        .await;
    assert_eq!(nats.messages(1, Duration::from_secs(1)).await.len(), 1);
}

/// No stream captures the subject any more (deleted while postbox runs): "no responders" is a
/// failed attempt like an AMQP return, retried, then dead.
#[tokio::test]
async fn nats_a_subject_no_stream_captures_is_retried_then_dead() {
    let nats = NatsScope::new().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |s| nats.settings(s)).await;
    let (_, first) = app
        .post_accepted(&json!({"type": "order.paid", "version": "v1", "id": "u-0",
            "data": {"order_id": "o", "amount": 1, "currency": "EUR"}}))
        .await;
    app.wait_status(&first, "published", Duration::from_secs(10))
        .await;
    nats.js.delete_stream(&nats.stream).await.expect("delete");
    let (_, location) = app
        .post_accepted(&json!({"type": "order.paid", "version": "v1", "id": "u-1",
            "data": {"order_id": "o", "amount": 1, "currency": "EUR"}}))
        .await;
    let ev = app
        .wait_status(&location, "dead", Duration::from_secs(30))
        .await;
    assert_eq!(ev["attempts"], 3, "{ev}");
    let err = ev["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("no JetStream stream captures"), "{err}");
}

/// `[[nats_consumers]]`: a durable consumer with `max_deliver` and a dead-letter stream; what
/// it gives up on shows up there, and `postbox nats-replay` sends it again.
#[tokio::test]
async fn nats_dead_letters_are_captured_and_replayed() {
    let mut nats = NatsScope::new().await;
    let consumer = "billing";
    let dlq = format!("{}_{consumer}_DLQ", nats.stream);
    nats.also_delete(&dlq);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("postbox.toml");
    std::fs::write(
        &config,
        format!(
            "[[nats_consumers]]\nname = \"{consumer}\"\nfilter_subject = \"{}.order.paid.>\"\n\
             max_deliver = 2\nack_wait_secs = 1\n",
            nats.prefix
        ),
    )
    .expect("config file");
    let env = nats
        .env(&format!("sqlite://{}", dir.path().join("o.db").display()))
        .set("POSTBOX_CONFIG", config.display());
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    let resp = app
        .client
        .post(app.url("/v1/events"))
        .header("content-type", "application/json")
        .body(
            json!({"type": "order.paid", "version": "v1", "id": "dl-1",
                   "data": {"order_id": "o", "amount": 1, "currency": "EUR"}})
            .to_string(),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 202);

    // A consumer that fails every delivery (nak): JetStream gives up after 2.
    let stream = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = nats.js.get_stream(&nats.stream).await {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                app.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // postbox creates the stream first, then the consumer: wait for both.
    let durable: jetstream::consumer::PullConsumer = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match stream.get_consumer(consumer).await {
                Ok(c) => break c,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "postbox did not declare the consumer: {e}\n{}",
                    app.log_tail(20)
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(durable.cached_info().config.max_deliver, 2);
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while deliveries < 2 && tokio::time::Instant::now() < deadline {
        let mut batch = durable
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(m)) = batch.next().await {
            let body: Value = serde_json::from_slice(&m.payload).expect("body");
            assert_eq!(body["id"], "dl-1");
            deliveries += 1;
            m.ack_with(jetstream::AckKind::Nak(None))
                .await
                .expect("nak");
        }
    }
    assert_eq!(deliveries, 2);
    // JetStream notices the limit when it would deliver again (to a waiting pull request):
    // nothing comes, and the advisory goes out.
    let mut batch = durable
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    assert!(batch.next().await.is_none(), "no third delivery");
    // The advisory is in the dead-letter stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match nats.js.get_stream(&dlq).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if n == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "advisories: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Replay it: the consumer receives a copy, as a new message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postbox"))
        .args(["nats-replay", "--consumer", consumer])
        .envs(env.vars())
        .output()
        .expect("postbox nats-replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 messages replayed"), "{stdout}");
    let mut batch = durable
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let m = batch
        .next()
        .await
        .expect("the replayed message")
        .expect("message");
    let body: Value = serde_json::from_slice(&m.payload).expect("body");
    assert_eq!(body["id"], "dl-1");
    assert_eq!(m.info().expect("info").delivered, 1, "a fresh message");
    m.ack().await.expect("ack");
    let mut dlq_stream = nats.js.get_stream(&dlq).await.expect("dlq");
    assert_eq!(dlq_stream.info().await.expect("info").state.messages, 0);
    drop(app);
}

// ---------------------------------------------------------------------------------------------
// Faults, on a NATS server of the test's own.

/// kill -9 of postbox mid-load: every 202'd id is in the stream after a restart, and the stream
/// holds (almost) no duplicates, because a republish carries the same `Nats-Msg-Id` and
/// JetStream drops it inside its duplicate window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_kill9_mid_load_loses_nothing_and_the_stream_drops_republishes() {
    let started = std::time::Instant::now();
    let server = PrivateNats::start().await;
    let nats = NatsScope::at(&server.url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = nats.env(&format!("sqlite://{}", dir.path().join("o.db").display()));
    let log = dir.path().join("postbox.log");
    let mut app = ProcApp::spawn(&env, &log).await;
    let prefix = unique("nkill");
    let load = Load::new(&app.base, &prefix)
        .source("/nats/kill")
        .events(2000)
        .tasks(8)
        .spawn();
    load.until_answered(800, Duration::from_secs(30), &app)
        .await;
    app.kill9();
    let t = load.finish().await;
    assert!(t.statuses.is_empty(), "{:?}", t.statuses);
    assert!(t.conn_errors > 0, "the kill came too late");
    let app = ProcApp::spawn(&env, &log).await;
    let got = nats.arrivals(&t.accepted, Duration::from_secs(20)).await;
    got.assert_all_from(&prefix);
    let dups = app.metric("postbox_publish_duplicates_total").await;
    t.report("nats", "kill -9 mid-load (stream contents)", &got, started);
    eprintln!(
        "[nats]   duplicate PubAcks after the restart (republishes JetStream dropped): {dups}"
    );
    got.assert_none_missing(&app.log_tail(30));
    assert_eq!(got.duplicates(), 0, "the stream dropped every republish");
}

/// The NATS server is down for 5 s mid-load: 202s keep coming (the outbox buffers), `/readyz`
/// shows the broker unreachable and stays ready, and nothing is missing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_down_for_5s_mid_load_keeps_accepting_and_loses_nothing() {
    let started = std::time::Instant::now();
    let mut server = PrivateNats::start().await;
    let nats = NatsScope::at(&server.url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = nats.env(&format!("sqlite://{}", dir.path().join("o.db").display()));
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    app.wait_broker("connected", Duration::from_secs(10)).await;
    let prefix = unique("ndown");
    let load = Load::new(&app.base, &prefix)
        .source("/nats/down")
        .events(3000)
        .tasks(4)
        .pace(Duration::from_millis(2))
        .spawn();
    load.until_answered(300, Duration::from_secs(30), &app)
        .await;
    server.stop();
    let stopped_at = std::time::Instant::now();
    let answered_before = load.answered();
    app.wait_broker("unreachable", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped_at.elapsed())).await;
    let during = load.answered() - answered_before;
    server.restart().await;
    app.wait_broker("connected", Duration::from_secs(20)).await;
    let t = load.finish().await;
    assert!(t.statuses.is_empty(), "only 202s: {:?}", t.statuses);
    assert_eq!(t.conn_errors, 0);
    let got = nats.arrivals(&t.accepted, Duration::from_secs(30)).await;
    got.assert_all_from(&prefix);
    t.report("nats", "NATS server down 5 s mid-load", &got, started);
    eprintln!("[nats]   {during} POSTs answered 202 while the server was down");
    assert!(
        during > 50,
        "202s kept flowing while NATS was down: {during}"
    );
    got.assert_none_missing(&app.log_tail(30));
}

/// Several instances on one PostgreSQL outbox publishing to one stream: the partitions are
/// shared, every 202'd id is in the stream once, and each key's events are in 202 order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_instances_on_postgres_keep_per_key_order() {
    let started = std::time::Instant::now();
    let server = PrivateNats::start().await;
    let nats = NatsScope::at(&server.url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = PgDatabase::create().await;
    let env = nats.env(&db.url());
    let mut apps = Vec::new();
    for i in 0..2 {
        apps.push(ProcApp::spawn(&env, &dir.path().join(format!("postbox-{i}.log"))).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let a = apps[0].metric("postbox_partitions_owned").await;
        let b = apps[1].metric("postbox_partitions_owned").await;
        if a + b == 64.0 && a > 0.0 && b > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not shared: {a} + {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prefix = unique("nkeys");
    let t = Load::across(apps.iter().map(|a| a.base.clone()).collect(), &prefix)
        .source("/nats/keys")
        .keyed(20, 40)
        .run()
        .await;
    assert!(t.statuses.is_empty(), "{:?}", t.statuses);
    let got = nats.arrivals(&t.accepted, Duration::from_secs(30)).await;
    got.assert_all_from(&prefix);
    t.report("nats", "2 instances on PostgreSQL, keyed", &got, started);
    got.assert_none_missing(&apps[0].log_tail(30));
    t.assert_key_order(&got);
    assert_eq!(got.duplicates(), 0);
    let published: f64 = apps[0].metric("postbox_published_total").await
        + apps[1].metric("postbox_published_total").await;
    assert_eq!(published as usize, t.accepted.len());
}
