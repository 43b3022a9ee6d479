//! Classifies the first bytes a client sends into a tunnel: a TLS ClientHello (and its SNI),
//! an HTTP/1 request, or something else. Pure functions over bytes with an explicit
//! "need more" answer, so every caller bounds size and time itself and fails closed.

/// Most bytes read while classifying (a ClientHello with post-quantum key shares is ~2 KiB).
pub const MAX_SNIFF: usize = 16 * 1024;

/// The longest HTTP method token recognised.
const MAX_METHOD: usize = 24;

/// TLS extension numbers.
const EXT_SERVER_NAME: u16 = 0;
const EXT_ECH: u16 = 0xfe0d;

/// What the first flight is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flight {
    Tls(ClientHello),
    /// Starts like an HTTP/1 request line (`TOKEN SP`).
    Http,
    /// Anything else (the tunnel target was decided already; nothing more to check).
    Other,
}

/// What the warden needs from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, as sent (not yet normalised).
    pub sni: Option<String>,
    /// An encrypted_client_hello extension is present (real ECH, or GREASE).
    pub ech: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SniffError {
    /// Not enough bytes yet.
    Incomplete,
    /// Started as TLS but is not a well-formed ClientHello.
    Malformed(&'static str),
}

/// Classifies the bytes received so far.
pub fn classify(buf: &[u8]) -> Result<Flight, SniffError> {
    match buf.first() {
        None => Err(SniffError::Incomplete),
        Some(0x16) => parse_client_hello(buf).map(Flight::Tls),
        Some(_) => {
            let token = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
            match buf.get(token) {
                Some(b' ') if (1..=MAX_METHOD).contains(&token) => Ok(Flight::Http),
                None if token <= MAX_METHOD => Err(SniffError::Incomplete),
                _ => Ok(Flight::Other),
            }
        }
    }
}

/// Parses a ClientHello that may span several TLS records.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, SniffError> {
    use SniffError::{Incomplete, Malformed};
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        let header = buf.get(pos..pos + 5).ok_or(Incomplete)?;
        if header[0] != 0x16 {
            return Err(Malformed(
                "a non-handshake TLS record arrived before the ClientHello was complete",
            ));
        }
        if header[1] != 3 {
            return Err(Malformed("record version is not TLS"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 {
            return Err(Malformed("TLS record length out of range"));
        }
        let body = buf.get(pos + 5..pos + 5 + len).ok_or(Incomplete)?;
        handshake.extend_from_slice(body);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Err(Malformed("first handshake message is not a ClientHello"));
            }
            let msg_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if msg_len + 4 > MAX_SNIFF {
                return Err(Malformed("ClientHello is larger than the sniff limit"));
            }
            if handshake.len() >= 4 + msg_len {
                return parse_hello_body(&handshake[4..4 + msg_len]);
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniffError> {
        if self.0.len() < n {
            return Err(SniffError::Malformed("ClientHello field runs past its end"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, SniffError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SniffError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Result<&'a [u8], SniffError> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_hello_body(body: &[u8]) -> Result<ClientHello, SniffError> {
    use SniffError::Malformed;
    let mut c = Cursor(body);
    c.take(2)?; // legacy_version
    c.take(32)?; // random
    if c.vec(1)?.len() > 32 {
        return Err(Malformed("session id longer than 32 bytes"));
    }
    let suites = c.vec(2)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed("cipher suite list is empty or odd"));
    }
    if c.vec(1)?.is_empty() {
        return Err(Malformed("compression method list is empty"));
    }
    let mut hello = ClientHello {
        sni: None,
        ech: false,
    };
    if c.is_empty() {
        return Ok(hello); // no extensions at all
    }
    let mut exts = Cursor(c.vec(2)?);
    if !c.is_empty() {
        return Err(Malformed("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if seen.contains(&kind) {
            return Err(Malformed("duplicate TLS extension"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.sni = parse_server_name(data)?,
            EXT_ECH => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, SniffError> {
    use SniffError::Malformed;
    let mut c = Cursor(data);
    let mut list = Cursor(c.vec(2)?);
    if !c.is_empty() {
        return Err(Malformed("bytes after the server name list"));
    }
    let mut name = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let value = list.vec(2)?;
        if kind != 0 {
            continue; // unknown name types are skipped, as RFC 6066 allows
        }
        if name.is_some() {
            return Err(Malformed("more than one host_name in server_name"));
        }
        if value.is_empty() || !value.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Malformed("server name is empty or not printable ASCII"));
        }
        name = Some(String::from_utf8_lossy(value).into_owned());
    }
    Ok(name)
}

/// The host a plain-HTTP request head names: the absolute-form authority if the target is in
/// absolute form, else the Host header; `Ok(None)` when the complete head names none.
///
/// Only a target that does not start with `/` (and is not `*`) carries an authority
/// (RFC 9112 section 3.2): `GET /login?next=https://evil.example/ HTTP/1.1` names its Host,
/// never the URL inside its query.
pub fn http_host(buf: &[u8]) -> Result<Option<String>, SniffError> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Err(SniffError::Incomplete),
        Err(_) => Err(SniffError::Malformed("unparseable HTTP request head")),
        Ok(httparse::Status::Complete(_)) => {
            let target = req.path.unwrap_or_default();
            if !target.starts_with('/') && target != "*" {
                return absolute_form_authority(target).map(|a| Some(a.to_owned()));
            }
            let mut hosts = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            match (hosts.next(), hosts.next()) {
                (Some(_), Some(_)) => Err(SniffError::Malformed("several Host headers")),
                (Some(h), None) => Ok(std::str::from_utf8(h.value)
                    .ok()
                    .map(|v| v.trim().to_owned())),
                _ => Ok(None),
            }
        }
    }
}

/// The authority of an absolute-form request target (`scheme://authority[/path][?query]`).
/// Anything else that does not start with `/` (authority-form, a bare word, user info) is
/// malformed: no host is guessed from it.
pub fn absolute_form_authority(target: &str) -> Result<&str, SniffError> {
    let malformed =
        SniffError::Malformed("request target is neither origin-form nor absolute-form");
    let (scheme, rest) = target.split_once("://").ok_or(malformed)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(malformed);
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(SniffError::Malformed("absolute-form target without a host"));
    }
    if authority.contains('@') {
        return Err(SniffError::Malformed("user info in the request target"));
    }
    Ok(authority)
}

/// Builds a minimal ClientHello (for tests and fuzzing seeds).
#[cfg(test)]
pub(crate) fn build_client_hello(sni: Option<&str>, extra_ext: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(&data);
    }
    for (kind, data) in extra_ext {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(data);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello captured from `curl https://allowed.test/` (OpenSSL 3, TLS 1.3).
    const CURL_HELLO: &[u8] = include_bytes!("testdata/curl-client-hello.bin");

    #[test]
    fn captured_curl_hello_yields_its_sni_at_every_prefix_once_complete() {
        assert!(!CURL_HELLO.is_empty());
        for i in 0..CURL_HELLO.len() {
            assert_eq!(
                classify(&CURL_HELLO[..i]),
                Err(SniffError::Incomplete),
                "prefix {i}"
            );
        }
        let want = Flight::Tls(ClientHello {
            sni: Some("allowed.test".into()),
            ech: false,
        });
        assert_eq!(classify(CURL_HELLO), Ok(want.clone()));
        // Bytes after the hello (early data) do not matter.
        let mut more = CURL_HELLO.to_vec();
        more.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(classify(&more), Ok(want));
    }

    #[test]
    fn hello_split_across_records_is_reassembled() {
        let one = build_client_hello(Some("split.example"), &[]);
        let hs = &one[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![0x16, 3, 1, 0, a.len() as u8];
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 3, 1, (b.len() >> 8) as u8, b.len() as u8]);
        two.extend_from_slice(b);
        let got = parse_client_hello(&two).unwrap();
        assert_eq!(got.sni.as_deref(), Some("split.example"));
    }

    #[test]
    fn classification_table() {
        let ech = build_client_hello(Some("public.example"), &[(EXT_ECH, vec![0; 8])]);
        let no_sni = build_client_hello(None, &[]);
        let dup = build_client_hello(Some("a.example"), &[(EXT_SERVER_NAME, vec![0, 0])]);
        let mut bad_record = build_client_hello(Some("a.example"), &[]);
        bad_record[1] = 2;
        let mut not_hello = build_client_hello(Some("a.example"), &[]);
        not_hello[5] = 2;
        let cases: Vec<(&str, Vec<u8>, Result<Flight, SniffError>)> = vec![
            ("empty", vec![], Err(SniffError::Incomplete)),
            ("http get", b"GET / HTTP/1.1\r\n".to_vec(), Ok(Flight::Http)),
            (
                "http partial method",
                b"OPTIO".to_vec(),
                Err(SniffError::Incomplete),
            ),
            (
                "ssh banner",
                b"SSH-2.0-OpenSSH\r\n".to_vec(),
                Ok(Flight::Other),
            ),
            ("binary", vec![0, 1, 2, 3], Ok(Flight::Other)),
            (
                "lowercase",
                b"get / HTTP/1.1\r\n".to_vec(),
                Ok(Flight::Other),
            ),
            (
                "ech",
                ech,
                Ok(Flight::Tls(ClientHello {
                    sni: Some("public.example".into()),
                    ech: true,
                })),
            ),
            (
                "no sni",
                no_sni,
                Ok(Flight::Tls(ClientHello {
                    sni: None,
                    ech: false,
                })),
            ),
            (
                "duplicate server_name",
                dup,
                Err(SniffError::Malformed("duplicate TLS extension")),
            ),
            (
                "not tls version",
                bad_record,
                Err(SniffError::Malformed("record version is not TLS")),
            ),
            (
                "server hello",
                not_hello,
                Err(SniffError::Malformed(
                    "first handshake message is not a ClientHello",
                )),
            ),
            (
                "alert record",
                vec![0x16, 3, 3, 0, 0],
                Err(SniffError::Malformed("TLS record length out of range")),
            ),
        ];
        assert!(!cases.is_empty());
        for (name, bytes, want) in cases {
            assert_eq!(classify(&bytes), want, "case {name}");
        }
    }

    #[test]
    fn http_hosts_come_from_the_authority_or_the_host_header() {
        type Want = Result<Option<&'static str>, SniffError>;
        let cases: &[(&[u8], Want)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n",
                Ok(Some("Example.com:8080")),
            ),
            (
                b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
                Ok(Some("a.example")),
            ),
            (b"GET / HTTP/1.0\r\n\r\n", Ok(None)),
            // A URL inside an origin-form target is data, not the request's host.
            (
                b"GET /login?next=https://evil.example/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                Ok(Some("allowed.test")),
            ),
            (
                b"GET /redirect/http://evil.example HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                Ok(Some("allowed.test")),
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                Ok(Some("allowed.test")),
            ),
            (
                b"GET HTTP://A.example:8080?q=http://b.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Ok(Some("A.example:8080")),
            ),
            (
                b"CONNECT evil.example:443 HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                Err(SniffError::Malformed(
                    "request target is neither origin-form nor absolute-form",
                )),
            ),
            (
                b"GET http://allowed.test@evil.example/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                Err(SniffError::Malformed("user info in the request target")),
            ),
            (
                b"GET http:///x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                Err(SniffError::Malformed("absolute-form target without a host")),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Err(SniffError::Malformed("several Host headers")),
            ),
            (b"GET / HTTP/1.1\r\nHost: a", Err(SniffError::Incomplete)),
            (
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                Err(SniffError::Malformed("unparseable HTTP request head")),
            ),
        ];
        for (input, want) in cases {
            let got = http_host(input);
            assert_eq!(
                got.as_ref().map(|o| o.as_deref()),
                want.as_ref().map(|o| *o),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn truncated_and_garbled_hellos_never_panic() {
        let hello = build_client_hello(Some("fuzz.example"), &[(0x10, b"\x00\x03\x02h2".to_vec())]);
        // Flip every byte in turn: each result is some answer, never a panic.
        for i in 0..hello.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut m = hello.clone();
                m[i] = v;
                let _ = classify(&m);
            }
        }
    }
}
