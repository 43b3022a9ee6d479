//! Network namespaces the capture tests make and remove themselves, and a small "world" in
//! them: an "internet" namespace holding public-looking, private and metadata addresses (on its
//! loopback; this kernel has no dummy interfaces), linked by a veth pair to the namespace the
//! warden and the sandbox share. No packet leaves these namespaces.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "ew-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes belong to the namespace.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        enter_in(&self.name, f)
    }

    pub fn tcp(&self, addr: SocketAddr) -> std::net::TcpListener {
        self.enter(|| {
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
    }

    pub fn udp(&self, addr: SocketAddr) -> std::net::UdpSocket {
        self.enter(|| {
            std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
    }
}

/// Runs `f` on a thread inside the namespace called `name`.
pub fn enter_in<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap();
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A minimal HTTP/1.0 GET from inside the namespace `name`: status and body.
pub fn http_get_in(name: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    enter_in(name, || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Addresses in the "internet" namespace.
pub const PUBLIC_V4: &str = "93.184.216.34";
pub const PUBLIC_V6: &str = "2606:2800:220:1::1";
pub const PRIVATE_V4: &str = "10.0.0.5";
pub const METADATA_V4: &str = "169.254.169.254";
/// The resolver the world offers, and the warden-side address.
pub const RESOLVER: &str = "10.77.0.1";
pub const RESOLVER_V6: &str = "fd77::1";

/// Two namespaces: `inet` (the world) and `host` (the warden and the sandbox), linked by veth.
pub struct World {
    pub inet: Netns,
    pub host: Netns,
}

impl World {
    pub fn new() -> Self {
        let inet = Netns::new("i");
        let host = Netns::new("w");
        inet.ip(&[
            "link", "add", "i0", "type", "veth", "peer", "name", "w0", "netns", &host.name,
        ]);
        inet.ip(&["addr", "add", "10.77.0.1/24", "dev", "i0"]);
        inet.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "i0", "nodad"]);
        inet.ip(&["link", "set", "i0", "up"]);
        for addr in [PUBLIC_V4, PRIVATE_V4, METADATA_V4] {
            inet.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        inet.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{PUBLIC_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        host.ip(&["addr", "add", "10.77.0.2/24", "dev", "w0"]);
        host.ip(&["-6", "addr", "add", "fd77::2/64", "dev", "w0", "nodad"]);
        host.ip(&["link", "set", "w0", "up"]);
        host.ip(&["route", "add", "default", "via", RESOLVER]);
        host.ip(&["-6", "route", "add", "default", "via", RESOLVER_V6]);
        Self { inet, host }
    }

    pub fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
    }
}
