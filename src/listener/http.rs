//! The explicit HTTP proxy: absolute-form plain-HTTP requests, each one decided (not just the
//! first on a keep-alive connection), and CONNECT tunnels. The request target's host is
//! authoritative; a Host header naming another host is a denial.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::first_connect::{self, FirstRead};
use super::{Accepted, ConnGuard, Listener};
use crate::budget::UploadGate;
use crate::connect::{DialError, Upstream, dial};
use crate::enforce::killed;
use crate::forward::{
    ProxyBody, UpstreamHttp, denial, response_bytes, server_builder, upstream_failure,
};
use crate::host::Target;
use crate::policy::{Policy, Reason};
use crate::prefixed::Prefixed;
use crate::relay::write_all;
use crate::state::{Attempt, Shared, bounded};
use crate::tunnel;

/// Refuses a connection over the cap with a 503 the client can read.
pub async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\n\
              Proxy-Status: egress-warden; error=connection_limit_reached; details=\"connection_limit\"\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
}

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 server preface that refuses at once: an empty SETTINGS frame, then GOAWAY with
/// last stream 0 and `HTTP_1_1_REQUIRED` (0xd), so an h2 client reports why instead of a reset.
const H2_GOAWAY: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\
    \x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0d";

/// Records a connection refused before any request target was known (an h2 preface, a head
/// hyper could not parse): one record saying why.
async fn record_rejected(
    shared: &Shared,
    client: std::net::SocketAddr,
    reason: Reason,
    detail: String,
) {
    let mut a = Attempt::new(Listener::Http, Some(client));
    a.set_detail(detail);
    a.deny(shared, reason);
    shared.finish(a).await;
}

struct Conn {
    shared: Arc<Shared>,
    client: std::net::SocketAddr,
    kill: Option<CancellationToken>,
    /// Held by the connection and by any tunnel it hands off to.
    guard: Arc<ConnGuard>,
    /// The upstream of the previous plain-HTTP request, reused when the next one goes to the
    /// same target (one client's connection never serves another client).
    upstream: Mutex<Option<UpstreamHttp>>,
}

/// A CONNECT that was allowed and dialled: what its tunnel starts from.
struct Opened {
    a: Attempt,
    policy: Arc<Policy>,
    upstream: Upstream,
    target: Target,
}

/// Serves one client connection until it closes, idles out or the run is terminated.
pub async fn serve(shared: Arc<Shared>, acc: Accepted) {
    let config = &shared.config;
    let kill = acc.kill;
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        client: acc.client,
        kill: kill.clone(),
        guard: Arc::new(acc.guard),
        upstream: Mutex::new(None),
    });
    let stream = acc.stream;
    let stop = async {
        tokio::select! {
            () = killed(kill.as_ref()) => {}
            () = shared.drain.cancelled() => {}
            // Polled only once the first read has to wait: then it may be evicted at the cap.
            () = shared.waiting.until_evicted() => {}
        }
    };
    let head = config.max_header_bytes;
    let read = first_connect::read(&stream, config.timeouts.handshake, head, stop).await;
    let read_ahead = match read {
        FirstRead::Gone => return,
        // An HTTP/2 prior-knowledge client: refused in its own protocol, and recorded.
        FirstRead::Other(bytes) if bytes.starts_with(H2_PREFACE) => {
            let why = "HTTP/2 with prior knowledge; the proxy speaks HTTP/1.1";
            record_rejected(&shared, acc.client, Reason::UnsupportedRequest, why.into()).await;
            let _ = write_all(&stream, H2_GOAWAY).await;
            return;
        }
        FirstRead::Other(bytes) => bytes,
        FirstRead::Connect { uri, rest } => match conn.open(&uri).await {
            Ok(t) => {
                if write_all(&stream, first_connect::ESTABLISHED)
                    .await
                    .is_err()
                {
                    let mut a = t.a;
                    a.error = Some("upgrade_failed");
                    shared.finish(a).await;
                    return;
                }
                // The guard stays with this task, which the tunnel now is.
                tunnel::run(
                    shared, t.policy, t.a, stream, rest, t.upstream, t.target, kill,
                )
                .await;
                return;
            }
            // Refused: the reply is written here and hyper serves what follows (read or not),
            // as it would after a refusal it had written itself.
            Err(rsp) => {
                if write_all(&stream, &response_bytes(&rsp, false))
                    .await
                    .is_err()
                {
                    return;
                }
                rest.freeze()
            }
        },
    };
    // Boxed: a tunnel opened above never needs hyper's connection state in its task.
    Box::pin(conn.serve_http(Prefixed::new(read_ahead, stream))).await;
}

impl Conn {
    /// Serves the connection with hyper: plain-HTTP requests and CONNECTs after the first.
    async fn serve_http(self: Arc<Self>, stream: Prefixed) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let kill = self.kill.clone();
        let client = self.client;
        let conn = self;
        let service = service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let http = server_builder(config, config.timeouts.handshake)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(http);
        let killed = killed(kill.as_ref());
        tokio::pin!(killed);
        // A request hyper refused before the service saw it (a 400 for a malformed head, a 431
        // for one too large, a silent close for an h2 preface split over reads).
        let ended = |r: Result<(), hyper::Error>| {
            let shared = &shared;
            async move {
                if let Err(e) = r
                    && e.is_parse()
                {
                    let reason = if e.is_parse_version_h2() {
                        Reason::UnsupportedRequest
                    } else {
                        Reason::MalformedRequest
                    };
                    let why = format!("rejected by the HTTP parser: {e}");
                    record_rejected(shared, client, reason, why).await;
                }
            }
        };
        tokio::select! {
            r = &mut http => return ended(r).await,
            () = &mut killed => {}
            () = shared.drain.cancelled() => {
                // Shutdown: an idle keep-alive connection closes now, a request in flight finishes.
                http.as_mut().graceful_shutdown();
                tokio::select! {
                    r = &mut http => return ended(r).await,
                    () = &mut killed => {}
                }
            }
        }
        // Terminated: upstreams are already cut; let a response already produced (such as the
        // 403 of the violation itself) reach the client, then close.
        http.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(config.timeouts.termination_drain, http).await;
    }
}

impl Drop for Conn {
    /// The client is gone: its upstream may serve the sandbox's next connection to the target.
    fn drop(&mut self) {
        if let Some(up) = self.upstream.get_mut().take() {
            crate::pool::put(&self.shared, up);
        }
    }
}

impl Conn {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            // A CONNECT has no body (RFC 9110 section 9.3.6): one that claims one would have
            // its body, and anything pipelined after it, taken for tunnel bytes or dropped.
            let claims_body = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING]
                .iter()
                .any(|h| req.headers().contains_key(h));
            if claims_body {
                let mut a = match self.attempt(req.method(), req.uri()).await {
                    Ok(a) => a,
                    Err(rsp) => return rsp,
                };
                if let Some(auth) = req.uri().authority() {
                    a.set_host(auth.host());
                    a.port = auth.port_u16();
                }
                let detail =
                    "CONNECT with Content-Length or Transfer-Encoding: a CONNECT has no body";
                return self
                    .refuse(a, Reason::MalformedRequest, Some(detail.into()), "CONNECT")
                    .await;
            }
            return self.connect(req).await;
        }
        match self.attempt(req.method(), req.uri()).await {
            Ok(a) => self.plain(a, req).await,
            Err(rsp) => rsp,
        }
    }

    /// The attempt a request starts, or the refusal of every request once the run is
    /// terminated.
    async fn attempt(&self, method: &Method, uri: &Uri) -> Result<Attempt, Response<ProxyBody>> {
        let mut a = Attempt::new(Listener::Http, Some(self.client));
        a.method = Some(bounded(method.as_str()));
        if !self.shared.enforcer.is_terminated() {
            return Ok(a);
        }
        if let Some(auth) = uri.authority() {
            a.set_host(auth.host());
            a.port = auth.port_u16();
        }
        Err(self
            .refuse(a, Reason::RunTerminated, None, "request refused")
            .await)
    }

    /// Rules on a refusal for `reason`, records it and builds the response telling the client why.
    async fn refuse(
        &self,
        mut a: Attempt,
        reason: Reason,
        detail: Option<String>,
        what: &str,
    ) -> Response<ProxyBody> {
        if let Some(d) = detail {
            a.set_detail(d);
        }
        a.deny(&self.shared, reason);
        self.refused(a, reason, what).await
    }

    /// Records a refusal already ruled on and builds the response.
    async fn refused(&self, a: Attempt, reason: Reason, what: &str) -> Response<ProxyBody> {
        self.shared.finish(a).await;
        denial(&self.shared, reason, what)
    }

    async fn dial_failed(&self, mut a: Attempt, err: DialError, what: &str) -> Response<ProxyBody> {
        match err.denial() {
            Some(Reason::ResolveFailed) => {
                a.error = Some(err.kind());
                self.refuse(a, Reason::ResolveFailed, Some(err.to_string()), what)
                    .await
            }
            // Every resolved address was refused: `dial` already ruled on it.
            Some(reason) => self.refused(a, reason, what).await,
            None => {
                a.error = Some(err.kind());
                a.set_detail(err.to_string());
                self.shared.finish(a).await;
                upstream_failure(&self.shared, err.kind(), what)
            }
        }
    }

    /// Decides and dials a CONNECT to `uri`, or builds the reply that refuses it. Both the
    /// first request of a connection ([`first_connect`]) and later ones (hyper) come here.
    async fn open(&self, uri: &Uri) -> Result<Opened, Response<ProxyBody>> {
        let shared = &self.shared;
        let mut a = self.attempt(&Method::CONNECT, uri).await?;
        let Some(auth) = uri.authority().cloned() else {
            return Err(self
                .refuse(
                    a,
                    Reason::MalformedRequest,
                    Some("CONNECT without host:port".into()),
                    "CONNECT",
                )
                .await);
        };
        a.set_host(auth.host());
        a.port = auth.port_u16();
        let what = format!("CONNECT {auth}");
        let target = match Target::parse_authority(auth.as_str()) {
            Ok(t) => t,
            Err(e) => {
                let reason = if e.is_noncanonical_ip() {
                    Reason::NoncanonicalIp
                } else {
                    Reason::MalformedRequest
                };
                return Err(self.refuse(a, reason, Some(e.to_string()), &what).await);
            }
        };
        let (policy, decision) = a.decide_target(shared, &target);
        if !a.proceeds() {
            return Err(self.refused(a, decision.reason, &what).await);
        }
        match dial(shared, &policy, &target, &mut a).await {
            Ok(upstream) => Ok(Opened {
                a,
                policy,
                upstream,
                target,
            }),
            Err(e) => Err(self.dial_failed(a, e, &what).await),
        }
    }

    /// A CONNECT after the first request: hyper answers it and hands the socket over.
    async fn connect(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let Opened {
            mut a,
            policy,
            upstream,
            target,
        } = match self.open(req.uri()).await {
            Ok(t) => t,
            Err(rsp) => return rsp,
        };
        let shared = &self.shared;
        let on_upgrade = hyper::upgrade::on(req);
        let (shared2, kill, guard) = (shared.clone(), self.kill.clone(), self.guard.clone());
        shared.tasks.spawn(async move {
            let _guard = guard;
            let (io, read_buf) = match on_upgrade.await.map(|u| u.downcast::<TokioIo<Prefixed>>()) {
                Ok(Ok(parts)) => (parts.io.into_inner(), parts.read_buf),
                _ => {
                    a.error = Some("upgrade_failed");
                    shared2.finish(a).await;
                    return;
                }
            };
            // Copy what the client pipelined and free hyper's read buffer now: the tunnel may
            // stay open for hours. Bytes hyper had not yet taken from the first read follow it.
            let mut buffered = BytesMut::with_capacity(read_buf.len() + io.prefix.len());
            buffered.extend_from_slice(&read_buf);
            buffered.extend_from_slice(&io.prefix);
            drop((read_buf, io.prefix));
            tunnel::run(shared2, policy, a, io.io, buffered, upstream, target, kill).await;
        });
        Response::new(ProxyBody::empty())
    }

    async fn plain(&self, mut a: Attempt, req: Request<Incoming>) -> Response<ProxyBody> {
        let shared = &self.shared;
        if let Some(auth) = req.uri().authority() {
            a.set_host(auth.host());
            a.port = Some(auth.port_u16().unwrap_or(80));
        }
        // What a refusal names; built only when one is sent.
        let method = req.method().clone();
        let what = |a: &Attempt| format!("{method} {}", a.host.as_deref().unwrap_or("(no host)"));
        let target = match request_target(&req) {
            Ok(t) => t,
            Err((reason, detail)) => {
                let what = what(&a);
                return self.refuse(a, reason, Some(detail), &what).await;
            }
        };
        let (policy, decision) = a.decide_target(shared, &target);
        if !a.proceeds() {
            let what = what(&a);
            return self.refused(a, decision.reason, &what).await;
        }
        let authority = req
            .uri()
            .authority()
            .map(|x| x.as_str().to_owned())
            .unwrap_or_default();
        let mut slot = self.upstream.lock().await;
        // An upstream is reused only while the policy still allows its address.
        let allowed = |u: &UpstreamHttp| {
            u.rule.is_none()
                || policy
                    .check_resolved(u.addr.ip(), target.port, u.rule.as_ref())
                    .is_allow()
        };
        let reusable = slot
            .as_ref()
            .is_some_and(|u| u.target == target && u.is_usable() && allowed(u));
        if !reusable {
            if let Some(old) = slot.take() {
                crate::pool::put(shared, old);
            }
            *slot = crate::pool::take(&target, allowed);
        }
        if slot.is_none() {
            let upstream = match dial(shared, &policy, &target, &mut a).await {
                Ok(u) => u,
                Err(e) => {
                    let what = what(&a);
                    return self.dial_failed(a, e, &what).await;
                }
            };
            let rules = a.rule.iter().chain(upstream.rule.iter()).map(|r| &**r);
            let gate = Arc::new(UploadGate::new(shared.budgets.charge_for(rules)));
            let addr = upstream.addr;
            match UpstreamHttp::start(
                shared,
                Listener::Http,
                target.clone(),
                upstream.stream,
                upstream.rule,
                gate,
                self.kill.clone(),
            )
            .await
            {
                Ok(mut u) => {
                    u.pooled = true;
                    *slot = Some(u);
                }
                Err(_) => {
                    let what = what(&a);
                    a.ip = Some(addr.ip());
                    a.error = Some("upstream_error");
                    shared.finish(a).await;
                    return upstream_failure(shared, "upstream_error", &what);
                }
            }
        }
        let up = slot.as_mut().expect("set above");
        up.forward(shared, Some(a), req, &authority).await
    }
}

/// The target of an absolute-form plain-HTTP request, after checking the Host header agrees.
fn request_target(req: &Request<Incoming>) -> Result<Target, (Reason, String)> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) => {
            return Err((
                Reason::UnsupportedRequest,
                format!("{s}:// URLs are not proxied as plain HTTP; use CONNECT"),
            ));
        }
        None => {
            return Err((
                Reason::MalformedRequest,
                "origin-form request: a proxy needs an absolute URI (http://host/...)".into(),
            ));
        }
    }
    let auth = uri
        .authority()
        .ok_or((Reason::MalformedRequest, "URI without a host".to_owned()))?;
    if auth.as_str().contains('@') {
        return Err((
            Reason::MalformedRequest,
            "user info in the request URI".into(),
        ));
    }
    let target = Target::parse_authority_or(auth.as_str(), 80).map_err(|e| {
        let reason = if e.is_noncanonical_ip() {
            Reason::NoncanonicalIp
        } else {
            Reason::MalformedRequest
        };
        (reason, e.to_string())
    })?;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err((Reason::MalformedRequest, "several Host headers".into()));
    }
    if let Some(value) = first {
        let text = value.to_str().map_err(|_| {
            (
                Reason::MalformedRequest,
                "Host header is not ASCII".to_owned(),
            )
        })?;
        let agrees =
            Target::parse_authority_or(text, target.port).is_ok_and(|h| h.host == target.host);
        if !agrees {
            return Err((
                Reason::HostMismatch,
                format!(
                    "Host header {:?} disagrees with the request target {}",
                    bounded(text),
                    target.host
                ),
            ));
        }
    }
    Ok(target)
}
