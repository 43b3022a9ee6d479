//! Decision tables for the policy engine.

use super::*;
use crate::allowlist::parse_text;

fn policy(text: &str) -> Policy {
    let (rules, errors) = parse_text("test.txt", text);
    assert!(errors.is_empty(), "{errors:?}");
    Policy::new(RuleSet {
        rules,
        files: vec![],
    })
}

struct Case {
    name: &'static str,
    allow: &'static str,
    target: &'static str,
    want: Reason,
    rule_line: Option<usize>,
}

const CASES: &[Case] = &[
    Case {
        name: "exact match",
        allow: "example.com",
        target: "example.com:443",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "exact match port 80",
        allow: "example.com",
        target: "example.com:80",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "default ports exclude 8080",
        allow: "example.com",
        target: "example.com:8080",
        want: Reason::PortNotAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "exact does not match subdomain",
        allow: "example.com",
        target: "www.example.com:443",
        want: Reason::DomainNotAllowed,
        rule_line: None,
    },
    Case {
        name: "exact does not match lookalike",
        allow: "example.com",
        target: "badexample.com:443",
        want: Reason::DomainNotAllowed,
        rule_line: None,
    },
    Case {
        name: "wildcard matches subdomain",
        allow: "*.example.com",
        target: "api.example.com:443",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "wildcard matches deep subdomain",
        allow: "*.example.com",
        target: "a.b.example.com:443",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "wildcard excludes apex",
        allow: "*.example.com",
        target: "example.com:443",
        want: Reason::DomainNotAllowed,
        rule_line: None,
    },
    Case {
        name: "wildcard excludes suffix lookalike",
        allow: "*.example.com",
        target: "evilexample.com:443",
        want: Reason::DomainNotAllowed,
        rule_line: None,
    },
    Case {
        name: "case and trailing dot",
        allow: "example.com",
        target: "EXAMPLE.com.:443",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "idna target matches unicode rule",
        allow: "bücher.example",
        target: "xn--bcher-kva.example:443",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "any port",
        allow: "example.com:*",
        target: "example.com:22",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "port range inside",
        allow: "example.com:8000-8999",
        target: "example.com:8500",
        want: Reason::DomainAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "port range excludes 443",
        allow: "example.com:8000-8999",
        target: "example.com:443",
        want: Reason::PortNotAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "second rule supplies the port",
        allow: "example.com:22\nexample.com",
        target: "example.com:443",
        want: Reason::DomainAllowed,
        rule_line: Some(2),
    },
    Case {
        name: "exact beats wildcard",
        allow: "*.example.com\napi.example.com",
        target: "api.example.com:443",
        want: Reason::DomainAllowed,
        rule_line: Some(2),
    },
    Case {
        name: "name rule does not allow its ip",
        allow: "example.com",
        target: "93.184.216.34:443",
        want: Reason::IpNotAllowed,
        rule_line: None,
    },
    Case {
        name: "ip rule does not allow a name",
        allow: "93.184.216.34",
        target: "example.com:443",
        want: Reason::DomainNotAllowed,
        rule_line: None,
    },
    Case {
        name: "ip literal allowed by address",
        allow: "93.184.216.34",
        target: "93.184.216.34:443",
        want: Reason::IpAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "ip literal allowed by cidr",
        allow: "93.184.0.0/16:*",
        target: "93.184.216.34:9000",
        want: Reason::IpAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "most specific cidr first",
        allow: "10.0.0.0/8:22\n10.1.0.0/16",
        target: "10.1.2.3:443",
        want: Reason::IpAllowed,
        rule_line: Some(2),
    },
    Case {
        name: "ip literal port not allowed",
        allow: "93.184.216.34",
        target: "93.184.216.34:22",
        want: Reason::PortNotAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "ipv6 literal allowed",
        allow: "2606:4700::/32",
        target: "[2606:4700::1111]:443",
        want: Reason::IpAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "metadata literal is special",
        allow: "example.com",
        target: "169.254.169.254:80",
        want: Reason::SpecialAddress,
        rule_line: None,
    },
    Case {
        name: "loopback v6 literal is special",
        allow: "",
        target: "[::1]:80",
        want: Reason::SpecialAddress,
        rule_line: None,
    },
    Case {
        name: "mapped literal matched by v4 rule",
        allow: "10.0.0.0/8",
        target: "[::ffff:10.1.2.3]:443",
        want: Reason::IpAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "mapped metadata literal is special",
        allow: "",
        target: "[::ffff:169.254.169.254]:80",
        want: Reason::SpecialAddress,
        rule_line: None,
    },
    Case {
        name: "nat64 metadata literal is special",
        allow: "",
        target: "[64:ff9b::a9fe:a9fe]:80",
        want: Reason::SpecialAddress,
        rule_line: None,
    },
    Case {
        name: "private literal allowed by explicit rule",
        allow: "10.0.0.5:5432",
        target: "10.0.0.5:5432",
        want: Reason::IpAllowed,
        rule_line: Some(1),
    },
    Case {
        name: "empty policy denies names",
        allow: "",
        target: "example.com:443",
        want: Reason::DomainNotAllowed,
        rule_line: None,
    },
    Case {
        name: "empty policy denies ips",
        allow: "",
        target: "93.184.216.34:443",
        want: Reason::IpNotAllowed,
        rule_line: None,
    },
];

#[test]
fn decide_table() {
    assert!(!CASES.is_empty());
    for c in CASES {
        let p = policy(c.allow);
        let target = Target::parse_authority(c.target).unwrap();
        let got = p.decide(&target);
        assert_eq!(got.reason, c.want, "case {:?}", c.name);
        assert_eq!(
            got.is_allow(),
            matches!(c.want, Reason::DomainAllowed | Reason::IpAllowed),
            "case {:?}",
            c.name
        );
        let line = got.rule.as_ref().map(|r| {
            r.id.as_str()
                .rsplit(':')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        });
        assert_eq!(line, c.rule_line, "case {:?}", c.name);
    }
}

#[test]
fn resolved_addresses_are_checked_for_special_ranges() {
    let p = policy("allowed.test\n127.0.0.1:8080\n10.0.0.0/8:*");
    let name = DomainName::parse("allowed.test").unwrap();
    let d = p.decide_name(&name, 443);
    let rule = d.rule.clone().unwrap();
    let cases: &[(&str, u16, Reason)] = &[
        ("93.184.216.34", 443, Reason::DomainAllowed),
        ("2606:4700::1", 443, Reason::DomainAllowed),
        // DNS rebinding to loopback or metadata through an allowed name.
        ("127.0.0.1", 443, Reason::SpecialAddress),
        ("127.0.0.2", 443, Reason::SpecialAddress),
        ("169.254.169.254", 443, Reason::SpecialAddress),
        ("::ffff:169.254.169.254", 443, Reason::SpecialAddress),
        ("64:ff9b::7f00:1", 443, Reason::SpecialAddress),
        ("2002:a9fe:a9fe::1", 443, Reason::SpecialAddress),
        ("fd00::1", 443, Reason::SpecialAddress),
        // An IP rule allows a special address, for its ports only.
        ("127.0.0.1", 8080, Reason::IpAllowed),
        ("10.9.9.9", 443, Reason::IpAllowed),
        ("::ffff:10.9.9.9", 443, Reason::IpAllowed),
    ];
    assert!(!cases.is_empty());
    for (ip, port, want) in cases {
        let got = p.check_resolved(ip.parse().unwrap(), *port, Some(&rule));
        assert_eq!(got.reason, *want, "address {ip} port {port}");
        if *want == Reason::SpecialAddress {
            assert!(got.special.is_some(), "address {ip}");
            assert!(!got.is_allow());
        }
    }
}

#[test]
fn hash_ignores_order_spelling_and_duplicates_but_not_content() {
    let a = policy("example.com\n*.b.example:443\n");
    let b = policy("# same, reordered\n*.B.example:443\nEXAMPLE.com.\nexample.com\n");
    let c = policy("example.com:*\n*.b.example:443\n");
    assert_eq!(a.sha256(), b.sha256());
    assert_ne!(a.sha256(), c.sha256());
    assert!(a.sha256().starts_with("sha256:") && a.sha256().len() == 7 + 64);
}

#[test]
fn wide_policies_decide_by_index_not_scan() {
    // Many rules of every kind: the right one is still found.
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!(
            "host{i}.example\n*.zone{i}.example\n10.{}.{}.0/24:*\n",
            i / 256,
            i % 256
        ));
    }
    let p = policy(&text);
    assert_eq!(p.rules().len(), 6000);
    let d = p.decide(&Target::parse_authority("a.zone1999.example:443").unwrap());
    assert_eq!(d.rule.unwrap().id.as_str(), "test.txt:5999");
    let d = p.decide(&Target::parse_authority("10.7.207.9:1").unwrap());
    assert_eq!(d.reason, Reason::IpAllowed);
    let d = p.decide(&Target::parse_authority("host2000.example:443").unwrap());
    assert_eq!(d.reason, Reason::DomainNotAllowed);
}
