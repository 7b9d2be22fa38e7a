//! RabbitMQ for tests: exchanges and durable queues removed when the test ends (also when it
//! fails), exclusive queues bound to an exchange and consumed, message properties, and what
//! arrived counted against what was accepted.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;

use super::{AMQP_URL, database::blocking_cleanup, unique};

/// A connection and a channel to the shared RabbitMQ.
pub async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running on 127.0.0.1:5672 (scripts/test.sh starts it)");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// The name of a test exchange, `test-{what}-…`, deleted from RabbitMQ when dropped. postbox
/// declares it (durable) when it connects; drop this after the apps that publish to it.
pub struct Exchange(String);

impl Exchange {
    /// A fresh name; nothing is declared yet.
    pub fn new(what: &str) -> Exchange {
        Exchange(unique(&format!("test-{what}")))
    }

    /// Own an existing name (deleted on drop).
    pub fn adopt(name: &str) -> Exchange {
        Exchange(name.to_owned())
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Exchange {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        delete_on_broker(Vec::new(), vec![self.0.clone()]);
    }
}

/// Durable queues and exchanges a test (or the postbox it runs) declares, deleted when this is
/// dropped.
#[derive(Default)]
pub struct Declared {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Declared {
    /// Nothing yet.
    pub fn new() -> Declared {
        Declared::default()
    }

    /// Delete this queue at the end.
    pub fn queue(&mut self, name: &str) -> &mut Declared {
        self.queues.push(name.to_owned());
        self
    }

    /// Delete this exchange at the end.
    pub fn exchange(&mut self, name: &str) -> &mut Declared {
        self.exchanges.push(name.to_owned());
        self
    }
}

impl Drop for Declared {
    fn drop(&mut self) {
        delete_on_broker(
            std::mem::take(&mut self.queues),
            std::mem::take(&mut self.exchanges),
        );
    }
}

/// Delete queues, then exchanges, on a connection of their own (deleting what does not exist
/// is not an error in RabbitMQ).
fn delete_on_broker(queues: Vec<String>, exchanges: Vec<String>) {
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    let what = format!("delete queues {queues:?} and exchanges {exchanges:?}");
    blocking_cleanup(&what, async move {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
        let mut failed = Vec::new();
        // A failed delete closes its channel: one channel per delete.
        for q in &queues {
            let ch = conn.create_channel().await?;
            if let Err(e) = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                failed.push(format!("queue {q}: {e}"));
            }
        }
        for x in &exchanges {
            let ch = conn.create_channel().await?;
            if let Err(e) = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await
            {
                failed.push(format!("exchange {x}: {e}"));
            }
        }
        let _ = conn.close(200, "cleaned up".into()).await;
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
        Ok(())
    });
}

/// A consumer on `queue` (messages are not acked for you).
pub async fn consumer(ch: &Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        unique("test-consumer").as_str().into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

/// The consumer's next message (not acked), or None after `timeout`.
pub async fn next_unacked(c: &mut lapin::Consumer, timeout: Duration) -> Option<Delivery> {
    match tokio::time::timeout(timeout, c.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        _ => None,
    }
}

/// An exclusive queue bound to `exchange` that makes RabbitMQ nack every publish routed to it
/// (`x-max-length=0`, `x-overflow=reject-publish`). Returns the connection that owns it.
pub async fn rejecting_queue(exchange: &str, binding: &str) -> (Connection, Channel, String) {
    let (conn, ch) = channel().await;
    let name = unique("test-reject");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("queue_declare");
    ch.queue_bind(
        name.as_str().into(),
        exchange.into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue_bind");
    (conn, ch, name)
}

/// A real exclusive queue bound to an exchange, consumed with lapin (removed by RabbitMQ when
/// its connection closes).
pub struct TestQueue {
    pub name: String,
    conn: Connection,
    consumer: lapin::Consumer,
}

impl TestQueue {
    /// Declare the (durable topic) exchange too, so binding works before postbox declares it.
    /// The exchange belongs to whoever made its name (an [`Exchange`] or a `TestApp`).
    pub async fn bind(exchange: &str, binding: &str) -> TestQueue {
        let (conn, ch) = channel().await;
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
        let name = unique("test-q");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue_declare");
        ch.queue_bind(
            name.as_str().into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
        let consumer = ch
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        TestQueue {
            name,
            conn,
            consumer,
        }
    }

    /// Consume an existing queue on the broker at `amqp_url` (e.g. a quorum queue postbox
    /// declared on a cluster node); the queue is left in place.
    pub async fn existing(amqp_url: &str, queue: &str) -> TestQueue {
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {amqp_url}: {e}"));
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_qos(1000, lapin::options::BasicQosOptions::default())
            .await
            .expect("basic_qos");
        let consumer = consumer(&ch, queue).await;
        TestQueue {
            name: queue.to_owned(),
            conn,
            consumer,
        }
    }

    /// Bind this (exclusive) queue to one more routing pattern.
    pub async fn also_bind(&self, exchange: &str, binding: &str) {
        let ch = self.conn.create_channel().await.expect("channel");
        ch.queue_bind(
            self.name.as_str().into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");
    }

    /// Next message (acked), or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Delivery> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await.expect("ack");
                Some(d)
            }
            _ => None,
        }
    }

    /// Every message arriving within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(d) = self.next(quiet).await {
            out.push(d);
        }
        out
    }

    /// Exactly `n` messages, each within `timeout` of the previous one (panics otherwise).
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(timeout).await {
                Some(d) => out.push(d),
                None => panic!(
                    "expected {n} messages on {}, got {} (none for {timeout:?})",
                    self.name,
                    out.len()
                ),
            }
        }
        out
    }

    /// The message ids of exactly `n` messages (see [`TestQueue::take`]).
    pub async fn take_ids(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        self.take(n, timeout).await.iter().map(message_id).collect()
    }

    /// Messages (by `message_id`) until every id in `want` has arrived or `within` has passed,
    /// then every further message arriving within `quiet` of the previous one.
    pub async fn collect(
        &mut self,
        want: &HashSet<String>,
        within: Duration,
        quiet: Duration,
    ) -> Arrivals {
        let started = Instant::now();
        let mut a = Arrivals {
            count: HashMap::new(),
            order: Vec::new(),
            missing: Vec::new(),
            all_at: None,
        };
        let deadline = started + within;
        let mut missing = want.len();
        if missing == 0 {
            a.all_at = Some(started);
        }
        while missing > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Some(d) = self
                .next((deadline - now).min(Duration::from_secs(1)))
                .await
                && a.record(message_id(&d))
                && want.contains(&message_id(&d))
            {
                missing -= 1;
                if missing == 0 {
                    a.all_at = Some(Instant::now());
                }
            }
        }
        for d in self.drain(quiet).await {
            a.record(message_id(&d));
        }
        let mut m: Vec<String> = want
            .iter()
            .filter(|id| !a.count.contains_key(*id))
            .cloned()
            .collect();
        m.sort();
        a.missing = m;
        a
    }
}

/// What arrived on a queue, by message id.
#[derive(Debug)]
pub struct Arrivals {
    /// How many times each id arrived.
    pub count: HashMap<String, usize>,
    /// Ids in the order of their first arrival.
    pub order: Vec<String>,
    /// Wanted ids that never arrived (sorted).
    pub missing: Vec<String>,
    /// When the last wanted id arrived.
    pub all_at: Option<Instant>,
}

impl Arrivals {
    /// The arrivals of `ids` (in arrival order), against the ids that were `wanted`.
    pub fn of(ids: impl IntoIterator<Item = String>, wanted: &HashSet<String>) -> Arrivals {
        let mut a = Arrivals {
            count: HashMap::new(),
            order: Vec::new(),
            missing: Vec::new(),
            all_at: None,
        };
        for id in ids {
            a.record(id);
        }
        a.missing = wanted
            .iter()
            .filter(|id| !a.count.contains_key(*id))
            .cloned()
            .collect();
        a.missing.sort();
        if a.missing.is_empty() {
            a.all_at = Some(Instant::now());
        }
        a
    }

    /// Count one arrival; true if it is the id's first.
    fn record(&mut self, id: String) -> bool {
        let n = self.count.entry(id.clone()).or_default();
        *n += 1;
        if *n == 1 {
            self.order.push(id);
            true
        } else {
            false
        }
    }

    /// Distinct ids.
    pub fn distinct(&self) -> usize {
        self.count.len()
    }

    /// Messages.
    pub fn messages(&self) -> usize {
        self.count.values().sum()
    }

    /// Messages beyond the first of each id.
    pub fn duplicates(&self) -> usize {
        self.messages() - self.distinct()
    }

    /// Ids that arrived without having been accepted.
    pub fn not_in(&self, accepted: &HashSet<String>) -> usize {
        self.count
            .keys()
            .filter(|id| !accepted.contains(*id))
            .count()
    }

    /// Panic if any message is not one of this test's (its id does not start with `prefix`).
    #[track_caller]
    pub fn assert_all_from(&self, prefix: &str) {
        let foreign: Vec<&String> = self
            .count
            .keys()
            .filter(|id| !id.starts_with(prefix))
            .take(5)
            .collect();
        assert!(
            foreign.is_empty(),
            "messages that were never sent: {foreign:?}"
        );
    }

    /// Panic if a wanted id never arrived; `context` (e.g. a log tail) is printed with it.
    #[track_caller]
    pub fn assert_none_missing(&self, context: &str) {
        assert!(
            self.missing.is_empty(),
            "{} ids answered 202 never arrived, e.g. {:?}\n{context}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(10)],
        );
    }
}

/// The `message_id` property of an AMQP message.
pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

/// The body of an AMQP message as JSON.
#[track_caller]
pub fn body_json(d: &Delivery) -> Value {
    serde_json::from_slice(&d.data).expect("message body is JSON")
}

/// Header value of an AMQP message as a string.
pub fn header_str(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}
