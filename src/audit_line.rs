//! Decision records written as JSON lines by hand: one is written per connection and per
//! HTTP request, and serde spent a seventh of a keep-alive request's user-space instructions
//! on it (escaping every key, formatting every number and address). Keys are fixed bytes,
//! strings are copied whole unless they need escaping, and a test keeps the text identical to
//! serde_json's for the same record. The timestamp and an address target's text, also made
//! once per line, are written without `fmt` too, and tested against humantime and `Display`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::audit::DecisionRecord;

impl DecisionRecord<'_> {
    /// The record as one JSON line (with its newline), as `serde_json` would write it.
    pub fn to_line(&self) -> Vec<u8> {
        // Sized for a typical decision line, so writing does not grow the buffer.
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"schema\":");
        number(&mut out, u64::from(self.schema));
        out.extend_from_slice(b",\"event\":");
        string(&mut out, self.event);
        out.extend_from_slice(b",\"ts\":");
        string(&mut out, &self.ts);
        out.extend_from_slice(b",\"run_id\":");
        string(&mut out, self.run_id);
        out.extend_from_slice(b",\"listener\":");
        string(&mut out, self.listener);
        out.extend_from_slice(b",\"client\":");
        nullable(&mut out, self.client, socket_addr);
        out.extend_from_slice(b",\"host\":");
        nullable(&mut out, self.host.as_deref(), string);
        out.extend_from_slice(b",\"port\":");
        nullable(&mut out, self.port.map(u64::from), number);
        out.extend_from_slice(b",\"ip\":");
        nullable(&mut out, self.ip, ip_addr);
        out.extend_from_slice(b",\"verdict\":");
        string(&mut out, self.verdict);
        out.extend_from_slice(b",\"reason\":");
        string(&mut out, self.reason);
        out.extend_from_slice(b",\"rule\":");
        nullable(&mut out, self.rule, string);
        out.extend_from_slice(b",\"bytes_up\":");
        number(&mut out, self.bytes_up);
        out.extend_from_slice(b",\"bytes_down\":");
        number(&mut out, self.bytes_down);
        out.extend_from_slice(b",\"duration_ms\":");
        number(&mut out, self.duration_ms);
        if let Some(method) = &self.method {
            out.extend_from_slice(b",\"method\":");
            string(&mut out, method);
        }
        if let Some(detail) = &self.detail {
            out.extend_from_slice(b",\"detail\":");
            string(&mut out, detail);
        }
        if let Some(error) = self.error {
            out.extend_from_slice(b",\"error\":");
            string(&mut out, error);
        }
        out.extend_from_slice(if self.violation {
            b",\"violation\":true}\n"
        } else {
            b",\"violation\":false}\n"
        });
        out
    }
}

/// `value` written by `write`, or `null` (how serde writes an `Option` it does not skip).
fn nullable<T>(out: &mut Vec<u8>, value: Option<T>, write: fn(&mut Vec<u8>, T)) {
    match value {
        Some(v) => write(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string, escaped as serde_json escapes it: `"` and `\`, the short forms for
/// backspace, form feed, newline, return and tab, `\u00XX` for other control characters;
/// everything else (DEL and non-ASCII UTF-8 included) as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string needs no escaping: one branch-free pass (which the compiler
    // vectorises) decides, and the string is copied whole.
    let special = bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !special {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn ip_addr(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => ipv4(out, v4.octets()),
        IpAddr::V6(_) => display(out, ip),
    }
    out.push(b'"');
}

fn socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    out.push(b'"');
    match addr {
        SocketAddr::V4(v4) => {
            ipv4(out, v4.ip().octets());
            out.push(b':');
            number(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => display(out, addr),
    }
    out.push(b'"');
}

/// An address's text as `Display` writes it, IPv4 without `fmt`: a target that is an address
/// is recorded this way for every request to it.
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            ipv4(&mut out, v4.octets());
            String::from_utf8(out).unwrap_or_default()
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds (`2023-11-14T22:13:20.123Z`), the text
/// humantime writes, without `fmt`. A clock outside 1970..=9999 (where humantime would fail,
/// and `to_string` panic) is written as the nearest end of that range.
pub fn rfc3339_millis(t: SystemTime) -> String {
    const LAST: Duration = Duration::from_millis(253_402_300_799_999); // 9999-12-31T23:59:59.999Z
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default().min(LAST);
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let fields: [(u64, usize); 7] = [
        (year, 4),
        (month, 2),
        (day, 2),
        (of_day / 3600, 2),
        (of_day / 60 % 60, 2),
        (of_day % 60, 2),
        (u64::from(since.subsec_millis()), 3),
    ];
    let mut out = Vec::with_capacity(24);
    for ((value, width), sep) in fields
        .into_iter()
        .zip([b'-', b'-', b'T', b':', b':', b'.', b'Z'])
    {
        let mut digits = [b'0'; 4];
        let mut v = value;
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&digits[..width]);
        out.push(sep);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        number(out, u64::from(o));
    }
}

/// An address through its `Display`, which never writes a character JSON must escape.
fn display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    let mut text = String::with_capacity(64);
    let _ = write!(text, "{value}");
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::SCHEMA;

    fn record<'a>(run_id: &'a str, rule: Option<&'a str>) -> DecisionRecord<'a> {
        DecisionRecord {
            schema: SCHEMA,
            event: "decision",
            ts: "2026-11-24T18:06:00.123Z".into(),
            run_id,
            listener: "http",
            client: Some("127.0.0.1:54321".parse().unwrap()),
            host: Some("pypi.org".into()),
            port: Some(443),
            ip: Some("151.101.0.223".parse().unwrap()),
            verdict: "allow",
            reason: "allowed",
            rule,
            bytes_up: 0,
            bytes_down: u64::MAX,
            duration_ms: 1234,
            method: Some("CONNECT".into()),
            detail: None,
            error: None,
            violation: false,
        }
    }

    #[test]
    fn address_text_is_what_display_writes() {
        let cases = [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.40",
            "255.255.255.255",
            "::1",
            "2001:db8::ff00:42:8329",
            "::ffff:10.0.0.1",
        ];
        assert!(!cases.is_empty());
        for text in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string(), "{text}");
        }
    }

    #[test]
    fn timestamps_are_the_text_humantime_writes() {
        let ms = |n: u64| UNIX_EPOCH + Duration::from_millis(n);
        let mut cases = vec![
            ms(0),
            ms(1_700_000_000_123),
            ms(951_782_400_000), // 2000-02-29, a leap day of a century leap year
            ms(4_107_542_400_000), // 2100-03-01, after a century that is not a leap year
            ms(253_402_300_799_999), // 9999-12-31T23:59:59.999, the last humantime writes
        ];
        // And a day's worth of steps through many years.
        let mut n: u64 = 12_345;
        for _ in 0..5000 {
            n = n
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            cases.push(ms(n % 253_402_300_800_000));
        }
        assert!(!cases.is_empty());
        for t in cases {
            assert_eq!(
                rfc3339_millis(t),
                humantime::format_rfc3339_millis(t).to_string(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn a_clock_outside_what_rfc3339_can_say_is_clamped_not_a_panic() {
        let cases = [
            (
                UNIX_EPOCH - Duration::from_secs(1),
                "1970-01-01T00:00:00.000Z",
            ),
            (
                UNIX_EPOCH + Duration::from_secs(253_402_300_800 * 2),
                "9999-12-31T23:59:59.999Z",
            ),
        ];
        assert!(!cases.is_empty());
        for (t, want) in cases {
            assert_eq!(rfc3339_millis(t), want);
        }
    }

    #[test]
    fn lines_are_the_text_serde_json_writes() {
        let nasty = "q\"b\\s/\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1b}\u{1f} \u{7f}é😀\u{2028}";
        let cases: Vec<(&str, DecisionRecord<'_>)> = vec![
            ("typical", record("run-1", Some("allowlists/pypi.txt:7"))),
            ("nothing known", {
                let mut r = record("r", None);
                (r.client, r.host, r.port, r.ip) = (None, None, None, None);
                (r.bytes_down, r.duration_ms, r.method) = (0, 0, None);
                r
            }),
            ("escapes everywhere", {
                let mut r = record(nasty, Some(nasty));
                r.host = Some(nasty.into());
                r.method = Some(nasty.into());
                r.detail = Some(nasty.into());
                r
            }),
            ("ipv6 and a refusal", {
                let mut r = record("run", None);
                r.client = Some("[fe80::1%7]:65535".parse().unwrap());
                r.ip = Some("2001:db8::ff00:42:8329".parse().unwrap());
                (r.verdict, r.reason) = ("deny", "ip_not_allowed");
                r.detail = Some("link_local 169.254.169.254".into());
                r.error = Some("connect_refused");
                r.violation = true;
                r
            }),
            ("edge numbers", {
                let mut r = record("run", None);
                r.client = Some("0.0.0.0:0".parse().unwrap());
                r.ip = Some("255.255.255.255".parse().unwrap());
                (r.port, r.bytes_up, r.bytes_down) = (Some(u16::MAX), 9, 10);
                r
            }),
        ];
        assert!(!cases.is_empty());
        for (name, r) in &cases {
            let mut want = serde_json::to_vec(r).unwrap();
            want.push(b'\n');
            assert_eq!(
                String::from_utf8(r.to_line()).unwrap(),
                String::from_utf8(want).unwrap(),
                "{name}"
            );
        }
    }
}
