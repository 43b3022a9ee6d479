//! Soak: many connections through CONNECT, plain HTTP and SOCKS5, one after another and many
//! at once, against the real binary. The warden's resident memory and open descriptors are
//! sampled after a warm-up, at the peak and once it has settled; settled figures that grow past
//! the bounds below fail the test. CI runs a short soak (`SOAK_CONNECTIONS`, default 1000 of each
//! kind in each mode); `scripts/soak N` runs a long one on a release build. Termination latency
//! under load is measured here too, as a benchmark (`scripts/bench termination`), never timed
//! in a test.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::upstream::HttpUpstream;
use support::{Warden, read_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Connections of each kind in each mode when `SOAK_CONNECTIONS` is not set.
const DEFAULT_CONNECTIONS: usize = 1000;
/// Connections open at once in the concurrent mode.
const CONCURRENCY: usize = 50;
/// How much the settled resident memory may exceed the warmed-up figure: allocator caches
/// and per-thread pools reach their size during warm-up; a leak of even 100 bytes a connection
/// shows over a long soak (`scripts/soak 100000` is 10 MiB).
const RSS_GROWTH_KIB: u64 = 4 * 1024;
/// How many more descriptors the settled warden may hold than after warm-up: idle upstream
/// HTTP connections kept for reuse (at most one per target and worker thread here).
const FD_GROWTH: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Connect,
    Plain,
    Socks,
}

/// A TCP server that echoes every byte back until the client closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

struct Scene {
    w: Warden,
    echo: SocketAddr,
    http: HttpUpstream,
}

async fn scene() -> Scene {
    let echo = echo_server().await;
    let http = HttpUpstream::start().await;
    let w = Warden::builder()
        .upstream(echo)
        .upstream(http.addr)
        .action("deny")
        .spawn()
        .await;
    Scene { w, echo, http }
}

/// One connection of `kind`, used once and closed; panics if the proxy misbehaves.
async fn one(kind: Kind, s: &Scene) {
    match kind {
        Kind::Connect => {
            let mut c = TcpStream::connect(s.w.http).await.unwrap();
            let t = s.echo;
            c.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let head = read_head(&mut c).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            ping(&mut c).await;
        }
        Kind::Plain => {
            let mut c = TcpStream::connect(s.w.http).await.unwrap();
            let t = s.http.addr;
            c.write_all(
                format!("GET http://{t}/soak HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut rsp = Vec::new();
            c.read_to_end(&mut rsp).await.unwrap();
            assert!(rsp.starts_with(b"HTTP/1.1 200"), "{rsp:?}");
        }
        Kind::Socks => {
            let (mut c, reply) =
                support::socks_connect(s.w.socks, "127.0.0.1", s.echo.port()).await;
            assert_eq!(reply, 0);
            ping(&mut c).await;
        }
    }
}

async fn ping(c: &mut TcpStream) {
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// Resident memory (KiB) and open descriptors of `pid`.
fn usage(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

/// Runs `n` connections of `kind`, `at_once` at a time.
async fn batch(s: &Arc<Scene>, kind: Kind, n: usize, at_once: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..at_once.min(n))
        .map(|_| {
            let (s, next) = (s.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                    one(kind, &s).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

/// Waits until no client connection is open, then for the audit lines of all of them.
async fn settle(w: &Warden, decisions: usize) {
    support::eventually("every connection closed", async || {
        let text = w.metrics().await;
        let open: f64 = ["http", "socks5"]
            .iter()
            .filter_map(|l| {
                support::sample(&text, "egress_warden_connections_open", &[("listener", l)])
            })
            .sum();
        (open == 0.0).then_some(())
    })
    .await;
    support::eventually("every decision recorded", async || {
        let n = w
            .audit_lines()
            .iter()
            .filter(|l| l["event"] == "decision")
            .count();
        (n >= decisions).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_connect_plain_http_and_socks5_without_growth() {
    let n: usize = std::env::var("SOAK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CONNECTIONS);
    let s = Arc::new(scene().await);
    let pid = s.w.pid;
    let kinds = [Kind::Connect, Kind::Plain, Kind::Socks];
    let started = usage(pid);
    // Warm-up: every path, both modes, so pools and caches reach their working size.
    let warm = 50;
    for kind in kinds {
        batch(&s, kind, warm, 1).await;
        batch(&s, kind, warm, CONCURRENCY).await;
    }
    let mut decisions = kinds.len() * 2 * warm;
    settle(&s.w, decisions).await;
    let warmed = usage(pid);
    // Peak, sampled while the soak runs.
    let peak = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let (rss, fds) = usage(pid);
                peak.0.fetch_max(rss, Ordering::Relaxed);
                peak.1.fetch_max(fds as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let clock = Instant::now();
    for kind in kinds {
        batch(&s, kind, n, 1).await;
        batch(&s, kind, n, CONCURRENCY).await;
    }
    let took = clock.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    decisions += kinds.len() * 2 * n;
    settle(&s.w, decisions).await;
    let settled = usage(pid);
    let total = kinds.len() * 2 * n;
    eprintln!(
        "soak: {total} connections in {took:.1?} ({:.0}/s)\n\
         | | RSS KiB | fds |\n|---|---|---|\n\
         | start | {} | {} |\n| warmed up | {} | {} |\n| peak | {} | {} |\n| settled | {} | {} |",
        total as f64 / took.as_secs_f64(),
        started.0,
        started.1,
        warmed.0,
        warmed.1,
        peak.0.load(Ordering::Relaxed),
        peak.1.load(Ordering::Relaxed),
        settled.0,
        settled.1,
    );
    let lines = s.w.audit_lines();
    let allowed = lines
        .iter()
        .filter(|l| l["event"] == "decision" && l["verdict"] == "allow")
        .count();
    assert_eq!(
        allowed, decisions,
        "one allowed decision line per connection"
    );
    assert!(
        settled.0 <= warmed.0 + RSS_GROWTH_KIB,
        "resident memory grew {} KiB over {total} connections (bound {RSS_GROWTH_KIB})",
        settled.0.saturating_sub(warmed.0)
    );
    assert!(
        settled.1 <= warmed.1 + FD_GROWTH,
        "descriptors grew from {} to {} over {total} connections",
        warmed.1,
        settled.1
    );
}

/// Termination latency under load: open tunnels moving bytes and requests in flight, then one
/// violation; prints how long until the last tunnel saw its end. A benchmark, run by
/// `scripts/bench termination`; the test suite never asserts a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench termination"]
async fn termination_latency_under_load() {
    let tunnels: usize = std::env::var("BENCH_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let echo = echo_server().await;
    let http = HttpUpstream::start().await;
    let w = Warden::builder()
        .upstream(echo)
        .upstream(http.addr)
        .action("terminate")
        .arg("--max-connections")
        .arg("20000")
        .spawn()
        .await;
    let mut open = Vec::with_capacity(tunnels);
    for _ in 0..tunnels {
        let mut c = TcpStream::connect(w.http).await.unwrap();
        c.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert!(read_head(&mut c).await.starts_with("HTTP/1.1 200"));
        open.push(c);
    }
    // Every tunnel keeps bytes moving until it is cut; the time each saw its end is kept.
    let ends: Vec<_> = open
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                loop {
                    if c.write_all(b"ping").await.is_err() {
                        return Instant::now();
                    }
                    match c.read_exact(&mut buf).await {
                        Ok(_) => tokio::task::yield_now().await,
                        Err(_) => return Instant::now(),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let violated = Instant::now();
    let status = support::raw_request(
        w.http,
        "GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let mut latencies = Vec::with_capacity(tunnels);
    for e in ends {
        latencies.push(e.await.unwrap().saturating_duration_since(violated));
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "termination under load: {tunnels} busy tunnels cut; from the violating request: \
         p50 {:.1?}, p99 {:.1?}, last {:.1?}",
        at(0.5),
        at(0.99),
        latencies.last().unwrap()
    );
}
