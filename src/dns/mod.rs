//! DNS filtering for the capture DNS listener, as pure functions over messages: decide a
//! query's name with the same policy as every other listener, build refusals, and clean an
//! upstream answer of addresses the warden would refuse to dial and of Encrypted Client Hello
//! configurations (so clients keep sending a real SNI the warden can check).

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::svcb::{SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

pub mod resolve;
pub mod upstream;

use crate::allowlist::Rule;
use crate::host::DomainName;
use crate::policy::{Policy, Reason};

/// Largest DNS message accepted from a client or an upstream.
pub const MAX_MESSAGE: usize = 4096;

/// Query types answered by default.
pub const DEFAULT_TYPES: [RecordType; 5] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::HTTPS,
    RecordType::SVCB,
];

/// What to do with one query.
#[derive(Debug)]
pub enum QueryDecision {
    /// Forward upstream; the name is allowed by `rule`.
    Forward {
        name: DomainName,
        qtype: RecordType,
        rule: Arc<Rule>,
    },
    /// Refuse, for `reason`. `name` is the query name as sent (for the record).
    Refuse {
        reason: Reason,
        name: Option<String>,
        qtype: Option<RecordType>,
        detail: String,
    },
}

/// A DNS name as the warden writes and compares it: lower case, no trailing dot.
pub fn name_text(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Decides a parsed query.
pub fn decide(policy: &Policy, query: &Message, allowed_types: &[RecordType]) -> QueryDecision {
    let refuse = |reason, name: Option<String>, qtype, detail: &str| QueryDecision::Refuse {
        reason,
        name,
        qtype,
        detail: detail.to_owned(),
    };
    if query.metadata.message_type != MessageType::Query || query.metadata.op_code != OpCode::Query
    {
        return refuse(Reason::MalformedRequest, None, None, "not a standard query");
    }
    let [q] = query.queries.as_slice() else {
        return refuse(
            Reason::MalformedRequest,
            None,
            None,
            "not exactly one question",
        );
    };
    let name_text = name_text(q.name());
    let qtype = q.query_type();
    if q.query_class() != DNSClass::IN {
        return refuse(
            Reason::MalformedRequest,
            Some(name_text),
            Some(qtype),
            "class is not IN",
        );
    }
    if !allowed_types.contains(&qtype) {
        return refuse(
            Reason::DnsTypeNotAllowed,
            Some(name_text),
            Some(qtype),
            &format!("type {qtype} is not answered"),
        );
    }
    let name = match DomainName::parse(&name_text) {
        Ok(n) => n,
        Err(e) => {
            return refuse(
                Reason::MalformedRequest,
                Some(name_text),
                Some(qtype),
                &e.to_string(),
            );
        }
    };
    match policy.name_rule(&name) {
        Some(rule) => QueryDecision::Forward { name, qtype, rule },
        None => refuse(Reason::DomainNotAllowed, Some(name_text), Some(qtype), ""),
    }
}

/// A response to `query` with `rcode` and no records.
pub fn refusal(query: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut rsp = Message::response(query.metadata.id, query.metadata.op_code);
    rsp.metadata.recursion_desired = query.metadata.recursion_desired;
    rsp.metadata.recursion_available = true;
    rsp.metadata.response_code = rcode;
    for q in &query.queries {
        rsp.add_query(q.clone());
    }
    rsp.to_vec().ok()
}

/// A FORMERR/SERVFAIL-style answer for bytes that did not parse but carry an id.
pub fn error_for_id(id: u16, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut rsp = Message::response(id, OpCode::Query);
    rsp.metadata.response_code = rcode;
    rsp.to_vec().ok()
}

/// What cleaning an answer removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Addresses (A/AAAA records and SVCB hints) the policy would refuse to dial.
    pub stripped: Vec<IpAddr>,
    /// Number of ECH configurations removed from HTTPS/SVCB records.
    pub ech_removed: usize,
    /// Addresses left in the answer.
    pub kept: usize,
}

/// Cleans an upstream answer. Returns the bytes to send (the original bytes when nothing
/// changed) and what was removed.
pub fn clean_answer(policy: &Policy, response: &[u8]) -> Result<(Vec<u8>, Cleaned), String> {
    let mut msg =
        Message::from_vec(response).map_err(|e| format!("unparseable upstream answer: {e}"))?;
    let mut cleaned = Cleaned::default();
    let mut changed = false;
    for section in [&mut msg.answers, &mut msg.additionals] {
        let before = section.len();
        section.retain_mut(|r| keep_record(policy, r, &mut cleaned, &mut changed));
        changed |= section.len() != before;
    }
    if !changed {
        return Ok((response.to_vec(), cleaned));
    }
    let bytes = msg
        .to_vec()
        .map_err(|e| format!("cannot re-encode the cleaned answer: {e}"))?;
    Ok((bytes, cleaned))
}

fn keep_record(
    policy: &Policy,
    record: &mut Record,
    cleaned: &mut Cleaned,
    changed: &mut bool,
) -> bool {
    match &mut record.data {
        RData::A(a) => keep_address(policy, IpAddr::V4(a.0), cleaned),
        RData::AAAA(a) => keep_address(policy, IpAddr::V6(a.0), cleaned),
        RData::HTTPS(https) => {
            *changed |= clean_svcb(policy, &mut https.0, cleaned);
            true
        }
        RData::SVCB(svcb) => {
            *changed |= clean_svcb(policy, svcb, cleaned);
            true
        }
        _ => true,
    }
}

fn keep_address(policy: &Policy, ip: IpAddr, cleaned: &mut Cleaned) -> bool {
    if policy.answer_allowed(ip) {
        cleaned.kept += 1;
        true
    } else {
        cleaned.stripped.push(ip);
        false
    }
}

/// Removes ECH configurations and refused address hints; true when something changed.
fn clean_svcb(policy: &Policy, svcb: &mut SVCB, cleaned: &mut Cleaned) -> bool {
    let before = svcb.svc_params.len();
    svcb.svc_params.retain(|(key, _)| {
        let ech = *key == SvcParamKey::EchConfigList;
        cleaned.ech_removed += usize::from(ech);
        !ech
    });
    let mut changed = svcb.svc_params.len() != before;
    for (_, value) in &mut svcb.svc_params {
        match value {
            SvcParamValue::Ipv4Hint(hint) => {
                let n = hint.0.len();
                hint.0
                    .retain(|a| keep_address(policy, IpAddr::V4(a.0), cleaned));
                changed |= hint.0.len() != n;
            }
            SvcParamValue::Ipv6Hint(hint) => {
                let n = hint.0.len();
                hint.0
                    .retain(|a| keep_address(policy, IpAddr::V6(a.0), cleaned));
                changed |= hint.0.len() != n;
            }
            _ => {}
        }
    }
    // An empty hint list is not valid on the wire: drop such parameters.
    svcb.svc_params.retain(|(_, v)| match v {
        SvcParamValue::Ipv4Hint(h) => !h.0.is_empty(),
        SvcParamValue::Ipv6Hint(h) => !h.0.is_empty(),
        _ => true,
    });
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{RuleSet, parse_text};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::svcb::{EchConfigList, IpHint};
    use hickory_proto::rr::rdata::{A, AAAA, HTTPS};

    fn policy(text: &str) -> Policy {
        let (rules, errors) = parse_text("t.txt", text);
        assert!(errors.is_empty());
        Policy::new(RuleSet {
            rules,
            files: vec![],
        })
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    #[test]
    fn queries_are_decided_by_name_and_type() {
        let p = policy("pypi.org\n*.pythonhosted.org:*\n");
        let cases: &[(&str, RecordType, Option<Reason>)] = &[
            ("pypi.org.", RecordType::A, None),
            ("PyPI.org.", RecordType::AAAA, None),
            ("files.pythonhosted.org.", RecordType::HTTPS, None),
            ("evil.test.", RecordType::A, Some(Reason::DomainNotAllowed)),
            (
                "pypi.org.svc.cluster.local.",
                RecordType::A,
                Some(Reason::DomainNotAllowed),
            ),
            (
                "pypi.org.",
                RecordType::TXT,
                Some(Reason::DnsTypeNotAllowed),
            ),
            (
                "4.3.2.1.in-addr.arpa.",
                RecordType::PTR,
                Some(Reason::DnsTypeNotAllowed),
            ),
            (
                "pypi.org.",
                RecordType::ANY,
                Some(Reason::DnsTypeNotAllowed),
            ),
        ];
        assert!(!cases.is_empty());
        for (name, qtype, want) in cases {
            let got = match decide(&p, &query(name, *qtype), &DEFAULT_TYPES) {
                QueryDecision::Forward { .. } => None,
                QueryDecision::Refuse { reason, .. } => Some(reason),
            };
            assert_eq!(got, *want, "{name} {qtype}");
        }
        let mut two = query("pypi.org.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("evil.test.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            decide(&p, &two, &DEFAULT_TYPES),
            QueryDecision::Refuse {
                reason: Reason::MalformedRequest,
                ..
            }
        ));
    }

    #[test]
    fn refusals_echo_the_question_with_the_rcode() {
        let q = query("evil.test.", RecordType::A);
        let bytes = refusal(&q, ResponseCode::Refused).unwrap();
        let rsp = Message::from_vec(&bytes).unwrap();
        assert_eq!(rsp.metadata.id, 7);
        assert_eq!(rsp.metadata.response_code, ResponseCode::Refused);
        assert_eq!(rsp.queries, q.queries);
        assert!(rsp.answers.is_empty());
    }

    #[test]
    fn answers_lose_special_addresses_and_ech_but_keep_the_rest() {
        let p = policy("allowed.test\n10.1.0.0/16\n");
        let name = Name::from_ascii("allowed.test.").unwrap();
        let mut rsp = Message::response(7, OpCode::Query);
        rsp.add_query(Query::query(name.clone(), RecordType::A));
        rsp.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A::new(93, 184, 216, 34)),
        ));
        rsp.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A::new(127, 0, 0, 1)),
        ));
        rsp.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A::new(169, 254, 169, 254)),
        ));
        rsp.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A::new(10, 1, 2, 3)),
        ));
        rsp.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::AAAA(AAAA::new(0x64, 0xff9b, 0, 0, 0, 0, 0x7f00, 1)),
        ));
        let svcb = SVCB::new(
            1,
            Name::root(),
            vec![
                (
                    SvcParamKey::Ipv4Hint,
                    SvcParamValue::Ipv4Hint(IpHint(vec![
                        A::new(93, 184, 216, 34),
                        A::new(127, 0, 0, 1),
                    ])),
                ),
                (
                    SvcParamKey::EchConfigList,
                    SvcParamValue::EchConfigList(EchConfigList(vec![1, 2, 3])),
                ),
            ],
        );
        rsp.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::HTTPS(HTTPS(svcb)),
        ));
        let (bytes, cleaned) = clean_answer(&p, &rsp.to_vec().unwrap()).unwrap();
        let out = Message::from_vec(&bytes).unwrap();
        let addrs: Vec<String> = out
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(addrs, ["93.184.216.34", "10.1.2.3"]);
        assert_eq!(cleaned.stripped.len(), 4, "{cleaned:?}");
        assert_eq!(cleaned.ech_removed, 1);
        let RData::HTTPS(https) = &out.answers.last().unwrap().data else {
            panic!()
        };
        assert_eq!(https.0.svc_params.len(), 1, "{:?}", https.0.svc_params);
        // An answer with nothing to clean is passed through byte for byte.
        let mut clean = Message::response(9, OpCode::Query);
        clean.add_answer(Record::from_rdata(
            name,
            60,
            RData::A(A::new(93, 184, 216, 34)),
        ));
        let original = clean.to_vec().unwrap();
        assert_eq!(clean_answer(&p, &original).unwrap().0, original);
    }
}
