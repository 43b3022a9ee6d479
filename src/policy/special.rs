//! Address ranges an allowed *name* must never lead to unless an IP rule says so: loopback,
//! private, link-local (cloud metadata), CGNAT, ULA, multicast, documentation and the rest,
//! including IPv6 forms that embed such an IPv4 address (mapped, compatible, NAT64, 6to4,
//! Teredo), which would otherwise slip an internal target past an IPv4-only check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which special range an address falls in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AddrClass {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Cgnat,
    IetfProtocol,
    Documentation,
    Benchmark,
    Multicast,
    Reserved,
    Broadcast,
    UniqueLocal,
    SiteLocal,
    Discard,
    Nat64Local,
}

impl AddrClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::Cgnat => "cgnat",
            Self::IetfProtocol => "ietf_protocol",
            Self::Documentation => "documentation",
            Self::Benchmark => "benchmark",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::Broadcast => "broadcast",
            Self::UniqueLocal => "unique_local",
            Self::SiteLocal => "site_local",
            Self::Discard => "discard",
            Self::Nat64Local => "nat64_local",
        }
    }
}

/// An IPv6 form that carries an IPv4 address inside it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Embedding {
    Ipv4Mapped,
    Ipv4Compatible,
    Nat64,
    SixToFour,
    Teredo,
}

impl Embedding {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4Mapped => "ipv4_mapped",
            Self::Ipv4Compatible => "ipv4_compatible",
            Self::Nat64 => "nat64",
            Self::SixToFour => "6to4",
            Self::Teredo => "teredo",
        }
    }
}

/// The classification of a special address: its range, and the embedding it was found through.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Special {
    pub class: AddrClass,
    pub via: Option<Embedding>,
}

impl Special {
    /// Stable text for audit records, e.g. `link_local` or `loopback via nat64`.
    pub fn describe(&self) -> String {
        match self.via {
            None => self.class.as_str().to_owned(),
            Some(v) => format!("{} via {}", self.class.as_str(), v.as_str()),
        }
    }
}

/// Returns the special range `ip` falls in, or `None` for an ordinary global address.
pub fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|class| Special { class, via: None }),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddrClass> {
    let o = ip.octets();
    let class = match o {
        [0, ..] => AddrClass::Unspecified,
        [10, ..] => AddrClass::Private,
        [100, b, ..] if (64..128).contains(&b) => AddrClass::Cgnat,
        [127, ..] => AddrClass::Loopback,
        [169, 254, ..] => AddrClass::LinkLocal,
        [172, b, ..] if (16..32).contains(&b) => AddrClass::Private,
        [192, 0, 0, _] => AddrClass::IetfProtocol,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => AddrClass::Documentation,
        [192, 88, 99, _] => AddrClass::Reserved, // deprecated 6to4 relay anycast
        [192, 168, ..] => AddrClass::Private,
        [198, b, ..] if b == 18 || b == 19 => AddrClass::Benchmark,
        [255, 255, 255, 255] => AddrClass::Broadcast,
        [a, ..] if (224..240).contains(&a) => AddrClass::Multicast,
        [a, ..] if a >= 240 => AddrClass::Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    let seg = ip.segments();
    let direct = |class| Some(Special { class, via: None });
    let embedded = |v4: Ipv4Addr, via| {
        classify_v4(v4).map(|class| Special {
            class,
            via: Some(via),
        })
    };
    let low32 = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if ip.is_unspecified() {
        return direct(AddrClass::Unspecified);
    }
    if ip.is_loopback() {
        return direct(AddrClass::Loopback);
    }
    match seg {
        // ::ffff:a.b.c.d — the same socket destination as a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff, _, _] => embedded(low32, Embedding::Ipv4Mapped),
        // ::a.b.c.d (deprecated IPv4-compatible) — still routed to a.b.c.d by some stacks.
        [0, 0, 0, 0, 0, 0, _, _] => {
            embedded(low32, Embedding::Ipv4Compatible).or(direct(AddrClass::Reserved))
        }
        // 64:ff9b::/96 well-known NAT64 prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => embedded(low32, Embedding::Nat64),
        // 64:ff9b:1::/48 local-use NAT64 prefix (RFC 8215): translators inside the network.
        [0x64, 0xff9b, 1, ..] => direct(AddrClass::Nat64Local),
        // 100::/64 discard-only.
        [0x100, 0, 0, 0, ..] => direct(AddrClass::Discard),
        // 2001::/32 Teredo: client IPv4 is the last 32 bits inverted, server IPv4 bits 32..64.
        [0x2001, 0, s2, s3, ..] => {
            let client = Ipv4Addr::from(!u32::from(low32));
            let server = Ipv4Addr::new((s2 >> 8) as u8, s2 as u8, (s3 >> 8) as u8, s3 as u8);
            embedded(client, Embedding::Teredo).or(embedded(server, Embedding::Teredo))
        }
        // 2001:2::/48 benchmarking.
        [0x2001, 2, 0, ..] => direct(AddrClass::Benchmark),
        // 2001:db8::/32 and 3fff::/20 documentation.
        [0x2001, 0xdb8, ..] => direct(AddrClass::Documentation),
        [0x3fff, s1, ..] if s1 & 0xf000 == 0 => direct(AddrClass::Documentation),
        // 2002::/16 6to4: IPv4 in bits 16..48.
        [0x2002, s1, s2, ..] => embedded(
            Ipv4Addr::new((s1 >> 8) as u8, s1 as u8, (s2 >> 8) as u8, s2 as u8),
            Embedding::SixToFour,
        ),
        [s0, ..] if s0 & 0xfe00 == 0xfc00 => direct(AddrClass::UniqueLocal),
        [s0, ..] if s0 & 0xffc0 == 0xfe80 => direct(AddrClass::LinkLocal),
        [s0, ..] if s0 & 0xffc0 == 0xfec0 => direct(AddrClass::SiteLocal),
        [s0, ..] if s0 & 0xff00 == 0xff00 => direct(AddrClass::Multicast),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_range_and_embedding_is_classified() {
        use AddrClass::*;
        use Embedding::*;
        type Want = Option<(AddrClass, Option<Embedding>)>;
        let cases: &[(&str, Want)] = &[
            // Ordinary global addresses.
            ("93.184.216.34", None),
            ("8.8.8.8", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            ("2606:4700::1111", None),
            ("2001:4860:4860::8888", None),
            // IPv4 ranges.
            ("0.0.0.0", Some((Unspecified, None))),
            ("0.1.2.3", Some((Unspecified, None))),
            ("10.1.2.3", Some((Private, None))),
            ("172.16.0.1", Some((Private, None))),
            ("172.31.255.255", Some((Private, None))),
            ("192.168.1.1", Some((Private, None))),
            ("100.64.0.1", Some((Cgnat, None))),
            ("100.127.255.255", Some((Cgnat, None))),
            ("127.0.0.1", Some((Loopback, None))),
            ("127.255.0.9", Some((Loopback, None))),
            // Cloud metadata endpoint.
            ("169.254.169.254", Some((LinkLocal, None))),
            ("192.0.0.8", Some((IetfProtocol, None))),
            ("192.0.2.10", Some((Documentation, None))),
            ("198.51.100.7", Some((Documentation, None))),
            ("203.0.113.99", Some((Documentation, None))),
            ("198.18.0.1", Some((Benchmark, None))),
            ("198.19.255.255", Some((Benchmark, None))),
            ("192.88.99.1", Some((Reserved, None))),
            ("224.0.0.1", Some((Multicast, None))),
            ("239.255.255.250", Some((Multicast, None))),
            ("240.0.0.1", Some((Reserved, None))),
            ("255.255.255.255", Some((Broadcast, None))),
            // IPv6 ranges.
            ("::", Some((Unspecified, None))),
            ("::1", Some((Loopback, None))),
            ("fc00::1", Some((UniqueLocal, None))),
            ("fd12:3456::1", Some((UniqueLocal, None))),
            ("fe80::1", Some((LinkLocal, None))),
            ("febf::1", Some((LinkLocal, None))),
            ("fec0::1", Some((SiteLocal, None))),
            ("ff02::1", Some((Multicast, None))),
            ("2001:db8::1", Some((Documentation, None))),
            ("3fff:1::1", Some((Documentation, None))),
            ("3fff:1000::1", None),
            ("3ff0::1", None),
            ("2001:2::5", Some((Benchmark, None))),
            ("100::1", Some((Discard, None))),
            ("64:ff9b:1::a", Some((Nat64Local, None))),
            // Embedded IPv4, each noting the address it carries.
            ("::ffff:127.0.0.1", Some((Loopback, Some(Ipv4Mapped)))),
            (
                "::ffff:169.254.169.254",
                Some((LinkLocal, Some(Ipv4Mapped))),
            ),
            ("::ffff:8.8.8.8", None),
            ("::10.0.0.1", Some((Private, Some(Ipv4Compatible)))),
            ("::8.8.8.8", Some((Reserved, None))),
            ("64:ff9b::7f00:1", Some((Loopback, Some(Nat64)))), // 127.0.0.1
            ("64:ff9b::a9fe:a9fe", Some((LinkLocal, Some(Nat64)))), // 169.254.169.254
            ("64:ff9b::808:808", None),                         // 8.8.8.8
            ("2002:7f00:1::", Some((Loopback, Some(SixToFour)))), // 127.0.0.1
            ("2002:a00:1::1", Some((Private, Some(SixToFour)))), // 10.0.0.1
            ("2002:808:808::1", None),                          // 8.8.8.8
            // Teredo client 127.0.0.1 is stored inverted: 0x80ff_fffe.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                Some((Loopback, Some(Teredo))),
            ),
            // Teredo with server 10.0.0.1 and a global client 8.8.8.8 (inverted f7f7:f7f7).
            ("2001:0:a00:1::f7f7:f7f7", Some((Private, Some(Teredo)))),
            ("2001:0:4136:e378::f7f7:f7f7", None),
        ];
        assert!(!cases.is_empty());
        for (input, want) in cases {
            let ip: IpAddr = input.parse().unwrap();
            let got = classify(ip).map(|s| (s.class, s.via));
            assert_eq!(got, *want, "address {input}");
        }
    }

    #[test]
    fn describe_names_the_embedding() {
        let s = classify("64:ff9b::a9fe:a9fe".parse().unwrap()).unwrap();
        assert_eq!(s.describe(), "link_local via nat64");
        let s = classify("169.254.169.254".parse().unwrap()).unwrap();
        assert_eq!(s.describe(), "link_local");
    }
}
