//! Hostnames and targets as a sandbox names them, normalised in one place so that every
//! listener, the allowlist loader and the policy compare exactly the same strings.
//!
//! Normal form of a name: ASCII (IDNA/UTS-46 → punycode), lower case, no trailing dot, labels
//! of 1–63 characters from `[a-z0-9_-]` not starting or ending with `-`, at most 253 bytes.
//! A name whose last label is numeric (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) is a
//! non-canonical spelling of an IP address, never a hostname: resolvers and URL parsers
//! disagree on what it means, so it is refused outright.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

/// Longest hostname accepted, in bytes (RFC 1035 presentation form without the root dot).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label accepted, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a string is not a hostname in normal form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label {0:?} is longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong(String),
    #[error("label {0:?} starts or ends with '-'")]
    HyphenEdge(String),
    #[error("character {0:?} is not allowed in a hostname")]
    BadChar(char),
    #[error("not a valid internationalised name (IDNA)")]
    Idna,
    #[error("{0:?} is a non-canonical spelling of an IP address, not a hostname")]
    NonCanonicalIp(String),
}

/// A hostname in normal form (see the module docs). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(Arc<str>);

impl DomainName {
    /// Normalises `input` (case, one trailing dot, IDNA) and validates the result.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        let ascii: String = if trimmed.is_ascii() && !has_ace_label(trimmed) {
            trimmed.to_ascii_lowercase()
        } else {
            // UTS-46 processing maps, lower-cases and punycode-encodes; for names that already
            // hold `xn--` labels it also checks that they decode to a valid name.
            let out = idna::domain_to_ascii(trimmed).map_err(|_| NameError::Idna)?;
            if out.is_empty() {
                return Err(NameError::Idna);
            }
            out
        };
        validate_ascii(&ascii)?;
        Ok(Self(ascii.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The proper parent suffixes, nearest first: `a.b.c` yields `b.c`, then `c`.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        let s = self.as_str();
        s.match_indices('.').map(move |(i, _)| &s[i + 1..])
    }
}

fn has_ace_label(s: &str) -> bool {
    s.split('.')
        .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"))
}

fn validate_ascii(s: &str) -> Result<(), NameError> {
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let mut last = "";
    for label in s.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong(label.to_owned()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(NameError::BadChar(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::HyphenEdge(label.to_owned()));
        }
        last = label;
    }
    // WHATWG URL "ends in a number": such a host is parsed as an IPv4 address by browsers and
    // by inet_aton(), so treating it as a name would let the two sides disagree.
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() >= 2
            && last[..2].eq_ignore_ascii_case("0x")
            && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(NameError::NonCanonicalIp(s.to_owned()));
    }
    Ok(())
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({:?})", &*self.0)
    }
}

impl FromStr for DomainName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a host or authority string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0:?} is not a valid IPv6 address")]
    BadIpv6(String),
    #[error("IPv6 zone ids are not allowed ({0:?})")]
    ZoneId(String),
    #[error("missing port in {0:?}")]
    MissingPort(String),
    #[error("invalid port in {0:?}")]
    BadPort(String),
}

impl HostError {
    /// True when the host was a non-canonical IP spelling (its own denial reason).
    pub fn is_noncanonical_ip(&self) -> bool {
        matches!(
            self,
            Self::Name(NameError::NonCanonicalIp(_)) | Self::ZoneId(_)
        )
    }
}

/// What a sandbox asked to reach: a name, or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(DomainName),
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as written in a URI authority or a CONNECT line: `[v6]`, canonical
    /// dotted-quad IPv4, or a hostname. Bare IPv6 (no brackets) is accepted too, as SOCKS
    /// clients and some tools write it.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| HostError::BadIpv6(s.to_owned()))?;
            return parse_v6(inner).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        if s.contains(':') {
            return parse_v6(s).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        // std's parser accepts only the canonical dotted-quad form (no octal, hex or short forms).
        if let Ok(v4) = Ipv4Addr::from_str(s) {
            return Ok(Host::Ip(IpAddr::V4(v4)));
        }
        Ok(Host::Name(DomainName::parse(s)?))
    }

    /// The host as written in an authority: names as they are, IPv6 in brackets.
    pub fn to_authority_host(&self) -> String {
        match self {
            Host::Name(n) => n.to_string(),
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        }
    }
}

fn parse_v6(s: &str) -> Result<Ipv6Addr, HostError> {
    if s.contains('%') {
        return Err(HostError::ZoneId(s.to_owned()));
    }
    Ipv6Addr::from_str(s).map_err(|_| HostError::BadIpv6(s.to_owned()))
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n.as_str()),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A host and port a sandbox asked to reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    pub fn new(host: Host, port: u16) -> Self {
        Self { host, port }
    }

    /// Parses `host:port` (port required, as in a CONNECT request line).
    pub fn parse_authority(s: &str) -> Result<Self, HostError> {
        let (host, port) = split_host_port(s)?;
        let port = port.ok_or_else(|| HostError::MissingPort(s.to_owned()))?;
        Ok(Self::new(Host::parse(host)?, port))
    }

    /// Parses `host[:port]`, using `default_port` when none is written.
    pub fn parse_authority_or(s: &str, default_port: u16) -> Result<Self, HostError> {
        let (host, port) = split_host_port(s)?;
        Ok(Self::new(Host::parse(host)?, port.unwrap_or(default_port)))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.to_authority_host(), self.port)
    }
}

/// Splits `host[:port]`, keeping IPv6 brackets on the host part.
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), HostError> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => {
                let rest = &s[end + 1..];
                match rest.strip_prefix(':') {
                    Some(p) => (&s[..=end], Some(p)),
                    None if rest.is_empty() => (&s[..=end], None),
                    None => return Err(HostError::BadIpv6(s.to_owned())),
                }
            }
            None => return Err(HostError::BadIpv6(s.to_owned())),
        }
    } else {
        match s.rsplit_once(':') {
            // More than one colon without brackets: a bare IPv6 address, no port.
            Some((h, _)) if h.contains(':') => (s, None),
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(parse_port(p).ok_or_else(|| HostError::BadPort(s.to_owned()))?),
        None => None,
    };
    Ok((host, port))
}

/// A port as written in a URI: 1–5 ASCII digits, 1..=65535.
pub fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_or_fail_with_the_right_error() {
        struct Case {
            input: &'static str,
            want: Result<&'static str, NameError>,
        }
        let long_label = "a".repeat(64);
        let cases = [
            Case {
                input: "Example.COM",
                want: Ok("example.com"),
            },
            Case {
                input: "example.com.",
                want: Ok("example.com"),
            },
            Case {
                input: "bücher.example",
                want: Ok("xn--bcher-kva.example"),
            },
            Case {
                input: "XN--BCHER-KVA.example",
                want: Ok("xn--bcher-kva.example"),
            },
            Case {
                input: "🔐.example.com",
                want: Ok("xn--jv8h.example.com"),
            },
            Case {
                input: "_acme.example.com",
                want: Ok("_acme.example.com"),
            },
            Case {
                input: "r3---sn.example.com",
                want: Ok("r3---sn.example.com"),
            },
            Case {
                input: "1password.com",
                want: Ok("1password.com"),
            },
            Case {
                input: "",
                want: Err(NameError::Empty),
            },
            Case {
                input: ".",
                want: Err(NameError::Empty),
            },
            Case {
                input: "example..com",
                want: Err(NameError::EmptyLabel),
            },
            Case {
                input: "example.com..",
                want: Err(NameError::EmptyLabel),
            },
            Case {
                input: ".example.com",
                want: Err(NameError::EmptyLabel),
            },
            Case {
                input: "-bad.com",
                want: Err(NameError::HyphenEdge("-bad".into())),
            },
            Case {
                input: "bad-.com",
                want: Err(NameError::HyphenEdge("bad-".into())),
            },
            Case {
                input: "ex ample.com",
                want: Err(NameError::BadChar(' ')),
            },
            Case {
                input: "ex/ample.com",
                want: Err(NameError::BadChar('/')),
            },
            Case {
                input: "user@example.com",
                want: Err(NameError::BadChar('@')),
            },
            Case {
                input: "xn--zz.example",
                want: Err(NameError::Idna),
            },
            Case {
                input: "2130706433",
                want: Err(NameError::NonCanonicalIp("2130706433".into())),
            },
            Case {
                input: "0177.0.0.1",
                want: Err(NameError::NonCanonicalIp("0177.0.0.1".into())),
            },
            Case {
                input: "0x7f.0.0.1",
                want: Err(NameError::NonCanonicalIp("0x7f.0.0.1".into())),
            },
            Case {
                input: "127.1",
                want: Err(NameError::NonCanonicalIp("127.1".into())),
            },
            Case {
                input: "example.0x1F",
                want: Err(NameError::NonCanonicalIp("example.0x1f".into())),
            },
        ];
        assert!(!cases.is_empty());
        for c in cases {
            let got = DomainName::parse(c.input);
            match (&got, &c.want) {
                (Ok(n), Ok(w)) => assert_eq!(n.as_str(), *w, "input {:?}", c.input),
                (Err(e), Err(w)) => assert_eq!(e, w, "input {:?}", c.input),
                _ => panic!("input {:?}: got {got:?}, want {:?}", c.input, c.want),
            }
        }
        assert_eq!(
            DomainName::parse(&format!("{long_label}.com")),
            Err(NameError::LabelTooLong(long_label))
        );
        let too_long = vec!["a".repeat(63); 4].join(".") + ".com";
        assert_eq!(DomainName::parse(&too_long), Err(NameError::TooLong));
    }

    #[test]
    fn parents_lists_proper_suffixes_nearest_first() {
        let n = DomainName::parse("a.b.example.com").unwrap();
        assert_eq!(
            n.parents().collect::<Vec<_>>(),
            ["b.example.com", "example.com", "com"]
        );
        assert_eq!(DomainName::parse("com").unwrap().parents().count(), 0);
    }

    #[test]
    fn hosts_parse_ips_only_in_canonical_form() {
        let ok = [
            ("10.0.0.1", "10.0.0.1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
            ("Example.com", "example.com"),
        ];
        for (input, want) in ok {
            assert_eq!(
                Host::parse(input).unwrap().to_string(),
                want,
                "input {input:?}"
            );
        }
        let noncanonical = [
            "010.0.0.1",
            "127.1",
            "2130706433",
            "0x7f000001",
            "[fe80::1%eth0]",
        ];
        for input in noncanonical {
            let err = Host::parse(input).unwrap_err();
            assert!(err.is_noncanonical_ip(), "input {input:?}: {err:?}");
        }
        let bad = ["[::1", "[zz::1]", "1.2.3.4.5.6:"];
        for input in bad {
            assert!(Host::parse(input).is_err(), "input {input:?}");
        }
    }

    #[test]
    fn authorities_split_host_and_port() {
        let cases = [
            ("example.com:443", Some("example.com:443")),
            ("[2001:db8::1]:8443", Some("[2001:db8::1]:8443")),
            ("10.1.2.3:80", Some("10.1.2.3:80")),
            ("example.com", None),
            ("example.com:0", None),
            ("example.com:65536", None),
            ("example.com:+80", None),
            ("example.com:", None),
            ("[::1]x:80", None),
        ];
        for (input, want) in cases {
            let got = Target::parse_authority(input).ok().map(|t| t.to_string());
            assert_eq!(got.as_deref(), want, "input {input:?}");
        }
        assert_eq!(
            Target::parse_authority_or("example.com", 80)
                .unwrap()
                .to_string(),
            "example.com:80"
        );
    }
}
