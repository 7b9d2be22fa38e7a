//! `amqp_url` as a list of RabbitMQ nodes: one URL, or the nodes of a cluster as
//! comma-separated full URLs (`amqp://u:p@h1:5672/%2f,amqp://u:p@h2:5672/%2f`). Each is
//! validated as lapin will read it; each is shown with its password redacted.
//!
//! The relay connects to the first node that answers, starting after the one its last link was
//! on: in a cluster, a link usually breaks because its node went down, so the next connect
//! should not wait for that node first (see [`Rotation`]).

use std::{
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::bail;
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::secret::{SecretUrl, redact_url};

/// One RabbitMQ node of `amqp_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its URL (password redacted when shown).
    pub url: SecretUrl,
    /// `host:port` (the scheme's default port when the URL has none), naming the node in logs
    /// and in `/readyz`.
    pub addr: String,
}

/// Split `amqp_url` at commas and validate each node's URL.
pub fn parse(list: &str) -> anyhow::Result<Vec<Node>> {
    let raws: Vec<&str> = list.split(',').map(str::trim).collect();
    // Every node's scheme first: a comma inside a password splits a URL in two, and the
    // second half is what shows it.
    for (i, raw) in raws.iter().enumerate() {
        let n = i + 1;
        if raw.is_empty() {
            bail!("amqp_url: node {n} is empty (nodes are separated by commas)");
        }
        if !(raw.starts_with("amqp://") || raw.starts_with("amqps://")) {
            bail!(
                "amqp_url: node {n} must start with amqp:// or amqps:// (got `{}`); several \
                 nodes are full URLs separated by commas, and a comma inside a password is \
                 written %2C",
                redact_url(raw)
            );
        }
    }
    let mut nodes: Vec<Node> = Vec::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let n = i + 1;
        let uri = AMQPUri::from_str(raw).map_err(|e| {
            let shown = redact_url(raw);
            let e = e.replace(raw, &shown);
            anyhow::anyhow!("amqp_url: node {n} ({shown}) is not a valid AMQP URL: {e}")
        })?;
        let parsed = url::Url::parse(raw)?;
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            bail!("amqp_url: node {n} ({}) has no host", redact_url(raw));
        };
        let port = parsed.port().unwrap_or(match uri.scheme {
            AMQPScheme::AMQP => 5672,
            AMQPScheme::AMQPS => 5671,
        });
        let addr = format!("{host}:{port}");
        if nodes
            .iter()
            .any(|o| o.addr == addr && o.url.expose() == raw)
        {
            bail!("amqp_url: node {n} ({}) is listed twice", redact_url(raw));
        }
        nodes.push(Node {
            url: SecretUrl::new(raw),
            addr,
        });
    }
    Ok(nodes)
}

/// The nodes, safe to log: `amqp://u:***@h1:5672/%2f, amqp://u:***@h2:5672/%2f`.
pub fn describe(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.url.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the next connect starts in the node list.
#[derive(Debug, Default)]
pub struct Rotation {
    next: AtomicUsize,
}

impl Rotation {
    /// The order to try `len` nodes in: from the one after the last good node, wrapping
    /// around (from the first node before any connect succeeded).
    pub fn order(&self, len: usize) -> impl Iterator<Item = usize> {
        let start = if len == 0 {
            0
        } else {
            self.next.load(Ordering::Relaxed) % len
        };
        (0..len).map(move |k| (start + k) % len)
    }

    /// Node `i` answered: the next connect (after this link breaks) starts with the one after
    /// it.
    pub fn connected(&self, i: usize) {
        self.next.store(i + 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_several() {
        let one = parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].addr, "127.0.0.1:5672");
        let three = parse(
            "amqp://u:p1@h1:5681/%2f, amqp://u:p2@h2:5682/%2f,amqps://u:p3@h3/vh?heartbeat=10",
        )
        .unwrap();
        let addrs: Vec<&str> = three.iter().map(|n| n.addr.as_str()).collect();
        assert_eq!(addrs, ["h1:5681", "h2:5682", "h3:5671"]);
        assert_eq!(three[1].url.expose(), "amqp://u:p2@h2:5682/%2f");
        let shown = describe(&three);
        assert!(!shown.contains("p1") && !shown.contains("p2") && !shown.contains("p3"));
        assert!(shown.contains("amqp://u:***@h1:5681/%2f"), "{shown}");
    }

    #[test]
    fn bad_nodes_are_named_without_their_password() {
        for (list, want) in [
            ("amqp://u:p@h1/%2f,", "node 2 is empty"),
            (
                "amqp://u:p@h1/%2f,http://u:secret@h2/",
                "node 2 must start with amqp://",
            ),
            ("amqp://u:p@h1/%2f,amqp://u:secret@h2:notaport/", "node 2"),
            ("amqp://u:se,cret@h1/%2f", "%2C"),
            ("amqp://u:p@h1/%2f,amqp://u:p@h1/%2f", "listed twice"),
            ("amqp://u:secret@h1/%2f?heartbeat=x", "not a valid AMQP URL"),
        ] {
            let err = parse(list).unwrap_err().to_string();
            assert!(err.contains(want), "{list}: {err}");
            assert!(!err.contains("secret"), "{list}: {err}");
        }
    }

    #[test]
    fn rotation_starts_after_the_last_good_node() {
        let r = Rotation::default();
        assert_eq!(r.order(3).collect::<Vec<_>>(), [0, 1, 2]);
        r.connected(0);
        assert_eq!(r.order(3).collect::<Vec<_>>(), [1, 2, 0]);
        r.connected(2);
        assert_eq!(r.order(3).collect::<Vec<_>>(), [0, 1, 2]);
        r.connected(0);
        assert_eq!(r.order(1).collect::<Vec<_>>(), [0]);
        assert_eq!(r.order(0).count(), 0);
    }
}
