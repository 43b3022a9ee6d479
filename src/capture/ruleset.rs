//! The capture ruleset, defined once: each rule's kernel expressions and its `nft` text come
//! from the same entry, so `init --print` shows exactly what `init` installs.
//!
//! ```text
//! table inet egress_warden
//!   chain capture_nat    (nat, output, priority -150: before Docker's DNAT at -100)
//!     warden's marked sockets      accept        (its own upstream traffic)
//!     udp/tcp dport 53             redirect to the DNS listener   (any resolver, loopback too)
//!     oif lo                       accept        (loopback stays local)
//!     tcp                          redirect to the transparent listener
//!   chain capture_filter (filter, output, priority 0)
//!     warden's marked sockets      accept
//!     ct state established,related accept        (replies of inbound connections, e.g. scrapes)
//!     ct status dnat, dport of a warden listener   accept   (what capture_nat redirected)
//!     oif lo, tcp dport ADMIN      drop          (the sandbox may not reach the admin port)
//!     oif lo                       accept
//!     icmpv6 type 130-137, 143     accept        (neighbour discovery and MLD, or IPv6 breaks)
//!     udp / icmp / everything else counter drop  (QUIC, raw sockets, ping: counted)
//! ```

use std::fmt::Write;

use super::nft::{BaseChain, CmpOp, CtKey, Expr, MetaKey, NF_ACCEPT, NF_DROP, Rule};

pub const TABLE: &str = "egress_warden";
pub const NAT_CHAIN: &str = "capture_nat";
pub const FILTER_CHAIN: &str = "capture_filter";

/// The chains, in the order they are created.
pub fn chains() -> [BaseChain; 2] {
    [
        BaseChain {
            name: NAT_CHAIN,
            kind: "nat",
            priority: -150,
        },
        BaseChain {
            name: FILTER_CHAIN,
            kind: "filter",
            priority: 0,
        },
    ]
}

/// What the rules point at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// SO_MARK on the warden's own upstream sockets (exempt from capture).
    pub mark: u32,
    /// Port of the transparent listener (on 127.0.0.1 and ::1).
    pub transparent_port: u16,
    /// Port of the DNS listener (UDP and TCP, on 127.0.0.1 and ::1).
    pub dns_port: u16,
    /// The admin port, refused to the sandbox over loopback.
    pub admin_port: Option<u16>,
}

/// Why a packet was dropped, for the drop counters.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropClass {
    Udp,
    Icmp,
    Other,
}

impl DropClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            DropClass::Udp => "udp",
            DropClass::Icmp => "icmp",
            DropClass::Other => "other",
        }
    }

    /// The rule comment that identifies this drop counter.
    pub fn comment(self) -> String {
        format!("egress-warden: drop {}", self.as_str())
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const NFPROTO_IPV6: u8 = 10;
/// `ct state` bits for established (2) and related (4).
const CT_ESTABLISHED_RELATED: u32 = 0x6;
/// `ct status` bit IPS_DST_NAT.
const CT_STATUS_DNAT: u32 = 0x20;
const LOOPBACK_IFINDEX: u32 = 1;

fn l4proto(p: u8) -> [Expr; 2] {
    [
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp {
            op: CmpOp::Eq,
            data: vec![p],
        },
    ]
}

fn dport(port: u16) -> [Expr; 2] {
    [
        Expr::TransportPayload { offset: 2, len: 2 },
        Expr::Cmp {
            op: CmpOp::Eq,
            data: port.to_be_bytes().to_vec(),
        },
    ]
}

fn redirect(port: u16) -> [Expr; 2] {
    [Expr::Value(port.to_be_bytes().to_vec()), Expr::Redirect]
}

fn mark(m: u32) -> [Expr; 2] {
    [
        Expr::Meta(MetaKey::Mark),
        Expr::Cmp {
            op: CmpOp::Eq,
            data: m.to_ne_bytes().to_vec(),
        },
    ]
}

fn oif_lo() -> [Expr; 2] {
    [
        Expr::Meta(MetaKey::Oif),
        Expr::Cmp {
            op: CmpOp::Eq,
            data: LOOPBACK_IFINDEX.to_ne_bytes().to_vec(),
        },
    ]
}

fn ct_bits(key: CtKey, bits: u32) -> [Expr; 3] {
    [
        Expr::Ct(key),
        Expr::Mask(bits.to_ne_bytes().to_vec()),
        Expr::Cmp {
            op: CmpOp::Neq,
            data: 0u32.to_ne_bytes().to_vec(),
        },
    ]
}

/// One rule of the ruleset: its chain, its `nft` text and its expressions.
pub struct Entry {
    pub rule: Rule,
    pub text: String,
}

fn entry(chain: &'static str, text: String, parts: &[&[Expr]], why: &str) -> Entry {
    let exprs = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    Entry {
        rule: Rule {
            chain,
            exprs,
            comment: format!("egress-warden: {why}"),
        },
        text,
    }
}

/// Every rule, in order.
pub fn entries(spec: &Spec) -> Vec<Entry> {
    let accept = [Expr::Verdict(NF_ACCEPT)];
    let drop = [Expr::Verdict(NF_DROP)];
    let counter = [Expr::Counter];
    let m = format!("meta mark {:#010x}", spec.mark);
    let (t, d) = (spec.transparent_port, spec.dns_port);
    let mut out = vec![
        entry(
            NAT_CHAIN,
            format!("{m} accept"),
            &[&mark(spec.mark), &accept],
            "warden sockets",
        ),
        entry(
            NAT_CHAIN,
            format!("udp dport 53 redirect to :{d}"),
            &[&l4proto(UDP), &dport(53), &redirect(d)],
            "dns udp",
        ),
        entry(
            NAT_CHAIN,
            format!("tcp dport 53 redirect to :{d}"),
            &[&l4proto(TCP), &dport(53), &redirect(d)],
            "dns tcp",
        ),
        entry(
            NAT_CHAIN,
            "oif \"lo\" accept".into(),
            &[&oif_lo(), &accept],
            "loopback",
        ),
        entry(
            NAT_CHAIN,
            format!("meta l4proto tcp redirect to :{t}"),
            &[&l4proto(TCP), &redirect(t)],
            "tcp",
        ),
        entry(
            FILTER_CHAIN,
            format!("{m} accept"),
            &[&mark(spec.mark), &accept],
            "warden sockets",
        ),
        entry(
            FILTER_CHAIN,
            "ct state established,related accept".into(),
            &[&ct_bits(CtKey::State, CT_ESTABLISHED_RELATED), &accept],
            "established",
        ),
        entry(
            FILTER_CHAIN,
            format!("ct status dnat tcp dport {t} accept"),
            &[
                &ct_bits(CtKey::Status, CT_STATUS_DNAT),
                &l4proto(TCP),
                &dport(t),
                &accept,
            ],
            "redirected tcp",
        ),
        entry(
            FILTER_CHAIN,
            format!("ct status dnat tcp dport {d} accept"),
            &[
                &ct_bits(CtKey::Status, CT_STATUS_DNAT),
                &l4proto(TCP),
                &dport(d),
                &accept,
            ],
            "redirected dns tcp",
        ),
        entry(
            FILTER_CHAIN,
            format!("ct status dnat udp dport {d} accept"),
            &[
                &ct_bits(CtKey::Status, CT_STATUS_DNAT),
                &l4proto(UDP),
                &dport(d),
                &accept,
            ],
            "redirected dns udp",
        ),
    ];
    if let Some(admin) = spec.admin_port {
        out.push(entry(
            FILTER_CHAIN,
            format!("oif \"lo\" tcp dport {admin} drop"),
            &[&oif_lo(), &l4proto(TCP), &dport(admin), &drop],
            "admin port",
        ));
    }
    let icmpv6 = |lo: u8, hi: u8| -> Vec<Expr> {
        let mut v = vec![
            Expr::Meta(MetaKey::NfProto),
            Expr::Cmp {
                op: CmpOp::Eq,
                data: vec![NFPROTO_IPV6],
            },
        ];
        v.extend(l4proto(ICMPV6));
        v.push(Expr::TransportPayload { offset: 0, len: 1 });
        if lo == hi {
            v.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: vec![lo],
            });
        } else {
            v.push(Expr::Cmp {
                op: CmpOp::Gte,
                data: vec![lo],
            });
            v.push(Expr::Cmp {
                op: CmpOp::Lte,
                data: vec![hi],
            });
        }
        v
    };
    out.extend([
        entry(
            FILTER_CHAIN,
            "oif \"lo\" accept".into(),
            &[&oif_lo(), &accept],
            "loopback",
        ),
        entry(
            FILTER_CHAIN,
            "icmpv6 type 130-137 accept".into(),
            &[&icmpv6(130, 137), &accept],
            "neighbour discovery",
        ),
        entry(
            FILTER_CHAIN,
            "icmpv6 type 143 accept".into(),
            &[&icmpv6(143, 143), &accept],
            "mldv2",
        ),
        Entry {
            rule: Rule {
                chain: FILTER_CHAIN,
                exprs: [&l4proto(UDP)[..], &counter, &drop].concat(),
                comment: DropClass::Udp.comment(),
            },
            text: "meta l4proto udp counter drop".into(),
        },
        Entry {
            rule: Rule {
                chain: FILTER_CHAIN,
                exprs: [&l4proto(ICMP)[..], &counter, &drop].concat(),
                comment: DropClass::Icmp.comment(),
            },
            text: "meta l4proto icmp counter drop".into(),
        },
        Entry {
            rule: Rule {
                chain: FILTER_CHAIN,
                exprs: [&l4proto(ICMPV6)[..], &counter, &drop].concat(),
                comment: DropClass::Icmp.comment(),
            },
            text: "meta l4proto ipv6-icmp counter drop".into(),
        },
        Entry {
            rule: Rule {
                chain: FILTER_CHAIN,
                exprs: [&counter[..], &drop].concat(),
                comment: DropClass::Other.comment(),
            },
            text: "counter drop".into(),
        },
    ]);
    out
}

/// The whole ruleset as an `nft -f` file (what `init --print` prints).
pub fn nft_text(spec: &Spec) -> String {
    let entries = entries(spec);
    let mut out = format!("table inet {TABLE} {{\n");
    for (i, chain) in chains().iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        let _ = writeln!(
            out,
            "\t\ttype {} hook output priority {}; policy accept;",
            chain.kind, chain.priority
        );
        for e in entries.iter().filter(|e| e.rule.chain == chain.name) {
            let _ = writeln!(out, "\t\t{} comment \"{}\"", e.text, e.rule.comment);
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            mark: 0x6577,
            transparent_port: 15001,
            dns_port: 15353,
            admin_port: Some(9090),
        }
    }

    #[test]
    fn text_lists_every_rule_once_with_its_comment() {
        let text = nft_text(&spec());
        assert!(
            text.starts_with("table inet egress_warden {\n\tchain capture_nat {\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\t\tmeta mark 0x00006577 accept comment \"egress-warden: warden sockets\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("udp dport 53 redirect to :15353"), "{text}");
        assert!(
            text.contains("meta l4proto tcp redirect to :15001"),
            "{text}"
        );
        assert!(text.contains("oif \"lo\" tcp dport 9090 drop"), "{text}");
        assert_eq!(text.matches(" comment ").count(), entries(&spec()).len());
        let no_admin = nft_text(&Spec {
            admin_port: None,
            ..spec()
        });
        assert!(!no_admin.contains("9090"));
    }

    #[test]
    fn comments_are_short_enough_for_nft_userdata() {
        for e in entries(&spec()) {
            assert!(e.rule.comment.len() < 128, "{}", e.rule.comment);
        }
    }
}
