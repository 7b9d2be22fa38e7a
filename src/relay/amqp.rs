//! RabbitMQ side of the relay: one connection and one confirm-mode channel, publishing with
//! `mandatory`, persistent delivery and the CloudEvents AMQP/RabbitMQ binding's headers.
//!
//! lapin's automatic recovery is not used (lapin issue #450): when the connection breaks, the
//! relay drops this publisher and connects a new one.

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::{Map, Value};

use super::topology::Topology;
use crate::{
    outbox::Claimed,
    trace::{Child, SpanRecord, TraceParent, otlp::SpanSink},
};

/// Result of publishing one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Broker confirmed (ack, not returned).
    Confirmed,
    /// Failed attempt, with the reason shown as `last_error`.
    Failed(String),
}

/// A connected, confirm-mode publisher.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
    spans: Option<SpanSink>,
}

/// Longest wait for the TCP + AMQP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for declaring the consumer topology (quorum queues take a while to create).
const TOPOLOGY_TIMEOUT: Duration = Duration::from_secs(60);

impl Publisher {
    /// Connect, open a channel in confirm mode, declare the durable topic exchange and then the
    /// consumer topology (so no event is published before its queues exist). Publish spans of
    /// traced events go to `spans` when OTLP export is on.
    pub async fn connect(
        url: &str,
        exchange: &str,
        topology: &Topology,
        spans: Option<SpanSink>,
    ) -> anyhow::Result<Publisher> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("postbox {}", std::process::id())));
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
            spans,
        })
    }

    /// Whether connection and channel are still usable.
    pub fn is_usable(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Whether RabbitMQ has blocked publishing (`connection.blocked`: memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.conn.status().blocked()
    }

    /// A handle on the connection's state (blocked, connected), for watchers.
    pub fn connection_status(&self) -> lapin::ConnectionStatus {
        self.conn.status().clone()
    }

    /// Send every row without waiting for confirms; the returned [`Sent`] awaits them. Sending
    /// stops at the first channel error (the rest fail with it).
    pub async fn send(&self, rows: Vec<Claimed>) -> Sent {
        let mut outcomes = vec![None; rows.len()];
        let mut pending = Vec::with_capacity(rows.len());
        let traces: Vec<Option<PublishTrace>> = rows
            .iter()
            .map(|row| PublishTrace::start(row, &self.exchange, self.spans.is_some()))
            .collect();
        for (i, row) in rows.iter().enumerate() {
            // AMQP short strings hold 255 bytes; lapin panics beyond, so check first.
            let (Ok(exchange), Ok(routing_key), Some(props)) = (
                ShortString::try_new(self.exchange.as_str()),
                ShortString::try_new(row.routing_key.as_str()),
                properties(row, traces[i].as_ref().map(|t| &t.ctx)),
            ) else {
                outcomes[i] = Some(Outcome::Failed(
                    "invalid message: a name is longer than AMQP's 255-byte limit".to_owned(),
                ));
                continue;
            };
            let sent = self
                .channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &row.body,
                    props,
                )
                .await;
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(e) => {
                    let why = format!("publish failed: {e}");
                    for o in &mut outcomes[i..] {
                        *o = Some(Outcome::Failed(why.clone()));
                    }
                    break;
                }
            }
        }
        Sent {
            rows,
            outcomes,
            pending,
            exchange: self.exchange.clone(),
            sent_at: tokio::time::Instant::now(),
            traces,
            spans: self.spans.clone(),
            conn: self.connection_status(),
        }
    }

    /// Close the channel and the connection cleanly (AMQP `connection.close`).
    pub async fn close(self) {
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

/// A batch on the wire: its rows and their confirms to await.
pub struct Sent {
    /// The rows, in publish order.
    pub rows: Vec<Claimed>,
    outcomes: Vec<Option<Outcome>>,
    pending: Vec<(usize, PublisherConfirm)>,
    exchange: String,
    sent_at: tokio::time::Instant,
    /// Publish spans of the rows that carry a `traceparent`, by row.
    traces: Vec<Option<PublishTrace>>,
    spans: Option<SpanSink>,
    conn: lapin::ConnectionStatus,
}

impl Sent {
    /// Await every confirm, at most `timeout` after the batch was sent (not after the settler
    /// got to it: batches queue behind each other, and every row must be settled well within
    /// its lease), not counting time during which RabbitMQ blocked the connection: a blocked
    /// broker reads nothing, so its confirms cannot come, and that is a pause, not a failed
    /// attempt. One outcome per row, in order.
    ///
    /// A nack, a `basic.return` (unroutable, thanks to `mandatory`), a timeout or a connection
    /// error is a failed attempt; only an ack for a message that was not returned is success
    /// (AMQP 0-9-1 publisher confirms: the return precedes the ack).
    pub async fn confirm(self, timeout: Duration) -> (Vec<Claimed>, Vec<Outcome>) {
        const TICK: Duration = Duration::from_millis(100);
        let Sent {
            rows,
            mut outcomes,
            pending,
            exchange,
            sent_at,
            traces,
            spans,
            conn,
        } = self;
        let (idx, confirms): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let mut all = join_all(confirms);
        let mut waited = Duration::ZERO;
        let mut last = sent_at;
        let results = loop {
            match tokio::time::timeout(TICK, &mut all).await {
                Ok(results) => break Some(results),
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    if !conn.blocked() {
                        waited += now - last;
                    }
                    last = now;
                    if waited >= timeout {
                        break None;
                    }
                }
            }
        };
        match results {
            Some(results) => {
                for (i, r) in idx.into_iter().zip(results) {
                    outcomes[i] = Some(classify(r, &exchange, &rows[i].routing_key));
                }
            }
            None => {
                let why = format!("no confirm from RabbitMQ within {}s", timeout.as_secs());
                for i in idx {
                    outcomes[i] = Some(Outcome::Failed(why.clone()));
                }
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Failed("not sent".to_owned())))
            .collect();
        let end = SystemTime::now();
        for (trace, outcome) in traces.into_iter().zip(&outcomes) {
            if let Some(t) = trace {
                t.finish(outcome, end, spans.as_ref());
            }
        }
        (rows, outcomes)
    }
}

fn classify(r: lapin::Result<Confirmation>, exchange: &str, routing_key: &str) -> Outcome {
    match r {
        Ok(Confirmation::Ack(None)) => Outcome::Confirmed,
        Ok(Confirmation::Ack(Some(ret))) | Ok(Confirmation::Nack(Some(ret))) => {
            Outcome::Failed(format!(
                "returned by RabbitMQ: {} {} (no queue is bound to exchange `{exchange}` for routing key `{routing_key}`)",
                ret.reply_code, ret.reply_text
            ))
        }
        Ok(Confirmation::Nack(None)) => Outcome::Failed("nacked by RabbitMQ".to_owned()),
        Ok(Confirmation::NotRequested) => {
            Outcome::Failed("publisher confirms not enabled".to_owned())
        }
        Err(e) => Outcome::Failed(format!("connection lost before the confirm: {e}")),
    }
}

/// The publish of one traced event: a child span of the event's stored `traceparent`, as a
/// `tracing` span (`publish`, with the trace id, the parent's and its own span id) and, when
/// OTLP export is on and the trace is sampled, an exported span.
struct PublishTrace {
    ctx: Child,
    /// Sampled by the caller and exported.
    sampled: bool,
    trace_state: Option<String>,
    span: tracing::Span,
    start: SystemTime,
    attributes: Vec<(&'static str, String)>,
}

impl PublishTrace {
    /// `None` for a row without a (valid) `traceparent`. Attributes are only built when the
    /// span will be exported.
    fn start(row: &Claimed, exchange: &str, export: bool) -> Option<PublishTrace> {
        let parent = TraceParent::parse(row.traceparent.as_deref()?)?;
        let ctx = parent.child();
        let span = tracing::info_span!(
            "publish",
            trace_id = %ctx.trace_id,
            parent_span_id = %ctx.parent_id,
            span_id = %ctx.span_id,
            event_id = %row.event_id,
            routing_key = %row.routing_key,
        );
        let sampled = parent.sampled() && export;
        // OpenTelemetry semantic conventions for messaging (RabbitMQ) and CloudEvents.
        let attributes = if !sampled {
            Vec::new()
        } else {
            vec![
                ("messaging.system", "rabbitmq".to_owned()),
                ("messaging.operation.name", "publish".to_owned()),
                ("messaging.operation.type", "send".to_owned()),
                ("messaging.destination.name", exchange.to_owned()),
                (
                    "messaging.rabbitmq.destination.routing_key",
                    row.routing_key.clone(),
                ),
                ("messaging.message.id", row.event_id.clone()),
                ("cloudevents.event_id", row.event_id.clone()),
                ("cloudevents.event_type", row.ce_type.clone()),
            ]
        };
        Some(PublishTrace {
            sampled,
            ctx,
            trace_state: row.tracestate.clone(),
            span,
            start: SystemTime::now(),
            attributes,
        })
    }

    fn finish(self, outcome: &Outcome, end: SystemTime, sink: Option<&SpanSink>) {
        let error = match outcome {
            Outcome::Confirmed => {
                self.span.in_scope(|| tracing::debug!("published"));
                None
            }
            Outcome::Failed(e) => {
                self.span
                    .in_scope(|| tracing::debug!(error = %e, "publish failed"));
                Some(e.clone())
            }
        };
        if let (Some(sink), true) = (sink, self.sampled) {
            sink.record(SpanRecord {
                ctx: self.ctx,
                trace_state: self.trace_state,
                name: "publish",
                start: self.start,
                end,
                attributes: self.attributes,
                error,
            });
        }
    }
}

/// AMQP properties per the CloudEvents RabbitMQ binding: structured body, attributes copied
/// into `ce-*` headers so consumers can filter without parsing, plus the W3C trace context:
/// `traceparent` names the publish span (`trace`) as the parent of what the consumer does, and
/// `tracestate` is passed on unchanged. `None` if a value does not fit an AMQP short string.
fn properties(row: &Claimed, trace: Option<&Child>) -> Option<BasicProperties> {
    let mut headers = FieldTable::default();
    if let Ok(Value::Object(attrs)) = serde_json::from_str::<Value>(&row.attributes) {
        ce_headers(&attrs, &mut headers)?;
    }
    if let Some(child) = trace {
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(child.traceparent().into()),
        );
        if let Some(ts) = &row.tracestate {
            headers.insert(
                "tracestate".into(),
                AMQPValue::LongString(ts.as_str().into()),
            );
        }
    }
    let timestamp = u64::try_from(row.created_at / 1_000_000).unwrap_or(0);
    Some(
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/cloudevents+json".into())
            .with_message_id(ShortString::try_new(row.event_id.as_str()).ok()?)
            .with_type(ShortString::try_new(row.ce_type.as_str()).ok()?)
            .with_timestamp(timestamp)
            .with_app_id("postbox".into())
            .with_headers(headers),
    )
}

fn ce_headers(attrs: &Map<String, Value>, headers: &mut FieldTable) -> Option<()> {
    for (name, value) in attrs {
        // The binding carries every attribute as a string header (as the SDKs' binary mode
        // reads them back).
        let v = match value {
            Value::String(s) => AMQPValue::LongString(s.as_str().into()),
            Value::Bool(_) | Value::Number(_) => AMQPValue::LongString(value.to_string().into()),
            _ => continue,
        };
        headers.insert(ShortString::try_new(format!("ce-{name}")).ok()?, v);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_attributes_and_trace() {
        let row = Claimed {
            seq: 1,
            event_id: "e1".into(),
            ce_type: "order.paid".into(),
            routing_key: "events.order.paid.v1".into(),
            body: b"{}".to_vec(),
            attributes: r#"{"id":"e1","specversion":"1.0","n":3,"b":true}"#.into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("rojo=00f067aa0ba902b7".into()),
            attempts: 0,
            created_at: 1_700_000_000_000_000,
            partition: 0,
            lease: 0,
        };
        let trace = PublishTrace::start(&row, "events", true).unwrap();
        let p = properties(&row, Some(&trace.ctx)).unwrap();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        let h = p.headers().clone().unwrap();
        let h = h.inner();
        assert_eq!(h.get("ce-id"), Some(&AMQPValue::LongString("e1".into())));
        assert_eq!(h.get("ce-n"), Some(&AMQPValue::LongString("3".into())));
        assert_eq!(h.get("ce-b"), Some(&AMQPValue::LongString("true".into())));
        let tp = format!(
            "00-0af7651916cd43dd8448eb211c80319c-{}-01",
            trace.ctx.span_id
        );
        assert_eq!(
            h.get("traceparent"),
            Some(&AMQPValue::LongString(tp.into()))
        );
        assert_eq!(
            h.get("tracestate"),
            Some(&AMQPValue::LongString("rojo=00f067aa0ba902b7".into()))
        );
        assert_eq!(trace.ctx.parent_id, "b7ad6b7169203331");
    }
}
