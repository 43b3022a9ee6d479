//! The run summary (`--summary-file`): per destination host, connections and bytes, and every
//! violation, with the policy hash — the record a reviewer can gate a merge on. Bounded: past
//! [`MAX_HOSTS`] hosts the rest are folded into one `other_hosts` entry, and past
//! [`MAX_VIOLATIONS`] violations only the count grows.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

pub const MAX_HOSTS: usize = 10_000;
pub const MAX_VIOLATIONS: usize = 1_000;

/// Traffic to one destination host.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HostStats {
    pub connections: u64,
    pub allowed: u64,
    pub denied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Queries for this name through the capture DNS listener, counted apart from
    /// connections (a resolver's retries and search list make many per lookup).
    pub dns_queries: u64,
    /// Of those, the ones refused.
    pub dns_refused: u64,
}

/// One violation, as listed in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct ViolationEntry {
    pub ts: String,
    pub listener: &'static str,
    pub client: Option<SocketAddr>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub ip: Option<IpAddr>,
    pub reason: &'static str,
    /// `deny` or `report`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    hosts: BTreeMap<String, HostStats>,
    other: HostStats,
    violations: Vec<ViolationEntry>,
    violations_total: u64,
}

impl Inner {
    /// The entry for `host`, or `other_hosts` once [`MAX_HOSTS`] are listed.
    fn stats(&mut self, host: &str) -> &mut HostStats {
        let full = self.hosts.len() >= MAX_HOSTS && !self.hosts.contains_key(host);
        if full {
            &mut self.other
        } else if self.hosts.contains_key(host) {
            self.hosts.get_mut(host).expect("present")
        } else {
            self.hosts.entry(host.to_owned()).or_default()
        }
    }
}

/// Accumulates the run's traffic for the summary file.
#[derive(Debug, Default)]
pub struct Summary {
    inner: Mutex<Inner>,
}

/// Everything about the run itself that goes at the top of the summary.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub schema: u32,
    pub run_id: String,
    pub version: &'static str,
    pub started: String,
    pub ended: String,
    /// `shutdown`, `terminated`, `exited` (the `run` child exited) or `failed`.
    pub outcome: &'static str,
    pub exit_code: i32,
    pub action: &'static str,
    pub policy_sha256: String,
    pub allowlists: Vec<String>,
    /// The terminating signal and its sender, when one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<crate::signals::Origin>,
}

#[derive(Serialize)]
struct File<'a> {
    #[serde(flatten)]
    run: &'a RunInfo,
    hosts: &'a BTreeMap<String, HostStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    other_hosts: Option<&'a HostStats>,
    violations_total: u64,
    violations: &'a [ViolationEntry],
}

impl Summary {
    /// Counts one connection or request to `host`.
    pub fn connection(&self, host: &str, allowed: bool, bytes_up: u64, bytes_down: u64) {
        let mut inner = self.inner.lock().expect("summary lock");
        let stats = inner.stats(host);
        stats.connections += 1;
        if allowed {
            stats.allowed += 1;
        } else {
            stats.denied += 1;
        }
        stats.bytes_up += bytes_up;
        stats.bytes_down += bytes_down;
    }

    /// Counts one DNS query for `host`.
    pub fn dns_query(&self, host: &str, allowed: bool) {
        let mut inner = self.inner.lock().expect("summary lock");
        let stats = inner.stats(host);
        stats.dns_queries += 1;
        if !allowed {
            stats.dns_refused += 1;
        }
    }

    pub fn violation(&self, entry: ViolationEntry) {
        let mut inner = self.inner.lock().expect("summary lock");
        inner.violations_total += 1;
        if inner.violations.len() < MAX_VIOLATIONS {
            inner.violations.push(entry);
        }
    }

    pub fn violations_total(&self) -> u64 {
        self.inner.lock().expect("summary lock").violations_total
    }

    /// Writes the summary as pretty JSON, atomically (temp file, then rename).
    pub fn write(&self, path: &Path, run: &RunInfo) -> std::io::Result<()> {
        let inner = self.inner.lock().expect("summary lock");
        let file = File {
            run,
            hosts: &inner.hosts,
            other_hosts: (inner.other.connections > 0).then_some(&inner.other),
            violations_total: inner.violations_total,
            violations: &inner.violations,
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("summary serialises");
        json.push(b'\n');
        write_atomically(path, &json)
    }
}

/// Writes `bytes` to `path` through a sibling temp file and a rename, so a reader never sees a
/// partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            schema: 1,
            run_id: "r".into(),
            version: "0",
            started: "a".into(),
            ended: "b".into(),
            outcome: "shutdown",
            exit_code: 0,
            action: "deny",
            policy_sha256: "sha256:x".into(),
            allowlists: vec![],
            signal: None,
        }
    }

    #[test]
    fn hosts_past_the_cap_fold_into_other() {
        let s = Summary::default();
        for i in 0..MAX_HOSTS + 5 {
            s.connection(&format!("h{i}.example"), true, 1, 2);
        }
        s.connection("h0.example", false, 0, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        s.write(&path, &info()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["hosts"].as_object().unwrap().len(), MAX_HOSTS);
        assert_eq!(v["other_hosts"]["connections"], 5);
        assert_eq!(v["hosts"]["h0.example"]["connections"], 2);
        assert_eq!(v["hosts"]["h0.example"]["denied"], 1);
        assert_eq!(v["run_id"], "r");
    }

    #[test]
    fn violations_past_the_cap_are_counted() {
        let s = Summary::default();
        for _ in 0..MAX_VIOLATIONS + 3 {
            s.violation(ViolationEntry {
                ts: "t".into(),
                listener: "http",
                client: None,
                host: Some("evil.test".into()),
                port: Some(443),
                ip: None,
                reason: "domain_not_allowed",
                verdict: "deny",
                detail: None,
            });
        }
        assert_eq!(s.violations_total(), (MAX_VIOLATIONS + 3) as u64);
        assert_eq!(s.inner.lock().unwrap().violations.len(), MAX_VIOLATIONS);
    }
}
