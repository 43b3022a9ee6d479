//! The policy engine: pure decisions over an immutable snapshot of the allowlists. No I/O, no
//! clock, no logging; every listener asks it the same three questions:
//!
//! 1. [`Policy::decide`] — may the sandbox reach this target? A name is decided by name rules
//!    only, an IP literal by IP rules only.
//! 2. [`Policy::check_resolved`] — for an allowed name, may the warden dial this address it
//!    resolved? Ordinary addresses yes; special ones (see [`special`]) only with an IP rule.
//! 3. Which rule allowed it (for audit, metrics and per-rule upload budgets).

pub mod decision;
pub mod special;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

pub use self::decision::{Decision, Reason, Verdict};
use crate::allowlist::{Pattern, Rule, RuleSet};
use crate::host::{DomainName, Host, Target};

/// An immutable, indexed snapshot of the allowlists.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Arc<Rule>>,
    /// Exact name → indices of rules naming it.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Wildcard suffix (`*.example.com` → `example.com`) → indices.
    wildcard: HashMap<Box<str>, Vec<u32>>,
    v4: PrefixIndex<u32>,
    v6: PrefixIndex<u128>,
    sha256: String,
    files: Vec<PathBuf>,
}

/// IP rules grouped by prefix length, longest first: a lookup masks the address once per
/// distinct length present (at most 33 or 129) and probes a hash map.
#[derive(Debug)]
struct PrefixIndex<T> {
    by_len: Vec<(u8, HashMap<T, Vec<u32>>)>,
}

impl<T: Copy + Eq + std::hash::Hash + MaskBits> PrefixIndex<T> {
    fn new() -> Self {
        Self { by_len: Vec::new() }
    }

    fn insert(&mut self, network: T, len: u8, idx: u32) {
        let pos = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_len.insert(pos, (len, HashMap::new()));
                pos
            }
        };
        self.by_len[pos].1.entry(network).or_default().push(idx);
    }

    /// Rule indices whose network contains `addr`, most specific first.
    fn matches(&self, addr: T) -> impl Iterator<Item = u32> + '_ {
        self.by_len
            .iter()
            .flat_map(move |(len, map)| map.get(&addr.mask(*len)).into_iter().flatten().copied())
    }
}

trait MaskBits {
    fn mask(self, len: u8) -> Self;
}

impl MaskBits for u32 {
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - u32::from(len)))
        }
    }
}

impl MaskBits for u128 {
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - u32::from(len)))
        }
    }
}

/// How a host matched the rules, before the port is considered.
enum HostMatch {
    /// A rule matches host and port.
    Allowed(u32),
    /// Rules match the host but none allows the port; the first such rule.
    PortOnly(u32),
    None,
}

impl Policy {
    /// Indexes a loaded rule set.
    pub fn new(set: RuleSet) -> Self {
        let mut policy = Policy {
            rules: Vec::with_capacity(set.rules.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            v4: PrefixIndex::new(),
            v6: PrefixIndex::new(),
            sha256: String::new(),
            files: set.files,
        };
        for (i, rule) in set.rules.into_iter().enumerate() {
            let idx = u32::try_from(i).expect("fewer than 2^32 rules");
            match &rule.pattern {
                Pattern::Exact(n) => policy.exact.entry(n.as_str().into()).or_default().push(idx),
                Pattern::Wildcard(n) => policy
                    .wildcard
                    .entry(n.as_str().into())
                    .or_default()
                    .push(idx),
                Pattern::Net(IpNet::V4(net)) => {
                    policy
                        .v4
                        .insert(u32::from(net.network()), net.prefix_len(), idx)
                }
                Pattern::Net(IpNet::V6(net)) => {
                    policy
                        .v6
                        .insert(u128::from(net.network()), net.prefix_len(), idx)
                }
            }
            policy.rules.push(Arc::new(rule));
        }
        policy.sha256 = hash_rules(&policy.rules);
        policy
    }

    /// The policy with no rules: denies everything.
    pub fn empty() -> Self {
        Self::new(RuleSet::default())
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// `sha256:<hex>` over the sorted, de-duplicated canonical rules: the same policy written in
    /// other files, order or spelling hashes the same; any change to what is allowed does not.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// May the sandbox reach `target`? Names by name rules, IP literals by IP rules.
    pub fn decide(&self, target: &Target) -> Decision {
        match &target.host {
            Host::Name(name) => self.decide_name(name, target.port),
            Host::Ip(ip) => self.decide_ip(*ip, target.port),
        }
    }

    /// Decides a hostname target by name rules only.
    pub fn decide_name(&self, name: &DomainName, port: u16) -> Decision {
        match self.match_name(name, port) {
            HostMatch::Allowed(i) => Decision::allow(Reason::DomainAllowed, Some(self.rule(i))),
            HostMatch::PortOnly(i) => Decision {
                rule: Some(self.rule(i)),
                ..Decision::deny(Reason::PortNotAllowed)
            },
            HostMatch::None => Decision::deny(Reason::DomainNotAllowed),
        }
    }

    /// Decides an IP-literal target by IP rules only.
    pub fn decide_ip(&self, ip: IpAddr, port: u16) -> Decision {
        match self.match_ip(ip, port) {
            HostMatch::Allowed(i) => Decision::allow(Reason::IpAllowed, Some(self.rule(i))),
            HostMatch::PortOnly(i) => Decision {
                rule: Some(self.rule(i)),
                ..Decision::deny(Reason::PortNotAllowed)
            },
            HostMatch::None => match special::classify(ip) {
                Some(s) => Decision {
                    special: Some(s),
                    ..Decision::deny(Reason::SpecialAddress)
                },
                None => Decision::deny(Reason::IpNotAllowed),
            },
        }
    }

    /// For a name already allowed by `name_rule`: may the warden dial `ip`, one of the
    /// addresses it resolved to? Ordinary addresses are covered by the name rule; special
    /// addresses need an IP rule for that address and port. (`name_rule` is `None` only for a
    /// name let through by `--on-violation report`.)
    pub fn check_resolved(&self, ip: IpAddr, port: u16, name_rule: Option<&Arc<Rule>>) -> Decision {
        let Some(s) = special::classify(ip) else {
            return Decision::allow(Reason::DomainAllowed, name_rule.cloned());
        };
        match self.match_ip(ip, port) {
            HostMatch::Allowed(i) => Decision::allow(Reason::IpAllowed, Some(self.rule(i))),
            HostMatch::PortOnly(_) | HostMatch::None => Decision {
                special: Some(s),
                ..Decision::deny(Reason::SpecialAddress)
            },
        }
    }

    fn rule(&self, idx: u32) -> Arc<Rule> {
        self.rules[idx as usize].clone()
    }

    fn pick(&self, candidates: impl Iterator<Item = u32>, port: u16) -> HostMatch {
        let mut first_host = None;
        for idx in candidates {
            if self.rules[idx as usize].ports.contains(port) {
                return HostMatch::Allowed(idx);
            }
            first_host.get_or_insert(idx);
        }
        first_host.map_or(HostMatch::None, HostMatch::PortOnly)
    }

    fn match_name(&self, name: &DomainName, port: u16) -> HostMatch {
        let exact = self.exact.get(name.as_str()).into_iter().flatten();
        let wild = name
            .parents()
            .flat_map(|suffix| self.wildcard.get(suffix).into_iter().flatten());
        self.pick(exact.chain(wild).copied(), port)
    }

    fn match_ip(&self, ip: IpAddr, port: u16) -> HostMatch {
        // An IPv4-mapped IPv6 address is the same socket destination as its IPv4 form.
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.pick(self.v4.matches(u32::from(v4)), port),
            IpAddr::V6(v6) => self.pick(self.v6.matches(u128::from(v6)), port),
        }
    }

    /// The first name rule matching `name` on any port (for DNS, which has no port).
    pub fn name_rule(&self, name: &DomainName) -> Option<Arc<Rule>> {
        let exact = self.exact.get(name.as_str()).into_iter().flatten();
        let wild = name
            .parents()
            .flat_map(|suffix| self.wildcard.get(suffix).into_iter().flatten());
        exact.chain(wild).next().map(|&i| self.rule(i))
    }

    /// Whether an address is one a name may resolve to: an ordinary address, or a special one
    /// that an IP rule allows on some port. Used to clean DNS answers.
    pub fn answer_allowed(&self, ip: IpAddr) -> bool {
        if special::classify(ip).is_none() {
            return true;
        }
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.v4.matches(u32::from(v4)).next().is_some(),
            IpAddr::V6(v6) => self.v6.matches(u128::from(v6)).next().is_some(),
        }
    }

    /// Whether any rule carries an upload budget.
    pub fn has_rule_budgets(&self) -> bool {
        self.rules.iter().any(|r| r.max_upload.is_some())
    }
}

fn hash_rules(rules: &[Arc<Rule>]) -> String {
    let mut lines: Vec<String> = rules.iter().map(|r| r.canonical()).collect();
    lines.sort_unstable();
    lines.dedup();
    let mut h = Sha256::new();
    for line in &lines {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests;
