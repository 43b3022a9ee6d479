//! The warden's own resolver: allowed names are resolved here — never by the sandbox — so the
//! addresses checked are the addresses dialled. A stub resolver on purpose: it asks the
//! upstream exactly two questions per name (A and AAAA for the allowed name itself) and takes
//! the addresses from the answer section, following a CNAME chain only inside that answer. It
//! never sends a query of its own for a CNAME target, so no name the policy did not allow ever
//! leaves the warden. No search domains, no hosts file: a name means the same thing in every
//! environment. Positive answers are cached for their TTL, bounded in entries and time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::time::Instant;

use super::upstream::{ExchangeError, exchange};
use crate::host::DomainName;
use crate::metrics::{LookupOutcome, Metrics};

/// Most addresses kept from one lookup (bounded work per connection attempt).
pub const MAX_ADDRESSES: usize = 32;
/// Tries per question; each is bounded by `--dns-timeout`.
pub const ATTEMPTS: u32 = 2;
/// CNAME links followed inside one answer.
const MAX_CNAME_HOPS: usize = 8;
/// Names cached at once.
const CACHE_ENTRIES: usize = 4096;
/// Longest an answer is cached, whatever its TTL says.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// The UDP payload the warden advertises (RFC 9715's safe size).
const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no address records for the name")]
    NotFound,
    #[error("DNS lookup timed out")]
    Timeout,
    #[error("DNS lookup failed: {0}")]
    Failed(String),
    #[error("no DNS upstream configured (--dns-upstream, or a nameserver in /etc/resolv.conf)")]
    NoUpstream,
}

pub struct Resolver {
    upstream: Option<SocketAddr>,
    timeout: Duration,
    mark: Option<u32>,
    metrics: Arc<Metrics>,
    cache: Mutex<HashMap<DomainName, (Vec<IpAddr>, Instant)>>,
}

impl Resolver {
    /// `mark` is set on the resolver's sockets under transparent capture.
    pub fn new(
        upstream: Option<SocketAddr>,
        timeout: Duration,
        mark: Option<u32>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            upstream,
            timeout,
            mark,
            metrics,
            cache: Mutex::default(),
        }
    }

    /// Resolves `name` to at most [`MAX_ADDRESSES`] addresses (A and AAAA, asked at once).
    /// Takes at most [`ATTEMPTS`] × `--dns-timeout` (twice that again when an answer is
    /// truncated and retried over TCP).
    pub async fn lookup(&self, name: &DomainName) -> Result<Vec<IpAddr>, ResolveError> {
        let result = self.lookup_inner(name).await;
        let outcome = match &result {
            Ok(_) => LookupOutcome::Ok,
            Err(ResolveError::NotFound) => LookupOutcome::NotFound,
            Err(ResolveError::Timeout) => LookupOutcome::Timeout,
            Err(_) => LookupOutcome::Error,
        };
        self.metrics.lookup(outcome);
        result
    }

    async fn lookup_inner(&self, name: &DomainName) -> Result<Vec<IpAddr>, ResolveError> {
        let upstream = self.upstream.ok_or(ResolveError::NoUpstream)?;
        if let Some(addrs) = self.cached(name) {
            return Ok(addrs);
        }
        // Fully qualified: no search-list expansion.
        let fqdn = Name::from_ascii(format!("{name}."))
            .map_err(|e| ResolveError::Failed(e.to_string()))?;
        let (v4, v6) = tokio::join!(
            self.ask(upstream, &fqdn, RecordType::A),
            self.ask(upstream, &fqdn, RecordType::AAAA)
        );
        let (addrs, ttl) = combine(v4, v6)?;
        self.remember(name, &addrs, ttl);
        Ok(addrs)
    }

    fn cached(&self, name: &DomainName) -> Option<Vec<IpAddr>> {
        let cache = self.cache.lock().expect("resolver cache lock");
        let (addrs, until) = cache.get(name)?;
        (Instant::now() < *until).then(|| addrs.clone())
    }

    fn remember(&self, name: &DomainName, addrs: &[IpAddr], ttl: u32) {
        if ttl == 0 {
            return;
        }
        let now = Instant::now();
        let until = now + Duration::from_secs(u64::from(ttl)).min(MAX_TTL);
        let mut cache = self.cache.lock().expect("resolver cache lock");
        if cache.len() >= CACHE_ENTRIES && !cache.contains_key(name) {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                // Still full of live entries: start over rather than grow.
                cache.clear();
            }
        }
        cache.insert(name.clone(), (addrs.to_vec(), until));
    }

    /// One question, tried up to [`ATTEMPTS`] times; its addresses and their smallest TTL.
    async fn ask(
        &self,
        upstream: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(Vec<IpAddr>, u32), ResolveError> {
        let mut last = ResolveError::Timeout;
        for _ in 0..ATTEMPTS {
            let (id, query) = build_query(name, rtype)?;
            match exchange(upstream, &query, self.timeout, self.mark).await {
                Ok(rsp) => return read_answer(&rsp, id, name, rtype),
                Err(ExchangeError::Timeout(..)) => last = ResolveError::Timeout,
                Err(e) => last = ResolveError::Failed(e.to_string()),
            }
        }
        Err(last)
    }
}

/// A recursive query for `name` and `rtype` with a fresh random id.
fn build_query(name: &Name, rtype: RecordType) -> Result<(u16, Vec<u8>), ResolveError> {
    let mut id = [0u8; 2];
    getrandom::fill(&mut id).map_err(|e| ResolveError::Failed(e.to_string()))?;
    let id = u16::from_be_bytes(id);
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    msg.set_edns(edns);
    let bytes = msg
        .to_vec()
        .map_err(|e| ResolveError::Failed(e.to_string()))?;
    Ok((id, bytes))
}

/// The addresses an upstream answer gives for the question asked, or why there are none.
pub fn read_answer(
    rsp: &[u8],
    id: u16,
    name: &Name,
    rtype: RecordType,
) -> Result<(Vec<IpAddr>, u32), ResolveError> {
    let msg =
        Message::from_vec(rsp).map_err(|e| ResolveError::Failed(format!("bad answer: {e}")))?;
    let asked = |q: &Query| q.query_type() == rtype && same_name(q.name(), name);
    if msg.metadata.id != id
        || msg.metadata.message_type != MessageType::Response
        || !(msg.queries.len() == 1 && asked(&msg.queries[0]))
    {
        return Err(ResolveError::Failed(
            "the answer does not match the question".into(),
        ));
    }
    match msg.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Err(ResolveError::NotFound),
        rcode => return Err(ResolveError::Failed(format!("upstream answered {rcode}"))),
    }
    if msg.metadata.truncation {
        return Err(ResolveError::Failed("the answer is truncated".into()));
    }
    Ok(addresses_in_answer(&msg.answers, name, rtype))
}

/// The `rtype` addresses the answer section gives `name`, following CNAMEs inside the section
/// only, and the smallest TTL on the way. A chain that leaves the section yields nothing: the
/// warden never asks about the CNAME's target itself.
pub fn addresses_in_answer(
    answers: &[Record],
    name: &Name,
    rtype: RecordType,
) -> (Vec<IpAddr>, u32) {
    let mut current = name.clone();
    let mut ttl = u32::MAX;
    let mut out: Vec<IpAddr> = Vec::new();
    for _ in 0..=MAX_CNAME_HOPS {
        let mut next = None;
        for r in answers.iter().filter(|r| same_name(&r.name, &current)) {
            let ip = match (&r.data, rtype) {
                (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
                (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
                (RData::CNAME(c), _) => {
                    next.get_or_insert_with(|| (c.0.clone(), r.ttl));
                    continue;
                }
                _ => continue,
            };
            ttl = ttl.min(r.ttl);
            if !out.contains(&ip) && out.len() < MAX_ADDRESSES {
                out.push(ip);
            }
        }
        match next {
            Some((target, link_ttl)) if out.is_empty() => {
                ttl = ttl.min(link_ttl);
                current = target;
            }
            _ => break,
        }
    }
    if out.is_empty() {
        ttl = 0;
    }
    (out, ttl)
}

fn same_name(a: &Name, b: &Name) -> bool {
    super::name_text(a) == super::name_text(b)
}

/// Both families' results: every address found, or the most telling error.
fn combine(
    v4: Result<(Vec<IpAddr>, u32), ResolveError>,
    v6: Result<(Vec<IpAddr>, u32), ResolveError>,
) -> Result<(Vec<IpAddr>, u32), ResolveError> {
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    let mut error = None;
    for r in [v4, v6] {
        match r {
            Ok((found, t)) if !found.is_empty() => {
                ttl = ttl.min(t);
                for ip in found {
                    if !addrs.contains(&ip) && addrs.len() < MAX_ADDRESSES {
                        addrs.push(ip);
                    }
                }
            }
            Ok(_) | Err(ResolveError::NotFound) => {}
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if !addrs.is_empty() {
        return Ok((addrs, ttl));
    }
    Err(error.unwrap_or(ResolveError::NotFound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            n(name),
            ttl,
            RData::A(A::from(std::net::Ipv4Addr::from(ip))),
        )
    }

    fn cname(name: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(n(name), ttl, RData::CNAME(CNAME(n(target))))
    }

    #[test]
    fn addresses_come_from_the_answer_section_only() {
        let v6 = Record::from_rdata(
            n("allowed.test."),
            30,
            RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        );
        type Case = (
            &'static str,
            Vec<Record>,
            RecordType,
            Vec<&'static str>,
            u32,
        );
        let cases: Vec<Case> = vec![
            (
                "direct",
                vec![a("allowed.test.", 60, [1, 2, 3, 4])],
                RecordType::A,
                vec!["1.2.3.4"],
                60,
            ),
            (
                "case and trailing dot do not matter",
                vec![a("ALLOWED.test", 60, [1, 2, 3, 4])],
                RecordType::A,
                vec!["1.2.3.4"],
                60,
            ),
            (
                "a chain inside the answer is followed, smallest TTL kept",
                vec![
                    cname("allowed.test.", 20, "edge.cdn.test."),
                    a("edge.cdn.test.", 300, [5, 6, 7, 8]),
                ],
                RecordType::A,
                vec!["5.6.7.8"],
                20,
            ),
            (
                "a chain that leaves the answer gives nothing (and is not chased)",
                vec![cname("allowed.test.", 20, "elsewhere.test.")],
                RecordType::A,
                vec![],
                0,
            ),
            (
                "records for other names are ignored",
                vec![
                    a("evil.test.", 60, [6, 6, 6, 6]),
                    a("allowed.test.", 60, [1, 2, 3, 4]),
                ],
                RecordType::A,
                vec!["1.2.3.4"],
                60,
            ),
            (
                "only the asked type",
                vec![a("allowed.test.", 60, [1, 2, 3, 4]), v6.clone()],
                RecordType::AAAA,
                vec!["2001:db8::1"],
                30,
            ),
            (
                "a CNAME loop ends",
                vec![
                    cname("allowed.test.", 20, "b.test."),
                    cname("b.test.", 20, "allowed.test."),
                ],
                RecordType::A,
                vec![],
                0,
            ),
        ];
        for (what, records, rtype, want, want_ttl) in cases {
            let (got, ttl) = addresses_in_answer(&records, &n("allowed.test."), rtype);
            let got: Vec<String> = got.iter().map(IpAddr::to_string).collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(ttl, want_ttl, "{what}");
        }
    }

    #[test]
    fn answers_that_do_not_match_the_question_or_fail_are_refused() {
        let name = n("allowed.test.");
        let answer = |id: u16, qname: &str, rcode: ResponseCode| {
            let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
            m.add_query(Query::query(n(qname), RecordType::A));
            m.metadata.response_code = rcode;
            m.add_answer(a(qname, 60, [1, 2, 3, 4]));
            m.to_vec().unwrap()
        };
        let ok = read_answer(
            &answer(7, "allowed.test.", ResponseCode::NoError),
            7,
            &name,
            RecordType::A,
        );
        assert_eq!(ok.unwrap().0, vec![IpAddr::from([1, 2, 3, 4])]);
        let cases = [
            (
                answer(8, "allowed.test.", ResponseCode::NoError),
                "another id",
            ),
            (
                answer(7, "evil.test.", ResponseCode::NoError),
                "another name",
            ),
            (
                answer(7, "allowed.test.", ResponseCode::ServFail),
                "SERVFAIL",
            ),
            (b"junk".to_vec(), "junk"),
        ];
        for (bytes, what) in cases {
            assert!(
                matches!(
                    read_answer(&bytes, 7, &name, RecordType::A),
                    Err(ResolveError::Failed(_))
                ),
                "{what}"
            );
        }
        assert_eq!(
            read_answer(
                &answer(7, "allowed.test.", ResponseCode::NXDomain),
                7,
                &name,
                RecordType::A
            ),
            Err(ResolveError::NotFound)
        );
    }

    #[test]
    fn both_families_combine_and_the_telling_error_wins() {
        let v4 = || Ok((vec![IpAddr::from([1, 2, 3, 4])], 60));
        let timeout = || Err(ResolveError::Timeout);
        let none = || Err(ResolveError::NotFound);
        assert_eq!(combine(v4(), timeout()).unwrap().0.len(), 1);
        assert_eq!(combine(none(), none()), Err(ResolveError::NotFound));
        assert_eq!(combine(none(), timeout()), Err(ResolveError::Timeout));
        assert_eq!(
            combine(Ok((vec![], 0)), Ok((vec![], 0))),
            Err(ResolveError::NotFound)
        );
    }
}
