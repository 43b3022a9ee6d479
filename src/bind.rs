//! Binding every listener before anything is served. Plain std sockets, so the sandbox-facing
//! ones can be bound on a thread inside the sandbox's network namespace (`run --isolate`) and
//! then served by the runtime outside it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// Accept backlog of each listener.
const BACKLOG: i32 = 1024;

fn context(e: io::Error, what: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("bind {what} {addr}: {e}"))
}

/// A TCP listener on `addr` (SO_REUSEADDR, non-blocking). TCP_NODELAY is set on the listener:
/// Linux copies it to every accepted socket, which saves a `setsockopt` per connection.
pub fn tcp(addr: SocketAddr, what: &str) -> io::Result<std::net::TcpListener> {
    let bind = || -> io::Result<std::net::TcpListener> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_tcp_nodelay(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    bind().map_err(|e| context(e, what, addr))
}

/// A UDP socket on `addr` (non-blocking).
pub fn udp(addr: SocketAddr, what: &str) -> io::Result<std::net::UdpSocket> {
    let bind = || -> io::Result<std::net::UdpSocket> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.cloexec(),
            Some(Protocol::UDP),
        )?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    bind().map_err(|e| context(e, what, addr))
}

/// Binds on 127.0.0.1 and ::1 (capture redirects to the loopback of the packet's family); an
/// IPv6 loopback that does not exist (IPv6 disabled) is skipped.
fn both_loopbacks<T>(
    port: u16,
    mut bind: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<Vec<T>> {
    let mut out = vec![bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))?];
    match bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)) {
        Ok(s) => out.push(s),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// The listeners a sandbox talks to.
pub struct SandboxFacing {
    pub http: std::net::TcpListener,
    pub socks: Option<std::net::TcpListener>,
    pub transparent: Vec<std::net::TcpListener>,
    pub dns_udp: Vec<std::net::UdpSocket>,
    pub dns_tcp: Vec<std::net::TcpListener>,
}

/// Binds the sandbox-facing listeners, in the calling thread's network namespace.
pub fn sandbox_facing(config: &Config) -> io::Result<SandboxFacing> {
    let http = tcp(config.http_listen, "http")?;
    let socks = config.socks_listen.map(|a| tcp(a, "socks")).transpose()?;
    let (transparent, dns_udp, dns_tcp) = match &config.capture {
        Some(c) => (
            both_loopbacks(c.spec.transparent_port, |a| tcp(a, "transparent"))?,
            both_loopbacks(c.spec.dns_port, |a| udp(a, "dns"))?,
            both_loopbacks(c.spec.dns_port, |a| tcp(a, "dns"))?,
        ),
        None => (vec![], vec![], vec![]),
    };
    Ok(SandboxFacing {
        http,
        socks,
        transparent,
        dns_udp,
        dns_tcp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for ip in ["127.0.0.1:0", "[::1]:0"] {
            let l = tcp(ip.parse().unwrap(), "test").unwrap();
            l.set_nonblocking(false).unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            assert!(
                s.nodelay().unwrap(),
                "{ip}: accepted socket without TCP_NODELAY"
            );
            drop(c);
        }
    }
}
