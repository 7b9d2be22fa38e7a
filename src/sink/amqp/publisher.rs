//! The RabbitMQ link: one connection and one confirm-mode channel, publishing with `mandatory`,
//! persistent delivery and the CloudEvents AMQP/RabbitMQ binding's headers.
//!
//! lapin's automatic recovery is not used (lapin issue #450): when the connection breaks, the
//! relay drops this publisher and connects a new one. It does the same after a nack: measured
//! on a RabbitMQ 3.10 cluster, a channel opened on a surviving node while a quorum queue was
//! still electing its new leader nacked every later publish to that queue for as long as it
//! lived (about half of the failover runs), while a new channel's publishes were confirmed. The
//! nacked events are retried as usual; only the channel is not trusted again.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::{CeHeaders, nodes::Node, topology::Topology};
use crate::sink::{Link, LinkState, Message, Outcome, Pending};

/// A connected, confirm-mode publisher.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
    ce_headers: CeHeaders,
    /// `host:port` of the node it is connected to.
    node: String,
    /// RabbitMQ nacked a publish on this channel: reconnect before publishing more.
    nacked: Arc<AtomicBool>,
    /// The confirms this channel still owes and the returns not yet matched to a message.
    ledger: Arc<Mutex<Ledger>>,
}

/// Longest wait for the TCP + AMQP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for declaring the consumer topology (quorum queues take a while to create).
const TOPOLOGY_TIMEOUT: Duration = Duration::from_secs(60);

impl Publisher {
    /// Connect, open a channel in confirm mode, declare the durable topic exchange and then the
    /// consumer topology (so no event is published before its queues exist).
    pub async fn connect(
        node: &Node,
        exchange: &str,
        topology: &Topology,
    ) -> anyhow::Result<Publisher> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("postbox {}", std::process::id())));
        let url = node.url.expose();
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
            .await
            .map_err(|_| anyhow::anyhow!("timed out connecting to RabbitMQ"))??;
        let setup = async {
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channel
                .exchange_declare(
                    ShortString::from(exchange),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let _ = conn.close(200, "setup failed".into()).await;
                return Err(e.into());
            }
            Err(_) => {
                let _ = conn.close(200, "setup timed out".into()).await;
                anyhow::bail!("timed out setting up the RabbitMQ channel");
            }
        };
        if !topology.is_empty() {
            let declared =
                tokio::time::timeout(TOPOLOGY_TIMEOUT, topology.declare(&conn, exchange)).await;
            let failed = match declared {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.context("declaring the consumer topology")),
                Err(_) => Some(anyhow::anyhow!("timed out declaring the consumer topology")),
            };
            if let Some(e) = failed {
                let _ = conn.close(200, "topology failed".into()).await;
                return Err(e);
            }
        }
        Ok(Publisher {
            conn,
            channel,
            exchange: exchange.to_owned(),
            ce_headers: CeHeaders::All,
            node: node.addr.clone(),
            nacked: Arc::default(),
            ledger: Arc::default(),
        })
    }

    /// Copy these attributes into `ce-*` headers (all by default).
    pub fn with_ce_headers(mut self, ce_headers: CeHeaders) -> Publisher {
        self.ce_headers = ce_headers;
        self
    }

    /// Whether connection and channel are still usable.
    pub fn is_usable(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Whether RabbitMQ has blocked publishing (`connection.blocked`: memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.conn.status().blocked()
    }
}

impl Link for Publisher {
    type Pending = Sent;

    fn state(&self) -> LinkState {
        if !self.is_usable() {
            LinkState::Broken("connection to RabbitMQ lost".to_owned())
        } else if self.nacked.load(Ordering::Relaxed) {
            LinkState::Broken(format!(
                "RabbitMQ ({}) nacked a publish; opening a new channel",
                self.node
            ))
        } else if self.is_blocked() {
            LinkState::Blocked
        } else {
            LinkState::Usable
        }
    }

    fn peer(&self) -> Option<String> {
        Some(self.node.clone())
    }

    /// Send every message without waiting for confirms; the returned [`Sent`] awaits them.
    /// Sending stops at the first channel error (the rest fail with it).
    async fn send(&self, batch: Vec<Message>) -> Sent {
        let mut outcomes = vec![None; batch.len()];
        let mut pending = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            // AMQP short strings hold 255 bytes; lapin panics beyond, so check first.
            let (Ok(exchange), Ok(routing_key), Some(props)) = (
                ShortString::try_new(self.exchange.as_str()),
                ShortString::try_new(msg.subject.as_str()),
                properties(msg, &self.ce_headers),
            ) else {
                outcomes[i] = Some(Outcome::Invalid(
                    "invalid message: a name is longer than AMQP's 255-byte limit".to_owned(),
                ));
                continue;
            };
            // Numbered before its frames go out: an ack may come back (carrying another
            // message's return) before `basic_publish` returns its confirm.
            let publishing = Publishing::begin(&self.ledger);
            let sent = self
                .channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &msg.body,
                    props,
                )
                .await;
            match sent {
                Ok(confirm) => pending.push((i, publishing.owe(confirm))),
                Err(e) => {
                    let why = format!("publish failed: {e}");
                    for o in &mut outcomes[i..] {
                        *o = Some(Outcome::ConnectionLost(why.clone()));
                    }
                    break;
                }
            }
        }
        Sent {
            messages: batch,
            outcomes,
            pending,
            ledger: self.ledger.clone(),
            exchange: self.exchange.clone(),
            sent_at: tokio::time::Instant::now(),
            conn: self.conn.status().clone(),
            nacked: self.nacked.clone(),
        }
    }

    /// Close the channel and the connection cleanly (AMQP `connection.close`).
    async fn close(self) {
        let bye = async {
            let _ = self
                .channel
                .close(200, "postbox shutting down".into())
                .await;
            let _ = self.conn.close(200, "postbox shutting down".into()).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), bye).await;
    }
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    // The ledger is consistent between statements; a panic elsewhere must not stop publishing.
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every confirm a channel still owes, by publish number, and the returns lapin handed over.
///
/// RabbitMQ sends a `basic.return` before the ack of the message it returns, but it does not
/// say which delivery tag it is for, and lapin gives it to the first confirm the next ack
/// resolves: with a multiple ack (`multiple=true`, which RabbitMQ sends for runs of tags)
/// that is any tag the ack covers, in hash-map order, possibly a message of another batch on
/// the same channel, even one whose `basic_publish` has not returned yet. So postbox matches
/// a return to its message by what the return carries (routing key and body; the body is the
/// structured CloudEvent, unique per event), and settles a batch only once its own confirms
/// are resolved, no publish is between its frames and its confirm, and every other confirm
/// has been polled once more: the ack that carries a return is resolved no later than the ack
/// of the returned message, so by then the return is in `returns`.
#[derive(Default)]
struct Ledger {
    /// Number of the next publish on this channel.
    next: u64,
    /// Publishes whose frames may be on the wire but whose confirm is not in `waiting` yet.
    publishing: usize,
    /// The task settling a batch, waiting for `publishing` to reach zero.
    settler: Option<Waker>,
    /// Confirms not resolved yet.
    waiting: BTreeMap<u64, PublisherConfirm>,
    /// What resolved confirms said, until their batch takes it.
    resolved: HashMap<u64, Verdict>,
    /// Publishes of a batch that stopped waiting (a timeout): still polled, for the returns
    /// their acks may carry for other messages, but nobody takes their verdict.
    orphans: HashSet<u64>,
    /// Returns not yet matched to a message, oldest first.
    returns: VecDeque<Returned>,
}

/// What the broker said of one publish, without the return lapin may have attached to it.
#[derive(Debug)]
enum Verdict {
    Ack,
    Nack,
    NotRequested,
    Lost(String),
}

/// A `basic.return`: what identifies the message, and why RabbitMQ returned it.
struct Returned {
    routing_key: String,
    body: Vec<u8>,
    reply: String,
}

/// Unmatched returns kept at most (one whose message's verdict was a lost connection is never
/// matched; the channel is replaced then anyway).
const MAX_UNMATCHED_RETURNS: usize = 4096;

/// One publish under way: numbered in the ledger before its frames are sent, counted in
/// `publishing` until its confirm is in the ledger or the publish failed (or was dropped).
struct Publishing<'a> {
    ledger: &'a Mutex<Ledger>,
    n: u64,
}

impl<'a> Publishing<'a> {
    fn begin(ledger: &'a Mutex<Ledger>) -> Publishing<'a> {
        let mut book = lock(ledger);
        let n = book.next;
        book.next += 1;
        book.publishing += 1;
        Publishing { ledger, n }
    }

    /// Its confirm, to await through the ledger; returns its number.
    fn owe(self, confirm: PublisherConfirm) -> u64 {
        lock(self.ledger).waiting.insert(self.n, confirm);
        self.n
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        let mut book = lock(self.ledger);
        book.publishing = book.publishing.saturating_sub(1);
        if book.publishing == 0
            && let Some(settler) = book.settler.take()
        {
            settler.wake();
        }
    }
}

impl Ledger {
    /// Poll the confirm of publish `n` if it is still waiting; whether it is resolved now.
    fn poll_one(&mut self, n: u64, cx: &mut Context<'_>) -> bool {
        let Some(confirm) = self.waiting.get_mut(&n) else {
            return true;
        };
        let Poll::Ready(result) = Pin::new(confirm).poll(cx) else {
            return false;
        };
        self.waiting.remove(&n);
        let verdict = match result {
            Ok(Confirmation::Ack(ret)) => {
                self.returned(ret);
                Verdict::Ack
            }
            Ok(Confirmation::Nack(ret)) => {
                self.returned(ret);
                Verdict::Nack
            }
            Ok(Confirmation::NotRequested) => Verdict::NotRequested,
            Err(e) => Verdict::Lost(format!("connection lost before the confirm: {e}")),
        };
        if !self.orphans.remove(&n) {
            self.resolved.insert(n, verdict);
        }
        true
    }

    fn returned(&mut self, ret: Option<lapin::message::BasicReturnMessage>) {
        let Some(ret) = ret else { return };
        if self.returns.len() >= MAX_UNMATCHED_RETURNS {
            self.returns.pop_front();
        }
        self.returns.push_back(Returned {
            routing_key: ret.delivery.routing_key.to_string(),
            body: ret.delivery.data,
            reply: format!("{} {}", ret.reply_code, ret.reply_text),
        });
    }

    /// Ready once every publish of `mine` (sorted, from `mine[*next]` on: the ones before are
    /// resolved) is resolved, no publish is under way, and every other waiting confirm was
    /// polled once more, so that a return another publish's confirm carries for one of `mine`
    /// is in `returns`. Only the first unresolved one of `mine` holds the waker.
    fn poll_batch(&mut self, mine: &[u64], next: &mut usize, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(&n) = mine.get(*next) {
            if !self.poll_one(n, cx) {
                return Poll::Pending;
            }
            *next += 1;
        }
        if self.publishing > 0 {
            self.settler = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let others: Vec<u64> = self.waiting.keys().copied().collect();
        for n in others {
            self.poll_one(n, cx);
        }
        Poll::Ready(())
    }

    /// The return of the message with this routing key and body, if RabbitMQ returned it.
    fn take_return(&mut self, routing_key: &str, body: &[u8]) -> Option<Returned> {
        let at = self
            .returns
            .iter()
            .position(|r| r.routing_key == routing_key && r.body == body)?;
        self.returns.remove(at)
    }

    /// A batch stopped waiting for these publishes: drop what was resolved, and keep polling
    /// the rest (their acks may carry returns of later batches) without keeping their verdicts.
    fn forget(&mut self, mine: &[u64]) {
        for n in mine {
            if self.resolved.remove(n).is_none() && self.waiting.contains_key(n) {
                self.orphans.insert(*n);
            }
        }
    }
}

/// A batch on the wire: its confirms to await.
pub struct Sent {
    /// What was sent, in publish order (to match returns and name routing keys in errors).
    messages: Vec<Message>,
    outcomes: Vec<Option<Outcome>>,
    /// Index in `messages` and publish number in the ledger of each message on the wire.
    pending: Vec<(usize, u64)>,
    ledger: Arc<Mutex<Ledger>>,
    exchange: String,
    sent_at: tokio::time::Instant,
    conn: lapin::ConnectionStatus,
    nacked: Arc<AtomicBool>,
}

impl Pending for Sent {
    /// Await every confirm, at most `timeout` after the batch was sent (not after the settler
    /// got to it: batches queue behind each other, and every row must be settled well within
    /// its lease), not counting time during which RabbitMQ blocked the connection: a blocked
    /// broker reads nothing, so its confirms cannot come, and that is a pause, not a failed
    /// attempt. One outcome per message, in order.
    ///
    /// A nack, a `basic.return` (unroutable, thanks to `mandatory`), a timeout or a connection
    /// error is a failed attempt; only an ack for a message that was not returned is success
    /// (AMQP 0-9-1 publisher confirms: the return precedes the ack; [`Ledger`] says how a
    /// return finds its message).
    async fn outcomes(self, timeout: Duration) -> Vec<Outcome> {
        const TICK: Duration = Duration::from_millis(100);
        let Sent {
            messages,
            mut outcomes,
            pending,
            ledger,
            exchange,
            sent_at,
            conn,
            nacked,
        } = self;
        let mine: Vec<u64> = pending.iter().map(|&(_, n)| n).collect();
        let mut next = 0;
        let mut all = std::future::poll_fn(|cx| lock(&ledger).poll_batch(&mine, &mut next, cx));
        let mut waited = Duration::ZERO;
        let mut last = sent_at;
        let answered = loop {
            match tokio::time::timeout(TICK, &mut all).await {
                Ok(()) => break true,
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    if !conn.blocked() {
                        waited += now - last;
                    }
                    last = now;
                    if waited >= timeout {
                        break false;
                    }
                }
            }
        };
        let mut book = lock(&ledger);
        if answered {
            for (i, n) in pending {
                let msg = &messages[i];
                let verdict = book.resolved.remove(&n);
                let returned = match verdict {
                    Some(Verdict::Ack | Verdict::Nack) => book.take_return(&msg.subject, &msg.body),
                    _ => None,
                };
                outcomes[i] = Some(match (verdict, returned) {
                    (_, Some(ret)) => Outcome::Unroutable(format!(
                        "returned by RabbitMQ: {} (no queue is bound to exchange `{exchange}` for routing key `{}`)",
                        ret.reply, msg.subject
                    )),
                    (Some(Verdict::Ack), None) => Outcome::Confirmed,
                    (Some(Verdict::Nack), None) => {
                        Outcome::Rejected("nacked by RabbitMQ".to_owned())
                    }
                    (Some(Verdict::NotRequested), None) => {
                        Outcome::Rejected("publisher confirms not enabled".to_owned())
                    }
                    (Some(Verdict::Lost(why)), None) => Outcome::ConnectionLost(why),
                    (None, None) => Outcome::ConnectionLost("no confirm recorded".to_owned()),
                });
            }
        } else {
            book.forget(&mine);
            let why = format!("no confirm from RabbitMQ within {}s", timeout.as_secs());
            for (i, _) in pending {
                outcomes[i] = Some(Outcome::TimedOut(why.clone()));
            }
        }
        drop(book);
        if outcomes
            .iter()
            .any(|o| matches!(o, Some(Outcome::Rejected(_))))
        {
            nacked.store(true, Ordering::Relaxed);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::ConnectionLost("not sent".to_owned())))
            .collect()
    }
}

/// AMQP properties per the CloudEvents RabbitMQ binding: structured body, attributes copied
/// into `ce-*` headers so consumers can filter without parsing, plus the W3C trace context:
/// `traceparent` names the publish span as the parent of what the consumer does, and
/// `tracestate` is passed on unchanged. `None` if a value does not fit an AMQP short string.
fn properties(msg: &Message, which: &CeHeaders) -> Option<BasicProperties> {
    let mut headers = FieldTable::default();
    if *which != CeHeaders::None {
        ce_headers(&msg.attributes, which, &mut headers)?;
    }
    if let Some(tp) = &msg.traceparent {
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(tp.as_str().into()),
        );
        if let Some(ts) = &msg.tracestate {
            headers.insert(
                "tracestate".into(),
                AMQPValue::LongString(ts.as_str().into()),
            );
        }
    }
    let timestamp = u64::try_from(msg.created_at / 1_000_000).unwrap_or(0);
    Some(
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/cloudevents+json".into())
            .with_message_id(ShortString::try_new(msg.id.as_str()).ok()?)
            .with_type(ShortString::try_new(msg.ce_type.as_str()).ok()?)
            .with_timestamp(timestamp)
            .with_app_id("postbox".into())
            .with_headers(headers),
    )
}

fn ce_headers(attributes: &str, which: &CeHeaders, headers: &mut FieldTable) -> Option<()> {
    let attrs = crate::sink::attributes::header_values(attributes);
    for (name, value) in attrs.into_iter().filter(|(n, _)| which.includes(n)) {
        // The binding carries every attribute as a string header (as the SDKs' binary mode
        // reads them back).
        headers.insert(
            ShortString::try_new(crate::sink::attributes::header_name(&name)).ok()?,
            AMQPValue::LongString(value.into_owned().into()),
        );
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_attributes_and_trace() {
        let msg = Message {
            id: "e1".into(),
            source: "/s".into(),
            ce_type: "order.paid".into(),
            subject: "events.order.paid.v1".into(),
            body: b"{}".to_vec(),
            attributes: r#"{"id":"e1","specversion":"1.0","n":3,"b":true}"#.into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("rojo=00f067aa0ba902b7".into()),
            created_at: 1_700_000_000_000_000,
        };
        let p = properties(&msg, &CeHeaders::All).unwrap();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("e1"));
        let h = p.headers().clone().unwrap();
        let h = h.inner();
        assert_eq!(h.get("ce-id"), Some(&AMQPValue::LongString("e1".into())));
        assert_eq!(h.get("ce-n"), Some(&AMQPValue::LongString("3".into())));
        assert_eq!(h.get("ce-b"), Some(&AMQPValue::LongString("true".into())));
        assert_eq!(
            h.get("traceparent"),
            Some(&AMQPValue::LongString(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()
            ))
        );
        assert_eq!(
            h.get("tracestate"),
            Some(&AMQPValue::LongString("rojo=00f067aa0ba902b7".into()))
        );
    }

    fn event(n: usize, subject: &str) -> Message {
        Message {
            id: format!("e{n}"),
            source: "/s".into(),
            ce_type: "order.paid".into(),
            subject: subject.into(),
            body: format!(r#"{{"id":"e{n}","source":"/s"}}"#).into_bytes(),
            attributes: "{}".into(),
            traceparent: None,
            tracestate: None,
            created_at: 1_700_000_000_000_000,
        }
    }

    /// RabbitMQ acks runs of tags at once (`multiple=true`), and lapin hands a return to any
    /// confirm such an ack resolves: with batches sent by one task while another awaits their
    /// confirms, as the relay does, every message must still get its own verdict. Against the
    /// real broker: one queue takes `routed.#`, every third message goes to a key nothing is
    /// bound to.
    #[tokio::test]
    async fn returns_find_their_own_message_among_pipelined_batches() {
        const BATCHES: usize = 12;
        const SIZE: usize = 150;
        let exchange = format!(
            "test-returns-{}-{}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let node = &crate::sink::amqp::nodes::parse(super::super::AmqpConfig::DEFAULT_URL)
            .expect("url")[0];
        let publisher = Publisher::connect(node, &exchange, &Topology::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672")
            .with_ce_headers(CeHeaders::None);
        let admin = publisher.conn.create_channel().await.expect("channel");
        let queue = admin
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue");
        admin
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "routed.#".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");

        let routed = |n: usize| !n.is_multiple_of(3);
        let publisher = Arc::new(publisher);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let sender = tokio::spawn({
            let publisher = publisher.clone();
            async move {
                for b in 0..BATCHES {
                    let batch = (b * SIZE..(b + 1) * SIZE)
                        .map(|n| event(n, if routed(n) { "routed.x" } else { "lost.x" }))
                        .collect();
                    if tx.send(publisher.send(batch).await).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut wrong = Vec::new();
        let mut b = 0;
        while let Some(sent) = rx.recv().await {
            for (k, outcome) in sent
                .outcomes(Duration::from_secs(30))
                .await
                .iter()
                .enumerate()
            {
                let n = b * SIZE + k;
                let right = match outcome {
                    Outcome::Confirmed => routed(n),
                    Outcome::Unroutable(why) => !routed(n) && why.contains("lost.x"),
                    _ => false,
                };
                if !right {
                    wrong.push(format!("e{n}: {outcome:?}"));
                }
            }
            b += 1;
        }
        sender.await.expect("sender");
        let queued = admin
            .queue_declare(
                queue.name().clone(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count() as usize);
        let _ = admin
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
        assert_eq!(b, BATCHES);
        assert!(
            wrong.is_empty(),
            "{} wrong verdicts: {wrong:?}",
            wrong.len()
        );
        {
            let book = lock(&publisher.ledger);
            assert!(book.returns.is_empty(), "every return matched");
            assert!(book.waiting.is_empty() && book.resolved.is_empty());
            assert_eq!(book.publishing, 0);
        }
        assert_eq!(
            queued.expect("passive declare"),
            (0..BATCHES * SIZE).filter(|&n| routed(n)).count()
        );
    }

    #[test]
    fn a_lean_shape_keeps_properties_and_trace_only() {
        let msg = Message {
            id: "e1".into(),
            source: "/s".into(),
            ce_type: "order.paid".into(),
            subject: "events.order.paid.v1".into(),
            body: b"{}".to_vec(),
            attributes: r#"{"id":"e1","source":"/s","type":"order.paid"}"#.into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
            created_at: 1_700_000_000_000_000,
        };
        let none = properties(&msg, &CeHeaders::None).unwrap();
        assert_eq!(none.message_id().as_ref().map(|m| m.as_str()), Some("e1"));
        assert_eq!(none.kind().as_ref().map(|m| m.as_str()), Some("order.paid"));
        let h = none.headers().clone().unwrap();
        assert_eq!(h.inner().len(), 1, "traceparent only");
        let some = properties(&msg, &"type,ce-source".parse().unwrap()).unwrap();
        let h = some.headers().clone().unwrap();
        let mut names: Vec<&str> = h.inner().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["ce-source", "ce-type", "traceparent"]);
    }
}
