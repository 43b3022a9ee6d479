//! SOCKS5 (RFC 1928): no authentication, CONNECT only, with domain, IPv4 and IPv6 targets.
//! BIND and UDP ASSOCIATE are refused with "command not supported"; a policy denial is
//! "connection not allowed by ruleset" (0x02). The request is read exactly, never past its
//! end, so a client that pipelines its ClientHello loses nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Accepted, Listener};
use crate::connect::{DialError, dial};
use crate::host::{Host, Target};
use crate::policy::Reason;
use crate::state::{Attempt, Shared};
use crate::tunnel;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// Reply codes (RFC 1928 §6).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

/// The address a client asked for, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Ip(IpAddr),
    Domain(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("client did not offer the no-authentication method")]
    NoAcceptableMethod,
    #[error("not SOCKS version 5 (first byte {0:#04x})")]
    Version(u8),
    #[error("command {0} is not supported (only CONNECT)")]
    Command(u8),
    #[error("address type {0} is not supported")]
    AddressType(u8),
    #[error("connection closed during the handshake")]
    Io(#[from] std::io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("closed before sending anything")]
    Empty,
}

/// Refuses a connection over the cap (closing it is all SOCKS allows before the greeting).
pub async fn refuse(stream: TcpStream) {
    drop(stream);
}

/// Reads the greeting and the request, answering the method selection (and, for a request
/// it refuses, the reply). Generic over the stream so it can be fuzzed without a socket.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<(Address, u16), HandshakeError> {
    let version = match s.read_u8().await {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(HandshakeError::Empty);
        }
        Err(e) => return Err(e.into()),
    };
    if version != VERSION {
        return Err(HandshakeError::Version(version));
    }
    let mut methods = vec![0u8; usize::from(s.read_u8().await?)];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        s.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
        return Err(HandshakeError::NoAcceptableMethod);
    }
    s.write_all(&[VERSION, NO_AUTH]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != VERSION {
        return Err(HandshakeError::Version(req[0]));
    }
    let address = match req[3] {
        ATYP_V4 => {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await?;
            Address::Ip(IpAddr::V4(Ipv4Addr::from(b)))
        }
        ATYP_V6 => {
            let mut b = [0u8; 16];
            s.read_exact(&mut b).await?;
            Address::Ip(IpAddr::V6(Ipv6Addr::from(b)))
        }
        ATYP_DOMAIN => {
            let len = usize::from(s.read_u8().await?);
            let mut b = vec![0u8; len];
            s.read_exact(&mut b).await?;
            Address::Domain(b)
        }
        other => {
            let _ = send_reply(s, Reply::AddressTypeNotSupported, None).await;
            return Err(HandshakeError::AddressType(other));
        }
    };
    let port = s.read_u16().await?;
    if req[1] != CMD_CONNECT {
        let _ = send_reply(s, Reply::CommandNotSupported, None).await;
        return Err(HandshakeError::Command(req[1]));
    }
    Ok((address, port))
}

async fn send_reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    reply: Reply,
    bound: Option<SocketAddr>,
) -> std::io::Result<()> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = vec![VERSION, reply as u8, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    s.write_all(&out).await
}

fn dial_reply(err: &DialError) -> Reply {
    match err {
        DialError::Denied { .. } => Reply::NotAllowed,
        DialError::Resolve(_) => Reply::HostUnreachable,
        DialError::Timeout => Reply::TtlExpired,
        DialError::Connect { source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            std::io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            std::io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            _ => Reply::GeneralFailure,
        },
    }
}

/// Serves one SOCKS5 connection.
pub async fn serve(shared: Arc<Shared>, acc: Accepted) {
    let Accepted {
        mut stream,
        client,
        guard,
        kill,
    } = acc;
    let _guard = guard;
    let mut a = Attempt::new(Listener::Socks, Some(client));
    let shake = tokio::time::timeout(shared.config.timeouts.handshake, handshake(&mut stream));
    let shake = tokio::select! {
        biased;
        r = shake => r,
        () = crate::enforce::killed(kill.as_ref()) => return,
        // Evicted at the connection cap before it asked for anything: not worth a record.
        () = shared.waiting.until_evicted() => return,
    };
    let (address, port) = match shake.unwrap_or(Err(HandshakeError::Timeout)) {
        Ok(req) => req,
        // A probe that connects and closes without a byte is not worth a record.
        Err(HandshakeError::Empty) => return,
        Err(e) => {
            let reason = match e {
                HandshakeError::Command(_) => Reason::UnsupportedRequest,
                _ => Reason::MalformedRequest,
            };
            a.set_detail(e.to_string());
            a.deny(&shared, reason);
            shared.finish(a).await;
            return;
        }
    };
    let host = match address {
        Address::Ip(ip) => Ok(Host::Ip(ip)),
        Address::Domain(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            a.set_host(&text);
            Host::parse(&text)
        }
    };
    a.port = Some(port);
    // Rules on a refusal (unless `dial` already did), records it, and returns the reply.
    let refuse = |mut a: Attempt, reason: Option<Reason>, reply: Reply, detail: Option<String>| {
        let shared = shared.clone();
        async move {
            if let Some(d) = detail {
                a.set_detail(d);
            }
            if let Some(reason) = reason {
                a.deny(&shared, reason);
            }
            shared.finish(a).await;
            reply
        }
    };
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            let reason = if e.is_noncanonical_ip() {
                Reason::NoncanonicalIp
            } else {
                Reason::MalformedRequest
            };
            let reply = refuse(a, Some(reason), Reply::NotAllowed, Some(e.to_string())).await;
            let _ = send_reply(&mut stream, reply, None).await;
            return;
        }
    };
    let target = Target::new(host, port);
    if shared.enforcer.is_terminated() {
        a.set_host(&target.host.to_string());
        let reply = refuse(a, Some(Reason::RunTerminated), Reply::NotAllowed, None).await;
        let _ = send_reply(&mut stream, reply, None).await;
        return;
    }
    let (policy, _) = a.decide_target(&shared, &target);
    if !a.proceeds() {
        let reply = refuse(a, None, Reply::NotAllowed, None).await;
        let _ = send_reply(&mut stream, reply, None).await;
        return;
    }
    let upstream = match dial(&shared, &policy, &target, &mut a).await {
        Ok(u) => u,
        Err(e) => {
            let reply = dial_reply(&e);
            match e.denial() {
                Some(Reason::ResolveFailed) => {
                    a.error = Some(e.kind());
                    refuse(a, Some(Reason::ResolveFailed), reply, Some(e.to_string())).await;
                }
                // Every resolved address was refused: `dial` already ruled on it.
                Some(_) => {
                    refuse(a, None, reply, None).await;
                }
                None => {
                    a.error = Some(e.kind());
                    a.set_detail(e.to_string());
                    shared.finish(a).await;
                }
            }
            let _ = send_reply(&mut stream, reply, None).await;
            return;
        }
    };
    let bound = upstream.stream.local_addr().ok();
    if send_reply(&mut stream, Reply::Succeeded, bound)
        .await
        .is_err()
    {
        a.error = Some("client_closed");
        shared.finish(a).await;
        return;
    }
    tunnel::run(
        shared,
        policy,
        a,
        stream,
        BytesMut::new(),
        upstream,
        target,
        kill,
    )
    .await;
}
