//! The first request on an explicit-proxy connection is read before hyper sees it, because
//! a CONNECT is how every HTTPS client starts. A complete CONNECT head is taken here: parsed by
//! httparse (the parser hyper uses) and opened by the same decision and dial as hyper's path
//! (`listener::http`), with the tunnel run in the connection's own task. That skips hyper's
//! dispatcher, its upgrade hand-off and a second task per tunnel. Anything else (plain HTTP, a
//! head split over several reads, a CONNECT with a body header, HTTP/1.0, too many headers, a
//! target that is not a URI) is handed to hyper together with the bytes read, which hyper
//! parses first ([`crate::prefixed`]), and hyper serves the connection as it always did.
//! Reading rather than peeking saves a `recvfrom` per connection.

use std::future::Future;
use std::io::{self, Read};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::Uri;
use tokio::net::TcpStream;

/// The reply that opens a tunnel: hyper's, less its `date` header.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

/// Most bytes read before deciding: a CONNECT head is a request line and a few short headers.
pub const FIRST_READ: usize = 2048;
/// How a CONNECT head starts.
const CONNECT: &[u8] = b"CONNECT ";
/// Headers a CONNECT head may carry and still be taken here; with more, hyper decides.
const MAX_HEADERS: usize = 32;

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// A complete HTTP/1.1 CONNECT head, `len` bytes long, for `uri`.
    Connect { len: usize, uri: Uri },
    /// Anything else: hyper reads it.
    Other,
}

/// Classifies the first bytes of a connection. A head longer than `max_head` is left to hyper,
/// which answers it with its usual error.
pub fn classify(buf: &[u8], max_head: usize) -> First {
    // Plain HTTP, by far the most common other case, costs one comparison.
    if !buf.starts_with(CONNECT) {
        return First::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(buf) else {
        return First::Other;
    };
    if len > max_head || req.method != Some("CONNECT") || req.version != Some(1) {
        return First::Other;
    }
    // A CONNECT has no body; one that claims a body is hyper's to refuse.
    let body_header = |name: &str| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    };
    if req.headers.iter().any(|h| body_header(h.name)) {
        return First::Other;
    }
    match req.path.map(str::parse::<Uri>) {
        Some(Ok(uri)) => First::Connect { len, uri },
        _ => First::Other,
    }
}

/// What [`read`] found.
pub enum FirstRead {
    /// A CONNECT head for the URI; `rest` is what the client sent after it, which belongs to
    /// the tunnel (or, if the CONNECT is refused, to hyper).
    Connect { uri: Uri, rest: BytesMut },
    /// Something else: these bytes, then the socket's, are hyper's to parse.
    Other(Bytes),
    /// Nothing within `timeout`, the client closed, or `stop` fired: close the connection
    /// (what hyper does when no head arrives in time).
    Gone,
}

/// Waits up to `timeout` for the client's first bytes, reads what has arrived (at most
/// [`FIRST_READ`] bytes) and classifies it.
pub async fn read(
    stream: &TcpStream,
    timeout: Duration,
    max_head: usize,
    stop: impl Future<Output = ()>,
) -> FirstRead {
    // On the heap: a buffer in this future would stay in the task's allocation for as long as
    // the tunnel it opens (0.9 KiB per idle tunnel).
    let mut buf = vec![0u8; FIRST_READ];
    let n = tokio::select! {
        // Bytes already there (the usual case) are taken before the stop and timeout
        // futures register anything.
        biased;
        r = tokio::time::timeout(timeout, read_some(stream, &mut buf)) => match r {
            Ok(Ok(n)) if n > 0 => n,
            _ => return FirstRead::Gone,
        },
        () = stop => return FirstRead::Gone,
    };
    buf.truncate(n);
    match classify(&buf, max_head) {
        First::Connect { len, uri } => FirstRead::Connect {
            uri,
            rest: BytesMut::from(&buf[len..]),
        },
        First::Other => FirstRead::Other(Bytes::from(buf)),
    }
}

/// One read of whatever has arrived. A short read that is not a CONNECT leaves the socket
/// marked not-readable ([`crate::readiness`]): hyper's next read waits for new bytes instead of
/// failing with `EAGAIN`. A CONNECT's stays readable: the tunnel's first flight usually
/// follows the `200` at once, and is then read without a trip through the reactor.
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        let r = crate::readiness::read_with(stream, || {
            let n = (&*socket2::SockRef::from(stream)).read(buf)?;
            Ok((n, n < buf.len() && !buf.starts_with(CONNECT)))
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r.map(|(n, _)| n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_plain_http11_connect_head_is_taken() {
        let connect = |len: usize, uri: &str| First::Connect {
            len,
            uri: uri.parse().unwrap(),
        };
        let many_headers: String = (0..40).map(|i| format!("x-{i}: y\r\n")).collect();
        let many = format!("CONNECT a.test:443 HTTP/1.1\r\n{many_headers}\r\n");
        let cases: Vec<(&str, String, usize, First)> = vec![
            (
                "curl's CONNECT",
                "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nUser-Agent: curl/7.88.1\r\n\r\n"
                    .into(),
                4096,
                connect(74, "a.test:443"),
            ),
            (
                "pipelined bytes after the head are not part of it",
                "CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\nSSH-2.0-x\r\n".into(),
                4096,
                connect(32, "10.0.0.1:22"),
            ),
            (
                "a target without a port is still a URI (the handler refuses it)",
                "CONNECT a.test HTTP/1.1\r\n\r\n".into(),
                4096,
                connect(27, "a.test"),
            ),
            (
                "split head",
                "CONNECT a.test:443 HTTP/1.1\r\nHost: a".into(),
                4096,
                First::Other,
            ),
            (
                "plain HTTP",
                "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n".into(),
                4096,
                First::Other,
            ),
            (
                "methods are case-sensitive",
                "connect a.test:443 HTTP/1.1\r\n\r\n".into(),
                4096,
                First::Other,
            ),
            (
                "HTTP/1.0",
                "CONNECT a.test:443 HTTP/1.0\r\n\r\n".into(),
                4096,
                First::Other,
            ),
            (
                "Content-Length",
                "CONNECT a.test:443 HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nhello".into(),
                4096,
                First::Other,
            ),
            (
                "Transfer-Encoding",
                "CONNECT a.test:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                4096,
                First::Other,
            ),
            (
                "head over the size limit",
                "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n".into(),
                40,
                First::Other,
            ),
            ("more headers than taken here", many, 4096, First::Other),
            (
                "not a URI",
                "CONNECT a b:443 HTTP/1.1\r\n\r\n".into(),
                4096,
                First::Other,
            ),
            (
                "malformed header",
                "CONNECT a.test:443 HTTP/1.1\r\nbad header\r\n\r\n".into(),
                4096,
                First::Other,
            ),
            ("TLS", "\x16\x03\x01\x00\x05hello".into(), 4096, First::Other),
        ];
        assert!(!cases.is_empty());
        for (name, input, max_head, want) in cases {
            assert_eq!(classify(input.as_bytes(), max_head), want, "{name}");
        }
    }
}
