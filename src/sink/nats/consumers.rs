//! Consumer topology for NATS, from the configuration file (`[[nats_consumers]]`, like the
//! RabbitMQ `[[queues]]`): durable pull consumers with a filter subject, `max_deliver`,
//! `ack_wait` and optional `backoff`, each with a dead-letter stream that captures the
//! consumer's `MAX_DELIVERIES` and `MSG_TERMINATED` advisories, so an operator can see what a
//! consumer gave up on and send it again ([`replay`]). Declared at every connect, before
//! anything is published; an existing consumer or stream is never changed.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{AckPolicy, pull},
    context::GetStreamErrorKind,
    message::PublishMessage as Publish,
    stream::{Config, StorageType},
};
use futures_util::TryStreamExt;
use serde::Deserialize;

/// One `[[nats_consumers]]` entry of the TOML file, as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Durable consumer name.
    pub name: String,
    /// Subjects it receives, e.g. `events.order.paid.>`. [default: every event]
    pub filter_subject: Option<String>,
    /// Deliveries before JetStream gives up on a message (and the advisory goes to the
    /// dead-letter stream). [default: 3]
    pub max_deliver: Option<i64>,
    /// Seconds JetStream waits for an ack before redelivering. [default: 30]
    pub ack_wait_secs: Option<u64>,
    /// Redelivery delays in seconds, one per delivery (JetStream `backoff`).
    pub backoff_secs: Option<Vec<u64>>,
    /// Declare the dead-letter stream `{stream}_{name}_DLQ`. [default: true]
    pub dead_letter: Option<bool>,
}

/// A validated consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Durable name.
    pub name: String,
    /// Filter subject.
    pub filter_subject: String,
    /// Deliveries before giving up.
    pub max_deliver: i64,
    /// Ack wait.
    pub ack_wait: Duration,
    /// Redelivery backoff.
    pub backoff: Vec<Duration>,
    /// Dead-letter stream, if any.
    pub dead_letter_stream: Option<String>,
}

/// The dead-letter stream of `consumer` on `stream`.
pub fn dead_letter_stream(stream: &str, consumer: &str) -> String {
    format!("{stream}_{consumer}_DLQ")
}

/// Validate the entries.
pub fn specs(
    settings: &[ConsumerSettings],
    stream: &str,
    routing_prefix: &str,
) -> anyhow::Result<Vec<ConsumerSpec>> {
    let mut out: Vec<ConsumerSpec> = Vec::with_capacity(settings.len());
    for s in settings {
        super::check_stream_name("nats_consumers.name", &s.name)?;
        if out.iter().any(|o| o.name == s.name) {
            bail!("the consumer name `{}` is used twice", s.name);
        }
        let filter_subject = s
            .filter_subject
            .clone()
            .unwrap_or_else(|| format!("{routing_prefix}.>"));
        if !super::stream::covers(&format!("{routing_prefix}.>"), &filter_subject) {
            bail!(
                "{}: filter_subject `{filter_subject}` is not one of postbox's subjects \
                 `{routing_prefix}.…`",
                s.name
            );
        }
        let max_deliver = s.max_deliver.unwrap_or(3);
        if max_deliver < 1 {
            bail!("{}: max_deliver must be at least 1", s.name);
        }
        let backoff: Vec<Duration> = s
            .backoff_secs
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        if backoff.len() as i64 > max_deliver {
            bail!(
                "{}: backoff has more steps than max_deliver allows deliveries",
                s.name
            );
        }
        out.push(ConsumerSpec {
            name: s.name.clone(),
            filter_subject,
            max_deliver,
            ack_wait: Duration::from_secs(s.ack_wait_secs.unwrap_or(30).max(1)),
            backoff,
            dead_letter_stream: s
                .dead_letter
                .unwrap_or(true)
                .then(|| dead_letter_stream(stream, &s.name)),
        });
    }
    Ok(out)
}

/// Declare every consumer on `stream` (the stream that holds the events) and its dead-letter
/// stream.
pub async fn declare(
    js: &jetstream::Context,
    stream: &str,
    consumers: &[ConsumerSpec],
) -> anyhow::Result<()> {
    if consumers.is_empty() {
        return Ok(());
    }
    let events = js
        .get_stream(stream)
        .await
        .with_context(|| format!("looking up the JetStream stream `{stream}`"))?;
    for c in consumers {
        if let Some(dlq) = &c.dead_letter_stream {
            dead_letter(js, dlq, stream, &c.name).await?;
        }
        match events.consumer_info(&c.name).await {
            Ok(info) => {
                let have = &info.config;
                let differs = have.filter_subject != c.filter_subject
                    || have.max_deliver != c.max_deliver
                    || have.ack_wait != c.ack_wait
                    || have.backoff != c.backoff;
                if differs {
                    bail!(
                        "the JetStream consumer `{}` on `{stream}` exists with other settings \
                         (filter_subject `{}`, max_deliver {}, ack_wait {:?}, backoff {:?}); \
                         postbox never changes an existing consumer: delete it to let postbox \
                         create it as configured, or change the configuration to match",
                        c.name,
                        have.filter_subject,
                        have.max_deliver,
                        have.ack_wait,
                        have.backoff
                    );
                }
            }
            Err(_) => {
                events
                    .create_consumer(pull::Config {
                        durable_name: Some(c.name.clone()),
                        filter_subject: c.filter_subject.clone(),
                        ack_policy: AckPolicy::Explicit,
                        max_deliver: c.max_deliver,
                        ack_wait: c.ack_wait,
                        backoff: c.backoff.clone(),
                        ..pull::Config::default()
                    })
                    .await
                    .with_context(|| {
                        format!("creating the JetStream consumer `{}` on `{stream}`", c.name)
                    })?;
                tracing::info!(consumer = %c.name, stream, max_deliver = c.max_deliver, "created the JetStream consumer");
            }
        }
    }
    Ok(())
}

/// The advisories JetStream publishes when `consumer` gives up on a message.
fn advisory_subjects(stream: &str, consumer: &str) -> Vec<String> {
    ["MAX_DELIVERIES", "MSG_TERMINATED"]
        .iter()
        .map(|kind| format!("$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.{consumer}"))
        .collect()
}

async fn dead_letter(
    js: &jetstream::Context,
    name: &str,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<()> {
    let subjects = advisory_subjects(stream, consumer);
    match js.get_stream(name).await {
        Ok(s) => {
            let have = &s.cached_info().config.subjects;
            if subjects
                .iter()
                .all(|w| have.iter().any(|h| super::stream::covers(h, w)))
            {
                return Ok(());
            }
            bail!(
                "the dead-letter stream `{name}` exists with subjects {have:?}, not {subjects:?}; \
                 postbox never changes an existing stream"
            );
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {}
        Err(e) => bail!("looking up the dead-letter stream `{name}`: {e}"),
    }
    js.create_stream(Config {
        name: name.to_owned(),
        subjects,
        storage: StorageType::File,
        ..Config::default()
    })
    .await
    .with_context(|| format!("creating the dead-letter stream `{name}`"))?;
    tracing::info!(stream = name, consumer, "created the dead-letter stream");
    Ok(())
}

/// One advisory of a dead-letter stream, as JetStream writes it.
#[derive(Debug, Deserialize)]
struct Advisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// What [`replay`] did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Sequence of the original message in the events stream.
    pub stream_seq: u64,
    /// Its subject.
    pub subject: String,
    /// Deliveries the consumer had made.
    pub deliveries: u64,
    /// Sequence of the republished copy.
    pub new_seq: u64,
}

/// Send again what `consumer` of `stream` gave up on: for each advisory in its dead-letter
/// stream (oldest first, at most `limit`), fetch the original message by its sequence,
/// publish it again to its subject with its headers and body (and a `Nats-Msg-Id` of its own,
/// so the duplicate window does not drop it), then delete the advisory. The consumer receives
/// the copy as a new message, with a fresh `max_deliver`.
pub async fn replay(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    limit: usize,
) -> anyhow::Result<Vec<Replayed>> {
    let dlq_name = dead_letter_stream(stream, consumer);
    let dlq = js
        .get_stream(&dlq_name)
        .await
        .with_context(|| format!("looking up the dead-letter stream `{dlq_name}`"))?;
    let events = js
        .get_stream(stream)
        .await
        .with_context(|| format!("looking up the JetStream stream `{stream}`"))?;
    let reader = dlq
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..pull::Config::default()
        })
        .await
        .context("reading the dead-letter stream")?;
    let pending = dlq.cached_info().state.messages;
    let mut done = Vec::new();
    if pending == 0 {
        return Ok(done);
    }
    let mut batch = reader
        .fetch()
        .max_messages(limit.min(usize::try_from(pending).unwrap_or(usize::MAX)))
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .context("reading the dead-letter stream")?;
    while let Some(advisory) = batch.try_next().await.map_err(|e| anyhow::anyhow!("{e}"))? {
        let dlq_seq = advisory
            .info()
            .map(|i| i.stream_sequence)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let a: Advisory = serde_json::from_slice(&advisory.payload)
            .with_context(|| format!("advisory {dlq_seq} of `{dlq_name}` is not one"))?;
        if a.stream != stream || a.consumer != consumer {
            continue;
        }
        let original = events
            .get_raw_message(a.stream_seq)
            .await
            .with_context(|| {
                format!(
                    "message {} of `{stream}` is gone (the stream's limits removed it); \
                     advisory {dlq_seq} kept",
                    a.stream_seq
                )
            })?;
        let mut headers = original.headers.clone();
        let id = headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        headers.insert("Nats-Msg-Id", format!("{id}:replay:{dlq_seq}").as_str());
        let ack = js
            .send_publish(
                original.subject.to_string(),
                Publish::build()
                    .payload(original.payload.clone())
                    .headers(headers),
            )
            .await
            .context("republishing")?
            .await
            .context("republishing")?;
        dlq.delete_message(dlq_seq)
            .await
            .with_context(|| format!("deleting advisory {dlq_seq} of `{dlq_name}`"))?;
        done.push(Replayed {
            stream_seq: a.stream_seq,
            subject: original.subject.to_string(),
            deliveries: a.deliveries,
            new_seq: ack.sequence,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ConsumerSettings {
        ConsumerSettings {
            name: name.into(),
            filter_subject: None,
            max_deliver: None,
            ack_wait_secs: None,
            backoff_secs: None,
            dead_letter: None,
        }
    }

    #[test]
    fn defaults_and_checks() {
        let s = specs(&[entry("billing")], "EVENTS", "events").unwrap();
        assert_eq!(s[0].filter_subject, "events.>");
        assert_eq!(s[0].max_deliver, 3);
        assert_eq!(
            s[0].dead_letter_stream.as_deref(),
            Some("EVENTS_billing_DLQ")
        );
        assert!(specs(&[entry("a"), entry("a")], "EVENTS", "events").is_err());
        assert!(specs(&[entry("a.b")], "EVENTS", "events").is_err());
        let mut other = entry("x");
        other.filter_subject = Some("orders.>".into());
        assert!(specs(&[other], "EVENTS", "events").is_err());
        let mut zero = entry("z");
        zero.max_deliver = Some(0);
        assert!(specs(&[zero], "EVENTS", "events").is_err());
        assert_eq!(
            advisory_subjects("EVENTS", "billing")[0],
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVENTS.billing"
        );
    }
}
