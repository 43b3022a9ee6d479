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
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::allowlist;
use crate::audit::{Audit, SCHEMA, timestamp};
use crate::capture::netns::Namespace;
use crate::capture::place::Place;
use crate::config::{Cli, Command, Config, Options};
use crate::listener::{self, Listener};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::sandbox::{self, Sandbox};
use crate::shards::{ShardThreads, Shards};
use crate::state::{Shared, bounded};
use crate::summary::{RunInfo, write_atomically};
use crate::{admin, bind, capture, check};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_VIOLATION: i32 = 77;

/// How long a terminating violation may take to kill the sandbox's process tree.
const KILL_WITHIN: Duration = Duration::from_secs(1);
/// How often the capture ruleset is read back and its drop counters refreshed.
const CAPTURE_CHECK: Duration = Duration::from_secs(5);

/// Runs a parsed command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    match cli.command {
        Command::Check(args) => {
            let ok = check::check(&args.paths, &mut std::io::stdout(), &mut std::io::stderr());
            if ok { EXIT_OK } else { EXIT_USAGE }
        }
        Command::Init(args) => init(&args),
        Command::Serve(options) => start(&options, None, false),
        Command::Run(args) => start(&args.options, Some(args.command), args.isolate),
        Command::SandboxExec(args) => sandbox_exec(&args),
        Command::Healthcheck(args) => healthcheck(&args.ready_file),
    }
}

/// `egress-warden healthcheck`: the ready file exists and the warden that wrote it still runs.
/// The file is written only once every listener is bound and capture (if on) is proven, and a
/// warden that loses capture exits; so "file present, writer alive" means "policing".
fn healthcheck(ready_file: &std::path::Path) -> i32 {
    let pid = std::fs::read_to_string(ready_file)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["pid"].as_u64());
    let alive = pid.is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    });
    if alive {
        EXIT_OK
    } else {
        eprintln!(
            "egress-warden healthcheck: not ready ({})",
            ready_file.display()
        );
        EXIT_FAILURE
    }
}

/// The `sandbox-exec` trampoline: enter the sandbox namespace without privileges, exec CMD.
fn sandbox_exec(args: &crate::config::SandboxExecArgs) -> i32 {
    if let Err(e) = capture::netns::enter_and_drop_privileges(&args.netns) {
        eprintln!("egress-warden sandbox-exec: {e}");
        return 126;
    }
    let e = sandbox::exec(&args.command);
    eprintln!("egress-warden sandbox-exec: {e}");
    127
}

/// Reads the capture ruleset back every few seconds: a change ends the run (traffic would no
/// longer be policed), and the drop counters feed the metrics.
async fn watch_capture(
    shared: Arc<Shared>,
    place: Arc<Place>,
    spec: capture::Spec,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CAPTURE_CHECK) => {}
            () = stop.cancelled() => return,
        }
        let place = place.clone();
        let checked =
            tokio::task::spawn_blocking(move || capture::place::inspect(&place, &spec)).await;
        match checked {
            Ok(Ok(counters)) => {
                for (class, n) in counters {
                    shared.metrics.set_dropped(class.as_str(), n);
                }
            }
            _ if stop.is_cancelled() => return,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "transparent capture no longer verified");
                shared.enforcement.store(false, Ordering::SeqCst);
                shared.metrics.set_enforcement(false);
                lost.cancel();
                return;
            }
            Err(_) => return,
        }
    }
}

/// `egress-warden init`: install, remove or print the capture ruleset.
fn init(args: &crate::config::InitArgs) -> i32 {
    let spec = match args.spec() {
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

fn start(options: &Options, command: Option<Vec<OsString>>, isolate: bool) -> i32 {
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").ok();
    let validated = options.validate(resolv_conf.as_deref());
    let validated = if isolate {
        validated.and_then(|c| c.isolate(options))
    } else {
        validated
    };
    let config = match validated {
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
    crate::limits::apply(config.max_connections, config.worker_threads);
    if config.dns_upstream.is_none() {
        tracing::warn!(
            "no DNS upstream (--dns-upstream, /etc/resolv.conf): every name will fail to resolve"
        );
    }
    let policy = Policy::new(rules);
    let keep = crate::privileges::needed(&config, command.is_some());
    let limit = {
        let keep = keep.clone();
        move || {
            if let Err(e) = crate::privileges::limit_thread(&keep) {
                tracing::error!(error = %e, "cannot drop capabilities in a runtime thread");
            }
        }
    };
    // Connections are served by the shards; this runtime runs the rest (signals, the admin
    // and DNS listeners, the sandbox), which one worker keeps up with.
    let metrics = Arc::new(Metrics::new(&config.run_id, config.capture.is_some()));
    let shards = ShardThreads::start(
        config.worker_threads,
        |i| metrics.worker_gauge(i),
        limit.clone(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("egress-warden")
        .on_thread_start(limit)
        .build();
    match (runtime, shards) {
        (Ok(rt), Ok(threads)) => {
            let shards = threads.shards().clone();
            let code = rt.block_on(serve(config, policy, command, keep, metrics, shards));
            drop(rt);
            drop(threads);
            code
        }
        (Err(e), _) | (_, Err(e)) => {
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
    /// The capture ruleset in force (nft text), when capture is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    capture: Option<String>,
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
    /// What the terminating attempt was: listener, target and detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    termination_detail: Option<String>,
    /// The terminating signal and its sender, when one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<crate::signals::Origin>,
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
    /// The capture ruleset changed or vanished while the run was going on.
    CaptureLost(String),
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

async fn serve(
    mut config: Config,
    policy: Policy,
    command: Option<Vec<OsString>>,
    keep: Vec<caps::Capability>,
    metrics: Arc<Metrics>,
    shards: Arc<Shards>,
) -> i32 {
    let started = SystemTime::now();
    let audit_failed = CancellationToken::new();
    let (audit, audit_thread) =
        match Audit::open(&config.audit, config.audit_reserve, audit_failed.clone()) {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("egress-warden: {e}");
                return EXIT_FAILURE;
            }
        };
    // A ready file left by an earlier warden must not vouch for this one.
    if let Some(path) = &config.ready_file {
        let _ = std::fs::remove_file(path);
    }
    let fail = async |message: String| {
        eprintln!("egress-warden: {message}");
        audit.close().await;
        EXIT_FAILURE
    };
    // Where the sandbox's traffic is captured: here, or in a namespace made for it.
    let place = if config.isolate {
        match Namespace::create() {
            Ok(ns) => Place::Inside(ns),
            Err(e) => return fail(e.to_string()).await,
        }
    } else {
        Place::Here
    };
    let place = Arc::new(place);
    let facing = match place.run(|| bind::sandbox_facing(&config)) {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return fail(e.to_string()).await,
        Err(e) => return fail(e.to_string()).await,
    };
    let admin_listener = match config
        .admin_listen
        .map(|a| bind::tcp(a, "admin"))
        .transpose()
    {
        Ok(l) => l,
        Err(e) => return fail(e.to_string()).await,
    };
    // The sandbox may not reach the admin port: the rule needs the port actually bound.
    if let Some(capture) = config.capture.as_mut()
        && !config.isolate
    {
        capture.spec.admin_port = admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
    }
    if let Some(capture) = &config.capture
        && let Err(e) = capture::place::establish(&place, capture)
    {
        return fail(format!("transparent capture could not be established: {e}")).await;
    }
    // Before the runtime's own handlers, so that a signal's sender is known when it wakes us.
    if let Err(e) = crate::signals::watch() {
        return fail(format!("cannot install signal handlers: {e}")).await;
    }
    let (Ok(mut sigterm), Ok(mut sigint), Ok(mut sighup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return fail("cannot install signal handlers".into()).await;
    };
    let addrs = Addresses {
        http: facing
            .http
            .local_addr()
            .expect("bound socket has an address"),
        socks: facing.socks.as_ref().and_then(|l| l.local_addr().ok()),
        admin: admin_listener.as_ref().and_then(|l| l.local_addr().ok()),
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
                mode: match (&command, config.isolate) {
                    (Some(_), true) => "run --isolate",
                    (Some(_), false) => "run",
                    (None, _) => "serve",
                },
                action: config.action.as_str(),
                policy_sha256: policy.sha256(),
                allowlists: file_names(&policy),
                rules: policy.rules().len(),
                listeners: &addrs,
                max_upload_bytes: config.max_upload_bytes,
                capture: config
                    .capture
                    .as_ref()
                    .map(|c| crate::capture::ruleset::nft_text(&c.spec)),
            })
            .await;
    }

    for i in 0..shards.len() {
        shards.handle(i).spawn(crate::pool::keep(shared.clone()));
    }
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let mut listeners = JoinSet::new();
    let spawned = (|| -> std::io::Result<()> {
        let mut accepting = listener::Accepting {
            set: &mut listeners,
            shared: &shared,
            shards: &shards,
            stop: &stop,
        };
        accepting.spawn(
            facing.http,
            Listener::Http,
            listener::http::serve,
            listener::http::refuse,
        )?;
        if let Some(l) = facing.socks {
            accepting.spawn(
                l,
                Listener::Socks,
                listener::socks::serve,
                listener::socks::refuse,
            )?;
        }
        for l in facing.transparent {
            accepting.spawn(
                l,
                Listener::Transparent,
                listener::transparent::serve,
                listener::transparent::refuse,
            )?;
        }
        let dns = listener::dns::DnsState::new(config.dns.rate);
        for l in facing.dns_tcp {
            let dns = dns.clone();
            let handle = move |shared, acc| listener::dns::serve_tcp(shared, dns.clone(), acc);
            accepting.spawn(l, Listener::Dns, handle, listener::dns::refuse)?;
        }
        for s in facing.dns_udp {
            let s = tokio::net::UdpSocket::from_std(s)?;
            listeners.spawn(listener::dns::serve_udp(
                shared.clone(),
                dns.clone(),
                s,
                stop.clone(),
            ));
        }
        if let Some(l) = admin_listener {
            listeners.spawn(admin::serve(
                shared.clone(),
                TcpListener::from_std(l)?,
                ready.clone(),
                stop.clone(),
            ));
        }
        Ok(())
    })();
    // The rest of start-up, with one way out on failure: say why, stop, record, exit 1.
    let capture_lost = CancellationToken::new();
    let started_up = (|| -> Result<Option<Sandbox>, String> {
        spawned.map_err(|e| e.to_string())?;
        // Capture is proven by probes before anything is announced, and watched while the run
        // lasts.
        if let Some(capture) = &config.capture {
            // On this (the main) thread: it still holds the start-up privileges probes need to
            // enter an isolated namespace; the runtime threads serve the probes meanwhile.
            match capture::place::prove(&place, &shared.probes) {
                Ok(r) if r.ok() => {
                    tracing::info!(report = %r.describe(), "transparent capture proven");
                }
                Ok(r) => {
                    return Err(format!(
                        "transparent capture is not effective: {}",
                        r.describe()
                    ));
                }
                Err(e) => return Err(format!("transparent capture could not be probed: {e}")),
            }
            shared.enforcement.store(true, Ordering::SeqCst);
            shared.metrics.set_enforcement(true);
            tokio::spawn(watch_capture(
                shared.clone(),
                place.clone(),
                capture.spec,
                capture_lost.clone(),
                stop.clone(),
            ));
        }
        ready.store(true, Ordering::SeqCst);
        announce_ready(config, &addrs).map_err(|e| e.to_string())?;
        let sandbox = match &command {
            Some(cmd) => Some(
                Sandbox::spawn(
                    cmd,
                    &sandbox::proxy_env(addrs.http, addrs.socks),
                    place.netns_path(),
                )
                .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        // Start-up is over: keep only what the running warden uses.
        if let Err(e) = crate::privileges::limit_thread(&keep) {
            if let Some(s) = &sandbox {
                s.kill_tree(KILL_WITHIN);
            }
            return Err(format!("cannot drop capabilities: {e}"));
        }
        Ok(sandbox)
    })();
    let mut sandbox = match started_up {
        Ok(s) => s,
        Err(message) => {
            eprintln!("egress-warden: {message}");
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
    tracing::info!(capabilities = ?crate::privileges::effective(), "start-up complete");

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
            () = capture_lost.cancelled() => break Ending::CaptureLost("the capture ruleset changed or was removed".into()),
            Some(_) = listeners.join_next() => break Ending::ListenerDied,
            // Orphans come back to the warden under `run` (subreaper) and when it is PID 1.
            _ = reap.tick(), if sandbox_pid.is_some() || std::process::id() == 1 => {
                sandbox::reap_orphans(sandbox_pid);
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
            if config.terminate_pid_namespace {
                let left = sandbox::kill_pid_namespace(KILL_WITHIN);
                if left > 0 {
                    tracing::error!(left, "processes in the PID namespace survived SIGKILL");
                }
            }
            // Later requests are answered "run terminated" for a short while.
            tokio::time::sleep(config.timeouts.termination_drain).await;
            (EXIT_VIOLATION, "terminated")
        }
        // Signalled by something other than the container runtime or the warden's parent
        // (the sandbox, in a shared PID namespace): not a clean end, and the sandbox goes too.
        Ending::Signal(sig) => match (unsupervised_signal(), sandbox.as_mut()) {
            (Some(o), child) => {
                eprintln!(
                    "egress-warden: signal {} from pid {} (uid {}), not from the runtime or \
                     the warden's parent; ending the run as signalled",
                    o.signal, o.pid, o.uid
                );
                if let Some(s) = child {
                    kill_tree(s);
                }
                if config.terminate_pid_namespace {
                    sandbox::kill_pid_namespace(KILL_WITHIN);
                }
                (EXIT_FAILURE, "signalled")
            }
            (None, Some(s)) => {
                s.signal(sig);
                let status = tokio::time::timeout(config.timeouts.drain, s.wait()).await;
                kill_tree(s);
                let code = match status {
                    Ok(Ok(status)) => sandbox::exit_code(status),
                    _ => 128 + sig as i32,
                };
                (code, "shutdown")
            }
            (None, None) => (EXIT_OK, "shutdown"),
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
        Ending::CaptureLost(why) => {
            eprintln!("egress-warden: {why}; ending the run");
            if let Some(s) = &sandbox {
                kill_tree(s);
            }
            (EXIT_FAILURE, "failed")
        }
        Ending::AuditFailed => {
            eprintln!("egress-warden: the audit log cannot be written; ending the run");
            if let Some(s) = &sandbox {
                kill_tree(s);
            }
            // Cut every connection now: no byte moves that the log might not show.
            shared.enforcer.kill_token().cancel();
            (EXIT_FAILURE, "failed")
        }
        Ending::ListenerDied => {
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

/// The terminating signal received, if its sender was neither the container runtime nor the
/// warden's parent.
fn unsupervised_signal() -> Option<crate::signals::Origin> {
    let parent = nix::unistd::getppid().as_raw();
    crate::signals::received().filter(|o| !o.is_supervisor(parent))
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
    let termination_what = shared
        .enforcer
        .termination()
        .and_then(|t| t.what.get().cloned());
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
            signal: crate::signals::received(),
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
            termination_detail: termination_what.clone(),
            signal: crate::signals::received(),
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
    if let Some(path) = &config.termination_message_path {
        let message = match (termination, &termination_what) {
            (Some(reason), what) => format!(
                "egress-warden terminated run {}: {} {} (exit {code})\n",
                config.run_id,
                reason.as_str(),
                what.as_deref().unwrap_or("")
            ),
            (None, _) => format!(
                "egress-warden run {} ended: {outcome} (exit {code})\n",
                config.run_id
            ),
        };
        if let Err(e) = std::fs::write(path, message) {
            eprintln!(
                "egress-warden: cannot write termination message {}: {e}",
                path.display()
            );
        }
    }
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
