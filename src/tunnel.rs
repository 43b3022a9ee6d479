//! A tunnel whose target was allowed and dialled (HTTP CONNECT or SOCKS5 CONNECT). Before any
//! client byte goes upstream, the client's first flight is classified:
//!
//! - a TLS ClientHello must name the tunnel's host in its SNI (an IP-literal tunnel's SNI must
//!   name an allowed host) — this closes domain fronting through shared CDN addresses, without
//!   TLS interception; a refusal is answered with a TLS `access_denied` alert;
//! - plain HTTP is served request by request, each request's Host checked the same way, so a
//!   keep-alive tunnel cannot switch hosts after its first request;
//! - anything else (SSH, a database protocol) is relayed as is.
//!
//! While waiting for the client's first bytes, upstream bytes still flow down (server-first
//! protocols work). Once the client starts, its first flight must be complete within the sniff
//! timeout and [`MAX_SNIFF`] bytes; the sniffed bytes are replayed upstream unchanged.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::UploadGate;
use crate::connect::Upstream;
use crate::enforce::Judgement;
use crate::forward::{ProxyBody, UpstreamHttp, denial, server_builder};
use crate::host::{Host, Target};
use crate::policy::{Policy, Reason};
use crate::prefixed::Prefixed;
use crate::relay::{End, Relay, Traffic, write_all};
use crate::sniff::{ClientHello, Flight, MAX_SNIFF, SniffError, classify};
use crate::state::{Attempt, Shared};

/// A fatal TLS alert record, `access_denied` (49): the client reports the refusal as
/// "tlsv1 alert access denied" instead of an unexplained reset.
pub const TLS_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49];

/// Does a name the client presented (SNI, Host) agree with the tunnel target? For a named
/// target it must be that name; for an IP-literal target, that address or an allowed name.
pub fn check_claimed(policy: &Policy, target: &Target, claimed: &str) -> Result<(), String> {
    let detail = || format!("claimed host {claimed:?} but the target is {}", target.host);
    let parsed = Host::parse(claimed).map_err(|_| detail())?;
    let ok = match (&target.host, &parsed) {
        (Host::Name(t), Host::Name(n)) => t == n,
        (Host::Ip(t), Host::Ip(n)) => t.to_canonical() == n.to_canonical(),
        (Host::Ip(_), Host::Name(n)) => policy.decide_name(n, target.port).is_allow(),
        (Host::Name(_), Host::Ip(_)) => false,
    };
    if ok { Ok(()) } else { Err(detail()) }
}

fn check_hello(
    policy: &Policy,
    target: &Target,
    hello: &ClientHello,
) -> Result<(), (Reason, String)> {
    match (&hello.sni, &target.host) {
        (None, Host::Ip(_)) => Ok(()), // RFC 6066: no SNI for IP literals
        (None, Host::Name(_)) => Err((Reason::SniMissing, "TLS ClientHello without SNI".into())),
        (Some(sni), _) => check_claimed(policy, target, sni)
            .map_err(|_| (Reason::SniMismatch, format!("sni={sni}"))),
    }
}

/// Why classification ended without a flight.
enum SniffFail {
    Bad(String),
    Ended(End),
}

/// Runs a tunnel to completion and writes its audit line. `buffered` holds client bytes
/// already read past the request (pipelined data).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    mut a: Attempt,
    client: TcpStream,
    buffered: BytesMut,
    upstream: Upstream,
    target: Target,
    kill: Option<CancellationToken>,
) {
    a.ip = Some(upstream.addr.ip());
    let rules = a.rule.iter().chain(upstream.rule.iter()).map(|r| &**r);
    let gate = Arc::new(UploadGate::new(shared.budgets.charge_for(rules)));
    let traffic = Traffic::default();
    let relay = Relay {
        sent: shared.metrics.sent_counter(a.listener),
        received: shared.metrics.received_counter(a.listener),
        gate: &gate,
        enforcer: &shared.enforcer,
        idle: shared.config.timeouts.idle,
        kill: kill.as_ref(),
        traffic: &traffic,
    };
    let mut buf = buffered;
    let sniffed = first_flight(&shared, &relay, &client, &upstream.stream, &mut buf).await;
    let denied_flight = |a: &mut Attempt, reason: Reason, detail: String| {
        a.set_detail(detail);
        a.deny(&shared, reason)
    };
    let end = match sniffed {
        Ok(Flight::Tls(hello)) => match check_hello(&policy, &target, &hello) {
            Ok(()) => relay.run(&client, &upstream.stream, buf).await,
            Err((reason, detail)) => match denied_flight(&mut a, reason, detail) {
                Judgement::Deny => {
                    let _ = write_all(&client, &TLS_ACCESS_DENIED).await;
                    End::Closed
                }
                _ => relay.run(&client, &upstream.stream, buf).await,
            },
        },
        Ok(Flight::Http) => {
            let (end, up, down) = pinned_http(
                &shared,
                &policy,
                &a,
                client,
                buf.freeze(),
                upstream,
                &target,
                gate.clone(),
                kill.clone(),
            )
            .await;
            traffic
                .up
                .fetch_add(up, std::sync::atomic::Ordering::Relaxed);
            traffic
                .down
                .fetch_add(down, std::sync::atomic::Ordering::Relaxed);
            end
        }
        Ok(Flight::Other) => relay.run(&client, &upstream.stream, buf).await,
        Err(SniffFail::Bad(detail)) => match denied_flight(&mut a, Reason::SniffFailed, detail) {
            Judgement::Deny => End::Closed,
            _ => relay.run(&client, &upstream.stream, buf).await,
        },
        Err(SniffFail::Ended(end)) => end,
    };
    a.bytes_up += traffic.up();
    a.bytes_down += traffic.down();
    if let Some(breach) = gate.breach() {
        a.reason = Some(Reason::UploadBudgetExceeded);
        a.ruling = Some(breach.ruling);
        a.set_detail(breach.exceeded.describe());
    } else if a.error.is_none() && a.ruling.is_some_and(|r| r.judgement.proceeds()) {
        a.error = match end {
            // Cut because the drain after SIGTERM/SIGINT ran out, not by a violation.
            End::Killed if shared.audit.failing() => Some("audit_unavailable"),
            End::Killed if !shared.enforcer.is_terminated() => Some("shutdown_drain_timeout"),
            end => end.error_kind(),
        };
    }
    shared.finish(a).await;
}

/// Reads the client's first flight into `buf` until it classifies, relaying upstream bytes
/// down meanwhile.
async fn first_flight(
    shared: &Shared,
    relay: &Relay<'_>,
    client: &TcpStream,
    upstream: &TcpStream,
    buf: &mut BytesMut,
) -> Result<Flight, SniffFail> {
    let sniff_timeout = shared.config.timeouts.sniff;
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + sniff_timeout);
    let mut idle_deadline = Instant::now() + relay.idle;
    let mut down = Vec::new();
    loop {
        if !buf.is_empty() {
            match classify(buf) {
                Ok(flight) => return Ok(flight),
                Err(SniffError::Malformed(why)) => return Err(SniffFail::Bad(why.into())),
                Err(SniffError::Incomplete) if buf.len() >= MAX_SNIFF => {
                    return Err(SniffFail::Bad(format!(
                        "first flight exceeds {MAX_SNIFF} bytes"
                    )));
                }
                Err(SniffError::Incomplete) => {}
            }
        }
        let killed = crate::enforce::killed(relay.kill);
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = client.readable() => {
                r.map_err(|_| SniffFail::Ended(End::Error))?;
                buf.reserve(4096);
                let mut chunk = [0u8; 4096];
                match crate::readiness::try_read(client, &mut chunk) {
                    Ok(0) => return Err(SniffFail::Ended(End::Closed)),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        deadline.get_or_insert_with(|| Instant::now() + sniff_timeout);
                        idle_deadline = Instant::now() + relay.idle;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(SniffFail::Ended(End::Error)),
                }
            }
            r = upstream.readable() => {
                r.map_err(|_| SniffFail::Ended(End::Error))?;
                if down.is_empty() {
                    down = vec![0u8; 16 * 1024];
                }
                match crate::readiness::try_read(upstream, &mut down) {
                    // The server closed before the client said anything: pass it on.
                    Ok(0) => {
                        let _ = socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write);
                        return Err(SniffFail::Ended(End::Closed));
                    }
                    Ok(n) => {
                        write_all(client, &down[..n]).await.map_err(|_| SniffFail::Ended(End::Error))?;
                        relay.count_down(n);
                        idle_deadline = Instant::now() + relay.idle;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(SniffFail::Ended(End::Error)),
                }
            }
            () = timeout => {
                return Err(SniffFail::Bad(format!(
                    "first flight incomplete after {}", humantime::format_duration(sniff_timeout)
                )));
            }
            () = tokio::time::sleep_until(idle_deadline) => return Err(SniffFail::Ended(End::Idle)),
            () = killed => return Err(SniffFail::Ended(End::Killed)),
        }
    }
}

/// Serves plain HTTP found inside a tunnel: every request's authority and Host must agree with
/// the tunnel target; allowed requests go over the one dialled upstream connection.
#[allow(clippy::too_many_arguments)]
async fn pinned_http(
    shared: &Arc<Shared>,
    policy: &Arc<Policy>,
    tunnel: &Attempt,
    client: TcpStream,
    prefix: Bytes,
    upstream: Upstream,
    target: &Target,
    gate: Arc<UploadGate>,
    kill: Option<CancellationToken>,
) -> (End, u64, u64) {
    let up = match UpstreamHttp::start(
        shared,
        tunnel.listener,
        target.clone(),
        upstream.stream,
        upstream.rule,
        gate,
        kill.clone(),
    )
    .await
    {
        Ok(up) => up,
        Err(_) => return (End::Error, 0, 0),
    };
    let traffic = up.traffic.clone();
    let up = Arc::new(tokio::sync::Mutex::new(up));
    let ctx = Arc::new(PinnedCtx {
        shared: shared.clone(),
        policy: policy.clone(),
        target: target.clone(),
        listener: tunnel.listener,
        client: tunnel.client,
        up,
    });
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(ctx.request(req).await) }
    });
    let conn = server_builder(&shared.config, shared.config.timeouts.idle)
        .serve_connection(TokioIo::new(Prefixed::new(prefix, client)), service);
    let end = match kill {
        Some(k) => tokio::select! {
            r = conn => if r.is_ok() { End::Closed } else { End::Error },
            () = k.cancelled() => End::Killed,
        },
        None => {
            if conn.await.is_ok() {
                End::Closed
            } else {
                End::Error
            }
        }
    };
    (end, traffic.up(), traffic.down())
}

struct PinnedCtx {
    shared: Arc<Shared>,
    policy: Arc<Policy>,
    target: Target,
    listener: crate::listener::Listener,
    client: Option<std::net::SocketAddr>,
    up: Arc<tokio::sync::Mutex<UpstreamHttp>>,
}

impl PinnedCtx {
    async fn request(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let what = format!("{} inside tunnel to {}", req.method(), self.target);
        let mut claimed: Vec<String> = Vec::new();
        if let Some(auth) = req.uri().authority() {
            claimed.push(auth.host().to_owned());
        }
        let hosts: Vec<_> = req.headers().get_all(hyper::header::HOST).iter().collect();
        if hosts.len() > 1 {
            return self
                .refuse(
                    req.method(),
                    Reason::MalformedRequest,
                    "several Host headers".into(),
                    &what,
                )
                .await;
        }
        let host_header = hosts
            .first()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(h) = &host_header {
            match Target::parse_authority_or(h, self.target.port) {
                Ok(t) => claimed.push(t.host.to_authority_host()),
                Err(_) => claimed.push(h.clone()),
            }
        }
        for name in &claimed {
            if let Err(detail) = check_claimed(&self.policy, &self.target, name) {
                if let Some(rsp) = self
                    .refuse_unless_reported(req.method(), Reason::HostMismatch, detail, &what)
                    .await
                {
                    return rsp;
                }
            }
        }
        if req.method() == Method::CONNECT {
            return self
                .refuse(
                    req.method(),
                    Reason::UnsupportedRequest,
                    "CONNECT inside a tunnel".into(),
                    &what,
                )
                .await;
        }
        let authority = host_header.unwrap_or_else(|| self.target.to_string());
        let mut up = self.up.lock().await;
        up.forward(&self.shared, None, req, &authority).await
    }

    fn attempt(&self, method: &Method) -> Attempt {
        let mut a = Attempt::new(self.listener, self.client);
        a.method = Some(crate::state::bounded(method.as_str()));
        a.set_host(&self.target.host.to_string());
        a.port = Some(self.target.port);
        a
    }

    async fn refuse(
        &self,
        method: &Method,
        reason: Reason,
        detail: String,
        what: &str,
    ) -> Response<ProxyBody> {
        let mut a = self.attempt(method);
        a.set_detail(detail);
        a.deny(&self.shared, reason);
        self.shared.finish(a).await;
        denial(&self.shared, reason, what)
    }

    /// Records a denial; returns the refusal unless `--on-violation report` lets it through.
    async fn refuse_unless_reported(
        &self,
        method: &Method,
        reason: Reason,
        detail: String,
        what: &str,
    ) -> Option<Response<ProxyBody>> {
        let mut a = self.attempt(method);
        a.set_detail(detail);
        let judgement = a.deny(&self.shared, reason);
        self.shared.finish(a).await;
        (!judgement.proceeds()).then(|| denial(&self.shared, reason, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{RuleSet, parse_text};

    #[test]
    fn claimed_names_must_match_the_target() {
        let (rules, _) = parse_text("t.txt", "allowed.test\n93.184.216.34\n");
        let policy = Policy::new(RuleSet {
            rules,
            files: vec![],
        });
        let cases = [
            ("allowed.test:443", "allowed.test", true),
            ("allowed.test:443", "ALLOWED.test.", true),
            ("allowed.test:443", "evil.test", false),
            ("allowed.test:443", "93.184.216.34", false),
            ("93.184.216.34:443", "93.184.216.34", true),
            ("93.184.216.34:443", "allowed.test", true),
            ("93.184.216.34:443", "evil.test", false),
            ("93.184.216.34:443", "0x5db8d822", false),
        ];
        for (target, claimed, ok) in cases {
            let t = Target::parse_authority(target).unwrap();
            assert_eq!(
                check_claimed(&policy, &t, claimed).is_ok(),
                ok,
                "{target} {claimed}"
            );
        }
        let named = Target::parse_authority("allowed.test:443").unwrap();
        let none = ClientHello {
            sni: None,
            ech: false,
        };
        assert_eq!(
            check_hello(&policy, &named, &none).unwrap_err().0,
            Reason::SniMissing
        );
        let ip = Target::parse_authority("93.184.216.34:443").unwrap();
        assert!(check_hello(&policy, &ip, &none).is_ok());
    }
}
