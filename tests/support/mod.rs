//! Test harness: starts the real `egress-warden` binary on port 0 and waits for its ready
//! file, plus an in-test DNS server and upstream servers on loopback. No test touches the
//! internet; nothing here sleeps where a readiness signal exists.
// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod dns;
pub mod netns;
pub mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a test waits for something asynchronous (ready file, audit line, exit).
pub const PATIENCE: Duration = Duration::from_secs(15);

pub const BIN: &str = env!("CARGO_BIN_EXE_egress-warden");

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The common scene: an HTTP upstream on loopback, `allowed.test` resolving to it, and a warden
/// allowing that name on any port (and the upstream's address); `more` adds to the builder.
pub async fn allowed_test(
    more: impl FnOnce(Builder) -> Builder,
) -> (Warden, upstream::HttpUpstream, dns::FakeDns) {
    let up = upstream::HttpUpstream::start().await;
    let dns = dns::FakeDns::start(&[("allowed.test", &["127.0.0.1"])]).await;
    let b = Warden::builder()
        .allow("allowed.test:*")
        .upstream(up.addr)
        .dns(dns.addr);
    let w = more(b).spawn().await;
    (w, up, dns)
}

pub struct Builder {
    allow: String,
    dns: Option<SocketAddr>,
    action: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    run: Option<Vec<String>>,
    netns: Option<String>,
    admin_from: Option<(String, std::net::IpAddr)>,
    audit_tmpfs: Option<String>,
}

impl Builder {
    pub fn allow(mut self, rules: &str) -> Self {
        self.allow.push_str(rules);
        self.allow.push('\n');
        self
    }
    /// Allows the loopback upstream at `addr`: loopback is a special address, so a name that
    /// resolves to it needs this IP rule next to its name rule.
    pub fn upstream(self, addr: SocketAddr) -> Self {
        self.allow(&addr.to_string())
    }
    pub fn dns(mut self, addr: SocketAddr) -> Self {
        self.dns = Some(addr);
        self
    }
    pub fn action(mut self, action: &'static str) -> Self {
        self.action = action;
        self
    }
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Runs the warden inside a test network namespace (`ip netns exec`).
    pub fn netns(mut self, ns: &netns::Netns) -> Self {
        self.netns = Some(ns.name.clone());
        self
    }

    /// Serves the admin endpoints on all addresses and reaches them from the namespace `from`
    /// at `ip`, as a scraper outside the warden's namespace would (under capture, loopback to
    /// the admin port is closed to everything but the warden).
    pub fn admin_from(mut self, from: &netns::Netns, ip: &str) -> Self {
        self.admin_from = Some((from.name.clone(), ip.parse().unwrap()));
        self
    }

    /// Writes the audit log on a tmpfs of `size` mounted in the warden's own mount namespace
    /// (`unshare -m`), copied to [`Warden::audit`] once the warden has exited.
    pub fn audit_on_tmpfs(mut self, size: &str) -> Self {
        self.audit_tmpfs = Some(size.into());
        self
    }

    /// Starts `egress-warden run ... -- CMD` instead of `serve`.
    pub fn run(mut self, cmd: &[&str]) -> Self {
        self.run = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Starts the binary and waits for its ready file.
    pub async fn spawn(self) -> Warden {
        let dir = tempfile::tempdir().unwrap();
        let allow = dir.path().join("allow.txt");
        std::fs::write(&allow, &self.allow).unwrap();
        let ready = dir.path().join("ready.json");
        let audit = dir.path().join("audit.jsonl");
        let summary = dir.path().join("summary.json");
        let stderr = dir.path().join("stderr.log");
        let stdout = dir.path().join("stdout.log");
        let mut cmd = match (&self.netns, &self.audit_tmpfs) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            (None, Some(size)) => {
                let fs = dir.path().join("auditfs");
                std::fs::create_dir(&fs).unwrap();
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"]);
                c.arg(
                    r#"size=$1 fs=$2 copy=$3; shift 3
mount -t tmpfs -o "size=$size" tmpfs "$fs" || exit 99
"$@" --audit-log "$fs/audit.jsonl"; rc=$?
cp "$fs/audit.jsonl" "$copy"; exit $rc"#,
                );
                c.args(["sh", size, path(&fs), path(&audit), BIN]);
                c
            }
            (None, None) => Command::new(BIN),
        };
        cmd.arg(if self.run.is_some() { "run" } else { "serve" });
        cmd.args(["--allowlist", path(&allow)])
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--socks-listen",
                "127.0.0.1:0",
                "--admin-listen",
                if self.admin_from.is_some() {
                    "0.0.0.0:0"
                } else {
                    "127.0.0.1:0"
                },
            ])
            .args([
                "--ready-file",
                path(&ready),
                "--summary-file",
                path(&summary),
            ])
            .args(["--on-violation", self.action])
            .args([
                "--dns-upstream",
                &self.dns.map_or("127.0.0.1:9".into(), |a| a.to_string()),
            ])
            .args(&self.args)
            .args(match self.audit_tmpfs {
                Some(_) => vec![],
                None => vec!["--audit-log", path(&audit)],
            })
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true);
        if let Some(run) = &self.run {
            cmd.arg("--").args(run);
        }
        let mut child = cmd.spawn().expect("start egress-warden");
        let addrs: Value = eventually("the ready file", async || {
            if let Some(addrs) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                return Some(addrs);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "egress-warden exited early with {status}: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            None
        })
        .await;
        let addr = |k: &str| addrs[k].as_str().map(|s| s.parse::<SocketAddr>().unwrap());
        Warden {
            http: addr("http").unwrap(),
            socks: addr("socks").unwrap(),
            admin: match &self.admin_from {
                Some((_, ip)) => SocketAddr::new(*ip, addr("admin").unwrap().port()),
                None => addr("admin").unwrap(),
            },
            pid: addrs["pid"].as_u64().unwrap() as i32,
            run_id: addrs["run_id"].as_str().unwrap().to_owned(),
            child,
            allow,
            audit,
            summary,
            stderr,
            stdout,
            netns: self.admin_from.map(|(ns, _)| ns).or(self.netns),
            _dir: dir,
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub struct Warden {
    pub http: SocketAddr,
    pub socks: SocketAddr,
    pub admin: SocketAddr,
    pub pid: i32,
    pub run_id: String,
    pub child: Child,
    pub allow: PathBuf,
    pub audit: PathBuf,
    pub summary: PathBuf,
    pub stderr: PathBuf,
    pub stdout: PathBuf,
    netns: Option<String>,
    _dir: tempfile::TempDir,
}

impl Warden {
    pub fn builder() -> Builder {
        Builder {
            allow: String::new(),
            dns: None,
            action: "deny",
            args: vec![],
            env: vec![],
            run: None,
            netns: None,
            admin_from: None,
            audit_tmpfs: None,
        }
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The HTTP status curl got for `args` through the HTTP listener.
    pub async fn status(&self, args: &[&str]) -> String {
        let proxy = self.proxy_url();
        let mut all = vec![
            "-x",
            proxy.as_str(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        all.extend_from_slice(args);
        curl(&all).await.stdout
    }

    /// Every audit line written so far.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}"))
            })
            .collect()
    }

    /// Waits for a decision line matching `pred`.
    pub async fn decision(&self, pred: impl Fn(&Value) -> bool) -> Value {
        eventually("an audit decision line", async || {
            self.audit_lines()
                .into_iter()
                .find(|l| l["event"] == "decision" && pred(l))
        })
        .await
    }

    /// Waits for a decision line for `host` (and the given verdict).
    pub async fn decision_for(&self, host: &str, verdict: &str) -> Value {
        self.decision(|l| l["host"] == host && l["verdict"] == verdict)
            .await
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }

    /// GET on the admin listener (from inside the namespace it is reached from, if any).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        match &self.netns {
            Some(name) => netns::http_get_in(name, self.admin, path),
            None => http_get(self.admin, path).await,
        }
    }

    /// Waits until the sample `name{labels}` (run_id implied) has value `want`.
    pub async fn metric_eq(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.metrics().await;
            let last = sample(&text, name, labels);
            if last == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name}{labels:?}: want {want}, last {last:?}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).unwrap();
    }

    /// Waits for the process to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "egress-warden did not exit; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn summary_json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.summary).unwrap()).unwrap()
    }
}

/// Parses one sample `name{labels...}` from an exposition, matching the given labels.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let found: BTreeMap<&str, &str> = rest
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            labels
                .iter()
                .all(|(k, v)| found.get(k) == Some(v))
                .then(|| value.parse().ok())?
        })
}

/// A temporary file of `len` bytes and the `@path` curl takes to send it as a body.
pub fn body_file(len: usize) -> (tempfile::NamedTempFile, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![b'x'; len]).unwrap();
    let arg = format!("@{}", file.path().display());
    (file, arg)
}

/// A minimal HTTP/1.0 GET (for the admin endpoints): returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What a curl invocation printed.
#[derive(Debug)]
pub struct CurlOut {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs curl with `args` (plus `-sS`); never the network outside the test.
pub async fn curl(args: &[&str]) -> CurlOut {
    let out = Command::new("curl")
        .arg("-sS")
        .args(["--max-time", "20", "--noproxy", ""])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .output()
        .await
        .expect("curl is installed");
    CurlOut {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends raw bytes to the HTTP listener and returns the response head.
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut s).await
}

/// Reads until the end of an HTTP response head (and whatever arrived with it); a reset or
/// early close ends it with what arrived before.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("response in time");
        match read {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a CONNECT tunnel through the HTTP listener; returns the stream and the status line.
pub async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head.lines().next().unwrap_or_default().to_owned())
}

/// SOCKS5 CONNECT with a domain or IP target; returns the stream and the reply code.
pub async fn socks_connect(proxy: SocketAddr, host: &str, port: u16) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    let mut req = vec![5, 1, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            req.push(3);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.unwrap();
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => panic!("unexpected address type in reply {head:?}"),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await.unwrap();
    (s, head[1])
}

/// Reads from `s` until what arrived contains `needle`; returns all of it.
pub async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive connection.
pub async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("body in time")
            .unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        head,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
    )
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The effective and bounding capability masks of every thread of `pid`.
pub fn thread_capabilities(pid: i32) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or(u64::MAX)
        };
        out.push((field("CapEff:"), field("CapBnd:")));
    }
    assert!(!out.is_empty());
    out
}
