//! SIGHUP reloads the allowlists: a good file takes effect, a bad one keeps the old policy and
//! says why (log, metric, audit).

mod support;

use nix::sys::signal::Signal;
use support::Warden;
use support::dns::FakeDns;
use support::upstream::HttpUpstream;

#[tokio::test]
async fn sighup_applies_a_good_file_and_survives_a_bad_one() {
    let up = HttpUpstream::start().await;
    let dns = FakeDns::start(&[
        ("first.test", &["127.0.0.1"]),
        ("second.test", &["127.0.0.1"]),
    ])
    .await;
    let ip_rule = format!("127.0.0.1:{}", up.addr.port());
    let w = Warden::builder()
        .allow("first.test:*")
        .allow(&ip_rule)
        .dns(dns.addr)
        .spawn()
        .await;
    let url = |host: &str| format!("http://{host}:{}/", up.addr.port());
    let code = async |host: &str| w.status(&[&url(host)]).await;
    assert_eq!(code("first.test").await, "200");
    assert_eq!(code("second.test").await, "403");
    let old_hash = w.audit_lines()[0]["policy_sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    // A good change takes effect.
    std::fs::write(
        &w.allow,
        format!("first.test:*\nsecond.test:*\n{ip_rule}\n"),
    )
    .unwrap();
    w.signal(Signal::SIGHUP);
    let reload = support::eventually("a reload line", async || {
        w.audit_lines().into_iter().find(|l| l["event"] == "reload")
    })
    .await;
    assert_eq!(reload["result"], "ok");
    assert_ne!(reload["policy_sha256"], old_hash);
    assert_eq!(reload["rules"], 3);
    assert_eq!(code("second.test").await, "200");
    w.metric_eq(
        "egress_warden_policy_reloads_total",
        &[("outcome", "ok")],
        1.0,
    )
    .await;
    w.metric_eq("egress_warden_policy_rules", &[], 3.0).await;

    // A bad change is refused and the previous policy stays.
    std::fs::write(&w.allow, "first.test:*\n*\n").unwrap();
    w.signal(Signal::SIGHUP);
    let failed = support::eventually("a failed reload line", async || {
        w.audit_lines()
            .into_iter()
            .find(|l| l["event"] == "reload" && l["result"] == "error")
    })
    .await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("allow.txt:2") && error.contains("would allow every host"),
        "{error}"
    );
    assert_eq!(failed["policy_sha256"], reload["policy_sha256"]);
    w.metric_eq(
        "egress_warden_policy_reloads_total",
        &[("outcome", "error")],
        1.0,
    )
    .await;
    assert_eq!(code("second.test").await, "200");
    assert!(
        w.stderr_text().contains("allowlist reload failed"),
        "{}",
        w.stderr_text()
    );
}
