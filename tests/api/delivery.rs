//! End to end against the real RabbitMQ: what is accepted arrives once, as a structured
//! CloudEvent with the RabbitMQ binding's properties and headers; what cannot be routed ends
//! `dead`; a broker that is down at start-up only delays delivery.

use std::{collections::HashSet, time::Duration};

use crate::helpers::{
    Backend, Event, Proxy, TestApp, TestQueue, batch, body_json, header, header_str, message_id,
    outbox_row_counts, unique,
};

const WAIT: Duration = Duration::from_secs(10);

async fn native_event_is_delivered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    let id = unique("pay");
    let event = Event::order_paid("o-1001")
        .id(&id)
        .source("/shop/checkout")
        .subject("order-1001")
        .key("customer-42");
    let data = event.data_value().clone();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let resp = app
        .post_with(
            "application/json",
            &[("traceparent", traceparent), ("tracestate", tracestate)],
            event.body(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let location = header(&resp, "location").expect("Location");
    let posted_at = time::OffsetDateTime::now_utc().unix_timestamp();

    let d = q.next(WAIT).await.expect("the event arrives");
    assert_eq!(d.routing_key.as_str(), "events.order.paid.v1");
    let body = body_json(&d);
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["source"], "/shop/checkout");
    assert_eq!(body["type"], "order.paid");
    assert_eq!(body["subject"], "order-1001");
    assert_eq!(body["data"], data);
    assert_eq!(body["datacontenttype"], "application/json");
    assert!(
        body["dataschema"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/v1/schemas/order.paid/v1"),
        "{body}"
    );
    assert_eq!(body["partitionkey"], "customer-42");
    assert!(body["time"].is_string(), "{body}");

    let p = &d.properties;
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(message_id(&d), id);
    assert_eq!(p.kind().as_ref().map(|k| k.as_str()), Some("order.paid"));
    assert_eq!(
        p.content_type().as_ref().map(|c| c.as_str()),
        Some("application/cloudevents+json")
    );
    let ts = p.timestamp().expect("timestamp") as i64;
    assert!(
        (ts - posted_at).abs() <= 60,
        "timestamp {ts} vs {posted_at}"
    );
    assert_eq!(header_str(&d, "ce-id").as_deref(), Some(id.as_str()));
    assert_eq!(
        header_str(&d, "ce-source").as_deref(),
        Some("/shop/checkout")
    );
    assert_eq!(header_str(&d, "ce-type").as_deref(), Some("order.paid"));
    assert_eq!(header_str(&d, "ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(
        header_str(&d, "ce-partitionkey").as_deref(),
        Some("customer-42")
    );
    // The publish is a child span: same trace id and flags, a span id of its own.
    let tp = header_str(&d, "traceparent").expect("traceparent header");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c", "{tp}");
    assert!(
        parts[2].len() == 16 && parts[2] != "b7ad6b7169203331",
        "{tp}"
    );
    assert_eq!(parts[3], "01", "{tp}");
    assert_eq!(header_str(&d, "tracestate").as_deref(), Some(tracestate));
    assert!(header_str(&d, "ce-data").is_none(), "data is not a header");

    let ev = app.wait_status(&location, "published", WAIT).await;
    assert_eq!(ev["attempts"], 1, "{ev}");
    assert!(ev["published_at"].is_string(), "{ev}");
    assert!(ev["last_error"].is_null(), "{ev}");
    assert!(
        q.next(Duration::from_millis(500)).await.is_none(),
        "exactly one message"
    );
}

#[tokio::test]
async fn native_event_is_delivered_from_sqlite() {
    native_event_is_delivered(Backend::Sqlite).await;
}

#[tokio::test]
async fn native_event_is_delivered_from_postgres() {
    native_event_is_delivered(Backend::Postgres).await;
}

#[tokio::test]
async fn cloudevent_extension_is_kept_in_body_and_headers() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    let id = unique("ce");
    let event = Event::order_paid("o-7")
        .amount(7)
        .id(&id)
        .source("/shop/checkout")
        .field("tenant", "acme")
        .cloudevent();
    let resp = app
        .post("application/cloudevents+json", event.to_string())
        .await;
    assert_eq!(resp.status().as_u16(), 202);

    let d = q.next(WAIT).await.expect("the event arrives");
    assert_eq!(d.routing_key.as_str(), "events.order.paid.v1");
    let body = body_json(&d);
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["type"], "order.paid.v1", "the type is kept as sent");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["data"], event["data"]);
    assert_eq!(header_str(&d, "ce-tenant").as_deref(), Some("acme"));
    assert_eq!(header_str(&d, "ce-type").as_deref(), Some("order.paid.v1"));
    assert_eq!(
        d.properties.kind().as_ref().map(|k| k.as_str()),
        Some("order.paid.v1")
    );
    assert_eq!(message_id(&d), id);
}

#[tokio::test]
async fn unroutable_event_is_retried_then_dead() {
    // No queue is bound to this app's exchange: every publish comes back NO_ROUTE. Retries are
    // slow enough (150 ms and more) to watch attempts grow.
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.max_attempts = Some(3);
        s.retry_base_ms = Some(300);
        s.retry_max_ms = Some(1000);
    })
    .await;
    let location = app.accept(&Event::order_paid("o-lost")).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut attempts_seen = Vec::new();
    let last = loop {
        let (code, ev) = app.get_json(&location).await;
        assert_eq!(code, 200, "{ev}");
        assert_ne!(
            ev["status"], "published",
            "an unroutable event is never published"
        );
        let attempts = ev["attempts"].as_i64().unwrap();
        if attempts_seen.last() != Some(&attempts) {
            attempts_seen.push(attempts);
        }
        if ev["status"] == "pending" && attempts > 0 {
            let err = ev["last_error"].as_str().unwrap_or_default();
            assert!(err.contains("NO_ROUTE"), "{ev}");
            assert!(ev["next_attempt_at"].is_string(), "{ev}");
        }
        if ev["status"] == "dead" {
            break ev;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead in time: {ev}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(last["attempts"], 3, "{last}");
    assert!(
        last["last_error"].as_str().unwrap().contains("NO_ROUTE"),
        "{last}"
    );
    assert!(last["published_at"].is_null(), "{last}");
    assert!(last["next_attempt_at"].is_null(), "{last}");
    assert!(
        attempts_seen.windows(2).all(|w| w[0] < w[1]),
        "attempts only grow: {attempts_seen:?}"
    );
    assert!(
        attempts_seen.iter().any(|a| *a == 1 || *a == 2),
        "intermediate attempts were visible: {attempts_seen:?}"
    );

    // Still dead a little later: no further attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, ev) = app.get_json(&location).await;
    assert_eq!(ev["status"], "dead");
    assert_eq!(ev["attempts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_at_start_up_delays_delivery_only() {
    // A proxy port that does not listen yet: RabbitMQ is "down".
    let proxy = Proxy::reserve("127.0.0.1:5672");
    let amqp_url = proxy.amqp_url();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.amqp_url = Some(amqp_url)).await;

    let mut ids = Vec::new();
    let mut locations = Vec::new();
    for i in 0..5 {
        let id = format!("down-{i}");
        let location = app
            .accept(&Event::order_paid(&format!("o-{i}")).id(&id))
            .await;
        ids.push(id);
        locations.push(location);
    }

    // Ready all along (the outbox buffers), reporting the broker as unreachable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, ready) = app.get_json("/readyz").await;
        assert_eq!(code, 200, "{ready}");
        assert_eq!(ready["status"], "ready", "{ready}");
        if ready["broker"]["state"] == "unreachable" {
            assert!(ready["broker"]["error"].is_string(), "{ready}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker never reported unreachable: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        for location in &locations {
            let (code, ev) = app.get_json(location).await;
            assert_eq!(code, 200);
            assert_eq!(ev["status"], "pending", "{ev}");
            assert_eq!(ev["attempts"], 0, "no attempt without a connection: {ev}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut q = TestQueue::bind(&app.exchange, "events.#").await;
    proxy.listen().await;
    let got = q.take(ids.len(), Duration::from_secs(15)).await;
    let extra = q.drain(Duration::from_secs(1)).await;
    assert!(
        extra.is_empty(),
        "{} unexpected extra messages",
        extra.len()
    );
    let got: Vec<String> = got.iter().map(message_id).collect();
    assert_eq!(got, ids, "every event, once, in commit order");

    for location in &locations {
        let ev = app.wait_status(location, "published", WAIT).await;
        assert_eq!(ev["attempts"], 1, "{ev}");
    }
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["broker"]["state"], "connected", "{ready}");
}

#[tokio::test]
async fn idempotent_replay_publishes_once() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    let id = unique("once");
    let e = Event::order_paid("o-once").id(&id).source("/shop/checkout");
    let first = app.post_event(&e).await;
    assert_eq!(first.status().as_u16(), 202);
    let second = app.post_event(&e).await;
    assert_eq!(second.status().as_u16(), 202);
    assert_eq!(
        header(&second, "idempotent-replayed").as_deref(),
        Some("true")
    );

    let d = q.next(WAIT).await.expect("one message");
    assert_eq!(message_id(&d), id);
    let more = q.drain(Duration::from_millis(1500)).await;
    assert!(
        more.is_empty(),
        "a replay must not publish again; got {:?}",
        more.iter().map(message_id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn batch_of_50_arrives_complete_and_in_order() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    let ids: Vec<String> = (0..50).map(|i| format!("batch-{i:02}")).collect();
    let events = ids.iter().enumerate().map(|(i, id)| {
        Event::order_paid(&format!("o-{i}"))
            .id(id)
            .key(&format!("customer-{}", i % 3))
    });
    let (body, _) = app.post_accepted(&batch(events)).await;
    let answered: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(answered, ids);

    let got = q.take(50, WAIT).await;
    let got_ids: Vec<String> = got.iter().map(message_id).collect();
    assert_eq!(got_ids, ids, "batch order is kept");
    assert_eq!(got_ids.iter().collect::<HashSet<_>>().len(), 50);
    for (d, i) in got.iter().zip(0..) {
        assert_eq!(body_json(d)["data"]["order_id"], format!("o-{i}"));
    }
    assert!(q.drain(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn graceful_stop_after_delivery() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut q = TestQueue::bind(&app.exchange, "events.#").await;
    let location = app.accept(&Event::order_paid("o-stop")).await;
    assert!(q.next(WAIT).await.is_some());
    app.wait_status(&location, "published", WAIT).await;
    let base = app.base.clone();
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("stops within the grace period")
        .expect("stops cleanly");
    let after = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "the listener is closed after stop");
}

/// Published rows older than the retention are pruned together with their bodies (which live
/// in `outbox_payload`); pending rows stay.
async fn pruning_removes_rows_with_their_bodies(backend: Backend) {
    use postbox::outbox::{OutboxStore, now_micros};
    let app = TestApp::spawn(backend).await;
    let mut q = TestQueue::bind(&app.exchange, "#").await;
    let mut locations = Vec::new();
    for i in 0..3 {
        let loc = app.accept(&Event::order_paid(&format!("prune-{i}"))).await;
        locations.push(loc);
    }
    assert_eq!(q.take(3, Duration::from_secs(10)).await.len(), 3);
    for loc in &locations {
        app.wait_status(loc, "published", Duration::from_secs(10))
            .await;
    }
    let pruned = app
        .store
        .prune(now_micros() + 1_000_000, 1000)
        .await
        .expect("prune");
    assert_eq!(pruned, 3);
    for loc in &locations {
        assert_eq!(app.get_json(loc).await.0, 404);
    }
    let counts = outbox_row_counts(&app.database_url).await;
    assert_eq!(counts, (0, 0), "no row and no body is left behind");
    app.stop().await.expect("database");
}

#[tokio::test]
async fn pruning_removes_rows_with_their_bodies_sqlite() {
    pruning_removes_rows_with_their_bodies(Backend::Sqlite).await;
}

#[tokio::test]
async fn pruning_removes_rows_with_their_bodies_postgres() {
    pruning_removes_rows_with_their_bodies(Backend::Postgres).await;
}
