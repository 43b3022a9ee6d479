//! The admin listener: `GET /metrics` (OpenMetrics text), `GET /healthz` (the process is up)
//! and `GET /readyz` (every listener is bound and the run is not terminated). Read-only: there
//! is nothing a sandbox that reaches this port could change.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Concurrent admin connections served; more wait in the accept queue.
const MAX_ADMIN_CONNECTIONS: usize = 64;

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn route(shared: &Shared, ready: &AtomicBool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            // Prometheus asks for OpenMetrics; everything else gets the classic text format.
            let openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            let (body, kind) = if openmetrics {
                (
                    shared.metrics.encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                (
                    shared.metrics.encode_text(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let mut rsp = Response::new(Full::new(Bytes::from(body)));
            rsp.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
            rsp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.enforcer.is_terminated() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "run terminated\n")
        }
        "/readyz"
            if shared.config.capture.is_some() && !shared.enforcement.load(Ordering::SeqCst) =>
        {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "capture not (yet) proven\n",
            )
        }
        "/readyz" if ready.load(Ordering::SeqCst) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = stop.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        let (shared, ready, stop) = (shared.clone(), ready.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(|req| {
                let rsp = route(&shared, &ready, &req);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.config.timeouts.handshake)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
