//! The command-line contract: `check`, exit codes (64 before anything is bound, 1 on runtime
//! failure), `--version`, and configuration through `EGRESS_WARDEN_*` variables.

mod support;

use std::net::TcpListener;
use std::process::Command;

use support::BIN;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port that was free a moment ago (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn check_prints_the_normalised_shipped_allowlists() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/allowlists");
    let (code, out, err) = run(&["check", dir], &[]);
    assert_eq!(code, 0, "{err}");
    let rules = out.lines().filter(|l| l.contains("# ports")).count();
    assert!(rules >= 20, "{out}");
    assert!(
        out.contains("pypi.txt:") && out.contains("files.pythonhosted.org"),
        "{out}"
    );
    assert!(out.lines().last().unwrap().starts_with("ok: "), "{out}");
}

#[test]
fn check_reports_every_error_with_file_and_line_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.txt");
    std::fs::write(&file, "ok.example\nhttps://example.com/x\nfoo.*\n").unwrap();
    let (code, _, err) = run(&["check", file.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(
        err.contains("bad.txt:2: ") && err.contains("write only the host"),
        "{err}"
    );
    assert!(err.contains("bad.txt:3: "), "{err}");
}

#[test]
fn an_allowlist_directory_without_a_txt_file_is_an_error_for_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pypi.yaml"), "pypi.org\n").unwrap();
    let path = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["check", path], &[]);
    assert_eq!(code, 64, "{out}");
    assert!(err.contains(path) && err.contains("no *.txt"), "{err}");
    let (code, _, err) = run(
        &["serve", "--allowlist", path, "--http-listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, 64);
    assert!(err.contains(path) && err.contains("no *.txt"), "{err}");
}

#[test]
fn run_isolate_without_privileges_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("allow.txt");
    std::fs::write(&allow, "pypi.org\n").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // As nobody, with no capability (CI runs as root, so drop to another uid).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args([
            "run",
            "--isolate",
            "--allowlist",
            allow.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CAP_SYS_ADMIN") && err.contains("sudo") && err.contains("without --isolate"),
        "{err}"
    );
}

#[test]
fn bad_configuration_exits_64_with_nothing_bound() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "*\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                "serve",
                "--allowlist",
                bad.to_str().unwrap(),
                "--http-listen",
                &listen,
            ],
            vec![],
            "bad.txt:1",
        ),
        (
            vec!["serve", "--http-listen", &listen],
            vec![("EGRESS_WARDEN_ON_VIOLATION", "explode")],
            "explode",
        ),
        (
            vec![
                "serve",
                "--http-listen",
                &listen,
                "--connect-timeout",
                "soon",
            ],
            vec![],
            "--connect-timeout",
        ),
        (
            vec![
                "serve",
                "--http-listen",
                &listen,
                "--allowlist",
                "/nonexistent/list.txt",
            ],
            vec![],
            "/nonexistent/list.txt",
        ),
        (vec!["run", "--http-listen", &listen], vec![], "CMD"),
        (vec![], vec![], "Usage"),
    ];
    for (args, env, want) in cases {
        let (code, _, err) = run(&args, &env);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{args:?} bound a port"
        );
    }
}

#[test]
fn runtime_failures_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(
        &[
            "serve",
            "--http-listen",
            &addr,
            "--socks-listen",
            "off",
            "--admin-listen",
            "off",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr), "{err}");
    let (code, _, err) = run(
        &[
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--audit-log",
            "/nonexistent/dir/audit.jsonl",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("audit log /nonexistent/dir/audit.jsonl"),
        "{err}"
    );
}

#[test]
fn version_and_help_exit_0() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("egress-warden {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = run(&["serve", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("EGRESS_WARDEN_ALLOWLIST"), "{out}");
}

#[tokio::test]
async fn every_option_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(p("env.txt"), "from-env.test\n").unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("serve")
        .env("EGRESS_WARDEN_ALLOWLIST", p("env.txt"))
        .env("EGRESS_WARDEN_HTTP_LISTEN", "127.0.0.1:0")
        .env("EGRESS_WARDEN_SOCKS_LISTEN", "off")
        .env("EGRESS_WARDEN_ADMIN_LISTEN", "127.0.0.1:0")
        .env("EGRESS_WARDEN_RUN_ID", "env-run-1")
        .env("EGRESS_WARDEN_ON_VIOLATION", "report")
        .env("EGRESS_WARDEN_READY_FILE", p("ready.json"))
        .env("EGRESS_WARDEN_AUDIT_LOG", p("audit.jsonl"))
        .env("EGRESS_WARDEN_DNS_UPSTREAM", "127.0.0.1:9")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready: serde_json::Value = support::eventually("the ready file", async || {
        serde_json::from_str(&std::fs::read_to_string(p("ready.json")).ok()?).ok()
    })
    .await;
    assert_eq!(ready["run_id"], "env-run-1");
    assert_eq!(ready["socks"], serde_json::Value::Null);
    // The audit thread writes the start record on its own schedule, maybe after the ready file.
    let start: serde_json::Value = support::eventually("the start record", async || {
        let text = std::fs::read_to_string(p("audit.jsonl")).ok()?;
        serde_json::from_str(text.lines().next()?).ok()
    })
    .await;
    assert_eq!(start["action"], "report");
    assert_eq!(start["allowlists"][0], p("env.txt"));
    assert_eq!(start["rules"], 1);
    let admin = ready["admin"].as_str().unwrap().parse().unwrap();
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("egress_warden_build_info{run_id=\"env-run-1\""),
        "{metrics}"
    );
    child.kill().await.unwrap();
}

/// (soft, hard) `Max open files` of a process.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut words = line.split_whitespace().skip(3);
    let mut next = || words.next().unwrap().parse::<u64>().unwrap();
    (next(), next())
}

#[tokio::test]
async fn the_descriptor_limit_is_raised_to_cover_the_connection_cap() {
    // Started with a soft limit of 256 (util-linux prlimit execs the warden in place): a cap of
    // 2000 connections on one worker thread needs 2 * 2000 + 64 (its idle upstream pool) + 1024
    // descriptors, which the warden raises itself to.
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = tokio::process::Command::new("prlimit")
        .args(["--nofile=256:", "--", BIN, "serve"])
        .args(["--http-listen", "127.0.0.1:0", "--socks-listen", "off"])
        .args(["--admin-listen", "off", "--audit-log", "/dev/null"])
        .args(["--dns-upstream", "127.0.0.1:9", "--max-connections", "2000"])
        .args(["--worker-threads", "1"])
        .arg("--ready-file")
        .arg(&ready)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    support::eventually("the ready file", async || ready.exists().then_some(())).await;
    let (soft, hard) = nofile(child.id().unwrap());
    assert_eq!(soft, 5088.min(hard), "soft {soft} hard {hard}");
    child.kill().await.unwrap();
}
