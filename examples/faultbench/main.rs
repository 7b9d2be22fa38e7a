//! Load and counting for `bench/soak.sh` and `bench/anti-pattern.sh`: every id answered 2xx is
//! recorded and looked for in a real queue, so a run that loses events says how many.
//!
//! ```text
//! faultbench setup --amqp URL --exchange X --queue Q      durable topic exchange + queue bound `#`
//! faultbench load  --url URL (--rate R --seconds S | --n N --concurrency C) [--ids FILE]
//! faultbench count --amqp URL --queue Q --ids FILE [--quiet-secs 3] [--delete-exchange X]
//! faultbench soak  --url URL --rate R --seconds S --amqp URL --exchange X --pid PID --db FILE
//!                  [--every 10] [--csv FILE] [--restart-cmd CMD --restarts 2]
//! ```
//!
//! Every mode prints one JSON line at the end; `soak` also prints a table row every `--every`
//! seconds and writes them to `--csv`.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde_json::json;

mod soak;

/// `--name value` from the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A numeric option with a default.
pub fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A required option.
pub fn need(name: &str) -> anyhow::Result<String> {
    arg(name).ok_or_else(|| anyhow::anyhow!("{name} is required"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).unwrap_or_default().as_str() {
        "setup" => setup().await,
        "load" => load().await,
        "count" => count().await,
        "soak" => soak::run().await,
        _ => {
            eprintln!("usage: faultbench setup|load|count|soak [options]; see the file header");
            std::process::exit(2)
        }
    }
}

/// Declare the durable topic exchange and a durable queue bound to it with `#`.
pub async fn declare(amqp: &str, exchange: &str, queue: &str) -> anyhow::Result<Connection> {
    let conn = Connection::connect(amqp, ConnectionProperties::default()).await?;
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
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(conn)
}

async fn setup() -> anyhow::Result<()> {
    let (amqp, exchange, queue) = (need("--amqp")?, need("--exchange")?, need("--queue")?);
    let conn = declare(&amqp, &exchange, &queue).await?;
    let _ = conn.close(200, "declared".into()).await;
    println!(
        "{}",
        json!({"mode": "setup", "exchange": exchange, "queue": queue})
    );
    Ok(())
}

/// Seconds since the epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// ~1 KB `bench.event` v1 with id `{run}-{i}`.
pub fn event(run: &str, i: usize) -> String {
    json!({"type": "bench.event", "version": "v1", "id": format!("{run}-{i}"), "source": "bench",
           "data": {"seq": i, "customer": format!("c-{}", i % 1000), "payload": "x".repeat(900)}})
    .to_string()
}

/// How one POST was answered.
pub enum Answer {
    /// 2xx, body read.
    Ok,
    /// Another status, with the problem `type` of its body (RFC 9457) when it has one.
    Status(u16, String),
    /// No answer.
    ConnError,
}

/// POST event `i`; its answer and how long it took.
pub async fn post(client: &reqwest::Client, url: &str, run: &str, i: usize) -> (Answer, Duration) {
    let t = Instant::now();
    let answer = match client
        .post(url)
        .header("content-type", "application/json")
        .body(event(run, i))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(_) => Answer::Ok,
            Err(_) => Answer::ConnError,
        },
        Ok(r) => {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let kind = body["type"].as_str().unwrap_or("").to_owned();
            Answer::Status(status, kind)
        }
        Err(_) => Answer::ConnError,
    };
    (answer, t.elapsed())
}

/// An HTTP client for many concurrent requests.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(timeout)
        .build()
        .expect("HTTP client")
}

/// What a load's answers were.
#[derive(Default)]
struct Tally {
    ok: Vec<usize>,
    /// `"{status} {problem type}"` → count.
    statuses: HashMap<String, usize>,
    conn_errors: usize,
    latencies_ms: Vec<f64>,
}

impl Tally {
    fn add(&mut self, i: usize, answer: Answer, took: Duration) {
        match answer {
            Answer::Ok => {
                self.ok.push(i);
                self.latencies_ms.push(took.as_secs_f64() * 1000.0);
            }
            Answer::Status(s, kind) => {
                *self.statuses.entry(format!("{s} {kind}")).or_default() += 1;
            }
            Answer::ConnError => self.conn_errors += 1,
        }
    }
}

/// The `p` quantile of sorted samples (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Open loop (`--rate` for `--seconds`) or closed loop (`--n` requests by `--concurrency`
/// workers); the 2xx ids go to `--ids`.
async fn load() -> anyhow::Result<()> {
    let url = need("--url")?;
    let run = arg("--run").unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let client = client(Duration::from_secs(num("--timeout-secs", 10) as u64));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let started_unix = unix_now();
    let total = if let Some(rate) = arg("--rate").and_then(|r| r.parse::<usize>().ok()) {
        let total = rate.max(1) * num("--seconds", 10);
        let mut tasks = FuturesUnordered::new();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(due.into()).await;
            let (client, url, run, tally) =
                (client.clone(), url.clone(), run.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let (a, took) = post(&client, &url, &run, i).await;
                tally.lock().expect("tally").add(i, a, took);
            }));
            while let Some(Some(_)) = futures_util::FutureExt::now_or_never(tasks.next()) {}
        }
        while tasks.next().await.is_some() {}
        total
    } else {
        let n = num("--n", 20000);
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..num("--concurrency", 64))
            .map(|_| {
                let (client, url, run) = (client.clone(), url.clone(), run.clone());
                let (next, tally) = (next.clone(), tally.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return;
                        }
                        let (a, took) = post(&client, &url, &run, i).await;
                        tally.lock().expect("tally").add(i, a, took);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await?;
        }
        n
    };
    let secs = started.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *tally.lock().expect("tally"));
    if let Some(path) = arg("--ids") {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for i in &t.ok {
            writeln!(f, "{run}-{i}")?;
        }
        f.flush()?;
    }
    t.latencies_ms.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"mode": "load", "run": run, "started_unix": started_unix, "sent": total, "ok": t.ok.len(), "statuses": t.statuses,
               "conn_errors": t.conn_errors, "seconds": secs, "ok_per_s": t.ok.len() as f64 / secs,
               "p50_ms": percentile(&t.latencies_ms, 0.5), "p99_ms": percentile(&t.latencies_ms, 0.99)})
    );
    Ok(())
}

/// Drain `--queue` (until nothing arrives for `--quiet-secs`) and compare what arrived with the
/// ids in `--ids` (one per line): lost = answered 2xx but never arrived.
async fn count() -> anyhow::Result<()> {
    let (amqp, queue) = (need("--amqp")?, need("--queue")?);
    let accepted: HashSet<String> = std::fs::read_to_string(need("--ids")?)?
        .lines()
        .map(str::to_owned)
        .collect();
    let quiet = Duration::from_secs(num("--quiet-secs", 3) as u64);
    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "faultbench-count".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_unix = f64::NAN;
    let mut first = true;
    loop {
        // The first message may take a while (a restarted postbox drains its outbox).
        let wait = if first {
            quiet.max(Duration::from_secs(30))
        } else {
            quiet
        };
        let Ok(Some(Ok(d))) = tokio::time::timeout(wait, consumer.next()).await else {
            break;
        };
        first = false;
        last_unix = unix_now();
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        *seen.entry(id).or_default() += 1;
        d.ack(BasicAckOptions::default()).await?;
    }
    let messages: usize = seen.values().sum();
    let lost = accepted.iter().filter(|id| !seen.contains_key(*id)).count();
    let unasked = seen.keys().filter(|id| !accepted.contains(*id)).count();
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    if let Some(x) = arg("--delete-exchange") {
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "counted".into()).await;
    println!(
        "{}",
        json!({"mode": "count", "accepted": accepted.len(), "arrived": seen.len(), "messages": messages,
               "duplicates": messages - seen.len(), "lost": lost, "arrived_without_2xx": unasked,
               "last_unix": last_unix})
    );
    Ok(())
}
