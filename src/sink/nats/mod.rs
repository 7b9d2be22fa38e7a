//! NATS JetStream, the second sink: events go to subjects `events.{type}.{version}` of a
//! stream (created if no stream captures them, never altered), as structured-mode CloudEvents
//! per the CloudEvents NATS binding, with a `Nats-Msg-Id` per `(source, id)` so that JetStream
//! drops the republish that follows a crash or a lost ack inside its duplicate window.

pub mod consumers;
pub mod publisher;
pub mod stream;

use std::time::Duration;

use anyhow::{Context, bail};

pub use consumers::{ConsumerSettings, Replayed};
pub use publisher::NatsLink;

use super::{Message, Sink};
use crate::secret::SecretUrl;

/// The NATS part of the configuration, validated.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated; user/password or token may be in the URL; `tls://`
    /// asks for TLS.
    pub url: SecretUrl,
    /// The stream events go to (created if no stream captures the subjects).
    pub stream: String,
    /// Subjects of that stream: `{routing_prefix}.>`.
    pub subjects: String,
    /// JetStream's duplicate window of a stream postbox creates.
    pub duplicate_window: Duration,
    /// Replicas of a stream postbox creates (1 on a single server).
    pub replicas: usize,
    /// Durable consumers (and their dead-letter streams) to declare at every connect.
    pub consumers: Vec<consumers::ConsumerSpec>,
}

impl NatsConfig {
    /// Where NATS is when nothing says otherwise.
    pub const DEFAULT_URL: &'static str = "nats://127.0.0.1:4222";
    /// The stream when nothing says otherwise.
    pub const DEFAULT_STREAM: &'static str = "EVENTS";

    /// Apply defaults and validate.
    pub fn new(
        url: Option<String>,
        stream: Option<String>,
        routing_prefix: &str,
        duplicate_window: Option<Duration>,
        replicas: Option<usize>,
        consumers: &[ConsumerSettings],
    ) -> anyhow::Result<NatsConfig> {
        let url = url.unwrap_or_else(|| Self::DEFAULT_URL.to_owned());
        for one in url.split(',') {
            let scheme = one.trim().split("://").next().unwrap_or_default();
            if !matches!(scheme, "nats" | "tls" | "ws" | "wss") || !one.contains("://") {
                bail!(
                    "nats_url must be nats://, tls:// (or ws://, wss://) URLs, comma-separated (got {})",
                    crate::secret::redact_url(one.trim())
                );
            }
        }
        let stream = stream.unwrap_or_else(|| Self::DEFAULT_STREAM.to_owned());
        check_stream_name("nats_stream", &stream)?;
        let duplicate_window = duplicate_window.unwrap_or(Duration::from_secs(120));
        if duplicate_window.is_zero() {
            bail!("nats_duplicate_window_secs must be at least 1");
        }
        let replicas = replicas.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            bail!("nats_replicas must be 1 to 5 (got {replicas})");
        }
        let subjects = format!("{routing_prefix}.>");
        let consumers =
            consumers::specs(consumers, &stream, routing_prefix).context("nats_consumers")?;
        Ok(NatsConfig {
            url: SecretUrl::new(url),
            stream,
            subjects,
            duplicate_window,
            replicas,
            consumers,
        })
    }
}

/// Stream and consumer names: no spaces, `.`, `*`, `>`, path separators (they become parts of
/// subjects and of file names on the server).
pub fn check_stream_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !ok {
        bail!("{what} must be 1-64 characters of [A-Za-z0-9_-] (got `{name}`)");
    }
    Ok(())
}

/// Publishes to NATS JetStream.
pub struct NatsSink {
    cfg: NatsConfig,
    /// How long a publish may wait for its PubAck (the relay's confirm timeout).
    ack_timeout: Duration,
}

impl NatsSink {
    /// A sink for this configuration; PubAcks are awaited at most `ack_timeout`.
    pub fn new(cfg: NatsConfig, ack_timeout: Duration) -> NatsSink {
        NatsSink { cfg, ack_timeout }
    }
}

impl Sink for NatsSink {
    type Link = NatsLink;

    fn name(&self) -> &'static str {
        "NATS JetStream"
    }

    fn describe(&self) -> String {
        format!("{} stream `{}`", self.cfg.url, self.cfg.stream)
    }

    /// OpenTelemetry semantic conventions for messaging (NATS).
    fn span_attributes(&self, message: &Message) -> Vec<(&'static str, String)> {
        vec![
            ("messaging.system", "nats".to_owned()),
            ("messaging.destination.name", message.subject.clone()),
        ]
    }

    async fn connect(&self) -> anyhow::Result<NatsLink> {
        NatsLink::connect(&self.cfg, self.ack_timeout).await
    }
}

/// Connect and [`consumers::replay`] what `consumer` gave up on (at most `limit` messages).
pub async fn replay_dead(
    cfg: &NatsConfig,
    consumer: &str,
    limit: usize,
) -> anyhow::Result<Vec<Replayed>> {
    let link = NatsLink::connect(cfg, Duration::from_secs(10)).await?;
    let stream = stream::ensure(link.jetstream(), cfg).await?;
    let done = consumers::replay(link.jetstream(), &stream, consumer, limit).await;
    crate::sink::Link::close(link).await;
    done
}
