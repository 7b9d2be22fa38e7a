//! The harness's TCP proxy, tested on its own against a tiny echo server: every fault does
//! what the network tests rely on (latency at least as configured, byte order kept, bandwidth
//! bounded, a stall holds bytes without closing and a resume delivers them in order, a reset
//! is an RST both ways, a cut closes and refuses until the proxy listens again).

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::helpers::{Dir, Proxy, ms};

/// How an upstream connection of the echo server ended.
type Ended = mpsc::UnboundedReceiver<std::io::Result<()>>;

/// An echo server on a free port: writes back whatever it reads; reports how each connection
/// ended (clean EOF or the read error).
async fn echo_server() -> (String, Ended) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let end = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            if let Err(e) = s.write_all(&buf[..n]).await {
                                break Err(e);
                            }
                        }
                        Err(e) => break Err(e),
                    }
                };
                let _ = tx.send(end);
            });
        }
    });
    (addr, rx)
}

async fn read_exactly(s: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(within, s.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{n} bytes not echoed within {within:?}"))
        .expect("read");
    got
}

/// Round trip of one small message.
async fn round_trip(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    s.write_all(b"ping").await.expect("write");
    assert_eq!(read_exactly(s, 4, Duration::from_secs(5)).await, b"ping");
    started.elapsed()
}

#[tokio::test]
async fn proxy_passes_bytes_both_ways_and_counts_them() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(&echo).await;
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(async { w.write_all(&data).await.expect("write") }, async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.expect("read");
        got
    });
    assert_eq!(got, data);
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.open, 1);
    assert_eq!(stats.bytes_up, 100_000);
    assert_eq!(stats.bytes_down, 100_000);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.stats().open > 0 {
        assert!(Instant::now() < deadline, "the connection stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn proxy_latency_is_at_least_as_configured_and_keeps_byte_order() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(&echo).await;
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let plain = round_trip(&mut s).await;

    // 100 ms each way, no jitter: a round trip takes 200 ms and then some.
    proxy.latency(Dir::Both, Duration::from_millis(100), Duration::ZERO);
    let fixed = round_trip(&mut s).await;
    assert!(fixed >= Duration::from_millis(200), "{fixed:?}");
    assert!(fixed < Duration::from_millis(600), "{fixed:?}");

    // 50 ± 40 ms up only: every round trip at least 10 ms, and 300 numbered writes made 1 ms
    // apart (so jitter would reorder them if the proxy let it) come back in order.
    proxy.pass();
    proxy.latency(
        Dir::Up,
        Duration::from_millis(50),
        Duration::from_millis(40),
    );
    let mut trips = Vec::new();
    for _ in 0..10 {
        trips.push(round_trip(&mut s).await);
    }
    let (min, max) = (
        trips.iter().min().copied().unwrap_or_default(),
        trips.iter().max().copied().unwrap_or_default(),
    );
    assert!(min >= Duration::from_millis(10), "{trips:?}");
    assert!(max > min, "jitter varies the delay: {trips:?}");
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(
        async {
            for i in 0..300u32 {
                w.write_all(&i.to_be_bytes()).await.expect("write");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        },
        async {
            let mut got = vec![0u8; 1200];
            r.read_exact(&mut got).await.expect("read");
            got
        }
    );
    let numbers: Vec<u32> = got
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(numbers, (0..300).collect::<Vec<_>>(), "byte order is kept");
    eprintln!(
        "[proxy] round trip plain {:.2} ms, 100 ms each way {:.1} ms, 50±40 ms up: {:.1}..{:.1} ms",
        ms(plain),
        ms(fixed),
        ms(min),
        ms(max)
    );
}

#[tokio::test]
async fn proxy_bandwidth_limits_each_direction() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(&echo).await;
    proxy.bandwidth(Dir::Up, Some(200_000));
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let data = vec![7u8; 100_000];
    let started = Instant::now();
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(async { w.write_all(&data).await.expect("write") }, async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.expect("read");
        got
    });
    let took = started.elapsed();
    assert_eq!(got, data);
    // 100 KB at 200 KB/s: half a second at least.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    eprintln!("[proxy] 100 KB through 200 KB/s up: {:.0} ms", ms(took));
}

#[tokio::test]
async fn proxy_stall_holds_bytes_without_closing_and_resume_delivers_them_in_order() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(&echo).await;
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut s).await;
    let before = proxy.stats();

    proxy.stall(Dir::Up);
    for part in [&b"first "[..], b"second ", b"third"] {
        s.write_all(part).await.expect("write while stalled");
    }
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await;
    assert!(read.is_err(), "bytes passed a stalled link: {read:?}");
    let held = proxy.stats();
    assert_eq!(held.bytes_up, before.bytes_up, "nothing went upstream");
    assert_eq!(held.open, 1, "the connection is still open");

    proxy.resume(Dir::Up);
    let got = read_exactly(&mut s, 18, Duration::from_secs(5)).await;
    assert_eq!(got, b"first second third");

    // A timed stall of the way back: the echo arrives after it, not before.
    proxy.stall_for(Dir::Down, Duration::from_millis(400));
    let started = Instant::now();
    s.write_all(b"late").await.expect("write");
    assert_eq!(
        read_exactly(&mut s, 4, Duration::from_secs(5)).await,
        b"late"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(380), "{took:?}");
    eprintln!(
        "[proxy] stall held 18 bytes for 700 ms with the connection open; a 400 ms stall of the way back delivered after {:.0} ms",
        ms(took)
    );
}

#[tokio::test]
async fn proxy_reset_aborts_both_sides_with_rst_and_keeps_listening() {
    let (echo, mut ended) = echo_server().await;
    let proxy = Proxy::start(&echo).await;
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut s).await;

    proxy.reset().await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the client learns at once");
    let err = read.expect_err("a reset is not a clean close (read returned)");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let upstream = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("the upstream learns at once")
        .expect("ended");
    let err = upstream.expect_err("the upstream saw a reset, not a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(proxy.stats().open, 0);

    // Still listening.
    let mut again = TcpStream::connect(proxy.addr())
        .await
        .expect("connect again");
    round_trip(&mut again).await;
    assert_eq!(proxy.stats().accepted, 2);
}

#[tokio::test]
async fn proxy_cut_closes_connections_and_refuses_new_ones_until_it_listens_again() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(&echo).await;
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut s).await;

    proxy.cut().await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the client learns at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection is closed: {read:?}"
    );
    let refused = TcpStream::connect(proxy.addr()).await;
    assert!(refused.is_err(), "a cut proxy refuses connections");

    proxy.listen().await;
    let mut again = TcpStream::connect(proxy.addr())
        .await
        .expect("connect again");
    round_trip(&mut again).await;
}
