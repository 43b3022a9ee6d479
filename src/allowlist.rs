//! Allowlist files: the format, a strict line parser that names `file:line` and the fix, and
//! loading of files and directories. Nothing here guesses: a line is a rule or an error.
//!
//! # Format
//!
//! One rule per line; `#` starts a comment (whole line or after a rule); blank lines are ignored.
//!
//! | rule                      | allows                                                     |
//! |---------------------------|------------------------------------------------------------|
//! | `example.com`             | exactly that name                                          |
//! | `*.example.com`           | any subdomain of example.com, at any depth (not the apex)  |
//! | `203.0.113.7`, `[2001:db8::1]` | that IP address (IP-literal targets, and special addresses a name resolves to) |
//! | `10.0.0.0/8`, `2001:db8::/32` | every address in the network                           |
//!
//! Each may end in a port part: `:443`, `:8000-8999` or `:*` (any port); IPv6 with a port is
//! written in brackets: `[2001:db8::1]:443`, `[2001:db8::/32]:*`. **A rule without a port allows
//! ports 80 and 443 only.** After the rule, attributes may follow as `key=value`:
//! `max-upload=SIZE` caps the bytes sent upstream, in total over the run, through connections
//! this rule allowed (`SIZE` in bytes or with `KiB`, `MiB`, `GiB`, `TiB`).
//!
//! Names are normalised at load (case, trailing dot, IDNA → punycode). A lone `*`, a `*` that is
//! not a whole leading label, URLs, paths, user info, non-canonical IP spellings, CIDRs with host
//! bits set and IPv4-mapped IPv6 rules are errors, each reported with the fix.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::host::{DomainName, NameError, parse_port};
use crate::size::parse_size;

/// Largest allowlist file read, in bytes (a million rules fit comfortably).
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Longest line accepted.
pub const MAX_LINE_BYTES: usize = 4096;

/// Where a rule came from: `path:line`. Used in audit records and as a metric label value
/// (bounded by the policy, which the operator writes, never by the sandbox).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(Arc<str>);

impl RuleId {
    pub fn new(path: &str, line: usize) -> Self {
        Self(format!("{path}:{line}").into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RuleId({:?})", &*self.0)
    }
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this name.
    Exact(DomainName),
    /// Any proper subdomain of this name (the rule `*.example.com` stores `example.com`).
    Wildcard(DomainName),
    /// Every address in this network (a single address is a /32 or /128).
    Net(IpNet),
}

/// Which destination ports a rule allows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ports {
    /// No port written: 80 and 443.
    Web,
    /// An inclusive range (a single port is `lo == hi`).
    Range(u16, u16),
    /// `:*`
    Any,
}

impl Ports {
    pub fn contains(self, port: u16) -> bool {
        match self {
            Ports::Web => port == 80 || port == 443,
            Ports::Range(lo, hi) => (lo..=hi).contains(&port),
            Ports::Any => true,
        }
    }

    /// Human-readable list, for `check` output.
    pub fn describe(self) -> String {
        match self {
            Ports::Web => "80,443".to_owned(),
            Ports::Range(lo, hi) if lo == hi => lo.to_string(),
            Ports::Range(lo, hi) => format!("{lo}-{hi}"),
            Ports::Any => "any".to_owned(),
        }
    }
}

/// One allowlist rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: RuleId,
    pub pattern: Pattern,
    pub ports: Ports,
    /// Cap on bytes sent upstream through connections this rule allowed, over the whole run.
    pub max_upload: Option<u64>,
}

impl Rule {
    pub fn is_ip_rule(&self) -> bool {
        matches!(self.pattern, Pattern::Net(_))
    }

    /// The rule in normal form; itself a valid rule line, and what the policy hash is over.
    pub fn canonical(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        // IPv6 is bracketed when a port follows, and single addresses always (see parse).
        let bracket = match &self.pattern {
            Pattern::Net(IpNet::V6(net)) => self.ports != Ports::Web || net.prefix_len() == 128,
            _ => false,
        };
        match &self.pattern {
            Pattern::Exact(n) => out.push_str(n.as_str()),
            Pattern::Wildcard(n) => {
                out.push_str("*.");
                out.push_str(n.as_str());
            }
            Pattern::Net(net) => {
                let text = if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                };
                if bracket {
                    let _ = write!(out, "[{text}]");
                } else {
                    out.push_str(&text);
                }
            }
        }
        match self.ports {
            Ports::Web => {}
            Ports::Any => out.push_str(":*"),
            Ports::Range(lo, hi) if lo == hi => {
                let _ = write!(out, ":{lo}");
            }
            Ports::Range(lo, hi) => {
                let _ = write!(out, ":{lo}-{hi}");
            }
        }
        if let Some(n) = self.max_upload {
            let _ = write!(out, " max-upload={n}");
        }
        out
    }
}

/// A line that is not a rule, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {kind}")]
pub struct ParseError {
    pub path: String,
    pub line: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error(
        "{0:?} would allow every host; list the names you need, or a subdomain wildcard such as '*.example.com'"
    )]
    MatchesEverything(String),
    #[error(
        "{0:?}: '*' is only allowed as a whole leading label; write '*.example.com' to allow any subdomain of example.com"
    )]
    BadWildcard(String),
    #[error("{0:?} is a URL; write only the host (and port), e.g. {1:?}")]
    Url(String, String),
    #[error("{0:?} has a path; rules name hosts, not paths: write {1:?}")]
    Path(String, String),
    #[error("{0:?} has user info; write only the host, e.g. {1:?}")]
    UserInfo(String, String),
    #[error(
        "unexpected {0:?} after the rule; write one rule per line (attributes are key=value, e.g. max-upload=10MiB)"
    )]
    Trailing(String),
    #[error("{0:?} is not a valid hostname: {1}")]
    BadName(String, NameError),
    #[error(
        "{0:?} is not a canonical IP address; write it as dotted decimal (e.g. 127.0.0.1) or a CIDR"
    )]
    NonCanonicalIp(String),
    #[error(
        "invalid port {0:?}; write a port 1-65535, a range such as 8000-8999 (low-high), or '*' for any port"
    )]
    BadPort(String),
    #[error("{0:?} has host bits set; write the network address: {1:?}")]
    HostBits(String, String),
    #[error("{0:?} is not a valid IP address or CIDR")]
    BadNet(String),
    #[error(
        "IPv6 address {0:?} must be in brackets, e.g. '[2001:db8::1]' or '[2001:db8::1]:443' (only a bare network such as 2001:db8::/32 is unambiguous)"
    )]
    UnbracketedV6(String),
    #[error("{0:?} is an IPv4-mapped IPv6 address; write the IPv4 form {1:?}")]
    MappedV6(String, String),
    #[error("unknown attribute {0:?}; the only attribute is max-upload=SIZE")]
    UnknownAttribute(String),
    #[error(
        "invalid size {0:?} for max-upload; write bytes, or a number with KiB, MiB, GiB or TiB (e.g. 10MiB)"
    )]
    BadSize(String),
    #[error("line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

/// Parses the text of one allowlist file. `label` names it in rule ids and errors. Returns
/// every rule and every error (a reviewer wants all mistakes at once, not one per run).
pub fn parse_text(label: &str, text: &str) -> (Vec<Rule>, Vec<ParseError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |kind| ParseError {
            path: label.to_owned(),
            line,
            kind,
        };
        if raw.len() > MAX_LINE_BYTES {
            errors.push(err(ParseErrorKind::LineTooLong));
            continue;
        }
        let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if content.is_empty() {
            continue;
        }
        match parse_rule(content) {
            Ok((pattern, ports, max_upload)) => rules.push(Rule {
                id: RuleId::new(label, line),
                pattern,
                ports,
                max_upload,
            }),
            Err(kind) => errors.push(err(kind)),
        }
    }
    (rules, errors)
}

/// Parses one rule line (comment already removed, trimmed).
fn parse_rule(content: &str) -> Result<(Pattern, Ports, Option<u64>), ParseErrorKind> {
    let mut tokens = content.split_whitespace();
    let rule = tokens.next().unwrap_or_default();
    let mut max_upload = None;
    for attr in tokens {
        match attr.split_once('=') {
            Some(("max-upload", v)) => {
                max_upload = Some(parse_size(v).ok_or_else(|| ParseErrorKind::BadSize(v.into()))?)
            }
            Some((k, _)) => return Err(ParseErrorKind::UnknownAttribute(k.into())),
            None => return Err(ParseErrorKind::Trailing(attr.into())),
        }
    }
    let (pattern, ports) = parse_pattern_and_ports(rule)?;
    Ok((pattern, ports, max_upload))
}

fn parse_pattern_and_ports(rule: &str) -> Result<(Pattern, Ports), ParseErrorKind> {
    if let Some((scheme, rest)) = rule.split_once("://") {
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let _ = scheme;
        return Err(ParseErrorKind::Url(rule.into(), host.into()));
    }
    if let Some((_, host)) = rule.rsplit_once('@') {
        return Err(ParseErrorKind::UserInfo(rule.into(), host.into()));
    }
    // [v6] or [v6/len], optionally followed by :ports.
    if let Some(inner) = rule.strip_prefix('[') {
        let (inside, rest) = inner
            .split_once(']')
            .ok_or_else(|| ParseErrorKind::BadNet(rule.into()))?;
        let ports = match rest {
            "" => Ports::Web,
            _ => match rest.strip_prefix(':') {
                Some(p) => parse_ports(p)?,
                None => return Err(ParseErrorKind::BadNet(rule.into())),
            },
        };
        return Ok((Pattern::Net(parse_net(inside)?), ports));
    }
    // More than one colon without brackets: IPv6. A bare network (`2001:db8::/32`) is
    // unambiguous; a bare address is not (`2001:db8::1:443` may mean port 443), so it must be
    // bracketed.
    if rule.matches(':').count() > 1 {
        return match parse_net(rule) {
            Ok(net) if rule.contains('/') => Ok((Pattern::Net(net), Ports::Web)),
            Err(e @ (ParseErrorKind::HostBits(..) | ParseErrorKind::MappedV6(..))) => Err(e),
            _ => Err(ParseErrorKind::UnbracketedV6(rule.into())),
        };
    }
    let (host, ports) = match rule.split_once(':') {
        Some((h, p)) => (h, parse_ports(p)?),
        None => (rule, Ports::Web),
    };
    Ok((parse_host_pattern(host)?, ports))
}

fn parse_host_pattern(host: &str) -> Result<Pattern, ParseErrorKind> {
    if host == "*" || host == "*." {
        return Err(ParseErrorKind::MatchesEverything(host.into()));
    }
    if let Some((before, _)) = host.split_once('/') {
        // A CIDR, or a name followed by a path.
        if IpAddr::from_str(before).is_ok() {
            return parse_net(host).map(Pattern::Net);
        }
        return Err(ParseErrorKind::Path(host.into(), before.into()));
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(ParseErrorKind::BadWildcard(host.into()));
        }
        return match DomainName::parse(suffix) {
            Ok(name) => Ok(Pattern::Wildcard(name)),
            Err(e) => Err(ParseErrorKind::BadName(host.into(), e)),
        };
    }
    if host.contains('*') {
        return Err(ParseErrorKind::BadWildcard(host.into()));
    }
    if let Ok(ip) = IpAddr::from_str(host) {
        return Ok(Pattern::Net(IpNet::from(ip)));
    }
    match DomainName::parse(host) {
        Ok(name) => Ok(Pattern::Exact(name)),
        Err(NameError::NonCanonicalIp(_)) => Err(ParseErrorKind::NonCanonicalIp(host.into())),
        Err(e) => Err(ParseErrorKind::BadName(host.into(), e)),
    }
}

fn parse_net(s: &str) -> Result<IpNet, ParseErrorKind> {
    let net = if s.contains('/') {
        IpNet::from_str(s).map_err(|_| ParseErrorKind::BadNet(s.into()))?
    } else {
        IpNet::from(IpAddr::from_str(s).map_err(|_| ParseErrorKind::BadNet(s.into()))?)
    };
    if net.network() != net.addr() {
        return Err(ParseErrorKind::HostBits(s.into(), net.trunc().to_string()));
    }
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        let fix = match v6.prefix_len() {
            128 => v4.to_string(),
            len if len >= 96 => format!("{v4}/{}", len - 96),
            _ => return Err(ParseErrorKind::BadNet(s.into())),
        };
        return Err(ParseErrorKind::MappedV6(s.into(), fix));
    }
    Ok(net)
}

fn parse_ports(p: &str) -> Result<Ports, ParseErrorKind> {
    let bad = || ParseErrorKind::BadPort(p.into());
    if p == "*" {
        return Ok(Ports::Any);
    }
    match p.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (
                parse_port(lo).ok_or_else(bad)?,
                parse_port(hi).ok_or_else(bad)?,
            );
            if lo > hi {
                return Err(bad());
            }
            Ok(Ports::Range(lo, hi))
        }
        None => parse_port(p).map(|n| Ports::Range(n, n)).ok_or_else(bad),
    }
}

/// The rules of every file named, in order, and the files they came from.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub files: Vec<PathBuf>,
}

/// Why a set of allowlists could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: file is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error(
        "{path}: directory holds no *.txt allowlist (only files ending in .txt directly inside \
         are read); add one, or name the files themselves"
    )]
    EmptyDirectory { path: PathBuf },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Parse(Vec<ParseError>),
}

/// Expands each path: a directory contributes every `*.txt` directly inside it (sorted), a file
/// itself. A missing path, or a directory without a `*.txt`, is an error: a policy that
/// silently lost a file is a different policy.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        let io = |source| LoadError::Io {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io)? {
                let entry = entry.map_err(io)?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "txt") && p.is_file() {
                    found.push(p);
                }
            }
            // A directory that contributes nothing is a mistake (a ConfigMap whose keys lost
            // their .txt, a wrong mount), never a policy: it would deny everything silently.
            if found.is_empty() {
                return Err(LoadError::EmptyDirectory { path: path.clone() });
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads and parses every allowlist named (files and directories, see [`expand_paths`]).
pub fn load(paths: &[PathBuf]) -> Result<RuleSet, LoadError> {
    let files = expand_paths(paths)?;
    let mut set = RuleSet::default();
    let mut errors = Vec::new();
    for file in &files {
        let text = read_bounded(file)?;
        let (rules, errs) = parse_text(&file.display().to_string(), &text);
        set.rules.extend(rules);
        errors.extend(errs);
    }
    if !errors.is_empty() {
        return Err(LoadError::Parse(errors));
    }
    set.files = files;
    Ok(set)
}

fn read_bounded(path: &Path) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Rule, ParseErrorKind> {
        let (mut rules, mut errors) = parse_text("t.txt", line);
        match (rules.pop(), errors.pop()) {
            (Some(r), None) => Ok(r),
            (None, Some(e)) => Err(e.kind),
            other => panic!("line {line:?}: {other:?}"),
        }
    }

    #[test]
    fn valid_rules_normalise_to_their_canonical_form() {
        let cases = [
            ("example.com", "example.com", Ports::Web),
            ("Example.COM.", "example.com", Ports::Web),
            ("*.example.com", "*.example.com", Ports::Web),
            (
                "*.Bücher.example:443",
                "*.xn--bcher-kva.example:443",
                Ports::Range(443, 443),
            ),
            (
                "example.com:8000-8999",
                "example.com:8000-8999",
                Ports::Range(8000, 8999),
            ),
            ("example.com:*", "example.com:*", Ports::Any),
            ("10.0.0.0/8", "10.0.0.0/8", Ports::Web),
            (
                "10.0.0.0/8:5432",
                "10.0.0.0/8:5432",
                Ports::Range(5432, 5432),
            ),
            ("203.0.113.7:*", "203.0.113.7:*", Ports::Any),
            ("2001:db8::/32", "2001:db8::/32", Ports::Web),
            ("[2001:db8::1]", "[2001:db8::1]", Ports::Web),
            (
                "[2001:DB8::1]:443",
                "[2001:db8::1]:443",
                Ports::Range(443, 443),
            ),
            ("[2001:db8::/32]:*", "[2001:db8::/32]:*", Ports::Any),
            (
                "uploads.example.com max-upload=10MiB",
                "uploads.example.com max-upload=10485760",
                Ports::Web,
            ),
            ("  pypi.org   # the index", "pypi.org", Ports::Web),
        ];
        assert!(!cases.is_empty());
        for (line, canonical, ports) in cases {
            let rule = one(line).unwrap_or_else(|e| panic!("line {line:?}: {e}"));
            assert_eq!(rule.canonical(), canonical, "line {line:?}");
            assert_eq!(rule.ports, ports, "line {line:?}");
            // The canonical form parses back to the same rule.
            let again = one(&rule.canonical()).unwrap();
            assert_eq!(again.pattern, rule.pattern, "line {line:?}");
        }
    }

    #[test]
    fn invalid_rules_fail_with_a_fix() {
        use ParseErrorKind as K;
        type Case = (&'static str, fn(&K) -> bool, &'static str);
        let cases: &[Case] = &[
            (
                "*",
                |k| matches!(k, K::MatchesEverything(_)),
                "would allow every host",
            ),
            (
                "*.",
                |k| matches!(k, K::MatchesEverything(_)),
                "would allow every host",
            ),
            (
                "*:443",
                |k| matches!(k, K::MatchesEverything(_)),
                "would allow every host",
            ),
            (
                "foo*.com",
                |k| matches!(k, K::BadWildcard(_)),
                "whole leading label",
            ),
            (
                "a.*.com",
                |k| matches!(k, K::BadWildcard(_)),
                "whole leading label",
            ),
            (
                "foo.*",
                |k| matches!(k, K::BadWildcard(_)),
                "whole leading label",
            ),
            (
                "*.*.com",
                |k| matches!(k, K::BadWildcard(_)),
                "whole leading label",
            ),
            (
                "https://example.com/simple",
                |k| matches!(k, K::Url(_, h) if h == "example.com"),
                "\"example.com\"",
            ),
            (
                "example.com/simple",
                |k| matches!(k, K::Path(_, h) if h == "example.com"),
                "rules name hosts",
            ),
            (
                "user@example.com",
                |k| matches!(k, K::UserInfo(_, h) if h == "example.com"),
                "user info",
            ),
            (
                "foo bar.com",
                |k| matches!(k, K::Trailing(t) if t == "bar.com"),
                "one rule per line",
            ),
            (
                "ex_ample!.com",
                |k| matches!(k, K::BadName(..)),
                "not a valid hostname",
            ),
            (
                "0177.0.0.1",
                |k| matches!(k, K::NonCanonicalIp(_)),
                "dotted decimal",
            ),
            (
                "2130706433",
                |k| matches!(k, K::NonCanonicalIp(_)),
                "dotted decimal",
            ),
            ("example.com:0", |k| matches!(k, K::BadPort(_)), "1-65535"),
            (
                "example.com:70000",
                |k| matches!(k, K::BadPort(_)),
                "1-65535",
            ),
            (
                "example.com:9-1",
                |k| matches!(k, K::BadPort(_)),
                "low-high",
            ),
            ("example.com:", |k| matches!(k, K::BadPort(_)), "1-65535"),
            (
                "10.0.0.1/8",
                |k| matches!(k, K::HostBits(_, f) if f == "10.0.0.0/8"),
                "\"10.0.0.0/8\"",
            ),
            (
                "10.0.0.0/33",
                |k| matches!(k, K::BadNet(_)),
                "not a valid IP",
            ),
            (
                "2001:db8::1:443",
                |k| matches!(k, K::UnbracketedV6(_)),
                "in brackets",
            ),
            (
                "2001:db8::1",
                |k| matches!(k, K::UnbracketedV6(_)),
                "in brackets",
            ),
            (
                "2001:db8::zz",
                |k| matches!(k, K::UnbracketedV6(_)),
                "in brackets",
            ),
            (
                "[::ffff:10.0.0.1]",
                |k| matches!(k, K::MappedV6(_, f) if f == "10.0.0.1"),
                "IPv4 form",
            ),
            (
                "example.com colour=red",
                |k| matches!(k, K::UnknownAttribute(_)),
                "max-upload",
            ),
            (
                "example.com max-upload=10MB",
                |k| matches!(k, K::BadSize(_)),
                "MiB",
            ),
        ];
        assert!(!cases.is_empty());
        for (line, is_expected, text) in cases {
            let err = one(line).expect_err(line);
            assert!(is_expected(&err), "line {line:?}: got {err:?}");
            assert!(
                err.to_string().contains(text),
                "line {line:?}: message {err} lacks {text:?}"
            );
        }
    }

    #[test]
    fn errors_carry_file_and_line_and_all_are_reported() {
        let text = "# header\nok.example\n*\n\nfoo.*\n";
        let (rules, errors) = parse_text("allowlists/x.txt", text);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].id.as_str(), "allowlists/x.txt:2");
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 5]);
        assert!(errors[0].to_string().starts_with("allowlists/x.txt:3: "));
    }

    #[test]
    fn every_shipped_allowlist_loads_and_says_what_it_enables() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("allowlists");
        let files = expand_paths(std::slice::from_ref(&dir)).unwrap();
        assert!(
            files.len() >= 7,
            "too few shipped allowlists in {}: {files:?}",
            dir.display()
        );
        for file in &files {
            let set = load(std::slice::from_ref(file)).unwrap_or_else(|e| panic!("{e}"));
            assert!(!set.rules.is_empty(), "{} has no rules", file.display());
            let text = std::fs::read_to_string(file).unwrap();
            assert!(
                text.starts_with("# "),
                "{} lacks a header comment",
                file.display()
            );
        }
    }

    #[test]
    fn arbitrary_input_is_a_rule_or_an_error_never_a_panic() {
        // A small deterministic generator over the characters rules are made of.
        let alphabet: Vec<char> = "*.:/-_[]@# \t0123456789abcdefxyzABCDEF%üß=max-upload=MiB"
            .chars()
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let line: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let (rules, errors) = parse_text("fuzz.txt", &line);
            assert!(rules.len() + errors.len() <= 1, "{line:?}");
            for rule in rules {
                // Whatever parses has a canonical form that parses back to the same rule.
                let (again, errs) = parse_text("fuzz.txt", &rule.canonical());
                assert!(
                    errs.is_empty(),
                    "{line:?} -> {:?}: {errs:?}",
                    rule.canonical()
                );
                assert_eq!(again[0].pattern, rule.pattern, "{line:?}");
                assert_eq!(again[0].ports, rule.ports, "{line:?}");
            }
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let line = format!("{}.com", "a".repeat(MAX_LINE_BYTES));
        assert_eq!(one(&line), Err(ParseErrorKind::LineTooLong));
    }

    #[test]
    fn load_reads_directories_of_txt_files_and_reports_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "b.example\n").unwrap();
        std::fs::write(dir.path().join("a.txt"), "a.example\n").unwrap();
        std::fs::write(dir.path().join("notes.md"), "not a rule file\n").unwrap();
        let set = load(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> = set.rules.iter().map(Rule::canonical).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert_eq!(set.files.len(), 2);
        let missing = load(&[dir.path().join("nope.txt")]).unwrap_err();
        assert!(missing.to_string().contains("nope.txt"), "{missing}");
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("pypi.yaml"), "pypi.org\n").unwrap();
        let err = load(&[empty.path().to_owned()]).unwrap_err();
        assert!(matches!(err, LoadError::EmptyDirectory { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&empty.path().display().to_string()) && text.contains("*.txt"),
            "{text}"
        );
    }
}
