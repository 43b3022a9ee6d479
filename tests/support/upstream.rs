//! Upstream servers on loopback for the tests: plain HTTP, an HTTPS server with its own test
//! CA, and a byte server (`echo`, `source N`, `sink`) for transfer and half-close tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Counts what a server saw.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Bytes a `sink` connection has read so far (counted as they arrive).
    pub sunk: AtomicUsize,
}

impl Seen {
    pub fn sunk(&self) -> usize {
        self.sunk.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn describe(req: Request<Incoming>, tag: &'static str) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().to_string();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let proxy_auth = req.headers().contains_key("proxy-authorization");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    Response::new(Full::new(Bytes::from(format!(
        "{tag} {method} {path} host={host} body={body} proxy_auth={proxy_auth}\n"
    ))))
}

/// A file under `dir` for a URL path (no `..`), or 404.
fn static_file(dir: &std::path::Path, path: &str) -> Response<Full<Bytes>> {
    let rel = path.trim_start_matches('/');
    let mut file = dir.join(rel);
    if file.is_dir() {
        file = file.join("index.html");
    }
    let body = if rel.split('/').any(|c| c == "..") {
        None
    } else {
        std::fs::read(&file).ok()
    };
    match body {
        Some(b) => {
            let mut rsp = Response::new(Full::new(Bytes::from(b)));
            if file.extension().is_some_and(|e| e == "html") {
                rsp.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("text/html"),
                );
            }
            rsp
        }
        None => {
            let mut rsp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *rsp.status_mut() = hyper::StatusCode::NOT_FOUND;
            rsp
        }
    }
}

/// A plain HTTP/1.1 server answering every request with a line describing it.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl HttpUpstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Self {
        Self::start_std(std::net::TcpListener::bind(addr).unwrap())
    }

    /// Serves a listener bound elsewhere (e.g. inside a test network namespace).
    pub fn start_std(listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        s.requests.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(describe(req, "plain").await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }
}

/// An HTTPS server whose certificate (for `names`) is issued by a fresh test CA.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    pub seen: Arc<Seen>,
    _dir: tempfile::TempDir,
}

impl TlsUpstream {
    pub async fn start(names: &[&str]) -> Self {
        Self::start_std(
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            names,
            None,
        )
    }

    /// Serves `listener` with a certificate for `names`; with `dir`, GET serves files from it
    /// (404 for anything else) instead of describing the request.
    pub fn start_std(
        listener: std::net::TcpListener,
        names: &[&str],
        serve_dir: Option<PathBuf>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("egress-warden test CA {}", listener.local_addr().unwrap()),
        );
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        // GnuTLS (git, apt) insists on the usual key usages.
        leaf_params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let files = serve_dir.map(Arc::new);
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, s, files) = (acceptor.clone(), s.clone(), files.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        s.requests.fetch_add(1, Ordering::SeqCst);
                        let files = files.clone();
                        async move {
                            Ok::<_, Infallible>(match files {
                                Some(dir) => static_file(&dir, req.uri().path()),
                                None => describe(req, "tls").await,
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_file,
            seen,
            _dir: dir,
        }
    }

    pub fn ca(&self) -> &str {
        self.ca_file.to_str().unwrap()
    }
}

/// A byte server: each connection sends one line, `echo`, `source N` or `sink`.
/// `echo` echoes until EOF; `source N` sends N pseudo-random bytes then closes; `sink` reads
/// until the client half-closes, then replies with the count and a newline.
pub struct ByteUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

/// The deterministic byte stream `source` sends (so a client can check every byte).
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

impl ByteUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let mut words = line.split_whitespace();
                    match (
                        words.next(),
                        words.next().and_then(|n| n.parse::<usize>().ok()),
                    ) {
                        (Some("echo"), _) => {
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                        (Some("source"), Some(n)) => {
                            let mut sent = 0;
                            let mut chunk = vec![0u8; 64 * 1024];
                            while sent < n {
                                let len = chunk.len().min(n - sent);
                                for (j, b) in chunk[..len].iter_mut().enumerate() {
                                    *b = pattern(sent + j);
                                }
                                if w.write_all(&chunk[..len]).await.is_err() {
                                    return;
                                }
                                sent += len;
                            }
                            let _ = w.shutdown().await;
                        }
                        (Some("sink"), _) => {
                            let mut total = 0usize;
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                match r.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        total += n;
                                        s.sunk.fetch_add(n, Ordering::SeqCst);
                                    }
                                }
                            }
                            let _ = w.write_all(format!("{total}\n").as_bytes()).await;
                            let _ = w.shutdown().await;
                        }
                        _ => {}
                    }
                });
            }
        });
        Self { addr, seen }
    }
}
