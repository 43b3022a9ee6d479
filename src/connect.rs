//! Dialling an allowed target: resolve a name with the warden's own resolver, check **every**
//! address with the policy, and connect only to an address that passed — from this one lookup,
//! so there is no second resolution for DNS rebinding to slip into.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::allowlist::Rule;
use crate::host::{Host, Target};
use crate::policy::{Decision, Policy, Reason};

use crate::dns::resolve::ResolveError;
use crate::state::{Attempt, Shared};

/// A connected upstream and what allowed it.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// The rule that allowed this address: the name rule, or an IP rule for a special address.
    pub rule: Option<Arc<Rule>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Every address the name resolved to was refused (e.g. rebinding to loopback).
    #[error("every resolved address was refused ({})", .decision.reason.as_str())]
    Denied { decision: Decision, ip: IpAddr },
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect timed out")]
    Timeout,
}

impl DialError {
    /// The denial reason, for the failures that are denials (fail closed).
    pub fn denial(&self) -> Option<Reason> {
        match self {
            DialError::Denied { decision, .. } => Some(decision.reason),
            DialError::Resolve(_) => Some(Reason::ResolveFailed),
            DialError::Connect { .. } | DialError::Timeout => None,
        }
    }

    /// A short, stable error kind for audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            DialError::Denied { .. } => "address_denied",
            DialError::Resolve(ResolveError::NotFound) => "dns_not_found",
            DialError::Resolve(ResolveError::Timeout) => "dns_timeout",
            DialError::Resolve(_) => "dns_error",
            DialError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "connect_refused",
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    "connect_unreachable"
                }
                _ => "connect_failed",
            },
            DialError::Timeout => "connect_timeout",
        }
    }
}

/// Resolves (for names), checks every address and connects to one that passed. The attempt
/// already carries the ruling on `target`; when every address is refused, that refusal is
/// ruled on here too (recorded in `a`), and under `--on-violation report` the dial goes ahead.
pub async fn dial(
    shared: &Shared,
    policy: &Policy,
    target: &Target,
    a: &mut Attempt,
) -> Result<Upstream, DialError> {
    let candidates: Vec<(IpAddr, Option<Arc<Rule>>)> = match &target.host {
        Host::Ip(ip) => vec![(*ip, a.rule.clone())],
        Host::Name(name) => {
            let addrs = shared.resolver.lookup(name).await?;
            let mut allowed = Vec::with_capacity(addrs.len());
            let mut refused = None;
            for &ip in &addrs {
                let d = policy.check_resolved(ip, target.port, a.rule.as_ref());
                if d.is_allow() {
                    allowed.push((ip, d.rule));
                } else if refused.is_none() {
                    refused = Some((d, ip));
                }
            }
            if allowed.is_empty() {
                let (decision, ip) = refused.expect("a successful lookup has an address");
                a.ip = Some(ip);
                if !a.decide(shared, &decision).proceeds() {
                    return Err(DialError::Denied { decision, ip });
                }
                allowed = addrs.iter().map(|&ip| (ip, a.rule.clone())).collect();
            }
            allowed
        }
    };
    let upstream = connect_any(shared, &candidates, target.port).await;
    if let Ok(u) = &upstream {
        a.ip = Some(u.addr.ip());
    }
    upstream
}

/// Connects to the first candidate that accepts, within one overall connect timeout.
async fn connect_any(
    shared: &Shared,
    candidates: &[(IpAddr, Option<Arc<Rule>>)],
    port: u16,
) -> Result<Upstream, DialError> {
    let deadline = Instant::now() + shared.config.timeouts.connect;
    let mut last = None;
    for (ip, rule) in candidates {
        let addr = SocketAddr::new(*ip, port);
        let started = Instant::now();
        match tokio::time::timeout_at(
            deadline,
            crate::sockets::connect_tcp(addr, shared.config.mark),
        )
        .await
        {
            Ok(Ok(stream)) => {
                shared.metrics.connect_time(started.elapsed());
                return Ok(Upstream {
                    stream,
                    addr,
                    rule: rule.clone(),
                });
            }
            Ok(Err(source)) => last = Some(DialError::Connect { addr, source }),
            Err(_) => return Err(DialError::Timeout),
        }
    }
    Err(last.unwrap_or(DialError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dial_failure_has_its_own_stable_kind() {
        let connect = |kind: io::ErrorKind| DialError::Connect {
            addr: SocketAddr::from(([192, 0, 2, 1], 443)),
            source: io::Error::from(kind),
        };
        let cases = [
            (
                connect(io::ErrorKind::ConnectionRefused),
                "connect_refused",
                None,
            ),
            (
                connect(io::ErrorKind::HostUnreachable),
                "connect_unreachable",
                None,
            ),
            (
                connect(io::ErrorKind::NetworkUnreachable),
                "connect_unreachable",
                None,
            ),
            (
                connect(io::ErrorKind::PermissionDenied),
                "connect_failed",
                None,
            ),
            (DialError::Timeout, "connect_timeout", None),
            (
                DialError::Resolve(ResolveError::NotFound),
                "dns_not_found",
                Some(Reason::ResolveFailed),
            ),
            (
                DialError::Resolve(ResolveError::Timeout),
                "dns_timeout",
                Some(Reason::ResolveFailed),
            ),
            (
                DialError::Resolve(ResolveError::NoUpstream),
                "dns_error",
                Some(Reason::ResolveFailed),
            ),
            (
                DialError::Denied {
                    decision: Decision::deny(Reason::SpecialAddress),
                    ip: IpAddr::from([127, 0, 0, 1]),
                },
                "address_denied",
                Some(Reason::SpecialAddress),
            ),
        ];
        for (err, kind, denial) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(err.denial(), denial, "{err}");
        }
    }
}
