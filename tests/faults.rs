//! Faults around the warden, for real: an upstream that resets mid-body or never answers, a
//! DNS upstream that is down or silent, SIGHUP storms and SIGTERM while traffic flows. Each
//! test checks what the client sees and that every decision left exactly one whole audit line,
//! with nothing that reached an upstream unrecorded. (A full audit disk is in violation.rs.)

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::upstream::HttpUpstream;
use support::{Warden, curl, raw_request, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every audit line parses (none is torn) and every decision line is there once.
fn decisions(w: &Warden) -> Vec<Value> {
    let text = std::fs::read_to_string(&w.audit).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    w.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "decision")
        .collect()
}

/// [`decisions`] once there are at least `n` (lines reach the file a few ms after the decision).
async fn at_least(w: &Warden, n: usize) -> Vec<Value> {
    support::eventually("the decision lines", async || {
        let lines = decisions(w);
        (lines.len() >= n).then_some(lines)
    })
    .await
}

/// A server that answers each connection with `head`, then `body_part` of a longer body, then
/// resets the connection (SO_LINGER 0), or with nothing at all when `head` is empty.
async fn bad_server(head: &'static str, body_part: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // The request head, or nothing (a connection opened ahead and never used).
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                if head.is_empty() {
                    // Never answers; holds the connection until the warden gives up.
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                    return;
                }
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body_part.as_bytes()).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn an_upstream_that_resets_mid_body_is_one_allowed_line_with_the_error() {
    let (addr, seen) = bad_server(
        "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
        "partial body",
    )
    .await;
    let w = Warden::builder()
        .upstream(addr)
        .action("deny")
        .spawn()
        .await;
    let out = curl(&["-x", &w.proxy_url(), &format!("http://{addr}/big")]).await;
    assert_ne!(out.status, 0, "the client sees the body cut short: {out:?}");
    assert!(out.stdout.starts_with("partial body"), "{out:?}");
    let line = w.decision(|l| l["event"] == "decision").await;
    assert_eq!(line["verdict"], "allow");
    assert_eq!(line["error"], "upstream_body_error", "{line}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Through a tunnel the same reset ends the tunnel with one line.
    let (mut t, status) = support::connect_tunnel(w.http, &addr.to_string()).await;
    assert!(status.contains(" 200"), "{status}");
    t.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(support::PATIENCE, t.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "the client's side is closed too: {:?}",
        String::from_utf8_lossy(&got)
    );
    let lines = at_least(&w, 2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let tunnel = lines
        .iter()
        .find(|l| l["method"] == "CONNECT")
        .expect("the tunnel's line");
    assert_eq!(tunnel["verdict"], "allow");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_that_never_answers_times_out_with_a_504_and_one_line() {
    let (addr, seen) = bad_server("", "").await;
    let w = Warden::builder()
        .upstream(addr)
        .action("deny")
        .arg("--idle-timeout")
        .arg("500ms")
        .spawn()
        .await;
    let head = raw_request(
        w.http,
        &format!("GET http://{addr}/ HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 504, "{head}");
    assert!(head.contains("http_response_timeout"), "{head}");
    let lines = at_least(&w, 1).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[0]["error"], "upstream_timeout");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dns_upstream_that_is_down_or_silent_fails_closed_within_twice_the_timeout() {
    let up = HttpUpstream::start().await;
    // Down: nothing listens (the kernel refuses). Silent: a socket that never answers.
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while silent.recv_from(&mut buf).await.is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    for (what, dns) in [("down", closed), ("silent", silent_addr)] {
        let w = Warden::builder()
            .allow("allowed.test:*")
            .upstream(up.addr)
            .dns(dns)
            .action("terminate")
            .arg("--dns-timeout")
            .arg("300ms")
            .spawn()
            .await;
        let started = std::time::Instant::now();
        let head = raw_request(
            w.http,
            "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        )
        .await;
        let took = started.elapsed();
        assert_eq!(status_of(&head), 502, "{what}: {head}");
        assert!(head.contains("dns_error"), "{what}: {head}");
        let lines = at_least(&w, 1).await;
        assert_eq!(lines.len(), 1, "{what}: {lines:#?}");
        assert_eq!(lines[0]["reason"], "resolve_failed", "{what}");
        assert_eq!(
            lines[0]["violation"], false,
            "{what}: an outage is not a violation"
        );
        // Not a timing assertion: a generous bound that only a retry loop would break.
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        assert_eq!(
            w.admin_get("/readyz").await.0,
            200,
            "{what}: the run goes on"
        );
    }
    // Two questions (A and AAAA), two tries each: nothing more.
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    assert_eq!(up.seen.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_storm_under_load_loses_no_request_and_no_line() {
    let (w, up, _dns) = support::allowed_test(|b| b.action("terminate")).await;
    let proxy = w.http;
    let port = up.addr.port();
    let ok = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let ok = ok.clone();
            tokio::spawn(async move {
                for _ in 0..150 {
                    let head = raw_request(
                        proxy,
                        &format!(
                            "GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n"
                        ),
                    )
                    .await;
                    assert_eq!(status_of(&head), 200, "{head}");
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let storm = 1000;
    for _ in 0..storm {
        w.signal(Signal::SIGHUP);
        tokio::task::yield_now().await;
    }
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(w.admin_get("/readyz").await.0, 200);
    let served = ok.load(Ordering::SeqCst);
    let lines = at_least(&w, served).await;
    assert_eq!(lines.len(), served, "one line per request");
    assert!(lines.iter().all(|l| l["verdict"] == "allow"));
    assert_eq!(up.seen.requests(), served);
    let metrics = w.metrics().await;
    let reloads = support::sample(
        &metrics,
        "egress_warden_policy_reloads_total",
        &[("outcome", "ok")],
    )
    .unwrap_or(0.0);
    assert!(reloads >= 1.0, "{metrics}");
    assert!(
        support::sample(
            &metrics,
            "egress_warden_policy_reloads_total",
            &[("outcome", "error")]
        )
        .unwrap_or(0.0)
            == 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_traffic_records_every_connection_once() {
    let (mut w, up, _dns) =
        support::allowed_test(|b| b.action("terminate").arg("--drain-timeout").arg("2s")).await;
    let proxy = w.http;
    let port = up.addr.port();
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (ok, stop) = (ok.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = TcpStream::connect(proxy).await else {
                        return;
                    };
                    let req = format!(
                        "GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n"
                    );
                    if s.write_all(req.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut rsp = Vec::new();
                    let _ = s.read_to_end(&mut rsp).await;
                    if rsp.starts_with(b"HTTP/1.1 200") {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        return;
                    }
                }
            })
        })
        .collect();
    support::eventually("traffic flowing", async || {
        (ok.load(Ordering::SeqCst) >= 50).then_some(())
    })
    .await;
    w.signal(Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let lines = decisions(&w);
    let allowed = lines.iter().filter(|l| l["verdict"] == "allow").count();
    assert_eq!(
        allowed,
        up.seen.requests(),
        "every request that reached the upstream has its line"
    );
    assert!(allowed >= ok.load(Ordering::SeqCst));
    let text = std::fs::read_to_string(&w.audit).unwrap();
    let end: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["outcome"], "shutdown");
}
