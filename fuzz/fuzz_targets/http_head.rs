//! Request-head classification: the transparent listener's `http_host` and the explicit
//! proxy's first-CONNECT check. Properties: an origin-form request is named by its one Host
//! header, never by anything in its target; an absolute-form authority carries no path,
//! query, fragment or user info; a CONNECT taken without hyper is exactly a CONNECT head with
//! no body headers, no longer than the input or the head limit.
#![no_main]

use egress_warden::listener::first_connect::{First, classify};
use egress_warden::sniff::http_host;
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(data);
    match http_host(data) {
        Ok(Some(host)) => {
            let target = req.path.unwrap_or_default();
            if target.starts_with('/') || target == "*" {
                let hosts: Vec<_> = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("host"))
                    .collect();
                assert_eq!(hosts.len(), 1);
                let value = std::str::from_utf8(hosts[0].value).unwrap().trim();
                assert_eq!(host, value, "origin-form named by something else");
            } else {
                assert!(!host.is_empty());
                assert!(!host.contains(['/', '?', '#', '@']), "{host:?}");
                assert!(target.contains(&format!("://{host}")));
            }
        }
        Ok(None) => assert!(matches!(parsed, Ok(httparse::Status::Complete(_)))),
        Err(_) => {}
    }
    if let First::Connect { len, uri } = classify(data, MAX_HEAD) {
        assert!(len <= data.len() && len <= MAX_HEAD);
        assert!(data.starts_with(b"CONNECT "));
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert_eq!(req.parse(&data[..len]), Ok(httparse::Status::Complete(len)));
        assert_eq!(req.method, Some("CONNECT"));
        assert!(!req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-length")
                || h.name.eq_ignore_ascii_case("transfer-encoding")
        }));
        assert_eq!(
            req.path.map(str::parse::<hyper::Uri>).and_then(Result::ok),
            Some(uri)
        );
    }
});
