//! Scraping with a real Prometheus (Debian's package): it scrapes a running warden, PromQL
//! finds the run's series with the right `run_id` after allowed and denied traffic, the shipped
//! alert rules load and fire, every query of the shipped Grafana dashboard evaluates, and
//! `promtool` accepts the exposition and the rules.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{Warden, curl, eventually, http_get};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A Prometheus server on a free loopback port, killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {ROOT}/deploy/prometheus/alerts.yaml\n\
             scrape_configs:\n  - job_name: egress-warden\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is installed (scripts/install-test-deps)");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// An instant query; `None` until Prometheus answers.
    async fn query(&self, promql: &str) -> Option<Value> {
        let url = format!("http://{}/api/v1/query", self.addr());
        let out = curl(&[
            "-fsS",
            "--get",
            "--data-urlencode",
            &format!("query={promql}"),
            &url,
        ])
        .await;
        serde_json::from_str(&out.stdout).ok()
    }

    async fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr(), path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_runs_series_and_the_alerts_fire() {
    let run_id = format!("prom-{}", std::process::id());
    let (w, up, _dns) = support::allowed_test(|b| b.arg("--run-id").arg(&run_id)).await;
    // Prometheus scrapes the run from its start, as it would in production.
    let prom = Prometheus::start(w.admin);
    let ready = format!("http://{}/-/ready", prom.addr());
    eventually("prometheus ready", async || {
        (curl(&["-fsS", &ready]).await.status == 0).then_some(())
    })
    .await;
    eventually("a first scrape", async || {
        let v = prom
            .query(&format!(
                "egress_warden_violations_total{{run_id=\"{run_id}\"}}"
            ))
            .await?;
        (!v["data"]["result"].as_array()?.is_empty()).then_some(())
    })
    .await;
    // An explicit-proxy warden has no capture: the enforcement series is absent, not 0.
    let v = prom
        .query(&format!(
            "egress_warden_enforcement_active{{run_id=\"{run_id}\"}}"
        ))
        .await
        .unwrap();
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 0, "{v}");
    // The process_* series every exporter has, under the run's id.
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        let v = prom
            .query(&format!("{name}{{run_id=\"{run_id}\"}} >= 0"))
            .await
            .unwrap();
        assert_eq!(
            v["data"]["result"].as_array().unwrap().len(),
            1,
            "{name}: {v}"
        );
    }
    let allowed = curl(&[
        "-x",
        &w.proxy_url(),
        &format!("http://allowed.test:{}/", up.addr.port()),
    ])
    .await;
    assert!(allowed.stdout.starts_with("plain GET"), "{allowed:?}");
    assert_eq!(w.status(&["http://evil.test/"]).await, "403");

    // The run's decisions, by verdict, under its run_id.
    let series = eventually("the run's decisions in Prometheus", async || {
        let v = prom
            .query(&format!(
                "egress_warden_decisions_total{{run_id=\"{run_id}\"}}"
            ))
            .await?;
        let results = v["data"]["result"].as_array()?.clone();
        (results.len() >= 2).then_some(results)
    })
    .await;
    let has = |verdict: &str, reason: &str| {
        series.iter().any(|s| {
            s["metric"]["verdict"] == verdict
                && s["metric"]["reason"] == reason
                && s["value"][1] == "1"
        })
    };
    assert!(
        has("allow", "domain_allowed") && has("deny", "domain_not_allowed"),
        "{series:?}"
    );
    assert!(
        series
            .iter()
            .all(|s| s["metric"]["run_id"] == run_id.as_str()
                && s["metric"]["job"] == "egress-warden")
    );
    let sent = prom
        .query(&format!(
            "egress_warden_upstream_sent_bytes_total{{run_id=\"{run_id}\",listener=\"http\"}}"
        ))
        .await
        .unwrap();
    assert!(
        sent["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0,
        "{sent}"
    );

    // The shipped rules are loaded and healthy, and the violation alert fires for this run.
    let rules = prom.api("/api/v1/rules").await;
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "egress-warden");
    assert!(
        group["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["health"] == "ok"),
        "{group}"
    );
    eventually("the violation alert", async || {
        let alerts = prom.api("/api/v1/alerts").await;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "EgressWardenViolation"
                    && a["labels"]["run_id"] == run_id.as_str()
                    && a["labels"]["reason"] == "domain_not_allowed"
                    && a["state"] == "firing"
            })
            .then_some(())
    })
    .await;

    // Every query of the Grafana dashboard evaluates (with its variables filled in).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/egress-warden.json"))
            .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$run_id", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            let v = prom.query(&expr).await.unwrap_or_else(|| panic!("{expr}"));
            assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
        }
    }
    let decided = prom
        .query(&format!(
            "sum(egress_warden_decisions_total{{run_id=\"{run_id}\",verdict=\"deny\"}})"
        ))
        .await
        .unwrap();
    assert_eq!(decided["data"]["result"][0]["value"][1], "1");
}

#[tokio::test]
async fn promtool_accepts_the_exposition_and_the_rules() {
    let w = Warden::builder().spawn().await;
    assert_eq!(w.status(&["http://evil.test/"]).await, "403");
    let text = w.metrics().await;
    assert!(
        text.contains("# TYPE egress_warden_decisions_total counter"),
        "{text}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = Path::new(ROOT).join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The committed dashboard is what its generator writes.
    let generated = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import json,sys; sys.path.insert(0,'{ROOT}/deploy/grafana'); import build_dashboard as b; print(json.dumps(b.dashboard(), indent=2))"
        ))
        .output()
        .unwrap();
    let committed =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/egress-warden.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&generated.stdout),
        committed,
        "run python3 deploy/grafana/build_dashboard.py"
    );
}
