//! The one TCP proxy every fault test uses, in front of RabbitMQ (5672), PostgreSQL (5432) or
//! any `host:port`. This machine's kernel has no traffic-control qdiscs (no `netem`), so bad
//! networks are played here, switchable at run time while connections are open:
//!
//! - pass-through (the default, and [`Proxy::pass`]);
//! - [`Proxy::cut`]: stop listening and close every connection (a broker or database outage);
//!   [`Proxy::listen`] again later;
//! - [`Proxy::reset`]: abort every open connection with a TCP RST (zero linger), keep
//!   listening;
//! - [`Proxy::latency`]: delay each chunk by `base ± jitter` (uniform), per direction, keeping
//!   byte order (a chunk never overtakes the one before it);
//! - [`Proxy::bandwidth`]: at most so many bytes per second, per direction;
//! - [`Proxy::stall`] / [`Proxy::resume`] / [`Proxy::stall_for`]: pass no bytes in a direction
//!   without closing anything (a black-holed link); held bytes are delivered in order on resume.
//!   While stalled the proxy stops reading after a bounded buffer, so the sender's socket fills
//!   up as it would on a real network;
//! - [`Proxy::stats`]: connections accepted and open, bytes delivered each way.
//!
//! "Up" is client → upstream (postbox → RabbitMQ), "down" the way back.

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::free_port;

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
    /// Both ways.
    Both,
}

impl Dir {
    fn indexes(self) -> &'static [usize] {
        match self {
            Dir::Up => &[0],
            Dir::Down => &[1],
            Dir::Both => &[0, 1],
        }
    }
}

/// The faults in effect, per direction (index 0 up, 1 down).
#[derive(Clone, Debug, Default)]
struct Faults {
    /// `(base, jitter)`.
    latency: [Option<(Duration, Duration)>; 2],
    /// Bytes per second.
    bandwidth: [Option<u64>; 2],
    stalled: [bool; 2],
}

/// What the proxy has done so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (all time).
    pub accepted: u64,
    /// Connections open now (connected upstream).
    pub open: u64,
    /// Bytes delivered to the upstream.
    pub bytes_up: u64,
    /// Bytes delivered to clients.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    bytes: [AtomicU64; 2],
}

/// The connections accepted since the last cut or reset.
#[derive(Clone)]
struct Epoch {
    cut: CancellationToken,
    reset: CancellationToken,
    conns: TaskTracker,
}

impl Epoch {
    fn new() -> Epoch {
        Epoch {
            cut: CancellationToken::new(),
            reset: CancellationToken::new(),
            conns: TaskTracker::new(),
        }
    }
}

struct Listening {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A TCP proxy on a port of 127.0.0.1 in front of `upstream`.
pub struct Proxy {
    port: u16,
    upstream: String,
    faults: Arc<watch::Sender<Faults>>,
    counters: Arc<Counters>,
    epoch: Arc<Mutex<Epoch>>,
    listening: Mutex<Option<Listening>>,
}

impl Proxy {
    /// A proxy to `upstream`, listening.
    pub async fn start(upstream: &str) -> Proxy {
        let p = Proxy::reserve(upstream);
        p.listen().await;
        p
    }

    /// A proxy to the shared RabbitMQ, listening.
    pub async fn rabbitmq() -> Proxy {
        Proxy::start("127.0.0.1:5672").await
    }

    /// A proxy to the shared PostgreSQL, listening.
    pub async fn postgres() -> Proxy {
        Proxy::start("127.0.0.1:5432").await
    }

    /// A proxy to `upstream` on a port that is free but not listened on yet (connections are
    /// refused until [`Proxy::listen`]).
    pub fn reserve(upstream: &str) -> Proxy {
        Proxy {
            port: free_port(),
            upstream: upstream.to_owned(),
            faults: Arc::new(watch::Sender::new(Faults::default())),
            counters: Arc::default(),
            epoch: Arc::new(Mutex::new(Epoch::new())),
            listening: Mutex::new(None),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:{port}`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The AMQP URL of RabbitMQ through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Listen (again) and forward every connection to the upstream.
    pub async fn listen(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("[proxy] bind {}: {e}; retrying", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("proxy bind 127.0.0.1:{}: {e}", self.port),
            }
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            stop.clone(),
            self.upstream.clone(),
            self.faults.clone(),
            self.counters.clone(),
            self.epoch.clone(),
        ));
        let old = self
            .listening
            .lock()
            .expect("proxy state")
            .replace(Listening { stop, task });
        assert!(old.is_none(), "Proxy::listen while already listening");
    }

    /// Stop listening (new connections are refused); open ones go on.
    pub async fn unlisten(&self) {
        let run = self.listening.lock().expect("proxy state").take();
        if let Some(run) = run {
            run.stop.cancel();
            let _ = run.task.await;
        }
    }

    /// Stop listening and close every connection; returns once they are all closed.
    pub async fn cut(&self) {
        self.unlisten().await;
        let old = self.new_epoch();
        old.cut.cancel();
        old.conns.close();
        old.conns.wait().await;
    }

    /// Abort every open connection with a TCP RST, both ways; keep listening. Returns once
    /// they are all closed.
    pub async fn reset(&self) {
        let old = self.new_epoch();
        old.reset.cancel();
        old.conns.close();
        old.conns.wait().await;
    }

    fn new_epoch(&self) -> Epoch {
        let mut epoch = self.epoch.lock().expect("proxy state");
        std::mem::replace(&mut *epoch, Epoch::new())
    }

    fn edit(&self, f: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(f);
    }

    /// Delay every chunk in `dir` by `base ± jitter` (uniform), in order.
    pub fn latency(&self, dir: Dir, base: Duration, jitter: Duration) {
        self.edit(|f| {
            for &i in dir.indexes() {
                f.latency[i] = Some((base, jitter));
            }
        });
    }

    /// At most `bytes_per_sec` in `dir` (`None`: unlimited).
    pub fn bandwidth(&self, dir: Dir, bytes_per_sec: Option<u64>) {
        self.edit(|f| {
            for &i in dir.indexes() {
                f.bandwidth[i] = bytes_per_sec;
            }
        });
    }

    /// Pass no bytes in `dir` (nothing is closed) until [`Proxy::resume`].
    pub fn stall(&self, dir: Dir) {
        self.edit(|f| {
            for &i in dir.indexes() {
                f.stalled[i] = true;
            }
        });
    }

    /// Pass bytes in `dir` again; what was held is delivered first, in order.
    pub fn resume(&self, dir: Dir) {
        self.edit(|f| {
            for &i in dir.indexes() {
                f.stalled[i] = false;
            }
        });
    }

    /// Stall `dir` now and resume it after `d` (in the background).
    pub fn stall_for(&self, dir: Dir, d: Duration) {
        self.stall(dir);
        let faults = self.faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            faults.send_modify(|f| {
                for &i in dir.indexes() {
                    f.stalled[i] = false;
                }
            });
        });
    }

    /// Back to plain pass-through: no latency, no bandwidth limit, no stall.
    pub fn pass(&self) {
        self.edit(|f| *f = Faults::default());
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.counters.accepted.load(Ordering::SeqCst),
            open: self.counters.open.load(Ordering::SeqCst),
            bytes_up: self.counters.bytes[0].load(Ordering::SeqCst),
            bytes_down: self.counters.bytes[1].load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listening.lock()
            && let Some(run) = l.take()
        {
            run.stop.cancel();
        }
        if let Ok(epoch) = self.epoch.lock() {
            epoch.cut.cancel();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    upstream: String,
    faults: Arc<watch::Sender<Faults>>,
    counters: Arc<Counters>,
    epoch: Arc<Mutex<Epoch>>,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((inbound, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(epoch) = epoch.lock().map(|e| e.clone()) else {
            return;
        };
        epoch.conns.clone().spawn(serve(
            inbound,
            upstream.clone(),
            faults.subscribe(),
            counters.clone(),
            epoch,
        ));
    }
}

/// Counts an open connection while it lives.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection ended early.
#[derive(PartialEq, Eq)]
enum Kill {
    Cut,
    Reset,
}

async fn serve(
    inbound: TcpStream,
    upstream: String,
    faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
    epoch: Epoch,
) {
    let connect = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&upstream));
    let outbound = tokio::select! {
        c = connect => match c {
            Ok(Ok(s)) => s,
            _ => return,
        },
        () = epoch.cut.cancelled() => return,
        () = epoch.reset.cancelled() => {
            let _ = inbound.set_zero_linger();
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    counters.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(counters.clone());
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let killed = {
        let up = pump(&mut in_r, &mut out_w, 0, faults.clone(), &counters.bytes[0]);
        let down = pump(&mut out_r, &mut in_w, 1, faults, &counters.bytes[1]);
        tokio::select! {
            _ = async { tokio::try_join!(up, down) } => None,
            () = epoch.cut.cancelled() => Some(Kill::Cut),
            () = epoch.reset.cancelled() => Some(Kill::Reset),
        }
    };
    if killed == Some(Kill::Reset) {
        // Zero linger makes close() send RST. Dropping a write half would send a FIN first,
        // so forget the write halves: each socket closes when its read half drops.
        let _ = in_w.as_ref().set_zero_linger();
        let _ = out_w.as_ref().set_zero_linger();
        in_w.forget();
        out_w.forget();
    }
}

/// Chunks read but not yet delivered, per direction; beyond this the proxy stops reading.
const HELD_CHUNKS: usize = 64;

/// Copy `r` to `w` chunk by chunk, applying the faults of direction `dir`; on EOF shut `w`'s
/// write side down (after everything before it was delivered).
async fn pump(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    dir: usize,
    mut faults: watch::Receiver<Faults>,
    delivered: &AtomicU64,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(HELD_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((Instant::now(), chunk)).await.is_err() || n == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let writer = async move {
        let mut last_due = Instant::now();
        while let Some((arrived, chunk)) = rx.recv().await {
            let delay = sample_latency(faults.borrow().latency[dir]);
            // Never before the chunk ahead of it: byte order is kept.
            let due = (arrived + delay).max(last_due);
            last_due = due;
            tokio::time::sleep_until(due).await;
            match chunk {
                None => {
                    until_unstalled(&mut faults, dir).await;
                    w.shutdown().await?;
                    return Ok(());
                }
                Some(data) => write_paced(w, &data, dir, &mut faults, delivered).await?,
            }
        }
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

fn sample_latency(latency: Option<(Duration, Duration)>) -> Duration {
    let Some((base, jitter)) = latency else {
        return Duration::ZERO;
    };
    if jitter.is_zero() {
        return base;
    }
    let j = jitter.as_secs_f64();
    let offset = rand::rng().random_range(-j..=j);
    Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
}

async fn until_unstalled(faults: &mut watch::Receiver<Faults>, dir: usize) {
    loop {
        if !faults.borrow_and_update().stalled[dir] {
            return;
        }
        if faults.changed().await.is_err() {
            return;
        }
    }
}

/// Write `data`, in slices of 1/20 s worth of bytes under a bandwidth limit, waiting out
/// stalls between slices.
async fn write_paced(
    w: &mut OwnedWriteHalf,
    data: &[u8],
    dir: usize,
    faults: &mut watch::Receiver<Faults>,
    delivered: &AtomicU64,
) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        until_unstalled(faults, dir).await;
        let rate = faults.borrow().bandwidth[dir];
        let n = match rate {
            None => rest.len(),
            Some(bps) => rest
                .len()
                .min(usize::try_from((bps / 20).max(1)).unwrap_or(1)),
        };
        w.write_all(&rest[..n]).await?;
        delivered.fetch_add(n as u64, Ordering::SeqCst);
        rest = &rest[n..];
        if let Some(bps) = rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / bps.max(1) as f64)).await;
        }
    }
    Ok(())
}
