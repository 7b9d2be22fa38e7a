//! Per-key ordering (head-of-line per key only) and the operator tools for dead events.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// An event of `event_type` (`order.paid` or `user.signed_up`) with this id and key.
fn keyed(event_type: &str, id: &str, key: &str) -> Event {
    let event = match event_type {
        "user.signed_up" => Event::user_signed_up(id),
        _ => Event::order_paid(id),
    };
    event.id(id).source("/test/ordering").key(key)
}

async fn ordering_holds_back_only_its_own_key(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.max_attempts = Some(100);
        s.retry_base_ms = Some(50);
        s.retry_max_ms = Some(100);
    })
    .await;
    let mut q = TestQueue::bind(&app.exchange, "events.order.paid.#").await;
    // k1: the first event cannot be routed yet, so k1's second event must wait behind it.
    app.accept(&keyed("user.signed_up", "k1-a", "k1")).await;
    app.accept(&keyed("order.paid", "k1-b", "k1")).await;
    // k2 is independent and must flow.
    app.accept(&keyed("order.paid", "k2-a", "k2")).await;
    app.accept(&keyed("order.paid", "k2-b", "k2")).await;
    let got = q.take(2, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        vec!["k2-a", "k2-b"],
        "k2 flows in order"
    );
    assert!(
        q.next(Duration::from_millis(800)).await.is_none(),
        "k1-b must wait behind the failing k1-a"
    );
    let (_, a) = app
        .get_json("/v1/events/k1-a?source=%2Ftest%2Fordering")
        .await;
    assert_eq!(a["status"], "pending");
    assert!(a["attempts"].as_i64().is_some_and(|n| n >= 1), "{a}");
    let (_, b) = app
        .get_json("/v1/events/k1-b?source=%2Ftest%2Fordering")
        .await;
    assert_eq!(b["status"], "pending", "{b}");
    assert_eq!(b["attempts"], 0, "k1-b was never attempted: {b}");
    // Make k1-a routable: then k1-a and k1-b arrive, in that order.
    q.also_bind(&app.exchange, "events.user.signed_up.#").await;
    let got = q.take(2, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        vec!["k1-a", "k1-b"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ordering_holds_back_only_its_own_key_sqlite() {
    ordering_holds_back_only_its_own_key(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordering_holds_back_only_its_own_key_postgres() {
    ordering_holds_back_only_its_own_key(Backend::Postgres).await;
}

/// The next event of a key is claimed as soon as its predecessor is settled, not after the
/// relay's linger (nor at its poll): with a linger of a second, ten events of one key used to
/// take nine seconds, one linger each (at 200 events/s on one key, with the default 5 ms, the
/// relay fell further behind every second).
async fn a_key_is_not_held_back_by_the_linger(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.relay_linger_ms = Some(1000);
        s.poll_ms = Some(60_000);
    })
    .await;
    let mut q = TestQueue::bind(&app.exchange, "events.#").await;
    let events = (0..10).map(|i| keyed("order.paid", &format!("line-{i}"), "one-key"));
    let started = std::time::Instant::now();
    let resp = app.post_json(&batch(events)).await;
    assert_eq!(resp.status().as_u16(), 202);
    let got = q.take_ids(10, Duration::from_secs(10)).await;
    let took = started.elapsed();
    let expected: Vec<String> = (0..10).map(|i| format!("line-{i}")).collect();
    assert_eq!(got, expected, "all ten, in commit order");
    // Nine lingers would be nine seconds; a claim per settlement takes milliseconds.
    assert!(
        took < Duration::from_secs(5),
        "ten events of one key took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_not_held_back_by_the_linger_sqlite() {
    a_key_is_not_held_back_by_the_linger(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_not_held_back_by_the_linger_postgres() {
    a_key_is_not_held_back_by_the_linger(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn many_events_of_one_key_arrive_in_commit_order() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let mut q = TestQueue::bind(&app.exchange, "events.#").await;
    let events =
        (0..60).map(|i| keyed("order.paid", &format!("seq-{i:03}"), ["x", "y", "z"][i % 3]));
    let resp = app.post_json(&batch(events)).await;
    assert_eq!(resp.status().as_u16(), 202);
    let got: Vec<String> = q
        .take(60, Duration::from_secs(20))
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(got.len(), 60);
    for key in 0..3 {
        let of_key: Vec<&String> = got
            .iter()
            .filter(|id| id[4..].parse::<usize>().unwrap() % 3 == key)
            .collect();
        let mut sorted = of_key.clone();
        sorted.sort();
        assert_eq!(of_key, sorted, "key {key} arrived in commit order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_events_are_listed_and_redelivered() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.max_attempts = Some(2)).await;
    for id in ["d-1", "d-2", "d-3"] {
        app.accept(&keyed("user.signed_up", id, id)).await;
    }
    for id in ["d-1", "d-2", "d-3"] {
        app.wait_status(
            &format!("/v1/events/{id}?source=%2Ftest%2Fordering"),
            "dead",
            Duration::from_secs(10),
        )
        .await;
    }
    let (code, page) = app.get_json("/v1/events?status=dead&limit=2").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["events"][0]["id"], "d-1");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = app
        .get_json(&format!("/v1/events?status=dead&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page2["events"].as_array().unwrap().len(), 1);
    assert_eq!(page2["events"][0]["id"], "d-3");
    assert!(page2.get("next_cursor").is_none(), "{page2}");
    let bad = app
        .client
        .get(app.url("/v1/events?status=lost"))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400, "invalid-request").await;

    // Fix the cause (bind a queue), then redeliver one, then the rest in bulk.
    let mut q = TestQueue::bind(&app.exchange, "events.user.signed_up.#").await;
    let resp = app
        .client
        .post(app.url("/v1/events/d-2/redeliver"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["redelivered"], 1);
    let got = q.take(1, Duration::from_secs(10)).await;
    assert_eq!(message_id(&got[0]), "d-2");
    let e = app
        .wait_status(
            "/v1/events/d-2?source=%2Ftest%2Fordering",
            "published",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(e["attempts"], 1, "attempts start again: {e}");

    let resp = app
        .client
        .post(app.url("/v1/events/redeliver"))
        .json(&json!({"type": "user.signed_up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["redelivered"], 2);
    let mut ids: Vec<String> = q
        .take(2, Duration::from_secs(10))
        .await
        .iter()
        .map(message_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["d-1", "d-3"]);
    let missing = app
        .client
        .post(app.url("/v1/events/nope/redeliver"))
        .send()
        .await
        .unwrap();
    assert_problem(missing, 404, "not-found").await;
    let (_, page) = app.get_json("/v1/events?status=dead").await;
    assert_eq!(page["events"], json!([]));
}
