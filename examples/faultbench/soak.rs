//! `faultbench soak`: an open-loop load at a fixed rate for a long time, a consumer that counts
//! every event (reconnecting when the broker restarts), and a sample every `--every` seconds of
//! postbox's RSS, open file descriptors, outbox database size, the p99 of the 202s answered in
//! that window, the relay lag (p99 of the `postbox_relay_lag_seconds` histogram's increase in the
//! window, so a bucket bound) and the end-to-end lag seen by the consumer (receive − the event's
//! `time`). `--restart-cmd` runs `--restarts` times, evenly spread over the run.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

use super::{Answer, arg, client, declare, need, num, percentile, post};

/// What happened since the last sample, and in all.
#[derive(Default)]
struct Shared {
    /// 202 latencies in this window.
    latencies_ms: Vec<f64>,
    ok: usize,
    not_ok: usize,
    /// End-to-end lags seen by the consumer in this window.
    lags_ms: Vec<f64>,
    /// Per event index: answered 2xx.
    accepted: Vec<bool>,
    /// Per event index: times it arrived.
    arrived: Vec<u8>,
    messages: usize,
    redelivered: usize,
    /// Something to mark in this window's row (a broker restart).
    event: String,
}

type State = Arc<Mutex<Shared>>;

struct Opts {
    url: String,
    metrics: String,
    rate: usize,
    seconds: usize,
    amqp: String,
    exchange: String,
    queue: String,
    run: String,
    pid: u32,
    db: String,
    every: Duration,
}

pub async fn run() -> anyhow::Result<()> {
    let url = need("--url")?;
    let base = url.trim_end_matches("/v1/events").to_owned();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let o = Arc::new(Opts {
        metrics: format!("{base}/metrics"),
        url,
        rate: num("--rate", 1000).max(1),
        seconds: num("--seconds", 1800),
        amqp: need("--amqp")?,
        exchange: need("--exchange")?,
        queue: format!("soak-{run}"),
        run,
        pid: need("--pid")?.parse()?,
        db: need("--db")?,
        every: Duration::from_secs(num("--every", 10) as u64),
    });
    let total = o.rate * o.seconds;
    let state: State = Arc::new(Mutex::new(Shared {
        accepted: vec![false; total],
        arrived: vec![0; total],
        ..Shared::default()
    }));
    let admin = declare(&o.amqp, &o.exchange, &o.queue).await?;
    tokio::spawn(consume(o.clone(), state.clone()));
    let sampler = tokio::spawn(sample(o.clone(), state.clone()));
    if let Some(cmd) = arg("--restart-cmd") {
        tokio::spawn(restarts(
            cmd,
            num("--restarts", 2),
            o.seconds,
            state.clone(),
        ));
    }
    let started = Instant::now();
    drive(&o, &state).await;
    let answered_in = started.elapsed();
    let (lost, dup) = wait_delivered(&state, Duration::from_secs(120)).await;
    sampler.abort();
    if let Ok(ch) = admin.create_channel().await {
        let _ = ch
            .queue_delete(o.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let s = state.lock().expect("state");
    let ok = s.accepted.iter().filter(|a| **a).count();
    println!(
        "{}",
        json!({"mode": "soak", "rate": o.rate, "seconds": o.seconds, "sent": total, "ok": ok,
               "not_ok": total - ok, "answered_in_s": answered_in.as_secs_f64(),
               "messages": s.messages, "lost": lost, "duplicates": dup,
               "consumer_redeliveries": s.redelivered})
    );
    Ok(())
}

/// The open-loop load: request `i` is sent at `i / rate` seconds, whatever came before.
async fn drive(o: &Opts, state: &State) {
    let client = client(Duration::from_secs(30));
    let started = Instant::now();
    let mut tasks = FuturesUnordered::new();
    for i in 0..o.rate * o.seconds {
        let due = started + Duration::from_secs_f64(i as f64 / o.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, run, state) =
            (client.clone(), o.url.clone(), o.run.clone(), state.clone());
        tasks.push(tokio::spawn(async move {
            let (answer, took) = post(&client, &url, &run, i).await;
            let mut s = state.lock().expect("state");
            if matches!(answer, Answer::Ok) {
                s.accepted[i] = true;
                s.ok += 1;
                s.latencies_ms.push(took.as_secs_f64() * 1000.0);
            } else {
                s.not_ok += 1;
            }
        }));
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(tasks.next()) {}
    }
    while tasks.next().await.is_some() {}
}

/// Consume the soak queue, reconnecting (every second) while the broker is away.
async fn consume(o: Arc<Opts>, state: State) {
    let prefix = format!("{}-", o.run);
    loop {
        if let Err(e) = consume_once(&o, &state, &prefix).await {
            eprintln!("soak consumer: {e}; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn consume_once(o: &Opts, state: &State, prefix: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(&o.amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            o.queue.as_str().into(),
            "soak".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        let lag = lag_ms(&d.data);
        let index = d
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().strip_prefix(prefix)?.parse::<usize>().ok());
        {
            let mut s = state.lock().expect("state");
            s.messages += 1;
            if d.redelivered {
                s.redelivered += 1;
            }
            if let Some(slot) = index.and_then(|i| s.arrived.get_mut(i)) {
                *slot = slot.saturating_add(1);
            }
            if let Some(l) = lag {
                s.lags_ms.push(l);
            }
        }
        d.ack(BasicAckOptions::default()).await?;
    }
    anyhow::bail!("the consumer's connection closed")
}

/// Receive time − the CloudEvent's `time` (set by postbox when it accepted the event).
fn lag_ms(body: &[u8]) -> Option<f64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let t = time::OffsetDateTime::parse(
        v.get("time")?.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some((time::OffsetDateTime::now_utc() - t).as_seconds_f64() * 1000.0)
}

/// Run the restart command `n` times, at `seconds * k / (n + 1)`.
async fn restarts(cmd: String, n: usize, seconds: usize, state: State) {
    let started = Instant::now();
    for k in 1..=n {
        let at = Duration::from_secs_f64(seconds as f64 * k as f64 / (n + 1) as f64);
        tokio::time::sleep_until((started + at).into()).await;
        state.lock().expect("state").event = format!("broker restart {k}");
        eprintln!("soak: broker restart {k} at {} s", at.as_secs());
        match tokio::process::Command::new("bash")
            .args(["-c", &cmd])
            .status()
            .await
        {
            Ok(s) if s.success() => {}
            other => eprintln!("soak: restart command failed: {other:?}"),
        }
    }
}

/// Wait until every accepted event arrived, or `patience` passes without progress; returns
/// (lost, duplicates).
async fn wait_delivered(state: &State, patience: Duration) -> (usize, usize) {
    let mut last = (usize::MAX, Instant::now());
    loop {
        let (lost, dup) = {
            let s = state.lock().expect("state");
            let lost = s
                .accepted
                .iter()
                .zip(&s.arrived)
                .filter(|(a, n)| **a && **n == 0)
                .count();
            let dup = s
                .arrived
                .iter()
                .map(|n| usize::from(n.saturating_sub(1)))
                .sum();
            (lost, dup)
        };
        if lost == 0 {
            return (0, dup);
        }
        if lost != last.0 {
            last = (lost, Instant::now());
        } else if last.1.elapsed() > patience {
            return (lost, dup);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const COLUMNS: [&str; 11] = [
    "t_s",
    "rss_mb",
    "fds",
    "db_mb",
    "ok_per_s",
    "not_2xx",
    "p99_202_ms",
    "relay_lag_p99_ms",
    "e2e_lag_p99_ms",
    "pending",
    "event",
];

/// Every `every`: one row to stdout and to `--csv`.
async fn sample(o: Arc<Opts>, state: State) {
    let mut csv = arg("--csv").and_then(|p| std::fs::File::create(p).ok());
    if let Some(f) = csv.as_mut() {
        let _ = writeln!(f, "{}", COLUMNS.join(","));
    }
    println!("{}", COLUMNS.join("\t"));
    let http = client(Duration::from_secs(5));
    let mut prev = BTreeMap::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval_at((started + o.every).into(), o.every);
    loop {
        tick.tick().await;
        let metrics = match http.get(&o.metrics).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let buckets = lag_buckets(&metrics);
        let relay_p99 = bucket_p99(&prev, &buckets);
        if !buckets.is_empty() {
            prev = buckets;
        }
        let (mut lat, mut lags, ok, not_ok, event) = {
            let mut s = state.lock().expect("state");
            (
                std::mem::take(&mut s.latencies_ms),
                std::mem::take(&mut s.lags_ms),
                std::mem::take(&mut s.ok),
                std::mem::take(&mut s.not_ok),
                std::mem::take(&mut s.event),
            )
        };
        lat.sort_by(f64::total_cmp);
        lags.sort_by(f64::total_cmp);
        let row = [
            format!("{:.0}", started.elapsed().as_secs_f64()),
            format!("{:.1}", rss_kb(o.pid) as f64 / 1024.0),
            fds(o.pid).to_string(),
            format!("{:.1}", db_bytes(&o.db) as f64 / 1_048_576.0),
            format!("{:.0}", ok as f64 / o.every.as_secs_f64()),
            not_ok.to_string(),
            format!("{:.1}", percentile(&lat, 0.99)),
            format!("{:.1}", relay_p99 * 1000.0),
            format!("{:.1}", percentile(&lags, 0.99)),
            gauge(&metrics, "postbox_outbox_pending").to_string(),
            event,
        ];
        println!("{}", row.join("\t"));
        if let Some(f) = csv.as_mut() {
            let _ = writeln!(f, "{}", row.join(","));
        }
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The SQLite file with its WAL and shared-memory files.
fn db_bytes(db: &str) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|ext| std::fs::metadata(format!("{db}{ext}")).ok())
        .map(|m| m.len())
        .sum()
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// `le` bound (seconds; +Inf as infinity) → cumulative count, of `postbox_relay_lag_seconds`.
fn lag_buckets(metrics: &str) -> BTreeMap<u64, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("postbox_relay_lag_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le.to_bits(), count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound holding the 99th percentile of what the histogram gained since `prev`
/// (positive floats order like their bits). NaN when nothing was recorded.
fn bucket_p99(prev: &BTreeMap<u64, f64>, now: &BTreeMap<u64, f64>) -> f64 {
    let total =
        now.values().copied().fold(0.0, f64::max) - prev.values().copied().fold(0.0, f64::max);
    if total <= 0.0 {
        return f64::NAN;
    }
    for (le, count) in now {
        let gained = count - prev.get(le).copied().unwrap_or(0.0);
        if gained >= 0.99 * total {
            return f64::from_bits(*le);
        }
    }
    f64::NAN
}
