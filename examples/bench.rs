//! Load generator for `bench/run.sh`: measures the ceilings (raw confirmed publishing, a trivial
//! HTTP handler, RabbitMQ's own HTTP publish) and postbox end to end, printing one JSON line per
//! measurement. It also verifies delivery: every id that got a 202 must arrive in the queue.
//!
//! Modes (see `bench/run.sh` for how they are combined):
//!   bench broker  --exchange X --n N --window W
//!   bench trivial --listen ADDR                     (serve a 202-only handler)
//!   bench http    --url URL --n N --concurrency C [--batch B] [--exchange X] [--mgmt]
//!   bench rate    --url URL --rate R --seconds S [--exchange X]

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde_json::{Value, json};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// ~1 KB of event data.
fn data(i: usize) -> Value {
    json!({"seq": i, "customer": format!("c-{}", i % 1000), "payload": "x".repeat(900)})
}

fn event_id(run: &str, i: usize) -> String {
    format!("{run}-{i}")
}

fn native_event(run: &str, i: usize) -> Value {
    json!({"type": "bench.event", "version": "v1", "id": event_id(run, i), "source": "bench", "data": data(i)})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "broker" => broker().await,
        "trivial" => trivial().await,
        "http" => http().await,
        "rate" => rate().await,
        _ => {
            eprintln!("usage: bench broker|trivial|http|rate [options]; see the file header");
            std::process::exit(2)
        }
    }
}

/// A consumer on a fresh durable queue bound to `exchange` with `#`: counts unique ids and
/// records the arrival time of the last one and the lag of each (receive − CloudEvents `time`).
struct Sink {
    seen: Arc<Mutex<SinkState>>,
    queue: String,
    channel: Channel,
    _conn: Connection,
}

#[derive(Default)]
struct SinkState {
    ids: HashSet<String>,
    messages: usize,
    last: Option<Instant>,
    lags_ms: Vec<f64>,
}

impl Sink {
    async fn bind(exchange: &str) -> anyhow::Result<Sink> {
        let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        let queue = format!("bench-{}", uuid::Uuid::now_v7().simple());
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(Mutex::new(SinkState::default()));
        let state = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let now = Instant::now();
                let wall = time::OffsetDateTime::now_utc();
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let lag = serde_json::from_slice::<Value>(&d.data).ok().and_then(|v| {
                    let t = v.get("time")?.as_str()?.to_owned();
                    let t = time::OffsetDateTime::parse(
                        &t,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok()?;
                    Some((wall - t).as_seconds_f64() * 1000.0)
                });
                let _ = d.ack(BasicAckOptions::default()).await;
                if let Ok(mut s) = state.lock() {
                    s.messages += 1;
                    s.ids.insert(id);
                    s.last = Some(now);
                    if let Some(l) = lag {
                        s.lags_ms.push(l);
                    }
                }
            }
        });
        Ok(Sink {
            seen,
            queue,
            channel: ch,
            _conn: conn,
        })
    }

    /// Wait until `expected` unique ids arrived (or `timeout` passes without progress).
    async fn wait(&self, expected: usize, timeout: Duration) -> (usize, usize, Option<Instant>) {
        let mut last_count = 0;
        let mut last_progress = Instant::now();
        loop {
            let (unique, total, last) = {
                let s = self.seen.lock().expect("sink lock");
                (s.ids.len(), s.messages, s.last)
            };
            if unique >= expected {
                return (unique, total, last);
            }
            if unique != last_count {
                last_count = unique;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > timeout {
                return (unique, total, last);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn missing(&self, expected: &[String]) -> usize {
        let s = self.seen.lock().expect("sink lock");
        expected.iter().filter(|id| !s.ids.contains(*id)).count()
    }

    fn lags(&self) -> Vec<f64> {
        self.seen.lock().expect("sink lock").lags_ms.clone()
    }

    async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Raw lapin: persistent + mandatory 1 KB JSON to the exchange, confirms pipelined.
async fn broker() -> anyhow::Result<()> {
    let exchange = arg("--exchange").unwrap_or_else(|| "bench-raw".into());
    let n = num("--n", 20000);
    let window = num("--window", 1000);
    let sink = Sink::bind(&exchange).await?;
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let bodies: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let id = event_id(&run, i);
            let mut ce = native_event(&run, i);
            ce["time"] = json!(postbox::envelope::format_time(
                time::OffsetDateTime::now_utc()
            ));
            (id, serde_json::to_vec(&ce).expect("json"))
        })
        .collect();
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut acked = 0usize;
    for (id, body) in &bodies {
        while inflight.len() >= window {
            if let Some(Ok(lapin::Confirmation::Ack(None))) = inflight.next().await {
                acked += 1;
            }
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into())
            .with_content_type("application/cloudevents+json".into());
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "events.bench.event.v1".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?;
        inflight.push(confirm);
    }
    while let Some(r) = inflight.next().await {
        if matches!(r, Ok(lapin::Confirmation::Ack(None))) {
            acked += 1;
        }
    }
    let confirmed_at = started.elapsed();
    let ids: Vec<String> = bodies.into_iter().map(|(id, _)| id).collect();
    let (unique, _, last) = sink.wait(n, Duration::from_secs(10)).await;
    let end = last
        .map(|l| l.duration_since(started))
        .unwrap_or(confirmed_at);
    println!(
        "{}",
        json!({"mode": "broker", "n": n, "window": window, "acked": acked, "delivered": unique,
               "missing": sink.missing(&ids),
               "confirmed_per_s": n as f64 / confirmed_at.as_secs_f64(),
               "per_s": unique as f64 / end.as_secs_f64()})
    );
    sink.delete().await;
    Ok(())
}

/// A handler that answers 202 with a small JSON body, on the same axum/tokio stack as postbox.
async fn trivial() -> anyhow::Result<()> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:18081".into());
    let app = axum::Router::new().route(
        "/v1/events",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let _ = body.len();
            (
                axum::http::StatusCode::ACCEPTED,
                axum::Json(json!({"id": "x", "source": "bench", "location": "/v1/events/x"})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Load {
    url: String,
    mgmt: bool,
    batch: usize,
    run: String,
    client: reqwest::Client,
}

impl Load {
    fn new(url: String) -> Load {
        Load {
            url,
            mgmt: flag("--mgmt"),
            batch: num("--batch", 1),
            run: uuid::Uuid::now_v7().simple().to_string(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .expect("client"),
        }
    }

    /// Request `r` (carrying events r*batch .. r*batch+batch); true on 2xx.
    async fn send(&self, r: usize) -> bool {
        let req = if self.mgmt {
            let body = json!({"properties": {"delivery_mode": 2, "message_id": event_id(&self.run, r), "content_type": "application/json"},
                              "routing_key": "events.bench.event.v1", "payload": native_event(&self.run, r).to_string(), "payload_encoding": "string"});
            self.client
                .post(&self.url)
                .basic_auth("guest", Some("guest"))
                .json(&body)
        } else if self.batch > 1 {
            let items: Vec<Value> = (r * self.batch..(r + 1) * self.batch)
                .map(|i| native_event(&self.run, i))
                .collect();
            self.client.post(&self.url).json(&items)
        } else {
            self.client
                .post(&self.url)
                .json(&native_event(&self.run, r))
        };
        match req.send().await {
            Ok(resp) => {
                resp.status().is_success()
                    && (!self.mgmt
                        || resp
                            .text()
                            .await
                            .is_ok_and(|t| t.contains("\"routed\":true")))
            }
            Err(_) => false,
        }
    }

    fn ids(&self, events: usize) -> Vec<String> {
        (0..events).map(|i| event_id(&self.run, i)).collect()
    }
}

/// Closed-loop load: `n` requests from `concurrency` workers; end to end when `--exchange`.
async fn http() -> anyhow::Result<()> {
    let url = arg("--url").unwrap_or_else(|| "http://127.0.0.1:8080/v1/events".into());
    let n = num("--n", 20000);
    let concurrency = num("--concurrency", 64);
    let sink = match arg("--exchange") {
        Some(x) => Some(Sink::bind(&x).await?),
        None => None,
    };
    let load = Arc::new(Load::new(url));
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (load, next, ok, lat) = (load.clone(), next.clone(), ok.clone(), lat.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= n {
                    return;
                }
                let t = Instant::now();
                if load.send(r).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if let Ok(mut l) = lat.lock() {
                    l.push(ms);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let answered = started.elapsed();
    let ok = ok.load(Ordering::Relaxed);
    let events = n * load.batch;
    let mut lat = lat.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let mut out = json!({"mode": "http", "requests": n, "ok": ok, "batch": load.batch,
        "concurrency": concurrency, "requests_per_s": n as f64 / answered.as_secs_f64(),
        "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)});
    if let Some(sink) = sink {
        let ids = load.ids(events);
        let (unique, total, last) = sink.wait(events, Duration::from_secs(15)).await;
        let end = last.map(|l| l.duration_since(started)).unwrap_or(answered);
        out["delivered"] = json!(unique);
        out["messages"] = json!(total);
        out["duplicates"] = json!(total.saturating_sub(unique));
        out["missing"] = json!(sink.missing(&ids));
        out["events_per_s"] = json!(unique as f64 / end.as_secs_f64());
        sink.delete().await;
    }
    println!("{out}");
    Ok(())
}

/// Open-loop load at a fixed rate: latency of the 202 and relay lag (receive − event time).
async fn rate() -> anyhow::Result<()> {
    let url = arg("--url").unwrap_or_else(|| "http://127.0.0.1:8080/v1/events".into());
    let rate = num("--rate", 1000).max(1);
    let seconds = num("--seconds", 10);
    let sink = match arg("--exchange") {
        Some(x) => Some(Sink::bind(&x).await?),
        None => None,
    };
    let load = Arc::new(Load::new(url));
    let total = rate * seconds;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = FuturesUnordered::new();
    for r in 0..total {
        let due = started + Duration::from_secs_f64(r as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (load, lat, ok) = (load.clone(), lat.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            if load.send(r).await {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut l) = lat.lock() {
                l.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(tasks.next()) {}
    }
    while tasks.next().await.is_some() {}
    let mut lat = lat.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let mut out = json!({"mode": "rate", "rate": rate, "seconds": seconds, "requests": total,
        "ok": ok.load(Ordering::Relaxed), "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)});
    if let Some(sink) = sink {
        let ids = load.ids(total);
        let (unique, _, _) = sink.wait(total, Duration::from_secs(15)).await;
        let mut lags = sink.lags();
        lags.sort_by(f64::total_cmp);
        out["delivered"] = json!(unique);
        out["missing"] = json!(sink.missing(&ids));
        out["lag_p50_ms"] = json!(percentile(&lags, 0.5));
        out["lag_p99_ms"] = json!(percentile(&lags, 0.99));
        sink.delete().await;
    }
    println!("{out}");
    Ok(())
}
