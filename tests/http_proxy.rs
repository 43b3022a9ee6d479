//! Plain-HTTP proxying through the real binary: allowed requests reach the upstream, every
//! request on a keep-alive connection is decided, upstream connections outlive their client
//! only while the policy allows them, and each denial explains itself.

mod support;

use support::dns::FakeDns;
use support::upstream::HttpUpstream;
use support::{Warden, curl, raw_request, read_response, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A warden allowing `allowed.test` (resolving to the loopback upstream, which needs its own
/// IP rule because loopback is a special address).
async fn setup(action: &'static str) -> (Warden, HttpUpstream, FakeDns) {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[
        ("allowed.test", &["127.0.0.1"]),
        ("evil.test", &["127.0.0.1"]),
    ])
    .await;
    let w = Warden::builder()
        .allow("allowed.test:*")
        .upstream(up.addr)
        .dns(dns.addr)
        .action(action)
        .spawn()
        .await;
    (w, up, dns)
}

#[tokio::test]
async fn allowed_request_reaches_upstream_and_is_recorded() {
    let (w, up, dns) = setup("deny").await;
    let url = format!("http://allowed.test:{}/some/path?q=1", up.addr.port());
    let out = curl(&["-x", &w.proxy_url(), "-U", "agent:secret", &url]).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "plain GET /some/path?q=1 host=allowed.test:{} body=0 proxy_auth=false\n",
            up.addr.port()
        )
    );
    let line = w.decision_for("allowed.test", "allow").await;
    assert_eq!(line["reason"], "domain_allowed");
    assert_eq!(line["rule"], format!("{}:1", w.allow.display()));
    assert_eq!(line["ip"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["listener"], "http");
    assert_eq!(line["run_id"], w.run_id);
    assert_eq!(line["schema"], 1);
    assert!(
        line["bytes_up"].as_u64().unwrap() > 0 && line["bytes_down"].as_u64().unwrap() > 0,
        "{line}"
    );
    w.metric_eq(
        "egress_warden_decisions_total",
        &[
            ("listener", "http"),
            ("verdict", "allow"),
            ("reason", "domain_allowed"),
        ],
        1.0,
    )
    .await;
    assert!(dns.questions().contains(&"allowed.test".to_owned()));
}

#[tokio::test]
async fn denied_name_gets_403_naming_the_reason_and_is_never_resolved() {
    let (w, _up, dns) = setup("deny").await;
    let out = curl(&["-x", &w.proxy_url(), "-D", "-", "http://evil.test/"]).await;
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{out:?}");
    assert!(
        out.stdout.contains(
            "proxy-status: egress-warden; error=http_request_denied; details=\"domain_not_allowed\""
        ),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("domain_not_allowed (run {})", w.run_id)),
        "{out:?}"
    );
    let line = w.decision_for("evil.test", "deny").await;
    assert_eq!(line["reason"], "domain_not_allowed");
    assert_eq!(line["violation"], true);
    assert_eq!(line["rule"], serde_json::Value::Null);
    w.metric_eq(
        "egress_warden_violations_total",
        &[("reason", "domain_not_allowed")],
        1.0,
    )
    .await;
    assert!(
        !dns.questions().contains(&"evil.test".to_owned()),
        "a denied name must not be resolved"
    );
}

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_decided() {
    let (w, up, _dns) = setup("deny").await;
    let port = up.addr.port();
    let mut s = TcpStream::connect(w.http).await.unwrap();
    s.write_all(
        format!("GET http://allowed.test:{port}/one HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.contains("/one"));
    s.write_all(
        format!("GET http://evil.test:{port}/two HTTP/1.1\r\nHost: evil.test:{port}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(body.contains("domain_not_allowed"));
    // The same connection still serves allowed requests, over the same upstream connection.
    s.write_all(
        format!(
            "GET http://allowed.test:{port}/three HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(up.seen.requests(), 2);
    assert_eq!(up.seen.connections(), 1);
    w.decision_for("evil.test", "deny").await;
}

#[tokio::test]
async fn a_conflicting_host_header_is_denied() {
    let (w, up, _dns) = setup("deny").await;
    let url = format!("http://allowed.test:{}/", up.addr.port());
    assert_eq!(w.status(&["-H", "Host: evil.test", &url]).await, "403");
    let line = w.decision(|l| l["reason"] == "host_mismatch").await;
    assert_eq!(line["host"], "allowed.test");
    assert!(
        line["detail"].as_str().unwrap().contains("evil.test"),
        "{line}"
    );
    assert_eq!(up.seen.requests(), 0);
}

#[tokio::test]
async fn noncanonical_ip_spellings_are_denied() {
    let (w, _up, _dns) = setup("deny").await;
    let cases = [
        "GET http://2130706433/ HTTP/1.1\r\nHost: 2130706433\r\n\r\n",
        "GET http://0x7f.0.0.1/ HTTP/1.1\r\nHost: 0x7f.0.0.1\r\n\r\n",
        "GET http://0177.0.0.1/ HTTP/1.1\r\nHost: 0177.0.0.1\r\n\r\n",
        "CONNECT 127.1:443 HTTP/1.1\r\nHost: 127.1:443\r\n\r\n",
    ];
    for req in cases {
        let head = raw_request(w.http, req).await;
        assert_eq!(status_of(&head), 403, "{req:?}: {head}");
        assert!(
            head.contains("details=\"noncanonical_ip\""),
            "{req:?}: {head}"
        );
    }
    // The audit writer group-commits, so the lines land a moment after the responses.
    support::eventually("a noncanonical_ip line per request", async || {
        let count = w
            .audit_lines()
            .iter()
            .filter(|l| l["reason"] == "noncanonical_ip")
            .count();
        (count == cases.len()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_are_denied_without_ending_the_run() {
    let (w, _up, _dns) = setup("terminate").await;
    let head = raw_request(w.http, "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n").await;
    assert_eq!(status_of(&head), 400, "{head}");
    let head = raw_request(
        w.http,
        "GET https://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 501, "{head}");
    let huge = format!(
        "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let head = raw_request(w.http, &huge).await;
    assert!(status_of(&head) == 431 || head.is_empty(), "{head}");
    let line = w.decision(|l| l["reason"] == "malformed_request").await;
    assert_eq!(line["violation"], false);
    w.decision(|l| l["reason"] == "unsupported_request").await;
    // Still serving: not terminated.
    let (status, body) = support::http_get(w.admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn an_allowed_name_that_does_not_resolve_fails_closed_without_a_violation() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[]).await;
    let w = Warden::builder()
        .allow("gone.test")
        .dns(dns.addr)
        .action("terminate")
        .spawn()
        .await;
    let out = curl(&[
        "-x",
        &w.proxy_url(),
        "-D",
        "-",
        "-o",
        "/dev/null",
        "http://gone.test/",
    ])
    .await;
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{out:?}");
    assert!(out.stdout.contains("error=dns_error"), "{out:?}");
    let line = w.decision_for("gone.test", "deny").await;
    assert_eq!(line["reason"], "resolve_failed");
    assert_eq!(line["violation"], false);
    assert_eq!(up.seen.connections(), 0);
    assert_eq!(support::http_get(w.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn dns_rebinding_to_loopback_through_an_allowed_name_is_denied() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[("rebind.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("rebind.test:*")
        .dns(dns.addr)
        .spawn()
        .await;
    let url = format!("http://rebind.test:{}/", up.addr.port());
    let out = curl(&["-x", &w.proxy_url(), "-D", "-", "-o", "/dev/null", &url]).await;
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{out:?}");
    assert!(
        out.stdout.contains("details=\"special_address\""),
        "{out:?}"
    );
    let line = w.decision_for("rebind.test", "deny").await;
    assert_eq!(line["reason"], "special_address");
    assert_eq!(line["ip"], "127.0.0.1");
    assert_eq!(line["detail"], "loopback 127.0.0.1");
    assert_eq!(
        up.seen.connections(),
        0,
        "the warden must not dial an address it refused"
    );
}

#[tokio::test]
async fn only_checked_addresses_are_dialled_when_some_answers_are_refused() {
    let up = HttpUpstream::start().await;
    // A server on the refused address too, so dialling it would succeed (and be seen).
    let decoy = HttpUpstream::start_on(&format!("127.0.0.2:{}", up.addr.port())).await;
    // 127.0.0.2 has no IP rule (refused); 127.0.0.1 has one for the upstream's port.
    let dns = FakeDns::start(&[("mixed.test", &["127.0.0.2", "127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("mixed.test:*")
        .upstream(up.addr)
        .dns(dns.addr)
        .spawn()
        .await;
    let url = format!("http://mixed.test:{}/", up.addr.port());
    let out = curl(&["-x", &w.proxy_url(), &url]).await;
    assert!(out.stdout.starts_with("plain GET"), "{out:?}");
    let line = w.decision_for("mixed.test", "allow").await;
    assert_eq!(line["ip"], "127.0.0.1");
    assert_eq!(
        decoy.seen.connections(),
        0,
        "the refused address is never dialled"
    );
}

#[tokio::test]
async fn request_bodies_are_forwarded_and_counted() {
    let (w, up, _dns) = setup("deny").await;
    let (_file, data) = support::body_file(300_000);
    let url = format!("http://allowed.test:{}/upload", up.addr.port());
    let out = curl(&["-x", &w.proxy_url(), "--data-binary", &data, &url]).await;
    assert!(
        out.stdout.contains("POST /upload") && out.stdout.contains("body=300000"),
        "{out:?}"
    );
    let line = w.decision(|l| l["method"] == "POST").await;
    assert!(line["bytes_up"].as_u64().unwrap() >= 300_000, "{line}");
}

#[tokio::test]
async fn metric_labels_never_carry_sandbox_chosen_names() {
    let (w, up, _dns) = setup("deny").await;
    let url = format!("http://allowed.test:{}/", up.addr.port());
    curl(&["-x", &w.proxy_url(), &url]).await;
    curl(&[
        "-x",
        &w.proxy_url(),
        "http://evil.test/",
        "http://unique-name-1234.test/",
    ])
    .await;
    w.decision_for("unique-name-1234.test", "deny").await;
    let text = w.metrics().await;
    for name in [
        "allowed.test",
        "evil.test",
        "unique-name-1234",
        &up.addr.port().to_string(),
    ] {
        assert!(!text.contains(name), "metrics expose {name}:\n{text}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_cleanly_and_recorded() {
    let w = Warden::builder()
        .arg("--max-connections")
        .arg("2")
        .spawn()
        .await;
    // Two connections that are working (a request under way), so neither can be evicted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(w.http).await.unwrap();
        s.write_all(b"GET http://allowed.test/ HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // Both are accepted (open gauge) and past their first read before the third arrives.
    w.metric_eq(
        "egress_warden_connections_open",
        &[("listener", "http")],
        2.0,
    )
    .await;
    support::eventually("both held connections read", async || {
        let m = w.metrics().await;
        (support::sample(&m, "egress_warden_connections_waiting", &[]) == Some(0.0)).then_some(())
    })
    .await;
    let head = raw_request(
        w.http,
        "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 503, "{head}");
    assert!(head.contains("connection_limit_reached"), "{head}");
    let line = w.decision(|l| l["reason"] == "connection_limit").await;
    assert_eq!(line["violation"], false);
    drop(held);
    w.metric_eq(
        "egress_warden_connections_open",
        &[("listener", "http")],
        0.0,
    )
    .await;
    let head = raw_request(
        w.http,
        "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 403, "a slot is free again: {head}");
}

/// One request on its own client connection (`Connection: close`), read to the end.
async fn one_request(w: &Warden, host: &str, port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(w.http).await.unwrap();
    let req = format!(
        "GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    (status_of(&head), body)
}

#[tokio::test]
async fn an_upstream_connection_serves_the_next_client_only_while_the_policy_allows_it() {
    use nix::sys::signal::Signal;
    // One worker thread: the pool is per thread, so the next client is served where the
    // first one left its upstream connection.
    let (w, up, _dns) = support::allowed_test(|b| b.arg("--worker-threads").arg("1")).await;
    let port = up.addr.port();
    for path in ["/one", "/two", "/three"] {
        let (status, body) = one_request(&w, "allowed.test", port, path).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(path), "{body}");
    }
    assert_eq!(up.seen.requests(), 3);
    assert_eq!(
        up.seen.connections(),
        1,
        "three clients, one upstream connection"
    );
    // The address's IP rule is removed: the kept connection must not carry another request.
    std::fs::write(&w.allow, "allowed.test:*\n").unwrap();
    w.signal(Signal::SIGHUP);
    support::eventually("the reload", async || {
        w.audit_lines()
            .into_iter()
            .find(|l| l["event"] == "reload" && l["result"] == "ok")
    })
    .await;
    let (status, body) = one_request(&w, "allowed.test", port, "/four").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(up.seen.requests(), 3);
    let denied = w.decision_for("allowed.test", "deny").await;
    assert_eq!(denied["reason"], "special_address", "{denied}");
}

#[tokio::test]
async fn every_request_the_parser_rejects_leaves_one_record_and_counts_when_asked() {
    let (w, up, _dns) =
        support::allowed_test(|b| b.action("deny").arg("--malformed-is-violation")).await;
    let port = up.addr.port();
    let big = "a".repeat(100 * 1024);
    // (what, bytes, the status hyper answers with; 0 = closed without a response)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "NUL in a header",
            b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "invalid UTF-8 in the target",
            b"GET http://allowed.test/\xff\xfe HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec(),
            400,
        ),
        (
            "obs-fold",
            b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX: a\r\n b\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "junk method",
            b"G@T http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), 400),
        (
            "head too large",
            format!(
                "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX-Big: {big}\r\n\r\n"
            )
            .into_bytes(),
            431,
        ),
    ];
    for (what, bytes, want) in &cases {
        let mut s = TcpStream::connect(w.http).await.unwrap();
        // A client that sends more than the warden reads may see a reset: fine.
        let _ = s.write_all(bytes).await;
        let head = support::read_head(&mut s).await;
        assert!(
            status_of_or_zero(&head) == *want || head.is_empty(),
            "{what}: {head:?}"
        );
    }
    // An HTTP/2 prior-knowledge client is told in its own protocol: SETTINGS, then GOAWAY
    // with HTTP_1_1_REQUIRED.
    let mut s = TcpStream::connect(w.http).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
        .await
        .unwrap();
    assert_eq!(
        &got[..9],
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        "SETTINGS"
    );
    assert_eq!(got[12], 7, "GOAWAY frame type: {got:?}");
    assert_eq!(&got[got.len() - 4..], &[0, 0, 0, 0x0d], "HTTP_1_1_REQUIRED");
    // A CONNECT that claims a body is refused, not tunnelled.
    let head = raw_request(
        w.http,
        &format!(
            "CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\nContent-Length: 5\r\n\r\nhello"
        ),
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert_eq!(up.seen.connections(), 0, "nothing reached the upstream");
    let want = cases.len() + 2;
    let rejected = support::eventually("one record per rejected request", async || {
        let lines: Vec<_> = w
            .audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "decision")
            .collect();
        (lines.len() >= want).then_some(lines)
    })
    .await;
    assert_eq!(rejected.len(), want, "{rejected:#?}");
    for l in &rejected {
        assert!(
            l["reason"] == "malformed_request" || l["reason"] == "unsupported_request",
            "{l}"
        );
        assert_eq!(l["verdict"], "deny", "{l}");
        assert_eq!(l["violation"], true, "--malformed-is-violation: {l}");
        assert!(l["detail"].as_str().is_some_and(|d| !d.is_empty()), "{l}");
    }
    assert!(
        rejected
            .iter()
            .any(|l| l["detail"].as_str().unwrap().contains("HTTP/2")),
        "{rejected:#?}"
    );
    assert!(
        rejected
            .iter()
            .any(|l| l["method"] == "CONNECT" && l["detail"].as_str().unwrap().contains("no body")),
        "{rejected:#?}"
    );
    let metrics = w.metrics().await;
    let violations = support::sample(
        &metrics,
        "egress_warden_violations_total",
        &[("reason", "malformed_request")],
    );
    assert_eq!(violations, Some((cases.len() + 1) as f64), "{metrics}");
}

fn status_of_or_zero(head: &str) -> u16 {
    if head.is_empty() { 0 } else { status_of(head) }
}

#[tokio::test]
async fn an_alias_is_resolved_from_its_answer_and_no_unallowed_name_is_ever_asked() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[("edge.test", &["127.0.0.1"])]).await;
    // allowed.test's A answer holds the whole chain; its AAAA answer ends in the CNAME (the
    // target has no IPv6 address), which a chasing resolver would follow with its own query.
    dns.cname("allowed.test", "edge.test");
    // An alias whose target the answer does not resolve at all.
    dns.cname("dangling.test", "nowhere.test");
    let w = Warden::builder()
        .allow("allowed.test:*\ndangling.test:*")
        .upstream(up.addr)
        .dns(dns.addr)
        .action("deny")
        .spawn()
        .await;
    let port = up.addr.port();
    let out = curl(&[
        "-x",
        &w.proxy_url(),
        &format!("http://allowed.test:{port}/x"),
    ])
    .await;
    assert!(out.stdout.starts_with("plain GET /x"), "{out:?}");
    let out = curl(&[
        "-x",
        &w.proxy_url(),
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://dangling.test:{port}/"),
    ])
    .await;
    assert!(out.stdout.starts_with("HTTP/1.1 502"), "{out:?}");
    let line = w.decision_for("dangling.test", "deny").await;
    assert_eq!(line["reason"], "resolve_failed");
    let mut asked = dns.questions();
    asked.sort();
    asked.dedup();
    assert_eq!(
        asked,
        ["allowed.test", "dangling.test"],
        "only allowed names are asked"
    );
}

#[tokio::test]
async fn a_malformed_request_body_is_blamed_on_the_client_not_the_upstream() {
    let (w, up, _dns) = setup("deny").await;
    let port = up.addr.port();
    let head = raw_request(
        w.http,
        &format!(
            "POST http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert!(head.contains("error=http_request_error"), "{head}");
    let line = w.decision_for("allowed.test", "allow").await;
    assert_eq!(line["error"], "client_body_error", "{line}");
}

#[tokio::test]
async fn at_the_cap_the_connection_silent_the_longest_makes_room() {
    let w = Warden::builder()
        .arg("--max-connections")
        .arg("2")
        .spawn()
        .await;
    // Two connections that never say anything: oldest on HTTP, then one on SOCKS.
    let mut oldest = TcpStream::connect(w.http).await.unwrap();
    support::eventually("the first is waiting", async || {
        let m = w.metrics().await;
        (support::sample(&m, "egress_warden_connections_waiting", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let mut newer = TcpStream::connect(w.socks).await.unwrap();
    support::eventually("both are waiting", async || {
        let m = w.metrics().await;
        (support::sample(&m, "egress_warden_connections_waiting", &[]) == Some(2.0)).then_some(())
    })
    .await;
    // A real request is served, not refused: the oldest silent connection is closed for it.
    let head = raw_request(
        w.http,
        "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    )
    .await;
    assert_eq!(
        status_of(&head),
        403,
        "served (and denied by policy): {head}"
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), oldest.read(&mut buf))
        .await
        .expect("the oldest is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the oldest silent connection was closed");
    // The newer one is still open: nothing more was needed.
    let still =
        tokio::time::timeout(std::time::Duration::from_millis(200), newer.read(&mut buf)).await;
    assert!(
        still.is_err(),
        "the newer silent connection stays: {still:?}"
    );
    assert!(
        !w.audit_lines()
            .iter()
            .any(|l| l["reason"] == "connection_limit"),
        "nothing was refused"
    );
}
