//! Plain HTTP/1 forwarding, shared by the explicit proxy and by HTTP found inside a tunnel:
//! hop-by-hop header stripping, upstream connections that count bytes and enforce the upload
//! budget as they write, per-request audit when the response body ends, and the responses
//! that tell a sandbox why it was refused (`403` + `Proxy-Status`, RFC 9209).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::allowlist::Rule;
use crate::budget::UploadGate;
use crate::config::Config;
use crate::host::Target;
use crate::listener::Listener;
use crate::policy::Reason;
use crate::relay::Traffic;
use crate::state::{Attempt, Shared};

// === Responses ===

/// The RFC 9209 `error` token for a refusal.
fn proxy_status_error(reason: Reason) -> &'static str {
    match reason {
        Reason::ResolveFailed => "dns_error",
        Reason::MalformedRequest | Reason::UnsupportedRequest => "http_request_error",
        Reason::ConnectionLimit => "connection_limit_reached",
        Reason::SpecialAddress | Reason::IpNotAllowed | Reason::NoncanonicalIp => {
            "destination_ip_prohibited"
        }
        _ => "http_request_denied",
    }
}

/// The status code for a refusal.
pub fn denial_status(reason: Reason) -> StatusCode {
    match reason {
        Reason::MalformedRequest => StatusCode::BAD_REQUEST,
        Reason::UnsupportedRequest => StatusCode::NOT_IMPLEMENTED,
        Reason::ResolveFailed => StatusCode::BAD_GATEWAY,
        Reason::ConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

/// A refusal the sandbox can read: status, `Proxy-Status` naming the reason, and a one-line
/// body with what was refused, the reason and the run id.
pub fn denial(shared: &Shared, reason: Reason, what: &str) -> Response<ProxyBody> {
    let status = denial_status(reason);
    let body = format!(
        "egress-warden: {what}: {} (run {})\n",
        match reason {
            Reason::RunTerminated => "run terminated",
            r => r.as_str(),
        },
        shared.config.run_id
    );
    let status_header = format!(
        "egress-warden; error={}; details=\"{}\"",
        proxy_status_error(reason),
        reason.as_str()
    );
    let mut rsp = Response::new(ProxyBody::full(body));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&status_header) {
        h.insert(HeaderName::from_static("proxy-status"), v);
    }
    rsp
}

/// The same refusal as raw HTTP/1.1 bytes (closing the connection), for a listener that
/// reads the request itself (transparent capture).
pub fn denial_bytes(shared: &Shared, reason: Reason, what: &str) -> Vec<u8> {
    response_bytes(&denial(shared, reason, what), true)
}

/// One of the warden's own replies (a refusal or a failure to reach the upstream, never an
/// upstream's response) as raw HTTP/1.1 bytes, for a connection hyper is not writing to;
/// `close` adds `connection: close`.
pub fn response_bytes(rsp: &Response<ProxyBody>, close: bool) -> Vec<u8> {
    let body: &[u8] = match &rsp.body().kind {
        Kind::Full(Some(b)) => b,
        _ => &[],
    };
    let mut out = format!("HTTP/1.1 {}\r\n", rsp.status()).into_bytes();
    for (name, value) in rsp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A failure to reach an allowed upstream, or of the client's request body on its way there
/// (not a policy denial).
pub fn upstream_failure(shared: &Shared, kind: &'static str, what: &str) -> Response<ProxyBody> {
    let (status, token) = match kind {
        "connect_timeout" => (StatusCode::GATEWAY_TIMEOUT, "connection_timeout"),
        "connect_refused" => (StatusCode::BAD_GATEWAY, "connection_refused"),
        "upstream_timeout" => (StatusCode::GATEWAY_TIMEOUT, "http_response_timeout"),
        "client_body_error" => (StatusCode::BAD_REQUEST, "http_request_error"),
        _ => (StatusCode::BAD_GATEWAY, "destination_unavailable"),
    };
    let body = format!(
        "egress-warden: {what}: {kind} (run {})\n",
        shared.config.run_id
    );
    let mut rsp = Response::new(ProxyBody::full(body));
    *rsp.status_mut() = status;
    if let Ok(v) =
        HeaderValue::from_str(&format!("egress-warden; error={token}; details=\"{kind}\""))
    {
        rsp.headers_mut()
            .insert(HeaderName::from_static("proxy-status"), v);
    }
    rsp
}

// === Builders ===

/// The HTTP/1 server settings every sandbox-facing connection uses: bounded request heads
/// (size and count) and a deadline for each head (`head_timeout`).
pub fn server_builder(
    config: &Config,
    head_timeout: std::time::Duration,
) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(64 * 1024) * 2);
    // hyper keeps up to 100 headers on the stack and moves to the heap for any other limit.
    if config.max_headers != 100 {
        b.max_headers(config.max_headers);
    }
    b
}

// === Headers ===

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named by `Connection`, and the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names is cheaper than ten lookups.
    // A name listed in `Connection` matters only when `Connection` itself is present.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
}

/// The fixed hop-by-hop headers (besides the non-standard two below).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == KEEP_ALIVE || name == PROXY_CONNECTION
}

/// Does the client end its connection after this request (`Connection: close`, or HTTP/1.0
/// without `keep-alive`)?
pub fn is_last_request(version: hyper::Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has("close") || (version == hyper::Version::HTTP_10 && !has("keep-alive"))
}

// === Upstream connections ===

/// An upstream socket that counts bytes and asks the upload gate before writing. Bytes are
/// admitted ahead of each write and only once, however often a write returns `Pending`.
struct CountingIo {
    io: TcpStream,
    shared: Arc<Shared>,
    traffic: Arc<Traffic>,
    gate: Arc<UploadGate>,
    sent: Counter,
    received: Counter,
    /// Bytes admitted by the gate but not yet written.
    credit: u64,
}

impl CountingIo {
    fn admit(&mut self, len: usize) -> io::Result<()> {
        let len = len as u64;
        if self.credit < len {
            let need = len - self.credit;
            if !self.gate.admit(need, &self.shared.enforcer) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "upload budget exceeded",
                ));
            }
            self.credit += need;
        }
        Ok(())
    }

    fn wrote(&mut self, n: usize) {
        self.credit = self.credit.saturating_sub(n as u64);
        self.traffic
            .up
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.sent.inc_by(n as u64);
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        this.traffic
            .down
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        this.received.inc_by(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.admit(buf.len())?;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.admit(bufs.iter().map(|b| b.len()).sum())?;
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An HTTP/1 client connection to one checked upstream address.
pub struct UpstreamHttp {
    pub target: Target,
    pub addr: SocketAddr,
    pub rule: Option<Arc<Rule>>,
    pub sender: SendRequest<Incoming>,
    pub traffic: Arc<Traffic>,
    pub gate: Arc<UploadGate>,
    /// Kept in [`crate::pool`] once its client connection closes (the explicit proxy's plain
    /// HTTP); otherwise it closes with its client.
    pub pooled: bool,
}

impl UpstreamHttp {
    /// Starts an HTTP/1 client on a connected upstream socket. The connection task ends with
    /// the sender, or at once when `kill` is cancelled.
    pub async fn start(
        shared: &Arc<Shared>,
        listener: Listener,
        target: Target,
        stream: TcpStream,
        rule: Option<Arc<Rule>>,
        gate: Arc<UploadGate>,
        kill: Option<CancellationToken>,
    ) -> Result<Self, hyper::Error> {
        let addr = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let traffic = Arc::new(Traffic::default());
        let io = CountingIo {
            io: stream,
            shared: shared.clone(),
            traffic: traffic.clone(),
            gate: gate.clone(),
            sent: shared.metrics.sent_counter(listener),
            received: shared.metrics.received_counter(listener),
            credit: 0,
        };
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder
            .max_header_size(shared.config.max_header_bytes)
            .max_buf_size(shared.config.max_header_bytes.max(64 * 1024) * 2);
        if shared.config.max_headers != 100 {
            builder.max_headers(shared.config.max_headers);
        }
        let (sender, conn) = builder.handshake(TokioIo::new(io)).await?;
        shared.tasks.spawn(async move {
            match kill {
                Some(kill) => {
                    tokio::select! {
                        _ = conn => {}
                        () = kill.cancelled() => {}
                    }
                }
                None => {
                    let _ = conn.await;
                }
            }
        });
        Ok(Self {
            target,
            addr,
            rule,
            sender,
            traffic,
            gate,
            pooled: false,
        })
    }

    /// Whether the connection can take another request.
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends one request (already checked) and wraps the response so that the audit line is
    /// written when its body ends. `attempt` carries the decision (bytes are filled in here);
    /// `None` when the request is accounted for elsewhere (HTTP inside a tunnel).
    pub async fn forward(
        &mut self,
        shared: &Arc<Shared>,
        mut attempt: Option<Attempt>,
        mut req: Request<Incoming>,
        authority: &str,
    ) -> Response<ProxyBody> {
        if let Some(a) = attempt.as_mut() {
            a.ip = Some(self.addr.ip());
        }
        let method = req.method().clone();
        // Origin form: the path and query alone (shared, not copied or parsed again).
        let mut origin = hyper::http::uri::Parts::default();
        origin.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"));
        let last = is_last_request(req.version(), req.headers());
        *req.version_mut() = hyper::Version::HTTP_11;
        strip_hop_by_hop(req.headers_mut());
        if last && !self.pooled {
            // The client closes after this response, so this upstream connection will not be
            // reused: ask the server to close first, leaving TIME_WAIT on its side rather than
            // holding one of the warden's ephemeral ports to that destination for a minute.
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Ok(v) = HeaderValue::from_str(authority) {
            req.headers_mut().insert(header::HOST, v);
        }
        let (up0, down0) = (self.traffic.up(), self.traffic.down());
        let sent = match self.sender.ready().await {
            Ok(()) => {
                tokio::time::timeout(shared.config.timeouts.idle, self.sender.send_request(req))
                    .await
            }
            Err(e) => Ok(Err(e)),
        };
        let failed = match sent {
            Ok(Ok(mut rsp)) => {
                strip_hop_by_hop(rsp.headers_mut());
                let done = RequestDone {
                    shared: shared.clone(),
                    attempt,
                    traffic: self.traffic.clone(),
                    up0,
                    down0,
                };
                return rsp.map(|body| ProxyBody {
                    kind: Kind::Upstream(body),
                    done: Some(done),
                });
            }
            // The client's own body failed (a bad chunk, a short body): the client's fault,
            // not the upstream's.
            Ok(Err(e)) if e.is_user() => "client_body_error",
            Ok(Err(_)) => "upstream_error",
            Err(_) => "upstream_timeout",
        };
        let what = format!("{method} {}", self.target);
        let breach = self.gate.breach();
        if let Some(mut a) = attempt {
            a.bytes_up = self.traffic.up() - up0;
            a.bytes_down = self.traffic.down() - down0;
            match &breach {
                Some(b) => {
                    a.reason = Some(Reason::UploadBudgetExceeded);
                    a.ruling = Some(b.ruling);
                    a.set_detail(b.exceeded.describe());
                }
                None => a.error = Some(failed),
            }
            shared.finish(a).await;
        }
        match breach {
            Some(_) => denial(shared, Reason::UploadBudgetExceeded, &what),
            None => upstream_failure(shared, failed, &what),
        }
    }
}

// === Response bodies ===

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// Body of every response the proxy returns: a short text, or an upstream body whose end
/// (or abandonment) writes the request's audit line.
pub struct ProxyBody {
    kind: Kind,
    done: Option<RequestDone>,
}

impl ProxyBody {
    pub fn full(text: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(text.into())),
            done: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            done: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(body) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                match &frame {
                    None => drop(this.done.take()),
                    Some(Err(_)) => {
                        if let Some(d) = this.done.as_mut().and_then(|d| d.attempt.as_mut()) {
                            d.error = Some("upstream_body_error");
                        }
                        drop(this.done.take());
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}

/// Writes a forwarded request's audit line when its response body ends or is dropped.
struct RequestDone {
    shared: Arc<Shared>,
    attempt: Option<Attempt>,
    traffic: Arc<Traffic>,
    up0: u64,
    down0: u64,
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        if let Some(mut a) = self.attempt.take() {
            a.bytes_up = self.traffic.up() - self.up0;
            a.bytes_down = self.traffic.down() - self.down0;
            // A task is needed only when the audit queue is full.
            if let Some(line) = self.shared.record(a) {
                let shared = self.shared.clone();
                self.shared
                    .tasks
                    .spawn(async move { shared.audit.send(line).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Version;

    #[test]
    fn hop_by_hop_headers_are_stripped_and_end_to_end_ones_kept() {
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        // (headers in, headers left)
        let cases: [Case; 6] = [
            (&[], &[]),
            (&[("host", "a"), ("accept", "*/*")], &["host", "accept"]),
            (
                &[("host", "a"), ("proxy-connection", "keep-alive")],
                &["host"],
            ),
            (&[("keep-alive", "timeout=5"), ("te", "trailers")], &[]),
            (
                &[
                    ("connection", "x-trace, close"),
                    ("x-trace", "1"),
                    ("x-other", "2"),
                ],
                &["x-other"],
            ),
            (
                &[
                    ("proxy-authorization", "Basic eA=="),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                    ("trailer", "x"),
                    ("proxy-authenticate", "Basic"),
                    ("x-trace", "1"),
                ],
                &["x-trace"],
            ),
        ];
        for (given, left) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in given {
                headers.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            strip_hop_by_hop(&mut headers);
            let mut kept: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            let mut want = left.to_vec();
            kept.sort_unstable();
            want.sort_unstable();
            assert_eq!(kept, want, "{given:?}");
        }
    }

    #[test]
    fn the_last_request_of_a_client_connection_is_recognised() {
        let cases: [(Version, &[&str], bool); 7] = [
            (Version::HTTP_11, &[], false),
            (Version::HTTP_11, &["close"], true),
            (Version::HTTP_11, &["Keep-Alive, Close"], true),
            (Version::HTTP_11, &["x-foo", "CLOSE"], true),
            (Version::HTTP_11, &["closed"], false),
            (Version::HTTP_10, &[], true),
            (Version::HTTP_10, &["keep-alive"], false),
        ];
        for (version, values, last) in cases {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONNECTION, HeaderValue::from_static(v));
            }
            assert_eq!(
                is_last_request(version, &headers),
                last,
                "{version:?} {values:?}"
            );
        }
    }
}
