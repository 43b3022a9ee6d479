//! The transparent listener: connections the capture rules redirected. The original
//! destination comes from conntrack (SO_ORIGINAL_DST); the name comes from the client's first
//! flight — the TLS SNI or the HTTP Host — read within a bounded size and time.
//!
//! A connection with a name is decided by name rules and dialled to an address the warden
//! itself resolved for that name and checked; the address the sandbox chose is ignored, so
//! `SNI: allowed.example` aimed at any other IP reaches `allowed.example`, never that IP. A
//! connection without a usable name (no SNI or Host, ECH, an oversized, malformed or slow
//! first flight, a server-first protocol) is decided by its original IP against IP rules only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Accepted, Listener};
use crate::connect::dial;
use crate::forward::denial_bytes;
use crate::host::{Host, Target};
use crate::policy::Reason;
use crate::relay::write_all;
use crate::sniff::{Flight, MAX_SNIFF, SniffError, classify, http_host};
use crate::state::{Attempt, Shared};
use crate::tunnel::{self, TLS_ACCESS_DENIED};

/// Refuses a connection over the cap by closing it.
pub async fn refuse(stream: TcpStream) {
    drop(stream);
}

/// The destination the client dialled before the capture rules redirected it.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "original destination is not an IP socket address",
        )
    })
}

/// What the first flight says about the destination.
enum Named {
    /// A name from the SNI or Host (host part only; the port is the original one).
    Name(String),
    /// No usable name; `why` goes into the audit detail.
    Unnamed(&'static str),
}

/// Reads the first flight within `limit`: until it classifies (and, for HTTP, until the head
/// is complete), [`MAX_SNIFF`] bytes, EOF or the deadline.
async fn first_flight(
    stream: &TcpStream,
    buf: &mut BytesMut,
    limit: std::time::Duration,
) -> (Option<Flight>, Named) {
    let deadline = Instant::now() + limit;
    loop {
        if !buf.is_empty() {
            match classify(buf) {
                Ok(Flight::Tls(hello)) => {
                    let named = match (&hello.sni, hello.ech) {
                        (_, true) => Named::Unnamed("encrypted client hello"),
                        (Some(sni), false) => Named::Name(sni.clone()),
                        (None, false) => Named::Unnamed("no SNI"),
                    };
                    return (Some(Flight::Tls(hello)), named);
                }
                Ok(Flight::Http) => match http_host(buf) {
                    Ok(Some(host)) => return (Some(Flight::Http), Named::Name(host)),
                    Ok(None) => return (Some(Flight::Http), Named::Unnamed("no Host header")),
                    Err(SniffError::Malformed(_)) => {
                        return (Some(Flight::Http), Named::Unnamed("malformed HTTP head"));
                    }
                    Err(SniffError::Incomplete) => {}
                },
                Ok(Flight::Other) => {
                    return (Some(Flight::Other), Named::Unnamed("not TLS or HTTP"));
                }
                Err(SniffError::Malformed(_)) => {
                    return (None, Named::Unnamed("malformed TLS hello"));
                }
                Err(SniffError::Incomplete) => {}
            }
            if buf.len() >= MAX_SNIFF {
                return (None, Named::Unnamed("first flight too large"));
            }
        }
        let readable = tokio::time::timeout_at(deadline, stream.readable()).await;
        match readable {
            Err(_) => return (None, Named::Unnamed("no complete first flight in time")),
            Ok(Err(_)) => return (None, Named::Unnamed("connection error")),
            Ok(Ok(())) => {}
        }
        let mut chunk = [0u8; 4096];
        match crate::readiness::try_read(stream, &mut chunk) {
            Ok(0) => return (None, Named::Unnamed("closed before naming a host")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return (None, Named::Unnamed("connection error")),
        }
    }
}

/// Tells the client why, in the form its protocol allows, then closes.
async fn refuse_with(
    shared: &Shared,
    stream: &TcpStream,
    flight: Option<&Flight>,
    reason: Reason,
    what: &str,
) {
    match flight {
        Some(Flight::Tls(_)) => {
            let _ = write_all(stream, &TLS_ACCESS_DENIED).await;
        }
        Some(Flight::Http) => {
            let _ = write_all(stream, &denial_bytes(shared, reason, what)).await;
        }
        _ => {}
    }
}

/// Serves one redirected connection.
pub async fn serve(shared: Arc<Shared>, acc: Accepted) {
    let Accepted {
        stream,
        client,
        guard,
        kill,
    } = acc;
    let _guard = guard;
    let mut a = Attempt::new(Listener::Transparent, Some(client));
    let orig = match original_destination(&stream) {
        Ok(o) => o,
        Err(e) => {
            a.set_detail(format!("no original destination: {e}"));
            a.deny(&shared, Reason::NoHostname);
            shared.finish(a).await;
            return;
        }
    };
    if shared.probes.arrived_tcp(orig) {
        return;
    }
    a.ip = Some(orig.ip());
    a.port = Some(orig.port());
    a.set_host(&orig.ip().to_string());
    // Straight to the listener, not redirected: there is no destination to decide on.
    if stream.local_addr().is_ok_and(|l| l == orig) {
        a.set_detail("connected to the transparent listener itself");
        a.deny(&shared, Reason::NoHostname);
        shared.finish(a).await;
        return;
    }
    let mut buf = BytesMut::new();
    let sniff = first_flight(&stream, &mut buf, shared.config.timeouts.sniff);
    let (flight, named) = match &kill {
        Some(k) => tokio::select! {
            r = sniff => r,
            () = k.cancelled() => return,
        },
        None => sniff.await,
    };
    let target = match &named {
        Named::Name(host) => match Target::parse_authority_or(host, orig.port()) {
            Ok(t) => Target::new(t.host, orig.port()),
            Err(e) => {
                let reason = if e.is_noncanonical_ip() {
                    Reason::NoncanonicalIp
                } else {
                    Reason::MalformedRequest
                };
                a.set_detail(format!("name {host:?}: {e}"));
                a.deny(&shared, reason);
                refuse_with(&shared, &stream, flight.as_ref(), reason, host).await;
                shared.finish(a).await;
                return;
            }
        },
        Named::Unnamed(why) => {
            a.set_detail(format!("{why}: decided by IP"));
            Target::new(Host::Ip(orig.ip()), orig.port())
        }
    };
    let what = target.to_string();
    if shared.enforcer.is_terminated() {
        a.set_host(&target.host.to_string());
        a.deny(&shared, Reason::RunTerminated);
        refuse_with(
            &shared,
            &stream,
            flight.as_ref(),
            Reason::RunTerminated,
            &what,
        )
        .await;
        shared.finish(a).await;
        return;
    }
    a.set_host(&target.host.to_string());
    let policy = shared.policy();
    let mut decision = policy.decide(&target);
    // Without a usable name only IP rules apply; refused, it is refused for having no name.
    if matches!(named, Named::Unnamed(_)) && decision.reason == Reason::IpNotAllowed {
        decision.reason = Reason::NoHostname;
    }
    if !a.decide(&shared, &decision).proceeds() {
        refuse_with(&shared, &stream, flight.as_ref(), decision.reason, &what).await;
        shared.finish(a).await;
        return;
    }
    let upstream = match dial(&shared, &policy, &target, &mut a).await {
        Ok(u) => u,
        Err(e) => {
            match e.denial() {
                Some(Reason::ResolveFailed) => {
                    a.error = Some(e.kind());
                    a.set_detail(e.to_string());
                    a.deny(&shared, Reason::ResolveFailed);
                }
                Some(_) => {}
                None => {
                    a.error = Some(e.kind());
                    a.set_detail(e.to_string());
                }
            }
            let reason = e.denial().unwrap_or(Reason::ResolveFailed);
            refuse_with(&shared, &stream, flight.as_ref(), reason, &what).await;
            shared.finish(a).await;
            return;
        }
    };
    tunnel::run(shared, policy, a, stream, buf, upstream, target, kill).await;
}
