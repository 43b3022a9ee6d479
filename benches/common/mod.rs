//! Synthetic allowlists for the scale benchmarks: a realistic mix of exact names, wildcards and
//! IPv4/IPv6 CIDRs, with probes that hit and miss each kind.

use egress_warden::allowlist::{RuleSet, parse_text};
use egress_warden::host::DomainName;
use egress_warden::policy::Policy;

/// The sizes the scale benchmarks measure.
pub const SIZES: [usize; 4] = [10, 10_000, 100_000, 1_000_000];

/// Rule `i` of a synthetic list: 60% exact names, 20% wildcards, 10% IPv4 /24s, 10% IPv6 /64s.
pub fn rule(i: usize) -> String {
    let k = i / 10;
    match i % 10 {
        0..=5 => format!("svc{i}.team{}.example", i % 977),
        6 | 7 => format!("*.zone{i}.example:443"),
        8 => {
            let a = 0x1000_0000u32 + ((k as u32) << 8);
            format!("{}/24", std::net::Ipv4Addr::from(a))
        }
        _ => format!("[2001:db8:{:x}:{:x}::/64]:443", k >> 16, k & 0xffff),
    }
}

/// The text of an allowlist file with `n` rules.
pub fn text(n: usize) -> String {
    let mut out = String::with_capacity(n * 28);
    out.push_str("# synthetic allowlist for benchmarks\n");
    for i in 0..n {
        out.push_str(&rule(i));
        out.push('\n');
    }
    out
}

/// Parses and indexes `text` the way the warden does at start-up and on reload.
pub fn load(text: &str) -> Policy {
    let (rules, errors) = parse_text("bench.txt", text);
    assert!(errors.is_empty(), "{:?}", errors.first());
    assert!(!rules.is_empty());
    Policy::new(RuleSet {
        rules,
        files: vec![],
    })
}

/// Names and addresses to decide against a policy of `n` rules: an exact hit, a wildcard hit,
/// a miss, an IPv4 hit and an IPv4 miss.
pub struct Probes {
    pub exact: DomainName,
    pub wildcard: DomainName,
    pub miss: DomainName,
    pub ip_hit: std::net::IpAddr,
    pub ip_miss: std::net::IpAddr,
}

impl Probes {
    pub fn new(n: usize) -> Self {
        let last = |r: usize| (0..n).rev().find(|i| i % 10 == r).unwrap_or(r);
        let e = last(0);
        let w = last(6);
        let v4 = 0x1000_0000u32 + (((last(8) / 10) as u32) << 8) + 7;
        Probes {
            exact: DomainName::parse(&format!("svc{e}.team{}.example", e % 977)).unwrap(),
            wildcard: DomainName::parse(&format!("a.b.zone{w}.example")).unwrap(),
            miss: DomainName::parse("deep.sub.not-listed.example").unwrap(),
            ip_hit: std::net::Ipv4Addr::from(v4).into(),
            ip_miss: "93.184.216.34".parse().unwrap(),
        }
    }
}
