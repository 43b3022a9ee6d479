//! The warden's own upstream sockets. Under transparent capture they carry a socket mark
//! (SO_MARK) that the capture ruleset exempts: only a process with CAP_NET_ADMIN can set a
//! mark, so a sandbox process — even uid 0 without that capability — cannot forge the
//! exemption, which a uid-based exemption would allow to any process sharing the warden's uid.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
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

/// A hickory runtime whose DNS sockets carry the warden's mark, so the warden's own lookups
/// are not captured and sent back to its own DNS listener.
#[derive(Clone, Default)]
pub struct MarkedRuntime {
    inner: TokioRuntimeProvider,
    mark: Option<u32>,
}

impl MarkedRuntime {
    pub fn new(mark: Option<u32>) -> Self {
        Self {
            inner: TokioRuntimeProvider::default(),
            mark,
        }
    }
}

impl RuntimeProvider for MarkedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        _bind_addr: Option<SocketAddr>,
        wait_for: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Tcp, io::Error>>>> {
        let mark = self.mark;
        Box::pin(async move {
            let wait = wait_for.unwrap_or(Duration::from_secs(5));
            match tokio::time::timeout(wait, connect_tcp(server_addr, mark)).await {
                Ok(Ok(stream)) => Ok(AsyncIoTokioAsStd(stream)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "DNS TCP connect timed out",
                )),
            }
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Udp, io::Error>>>> {
        let mark = self.mark;
        Box::pin(async move { bind_udp(local_addr, mark) })
    }
}
