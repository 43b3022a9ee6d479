//! The warden's own upstream sockets. Under transparent capture they carry a socket mark
//! (SO_MARK) that the capture ruleset exempts: only a process with CAP_NET_ADMIN can set a
//! mark, so a sandbox process — even uid 0 without that capability — cannot forge the
//! exemption, which a uid-based exemption would allow to any process sharing the warden's uid.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};

fn raw(addr: &SocketAddr, ty: Type, protocol: Protocol, mark: Option<u32>) -> io::Result<Socket> {
    // Non-blocking from creation: saves the two fcntl calls of `set_nonblocking` per dial.
    let socket = Socket::new(
        Domain::for_address(*addr),
        ty.cloexec().nonblocking(),
        Some(protocol),
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("SO_MARK {mark:#x} (needs CAP_NET_ADMIN): {e}"),
            )
        })?;
    }
    Ok(socket)
}

/// Connects a TCP socket carrying `mark` (if any) to `addr`.
///
/// The outcome is read from the readiness event rather than with `getsockopt(SO_ERROR)` as
/// tokio's `TcpSocket::connect` does, one syscall fewer per dial: a socket becomes writable
/// without an error or hang-up only once it is connected, and a failed connect always reports
/// `EPOLLHUP` (with `EPOLLERR`), which tokio reports as write-closed; the error is then read.
pub async fn connect_tcp(addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let socket = raw(&addr, Type::STREAM, Protocol::TCP, mark)?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    // `ready` holds only writable and write-closed: an error bit would need Interest::ERROR.
    if ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into()));
    }
    Ok(stream)
}

/// Binds a UDP socket carrying `mark` (if any) to `local`.
pub fn bind_udp(local: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let socket = raw(&local, Type::DGRAM, Protocol::UDP, mark)?;
    socket.bind(&local.into())?;
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}
