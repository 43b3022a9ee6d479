//! Proof that capture is active, not merely configured: connections and queries from ordinary
//! (unmarked) sockets to a documentation address (192.0.2.1, 2001:db8::1) that nothing real
//! answers must arrive at the warden's own listeners — which only the capture rules can make
//! happen — and a UDP datagram to the same address must be dropped and counted.
//!
//! Probes are blocking socket code, run on a thread of their own, which first enters the
//! captured network namespace when that is not the warden's own (`run --isolate`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

/// Where probes are aimed: TEST-NET-1 and the IPv6 documentation prefix.
pub const PROBE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const PROBE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The name suffix of DNS probes (`.invalid` never resolves anywhere).
pub const DNS_SUFFIX: &str = ".probe.egress-warden.invalid";
const WAIT: Duration = Duration::from_secs(3);

/// Probes in flight, so the listeners can recognise and answer them (and not audit them).
#[derive(Default)]
pub struct Probes {
    tcp: Mutex<HashMap<SocketAddr, mpsc::Sender<()>>>,
    dns: Mutex<HashMap<String, mpsc::Sender<()>>>,
}

impl Probes {
    fn expect_tcp(&self, target: SocketAddr) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        self.tcp.lock().expect("probe lock").insert(target, tx);
        rx
    }

    fn expect_dns(&self, name: &str) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        self.dns
            .lock()
            .expect("probe lock")
            .insert(name.to_owned(), tx);
        rx
    }

    /// Called by the transparent listener: true when `orig` is a probe (now answered).
    pub fn arrived_tcp(&self, orig: SocketAddr) -> bool {
        match self.tcp.lock().expect("probe lock").remove(&orig) {
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }

    /// Called by the DNS listener: true when `name` is a probe (now answered).
    pub fn arrived_dns(&self, name: &str) -> bool {
        if !name.ends_with(DNS_SUFFIX) {
            return false;
        }
        match self.dns.lock().expect("probe lock").remove(name) {
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }
}

/// What the probes showed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `None` when the namespace has no route of that family (nothing to capture).
    pub tcp_v4: Option<bool>,
    pub tcp_v6: Option<bool>,
    pub dns: bool,
    pub udp_dropped: bool,
}

impl Report {
    /// Every family with a route is captured, at least one has a route, DNS is captured and
    /// UDP is dropped.
    pub fn ok(&self) -> bool {
        let tcp = [self.tcp_v4, self.tcp_v6];
        tcp.iter().all(|t| *t != Some(false))
            && tcp.iter().any(Option::is_some)
            && self.dns
            && self.udp_dropped
    }

    pub fn describe(&self) -> String {
        format!(
            "tcp/ipv4 redirected: {}; tcp/ipv6 redirected: {}; dns redirected: {}; udp dropped and counted: {}",
            family(self.tcp_v4),
            family(self.tcp_v6),
            self.dns,
            self.udp_dropped
        )
    }
}

fn family(probe: Option<bool>) -> String {
    probe.map_or_else(|| "no route".to_owned(), |b| b.to_string())
}

fn nonce() -> String {
    crate::config::fresh_run_id()
}

fn port() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("OS random number source");
    40000 + u16::from_be_bytes(b) % 20000
}

/// A TCP probe to `ip`: `Some(true)` if the transparent listener received it, `None` if the
/// namespace has no route for that family.
fn tcp_probe(probes: &Probes, ip: IpAddr) -> Option<bool> {
    if !routed(ip) {
        return None;
    }
    let target = SocketAddr::new(ip, port());
    let rx = probes.expect_tcp(target);
    match TcpStream::connect_timeout(&target, WAIT) {
        Err(_) => {
            probes.tcp.lock().expect("probe lock").remove(&target);
            Some(false)
        }
        Ok(mut s) => {
            let _ = s.write_all(b"egress-warden probe\n");
            let arrived = rx.recv_timeout(WAIT).is_ok();
            let _ = s.read(&mut [0u8; 1]);
            Some(arrived)
        }
    }
}

/// Whether the kernel has a route to `ip` (a UDP connect looks the route up and sends nothing).
/// Without one, no process here can send to that family at all: there is nothing to capture.
fn routed(ip: IpAddr) -> bool {
    let local: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(local)
        .and_then(|s| s.connect((ip, 9)))
        .is_ok()
}

fn dns_probe(probes: &Probes) -> bool {
    let name = format!("{}{DNS_SUFFIX}", nonce());
    let rx = probes.expect_dns(&name);
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(WAIT));
    let mut q = hickory_proto::op::Message::query();
    q.metadata.recursion_desired = true;
    let Ok(qname) = hickory_proto::rr::Name::from_ascii(format!("{name}.")) else {
        return false;
    };
    q.add_query(hickory_proto::op::Query::query(
        qname,
        hickory_proto::rr::RecordType::A,
    ));
    let Ok(bytes) = q.to_vec() else { return false };
    if sock.send_to(&bytes, (PROBE_V4, 53)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let answered = sock.recv_from(&mut buf).is_ok();
    answered && rx.recv_timeout(WAIT).is_ok()
}

/// Sends one UDP datagram that capture must drop; `dropped_udp` reads the drop counter.
fn udp_probe(dropped_udp: &dyn Fn() -> Option<u64>) -> bool {
    let Some(before) = dropped_udp() else {
        return false;
    };
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    // EPERM from the send is the drop itself, reported back by the kernel.
    let _ = sock.send_to(b"egress-warden drop probe", (PROBE_V4, 9));
    dropped_udp().is_some_and(|after| after > before)
}

/// Runs every probe from the current thread's network namespace.
pub fn run(probes: &Probes, dropped_udp: &dyn Fn() -> Option<u64>) -> Report {
    Report {
        tcp_v4: tcp_probe(probes, PROBE_V4.into()),
        tcp_v6: tcp_probe(probes, PROBE_V6.into()),
        dns: dns_probe(probes),
        udp_dropped: udp_probe(dropped_udp),
    }
}
