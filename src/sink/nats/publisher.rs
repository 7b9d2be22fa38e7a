//! The NATS link: one client and a JetStream context; every message is published with its
//! headers and a `Nats-Msg-Id`, many at once, and the PubAcks are awaited per batch.

use std::time::Duration;

use async_nats::{
    ConnectOptions, HeaderMap, ServerAddr,
    connection::State,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishErrorKind},
        message::PublishMessage as Publish,
    },
};
use bytes::Bytes;
use futures_util::future::join_all;
use sha2::{Digest, Sha256};

use super::NatsConfig;
use crate::sink::{Link, LinkState, Message, Outcome, Pending};

/// Longest wait for the TCP + NATS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for declaring the stream and consumers.
const TOPOLOGY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected JetStream publisher.
pub struct NatsLink {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl NatsLink {
    /// Connect, then make sure a stream captures the subjects and declare the consumers, so
    /// that nothing is published before its destinations exist.
    pub async fn connect(cfg: &NatsConfig, ack_timeout: Duration) -> anyhow::Result<NatsLink> {
        let addrs = cfg
            .url
            .expose()
            .split(',')
            .map(|u| u.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("nats_url: {e}"))?;
        let connecting = ConnectOptions::new()
            .name(format!("postbox {}", std::process::id()))
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(addrs);
        let client = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting)
            .await
            .map_err(|_| anyhow::anyhow!("timed out connecting to NATS"))?
            .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(ack_timeout)
            .ack_timeout(ack_timeout)
            .build(client.clone());
        let declared = tokio::time::timeout(TOPOLOGY_TIMEOUT, async {
            let stream = super::stream::ensure(&js, cfg).await?;
            super::consumers::declare(&js, &stream, &cfg.consumers).await
        })
        .await;
        let failed = match declared {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(anyhow::anyhow!(
                "timed out declaring the JetStream stream and consumers"
            )),
        };
        if let Some(e) = failed {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
            return Err(e);
        }
        Ok(NatsLink { client, js })
    }
}

impl NatsLink {
    /// The JetStream context (for operator commands).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

impl Link for NatsLink {
    type Pending = Acks;

    fn state(&self) -> LinkState {
        match self.client.connection_state() {
            State::Connected => LinkState::Usable,
            State::Pending | State::Disconnected => {
                LinkState::Broken("connection to NATS lost".to_owned())
            }
        }
    }

    /// Publish every message without waiting for its PubAck (the returned [`Acks`] awaits
    /// them). A failure to hand a message to the client stops the batch: the rest fail with it.
    async fn send(&self, batch: Vec<Message>) -> Acks {
        let mut outcomes = vec![None; batch.len()];
        let mut pending = Vec::with_capacity(batch.len());
        let mut subjects = Vec::with_capacity(batch.len());
        for (i, msg) in batch.into_iter().enumerate() {
            let publish = Publish::build()
                .payload(Bytes::from(msg.body))
                .headers(headers(&msg.attributes, &msg.traceparent, &msg.tracestate))
                .message_id(message_id(&msg.source, &msg.id));
            match self.js.send_publish(msg.subject.clone(), publish).await {
                Ok(ack) => pending.push((i, ack)),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    outcomes[i] = Some(Outcome::Invalid(format!(
                        "invalid message: larger than the NATS server's max_payload ({e})"
                    )));
                }
                Err(e) => {
                    // The client could not take it (closed, or no answer in time): the link is
                    // not usable; this message and the rest of the batch are not sent.
                    for o in outcomes.iter_mut().skip(i) {
                        *o = Some(Outcome::ConnectionLost(format!("publish failed: {e}")));
                    }
                    subjects.push(msg.subject);
                    break;
                }
            }
            subjects.push(msg.subject);
        }
        Acks {
            subjects,
            outcomes,
            pending,
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.drain()).await;
    }
}

/// PubAcks still to come for a sent batch.
pub struct Acks {
    subjects: Vec<String>,
    outcomes: Vec<Option<Outcome>>,
    pending: Vec<(usize, PublishAckFuture)>,
}

impl Pending for Acks {
    /// Await every PubAck, at most `timeout` in all. A PubAck with `duplicate: true` means
    /// JetStream already stored the message inside its duplicate window: delivered.
    async fn outcomes(self, timeout: Duration) -> Vec<Outcome> {
        let Acks {
            subjects,
            mut outcomes,
            pending,
        } = self;
        let (idx, acks): (Vec<usize>, Vec<PublishAckFuture>) = pending.into_iter().unzip();
        let all = join_all(acks.into_iter().map(std::future::IntoFuture::into_future));
        match tokio::time::timeout(timeout, all).await {
            Ok(results) => {
                for (i, r) in idx.into_iter().zip(results) {
                    let subject = subjects.get(i).map(String::as_str).unwrap_or_default();
                    outcomes[i] = Some(match r {
                        Ok(ack) if ack.duplicate => Outcome::Duplicate,
                        Ok(_) => Outcome::Confirmed,
                        Err(e) => classify(e.kind(), &e.to_string(), subject),
                    });
                }
            }
            Err(_) => {
                let why = format!("no PubAck from JetStream within {}s", timeout.as_secs());
                for i in idx {
                    outcomes[i] = Some(Outcome::TimedOut(why.clone()));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::ConnectionLost("not sent".to_owned())))
            .collect()
    }
}

fn classify(kind: PublishErrorKind, error: &str, subject: &str) -> Outcome {
    match kind {
        PublishErrorKind::StreamNotFound => Outcome::Unroutable(format!(
            "no JetStream stream captures subject `{subject}` (no responders)"
        )),
        PublishErrorKind::TimedOut => {
            Outcome::TimedOut(format!("no PubAck from JetStream: {error}"))
        }
        PublishErrorKind::BrokenPipe => {
            Outcome::ConnectionLost(format!("connection lost before the PubAck: {error}"))
        }
        PublishErrorKind::MaxPayloadExceeded => {
            Outcome::Invalid(format!("invalid message: {error}"))
        }
        _ => Outcome::Rejected(format!("refused by JetStream: {error}")),
    }
}

/// The `Nats-Msg-Id` of an event: stable across republishes and unique per `(source, id)`
/// (ids are unique per source only), so JetStream deduplicates exactly the republishes. A hex
/// SHA-256 keeps any source and id within header rules.
pub fn message_id(source: &str, id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    // (Not `hex::encode`, which builds the string a `char` at a time: a third of this function.)
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Headers per the CloudEvents NATS binding (structured mode): `content-type`, every attribute
/// as a `ce-*` header so consumers can filter without parsing, and the W3C trace context.
fn headers(
    attributes: &str,
    traceparent: &Option<String>,
    tracestate: &Option<String>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/cloudevents+json");
    for (name, value) in crate::sink::attributes::header_values(attributes) {
        // Header values are one line; attributes were validated, but never let a line break
        // through.
        if !value.contains(['\r', '\n']) {
            h.insert(
                crate::sink::attributes::header_name(&name),
                value.into_owned(),
            );
        }
    }
    if let Some(tp) = traceparent {
        h.insert("traceparent", tp.as_str());
        if let Some(ts) = tracestate {
            h.insert("tracestate", ts.as_str());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_per_source() {
        assert_eq!(message_id("/a", "1"), message_id("/a", "1"));
        assert_ne!(message_id("/a", "1"), message_id("/b", "1"));
        // No ambiguity from where the source ends.
        assert_ne!(message_id("/a", "b1"), message_id("/ab", "1"));
        assert_eq!(message_id("/a", "1").len(), 64);
        // The same ids as earlier versions gave (`hex::encode`): a republish after an upgrade
        // is still recognised within the duplicate window.
        assert_eq!(
            message_id("/a", "1"),
            hex::encode(Sha256::digest(b"/a\x001"))
        );
    }

    #[test]
    fn headers_follow_the_cloudevents_nats_binding() {
        let h = headers(
            r#"{"id":"e1","source":"/s","specversion":"1.0","type":"order.paid.v1","n":3}"#,
            &Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            &Some("rojo=1".into()),
        );
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
        assert_eq!(
            get("content-type").as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(get("ce-id").as_deref(), Some("e1"));
        assert_eq!(get("ce-type").as_deref(), Some("order.paid.v1"));
        assert_eq!(get("ce-n").as_deref(), Some("3"));
        assert_eq!(get("tracestate").as_deref(), Some("rojo=1"));
        assert!(get("traceparent").is_some());
    }

    #[test]
    fn failures_are_typed() {
        assert!(matches!(
            classify(PublishErrorKind::StreamNotFound, "no responders", "events.x.v1"),
            Outcome::Unroutable(m) if m.contains("events.x.v1")
        ));
        assert!(classify(PublishErrorKind::TimedOut, "t", "s").breaks_link());
        assert!(classify(PublishErrorKind::BrokenPipe, "b", "s").breaks_link());
        assert!(matches!(
            classify(PublishErrorKind::Other, "maximum messages exceeded", "s"),
            Outcome::Rejected(_)
        ));
    }
}
