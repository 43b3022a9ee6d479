//! `run --isolate`: a fresh network namespace for the sandbox whose only way out is the warden.
//!
//! The warden process stays in its own namespace; it creates the sandbox namespace from a
//! thread of its own (`unshare(CLONE_NEWNET)`), and from threads that enter it (`setns`) binds
//! its sandbox-facing listeners there, installs the capture rules there, and probes them.
//! Sockets keep the namespace they were created in, so the listeners serve the sandbox while
//! every upstream connection the warden makes leaves from its own namespace.
//!
//! Inside, `lo` is up and a veth pair (`ew0`/`ew1`, both ends inside) carries the default
//! routes, so a connect() to any address is routed, reaches the output hook and is
//! redirected; nothing is attached beyond the namespace, so nothing the rules do not redirect
//! can go anywhere. (A dummy interface would do the same; it is not available on every kernel.)

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::SockProtocol;

use super::netlink::{
    Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkError, Socket,
};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_OIF: u16 = 4;
const IFF_UP: u32 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const LOOPBACK: i32 = 1;

/// The sandbox side of the veth pair and its addresses.
pub const SANDBOX_IF: &str = "ew0";
const PEER_IF: &str = "ew1";
pub const SANDBOX_V4: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 1);
pub const SANDBOX_V6: Ipv6Addr = Ipv6Addr::new(0xfd65, 0x7777, 0, 0, 0, 0, 0, 1);

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "cannot create a network namespace: {0}. `run --isolate` needs CAP_SYS_ADMIN and \
         CAP_NET_ADMIN: run it with sudo (after start-up the warden keeps only CAP_NET_ADMIN \
         and CAP_KILL; docs/capture.md), \
         or without --isolate, where the sandbox uses the proxy through HTTP_PROXY"
    )]
    Unshare(nix::errno::Errno),
    #[error("cannot enter the sandbox network namespace: {0}")]
    Setns(nix::errno::Errno),
    #[error("cannot configure the sandbox network ({step}): {source}")]
    Configure {
        step: &'static str,
        source: NetlinkError,
    },
    #[error("sandbox namespace: {0}")]
    Io(#[from] std::io::Error),
}

/// A network namespace, held open by a file descriptor, with a netfilter socket opened inside
/// it: the ruleset can be read back later without entering the namespace again.
pub struct Namespace {
    file: File,
    netfilter: std::sync::Mutex<Socket>,
}

fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn step(sock: &mut Socket, step: &'static str, m: Msg) -> Result<(), NetnsError> {
    let seq = sock.next_seq();
    sock.transact(&m.finish(seq), &[seq])
        .map_err(|source| NetnsError::Configure { step, source })
}

fn link_up(sock: &mut Socket, index: i32, what: &'static str) -> Result<(), NetnsError> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
    m.bytes(&ifinfo(index, IFF_UP, IFF_UP));
    step(sock, what, m)
}

fn add_address(sock: &mut Socket, index: i32, ip: IpAddr, prefix: u8) -> Result<(), NetnsError> {
    let mut m = Msg::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    let (family, bytes) = match ip {
        IpAddr::V4(v4) => (AF_INET, v4.octets().to_vec()),
        IpAddr::V6(v6) => (AF_INET6, v6.octets().to_vec()),
    };
    let mut ifa = [0u8; 8];
    ifa[0] = family;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    m.bytes(&ifa);
    m.attr(IFA_LOCAL, &bytes);
    m.attr(IFA_ADDRESS, &bytes);
    if family == AF_INET6 {
        // No duplicate address detection: the address is usable at once.
        m.attr_ne32(IFA_FLAGS, IFA_F_NODAD);
    }
    step(sock, "address", m)
}

fn add_default_route(sock: &mut Socket, index: i32, family: u8) -> Result<(), NetnsError> {
    let mut m = Msg::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    // rtmsg: family, dst_len, src_len, tos, table (main), protocol (boot), scope, type (unicast), flags
    let scope = if family == AF_INET { 253 } else { 0 };
    m.bytes(&[family, 0, 0, 0, 254, 3, scope, 1, 0, 0, 0, 0]);
    m.attr_ne32(RTA_OIF, index as u32);
    step(sock, "default route", m)
}

/// Brings up `lo` and the veth pair with addresses and default routes, in the current thread's
/// network namespace.
fn configure() -> Result<(), NetnsError> {
    let mut sock =
        Socket::open(SockProtocol::NetlinkRoute).map_err(|source| NetnsError::Configure {
            step: "rtnetlink",
            source,
        })?;
    link_up(&mut sock, LOOPBACK, "loopback up")?;
    let mut m = Msg::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    m.bytes(&ifinfo(0, 0, 0));
    m.attr_str(IFLA_IFNAME, SANDBOX_IF);
    m.nest(IFLA_LINKINFO, |m| {
        m.attr_str(IFLA_INFO_KIND, "veth");
        m.nest(IFLA_INFO_DATA, |m| {
            m.nest(VETH_INFO_PEER, |m| {
                m.bytes(&ifinfo(0, 0, 0));
                m.attr_str(IFLA_IFNAME, PEER_IF);
            });
        });
    });
    step(&mut sock, "veth pair", m)?;
    let index = |name| {
        nix::net::if_::if_nametoindex(name)
            .map(|i| i as i32)
            .map_err(|e| NetnsError::Io(e.into()))
    };
    let (sandbox, peer) = (index(SANDBOX_IF)?, index(PEER_IF)?);
    link_up(&mut sock, peer, "veth peer up")?;
    link_up(&mut sock, sandbox, "veth up")?;
    add_address(&mut sock, sandbox, SANDBOX_V4.into(), 30)?;
    add_address(&mut sock, sandbox, SANDBOX_V6.into(), 64)?;
    add_default_route(&mut sock, sandbox, AF_INET)?;
    add_default_route(&mut sock, sandbox, AF_INET6)?;
    Ok(())
}

impl Namespace {
    /// Creates and configures a new network namespace (from a thread that then exits, so the
    /// warden itself never leaves its own namespace).
    pub fn create() -> Result<Self, NetnsError> {
        std::thread::spawn(|| -> Result<Self, NetnsError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
            configure()?;
            let file = File::open("/proc/thread-self/ns/net")?;
            let netfilter = Socket::open(SockProtocol::NetlinkNetFilter).map_err(|source| {
                NetnsError::Configure {
                    step: "netfilter socket",
                    source,
                }
            })?;
            Ok(Self {
                file,
                netfilter: std::sync::Mutex::new(netfilter),
            })
        })
        .join()
        .expect("namespace setup thread does not panic")
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates belong to the namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Setns)?;
                    Ok(f())
                })
                .join()
                .expect("namespace thread does not panic")
        })
    }

    /// Runs `f` with the netfilter socket opened inside the namespace.
    pub fn with_netfilter<R>(&self, f: impl FnOnce(&mut Socket) -> R) -> R {
        f(&mut self.netfilter.lock().expect("netfilter socket lock"))
    }

    /// A path another process can open to enter the namespace while the warden lives.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }
}

/// Enters the namespace at `path` and drops every capability, then returns: the caller execs
/// the sandbox command. Used by the hidden `sandbox-exec` trampoline, so the command cannot
/// undo capture or leave the namespace even as uid 0.
pub fn enter_and_drop_privileges(path: &str) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
    drop(file);
    use caps::CapSet;
    // Bounding first (needs CAP_SETPCAP, still held), then the rest: after exec the command
    // can hold no capability, not even through a setuid binary.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding)
            .map_err(|e| format!("clear bounding capabilities: {e}"))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("clear {set:?} capabilities: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}
