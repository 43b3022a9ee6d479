//! Wires a run together: validate and load before anything is bound, bind every listener,
//! announce readiness, then react to signals, reloads, a terminating violation and (under
//! `run`) the sandbox command; finally drain, write the summary and pick the exit code.
//!
//! | exit code | meaning |
//! |---|---|
//! | 0  | clean shutdown on SIGTERM/SIGINT, after a drain (`serve`) |
//! | 1  | runtime failure: a listener could not bind, the audit log or summary could not be written |
//! | 64 | bad flags, environment or allowlist — nothing was bound |
//! | 77 | the run was terminated by a violation |
//! | other | under `run`: the sandbox command's own exit code (128 + N if killed by signal N) |

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::allowlist;
use crate::audit::{Audit, SCHEMA, timestamp};
use crate::config::{Cli, Command, Config, Options};
use crate::listener::{self, Listener};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::sandbox::{self, Sandbox};
use crate::state::{Shared, bounded};
use crate::summary::{RunInfo, write_atomically};
use crate::{admin, check};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_VIOLATION: i32 = 77;

/// How long a terminating violation may take to kill the sandbox's process tree.
const KILL_WITHIN: Duration = Duration::from_secs(1);
/// Accept backlog of each listener.
const BACKLOG: u32 = 1024;

/// Runs a parsed command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    match cli.command {
        Command::Check(args) => {
            let ok = check::check(&args.paths, &mut std::io::stdout(), &mut std::io::stderr());
            if ok { EXIT_OK } else { EXIT_USAGE }
        }
        Command::Init(args) => init(&args),
        Command::Serve(options) => start(&options, None),
        Command::Run(args) => start(&args.options, Some(args.command)),
    }
}

/// `egress-warden init`: install, remove or print the capture ruleset.
fn init(args: &crate::config::InitArgs) -> i32 {
    let spec = match args.capture.spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("egress-warden: {e}");
            return EXIT_USAGE;
        }
    };
    if args.print {
        print!("{}", crate::capture::ruleset::nft_text(&spec));
        return EXIT_OK;
    }
    let result = if args.remove {
        crate::capture::remove()
    } else {
        crate::capture::install(&spec).and_then(|()| crate::capture::verify(&spec))
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("egress-warden init: {e}");
            EXIT_FAILURE
        }
    }
}

fn start(options: &Options, command: Option<Vec<OsString>>) -> i32 {
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").ok();
    let config = match options.validate(resolv_conf.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egress-warden: {e}");
            return EXIT_USAGE;
        }
    };
    let rules = match allowlist::load(&config.allowlists) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("egress-warden: invalid allowlist:\n{e}");
            return EXIT_USAGE;
        }
    };
    init_tracing(&config.log);
    if config.dns_upstream.is_none() {
        tracing::warn!(
            "no DNS upstream (--dns-upstream, /etc/resolv.conf): every name will fail to resolve"
        );
    }
    let policy = Policy::new(rules);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("egress-warden")
        .build();
    match runtime {
        Ok(rt) => rt.block_on(serve(config, policy, command)),
        Err(e) => {
            eprintln!("egress-warden: cannot start the runtime: {e}");
            EXIT_FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(BACKLOG)
}

struct Bound {
    http: TcpListener,
    socks: Option<TcpListener>,
    admin: Option<TcpListener>,
}

async fn bind_all(config: &Config) -> std::io::Result<Bound> {
    let http = bind(config.http_listen).await?;
    let socks = match config.socks_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    Ok(Bound { http, socks, admin })
}

/// The `--ready-file` contents (and the listener addresses in the start record).
#[derive(Serialize)]
struct Addresses {
    http: SocketAddr,
    socks: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

#[derive(Serialize)]
struct ReadyFile<'a> {
    #[serde(flatten)]
    addrs: &'a Addresses,
    pid: u32,
    run_id: &'a str,
}

#[derive(Serialize)]
struct StartRecord<'a> {
    schema: u32,
    event: &'static str,
    ts: String,
    run_id: &'a str,
    version: &'static str,
    mode: &'static str,
    action: &'static str,
    policy_sha256: &'a str,
    allowlists: Vec<String>,
    rules: usize,
    listeners: &'a Addresses,
    max_upload_bytes: Option<u64>,
}

#[derive(Serialize)]
struct ReloadRecord<'a> {
    schema: u32,
    event: &'static str,
    ts: String,
    run_id: &'a str,
    result: &'static str,
    policy_sha256: &'a str,
    rules: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct EndRecord<'a> {
    schema: u32,
    event: &'static str,
    ts: String,
    run_id: &'a str,
    outcome: &'static str,
    exit_code: i32,
    violations: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    termination_reason: Option<&'static str>,
    duration_ms: u64,
}

/// Writes the `--ready-file`, if asked for.
fn announce_ready(config: &Config, addrs: &Addresses) -> std::io::Result<()> {
    let Some(path) = &config.ready_file else {
        return Ok(());
    };
    let ready = ReadyFile {
        addrs,
        pid: std::process::id(),
        run_id: &config.run_id,
    };
    let json = serde_json::to_vec(&ready).expect("ready file serialises");
    write_atomically(path, &json).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot write ready file {}: {e}", path.display()),
        )
    })
}

/// What ended the main loop.
enum Ending {
    Signal(Signal),
    Terminated,
    ChildExited(std::io::Result<std::process::ExitStatus>),
    AuditFailed,
    ListenerDied,
}

fn file_names(policy: &Policy) -> Vec<String> {
    policy
        .files()
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

async fn serve(config: Config, policy: Policy, command: Option<Vec<OsString>>) -> i32 {
    let started = SystemTime::now();
    let metrics = Arc::new(Metrics::new(&config.run_id));
    let audit_failed = CancellationToken::new();
    let (audit, audit_thread) = match Audit::open(&config.audit, audit_failed.clone()) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("egress-warden: {e}");
            return EXIT_FAILURE;
        }
    };
    let bound = match bind_all(&config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("egress-warden: {e}");
            audit.close().await;
            audit_thread.join();
            return EXIT_FAILURE;
        }
    };
    let (Ok(mut sigterm), Ok(mut sigint), Ok(mut sighup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("egress-warden: cannot install signal handlers");
        return EXIT_FAILURE;
    };
    let addrs = Addresses {
        http: bound
            .http
            .local_addr()
            .expect("bound socket has an address"),
        socks: bound.socks.as_ref().and_then(|l| l.local_addr().ok()),
        admin: bound.admin.as_ref().and_then(|l| l.local_addr().ok()),
    };
    let shared = Arc::new(Shared::new(config, policy, metrics, audit.clone()));
    let config = &shared.config;
    {
        let policy = shared.policy();
        audit
            .write(&StartRecord {
                schema: SCHEMA,
                event: "start",
                ts: timestamp(started),
                run_id: &config.run_id,
                version: env!("CARGO_PKG_VERSION"),
                mode: if command.is_some() { "run" } else { "serve" },
                action: config.action.as_str(),
                policy_sha256: policy.sha256(),
                allowlists: file_names(&policy),
                rules: policy.rules().len(),
                listeners: &addrs,
                max_upload_bytes: config.max_upload_bytes,
            })
            .await;
    }

    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let mut listeners = JoinSet::new();
    listeners.spawn(listener::accept_loop(
        shared.clone(),
        bound.http,
        Listener::Http,
        stop.clone(),
        listener::http::serve,
        listener::http::refuse,
    ));
    if let Some(l) = bound.socks {
        listeners.spawn(listener::accept_loop(
            shared.clone(),
            l,
            Listener::Socks,
            stop.clone(),
            listener::socks::serve,
            listener::socks::refuse,
        ));
    }
    if let Some(l) = bound.admin {
        listeners.spawn(admin::serve(shared.clone(), l, ready.clone(), stop.clone()));
    }
    ready.store(true, Ordering::SeqCst);
    let started_up = announce_ready(config, &addrs).and_then(|()| match &command {
        Some(cmd) => Sandbox::spawn(cmd, &sandbox::proxy_env(addrs.http, addrs.socks)).map(Some),
        None => Ok(None),
    });
    let mut sandbox = match started_up {
        Ok(s) => s,
        Err(e) => {
            eprintln!("egress-warden: {e}");
            stop.cancel();
            return finish(
                &shared,
                &audit,
                audit_thread,
                started,
                EXIT_FAILURE,
                "failed",
            )
            .await;
        }
    };
    let sandbox_pid = sandbox.as_ref().map(Sandbox::pid);

    let mut reap = tokio::time::interval(Duration::from_secs(2));
    let ending = loop {
        let child_exit = async {
            match sandbox.as_mut() {
                Some(s) => s.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => break Ending::Signal(Signal::SIGTERM),
            _ = sigint.recv() => break Ending::Signal(Signal::SIGINT),
            _ = sighup.recv() => reload(&shared).await,
            () = shared.enforcer.kill_token().cancelled() => break Ending::Terminated,
            status = child_exit => break Ending::ChildExited(status),
            () = audit_failed.cancelled() => break Ending::AuditFailed,
            Some(_) = listeners.join_next() => break Ending::ListenerDied,
            _ = reap.tick(), if sandbox_pid.is_some() => {
                if let Some(pid) = sandbox_pid {
                    sandbox::reap_orphans(pid);
                }
            }
        }
    };

    let kill_tree = |s: &Sandbox| {
        let left = s.kill_tree(KILL_WITHIN);
        if left > 0 {
            tracing::error!(left, "sandbox processes survived SIGKILL");
        }
    };
    let (mut code, outcome) = match ending {
        Ending::Terminated => {
            // Kill first: the sandbox must not act on its way out.
            if let Some(s) = &sandbox {
                kill_tree(s);
            }
            // Later requests are answered "run terminated" for a short while.
            tokio::time::sleep(config.timeouts.termination_drain).await;
            (EXIT_VIOLATION, "terminated")
        }
        Ending::Signal(sig) => match sandbox.as_mut() {
            Some(s) => {
                s.signal(sig);
                let status = tokio::time::timeout(config.timeouts.drain, s.wait()).await;
                kill_tree(s);
                let code = match status {
                    Ok(Ok(status)) => sandbox::exit_code(status),
                    _ => 128 + sig as i32,
                };
                (code, "shutdown")
            }
            None => (EXIT_OK, "shutdown"),
        },
        Ending::ChildExited(status) => {
            if let Some(s) = &sandbox {
                kill_tree(s); // whatever it left running in the background
            }
            match status {
                Ok(status) => (sandbox::exit_code(status), "exited"),
                Err(_) => (EXIT_FAILURE, "failed"),
            }
        }
        Ending::AuditFailed | Ending::ListenerDied => {
            if let Some(s) = &sandbox {
                kill_tree(s);
            }
            (EXIT_FAILURE, "failed")
        }
    };
    // Stop accepting, let open connections finish, then cut what is left.
    stop.cancel();
    shared.drain.cancel();
    shared.tasks.close();
    if tokio::time::timeout(config.timeouts.drain, shared.tasks.wait())
        .await
        .is_err()
    {
        shared.enforcer.kill_token().cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.tasks.wait()).await;
    }
    if audit_failed.is_cancelled() {
        code = EXIT_FAILURE;
    }
    finish(&shared, &audit, audit_thread, started, code, outcome).await
}

/// Writes the summary and the end record, closes the audit log, and settles the exit code.
async fn finish(
    shared: &Shared,
    audit: &Audit,
    audit_thread: crate::audit::AuditThread,
    started: SystemTime,
    mut code: i32,
    mut outcome: &'static str,
) -> i32 {
    let config = &shared.config;
    let termination = shared.enforcer.termination().map(|t| t.reason);
    if termination.is_some() {
        code = EXIT_VIOLATION;
        outcome = "terminated";
    }
    let ended = SystemTime::now();
    if let Some(path) = &config.summary_file {
        let policy = shared.policy();
        let info = RunInfo {
            schema: SCHEMA,
            run_id: config.run_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started: timestamp(started),
            ended: timestamp(ended),
            outcome,
            exit_code: code,
            action: config.action.as_str(),
            policy_sha256: policy.sha256().to_owned(),
            allowlists: file_names(&policy),
        };
        if let Err(e) = shared.summary.write(path, &info) {
            eprintln!(
                "egress-warden: cannot write summary {}: {e}",
                path.display()
            );
            if code == EXIT_OK {
                code = EXIT_FAILURE;
            }
        }
    }
    audit
        .write(&EndRecord {
            schema: SCHEMA,
            event: "end",
            ts: timestamp(ended),
            run_id: &config.run_id,
            outcome,
            exit_code: code,
            violations: shared.summary.violations_total(),
            termination_reason: termination.map(|r| r.as_str()),
            duration_ms: u64::try_from(
                ended
                    .duration_since(started)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
        })
        .await;
    audit.close().await;
    audit_thread.join();
    code
}

/// Reloads the allowlists (SIGHUP). A bad file keeps the current policy; both outcomes are
/// logged, counted and audited.
async fn reload(shared: &Shared) {
    let paths = shared.config.allowlists.clone();
    let loaded =
        tokio::task::spawn_blocking(move || allowlist::load(&paths).map(Policy::new)).await;
    let (result, error) = match loaded {
        Ok(Ok(policy)) => {
            shared.swap_policy(policy);
            ("ok", None)
        }
        Ok(Err(e)) => ("error", Some(e.to_string())),
        Err(e) => ("error", Some(e.to_string())),
    };
    let policy = shared.policy();
    shared.metrics.reload(error.is_none());
    match &error {
        None => tracing::info!(
            policy = policy.sha256(),
            rules = policy.rules().len(),
            "allowlists reloaded"
        ),
        Some(e) => {
            tracing::error!(error = %e, "allowlist reload failed; keeping the current policy")
        }
    }
    shared
        .audit
        .write(&ReloadRecord {
            schema: SCHEMA,
            event: "reload",
            ts: timestamp(SystemTime::now()),
            run_id: &shared.config.run_id,
            result,
            policy_sha256: policy.sha256(),
            rules: policy.rules().len(),
            error: error.map(|e| bounded(&e)),
        })
        .await;
}
