//! Host and target normalisation and special-range classification. Properties: a parsed
//! target prints as an authority that parses back to itself (one canonical form); an IP
//! literal is only ever accepted in its canonical spelling; an address embedded in an IPv6
//! form (IPv4-mapped) is classified like the IPv4 address itself.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use egress_warden::host::{Host, Target};
use egress_warden::policy::special::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = Target::parse_authority_or(text, 443) {
            let again = Target::parse_authority(&t.to_string())
                .unwrap_or_else(|e| panic!("{t} does not parse back: {e}"));
            assert_eq!(again, t);
            if let Host::Ip(ip) = t.host {
                assert_eq!(Host::parse(&ip.to_string()).ok(), Some(Host::Ip(ip)));
            }
        }
        if let Ok(Host::Name(name)) = Host::parse(text) {
            assert_eq!(
                Host::parse(name.as_str()).ok(),
                Some(Host::Name(name.clone()))
            );
            assert!(
                name.as_str().parse::<IpAddr>().is_err(),
                "a name that is an address"
            );
        }
    }
    if data.len() >= 4 {
        let v4 = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(
            classify(IpAddr::V4(v4)).map(|s| s.class),
            classify(mapped).map(|s| s.class),
            "{v4} and {mapped}"
        );
    }
    if data.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[..16]);
        let _ = classify(IpAddr::from(b));
    }
});
