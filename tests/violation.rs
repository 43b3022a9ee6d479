//! What a violation does: `terminate` closes every connection, answers later requests "run
//! terminated", exits 77 and (under `run`) kills the whole process tree; `deny` refuses only
//! that connection; `report` lets it through and records it everywhere.

mod support;

use std::time::Duration;

use support::dns::FakeDns;
use support::upstream::{ByteUpstream, HttpUpstream};
use support::{Warden, connect_tunnel, curl, raw_request, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn terminate_cuts_open_tunnels_refuses_later_requests_and_exits_77() {
    let message = tempfile::NamedTempFile::new().unwrap();
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let mut w = Warden::builder()
        .allow("allowed.test:*")
        .upstream(bytes.addr)
        .dns(dns.addr)
        .action("terminate")
        .arg("--termination-drain")
        .arg("3s")
        .arg("--termination-message-path")
        .arg(message.path().to_str().unwrap())
        .spawn()
        .await;
    // An open, working tunnel.
    let (mut tunnel, status) =
        connect_tunnel(w.http, &format!("allowed.test:{}", bytes.addr.port())).await;
    assert!(status.contains(" 200"), "{status}");
    tunnel.write_all(b"echo\nping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // The violation: the violating client still learns why.
    let out = curl(&["-x", &w.proxy_url(), "-D", "-", "http://evil.test/"]).await;
    assert!(out.stdout.starts_with("HTTP/1.1 403"), "{out:?}");
    assert!(out.stdout.contains("domain_not_allowed"), "{out:?}");

    // The open tunnel is cut at once.
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(2), tunnel.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "the tunnel stayed open after termination");

    // Later requests, even to allowed hosts, are refused as "run terminated".
    let head = raw_request(
        w.http,
        "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(head.contains("details=\"run_terminated\""), "{head}");
    let (status, _) = support::http_get(w.admin, "/readyz").await;
    assert_eq!(status, 503);
    let text = w.metrics().await;
    assert_eq!(
        support::sample(&text, "egress_warden_run_terminated", &[]),
        Some(1.0),
        "{text}"
    );

    assert_eq!(w.exit().await.code(), Some(77));
    let lines = w.audit_lines();
    assert_eq!(lines.first().unwrap()["event"], "start");
    let end = lines.last().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["outcome"], "terminated");
    assert_eq!(end["exit_code"], 77);
    assert_eq!(end["termination_reason"], "domain_not_allowed");
    assert_eq!(end["termination_detail"], "http evil.test:80");
    // What Kubernetes shows in `kubectl describe pod`.
    assert_eq!(
        std::fs::read_to_string(message.path()).unwrap(),
        format!(
            "egress-warden terminated run {}: domain_not_allowed http evil.test:80 (exit 77)\n",
            w.run_id
        )
    );
    let cut_line = lines.iter().find(|l| l["method"] == "CONNECT").unwrap();
    assert_eq!(cut_line["error"], "run_terminated");
    assert!(lines.iter().any(|l| l["reason"] == "run_terminated"));
    let summary = w.summary_json();
    assert_eq!(summary["outcome"], "terminated");
    assert_eq!(summary["exit_code"], 77);
    assert_eq!(summary["violations_total"], 1);
    assert_eq!(summary["violations"][0]["host"], "evil.test");
    assert_eq!(summary["violations"][0]["reason"], "domain_not_allowed");
    assert_eq!(summary["hosts"]["evil.test"]["denied"], 1);
    assert!(
        summary["policy_sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

fn alive(pid: i32) -> bool {
    // A zombie is dead: only its exit status is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn run_kills_the_whole_process_tree_on_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A background child, and a grandchild that left the process group with setsid.
    let script = format!(
        "sleep 1000 & echo $! > {d}/bg; \
         setsid sh -c 'sleep 1000 & echo $! > {d}/escaped; wait' & \
         while [ ! -s {d}/escaped ]; do sleep 0.01; done; \
         curl -s -x $HTTP_PROXY http://evil.test/ > {d}/curl.out; \
         sleep 1000"
    );
    let mut w = Warden::builder()
        .action("terminate")
        .run(&["sh", "-c", &script])
        .spawn()
        .await;
    let pids: Vec<i32> = support::eventually("the sandbox's pids", async || {
        ["bg", "escaped"]
            .iter()
            .map(|name| {
                std::fs::read_to_string(dir.path().join(name))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    })
    .await;
    // Timed from the violation's own record, not from start-up.
    let violation = w.decision(|l| l["violation"] == true).await;
    let at = humantime::parse_rfc3339(violation["ts"].as_str().unwrap()).unwrap();
    let dead = support::eventually("the whole tree dead", async || {
        pids.iter()
            .all(|&pid| !alive(pid))
            .then(std::time::SystemTime::now)
    })
    .await;
    let took = dead.duration_since(at).unwrap_or_default();
    assert!(
        took < Duration::from_secs(1),
        "the tree outlived the violation by {took:?}"
    );
    assert_eq!(w.exit().await.code(), Some(77), "{}", w.stderr_text());
    let lines = w.audit_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["host"] == "evil.test" && l["violation"] == true)
    );
    assert_eq!(lines.last().unwrap()["outcome"], "terminated");
}

#[tokio::test]
async fn run_sets_the_proxy_environment_and_exits_with_the_command_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let script = format!(
        "echo \"$HTTP_PROXY $http_proxy $HTTPS_PROXY $https_proxy $ALL_PROXY $all_proxy $NO_PROXY\" > {}; exit 3",
        out.display()
    );
    let mut w = Warden::builder()
        .run(&["sh", "-c", &script])
        .env("HTTP_PROXY", "http://stale.example:1")
        .spawn()
        .await;
    assert_eq!(w.exit().await.code(), Some(3));
    let env = std::fs::read_to_string(&out).unwrap();
    let http = format!("http://{}", w.http);
    let socks = format!("socks5h://{}", w.socks);
    assert_eq!(
        env.trim(),
        format!("{http} {http} {http} {http} {socks} {socks} localhost,127.0.0.1,::1")
    );
    assert_eq!(w.audit_lines().last().unwrap()["outcome"], "exited");
    assert_eq!(w.summary_json()["exit_code"], 3);
}

#[tokio::test]
async fn run_with_pip_style_clients_uses_the_proxy() {
    // curl honours the variables `run` sets, without being told about the proxy.
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[("pkg.test", &["127.0.0.1"])]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let url = format!("http://pkg.test:{}/simple/", up.addr.port());
    let script = format!("curl -sS {url} > {}", out.display());
    let mut w = Warden::builder()
        .allow("pkg.test:*")
        .upstream(up.addr)
        .dns(dns.addr)
        .run(&["sh", "-c", &script])
        .spawn()
        .await;
    assert_eq!(w.exit().await.code(), Some(0), "{}", w.stderr_text());
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("plain GET /simple/")
    );
}

#[tokio::test]
async fn report_lets_a_violation_through_and_records_it_everywhere() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[("unlisted.test", &["127.0.0.1"])]).await;
    let mut w = Warden::builder()
        .upstream(up.addr)
        .dns(dns.addr)
        .action("report")
        .spawn()
        .await;
    let url = format!("http://unlisted.test:{}/rollout", up.addr.port());
    let out = curl(&["-x", &w.proxy_url(), &url]).await;
    assert!(out.stdout.starts_with("plain GET /rollout"), "{out:?}");
    let line = w.decision_for("unlisted.test", "report").await;
    assert_eq!(line["reason"], "domain_not_allowed");
    assert_eq!(line["violation"], true);
    assert!(line["bytes_down"].as_u64().unwrap() > 0);
    w.metric_eq(
        "egress_warden_decisions_total",
        &[("verdict", "report"), ("reason", "domain_not_allowed")],
        1.0,
    )
    .await;
    w.metric_eq(
        "egress_warden_violations_total",
        &[("reason", "domain_not_allowed")],
        1.0,
    )
    .await;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    let summary = w.summary_json();
    assert_eq!(summary["violations"][0]["verdict"], "report");
    assert_eq!(summary["outcome"], "shutdown");
}

#[tokio::test]
async fn deny_refuses_only_the_violating_connection() {
    let (w, up, _dns) = support::allowed_test(|b| b.action("deny")).await;
    assert_eq!(w.status(&["http://evil.test/"]).await, "403");
    let out = curl(&[
        "-x",
        &w.proxy_url(),
        &format!("http://allowed.test:{}/", up.addr.port()),
    ])
    .await;
    assert!(out.stdout.starts_with("plain GET"), "{out:?}");
    assert_eq!(support::http_get(w.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn malformed_requests_end_the_run_only_when_asked() {
    let mut w = Warden::builder()
        .action("terminate")
        .arg("--malformed-is-violation")
        .spawn()
        .await;
    let head = raw_request(w.http, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert_eq!(w.exit().await.code(), Some(77));
    let line = w
        .audit_lines()
        .into_iter()
        .find(|l| l["reason"] == "malformed_request")
        .unwrap();
    assert_eq!(line["violation"], true);
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let mut w = Warden::builder().spawn().await;
    // An explicit proxy needs no privilege: a root warden drops every capability on every thread.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if root {
        support::eventually("capabilities dropped", async || {
            support::thread_capabilities(w.pid)
                .iter()
                .all(|&(eff, bnd)| eff == 0 && bnd == 0)
                .then_some(())
        })
        .await;
    }
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    let end = w.audit_lines().pop().unwrap();
    assert_eq!(end["outcome"], "shutdown");
    assert_eq!(end["exit_code"], 0);
    // Sent by the warden's parent (this test): a clean end, with the sender on record.
    assert_eq!(end["signal"]["signal"], 15);
    assert_eq!(end["signal"]["pid"], std::process::id());
}

#[tokio::test]
async fn a_sandbox_that_signals_the_warden_ends_the_run_as_signalled_not_clean() {
    // The sandbox is the warden's child under `run`: it sends SIGTERM to the warden.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sandbox.pid");
    let script = format!(
        "echo $$ > {}; kill -TERM $PPID; sleep 100",
        pid_file.display()
    );
    let mut w = Warden::builder()
        .action("terminate")
        .run(&["sh", "-c", &script])
        .spawn()
        .await;
    let code = w.exit().await.code();
    let sandbox_pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(code, Some(1), "{}", w.stderr_text());
    let end = w.audit_lines().pop().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["outcome"], "signalled", "{end}");
    assert_eq!(end["exit_code"], 1);
    assert_eq!(end["signal"]["signal"], 15);
    assert_eq!(end["signal"]["pid"], sandbox_pid, "{end}");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    assert_eq!(end["signal"]["uid"], uid);
    let summary = w.summary_json();
    assert_eq!(summary["outcome"], "signalled");
    assert_eq!(summary["signal"]["pid"], sandbox_pid);
    assert!(!alive(sandbox_pid as i32), "the sandbox went with it");
}

#[tokio::test]
async fn a_tunnel_cut_by_the_shutdown_drain_is_recorded_as_such_not_as_a_violation() {
    let bytes = ByteUpstream::start().await;
    let dns = FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let mut w = Warden::builder()
        .allow("allowed.test:*")
        .upstream(bytes.addr)
        .dns(dns.addr)
        .action("terminate")
        .arg("--drain-timeout")
        .arg("200ms")
        .spawn()
        .await;
    let (mut tunnel, status) =
        connect_tunnel(w.http, &format!("allowed.test:{}", bytes.addr.port())).await;
    assert!(status.contains(" 200"), "{status}");
    tunnel.write_all(b"echo\nping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.unwrap();
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    let line = w
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "decision" && l["method"] == "CONNECT")
        .expect("the tunnel's record");
    assert_eq!(line["verdict"], "allow");
    assert_eq!(line["error"], "shutdown_drain_timeout", "{line}");
    let end = w.audit_lines().pop().unwrap();
    assert_eq!(end["outcome"], "shutdown");
}

#[tokio::test]
async fn a_full_audit_disk_stops_the_run_with_whole_lines_and_nothing_allowed_unrecorded() {
    // 64 KiB of disk with 16 KiB kept in reserve: a couple of hundred lines fit.
    let (mut w, up, _dns) = support::allowed_test(|b| {
        b.action("deny")
            .arg("--audit-reserve")
            .arg("16KiB")
            .audit_on_tmpfs("64k")
    })
    .await;
    let url = format!("http://allowed.test:{}/fill", up.addr.port());
    let proxy = w.proxy_url();
    // Sequential requests on keep-alive connections until the warden stops answering.
    let mut args = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        "-x",
        &proxy,
    ];
    args.extend(std::iter::repeat_n(url.as_str(), 1000));
    let out = curl(&args).await;
    let codes: Vec<&str> = out.stdout.lines().collect();
    assert!(codes.contains(&"200"), "{out:?}");
    assert_eq!(w.exit().await.code(), Some(1), "{}", w.stderr_text());
    assert!(w.stderr_text().contains("audit log"), "{}", w.stderr_text());
    let text = std::fs::read_to_string(&w.audit).unwrap();
    assert!(text.ends_with('\n'), "no torn last line");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect();
    let allowed = lines
        .iter()
        .filter(|l| l["event"] == "decision" && l["verdict"] == "allow")
        .count();
    assert!(allowed > 50, "{allowed} allowed before the disk filled");
    assert_eq!(
        up.seen.requests(),
        allowed,
        "every request that reached the upstream has its line"
    );
    assert!(
        codes.len() < 1000 || codes.iter().any(|c| *c != "200"),
        "the run stopped before all 1000 requests went through"
    );
    let end = lines.last().unwrap();
    assert_eq!(
        end["event"], "end",
        "the end record still fits in the reserve"
    );
    assert_eq!(end["outcome"], "failed");
}
