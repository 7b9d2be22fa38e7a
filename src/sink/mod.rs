//! The seam between the relay and a broker: a [`Sink`] connects (declaring its topology),
//! puts batches of messages on the wire, and tells, per message, what became of it, as a typed
//! [`Outcome`]. The relay engine (claim, pipeline, settle, retry, dead, order, partitions)
//! drives any sink; each broker is one folder here with its own config section.

pub mod amqp;
mod attributes;
pub mod nats;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use utoipa::ToSchema;

/// One event to publish, as the sink needs it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Event id (AMQP `message_id`).
    pub id: String,
    /// Event source; `(source, id)` is unique, which brokers with deduplication key on.
    pub source: String,
    /// CloudEvents `type` as sent (AMQP `type`).
    pub ce_type: String,
    /// Where it goes: the AMQP routing key, the NATS subject (`events.{type}.{version}`).
    pub subject: String,
    /// The structured-mode CloudEvent.
    pub body: Vec<u8>,
    /// CloudEvent attributes without `data` (a JSON object), for `ce-*` headers.
    pub attributes: String,
    /// W3C `traceparent` naming the publish span, when the event carries a trace context.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
    /// When postbox committed the event, µs since the epoch.
    pub created_at: i64,
}

/// What became of one published message. The relay decides retries from the variant alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker took responsibility for it (AMQP: acked and not returned; JetStream: a
    /// PubAck).
    Confirmed,
    /// The broker already had it (JetStream: a PubAck with `duplicate: true`): delivered.
    Duplicate,
    /// No destination would take it (AMQP `basic.return` of a `mandatory` message; JetStream:
    /// no stream captures the subject).
    Unroutable(String),
    /// The broker refused it (AMQP nack; a JetStream error PubAck).
    Rejected(String),
    /// No verdict within the confirm timeout.
    TimedOut(String),
    /// The connection broke before the verdict came.
    ConnectionLost(String),
    /// The message cannot be sent at all (a name over a protocol limit).
    Invalid(String),
}

impl Outcome {
    /// The broker has the message.
    pub fn delivered(&self) -> bool {
        matches!(self, Outcome::Confirmed | Outcome::Duplicate)
    }

    /// The link is no longer trustworthy: reconnect before publishing more.
    pub fn breaks_link(&self) -> bool {
        matches!(self, Outcome::TimedOut(_) | Outcome::ConnectionLost(_))
    }

    /// Label for `postbox_publish_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Duplicate => "duplicate",
            Outcome::Unroutable(_) => "returned",
            Outcome::Rejected(_) => "nacked",
            Outcome::TimedOut(_) => "timeout",
            Outcome::ConnectionLost(_) => "connection",
            Outcome::Invalid(_) => "invalid",
        }
    }

    /// Why it failed (the event's `last_error`); `None` when delivered.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Confirmed | Outcome::Duplicate => None,
            Outcome::Unroutable(e)
            | Outcome::Rejected(e)
            | Outcome::TimedOut(e)
            | Outcome::ConnectionLost(e)
            | Outcome::Invalid(e) => Some(e),
        }
    }
}

/// A broker the relay can publish to.
pub trait Sink: Send + Sync + 'static {
    /// A live connection.
    type Link: Link;
    /// The broker's name in logs: `RabbitMQ`, `NATS JetStream`.
    fn name(&self) -> &'static str;
    /// Where it publishes, safe to log (no credentials).
    fn describe(&self) -> String;
    /// OpenTelemetry `messaging.*` attributes of a publish span (system, destination).
    fn span_attributes(&self, message: &Message) -> Vec<(&'static str, String)>;
    /// Connect and declare the topology (exchange and queues; stream and consumers), so that
    /// nothing is published before its destinations exist. An error is one explained line.
    fn connect(&self) -> impl Future<Output = anyhow::Result<Self::Link>> + Send;
}

/// Whether a link can publish now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Publishing.
    Usable,
    /// Connected, but the broker holds publishers (RabbitMQ `connection.blocked`: a memory or
    /// disk alarm); a pause, not a failure.
    Blocked,
    /// Gone; the relay drops it and connects again.
    Broken(String),
}

/// A connection to the broker.
pub trait Link: Send + Sync + 'static {
    /// A batch on the wire, awaiting the broker's verdicts.
    type Pending: Pending;
    /// Whether it can publish now.
    fn state(&self) -> LinkState;
    /// The server it is connected to (`host:port`), for `/readyz` and logs, when the broker
    /// may be one of several (the nodes of a cluster).
    fn peer(&self) -> Option<String> {
        None
    }
    /// Put every message on the wire without waiting for verdicts (pipelining).
    fn send(&self, batch: Vec<Message>) -> impl Future<Output = Self::Pending> + Send;
    /// Close cleanly.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Verdicts still to come for a sent batch.
pub trait Pending: Send + 'static {
    /// Await them, at most `timeout` after the batch was sent (time during which the broker
    /// blocked the link not counted). One outcome per message, in order.
    fn outcomes(self, timeout: Duration) -> impl Future<Output = Vec<Outcome>> + Send;
}

/// What the relay knows about its broker, for `/readyz` and logs.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Not connected yet.
    Connecting,
    /// Connected; publishing.
    Connected,
    /// Connected, but the broker has blocked publishers (resource alarm).
    Blocked,
    /// Cannot connect (or declare the topology); events are buffered in the outbox.
    Unreachable,
}

/// The shared view of the broker's state (cheap to clone): the relay writes it, `/readyz` and
/// partition ownership read it.
#[derive(Clone)]
pub struct Health {
    name: &'static str,
    state: Arc<Mutex<Seen>>,
}

/// What [`Health`] holds.
struct Seen {
    state: SinkState,
    error: Option<String>,
    /// The server of the current link, while connected (or blocked).
    node: Option<String>,
}

impl Health {
    /// A broker called `name` (`RabbitMQ`), not connected yet.
    pub fn new(name: &'static str) -> Health {
        Health {
            name,
            state: Arc::new(Mutex::new(Seen {
                state: SinkState::Connecting,
                error: None,
                node: None,
            })),
        }
    }

    /// The broker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Current state and last error.
    pub fn get(&self) -> (SinkState, Option<String>) {
        self.state
            .lock()
            .map(|g| (g.state, g.error.clone()))
            .unwrap_or((SinkState::Unreachable, None))
    }

    /// The server the relay is connected to (`host:port`), while connected or blocked.
    pub fn node(&self) -> Option<String> {
        self.state.lock().ok().and_then(|g| g.node.clone())
    }

    /// A new link to `node` (its [`Link::peer`]): connected, and the node named in `/readyz`
    /// and in the log line.
    pub fn connected_to(&self, node: Option<String>) {
        if let Ok(mut g) = self.state.lock()
            && g.node != node
        {
            // Logged by `set` below when the state changes; a failover from one node straight
            // to another (no unreachable state between) is said here.
            if g.state == SinkState::Connected
                && let Some(n) = &node
            {
                tracing::info!(node = %n, "connected to {} node {n}", self.name);
            }
            g.node = node;
        }
        self.set(SinkState::Connected, None);
    }

    /// Record a state (logged when it changes).
    pub fn set(&self, state: SinkState, error: Option<String>) {
        let name = self.name;
        if let Ok(mut g) = self.state.lock() {
            if matches!(state, SinkState::Unreachable | SinkState::Connecting) {
                g.node = None;
            }
            if g.state != state {
                match (&state, &error) {
                    (SinkState::Unreachable, Some(e)) => {
                        tracing::warn!(error = %e, "{name} is unreachable; events stay in the outbox until it is back")
                    }
                    (SinkState::Blocked, _) => {
                        tracing::warn!("{name} blocked publishing (resource alarm); relay paused")
                    }
                    (SinkState::Connected, _) => match &g.node {
                        Some(n) => tracing::info!(node = %n, "connected to {name} node {n}"),
                        None => tracing::info!("connected to {name}"),
                    },
                    _ => {}
                }
            }
            metrics::gauge!("postbox_broker_connected").set(if state == SinkState::Connected {
                1.0
            } else {
                0.0
            });
            g.state = state;
            g.error = error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_say_what_the_relay_does() {
        assert!(Outcome::Confirmed.delivered() && Outcome::Duplicate.delivered());
        let lost = Outcome::ConnectionLost("x".into());
        assert!(!lost.delivered() && lost.breaks_link());
        assert_eq!(lost.reason(), "connection");
        let returned = Outcome::Unroutable("312 NO_ROUTE".into());
        assert!(!returned.breaks_link());
        assert_eq!(returned.reason(), "returned");
        assert_eq!(returned.error(), Some("312 NO_ROUTE"));
        assert_eq!(Outcome::TimedOut("t".into()).reason(), "timeout");
        assert_eq!(Outcome::Rejected("n".into()).reason(), "nacked");
        assert_eq!(Outcome::Duplicate.error(), None);
    }

    #[test]
    fn health_names_the_node_while_connected() {
        let h = Health::new("RabbitMQ");
        assert_eq!(h.node(), None);
        h.connected_to(Some("h1:5672".into()));
        assert_eq!(h.get().0, SinkState::Connected);
        assert_eq!(h.node().as_deref(), Some("h1:5672"));
        h.set(SinkState::Blocked, Some("alarm".into()));
        assert_eq!(h.node().as_deref(), Some("h1:5672"));
        h.set(SinkState::Unreachable, Some("gone".into()));
        assert_eq!(h.node(), None);
        h.connected_to(Some("h2:5672".into()));
        assert_eq!(h.node().as_deref(), Some("h2:5672"));
    }
}
