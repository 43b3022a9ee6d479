//! CONNECT tunnels: real TLS clients through the tunnel, SNI checked against the target
//! (domain fronting refused with a TLS alert), HTTP inside tunnels decided per request, and
//! byte-exact large transfers both ways with half-close (through the splice fast path), idle
//! tunnels that hold no pipes, and tunnels spread over the worker threads.

mod support;

use std::process::Stdio;

use support::dns::FakeDns;
use support::upstream::{ByteUpstream, HttpUpstream, TlsUpstream, pattern};
use support::{Warden, connect_tunnel, curl, read_response, read_until, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn warden_for(port: u16, dns: &FakeDns, action: &'static str) -> Warden {
    Warden::builder()
        .allow("allowed.test:*")
        .allow("*.cdn.test:*")
        .allow(&format!("127.0.0.1:{port}"))
        .dns(dns.addr)
        .action(action)
        .spawn()
        .await
}

#[tokio::test]
async fn https_through_connect_works_with_curl() {
    let tls = TlsUpstream::start(&["allowed.test"]).await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = warden_for(tls.addr.port(), &dns, "deny").await;
    let url = format!("https://allowed.test:{}/secure", tls.addr.port());
    let out = curl(&["-x", &w.proxy_url(), "--cacert", tls.ca(), &url]).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "tls GET /secure host=allowed.test:{} body=0 proxy_auth=false\n",
            tls.addr.port()
        )
    );
    let line = w
        .decision(|l| l["method"] == "CONNECT" && l["verdict"] == "allow")
        .await;
    assert_eq!(line["host"], "allowed.test");
    assert_eq!(line["reason"], "domain_allowed");
    assert!(
        line["bytes_up"].as_u64().unwrap() > 500,
        "the ClientHello alone is larger: {line}"
    );
    assert!(line["bytes_down"].as_u64().unwrap() > 500, "{line}");
}

/// Runs `openssl s_client` through the proxy with the given SNI; returns its combined output.
async fn s_client(proxy: std::net::SocketAddr, connect: &str, servername: &str) -> String {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-proxy",
            &proxy.to_string(),
            "-connect",
            connect,
            "-servername",
            servername,
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("openssl is installed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn sni_naming_another_host_than_the_connect_target_is_refused_with_an_alert() {
    let tls = TlsUpstream::start(&["allowed.test", "evil.test"]).await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = warden_for(tls.addr.port(), &dns, "deny").await;
    let out = s_client(
        w.http,
        &format!("allowed.test:{}", tls.addr.port()),
        "evil.test",
    )
    .await;
    assert!(out.contains("alert access denied"), "{out}");
    let line = w.decision(|l| l["reason"] == "sni_mismatch").await;
    assert_eq!(line["host"], "allowed.test");
    assert_eq!(line["detail"], "sni=evil.test");
    assert_eq!(line["verdict"], "deny");
    assert_eq!(line["violation"], true);
    assert_eq!(
        line["bytes_up"], 0,
        "no byte of the refused hello may reach the upstream"
    );
    assert_eq!(tls.seen.requests(), 0);
}

#[tokio::test]
async fn ip_literal_tunnels_accept_only_snis_of_allowed_names() {
    let tls = TlsUpstream::start(&["allowed.test", "evil.test"]).await;
    let dns = FakeDns::start(&[]).await;
    let w = warden_for(tls.addr.port(), &dns, "deny").await;
    let target = format!("127.0.0.1:{}", tls.addr.port());
    let out = s_client(w.http, &target, "evil.test").await;
    assert!(out.contains("alert access denied"), "{out}");
    let out = s_client(w.http, &target, "allowed.test").await;
    assert!(out.contains("Protocol version"), "{out}");
    let line = w.decision(|l| l["reason"] == "sni_mismatch").await;
    assert_eq!(line["host"], "127.0.0.1");
}

#[tokio::test]
async fn a_named_tunnel_whose_client_hello_has_no_sni_is_refused() {
    let tls = TlsUpstream::start(&["allowed.test"]).await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = warden_for(tls.addr.port(), &dns, "deny").await;
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-proxy",
            &w.http.to_string(),
            "-connect",
            &format!("allowed.test:{}", tls.addr.port()),
            "-noservername",
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("alert access denied"), "{text}");
    w.decision(|l| l["reason"] == "sni_missing").await;
}

#[tokio::test]
async fn http_inside_a_tunnel_is_decided_request_by_request() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = warden_for(up.addr.port(), &dns, "deny").await;
    let port = up.addr.port();
    let (mut s, status) = connect_tunnel(w.http, &format!("allowed.test:{port}")).await;
    assert!(status.contains(" 200"), "{status}");
    s.write_all(format!("GET /a HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.contains("GET /a host=allowed.test"), "{body}");
    // Switching hosts on the same tunnel is refused, and the tunnel stays usable.
    s.write_all(format!("GET /b HTTP/1.1\r\nHost: evil.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(body.contains("host_mismatch"), "{body}");
    s.write_all(format!("GET /c HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(up.seen.requests(), 2);
    let line = w.decision(|l| l["reason"] == "host_mismatch").await;
    assert!(
        line["detail"].as_str().unwrap().contains("evil.test"),
        "{line}"
    );
    // curl's own CONNECT-for-HTTP (-p) works end to end.
    let out = curl(&[
        "-p",
        "-x",
        &w.proxy_url(),
        &format!("http://allowed.test:{port}/d"),
    ])
    .await;
    assert!(out.stdout.contains("GET /d"), "{out:?}");
}

/// A connection that opens with a CONNECT is served without hyper (`first_connect`); these
/// are the cases where that path must hand over or keep bytes exactly.
#[tokio::test]
async fn a_first_connect_keeps_the_bytes_around_its_head_and_hands_the_rest_to_hyper() {
    let up = HttpUpstream::start().await;
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("allowed.test:*")
        .allow(&format!("127.0.0.1:{}", up.addr.port()))
        .allow(&format!("127.0.0.1:{}", bytes.addr.port()))
        .dns(dns.addr)
        .spawn()
        .await;
    let port = up.addr.port();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");

    // A refused first CONNECT: the refusal is readable and the connection goes on serving.
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    s.write_all(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-status: egress-warden"),
        "{head}"
    );
    assert!(body.contains("CONNECT denied.test:443"), "{body}");
    s.write_all(get(&format!("http://allowed.test:{port}/after")).as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.contains("GET /after host=allowed.test"), "{body}");
    let line = w.decision_for("denied.test", "deny").await;
    assert_eq!(line["method"], "CONNECT");

    // A request pipelined behind a refused CONNECT, in the same write (so read with it), is
    // still served: the bytes after the head go to hyper.
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    let both = format!(
        "CONNECT denied.test:443 HTTP/1.1\r\n\r\n{}",
        get(&format!("http://allowed.test:{port}/pipelined"))
    );
    s.write_all(both.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 403, "{head}");
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.contains("GET /pipelined host=allowed.test"), "{body}");

    // Bytes pipelined behind the CONNECT head reach the upstream exactly: the echo server
    // returns them after the 200, and nothing else.
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    let payload = "echo\n\r\n\r\nGET / HTTP/1.1\r\n\r\n\u{0}\u{1}";
    let head = format!(
        "CONNECT allowed.test:{} HTTP/1.1\r\n\r\n",
        bytes.addr.port()
    );
    s.write_all(format!("{head}{payload}").as_bytes())
        .await
        .unwrap();
    let got = read_until(&mut s, "\u{0}\u{1}").await;
    let (reply, rest) = got.split_once("\r\n\r\n").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert_eq!(rest, &payload["echo\n".len()..], "{got:?}");

    // A CONNECT after a plain request on the same connection is hyper's, and tunnels too.
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    s.write_all(get(&format!("http://allowed.test:{port}/first")).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    s.write_all(format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    s.write_all(get("/inside").as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.contains("GET /inside"), "{body}");

    // A head sent in two writes tunnels whichever path reads it.
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"CONNECT allowed.test:").await.unwrap();
    s.write_all(format!("{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    s.write_all(get("/split").as_bytes()).await.unwrap();
    let (_, body) = read_response(&mut s).await;
    assert!(body.contains("GET /split"), "{body}");
    assert_eq!(up.seen.requests(), 5);
}

#[tokio::test]
async fn connect_to_a_port_the_rule_does_not_allow_is_refused() {
    let dns = FakeDns::start(&[("web.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("web.test")
        .dns(dns.addr)
        .spawn()
        .await;
    let (_s, status) = connect_tunnel(w.http, "web.test:22").await;
    assert!(status.contains(" 403"), "{status}");
    let line = w.decision_for("web.test", "deny").await;
    assert_eq!(line["reason"], "port_not_allowed");
    assert_eq!(line["port"], 22);
}

#[tokio::test]
async fn large_transfers_both_ways_arrive_byte_exact() {
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = warden_for(bytes.addr.port(), &dns, "deny").await;
    let target = format!("allowed.test:{}", bytes.addr.port());
    const N: usize = 48 << 20;

    // Download: every byte in order.
    let (mut down, status) = connect_tunnel(w.http, &target).await;
    assert!(status.contains(" 200"), "{status}");
    down.write_all(format!("source {N}\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::with_capacity(N);
    down.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), N);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "download corrupted"
    );

    // Upload with half-close: the upstream sees EOF, counts, and its reply still arrives.
    let (mut up, _) = connect_tunnel(w.http, &target).await;
    up.write_all(b"sink\n").await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..N >> 20 {
        up.write_all(&chunk).await.unwrap();
    }
    up.shutdown().await.unwrap();
    let mut reply = String::new();
    up.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, format!("{N}\n"));

    // Both directions at once through an echo.
    let (echo, _) = connect_tunnel(w.http, &target).await;
    let (mut r, mut wr) = echo.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(b"echo\n").await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < N {
            for (j, b) in buf.iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            wr.write_all(&buf).await.unwrap();
            sent += buf.len();
        }
        wr.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(N);
    r.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), N);
    assert!(
        echoed.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "echo corrupted"
    );

    // The audit and metrics count what moved.
    drop((down, up, r));
    let tunnels = support::eventually("three tunnel lines", async || {
        let lines: Vec<_> = w
            .audit_lines()
            .into_iter()
            .filter(|l| l["method"] == "CONNECT")
            .collect();
        (lines.len() == 3).then_some(lines)
    })
    .await;
    let down: u64 = tunnels
        .iter()
        .map(|l| l["bytes_down"].as_u64().unwrap())
        .sum();
    let up: u64 = tunnels
        .iter()
        .map(|l| l["bytes_up"].as_u64().unwrap())
        .sum();
    assert!(
        down >= 2 * N as u64 && up >= 2 * N as u64,
        "up {up} down {down}"
    );
    let text = w.metrics().await;
    let sent = support::sample(
        &text,
        "egress_warden_upstream_sent_bytes_total",
        &[("listener", "http")],
    )
    .unwrap();
    assert_eq!(sent as u64, up);
    let received = support::sample(
        &text,
        "egress_warden_upstream_received_bytes_total",
        &[("listener", "http")],
    )
    .unwrap();
    assert_eq!(received as u64, down);
}

/// Pipe descriptors the warden holds (its splice pipes, pooled or in use).
fn pipe_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

#[tokio::test]
async fn idle_tunnels_give_their_splice_pipes_back() {
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[]).await;
    let w = warden_for(bytes.addr.port(), &dns, "deny").await;
    let target = format!("127.0.0.1:{}", bytes.addr.port());
    let before = pipe_fds(w.pid);
    let mut tunnels = Vec::new();
    for _ in 0..40 {
        let (mut t, status) = connect_tunnel(w.http, &target).await;
        assert!(status.contains(" 200"), "{status}");
        // The first flight is sniffed and replayed; the second message is relayed both ways
        // through the splice pipes.
        for msg in [&b"echo\nping"[..], b"pong"] {
            t.write_all(msg).await.unwrap();
            let mut buf = [0u8; 4];
            t.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, &msg[msg.len() - 4..]);
        }
        tunnels.push(t);
    }
    // 40 open, idle tunnels: a pipe held per direction would be 160 descriptors; given back,
    // the few pooled pipes are reused from one tunnel to the next.
    let held = pipe_fds(w.pid) - before;
    assert!(held <= 8, "{held} pipe descriptors held by 40 idle tunnels");
    assert_eq!(tunnels.len(), 40);
}

/// `egress_warden_worker_connections` of each of `n` workers.
async fn worker_loads(w: &Warden, n: usize) -> Vec<f64> {
    let text = w.metrics().await;
    (0..n)
        .map(|i| {
            let worker = i.to_string();
            support::sample(
                &text,
                "egress_warden_worker_connections",
                &[("worker", &worker)],
            )
            .unwrap_or_else(|| panic!("no gauge for worker {i}:\n{text}"))
        })
        .collect()
}

#[tokio::test]
async fn tunnels_opened_at_once_are_spread_over_the_worker_threads() {
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[]).await;
    let w = Warden::builder()
        .allow(&format!("127.0.0.1:{}", bytes.addr.port()))
        .dns(dns.addr)
        .arg("--worker-threads")
        .arg("3")
        .spawn()
        .await;
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("egress-warden-"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["egress-warden-0", "egress-warden-1", "egress-warden-2"]
    );
    // Twelve tunnels at once: whichever worker accepts them, each worker serves some.
    let target = format!("127.0.0.1:{}", bytes.addr.port());
    let opening: Vec<_> = (0..12)
        .map(|_| {
            let (proxy, target) = (w.http, target.clone());
            tokio::spawn(async move { connect_tunnel(proxy, &target).await })
        })
        .collect();
    let mut tunnels = Vec::new();
    for t in opening {
        let (mut t, status) = t.await.unwrap();
        assert!(status.contains(" 200"), "{status}");
        t.write_all(b"echo\nping").await.unwrap();
        let mut buf = [0u8; 4];
        t.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        tunnels.push(t);
    }
    let loads = worker_loads(&w, 3).await;
    assert_eq!(loads.iter().sum::<f64>(), 12.0, "{loads:?}");
    assert!(loads.iter().all(|&l| l >= 2.0), "{loads:?}");
    drop(tunnels);
    support::eventually("every worker idle", async || {
        (worker_loads(&w, 3).await == [0.0; 3]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_allowed_target_that_refuses_the_connection_is_a_502_naming_why() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dns = FakeDns::start(&[]).await;
    let w = warden_for(closed.port(), &dns, "terminate").await;
    let target = closed.to_string();

    let (_, status) = connect_tunnel(w.http, &target).await;
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    s.write_all(format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 502, "{head}");

    // Both were allowed, so neither is a violation: the dial failure is recorded as such.
    for method in ["CONNECT", "GET"] {
        let line = w
            .decision(|l| l["method"] == method && l["port"] == closed.port())
            .await;
        assert_eq!(line["verdict"], "allow", "{line}");
        assert_eq!(line["error"], "connect_refused", "{line}");
    }
    assert_eq!(
        support::http_get(w.admin, "/readyz").await.0,
        200,
        "the run goes on"
    );
}

#[tokio::test]
async fn a_server_that_speaks_first_is_heard_before_the_client_says_anything() {
    // An SSH-like server: a banner on accept, a second line when asked for it over the channel
    // (after the client has read the first, so it arrives as a separate read), then an echo.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (more_tx, more_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"SSH-2.0-server\r\n").await.unwrap();
        more_rx.await.unwrap();
        s.write_all(b"second line\r\n").await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let dns = FakeDns::start(&[]).await;
    let w = warden_for(server.port(), &dns, "terminate").await;

    let (mut t, status) = connect_tunnel(w.http, &server.to_string()).await;
    assert!(status.contains(" 200"), "{status}");
    // Nothing sent yet: the banner still comes down, and so does a later server line.
    assert_eq!(read_until(&mut t, "\r\n").await, "SSH-2.0-server\r\n");
    more_tx.send(()).unwrap();
    assert_eq!(read_until(&mut t, "\r\n").await, "second line\r\n");
    // The client's first flight (not TLS, not HTTP) is relayed, and then everything after it.
    t.write_all(b"SSH-2.0-client\r\n").await.unwrap();
    assert_eq!(read_until(&mut t, "\r\n").await, "SSH-2.0-client\r\n");
    t.write_all(b"payload\n").await.unwrap();
    t.shutdown().await.unwrap();
    let mut rest = String::new();
    t.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "payload\n");

    let line = w
        .decision(|l| {
            l["method"] == "CONNECT" && l["port"] == server.port() && l["bytes_down"].is_u64()
        })
        .await;
    assert_eq!(line["verdict"], "allow", "{line}");
    let down = "SSH-2.0-server\r\nsecond line\r\nSSH-2.0-client\r\npayload\n".len();
    assert_eq!(line["bytes_down"], down, "{line}");
    assert_eq!(
        line["bytes_up"],
        "SSH-2.0-client\r\npayload\n".len(),
        "{line}"
    );
}

/// A ClientHello whose handshake header announces `msg_len` bytes, then `records` TLS records
/// of `chunk` bytes each carrying the rest (never enough to complete it).
fn fragmented_hello(msg_len: usize, records: usize, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut first = vec![1u8];
    first.extend_from_slice(&(msg_len as u32).to_be_bytes()[1..]);
    first.extend_from_slice(&[3, 3]);
    for data in std::iter::once(first).chain(std::iter::repeat_n(vec![7u8; chunk], records)) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

#[tokio::test]
async fn a_first_flight_past_the_sniff_limit_or_time_is_refused_and_says_which() {
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("allowed.test:*")
        .upstream(bytes.addr)
        .dns(dns.addr)
        .action("deny")
        .arg("--sniff-timeout")
        .arg("300ms")
        .spawn()
        .await;
    let target = format!("allowed.test:{}", bytes.addr.port());
    // Too large: a ClientHello of 16,000 bytes in 100-byte records never completes within
    // the 16 KiB the warden reads.
    let (mut t, status) = connect_tunnel(w.http, &target).await;
    assert!(status.contains(" 200"), "{status}");
    let _ = t.write_all(&fragmented_hello(16_000, 200, 100)).await;
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest).await;
    let line = w
        .decision(|l| {
            l["reason"] == "sniff_failed"
                && l["detail"].as_str().is_some_and(|d| d.contains("exceeds"))
        })
        .await;
    assert_eq!(line["bytes_up"], 0, "nothing reached the upstream: {line}");
    // Too slow: the first bytes of a hello pipelined with the CONNECT itself, then nothing.
    let mut s = tokio::net::TcpStream::connect(w.http).await.unwrap();
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
    req.extend_from_slice(&fragmented_hello(200, 1, 50));
    s.write_all(&req).await.unwrap();
    let line = w
        .decision(|l| {
            l["reason"] == "sniff_failed"
                && l["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("incomplete after 300ms"))
        })
        .await;
    assert_eq!(line["bytes_up"], 0, "{line}");
    assert_eq!(bytes.seen.sunk(), 0);
}

#[tokio::test]
async fn several_host_headers_inside_a_tunnel_are_refused() {
    let (w, up, _dns) = support::allowed_test(|b| b.action("deny")).await;
    let target = format!("allowed.test:{}", up.addr.port());
    let (mut t, status) = connect_tunnel(w.http, &target).await;
    assert!(status.contains(" 200"), "{status}");
    t.write_all(format!("GET / HTTP/1.1\r\nHost: {target}\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut t).await;
    assert_eq!(status_of(&head), 400, "{head}");
    let line = w.decision(|l| l["detail"] == "several Host headers").await;
    assert_eq!(line["reason"], "malformed_request");
    assert_eq!(up.seen.requests(), 0);
}
