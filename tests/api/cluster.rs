//! RabbitMQ cluster failover: postbox is given the three nodes of a real cluster in `amqp_url`,
//! publishes a keyed load to a quorum queue replicated on all three, and the node it is
//! connected to is stopped mid-load. Every id answered 202 must be consumed from the quorum
//! queue (duplicates are counted), each key's events in the order of their 202s.
//!
//! Three RabbitMQ nodes do not fit beside the rest of the suite on two cores, so this runs only
//! when `scripts/rabbit-cluster.sh` starts a cluster and sets `POSTBOX_CLUSTER_TEST=1`,
//! `POSTBOX_CLUSTER_URLS` (the nodes' URLs, comma-separated, node 1 first) and
//! `POSTBOX_CLUSTER_NODES` (their Erlang node names, for `rabbitmqctl`). Without it the test
//! says, uncaptured, that it skipped.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use postbox::sink::amqp::QueueSettings;
use serde_json::Value;

use crate::helpers::{Backend, Load, TestApp, TestQueue, ms, unique};

/// The cluster the script started.
struct Cluster {
    urls: Vec<String>,
    nodes: Vec<String>,
}

impl Cluster {
    /// The cluster from the environment, or `None` (and a visible line) when not asked for.
    fn from_env(test: &str) -> Option<Cluster> {
        if std::env::var("POSTBOX_CLUSTER_TEST").as_deref() != Ok("1") {
            // Written to the process's stderr, not through the test harness's capture, so the
            // skip shows in every `cargo test` run.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: needs a 3-node RabbitMQ cluster; run scripts/rabbit-cluster.sh \
                 (it starts one and sets POSTBOX_CLUSTER_TEST=1)"
            );
            return None;
        }
        let list = |var: &str| -> Vec<String> {
            std::env::var(var)
                .unwrap_or_else(|_| panic!("{var} must be set with POSTBOX_CLUSTER_TEST=1"))
                .split(',')
                .map(str::to_owned)
                .collect()
        };
        let c = Cluster {
            urls: list("POSTBOX_CLUSTER_URLS"),
            nodes: list("POSTBOX_CLUSTER_NODES"),
        };
        assert!(
            c.urls.len() == 3 && c.nodes.len() == 3,
            "three nodes expected"
        );
        Some(c)
    }

    /// `host:port` of node `i` (0-based), as postbox names it in `/readyz`.
    fn addr(&self, i: usize) -> String {
        let u = url::Url::parse(&self.urls[i]).expect("node URL");
        format!(
            "{}:{}",
            u.host_str().expect("host"),
            u.port().unwrap_or(5672)
        )
    }

    /// `rabbitmqctl -n {node i} args…`; its standard output.
    async fn ctl(&self, i: usize, args: &[&str]) -> String {
        let node = self.nodes[i].clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("rabbitmqctl")
                .args(["-q", "-n", &node])
                .args(&args)
                .output()
                .expect("run rabbitmqctl");
            assert!(
                out.status.success(),
                "rabbitmqctl -n {node} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .await
        .expect("rabbitmqctl task")
    }

    /// Members of quorum queue `queue`, as node `i` sees them.
    async fn members(&self, i: usize, queue: &str) -> Vec<String> {
        let out = self
            .ctl(
                i,
                &[
                    "list_queues",
                    "name",
                    "type",
                    "members",
                    "--formatter",
                    "json",
                ],
            )
            .await;
        let queues: Value = serde_json::from_str(&out).expect("list_queues JSON");
        let q = queues
            .as_array()
            .and_then(|a| a.iter().find(|q| q["name"] == queue))
            .unwrap_or_else(|| panic!("queue {queue} not listed: {out}"));
        assert_eq!(q["type"], "quorum", "{q}");
        q["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

const KEYS: usize = 16;
const PER_KEY: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_when_the_connected_node_stops() {
    let Some(cluster) = Cluster::from_env("cluster_failover_when_the_connected_node_stops") else {
        return;
    };
    let started = Instant::now();
    let queue = unique("test-cluster-q");
    let urls = cluster.urls.join(",");
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.amqp_url = Some(urls);
        s.queues = Some(vec![QueueSettings {
            name: queue.clone(),
            bindings: vec!["events.#".to_owned()],
            queue_type: Some("quorum".to_owned()),
            delivery_limit: None,
            dead_letter: None,
            dead_letter_exchange: None,
            dead_letter_queue: None,
        }]);
    })
    .await;
    app.wait_broker("connected", Duration::from_secs(60)).await;
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(
        ready["broker"]["node"],
        cluster.addr(0),
        "postbox starts on node 1: {ready}"
    );
    let members = cluster.members(1, &queue).await;
    assert_eq!(
        members.len(),
        3,
        "the quorum queue is on all three nodes: {members:?}"
    );

    // About 20 s of keyed load (16 keys, each posting its events one after the other).
    let prefix = unique("cluster");
    let load = Load::new(&app.base, &prefix)
        .source("/cluster/failover")
        .keyed(KEYS, PER_KEY)
        .pace(Duration::from_millis(30))
        .spawn();
    load.until_answered(KEYS * PER_KEY / 5, Duration::from_secs(60), &app)
        .await;

    // Stop node 1 (the whole node, as a crash or a maintenance stop would) and watch /readyz
    // until postbox publishes through another node.
    let stop_at = Instant::now();
    let stopping = {
        let node = cluster.nodes[0].clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("rabbitmqctl")
                .args(["-q", "-n", &node, "stop"])
                .status()
                .expect("run rabbitmqctl stop")
        })
    };
    let mut left_node1 = None;
    let (failed_over, new_node) = loop {
        let (code, ready) = app.get_json("/readyz").await;
        assert_eq!(
            code, 200,
            "postbox stays ready while its node is away: {ready}"
        );
        let node = ready["broker"]["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if left_node1.is_none() && node != cluster.addr(0) {
            left_node1 = Some(stop_at.elapsed());
        }
        if ready["broker"]["state"] == "connected" && !node.is_empty() && node != cluster.addr(0) {
            break (stop_at.elapsed(), node);
        }
        assert!(
            stop_at.elapsed() < Duration::from_secs(60),
            "postbox did not fail over within 60 s: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stopped = stopping.await.expect("stop task");
    assert!(stopped.success(), "rabbitmqctl stop: {stopped}");
    let stop_took = stop_at.elapsed();

    let t = load.finish().await;
    let not_accepted = t.not_accepted(5);
    assert!(
        not_accepted.is_empty(),
        "every POST is accepted while a broker node is away: {not_accepted:?}"
    );

    // Consume the quorum queue from a surviving node (node 3; postbox is on node 2 or 3).
    let mut q = TestQueue::existing(&cluster.urls[2], &queue).await;
    let got = q
        .collect(&t.accepted, Duration::from_secs(90), Duration::from_secs(3))
        .await;
    got.assert_all_from(&prefix);
    let drained = got.all_at.map(|at| at.duration_since(stop_at));
    t.report("cluster", "node 1 stopped mid-load", &got, started);
    let members_after = cluster.members(2, &queue).await;
    // In-process apps share one metrics recorder: informative when this test runs alone (as
    // the script runs it).
    let metrics = app.metrics().await;
    let series = |s: &str| crate::helpers::metric_value(&metrics, s).unwrap_or(0.0);
    eprintln!(
        "[cluster] relay: {} reconnects, {} nacked and {} connection-lost attempts",
        series("postbox_broker_reconnects_total"),
        series("postbox_publish_failures_total{reason=\"nacked\"}"),
        series("postbox_publish_failures_total{reason=\"connection\"}"),
    );
    eprintln!(
        "[cluster] failover: /readyz left node 1 after {:.0} ms, connected to {new_node} after \
         {:.0} ms (rabbitmqctl stop took {:.1} s); every accepted id consumed {:.1} s after the \
         stop; {} accepted, {} duplicates, {} missing; quorum members after: {members_after:?}",
        ms(left_node1.unwrap_or(failed_over)),
        ms(failed_over),
        stop_took.as_secs_f64(),
        drained.map_or(f64::NAN, |d| d.as_secs_f64()),
        t.accepted.len(),
        got.duplicates(),
        got.missing.len(),
    );
    let mut context = String::new();
    for id in got.missing.iter().take(5) {
        let (_, event) = app
            .get_json(&format!("/v1/events/{id}?source=%2Fcluster%2Ffailover"))
            .await;
        context.push_str(&format!("{id}: {event}\n"));
    }
    got.assert_none_missing(&context);
    assert_eq!(got.not_in(&t.accepted), 0, "delivered without a 202");
    t.assert_key_order(&got);
}
