//! Delivery guarantees under faults: SIGKILL mid-load, a broker outage during load, nacks, a
//! SIGTERM under load and a locked SQLite outbox. Every test counts each event id exactly:
//! every id answered 202 must reach RabbitMQ (duplicates are allowed by at-least-once and are
//! counted and printed; a missing id is a failure).
//!
//! The crash and shutdown tests run the real binary as a child process; the others do too where
//! they read `/metrics` (in-process apps share one global metrics recorder).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{options::QueueDeclareOptions, types::FieldTable};
use serde_json::Value;

use crate::helpers::{
    AMQP_URL, Answer, Backend, Event, Exchange, Load, Outbox, ProcApp, ProcEnv, Proxy, SqliteLock,
    TestApp, TestQueue, assert_problem, header, metric_value, rejecting_queue, unique,
};

// ---------------------------------------------------------------------------------------------
// 1. kill -9 mid-load

const KILL_EVENTS: usize = 2000;
const KILL_AFTER: usize = 800;

async fn kill9_mid_load(backend: Backend) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::new(backend, dir.path()).await;
    let exchange = Exchange::new("faults-kill");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    // The restarted process takes the killed one's partitions (PostgreSQL) or the whole file
    // (SQLite) over and releases its leases at once: nothing waits for a lease to run out
    // (2 x 5 s + 10 s here).
    let env = ProcEnv::new(&outbox.url, AMQP_URL, &exchange);
    let log = dir.path().join("postbox.log");
    let mut app = ProcApp::spawn(&env, &log).await;

    let prefix = unique("kill");
    let load = Load::new(&app.base, &prefix)
        .source("/faults/kill")
        .events(KILL_EVENTS)
        .tasks(8)
        .spawn();
    load.until_answered(KILL_AFTER, Duration::from_secs(30), &app)
        .await;
    app.kill9();
    let t = load.finish().await;
    assert!(
        t.statuses.is_empty(),
        "only 202s and connection errors expected, got {:?}",
        t.statuses
    );
    assert_eq!(t.sent, t.accepted.len() + t.conn_errors);
    assert!(t.accepted.len() >= KILL_AFTER - 8, "{}", t.accepted.len());
    assert!(
        t.conn_errors > 0,
        "the kill came too late: every request was answered"
    );

    let app = ProcApp::spawn(&env, &log).await;
    let got = q
        .collect(
            &t.accepted,
            Duration::from_secs(15),
            Duration::from_millis(1500),
        )
        .await;
    got.assert_all_from(&prefix);
    t.report(
        "faults",
        &format!("kill -9 mid-load ({backend:?})"),
        &got,
        started,
    );
    got.assert_none_missing(&app.log_tail(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_kill9_mid_load_sqlite() {
    kill9_mid_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_kill9_mid_load_postgres() {
    kill9_mid_load(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Broker outage during load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_broker_outage_during_load() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("faults-outage");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let proxy = Proxy::rabbitmq().await;
    let env = ProcEnv::new(
        &Outbox::sqlite(dir.path()).url,
        &proxy.amqp_url(),
        &exchange,
    );
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    app.wait_broker("connected", Duration::from_secs(10)).await;

    let prefix = unique("outage");
    let load = Load::new(&app.base, &prefix)
        .source("/faults/outage")
        .events(20_000)
        .tasks(4)
        .pace(Duration::from_millis(10))
        .spawn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_cut = load.answered();

    proxy.cut().await;
    let cut_at = Instant::now();
    let mut saw_unreachable = false;
    let mut max_pending = 0.0_f64;
    let mut readyz_checks = 0;
    while cut_at.elapsed() < Duration::from_secs(4)
        || (!(saw_unreachable && max_pending > 0.0) && cut_at.elapsed() < Duration::from_secs(8))
    {
        let (code, ready) = app.get_json("/readyz").await;
        readyz_checks += 1;
        assert_eq!(code, 200, "ready while the broker is away: {ready}");
        assert_eq!(ready["status"], "ready", "{ready}");
        if ready["broker"]["state"] == "unreachable" {
            assert!(ready["broker"]["error"].is_string(), "{ready}");
            saw_unreachable = true;
        }
        max_pending = max_pending.max(app.metric("postbox_outbox_pending").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_for = cut_at.elapsed();
    let during_cut = load.answered() - before_cut;
    assert!(
        saw_unreachable,
        "/readyz never reported the broker unreachable during the cut\n{}",
        app.log_tail(30)
    );
    assert!(
        max_pending > 0.0,
        "postbox_outbox_pending stayed 0 during the cut"
    );

    proxy.listen().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.stop();
    let t = load.finish().await;
    let not_accepted = t.not_accepted(5);
    assert!(
        not_accepted.is_empty(),
        "every POST must be accepted while the broker is away: {not_accepted:?}"
    );

    let got = q
        .collect(
            &t.accepted,
            Duration::from_secs(25),
            Duration::from_millis(1500),
        )
        .await;
    got.assert_all_from(&prefix);
    t.report("faults", "broker outage during load", &got, started);
    eprintln!(
        "[faults] broker outage: cut for {:.1} s, {during_cut} POSTs answered during the cut, \
         {readyz_checks} /readyz checks all 200, max postbox_outbox_pending {max_pending}",
        cut_for.as_secs_f64()
    );
    got.assert_none_missing(&app.log_tail(40));
    assert_eq!(got.not_in(&t.accepted), 0);

    // The backlog drains: the gauge (refreshed every 2 s) returns to 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pending = metric_value(&app.metrics().await, "postbox_outbox_pending");
        if pending == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "postbox_outbox_pending is still {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.wait_broker("connected", Duration::from_secs(5)).await;
    // One lost connection, one reconnect.
    let metrics = app.metrics().await;
    let reconnects = metric_value(&metrics, "postbox_broker_reconnects_total");
    let connection_failures = metric_value(
        &metrics,
        "postbox_publish_failures_total{reason=\"connection\"}",
    );
    eprintln!(
        "[faults] broker outage: reconnects {reconnects:?}, connection failures {connection_failures:?}; \
         proxy {:?}",
        proxy.stats()
    );
    assert_eq!(reconnects, Some(1.0), "exactly one reconnect");
}

// ---------------------------------------------------------------------------------------------
// 3. Nack → retried → dead, never published; other events still flow

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_nacked_event_is_retried_then_dead_and_does_not_block_others() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("faults-nack");
    let mut ok_q = TestQueue::bind(&exchange, "events.order.paid.#").await;
    let (_conn, ch, reject_q) = rejecting_queue(&exchange, "events.user.signed_up.#").await;
    let env = ProcEnv::new(&Outbox::sqlite(dir.path()).url, AMQP_URL, &exchange)
        .set("POSTBOX_MAX_ATTEMPTS", 3)
        // Slow enough to watch attempts grow: ~150-300 ms, then ~300-600 ms.
        .set("POSTBOX_RETRY_BASE_MS", 300)
        .set("POSTBOX_RETRY_MAX_MS", 1000);
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;

    let post = |event: Event| {
        let app = &app;
        async move {
            let r = app.post_event(&event).await;
            assert_eq!(r.status().as_u16(), 202);
            header(&r, "location").expect("Location")
        }
    };
    let ok_event = |id: &str| {
        Event::order_paid(id)
            .amount(1)
            .id(id)
            .source("/faults/nack")
    };
    let bad_id = unique("nacked");
    let location = post(
        Event::user_signed_up("u-1")
            .id(&bad_id)
            .source("/faults/nack"),
    )
    .await;
    let mut ok_ids = HashSet::new();
    for i in 0..10 {
        let id = format!("{bad_id}-ok-{i}");
        post(ok_event(&id)).await;
        ok_ids.insert(id);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut attempts_seen = Vec::new();
    let mut nack_errors_seen = 0;
    let dead = loop {
        let (code, ev) = app.get_json(&location).await;
        assert_eq!(code, 200, "{ev}");
        assert_ne!(
            ev["status"], "published",
            "a nacked event is never published"
        );
        let attempts = ev["attempts"].as_i64().expect("attempts");
        if attempts_seen.last() != Some(&attempts) {
            attempts_seen.push(attempts);
        }
        if attempts > 0 {
            let err = ev["last_error"].as_str().unwrap_or_default();
            assert!(err.contains("nack"), "last_error names the nack: {ev}");
            nack_errors_seen += 1;
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
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(dead["published_at"].is_null(), "{dead}");
    assert!(
        attempts_seen.windows(2).all(|w| w[0] < w[1]),
        "attempts only grow: {attempts_seen:?}"
    );
    assert!(
        attempts_seen.iter().any(|a| *a == 1 || *a == 2),
        "intermediate attempts were visible: {attempts_seen:?}"
    );

    // Events posted after the failing one is dead flow too.
    for i in 10..20 {
        let id = format!("{bad_id}-ok-{i}");
        post(ok_event(&id)).await;
        ok_ids.insert(id);
    }
    let got = ok_q
        .collect(
            &ok_ids,
            Duration::from_secs(10),
            Duration::from_millis(1000),
        )
        .await;
    got.assert_all_from(&bad_id);
    assert!(
        !got.count.contains_key(&bad_id),
        "the nacked event was routed"
    );
    assert!(got.missing.is_empty(), "missing: {:?}", got.missing);
    assert_eq!(got.duplicates(), 0, "{:?}", got.count);
    assert_eq!(got.distinct(), 20);

    // RabbitMQ kept nothing in the rejecting queue; the relay counted exactly three nacks.
    let declared = ch
        .queue_declare(
            reject_q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 0);
    // Still dead a little later: no further attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, ev) = app.get_json(&location).await;
    assert_eq!(ev["status"], "dead", "{ev}");
    assert_eq!(ev["attempts"], 3, "{ev}");
    let metrics = app.metrics().await;
    let nacked = metric_value(
        &metrics,
        "postbox_publish_failures_total{reason=\"nacked\"}",
    );
    assert_eq!(nacked, Some(3.0), "exactly three nacked attempts");
    let returned = metric_value(
        &metrics,
        "postbox_publish_failures_total{reason=\"returned\"}",
    );
    assert_eq!(returned, None, "nothing was unroutable");
    eprintln!(
        "[faults] nack: attempts seen {attempts_seen:?} ({nack_errors_seen} polls showed the nack), \
         dead with attempts 3, nacked metric {nacked:?}, rejecting queue holds {}; \
         other events: 202 20, delivered {} distinct in {} messages, duplicates {}, missing {}; {:.1} s",
        declared.message_count(),
        got.distinct(),
        got.messages(),
        got.duplicates(),
        got.missing.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Graceful shutdown (SIGTERM) under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sigterm_under_load_loses_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("faults-term");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    let env = ProcEnv::new(&Outbox::sqlite(dir.path()).url, AMQP_URL, &exchange);
    let log = dir.path().join("postbox.log");
    let mut app = ProcApp::spawn(&env, &log).await;

    let prefix = unique("term");
    let load = Load::new(&app.base, &prefix)
        .source("/faults/term")
        .events(KILL_EVENTS)
        .tasks(8)
        .spawn();
    load.until_answered(600, Duration::from_secs(30), &app)
        .await;
    app.term();
    let term_at = Instant::now();
    let status = app.wait_exit(Duration::from_secs(15)).await;
    let exited_after = term_at.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "postbox did not exit within 15 s of SIGTERM\n{}",
            app.log_tail(30)
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        app.log_tail(30)
    );
    let t = load.finish().await;
    let unexpected: Vec<&u16> = t.statuses.keys().filter(|c| **c != 503).collect();
    assert!(
        unexpected.is_empty(),
        "after SIGTERM only 503 or a connection error: {:?}",
        t.statuses
    );
    let accepted_after_term = t
        .shots
        .iter()
        .filter(|s| s.answer == Answer::Accepted && s.answered_at > term_at)
        .count();

    // Every 202 is in the outbox after a restart on the same database...
    let app = ProcApp::spawn(&env, &log).await;
    let enc_source = "%2Ffaults%2Fterm";
    let not_stored: Vec<(String, u16, Value)> = futures_util::stream::iter(t.accepted.iter())
        .map(|id| {
            let app = &app;
            async move {
                let (code, ev) = app
                    .get_json(&format!("/v1/events/{id}?source={enc_source}"))
                    .await;
                (id.clone(), code, ev)
            }
        })
        .buffer_unordered(8)
        .filter(|(_, code, ev)| {
            let ok = *code == 200 && (ev["status"] == "pending" || ev["status"] == "published");
            std::future::ready(!ok)
        })
        .collect()
        .await;
    assert!(
        not_stored.is_empty(),
        "{} ids answered 202 are not in the outbox, e.g. {:?}",
        not_stored.len(),
        &not_stored[..not_stored.len().min(5)]
    );

    // ...and in the queue.
    let got = q
        .collect(
            &t.accepted,
            Duration::from_secs(20),
            Duration::from_millis(1500),
        )
        .await;
    got.assert_all_from(&prefix);
    t.report("faults", "SIGTERM under load", &got, started);
    eprintln!(
        "[faults] SIGTERM: exit 0 after {:.2} s; {accepted_after_term} 202s answered after the signal",
        exited_after.as_secs_f64()
    );
    got.assert_none_missing("");
    assert!(
        t.conn_errors + t.status(503) > 0,
        "the signal came too late: every request was accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. SQLite outbox locked by another writer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_locked_sqlite_outbox_is_503_never_202_and_recovers() {
    let started = Instant::now();
    let app = TestApp::spawn(Backend::Sqlite).await;
    assert_eq!(
        app.post_event(&Event::order_paid("o-warm"))
            .await
            .status()
            .as_u16(),
        202
    );

    // Another process's writer holds SQLite's write lock for longer than postbox's busy
    // timeout (5 s).
    let lock = SqliteLock::hold(&app.database_url, "exclusive").await;
    let event = Event::order_paid("locked-1")
        .amount(1)
        .id("locked-1")
        .source("/faults/locked");
    let posted = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(15), app.post_event(&event))
        .await
        .expect("postbox answers while the outbox is locked");
    let waited = posted.elapsed();
    let retry_after = header(&resp, "retry-after");
    let p = assert_problem(resp, 503, "outbox-unavailable").await;
    assert!(retry_after.is_some(), "Retry-After");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing was stored"),
        "{p}"
    );
    lock.release().await;

    // The 503 stored nothing: the same event is new now.
    let resp = app.post_event(&event).await;
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(header(&resp, "idempotent-replayed"), None);
    let (code, ev) = app
        .get_json("/v1/events/locked-1?source=%2Ffaults%2Flocked")
        .await;
    assert_eq!(code, 200, "{ev}");
    eprintln!(
        "[faults] locked SQLite: 503 after {:.1} s, then 202 (not a replay); {:.1} s",
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
