//! The command line (the contract other tools rely on) and its validation into a [`Config`].
//! Every option is also an environment variable `EGRESS_WARDEN_<NAME>`; everything is checked
//! here, before any socket is bound, so a bad flag exits 64 with nothing listening.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::size::parse_size;

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "egress-warden",
    version,
    about = "Egress-control sidecar: allowlisted HTTP/SOCKS5 proxy that ends the run on a violation",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar until SIGTERM/SIGINT (exit 0) or a terminating violation (exit 77).
    Serve(Options),
    /// Launch CMD as the sandbox with the proxy environment set, police it, exit with its code
    /// (or 77 if the run was terminated).
    Run(RunArgs),
    /// Validate allowlists and print each rule's normalised form; exit 64 on any error.
    Check(CheckArgs),
    /// Install the transparent-capture ruleset (nftables) in this network namespace.
    Init(InitArgs),
    /// Exit 0 if the warden that wrote READY_FILE is up and ready (capture proven, if on):
    /// a container health check that needs no shell and no network.
    Healthcheck(HealthcheckArgs),
    /// Internal: enter a sandbox network namespace, drop every capability, exec CMD.
    #[command(hide = true)]
    SandboxExec(SandboxExecArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The `--ready-file` of the warden to check.
    #[arg(long, env = "EGRESS_WARDEN_READY_FILE", value_name = "PATH")]
    pub ready_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct SandboxExecArgs {
    /// The namespace to enter (`/proc/PID/fd/N`).
    #[arg(long)]
    pub netns: String,
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub capture: CaptureOptions,
    /// The warden's admin port, which the sandbox may not reach over loopback; `off` for none.
    /// Must match the port of `serve --admin-listen`.
    #[arg(
        long,
        env = "EGRESS_WARDEN_ADMIN_PORT",
        default_value = "9090",
        value_name = "PORT|off"
    )]
    pub admin_port: String,
    /// Remove the ruleset instead (no error if it is not installed).
    #[arg(long, conflicts_with = "print")]
    pub remove: bool,
    /// Print the ruleset as nft text instead of installing it.
    #[arg(long)]
    pub print: bool,
}

/// Where captured traffic goes, shared by `init` and `serve` so the two always agree.
#[derive(Debug, Clone, Args)]
pub struct CaptureOptions {
    /// Port of the transparent listener (on 127.0.0.1 and ::1) that captured TCP is redirected to.
    #[arg(
        long,
        env = "EGRESS_WARDEN_TRANSPARENT_PORT",
        default_value_t = 15001,
        value_name = "PORT"
    )]
    pub transparent_port: u16,
    /// Port of the DNS listener (UDP and TCP, on 127.0.0.1 and ::1) that captured DNS is redirected to.
    #[arg(
        long,
        env = "EGRESS_WARDEN_DNS_PORT",
        default_value_t = 15353,
        value_name = "PORT"
    )]
    pub dns_port: u16,
    /// SO_MARK of the warden's own upstream sockets, exempt from capture (needs CAP_NET_ADMIN).
    #[arg(
        long,
        env = "EGRESS_WARDEN_MARK",
        default_value = "0x6577",
        value_name = "N"
    )]
    pub mark: String,
}

impl CaptureOptions {
    /// The ruleset these options describe, without the admin port (which `init` takes as a
    /// flag and `serve` from `--admin-listen`).
    pub fn spec_without_admin(&self) -> Result<crate::capture::Spec, ConfigError> {
        let port = |flag: &'static str, v: u16| {
            if v == 0 {
                Err(invalid(flag, "0", "expected a port from 1 to 65535"))
            } else {
                Ok(v)
            }
        };
        let mark = parse_mark(&self.mark).ok_or_else(|| {
            invalid(
                "mark",
                &self.mark,
                "expected a non-zero 32-bit number (decimal or 0x-hex)",
            )
        })?;
        let spec = crate::capture::Spec {
            mark,
            transparent_port: port("transparent-port", self.transparent_port)?,
            dns_port: port("dns-port", self.dns_port)?,
            admin_port: None,
        };
        if spec.transparent_port == spec.dns_port {
            return Err(invalid(
                "dns-port",
                &spec.dns_port.to_string(),
                "the transparent and DNS ports must differ",
            ));
        }
        Ok(spec)
    }
}

impl InitArgs {
    /// The ruleset `init` installs.
    pub fn spec(&self) -> Result<crate::capture::Spec, ConfigError> {
        let mut spec = self.capture.spec_without_admin()?;
        spec.admin_port = match self.admin_port.as_str() {
            "off" => None,
            v => Some(
                crate::host::parse_port(v)
                    .ok_or_else(|| invalid("admin-port", v, "expected a port or 'off'"))?,
            ),
        };
        if spec
            .admin_port
            .is_some_and(|p| p == spec.transparent_port || p == spec.dns_port)
        {
            return Err(invalid(
                "admin-port",
                &self.admin_port,
                "the admin port must differ from the transparent and DNS ports",
            ));
        }
        Ok(spec)
    }
}

/// A socket mark: decimal or `0x` hex, non-zero.
pub fn parse_mark(s: &str) -> Option<u32> {
    let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => s.parse().ok()?,
    };
    (n != 0).then_some(n)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub options: Options,
    /// Run CMD in a fresh network namespace whose only way out is the warden (transparent
    /// capture of all TCP and DNS, everything else dropped); CMD holds no capabilities, even
    /// as root. Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
    #[arg(long, env = "EGRESS_WARDEN_ISOLATE")]
    pub isolate: bool,
    /// The sandbox command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Allowlist files, or directories whose `*.txt` files are loaded.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    pub paths: Vec<PathBuf>,
}

/// What a violation does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Refuse, then end the run: close every connection, exit 77 after a short drain.
    Terminate,
    /// Refuse this connection only.
    Deny,
    /// Let it through, recorded everywhere as a would-be denial (to roll out a new list).
    Report,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Terminate => "terminate",
            Action::Deny => "deny",
            Action::Report => "report",
        }
    }
}

/// Options shared by `serve` and `run`.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Allowlist file or directory (every `*.txt` in it); repeatable. None: deny everything.
    #[arg(
        long = "allowlist",
        env = "EGRESS_WARDEN_ALLOWLIST",
        value_name = "FILE_OR_DIR",
        value_delimiter = ','
    )]
    pub allowlists: Vec<PathBuf>,
    /// Explicit HTTP proxy listener (plain HTTP and CONNECT).
    #[arg(
        long,
        env = "EGRESS_WARDEN_HTTP_LISTEN",
        default_value = "127.0.0.1:3128",
        value_name = "ADDR"
    )]
    pub http_listen: String,
    /// SOCKS5 listener, or `off`.
    #[arg(
        long,
        env = "EGRESS_WARDEN_SOCKS_LISTEN",
        default_value = "127.0.0.1:1080",
        value_name = "ADDR|off"
    )]
    pub socks_listen: String,
    /// Admin listener (/metrics, /healthz, /readyz), or `off`.
    #[arg(
        long,
        env = "EGRESS_WARDEN_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090",
        value_name = "ADDR|off"
    )]
    pub admin_listen: String,
    /// DNS server the warden resolves allowed names with (IP or IP:PORT). Default (or empty):
    /// the first nameserver in /etc/resolv.conf.
    #[arg(long, env = "EGRESS_WARDEN_DNS_UPSTREAM", value_name = "ADDR")]
    pub dns_upstream: Option<String>,
    /// What a violation does.
    #[arg(long, env = "EGRESS_WARDEN_ON_VIOLATION", value_enum, default_value_t = Action::Terminate)]
    pub on_violation: Action,
    /// Identifies this run in metrics, audit and summary (`[A-Za-z0-9._-]`, ≤ 128). Default (or
    /// empty): a fresh one.
    #[arg(long, env = "EGRESS_WARDEN_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,
    /// Audit log (JSON lines): a file path, or `-` for stdout. Default: stderr.
    #[arg(long, env = "EGRESS_WARDEN_AUDIT_LOG", value_name = "PATH|-")]
    pub audit_log: Option<String>,
    /// Disk space an audit file keeps allocated ahead of its end: room for the lines of the
    /// requests in flight when the disk fills (the run then stops). `0` turns it off.
    #[arg(
        long,
        env = "EGRESS_WARDEN_AUDIT_RESERVE",
        default_value = "4MiB",
        value_name = "SIZE"
    )]
    pub audit_reserve: String,
    /// Write the run summary (JSON) here at exit.
    #[arg(long, env = "EGRESS_WARDEN_SUMMARY_FILE", value_name = "PATH")]
    pub summary_file: Option<PathBuf>,
    /// Write `{"http","socks","admin"}` bound addresses (JSON) here once every listener is bound.
    #[arg(long, env = "EGRESS_WARDEN_READY_FILE", value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Cap on bytes sent upstream over the whole run (e.g. `50MiB`). Exceeding it is a violation.
    #[arg(long, env = "EGRESS_WARDEN_MAX_UPLOAD_BYTES", value_name = "SIZE")]
    pub max_upload_bytes: Option<String>,
    /// Count malformed or unsupported requests as violations (default: deny them, no violation).
    #[arg(long, env = "EGRESS_WARDEN_MALFORMED_IS_VIOLATION")]
    pub malformed_is_violation: bool,
    /// Upstream TCP connect timeout.
    #[arg(
        long,
        env = "EGRESS_WARDEN_CONNECT_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub connect_timeout: String,
    /// Time a client has to send a complete request head or SOCKS handshake.
    #[arg(
        long,
        env = "EGRESS_WARDEN_HANDSHAKE_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub handshake_timeout: String,
    /// A connection or tunnel with no traffic either way for this long is closed.
    #[arg(
        long,
        env = "EGRESS_WARDEN_IDLE_TIMEOUT",
        default_value = "15m",
        value_name = "DURATION"
    )]
    pub idle_timeout: String,
    /// Once a tunnel's client starts sending, its TLS ClientHello (or HTTP head) must be complete
    /// within this time.
    #[arg(
        long,
        env = "EGRESS_WARDEN_SNIFF_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub sniff_timeout: String,
    /// DNS lookup timeout.
    #[arg(
        long,
        env = "EGRESS_WARDEN_DNS_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub dns_timeout: String,
    /// On SIGTERM/SIGINT, how long open connections may finish before they are cut.
    #[arg(
        long,
        env = "EGRESS_WARDEN_DRAIN_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub drain_timeout: String,
    /// After a terminating violation, how long later requests are answered "run terminated"
    /// before the warden exits 77.
    #[arg(
        long,
        env = "EGRESS_WARDEN_TERMINATION_DRAIN",
        default_value = "500ms",
        value_name = "DURATION"
    )]
    pub termination_drain: String,
    /// Cap on concurrent client connections across all listeners.
    #[arg(
        long,
        env = "EGRESS_WARDEN_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_name = "N"
    )]
    pub max_connections: usize,
    /// Largest request head (request line plus headers) accepted.
    #[arg(
        long,
        env = "EGRESS_WARDEN_MAX_HEADER_BYTES",
        default_value = "64KiB",
        value_name = "SIZE"
    )]
    pub max_header_bytes: String,
    /// Most header fields accepted in one request or response.
    #[arg(
        long,
        env = "EGRESS_WARDEN_MAX_HEADERS",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_headers: usize,
    /// Threads serving connections, each with its own event loop (default: the CPUs this
    /// process may use, after affinity and cgroup quota).
    #[arg(long, env = "EGRESS_WARDEN_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Log filter for diagnostics on stderr (tracing syntax, e.g. `info` or `egress_warden=debug`).
    #[arg(
        long,
        env = "EGRESS_WARDEN_LOG",
        default_value = "warn",
        value_name = "FILTER"
    )]
    pub log: String,
    /// Write one line saying how the run ended to this file at exit (Kubernetes shows
    /// `/dev/termination-log` in `kubectl describe pod`).
    #[arg(
        long,
        env = "EGRESS_WARDEN_TERMINATION_MESSAGE_PATH",
        value_name = "PATH"
    )]
    pub termination_message_path: Option<PathBuf>,
    /// On a terminating violation, kill every other process in the warden's PID namespace
    /// except PID 1 — the sandbox, when it shares the namespace (Docker `--pid container:`,
    /// Kubernetes `shareProcessNamespace`). Needs CAP_KILL for processes of other users.
    #[arg(long, env = "EGRESS_WARDEN_TERMINATE_PID_NAMESPACE")]
    pub terminate_pid_namespace: bool,
    /// Transparent capture: `install` the ruleset at start-up, `verify` the one `init` installed,
    /// or `off`. With capture, the transparent and DNS listeners run and the warden is ready only
    /// once capture is proven.
    #[arg(long = "capture", env = "EGRESS_WARDEN_CAPTURE", value_enum, default_value_t = CaptureMode::Off)]
    pub capture_mode: CaptureMode,
    #[command(flatten)]
    pub capture: CaptureOptions,
    /// DNS listener: the answer to a refused name.
    #[arg(long, env = "EGRESS_WARDEN_DNS_DENY_RCODE", value_enum, default_value_t = DenyRcode::Refused)]
    pub dns_deny_rcode: DenyRcode,
    /// DNS listener: the query types answered (others are refused).
    #[arg(
        long,
        env = "EGRESS_WARDEN_DNS_TYPES",
        default_value = "A,AAAA,CNAME,HTTPS,SVCB",
        value_delimiter = ',',
        value_name = "TYPES"
    )]
    pub dns_types: Vec<String>,
    /// DNS listener: queries per second allowed for the run (bursts of twice that).
    #[arg(
        long,
        env = "EGRESS_WARDEN_DNS_RATE",
        default_value_t = 200,
        value_name = "N"
    )]
    pub dns_rate: u32,
    /// DNS listener: count refused queries as violations (default: refused and recorded only,
    /// because resolver search lists produce innocent ones).
    #[arg(long, env = "EGRESS_WARDEN_DNS_DENIAL_IS_VIOLATION")]
    pub dns_denial_is_violation: bool,
}

/// Transparent capture at start-up.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureMode {
    Off,
    Install,
    Verify,
}

/// The answer to a refused DNS name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DenyRcode {
    Refused,
    Nxdomain,
}

/// DNS listener settings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub deny_rcode: hickory_proto::op::ResponseCode,
    pub types: Vec<hickory_proto::rr::RecordType>,
    pub rate: u32,
    pub denial_is_violation: bool,
}

/// Transparent capture settings.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub mode: CaptureMode,
    pub spec: crate::capture::Spec,
}

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditTarget {
    Stderr,
    Stdout,
    File(PathBuf),
}

/// Timeouts, all validated non-zero.
#[derive(Copy, Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    pub idle: Duration,
    pub sniff: Duration,
    pub dns: Duration,
    pub drain: Duration,
    pub termination_drain: Duration,
}

/// A validated configuration: nothing in here can fail later for being malformed.
#[derive(Clone, Debug)]
pub struct Config {
    pub allowlists: Vec<PathBuf>,
    pub http_listen: SocketAddr,
    pub socks_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// `None` when no resolver is configured: every lookup then fails (closed).
    pub dns_upstream: Option<SocketAddr>,
    pub action: Action,
    pub run_id: String,
    pub audit: AuditTarget,
    pub audit_reserve: u64,
    pub summary_file: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
    pub max_upload_bytes: Option<u64>,
    pub malformed_is_violation: bool,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Shards serving connections (see `shards`).
    pub worker_threads: usize,
    pub log: String,
    /// SO_MARK on upstream sockets (under capture), exempting them from the capture ruleset.
    pub mark: Option<u32>,
    /// Transparent capture, when on.
    pub capture: Option<CaptureConfig>,
    pub dns: DnsConfig,
    /// `run --isolate`: capture lives in a sandbox namespace of the warden's making.
    pub isolate: bool,
    pub terminate_pid_namespace: bool,
    pub termination_message_path: Option<PathBuf>,
}

impl Config {
    /// Switches to `run --isolate`: capture is installed inside the sandbox namespace, where
    /// there is no admin port, and upstream sockets need no mark (they leave from outside).
    pub fn isolate(mut self, options: &Options) -> Result<Self, ConfigError> {
        if options.capture_mode == CaptureMode::Verify {
            return Err(invalid(
                "capture",
                "verify",
                "--isolate installs its own capture; use --capture off or install",
            ));
        }
        let spec = options.capture.spec_without_admin()?;
        self.capture = Some(CaptureConfig {
            mode: CaptureMode::Install,
            spec,
        });
        self.mark = None;
        self.isolate = true;
        Ok(self)
    }
}

/// A flag or environment value that is not valid; the message names the flag and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}={value:?}: {why}")]
    Invalid {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
}

fn invalid(flag: &'static str, value: &str, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_owned(),
        why,
    }
}

fn listen(
    flag: &'static str,
    value: &str,
    optional: bool,
) -> Result<Option<SocketAddr>, ConfigError> {
    if optional && value == "off" {
        return Ok(None);
    }
    let why = if optional {
        "expected IP:PORT (e.g. 127.0.0.1:1080; port 0 picks a free port) or 'off'"
    } else {
        "expected IP:PORT (e.g. 127.0.0.1:3128; port 0 picks a free port)"
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| invalid(flag, value, why))
}

fn duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(invalid(
            flag,
            value,
            "expected a positive duration such as 500ms, 10s or 5m",
        )),
    }
}

/// Parses `IP` or `IP:PORT` (IPv6 with a port in brackets); port 53 by default.
pub fn parse_dns_upstream(value: &str) -> Option<SocketAddr> {
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return Some(sa);
    }
    let ip: IpAddr = value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, 53))
}

/// The first `nameserver` line of a resolv.conf text.
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => parse_dns_upstream(addr),
            _ => None,
        }
    })
}

/// A fresh run id: 16 random hex digits.
pub fn fresh_run_id() -> String {
    let mut bytes = [0u8; 8];
    // The OS random source failing is not something a sidecar can recover from.
    getrandom::fill(&mut bytes).expect("OS random number source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Options {
    /// Validates every option. `resolv_conf` is the text of /etc/resolv.conf, if readable.
    pub fn validate(&self, resolv_conf: Option<&str>) -> Result<Config, ConfigError> {
        let http_listen =
            listen("http-listen", &self.http_listen, false)?.expect("non-optional listener");
        let socks_listen = listen("socks-listen", &self.socks_listen, true)?;
        let admin_listen = listen("admin-listen", &self.admin_listen, true)?;
        // An empty value is the same as none: a compose file or chart can pass `${VAR:-}`
        // through and leave the choice to the warden.
        let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let dns_upstream = match &set(&self.dns_upstream) {
            Some(v) => Some(parse_dns_upstream(v).ok_or_else(|| {
                invalid(
                    "dns-upstream",
                    v,
                    "expected IP or IP:PORT (IPv6 with a port in brackets)",
                )
            })?),
            None => resolv_conf.and_then(first_nameserver),
        };
        let run_id = match &set(&self.run_id) {
            Some(id) if valid_run_id(id) => id.clone(),
            Some(id) => {
                return Err(invalid(
                    "run-id",
                    id,
                    "expected 1-128 characters from [A-Za-z0-9._-]",
                ));
            }
            None => fresh_run_id(),
        };
        let audit = match self.audit_log.as_deref() {
            None => AuditTarget::Stderr,
            Some("-") => AuditTarget::Stdout,
            Some("") => return Err(invalid("audit-log", "", "expected a file path or '-'")),
            Some(p) => AuditTarget::File(PathBuf::from(p)),
        };
        let audit_reserve = parse_size(&self.audit_reserve)
            .filter(|n| *n <= 1 << 30)
            .ok_or_else(|| {
                invalid(
                    "audit-reserve",
                    &self.audit_reserve,
                    "expected bytes up to 1GiB, or a number with KiB, MiB or GiB",
                )
            })?;
        let max_upload_bytes = match &self.max_upload_bytes {
            Some(v) => Some(parse_size(v).ok_or_else(|| {
                invalid(
                    "max-upload-bytes",
                    v,
                    "expected bytes, or a number with KiB, MiB, GiB or TiB",
                )
            })?),
            None => None,
        };
        let max_header_bytes = parse_size(&self.max_header_bytes)
            .filter(|n| (8192..=(1 << 20)).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max-header-bytes",
                    &self.max_header_bytes,
                    "expected a size from 8KiB to 1MiB",
                )
            })? as usize;
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(invalid(
                "max-connections",
                &self.max_connections.to_string(),
                "expected 1 to 1000000",
            ));
        }
        let worker_threads = self
            .worker_threads
            .unwrap_or_else(crate::shards::default_count);
        if !(1..=crate::shards::MAX_SHARDS).contains(&worker_threads) {
            return Err(invalid(
                "worker-threads",
                &worker_threads.to_string(),
                "expected 1 to 1024",
            ));
        }
        // The message above spells the bound out (it must be a literal).
        const _: () = assert!(crate::shards::MAX_SHARDS == 1024);
        if !(8..=1000).contains(&self.max_headers) {
            return Err(invalid(
                "max-headers",
                &self.max_headers.to_string(),
                "expected 8 to 1000",
            ));
        }
        let capture = match self.capture_mode {
            CaptureMode::Off => None,
            mode => {
                let mut spec = self.capture.spec_without_admin()?;
                spec.admin_port = admin_listen.map(|a| a.port());
                Some(CaptureConfig { mode, spec })
            }
        };
        let mut types = Vec::new();
        for t in &self.dns_types {
            let ty = hickory_proto::rr::RecordType::from_str(&t.to_ascii_uppercase())
                .ok()
                .filter(|ty| !matches!(ty, hickory_proto::rr::RecordType::Unknown(_)))
                .ok_or_else(|| {
                    invalid(
                        "dns-types",
                        t,
                        "expected DNS record types such as A,AAAA,CNAME,HTTPS,SVCB",
                    )
                })?;
            types.push(ty);
        }
        if self.dns_rate == 0 {
            return Err(invalid(
                "dns-rate",
                "0",
                "expected at least 1 query per second",
            ));
        }
        let dns = DnsConfig {
            deny_rcode: match self.dns_deny_rcode {
                DenyRcode::Refused => hickory_proto::op::ResponseCode::Refused,
                DenyRcode::Nxdomain => hickory_proto::op::ResponseCode::NXDomain,
            },
            types,
            rate: self.dns_rate,
            denial_is_violation: self.dns_denial_is_violation,
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return Err(invalid(
                "log",
                &self.log,
                "expected a tracing filter such as 'warn' or 'egress_warden=debug'",
            ));
        }
        Ok(Config {
            allowlists: self.allowlists.clone(),
            http_listen,
            socks_listen,
            admin_listen,
            dns_upstream,
            action: self.on_violation,
            run_id,
            audit,
            audit_reserve,
            summary_file: self.summary_file.clone(),
            ready_file: self.ready_file.clone(),
            max_upload_bytes,
            malformed_is_violation: self.malformed_is_violation,
            timeouts: Timeouts {
                connect: duration("connect-timeout", &self.connect_timeout)?,
                handshake: duration("handshake-timeout", &self.handshake_timeout)?,
                idle: duration("idle-timeout", &self.idle_timeout)?,
                sniff: duration("sniff-timeout", &self.sniff_timeout)?,
                dns: duration("dns-timeout", &self.dns_timeout)?,
                drain: duration("drain-timeout", &self.drain_timeout)?,
                termination_drain: duration("termination-drain", &self.termination_drain)?,
            },
            max_connections: self.max_connections,
            max_header_bytes,
            max_headers: self.max_headers,
            worker_threads,
            log: self.log.clone(),
            mark: capture.as_ref().map(|c| c.spec.mark),
            capture,
            dns,
            isolate: false,
            terminate_pid_namespace: self.terminate_pid_namespace,
            termination_message_path: self.termination_message_path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Result<Options, clap::Error> {
        let mut argv = vec!["egress-warden", "serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Serve(o) => o,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn empty_run_id_and_dns_upstream_mean_the_defaults() {
        let cfg = options(&["--run-id=", "--dns-upstream="])
            .unwrap()
            .validate(Some("nameserver 10.0.0.2\n"))
            .unwrap();
        assert_eq!(cfg.run_id.len(), 16, "a fresh id");
        assert_eq!(cfg.dns_upstream, Some("10.0.0.2:53".parse().unwrap()));
    }

    #[test]
    fn defaults_validate() {
        let cfg = options(&[])
            .unwrap()
            .validate(Some("nameserver 10.0.0.2\n"))
            .unwrap();
        assert_eq!(cfg.http_listen, "127.0.0.1:3128".parse().unwrap());
        assert_eq!(cfg.socks_listen, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(cfg.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(cfg.dns_upstream, Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(cfg.action, Action::Terminate);
        assert_eq!(cfg.audit, AuditTarget::Stderr);
        assert_eq!(cfg.run_id.len(), 16);
        assert!(cfg.allowlists.is_empty());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--http-listen", "localhost"], "--http-listen"),
            (&["--socks-listen", "nope"], "--socks-listen"),
            (&["--dns-upstream", "resolver.example"], "--dns-upstream"),
            (&["--run-id", "has space"], "--run-id"),
            (&["--max-upload-bytes", "10MB"], "--max-upload-bytes"),
            (&["--connect-timeout", "0s"], "--connect-timeout"),
            (&["--idle-timeout", "soon"], "--idle-timeout"),
            (&["--max-header-bytes", "1KiB"], "--max-header-bytes"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--worker-threads", "0"], "--worker-threads"),
            (&["--worker-threads", "5000"], "--worker-threads"),
            (&["--audit-log", ""], "--audit-log"),
        ];
        assert!(!cases.is_empty());
        for (args, flag) in cases {
            let err = options(args)
                .unwrap()
                .validate(None)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
        assert!(options(&["--on-violation", "explode"]).is_err());
    }

    #[test]
    fn off_disables_optional_listeners_and_dns_forms_parse() {
        let cfg = options(&[
            "--socks-listen",
            "off",
            "--admin-listen",
            "off",
            "--dns-upstream",
            "[::1]:5353",
        ])
        .unwrap()
        .validate(None)
        .unwrap();
        assert_eq!(cfg.socks_listen, None);
        assert_eq!(cfg.admin_listen, None);
        assert_eq!(cfg.dns_upstream, Some("[::1]:5353".parse().unwrap()));
        assert_eq!(
            parse_dns_upstream("127.0.0.53"),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(parse_dns_upstream("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(
            first_nameserver("# c\nsearch x\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n"),
            Some("1.1.1.1:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("search x\n"), None);
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "egress-warden",
            "run",
            "--run-id",
            "r1",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert_eq!(run.command, ["sh", "-c", "exit 3"]);
        assert_eq!(run.options.run_id.as_deref(), Some("r1"));
    }
}
