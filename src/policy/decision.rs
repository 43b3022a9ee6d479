//! The vocabulary of a decision: verdict, a closed set of reasons, and the rule that allowed it.
//! Reason strings are shared by metrics labels and audit records, so the two always agree.

use std::sync::Arc;

use crate::allowlist::Rule;
use crate::policy::special::Special;

/// What the policy says about one attempt.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why. A closed set: metric label values come from here and nowhere else.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A name rule matched the host and port (and every dialled address passed).
    DomainAllowed,
    /// An IP rule matched the address and port.
    IpAllowed,
    /// No name rule matches the host.
    DomainNotAllowed,
    /// An IP-literal target that no IP rule matches.
    IpNotAllowed,
    /// A loopback/private/link-local/… address (or an IPv6 form embedding one) without an IP rule.
    SpecialAddress,
    /// A rule matches the host but not the port.
    PortNotAllowed,
    /// A decimal, octal, hex, shortened or zone-id spelling of an IP address.
    NoncanonicalIp,
    /// The allowed name did not resolve (or the resolver failed): fail closed.
    ResolveFailed,
    /// The request could not be parsed or violates the protocol.
    MalformedRequest,
    /// A Host header (or tunnelled HTTP Host) names a different host than the request target.
    HostMismatch,
    /// A TLS ClientHello names a different server (SNI) than the tunnel target.
    SniMismatch,
    /// A TLS ClientHello to a named target carries no SNI.
    SniMissing,
    /// A tunnel's first flight started a TLS handshake that was malformed, too large or too slow.
    SniffFailed,
    /// An upload budget (per run or per rule) would be exceeded.
    UploadBudgetExceeded,
    /// A request the warden does not carry (SOCKS BIND/UDP ASSOCIATE, `https://` in plain HTTP).
    UnsupportedRequest,
    /// The cap on concurrent connections was reached.
    ConnectionLimit,
    /// The run was already terminated by a violation.
    RunTerminated,
    /// A DNS query of a type the DNS listener does not answer (TXT, PTR, ANY, … by default).
    DnsTypeNotAllowed,
    /// The run's DNS query rate limit was exceeded.
    DnsRateLimited,
    /// A transparent connection with no usable name (no SNI/Host, ECH) to an address no IP
    /// rule allows; or a connection to the transparent listener that was not redirected.
    NoHostname,
    /// The audit log cannot take more lines (its disk is full, or a write failed): the run is
    /// ending, and nothing is allowed that could go unrecorded.
    AuditUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 21] = [
        Reason::DomainAllowed,
        Reason::IpAllowed,
        Reason::DomainNotAllowed,
        Reason::IpNotAllowed,
        Reason::SpecialAddress,
        Reason::PortNotAllowed,
        Reason::NoncanonicalIp,
        Reason::ResolveFailed,
        Reason::MalformedRequest,
        Reason::HostMismatch,
        Reason::SniMismatch,
        Reason::SniMissing,
        Reason::SniffFailed,
        Reason::UploadBudgetExceeded,
        Reason::UnsupportedRequest,
        Reason::ConnectionLimit,
        Reason::RunTerminated,
        Reason::DnsTypeNotAllowed,
        Reason::DnsRateLimited,
        Reason::NoHostname,
        Reason::AuditUnavailable,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::DomainAllowed => "domain_allowed",
            Reason::IpAllowed => "ip_allowed",
            Reason::DomainNotAllowed => "domain_not_allowed",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::SpecialAddress => "special_address",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::NoncanonicalIp => "noncanonical_ip",
            Reason::ResolveFailed => "resolve_failed",
            Reason::MalformedRequest => "malformed_request",
            Reason::HostMismatch => "host_mismatch",
            Reason::SniMismatch => "sni_mismatch",
            Reason::SniMissing => "sni_missing",
            Reason::SniffFailed => "sniff_failed",
            Reason::UploadBudgetExceeded => "upload_budget_exceeded",
            Reason::UnsupportedRequest => "unsupported_request",
            Reason::ConnectionLimit => "connection_limit",
            Reason::RunTerminated => "run_terminated",
            Reason::DnsTypeNotAllowed => "dns_type_not_allowed",
            Reason::DnsRateLimited => "dns_rate_limited",
            Reason::NoHostname => "no_hostname",
            Reason::AuditUnavailable => "audit_unavailable",
        }
    }

    /// Whether a denial for this reason is a *violation* (the sandbox tried to go where the
    /// policy forbids), which `--on-violation` acts on. Denials that say nothing about the
    /// sandbox's intent (a DNS outage, a full connection table, a run already over) are not.
    /// Protocol errors count only when the operator asks (`--malformed-is-violation`).
    pub const fn is_violation(self, malformed_counts: bool) -> bool {
        match self {
            Reason::DomainNotAllowed
            | Reason::IpNotAllowed
            | Reason::SpecialAddress
            | Reason::PortNotAllowed
            | Reason::NoncanonicalIp
            | Reason::HostMismatch
            | Reason::SniMismatch
            | Reason::SniMissing
            | Reason::UploadBudgetExceeded
            | Reason::NoHostname
            | Reason::DnsTypeNotAllowed => true,
            Reason::MalformedRequest | Reason::SniffFailed | Reason::UnsupportedRequest => {
                malformed_counts
            }
            Reason::DomainAllowed
            | Reason::IpAllowed
            | Reason::ResolveFailed
            | Reason::ConnectionLimit
            | Reason::RunTerminated
            | Reason::DnsRateLimited
            | Reason::AuditUnavailable => false,
        }
    }
}

/// The outcome of one policy question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The rule that allowed (or, for `port_not_allowed`, matched the host of) the attempt.
    pub rule: Option<Arc<Rule>>,
    /// For `special_address`: which range.
    pub special: Option<Special>,
}

impl Decision {
    pub fn allow(reason: Reason, rule: Option<Arc<Rule>>) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason,
            rule,
            special: None,
        }
    }

    pub fn deny(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Deny,
            reason,
            rule: None,
            special: None,
        }
    }

    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "duplicate {s}");
        }
        assert_eq!(seen.len(), Reason::ALL.len());
    }

    #[test]
    fn allow_reasons_are_never_violations() {
        for flag in [false, true] {
            assert!(!Reason::DomainAllowed.is_violation(flag));
            assert!(!Reason::IpAllowed.is_violation(flag));
            assert!(!Reason::ResolveFailed.is_violation(flag));
        }
        assert!(!Reason::MalformedRequest.is_violation(false));
        assert!(Reason::MalformedRequest.is_violation(true));
        assert!(Reason::SniMismatch.is_violation(false));
    }
}
