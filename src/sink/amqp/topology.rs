//! Consumer topology from configuration: queues, their bindings on the events exchange, and
//! optional dead-lettering, declared by the relay every time it connects, before it publishes.
//!
//! RabbitMQ then gives consumers in any language "retry N times, then the dead-letter queue"
//! by itself: a quorum queue with `x-delivery-limit` dead-letters a message that was returned
//! (nacked or rejected with requeue, or its consumer died) more than N times, and any queue
//! dead-letters messages rejected without requeue. postbox only declares; it never deletes a
//! queue or removes a binding.

use std::sync::{Arc, Mutex};

use anyhow::bail;
use lapin::{
    Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Deserialize;

/// One `[[queues]]` entry of the TOML file, as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Queue name.
    pub name: String,
    /// Binding patterns (AMQP topic patterns) on the events exchange.
    #[serde(default)]
    pub bindings: Vec<String>,
    /// `quorum` (default) or `classic`.
    #[serde(rename = "type")]
    pub queue_type: Option<String>,
    /// Quorum queues: returns (nack/reject with requeue, consumer gone) after which a message
    /// is dead-lettered (or dropped, without a dead-letter queue).
    pub delivery_limit: Option<u32>,
    /// Declare a dead-letter exchange and queue for this queue.
    pub dead_letter: Option<bool>,
    /// Dead-letter exchange name. [default: `{exchange}.dlx`]
    pub dead_letter_exchange: Option<String>,
    /// Dead-letter queue name. [default: `{name}.dlq`]
    pub dead_letter_queue: Option<String>,
}

/// Queue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, Raft-based; supports `x-delivery-limit`.
    Quorum,
    /// Classic (single-node) queue.
    Classic,
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Durable direct exchange (`x-dead-letter-exchange`).
    pub exchange: String,
    /// Durable queue bound to it with its own name as the routing key, which is also the
    /// queue's `x-dead-letter-routing-key` (so one exchange serves many queues).
    pub queue: String,
}

/// A validated queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Type.
    pub queue_type: QueueType,
    /// Binding patterns on the events exchange.
    pub bindings: Vec<String>,
    /// `x-delivery-limit` (quorum only).
    pub delivery_limit: Option<u32>,
    /// Dead-lettering, if configured.
    pub dead_letter: Option<DeadLetter>,
}

/// Every queue to declare, validated, plus the last declaration error (logged once per kind).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// The queues, in configuration order.
    pub queues: Vec<QueueSpec>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Topology {
    /// Validate the `[[queues]]` entries against the events exchange they bind to.
    pub fn from_settings(queues: &[QueueSettings], exchange: &str) -> anyhow::Result<Topology> {
        let mut specs: Vec<QueueSpec> = Vec::with_capacity(queues.len());
        for q in queues {
            specs.push(spec(q, exchange)?);
        }
        // Two entries with one name, or an entry that is another's dead-letter queue, would
        // fight over the queue's arguments. Several entries may share a dead-letter queue (each
        // routes to it by its name), if they agree on its type.
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[i + 1..] {
                if a.name == b.name {
                    bail!("queues: the queue name `{}` is used twice", a.name);
                }
                if let (Some(x), Some(y)) = (&a.dead_letter, &b.dead_letter)
                    && x.queue == y.queue
                    && a.queue_type != b.queue_type
                {
                    bail!(
                        "queues: `{}` and `{}` share the dead-letter queue `{}` but not their type",
                        a.name,
                        b.name,
                        x.queue
                    );
                }
            }
            for b in &specs {
                if let Some(dl) = &b.dead_letter
                    && dl.queue == a.name
                {
                    bail!(
                        "queues: `{}` is the dead-letter queue of `{}` and also a queue of its own",
                        a.name,
                        b.name
                    );
                }
            }
        }
        for s in &specs {
            if let Some(dl) = &s.dead_letter
                && dl.exchange == exchange
            {
                bail!(
                    "queues.{}: dead_letter_exchange must not be the events exchange `{exchange}`",
                    s.name
                );
            }
        }
        Ok(Topology {
            queues: specs,
            last_error: Arc::default(),
        })
    }

    /// Nothing to declare.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Declare every queue, binding and dead-letter exchange/queue on `conn`, each queue on a
    /// channel of its own (a refused declaration closes its channel). Errors name the queue and
    /// what to do; a conflict with an existing queue (`PRECONDITION_FAILED`: it was declared
    /// with other arguments or another type) is logged at `error` once, not at every retry.
    pub async fn declare(&self, conn: &Connection, exchange: &str) -> anyhow::Result<()> {
        for q in &self.queues {
            if let Err(e) = declare_queue(conn, exchange, q).await {
                let msg = explain(&q.name, &e);
                self.report(&msg);
                bail!(msg);
            }
        }
        if let Ok(mut last) = self.last_error.lock()
            && last.take().is_some()
        {
            tracing::info!(
                queues = self.queues.len(),
                "consumer topology declared; publishing resumes"
            );
        }
        Ok(())
    }

    fn report(&self, msg: &str) {
        let Ok(mut last) = self.last_error.lock() else {
            return;
        };
        if last.as_deref() != Some(msg) {
            tracing::error!(error = %msg, "cannot declare the consumer topology; the relay does not publish until it can (events wait in the outbox), retrying");
            *last = Some(msg.to_owned());
        }
    }
}

fn spec(q: &QueueSettings, exchange: &str) -> anyhow::Result<QueueSpec> {
    check_queue_name("queues.name", &q.name)?;
    let at = format!("queues.{}", q.name);
    let queue_type = match q.queue_type.as_deref().unwrap_or("quorum") {
        "quorum" => QueueType::Quorum,
        "classic" => QueueType::Classic,
        other => bail!("{at}.type must be `quorum` or `classic` (got `{other}`)"),
    };
    if q.bindings.is_empty() {
        bail!(
            "{at}.bindings: give at least one binding pattern, e.g. [\"events.order.paid.#\"] \
             (a queue postbox never routes to would stay empty)"
        );
    }
    for b in &q.bindings {
        check_binding(&format!("{at}.bindings"), b)?;
    }
    if let Some(limit) = q.delivery_limit {
        if queue_type != QueueType::Quorum {
            bail!(
                "{at}.delivery_limit needs type = \"quorum\" (classic queues have no x-delivery-limit)"
            );
        }
        if limit == 0 || i32::try_from(limit).is_err() {
            bail!("{at}.delivery_limit must be between 1 and 2147483647 (got {limit})");
        }
    }
    let named = q.dead_letter_exchange.is_some() || q.dead_letter_queue.is_some();
    let dead_letter = match (q.dead_letter, named) {
        (Some(false), true) => {
            bail!("{at}: dead_letter = false, but dead_letter_exchange or dead_letter_queue is set")
        }
        (Some(true), _) | (None, true) => {
            let dl = DeadLetter {
                exchange: q
                    .dead_letter_exchange
                    .clone()
                    .unwrap_or_else(|| format!("{exchange}.dlx")),
                queue: q
                    .dead_letter_queue
                    .clone()
                    .unwrap_or_else(|| format!("{}.dlq", q.name)),
            };
            check_queue_name(&format!("{at}.dead_letter_exchange"), &dl.exchange)?;
            check_queue_name(&format!("{at}.dead_letter_queue"), &dl.queue)?;
            Some(dl)
        }
        _ => None,
    };
    Ok(QueueSpec {
        name: q.name.clone(),
        queue_type,
        bindings: q.bindings.clone(),
        delivery_limit: q.delivery_limit,
        dead_letter,
    })
}

/// Queue and exchange names: 1-200 characters of `[A-Za-z0-9._:-]` (an AMQP short string holds
/// 255 bytes, and lapin panics beyond), not starting with `amq.` (reserved by RabbitMQ).
fn check_queue_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !ok {
        bail!("{what} must be 1-200 characters of [A-Za-z0-9._:-] (got `{name}`)");
    }
    if name.starts_with("amq.") {
        bail!("{what}: names starting with `amq.` are reserved by RabbitMQ (got `{name}`)");
    }
    Ok(())
}

/// Topic binding patterns: dot-separated words of `[A-Za-z0-9_-]`, or `*` (one word) or `#`
/// (zero or more words); at most 255 bytes.
fn check_binding(what: &str, pattern: &str) -> anyhow::Result<()> {
    let word_ok = |w: &str| {
        w == "*"
            || w == "#"
            || (!w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')))
    };
    if pattern.is_empty() || pattern.len() > 255 || !pattern.split('.').all(word_ok) {
        bail!(
            "{what}: `{pattern}` is not a topic pattern (dot-separated words of [A-Za-z0-9_-], `*` or `#`, at most 255 bytes)"
        );
    }
    Ok(())
}

/// The arguments of the queue's `queue.declare`.
fn queue_args(q: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if q.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    if let Some(limit) = q.delivery_limit {
        // Checked to fit an i32 in `spec`.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(limit).unwrap_or(i32::MAX)),
        );
    }
    if let Some(dl) = &q.dead_letter {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dl.exchange.as_str().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dl.queue.as_str().into()),
        );
    }
    args
}

/// The dead-letter queue has the same type as its queue, and no arguments of its own.
fn dlq_args(q: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if q.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}

/// A short string that was validated to fit (names ≤ 200 bytes, patterns ≤ 255).
fn short(s: &str) -> anyhow::Result<ShortString> {
    ShortString::try_new(s).map_err(|_| anyhow::anyhow!("`{s}` is longer than 255 bytes"))
}

async fn declare_queue(conn: &Connection, exchange: &str, q: &QueueSpec) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let result = async {
        if let Some(dl) = &q.dead_letter {
            ch.exchange_declare(
                short(&dl.exchange)?,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
            ch.queue_declare(short(&dl.queue)?, durable, dlq_args(q))
                .await?;
            ch.queue_bind(
                short(&dl.queue)?,
                short(&dl.exchange)?,
                short(&dl.queue)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        ch.queue_declare(short(&q.name)?, durable, queue_args(q))
            .await?;
        for pattern in &q.bindings {
            ch.queue_bind(
                short(&q.name)?,
                short(exchange)?,
                short(pattern)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if ch.status().connected() {
        let _ = ch.close(200, "topology declared".into()).await;
    }
    result
}

/// An operator-facing message: which queue, what RabbitMQ said, and what to do about it.
fn explain(queue: &str, e: &anyhow::Error) -> String {
    // The root cause is RabbitMQ's own reply (lapin's error repeats it in its chain).
    let text = e.root_cause().to_string();
    // lapin spells the reply code `PRECONDITION-FAILED`, RabbitMQ's reply text
    // `PRECONDITION_FAILED - inequivalent arg …`.
    if text.contains("PRECONDITION_FAILED") || text.contains("PRECONDITION-FAILED") {
        format!(
            "declaring queue `{queue}`: {text}; a queue or exchange of that name already exists \
             with other arguments or another type: delete it (after draining it) or change its \
             [[queues]] entry to match"
        )
    } else if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        format!(
            "declaring queue `{queue}`: {text}; the AMQP user lacks configure permission for it"
        )
    } else {
        format!("declaring queue `{queue}`: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> anyhow::Result<Topology> {
        #[derive(Deserialize)]
        struct File {
            queues: Vec<QueueSettings>,
        }
        let f: File = toml::from_str(toml_text)?;
        Topology::from_settings(&f.queues, "events")
    }

    #[test]
    fn quorum_queue_with_limit_and_dead_letter() {
        let t = parse(
            r#"
            [[queues]]
            name = "billing"
            bindings = ["events.order.paid.#", "events.*.refunded.v1"]
            delivery_limit = 3
            dead_letter = true
            "#,
        )
        .unwrap();
        let q = &t.queues[0];
        assert_eq!(q.queue_type, QueueType::Quorum);
        assert_eq!(
            q.dead_letter,
            Some(DeadLetter {
                exchange: "events.dlx".into(),
                queue: "billing.dlq".into()
            })
        );
        let args = queue_args(q);
        let a = args.inner();
        assert_eq!(
            a.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(a.get("x-delivery-limit"), Some(&AMQPValue::LongInt(3)));
        assert_eq!(
            a.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("events.dlx".into()))
        );
        assert_eq!(
            a.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("billing.dlq".into()))
        );
    }

    #[test]
    fn classic_queue_without_extras_has_no_arguments() {
        let t =
            parse("[[queues]]\nname = \"audit\"\ntype = \"classic\"\nbindings = [\"#\"]").unwrap();
        assert!(queue_args(&t.queues[0]).inner().is_empty());
        assert_eq!(t.queues[0].dead_letter, None);
    }

    #[test]
    fn naming_a_dead_letter_queue_enables_dead_lettering() {
        let t = parse(
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndead_letter_queue = \"a-failed\"\ndead_letter_exchange = \"dlx\"",
        )
        .unwrap();
        assert_eq!(
            t.queues[0].dead_letter,
            Some(DeadLetter {
                exchange: "dlx".into(),
                queue: "a-failed".into()
            })
        );
    }

    #[test]
    fn invalid_topologies_are_refused() {
        let long = "q".repeat(256);
        for bad in [
            "[[queues]]\nname = \"\"\nbindings = [\"#\"]".to_owned(),
            "[[queues]]\nname = \"a b\"\nbindings = [\"#\"]".to_owned(),
            "[[queues]]\nname = \"amq.mine\"\nbindings = [\"#\"]".to_owned(),
            format!("[[queues]]\nname = \"{long}\"\nbindings = [\"#\"]"),
            "[[queues]]\nname = \"a\"".to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"events..x\"]".to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"events.a*\"]".to_owned(),
            format!("[[queues]]\nname = \"a\"\nbindings = [\"{long}\"]"),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ntype = \"stream\"".to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ntype = \"classic\"\ndelivery_limit = 2"
                .to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndelivery_limit = 0".to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndead_letter = false\ndead_letter_queue = \"x\""
                .to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndead_letter_exchange = \"events\""
                .to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\n[[queues]]\nname = \"a\"\nbindings = [\"#\"]"
                .to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndead_letter = true\n[[queues]]\nname = \"a.dlq\"\nbindings = [\"#\"]"
                .to_owned(),
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndurable = false".to_owned(),
        ] {
            assert!(parse(&bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn queues_may_share_a_dead_letter_queue() {
        let t = parse(
            "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndead_letter_queue = \"all.dlq\"\n\
             [[queues]]\nname = \"b\"\nbindings = [\"#\"]\ndead_letter_queue = \"all.dlq\"",
        )
        .unwrap();
        assert_eq!(t.queues.len(), 2);
        assert!(
            parse(
                "[[queues]]\nname = \"a\"\nbindings = [\"#\"]\ndead_letter_queue = \"all.dlq\"\n\
                 [[queues]]\nname = \"b\"\ntype = \"classic\"\nbindings = [\"#\"]\ndead_letter_queue = \"all.dlq\"",
            )
            .is_err()
        );
    }

    #[test]
    fn conflicts_are_explained() {
        let e = anyhow::anyhow!(
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'billing'"
        );
        let msg = explain("billing", &e);
        assert!(
            msg.contains("`billing`") && msg.contains("delete it"),
            "{msg}"
        );
    }
}
