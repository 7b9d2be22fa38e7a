//! RabbitMQ `connection.blocked`: with a memory alarm raised on the broker, postbox keeps
//! answering 202 (the outbox buffers) and its relay pauses instead of failing publishes; once
//! the alarm clears, everything is delivered exactly once.
//!
//! A test binary of its own: the alarm is global to the broker and blocks every publisher on
//! it, and cargo runs test binaries one after another, so it cannot disturb `tests/api`. The
//! alarm is raised with `rabbitmqctl set_vm_memory_high_watermark` (root, or the Erlang cookie)
//! and always lowered again, also when the test fails.

#[path = "api/helpers/mod.rs"]
mod helpers;

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use helpers::{
    AMQP_URL, Event, Exchange, Outbox, ProcApp, ProcEnv, TestQueue, batch, message_id,
    metric_value, unique,
};

/// RabbitMQ's default `vm_memory_high_watermark`, put back after the test.
const NORMAL_WATERMARK: &str = "0.4";

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed (this test raises a memory alarm with it)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A memory alarm on the broker, lowered again on drop (also while a failed test unwinds).
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let alarm = MemoryAlarm;
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let lowered = Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", NORMAL_WATERMARK])
            .status();
        if !matches!(lowered, Ok(s) if s.success()) {
            eprintln!(
                "[broker_alarm] COULD NOT LOWER THE ALARM: run `rabbitmqctl set_vm_memory_high_watermark {NORMAL_WATERMARK}` ({lowered:?})"
            );
        }
    }
}

/// A publishing connection of the test's own: RabbitMQ tells it `connection.blocked` once it
/// publishes during an alarm, and `connection.unblocked` when the alarm clears.
struct Probe {
    conn: lapin::Connection,
    channel: lapin::Channel,
}

impl Probe {
    async fn connect() -> Probe {
        let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = conn.create_channel().await.expect("channel");
        Probe { conn, channel }
    }

    /// Publish (to no queue) until RabbitMQ blocks, or wait until it unblocks; returns how long
    /// it took.
    async fn until_blocked(&self, blocked: bool) -> Duration {
        let started = Instant::now();
        while self.conn.status().blocked() != blocked {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the probe connection did not become blocked={blocked}"
            );
            if blocked {
                // RabbitMQ blocks a connection when it publishes during an alarm. A publish
                // that meets the block waits inside lapin: do not wait for it.
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    self.channel.basic_publish(
                        "".into(),
                        "postbox-alarm-probe-no-such-queue".into(),
                        lapin::options::BasicPublishOptions::default(),
                        b"probe",
                        lapin::BasicProperties::default(),
                    ),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }
}

async fn broker_state(app: &ProcApp) -> String {
    let (code, ready) = app.get_json("/readyz").await;
    assert_eq!(code, 200, "postbox stays ready: {ready}");
    ready["broker"]["state"].as_str().unwrap_or("").to_owned()
}

fn events(prefix: &str, from: usize, n: usize) -> Value {
    batch((from..from + n).map(|i| {
        let id = format!("{prefix}-{i:04}");
        Event::order_paid(&id).id(&id).source("/test/alarm")
    }))
}

async fn post_batch(app: &ProcApp, batch: &Value) -> Duration {
    let started = Instant::now();
    let r = app.post_json(batch).await;
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.text().await.unwrap_or_default()
    );
    started.elapsed()
}

fn failures(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("postbox_publish_failures_total"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_blocked_pauses_the_relay_and_it_drains_after() {
    let started = Instant::now();
    // A previous run that died without its drop guard must not leave the broker blocked.
    rabbitmqctl(&["set_vm_memory_high_watermark", NORMAL_WATERMARK]);

    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = Exchange::new("alarm");
    let mut q = TestQueue::bind(&exchange, "events.#").await;
    // Confirms that do not come within 2 s of unblocked time are failures, so a block of
    // several seconds must not be counted against them.
    let env = ProcEnv::new(&Outbox::sqlite(dir.path()).url, AMQP_URL, &exchange)
        .set("POSTBOX_CONFIRM_TIMEOUT_SECS", 2);
    let app = ProcApp::spawn(&env, &dir.path().join("postbox.log")).await;
    let prefix = unique("alarm");

    // Before the alarm: 50 events flow.
    post_batch(&app, &events(&prefix, 0, 50)).await;
    let before = q.take(50, Duration::from_secs(10)).await;
    assert_eq!(before.len(), 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = app.metrics().await;
    assert_eq!(metric_value(&m, "postbox_published_total"), Some(50.0));

    let probe = Probe::connect().await;
    let alarm = MemoryAlarm::raise();
    let alarm_took = probe.until_blocked(true).await;
    let raised_at = Instant::now();
    // During the alarm: 20 single events, then 1000 in one batch, all answered 202 at once.
    // The relay sends the first single event on its own: RabbitMQ takes it off the socket,
    // blocks the connection and keeps it unconfirmed, so its confirm wait spans the alarm.
    let mut slowest_single = Duration::ZERO;
    for i in 50..70 {
        let took = post_batch(&app, &events(&prefix, i, 1)[0]).await;
        slowest_single = slowest_single.max(took);
        if i == 50 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let batch_took = post_batch(&app, &events(&prefix, 70, 1000)).await;
    assert!(
        batch_took < Duration::from_secs(5) && slowest_single < Duration::from_secs(5),
        "202s are answered during the alarm: batch {batch_took:?}, single {slowest_single:?}"
    );
    // The relay tried to publish, RabbitMQ blocked the connection, the relay pauses.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker_state(&app).await != "blocked" {
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the broker blocked\n{}",
            app.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blocked_seen_after = raised_at.elapsed();
    // Stay blocked for well over the confirm timeout (2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m1 = app.metrics().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m2 = app.metrics().await;
    assert_eq!(broker_state(&app).await, "blocked");
    let blocked_ms_1 = metric_value(&m1, "postbox_broker_blocked_milliseconds_total");
    let blocked_ms_2 = metric_value(&m2, "postbox_broker_blocked_milliseconds_total");
    assert!(
        blocked_ms_1.is_some_and(|ms| ms >= 4000.0),
        "blocked time counted: {blocked_ms_1:?}"
    );
    assert!(
        blocked_ms_2 > blocked_ms_1,
        "blocked time grows: {blocked_ms_1:?} then {blocked_ms_2:?}"
    );
    assert!(
        failures(&m2).is_empty(),
        "no failed attempts: {:?}",
        failures(&m2)
    );
    assert_eq!(metric_value(&m2, "postbox_published_total"), Some(50.0));
    assert_eq!(
        metric_value(&m2, "postbox_outbox_pending"),
        Some(1020.0),
        "every event of the alarm is pending"
    );
    let (_, ev) = app
        .get_json(&format!("/v1/events/{prefix}-1060?source=%2Ftest%2Falarm"))
        .await;
    assert_eq!(ev["status"], "pending", "{ev}");
    assert_eq!(ev["attempts"], 0, "no attempt used up: {ev}");

    drop(alarm);
    let blocked_for = raised_at.elapsed();
    probe.until_blocked(false).await;
    let after = q.take(1020, Duration::from_secs(20)).await;
    let extra = q.drain(Duration::from_secs(1)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for d in before.iter().chain(&after).chain(&extra) {
        *count.entry(message_id(d)).or_default() += 1;
    }
    let messages = before.len() + after.len() + extra.len();
    let duplicates = messages - count.len();
    let missing = (0..1070)
        .filter(|i| !count.contains_key(&format!("{prefix}-{i:04}")))
        .count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m3 = app.metrics().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker_state(&app).await != "connected" {
        assert!(Instant::now() < deadline, "not connected after the alarm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[broker_alarm] alarm in effect after {:.1} s, relay blocked {:.1} s after it; during the \
         alarm 1020 events answered 202 (batch of 1000 in {:.0} ms, slowest single {:.0} ms), \
         published {:?}, failures {:?}, blocked ms {blocked_ms_2:?}; alarm held {:.1} s; after it \
         delivered {} distinct ids in {messages} messages, duplicates {duplicates}, missing \
         {missing}; published {:?}, reconnects {:?}; {:.1} s",
        alarm_took.as_secs_f64(),
        blocked_seen_after.as_secs_f64(),
        batch_took.as_secs_f64() * 1000.0,
        slowest_single.as_secs_f64() * 1000.0,
        metric_value(&m2, "postbox_published_total"),
        failures(&m2),
        blocked_for.as_secs_f64(),
        count.len(),
        metric_value(&m3, "postbox_published_total"),
        metric_value(&m3, "postbox_broker_reconnects_total"),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(missing, 0);
    assert_eq!(count.len(), 1070);
    assert_eq!(duplicates, 0, "nothing published twice");
    assert_eq!(metric_value(&m3, "postbox_published_total"), Some(1070.0));
    assert!(
        failures(&m3).is_empty(),
        "no failed attempts: {:?}",
        failures(&m3)
    );
    assert_eq!(
        metric_value(&m3, "postbox_broker_reconnects_total"),
        None,
        "the connection was kept"
    );
}
