//! SOCKS5 (RFC 1928): domain, IPv4 and IPv6 targets decided by the same policy; denials and
//! unsupported commands answered with the right reply codes.

mod support;

use support::dns::FakeDns;
use support::upstream::{HttpUpstream, TlsUpstream};
use support::{Warden, curl, socks_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn curl_through_socks5_with_remote_dns_reaches_an_allowed_name() {
    let (w, up, _dns) = support::allowed_test(|b| b).await;
    let url = format!("http://allowed.test:{}/via-socks", up.addr.port());
    let out = curl(&["--socks5-hostname", &w.socks.to_string(), &url]).await;
    assert!(out.stdout.starts_with("plain GET /via-socks"), "{out:?}");
    let line = w.decision_for("allowed.test", "allow").await;
    assert_eq!(line["listener"], "socks5");
    assert!(line.get("method").is_none(), "{line}");
    w.metric_eq(
        "egress_warden_decisions_total",
        &[("listener", "socks5"), ("verdict", "allow")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn https_through_socks5_checks_sni() {
    let tls = TlsUpstream::start(&["allowed.test"]).await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("allowed.test:*")
        .upstream(tls.addr)
        .dns(dns.addr)
        .spawn()
        .await;
    let url = format!("https://allowed.test:{}/", tls.addr.port());
    let out = curl(&[
        "--socks5-hostname",
        &w.socks.to_string(),
        "--cacert",
        tls.ca(),
        &url,
    ])
    .await;
    assert!(out.stdout.starts_with("tls GET /"), "{out:?}");
}

#[tokio::test]
async fn a_socks5_tunnel_whose_sni_names_another_host_is_refused_with_an_alert() {
    let tls = TlsUpstream::start(&["allowed.test", "evil.test"]).await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("allowed.test:*")
        .upstream(tls.addr)
        .dns(dns.addr)
        .action("deny")
        .spawn()
        .await;
    let port = tls.addr.port();
    // SOCKS asks for allowed.test; the TLS hello inside names evil.test.
    let out = curl(&[
        "--socks5-hostname",
        &w.socks.to_string(),
        "--cacert",
        tls.ca(),
        "--connect-to",
        &format!("evil.test:{port}:allowed.test:{port}"),
        &format!("https://evil.test:{port}/"),
    ])
    .await;
    assert_ne!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains("access denied"), "{out:?}");
    let line = w.decision(|l| l["reason"] == "sni_mismatch").await;
    assert_eq!(line["listener"], "socks5");
    assert_eq!(line["host"], "allowed.test");
    assert_eq!(line["detail"], "sni=evil.test");
    assert_eq!(line["violation"], true);
    assert_eq!(line["bytes_up"], 0);
    assert_eq!(tls.seen.requests(), 0);
}

#[tokio::test]
async fn denied_targets_get_reply_2_and_are_recorded() {
    let dns = FakeDns::start(&[]).await;
    let w = Warden::builder()
        .allow("allowed.test")
        .dns(dns.addr)
        .spawn()
        .await;
    let (_s, reply) = socks_connect(w.socks, "evil.test", 443).await;
    assert_eq!(reply, 0x02);
    let (_s, reply) = socks_connect(w.socks, "169.254.169.254", 80).await;
    assert_eq!(reply, 0x02);
    let (_s, reply) = socks_connect(w.socks, "0x7f.0.0.1", 80).await;
    assert_eq!(reply, 0x02);
    assert_eq!(
        w.decision_for("evil.test", "deny").await["reason"],
        "domain_not_allowed"
    );
    let meta = w.decision_for("169.254.169.254", "deny").await;
    assert_eq!(meta["reason"], "special_address");
    assert_eq!(meta["detail"], "link_local");
    w.decision(|l| l["reason"] == "noncanonical_ip").await;
}

#[tokio::test]
async fn ipv6_targets_are_decided_by_ip_rules() {
    let up = HttpUpstream::start_on("[::1]:0").await;
    let w = Warden::builder()
        .allow(&format!("[::1]:{}", up.addr.port()))
        .spawn()
        .await;
    let (mut s, reply) = socks_connect(w.socks, "::1", up.addr.port()).await;
    assert_eq!(reply, 0x00);
    s.write_all(b"GET /v6 HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).await.unwrap();
    assert!(rsp.contains("plain GET /v6"), "{rsp}");
    let (_s, reply) = socks_connect(w.socks, "::1", 1).await;
    assert_eq!(reply, 0x02);
}

#[tokio::test]
async fn bind_udp_associate_and_unknown_address_types_are_refused() {
    let w = Warden::builder().allow("allowed.test").spawn().await;
    for (cmd, want) in [(2u8, 0x07u8), (3, 0x07)] {
        let mut s = TcpStream::connect(w.socks).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).await.unwrap();
        s.write_all(&[5, cmd, 0, 1, 127, 0, 0, 1, 0, 80])
            .await
            .unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], want, "command {cmd}");
    }
    let mut s = TcpStream::connect(w.socks).await.unwrap();
    s.write_all(&[5, 1, 0, 5, 1, 0, 9]).await.unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[2 + 1], 0x08, "{reply:?}");
    // A client offering only username/password is told no method is acceptable.
    let mut s = TcpStream::connect(w.socks).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0xff]);
    let line = w.decision(|l| l["reason"] == "unsupported_request").await;
    assert_eq!(line["listener"], "socks5");
    assert_eq!(line["violation"], false);
}
