//! Upload budgets: per run (`--max-upload-bytes`) and per rule (`max-upload=`); exceeding one
//! is a violation with reason `upload_budget_exceeded`.

mod support;

use support::dns::FakeDns;
use support::upstream::{ByteUpstream, HttpUpstream};
use support::{Warden, connect_tunnel, curl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_tunnel_past_the_run_budget_is_cut_and_recorded() {
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[("up.test", &["127.0.0.1"])]).await;
    let w = Warden::builder()
        .allow("up.test:*")
        .upstream(bytes.addr)
        .dns(dns.addr)
        .arg("--max-upload-bytes")
        .arg("64KiB")
        .spawn()
        .await;
    let (mut s, status) = connect_tunnel(w.http, &format!("up.test:{}", bytes.addr.port())).await;
    assert!(status.contains(" 200"), "{status}");
    s.write_all(b"sink\n").await.unwrap();
    let chunk = vec![1u8; 16 * 1024];
    let mut written = 0;
    for _ in 0..64 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
        written += chunk.len();
    }
    let _ = s.shutdown().await;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply).await;
    let line = w
        .decision(|l| l["reason"] == "upload_budget_exceeded")
        .await;
    // The upstream never received more than the budget (the tunnel is closed, so every byte
    // that got through has been read by now; "sink\n" itself is not counted).
    let sunk = bytes.seen.sunk();
    assert!(
        written > 64 * 1024,
        "the client wrote past the budget ({written})"
    );
    assert!(
        sunk + 5 <= 64 * 1024,
        "upstream got {sunk} of {written} bytes"
    );
    assert_eq!(line["verdict"], "deny");
    assert_eq!(line["violation"], true);
    assert_eq!(line["detail"], "run upload budget of 65536 bytes");
    assert!(line["bytes_up"].as_u64().unwrap() <= 64 * 1024, "{line}");
    w.metric_eq(
        "egress_warden_violations_total",
        &[("reason", "upload_budget_exceeded")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_rule_budget_refuses_a_large_plain_http_upload_and_can_end_the_run() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[("upload.test", &["127.0.0.1"])]).await;
    let mut w = Warden::builder()
        .allow("upload.test:* max-upload=10KiB")
        .upstream(up.addr)
        .dns(dns.addr)
        .action("terminate")
        .spawn()
        .await;
    let url = format!("http://upload.test:{}/", up.addr.port());
    // Small requests fit.
    let out = curl(&["-x", &w.proxy_url(), "--data-binary", "small", &url]).await;
    assert!(out.stdout.contains("body=5"), "{out:?}");
    let (_file, data) = support::body_file(100 * 1024);
    assert_eq!(w.status(&["--data-binary", &data, &url]).await, "403");
    assert_eq!(w.exit().await.code(), Some(77));
    let line = w
        .audit_lines()
        .into_iter()
        .find(|l| l["reason"] == "upload_budget_exceeded")
        .unwrap();
    assert_eq!(
        line["detail"],
        format!(
            "upload budget of 10240 bytes of rule {}:1",
            w.allow.display()
        )
    );
    assert_eq!(
        w.audit_lines().last().unwrap()["termination_reason"],
        "upload_budget_exceeded"
    );
}
