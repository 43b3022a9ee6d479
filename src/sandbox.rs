//! The sandboxed command under `egress-warden run`: launched with the proxy environment in a
//! process group of its own, and — on a terminating violation — killed with every descendant.
//!
//! The warden makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so a process that
//! double-forks or calls `setsid` to leave the group is re-parented to the warden instead of
//! init and stays findable. Killing is then: SIGKILL the group, and repeatedly walk `/proc` for
//! live descendants and SIGKILL them until none is left (bounded to one second). Orphans that
//! die are reaped here, so a long run does not collect zombies.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The proxy variables `run` sets, in both cases (tools disagree on which they read).
pub const PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"];

/// Loopback is not egress: local test servers stay reachable without the proxy.
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// An address a client on this host can dial for a bound listener.
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// The environment `run` gives the sandbox: HTTP(S)_PROXY to the HTTP listener, ALL_PROXY to
/// SOCKS5 with remote DNS (`socks5h`) when it is on, NO_PROXY for loopback.
pub fn proxy_env(http: SocketAddr, socks: Option<SocketAddr>) -> Vec<(String, String)> {
    let http_url = format!("http://{}", dialable(http));
    let all = socks.map_or_else(
        || http_url.clone(),
        |s| format!("socks5h://{}", dialable(s)),
    );
    let values = [http_url.clone(), http_url, all, NO_PROXY.to_owned()];
    PROXY_VARS
        .iter()
        .zip(values)
        .flat_map(|(name, value)| {
            [
                (name.to_string(), value.clone()),
                (name.to_ascii_lowercase(), value),
            ]
        })
        .collect()
}

/// The running sandbox command.
pub struct Sandbox {
    child: Child,
    pid: Pid,
}

impl Sandbox {
    /// Starts `command` with `env` added, in a new process group; with `netns`, through the
    /// `sandbox-exec` trampoline that enters that namespace without capabilities first.
    pub fn spawn(
        command: &[OsString],
        env: &[(String, String)],
        netns: Option<String>,
    ) -> std::io::Result<Self> {
        // Orphaned descendants come back to us, so the whole tree stays killable.
        nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
        let (program, args) = command.split_first().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no command given after --",
            )
        })?;
        let mut cmd = match &netns {
            Some(path) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["sandbox-exec", "--netns", path, "--"])
                    .arg(program)
                    .args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        cmd.process_group(0).kill_on_drop(false);
        for name in PROXY_VARS {
            cmd.env_remove(name).env_remove(name.to_ascii_lowercase());
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", program.to_string_lossy()),
            )
        })?;
        let pid = Pid::from_raw(child.id().expect("a just-spawned child has a pid") as i32);
        Ok(Self { child, pid })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the command itself to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Forwards a signal to the command's process group.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(self.pid, sig);
    }

    /// Kills the command and every descendant (see the module docs). Blocking; bounded by
    /// `within`. Returns how many processes were still alive when it gave up (0 on success).
    pub fn kill_tree(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let _ = killpg(self.pid, Signal::SIGKILL);
        loop {
            let alive = live_descendants();
            for &pid in &alive {
                let _ = kill(pid, Signal::SIGKILL);
            }
            reap_orphans(Some(self.pid));
            if alive.is_empty() || Instant::now() >= deadline {
                return alive.len();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One process's parent and state, from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Every process in `/proc` with its parent and state.
fn process_table() -> HashMap<i32, (i32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// Live (non-zombie) descendants of the warden.
fn live_descendants() -> Vec<Pid> {
    let me = std::process::id() as i32;
    let table = process_table();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &(ppid, _)) in &table {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen = HashSet::new();
    let mut stack = vec![me];
    let mut out = Vec::new();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if seen.insert(c) {
                stack.push(c);
                if table.get(&c).is_some_and(|&(_, state)| state != 'Z') {
                    out.push(Pid::from_raw(c));
                }
            }
        }
    }
    out
}

/// Kills every process in the warden's PID namespace except the warden itself and PID 1 (the
/// sandbox containers of a pod or a `--pid container:` group). Bounded by `within`; returns
/// how many were still alive when it gave up.
pub fn kill_pid_namespace(within: Duration) -> usize {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<i32> = process_table()
            .into_iter()
            .filter(|&(pid, (_, state))| pid != me && pid != 1 && state != 'Z')
            .map(|(pid, _)| pid)
            .collect();
        for &pid in &alive {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        reap_orphans(None);
        if alive.is_empty() || Instant::now() >= deadline {
            return alive.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reaps zombie children of the warden other than `keep` (the command, reaped by `wait`).
pub fn reap_orphans(keep: Option<Pid>) {
    let me = std::process::id() as i32;
    for (pid, (ppid, state)) in process_table() {
        if ppid == me && state == 'Z' && Some(pid) != keep.map(Pid::as_raw) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Replaces this process with `command` (only returns on failure).
pub fn exec(command: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no command given after --",
        );
    };
    let e = std::process::Command::new(program).args(args).exec();
    std::io::Error::new(
        e.kind(),
        format!("cannot run {}: {e}", program.to_string_lossy()),
    )
}

/// The exit code a shell would report for `status`: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_env_sets_both_cases_and_dialable_addresses() {
        let env: HashMap<_, _> = proxy_env(
            "0.0.0.0:3128".parse().unwrap(),
            Some("127.0.0.1:1080".parse().unwrap()),
        )
        .into_iter()
        .collect();
        assert_eq!(env["HTTP_PROXY"], "http://127.0.0.1:3128");
        assert_eq!(env["https_proxy"], "http://127.0.0.1:3128");
        assert_eq!(env["ALL_PROXY"], "socks5h://127.0.0.1:1080");
        assert_eq!(env["no_proxy"], NO_PROXY);
        assert_eq!(env.len(), 8);
        let env: HashMap<_, _> = proxy_env("[::]:3128".parse().unwrap(), None)
            .into_iter()
            .collect();
        assert_eq!(env["all_proxy"], "http://[::1]:3128");
    }

    #[test]
    fn stat_parses_names_with_spaces_and_parens() {
        let (ppid, state) = stat(std::process::id() as i32).unwrap();
        assert!(ppid > 0);
        assert!(matches!(state, 'R' | 'S'));
    }
}
