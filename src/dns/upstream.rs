//! One DNS exchange with the upstream resolver, from sockets carrying the warden's mark (so
//! capture exempts them): UDP, then TCP when the answer comes back truncated. Shared by the
//! DNS listener (forwarding a sandbox's query) and the warden's own resolver.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::MAX_MESSAGE;
use crate::sockets;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream DNS {0} timed out after {1}")]
    Timeout(&'static str, humantime::Duration),
    #[error("upstream DNS {0}: {1}")]
    Io(&'static str, String),
    #[error("upstream DNS answer over TCP is empty or longer than {MAX_MESSAGE} bytes")]
    BadLength,
}

/// Sends `query` to `upstream` and returns the answer with the same id. Each transport is
/// bounded by `timeout`: at most twice `timeout` in all when the UDP answer is truncated.
pub async fn exchange(
    upstream: SocketAddr,
    query: &[u8],
    timeout: Duration,
    mark: Option<u32>,
) -> Result<Vec<u8>, ExchangeError> {
    let rsp = tokio::time::timeout(timeout, udp(upstream, query, mark))
        .await
        .map_err(|_| ExchangeError::Timeout("UDP", timeout.into()))??;
    let truncated = rsp.get(2).is_some_and(|b| b & 0x02 != 0);
    if !truncated {
        return Ok(rsp);
    }
    tokio::time::timeout(timeout, tcp(upstream, query, mark))
        .await
        .map_err(|_| ExchangeError::Timeout("TCP", timeout.into()))?
}

async fn udp(
    upstream: SocketAddr,
    query: &[u8],
    mark: Option<u32>,
) -> Result<Vec<u8>, ExchangeError> {
    let io = |e: std::io::Error| ExchangeError::Io("UDP", e.to_string());
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = sockets::bind_udp(local, mark).map_err(io)?;
    sock.connect(upstream).await.map_err(io)?;
    sock.send(query).await.map_err(io)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        // Only an answer to this query (same id) counts; the socket is connected, so only the
        // upstream's address can send one.
        if n >= 12 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp(
    upstream: SocketAddr,
    query: &[u8],
    mark: Option<u32>,
) -> Result<Vec<u8>, ExchangeError> {
    let io = |e: std::io::Error| ExchangeError::Io("TCP", e.to_string());
    let mut s = sockets::connect_tcp(upstream, mark).await.map_err(io)?;
    let len = u16::try_from(query.len()).map_err(|_| ExchangeError::BadLength)?;
    s.write_u16(len).await.map_err(io)?;
    s.write_all(query).await.map_err(io)?;
    let len = usize::from(s.read_u16().await.map_err(io)?);
    if len == 0 || len > MAX_MESSAGE {
        return Err(ExchangeError::BadLength);
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}
