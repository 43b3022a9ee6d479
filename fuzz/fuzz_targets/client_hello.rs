//! The tunnel's first-flight sniffer (TLS ClientHello and SNI, HTTP detection). Properties:
//! never panics; a definite answer does not change when more bytes arrive (the warden
//! decides on a prefix and replays everything); an SNI is non-empty printable ASCII.
#![no_main]

use egress_warden::sniff::{Flight, SniffError, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = classify(data);
    if let Ok(Flight::Tls(hello)) = &first
        && let Some(sni) = &hello.sni
    {
        assert!(
            !sni.is_empty() && sni.bytes().all(|b| b.is_ascii_graphic()),
            "{sni:?}"
        );
    }
    if first != Err(SniffError::Incomplete) {
        let mut more = data.to_vec();
        more.extend_from_slice(b"\x16\x03\x01 trailing bytes GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            classify(&more),
            first,
            "a decided prefix changed its answer"
        );
    }
});
