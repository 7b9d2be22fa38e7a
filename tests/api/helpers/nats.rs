//! NATS JetStream: a test's own stream and subjects on the shared server (deleted on drop),
//! reading what landed in it, and postbox's `Nats-Msg-Id`.

use std::{collections::HashSet, path::PathBuf, process::Child, time::Duration};

use async_nats::jetstream;

use super::{AMQP_URL, Arrivals, ProcEnv, free_port};

/// The shared NATS server of the test machine (JetStream on).
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A test's own stream and subjects on the shared server: `stream` captures `{prefix}.>`.
/// Deleted (with the test's other streams) on drop.
pub struct NatsScope {
    pub url: String,
    pub stream: String,
    pub prefix: String,
    pub js: jetstream::Context,
    also: Vec<String>,
}

impl NatsScope {
    pub async fn new() -> NatsScope {
        NatsScope::at(NATS_URL).await
    }

    /// On the server at `url` (a [`PrivateNats`], say).
    pub async fn at(url: &str) -> NatsScope {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .expect("NATS with JetStream must run on 127.0.0.1:4222 (scripts/test.sh starts it)");
        NatsScope {
            url: url.to_owned(),
            stream: format!("T_{id}"),
            prefix: format!("t{id}"),
            js: jetstream::new(client),
            also: Vec::new(),
        }
    }

    /// Settings for postbox publishing to this scope.
    pub fn settings(&self, s: &mut postbox::config::Settings) {
        s.sink = Some("nats".into());
        s.nats_url = Some(self.url.clone());
        s.nats_stream = Some(self.stream.clone());
        s.routing_prefix = Some(self.prefix.clone());
    }

    /// `POSTBOX_*` variables for the real binary publishing to this scope.
    pub fn env(&self, database_url: &str) -> ProcEnv {
        ProcEnv::new(database_url, AMQP_URL, "unused")
            .set("POSTBOX_SINK", "nats")
            .set("POSTBOX_NATS_URL", &self.url)
            .set("POSTBOX_NATS_STREAM", &self.stream)
            .set("POSTBOX_ROUTING_PREFIX", &self.prefix)
    }

    /// The events in the stream (by `ce-id`, in stream order) once every id in `wanted` is
    /// there or `within` has passed.
    pub async fn arrivals(&self, wanted: &HashSet<String>, within: Duration) -> Arrivals {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let count = match self.js.get_stream(&self.stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            if count as usize >= wanted.len() {
                let msgs = self.messages(0, Duration::ZERO).await;
                let ids = msgs.iter().filter_map(|m| nats_header(m, "ce-id"));
                let a = Arrivals::of(ids, wanted);
                if a.missing.is_empty() || tokio::time::Instant::now() > deadline {
                    return a;
                }
            } else if tokio::time::Instant::now() > deadline {
                let msgs = self.messages(0, Duration::ZERO).await;
                let ids = msgs.iter().filter_map(|m| nats_header(m, "ce-id"));
                return Arrivals::of(ids, wanted);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Also delete this stream when the test ends.
    pub fn also_delete(&mut self, stream: &str) {
        self.also.push(stream.to_owned());
    }

    /// Every message of the stream, in order (waits up to `within` for at least `n`).
    pub async fn messages(
        &self,
        n: usize,
        within: Duration,
    ) -> Vec<jetstream::message::StreamMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let count = match self.js.get_stream(&self.stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            if count as usize >= n || tokio::time::Instant::now() > deadline {
                let stream = self.js.get_stream(&self.stream).await.expect("stream");
                let mut out = Vec::new();
                let first = stream.cached_info().state.first_sequence;
                let last = stream.cached_info().state.last_sequence;
                for seq in first..=last {
                    if let Ok(m) = stream.get_raw_message(seq).await {
                        out.push(m);
                    }
                }
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsScope {
    fn drop(&mut self) {
        let js = self.js.clone();
        let mut names = std::mem::take(&mut self.also);
        names.push(self.stream.clone());
        // Drop is synchronous: delete on a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for n in names {
                        let _ = js.delete_stream(&n).await;
                    }
                });
            }
        })
        .join();
    }
}

pub fn nats_header(m: &jetstream::message::StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_owned())
}

/// What `postbox::sink::nats` sends as `Nats-Msg-Id`: hex SHA-256 of `source \0 id`.
pub fn nats_msg_id(source: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    hex::encode(h.finalize())
}

/// A NATS server of the test's own (JetStream on, a temporary store, a free port), for faults
/// the shared server must not suffer. Killed on drop.
pub struct PrivateNats {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateNats {
    /// Start one and wait until it accepts connections.
    pub async fn start() -> PrivateNats {
        let mut n = PrivateNats {
            port: free_port(),
            store: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        n.run().await;
        n
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let child = std::process::Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server; scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop it abruptly (SIGKILL). What JetStream acknowledged is in the store file (the page
    /// cache survives a process kill), so a restart on the same store keeps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
