//! DNS decisions and answer cleaning (the capture DNS listener) and the warden's own
//! resolver's reading of an answer. Properties: a forwarded query names an allowed name of an
//! allowed type; a cleaned answer holds no address the policy would refuse to dial and no ECH
//! configuration; the resolver takes at most its bound of addresses and only from the answer.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use egress_warden::allowlist::{RuleSet, parse_text};
use egress_warden::dns::resolve::{MAX_ADDRESSES, read_answer};
use egress_warden::dns::{DEFAULT_TYPES, QueryDecision, clean_answer, decide};
use egress_warden::policy::Policy;
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::svcb::SvcParamKey;
use hickory_proto::rr::{Name, RData, RecordType};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let (rules, errors) = parse_text("fuzz.txt", "allowed.test\n*.example.com:*\n");
        assert!(errors.is_empty());
        Policy::new(RuleSet {
            rules,
            files: vec![],
        })
    })
}

fn types() -> Vec<RecordType> {
    DEFAULT_TYPES.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    if let Ok(query) = Message::from_vec(data)
        && let QueryDecision::Forward { name, qtype, .. } = decide(policy, &query, &types())
    {
        assert!(types().contains(&qtype));
        assert!(
            policy.decide_name(&name, 443).is_allow() || policy.decide_name(&name, 1).is_allow()
        );
    }
    if let Ok((cleaned, _)) = clean_answer(policy, data) {
        let msg = Message::from_vec(&cleaned).expect("a cleaned answer parses");
        for r in msg.answers.iter().chain(msg.additionals.iter()) {
            let ip = match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            };
            if let Some(ip) = ip {
                assert!(
                    egress_warden::policy::special::classify(ip).is_none(),
                    "special address {ip} kept"
                );
            }
            let svcb = match &r.data {
                RData::HTTPS(h) => Some(&h.0),
                RData::SVCB(s) => Some(s),
                _ => None,
            };
            if let Some(svcb) = svcb {
                assert!(
                    !svcb
                        .svc_params
                        .iter()
                        .any(|(k, _)| *k == SvcParamKey::EchConfigList),
                    "ECH kept"
                );
            }
        }
    }
    let name = Name::from_ascii("allowed.test.").unwrap();
    if data.len() >= 2 {
        let id = u16::from_be_bytes([data[0], data[1]]);
        for rtype in [RecordType::A, RecordType::AAAA] {
            if let Ok((addrs, _)) = read_answer(data, id, &name, rtype) {
                assert!(addrs.len() <= MAX_ADDRESSES);
                assert!(
                    addrs
                        .iter()
                        .all(|ip| ip.is_ipv4() == (rtype == RecordType::A))
                );
            }
        }
    }
});
