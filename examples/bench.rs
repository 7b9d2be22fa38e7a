//! Load generator for `bench/run.sh`: measures the ceilings (raw confirmed publishing, a trivial
//! HTTP handler, RabbitMQ's own HTTP publish) and postbox end to end, printing one JSON line per
//! measurement. It also verifies delivery: every id that got a 202 must arrive in the queue.
//!
//! Modes (see `bench/run.sh` for how they are combined):
//!   bench broker  --exchange X --n N --window W [--shape plain|full|lean]
//!   bench nats    --stream S --prefix P --n N --window W      (raw JetStream publish)
//!   bench trivial --listen ADDR                     (serve a 202-only handler)
//!   bench http    --url URL --n N --concurrency C [--batch B] [--keys K] [--exchange X | --stream S] [--mgmt]
//!   bench rate    --url URL --rate R --seconds S [--keys K] [--exchange X | --stream S] [--trace FILE]
//!   bench drain   (--exchange X | --stream S --prefix P) --n N   (a backlog draining)
//!
//! `--keys K` spreads the events over K ordering keys (`key-0` …), each published in order.
//! `--nats URL` (default `nats://127.0.0.1:4222`) is the server of `nats` and of every
//! JetStream consumer (`--stream`).
//!
//! The message shapes of `broker`: `plain` (persistent, mandatory, content type and message
//! id), `full` (what postbox sends by default: also `type`, `timestamp`, `app_id` and the
//! CloudEvents attributes as `ce-*` headers), `lean` (`full` without the `ce-*` headers, what
//! postbox sends with `amqp_ce_headers = "none"`).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use std::future::IntoFuture;

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
const NATS: &str = "nats://127.0.0.1:4222";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The NATS server of every NATS mode and consumer (`--nats URL`).
fn nats_url() -> String {
    arg("--nats").unwrap_or_else(|| NATS.into())
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
        "nats" => nats().await,
        "drain" => drain().await,
        "trivial" => trivial().await,
        "http" => http().await,
        "rate" => rate().await,
        _ => {
            eprintln!(
                "usage: bench broker|nats|trivial|http|rate|drain [options]; see the file header"
            );
            std::process::exit(2)
        }
    }
}

/// A consumer on a fresh durable queue bound to `exchange` with `#`: counts unique ids and
/// records the arrival time of the last one and the lag of each (receive − CloudEvents `time`).
struct AmqpSink {
    seen: Arc<Mutex<SinkState>>,
    queue: String,
    channel: Channel,
    _conn: Connection,
}

#[derive(Default)]
struct SinkState {
    ids: HashSet<String>,
    messages: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    lags_ms: Vec<f64>,
}

impl AmqpSink {
    async fn bind(exchange: &str) -> anyhow::Result<AmqpSink> {
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
                    s.first.get_or_insert(now);
                    s.last = Some(now);
                    if let Some(l) = lag {
                        s.lags_ms.push(l);
                    }
                }
            }
        });
        Ok(AmqpSink {
            seen,
            queue,
            channel: ch,
            _conn: conn,
        })
    }

    fn state(&self) -> Arc<Mutex<SinkState>> {
        self.seen.clone()
    }

    async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A JetStream consumer reading every message of `stream` (from a fresh ephemeral consumer),
/// counting unique `ce-id`s like [`AmqpSink`].
struct NatsSink {
    seen: Arc<Mutex<SinkState>>,
    js: async_nats::jetstream::Context,
    stream: String,
}

impl NatsSink {
    async fn bind(stream: &str, prefix: &str) -> anyhow::Result<NatsSink> {
        let client = async_nats::connect(nats_url()).await?;
        let js = async_nats::jetstream::new(client);
        let s = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: stream.to_owned(),
                subjects: vec![format!("{prefix}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        // An ordered consumer: when it misses a heartbeat (this process starved of CPU on a
        // busy machine) it recreates itself from the last stream sequence it saw, where a plain
        // pull consumer without acks would have dropped what was on the way.
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await?;
        let seen = Arc::new(Mutex::new(SinkState::default()));
        let state = seen.clone();
        let mut messages = consumer.messages().await?;
        tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                // The ordered consumer reports trouble it recovers from as an error item.
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("nats consumer: {e}");
                        continue;
                    }
                };
                let now = Instant::now();
                let wall = time::OffsetDateTime::now_utc();
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("ce-id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                let lag = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("ce-time"))
                    .and_then(|t| {
                        let t = time::OffsetDateTime::parse(
                            t.as_str(),
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()?;
                        Some((wall - t).as_seconds_f64() * 1000.0)
                    });
                if let Ok(mut s) = state.lock() {
                    s.messages += 1;
                    s.ids.insert(id);
                    s.first.get_or_insert(now);
                    s.last = Some(now);
                    if let Some(l) = lag {
                        s.lags_ms.push(l);
                    }
                }
            }
        });
        Ok(NatsSink {
            seen,
            js,
            stream: stream.to_owned(),
        })
    }
}

/// Where a measurement checks delivery: a RabbitMQ queue or a JetStream stream.
enum Sink {
    Amqp(AmqpSink),
    Nats(NatsSink),
}

impl Sink {
    /// From `--exchange X` or `--stream S --prefix P`.
    async fn from_args() -> anyhow::Result<Option<Sink>> {
        if let Some(x) = arg("--exchange") {
            return Ok(Some(Sink::Amqp(AmqpSink::bind(&x).await?)));
        }
        if let Some(s) = arg("--stream") {
            let prefix = arg("--prefix").unwrap_or_else(|| "events".into());
            return Ok(Some(Sink::Nats(NatsSink::bind(&s, &prefix).await?)));
        }
        Ok(None)
    }

    fn seen(&self) -> Arc<Mutex<SinkState>> {
        match self {
            Sink::Amqp(a) => a.state(),
            Sink::Nats(n) => n.seen.clone(),
        }
    }

    async fn wait(&self, expected: usize, timeout: Duration) -> (usize, usize, Option<Instant>) {
        let seen = self.seen();
        let mut last_count = 0;
        let mut last_progress = Instant::now();
        loop {
            let (unique, total, last) = {
                let s = seen.lock().expect("sink lock");
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
        let seen = self.seen();
        let s = seen.lock().expect("sink lock");
        expected.iter().filter(|id| !s.ids.contains(*id)).count()
    }

    fn lags(&self) -> Vec<f64> {
        self.seen().lock().expect("sink lock").lags_ms.clone()
    }

    fn first(&self) -> Option<Instant> {
        self.seen().lock().ok().and_then(|s| s.first)
    }

    async fn delete(self) {
        match self {
            Sink::Amqp(a) => a.delete().await,
            Sink::Nats(n) => {
                let _ = n.js.delete_stream(&n.stream).await;
            }
        }
    }
}

/// Raw lapin: persistent + mandatory 1 KB JSON to the exchange, confirms pipelined.
async fn broker() -> anyhow::Result<()> {
    let exchange = arg("--exchange").unwrap_or_else(|| "bench-raw".into());
    let n = num("--n", 20000);
    let window = num("--window", 1000);
    let shape = arg("--shape").unwrap_or_else(|| "plain".into());
    let sink = Sink::Amqp(AmqpSink::bind(&exchange).await?);
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let bodies: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let id = event_id(&run, i);
            (id, serde_json::to_vec(&cloudevent(&run, i)).expect("json"))
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
        let props = shape_properties(&shape, id, body);
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
    // From the first message consumed to the last, like the relay-drain rows (connection set-up
    // and the first round trip are not the broker's rate).
    let end = match (sink.first(), last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => confirmed_at,
    };
    println!(
        "{}",
        json!({"mode": "broker", "shape": shape, "n": n, "window": window, "acked": acked, "delivered": unique,
               "missing": sink.missing(&ids),
               "confirmed_per_s": n as f64 / confirmed_at.as_secs_f64(),
               "per_s": unique as f64 / end.as_secs_f64()})
    );
    sink.delete().await;
    Ok(())
}

/// AMQP properties of a ceiling message in `shape` (see the file header).
fn shape_properties(shape: &str, id: &str, body: &[u8]) -> BasicProperties {
    let plain = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_content_type("application/cloudevents+json".into());
    if shape == "plain" {
        return plain;
    }
    let lean = plain
        .with_type("bench.event".into())
        .with_timestamp(1_700_000_000)
        .with_app_id("postbox".into());
    if shape == "lean" {
        return lean;
    }
    // The attributes, as postbox copies them into headers (every attribute but `data`).
    let mut headers = FieldTable::default();
    if let Ok(Value::Object(ce)) = serde_json::from_slice::<Value>(body) {
        for (k, v) in ce.iter().filter(|(k, _)| k.as_str() != "data") {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.insert(
                format!("ce-{k}").as_str().into(),
                lapin::types::AMQPValue::LongString(v.as_str().into()),
            );
        }
    }
    lean.with_headers(headers)
}

/// The CloudEvent postbox would publish for event `i`: structured body with its attributes.
fn cloudevent(run: &str, i: usize) -> Value {
    json!({"specversion": "1.0", "id": event_id(run, i), "source": "bench",
           "type": "bench.event", "time": postbox::envelope::format_time(time::OffsetDateTime::now_utc()),
           "datacontenttype": "application/json",
           "dataschema": "http://127.0.0.1:18180/v1/schemas/bench.event/v1", "data": data(i)})
}

/// Raw async-nats: the same ~1 KB CloudEvent with postbox's headers (`ce-*`, content type,
/// `Nats-Msg-Id`), `--window` publishes awaiting their PubAcks at once, consumed meanwhile by the
/// same consumer as postbox's NATS rows (as the RabbitMQ ceiling is): on shared cores the
/// consumer's CPU is part of what either side can reach.
async fn nats() -> anyhow::Result<()> {
    let stream = arg("--stream").unwrap_or_else(|| "BENCH".into());
    let prefix = arg("--prefix").unwrap_or_else(|| "bench".into());
    let n = num("--n", 20000);
    let window = num("--window", 1000);
    let client = async_nats::connect(nats_url()).await?;
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(&stream).await;
    // Creates the stream and starts consuming it.
    let sink = Sink::Nats(NatsSink::bind(&stream, &prefix).await?);
    let run = uuid::Uuid::now_v7().simple().to_string();
    let msgs: Vec<(async_nats::HeaderMap, bytes::Bytes)> = (0..n)
        .map(|i| {
            let ce = cloudevent(&run, i);
            let mut h = async_nats::HeaderMap::new();
            h.insert("content-type", "application/cloudevents+json");
            if let Value::Object(m) = &ce {
                for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "data") {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    h.insert(format!("ce-{k}").as_str(), v.as_str());
                }
            }
            h.insert("Nats-Msg-Id", event_id(&run, i).as_str());
            (
                h,
                bytes::Bytes::from(serde_json::to_vec(&ce).expect("json")),
            )
        })
        .collect();
    let subject = format!("{prefix}.bench.event.v1");
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut acked = 0usize;
    let mut duplicates = 0usize;
    for (h, body) in msgs {
        while inflight.len() >= window {
            if let Some(Ok(ack)) = inflight.next().await {
                let ack: async_nats::jetstream::publish::PublishAck = ack;
                acked += 1;
                duplicates += usize::from(ack.duplicate);
            }
        }
        let fut = js.publish_with_headers(subject.clone(), h, body).await?;
        inflight.push(fut.into_future());
    }
    while let Some(r) = inflight.next().await {
        if let Ok(ack) = r {
            acked += 1;
            duplicates += usize::from(ack.duplicate);
        }
    }
    let acked_at = started.elapsed();
    let ids: Vec<String> = (0..n).map(|i| event_id(&run, i)).collect();
    let (unique, _, last) = sink.wait(n, Duration::from_secs(10)).await;
    // From the first message consumed to the last, as for the RabbitMQ ceiling.
    let end = match (sink.first(), last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => acked_at,
    };
    println!(
        "{}",
        json!({"mode": "nats", "n": n, "window": window, "acked": acked, "delivered": unique,
               "duplicates": duplicates, "missing": sink.missing(&ids),
               "acked_per_s": acked as f64 / acked_at.as_secs_f64(),
               "per_s": unique as f64 / end.as_secs_f64()})
    );
    sink.delete().await;
    Ok(())
}

/// A consumer of a backlog draining into a queue: rate from the first message to the last.
async fn drain() -> anyhow::Result<()> {
    let n = num("--n", 100_000);
    let sink = Sink::from_args()
        .await?
        .ok_or_else(|| anyhow::anyhow!("drain needs --exchange X or --stream S --prefix P"))?;
    println!("{}", json!({"mode": "drain", "ready": true}));
    let (unique, total, last) = sink.wait(n, Duration::from_secs(30)).await;
    let first = sink.first();
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    println!(
        "{}",
        json!({"mode": "drain", "n": n, "delivered": unique, "acked": unique, "messages": total,
               "duplicates": total.saturating_sub(unique), "missing": n.saturating_sub(unique),
               "seconds": span.as_secs_f64(),
               "per_s": unique as f64 / span.as_secs_f64().max(1e-9)})
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
    /// Events spread over this many ordering keys (`--keys`; 0: unkeyed).
    keys: usize,
    run: String,
    client: reqwest::Client,
}

impl Load {
    fn new(url: String) -> Load {
        Load {
            url,
            mgmt: flag("--mgmt"),
            batch: num("--batch", 1),
            keys: num("--keys", 0),
            run: uuid::Uuid::now_v7().simple().to_string(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .expect("client"),
        }
    }

    /// Event `i` of this run, with an ordering key when `--keys` asks for them.
    fn event(&self, i: usize) -> Value {
        let mut e = native_event(&self.run, i);
        if self.keys > 0 {
            e["key"] = json!(format!("key-{}", i % self.keys));
        }
        e
    }

    /// Request `r` (carrying events r*batch .. r*batch+batch); true on 2xx.
    async fn send(&self, r: usize) -> bool {
        let req = if self.mgmt {
            let body = json!({"properties": {"delivery_mode": 2, "message_id": event_id(&self.run, r), "content_type": "application/json"},
                              "routing_key": "events.bench.event.v1", "payload": self.event(r).to_string(), "payload_encoding": "string"});
            self.client
                .post(&self.url)
                .basic_auth("guest", Some("guest"))
                .json(&body)
        } else if self.batch > 1 {
            let items: Vec<Value> = (r * self.batch..(r + 1) * self.batch)
                .map(|i| self.event(i))
                .collect();
            self.client.post(&self.url).json(&items)
        } else {
            self.client.post(&self.url).json(&self.event(r))
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
    let sink = Sink::from_args().await?;
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
    let sink = Sink::from_args().await?;
    let load = Arc::new(Load::new(url));
    let total = rate * seconds;
    let lat = Arc::new(Mutex::new(Vec::<(f64, f64)>::with_capacity(total)));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // The trace's offsets are from here; the wall clock lets other samplers line up with them.
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
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
                l.push((
                    t.duration_since(started).as_secs_f64(),
                    t.elapsed().as_secs_f64() * 1000.0,
                ));
            }
        }));
        while let Some(Some(_)) = futures_util::FutureExt::now_or_never(tasks.next()) {}
    }
    while tasks.next().await.is_some() {}
    let timed = lat.lock().map(|l| l.clone()).unwrap_or_default();
    if let Some(path) = arg("--trace") {
        // Each request's start (s since the first) and latency (ms), to see when the slow
        // ones happen.
        let lines: String = timed
            .iter()
            .map(|(at, ms)| format!("{at:.4} {ms:.3}\n"))
            .collect();
        std::fs::write(&path, lines)?;
    }
    let mut lat: Vec<f64> = timed.into_iter().map(|(_, ms)| ms).collect();
    lat.sort_by(f64::total_cmp);
    let mut out = json!({"mode": "rate", "rate": rate, "seconds": seconds, "requests": total,
        "ok": ok.load(Ordering::Relaxed), "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
        // The slowest 202: one stall (a slow fsync) of 100 ms holds up every request it
        // overlaps, and at 1,500/s in 10 s that is the whole last 1%.
        "max_ms": lat.last().copied().unwrap_or(f64::NAN), "started_at": started_at});
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
