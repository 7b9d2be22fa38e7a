//! RabbitMQ, the first sink: a durable topic exchange, publisher confirms, `mandatory` and
//! persistent messages following the CloudEvents AMQP/RabbitMQ binding, and the consumer
//! topology (`[[queues]]`) declared at every connect. `amqp_url` may list the nodes of a
//! cluster: the sink connects to one that answers and fails over to another when it goes down.

pub mod nodes;
pub mod publisher;
pub mod topology;

use std::sync::Arc;

use anyhow::bail;

pub use nodes::Node;
pub use publisher::Publisher;
pub use topology::{QueueSettings, Topology};

use super::{Message, Sink};

/// Which CloudEvents attributes are copied into `ce-*` AMQP headers. The structured body has
/// them all; the headers are for consumers that route or filter without parsing (a headers
/// exchange, a broker-side filter). They cost the broker CPU per message (see the benchmark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CeHeaders {
    /// Every attribute (the CloudEvents AMQP binding's binary-mode header names).
    All,
    /// None: the body and the AMQP properties (`message_id`, `type`, `timestamp`,
    /// `content_type`) only.
    None,
    /// These attributes only (names without `ce-`, e.g. `type`, `source`).
    Only(Vec<String>),
}

impl std::str::FromStr for CeHeaders {
    type Err = anyhow::Error;

    /// `all`, `none`, or a comma-separated list of attribute names.
    fn from_str(s: &str) -> anyhow::Result<CeHeaders> {
        match s.trim() {
            "all" => Ok(CeHeaders::All),
            "none" | "" => Ok(CeHeaders::None),
            list => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|n| n.trim().trim_start_matches("ce-").to_owned())
                    .collect();
                if let Some(bad) = names.iter().find(|n| {
                    n.is_empty()
                        || n.len() > 20
                        || !n
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                }) {
                    bail!(
                        "amqp_ce_headers must be `all`, `none` or CloudEvents attribute names                          (lowercase letters and digits), comma-separated (got `{bad}`)"
                    );
                }
                Ok(CeHeaders::Only(names))
            }
        }
    }
}

impl CeHeaders {
    /// Whether the attribute `name` gets a header.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            CeHeaders::All => true,
            CeHeaders::None => false,
            CeHeaders::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The `[amqp]` part of the configuration, validated.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The broker's nodes, in the order they are first tried (one, or the nodes of a cluster).
    pub nodes: Vec<Node>,
    /// Durable topic exchange events are published to.
    pub exchange: String,
    /// Consumer queues to declare at every connect.
    pub topology: Topology,
    /// Attributes copied into `ce-*` headers.
    pub ce_headers: CeHeaders,
}

impl AmqpConfig {
    /// Where RabbitMQ is when nothing says otherwise.
    pub const DEFAULT_URL: &'static str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// The exchange when nothing says otherwise.
    pub const DEFAULT_EXCHANGE: &'static str = "events";

    /// Apply defaults and validate: `amqp_url` (one URL, or several separated by commas),
    /// `exchange` and the `[[queues]]` entries.
    pub fn new(
        url: Option<String>,
        exchange: Option<String>,
        queues: &[QueueSettings],
    ) -> anyhow::Result<AmqpConfig> {
        let url = url.unwrap_or_else(|| Self::DEFAULT_URL.to_owned());
        let nodes = nodes::parse(&url)?;
        let exchange = exchange.unwrap_or_else(|| Self::DEFAULT_EXCHANGE.to_owned());
        check_name("exchange", &exchange)?;
        let topology = Topology::from_settings(queues, &exchange)?;
        Ok(AmqpConfig {
            nodes,
            exchange,
            topology,
            ce_headers: CeHeaders::All,
        })
    }

    /// The nodes, passwords redacted, for logs.
    pub fn describe_nodes(&self) -> String {
        nodes::describe(&self.nodes)
    }

    /// Copy these attributes into `ce-*` headers.
    pub fn with_ce_headers(mut self, ce_headers: CeHeaders) -> AmqpConfig {
        self.ce_headers = ce_headers;
        self
    }
}

/// AMQP short strings are at most 255 bytes (prefix 100 + type 128 + version fit a routing
/// key); keep names to a safe character set so that no wildcard (`*`, `#`) can reach a routing
/// key.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !ok {
        bail!("{what} must be 1-100 characters of [A-Za-z0-9._:-] (got `{name}`)");
    }
    Ok(())
}

/// Publishes to RabbitMQ.
pub struct AmqpSink {
    cfg: AmqpConfig,
    rotation: Arc<nodes::Rotation>,
}

impl AmqpSink {
    /// A sink for this configuration (connects when the relay asks).
    pub fn new(cfg: AmqpConfig) -> AmqpSink {
        AmqpSink {
            cfg,
            rotation: Arc::default(),
        }
    }
}

impl Sink for AmqpSink {
    type Link = Publisher;

    fn name(&self) -> &'static str {
        "RabbitMQ"
    }

    fn describe(&self) -> String {
        format!(
            "{} exchange `{}`",
            self.cfg.describe_nodes(),
            self.cfg.exchange
        )
    }

    /// OpenTelemetry semantic conventions for messaging (RabbitMQ).
    fn span_attributes(&self, message: &Message) -> Vec<(&'static str, String)> {
        vec![
            ("messaging.system", "rabbitmq".to_owned()),
            ("messaging.destination.name", self.cfg.exchange.clone()),
            (
                "messaging.rabbitmq.destination.routing_key",
                message.subject.clone(),
            ),
        ]
    }

    /// Walk the node list from the one after the last good node, and keep the first that
    /// answers and takes the topology. The topology is declared again on every connect, so
    /// a node that joined the cluster later, or whose definitions were lost, gets it too.
    async fn connect(&self) -> anyhow::Result<Publisher> {
        let nodes = &self.cfg.nodes;
        let mut failed: Vec<(usize, anyhow::Error)> = Vec::new();
        for i in self.rotation.order(nodes.len()) {
            let node = &nodes[i];
            match Publisher::connect(node, &self.cfg.exchange, &self.cfg.topology).await {
                Ok(publisher) => {
                    let publisher = publisher.with_ce_headers(self.cfg.ce_headers.clone());
                    self.rotation.connected(i);
                    if nodes.len() > 1 {
                        let skipped: Vec<String> = failed
                            .iter()
                            .map(|(j, e)| format!("{}: {e:#}", nodes[*j].addr))
                            .collect();
                        if skipped.is_empty() {
                            tracing::info!(node = %node.addr, url = %node.url, "RabbitMQ node {} of {} answered", i + 1, nodes.len());
                        } else {
                            tracing::warn!(node = %node.addr, url = %node.url, skipped = %skipped.join("; "), "failed over to RabbitMQ node {} of {}", i + 1, nodes.len());
                        }
                    }
                    return Ok(publisher);
                }
                Err(e) => failed.push((i, e)),
            }
        }
        match failed.len() {
            0 => bail!("no RabbitMQ node configured"),
            1 => Err(failed.remove(0).1),
            _ => {
                let each: Vec<String> = failed
                    .iter()
                    .map(|(j, e)| format!("{}: {e:#}", nodes[*j].addr))
                    .collect();
                bail!("no RabbitMQ node answered ({})", each.join("; "))
            }
        }
    }
}
