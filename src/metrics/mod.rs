//! Per-run Prometheus metrics. Every series carries `run_id` (a registry-wide label); every
//! other label value comes from a closed enum (listener, verdict, reason, outcome) — never a
//! hostname, path or port chosen by the sandbox.

pub mod process;

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::listener::Listener;
use crate::policy::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    listener: &'static str,
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// A worker thread (shard) by index: as many values as `--worker-threads`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Outcome of one DNS lookup made by the warden.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LookupOutcome {
    Ok,
    NotFound,
    Timeout,
    Error,
}

impl LookupOutcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            LookupOutcome::Ok => "ok",
            LookupOutcome::NotFound => "not_found",
            LookupOutcome::Timeout => "timeout",
            LookupOutcome::Error => "error",
        }
    }
}

/// All metric families of one run.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    sent: Family<ListenerLabels, Counter>,
    received: Family<ListenerLabels, Counter>,
    open: Family<ListenerLabels, Gauge>,
    workers: Family<WorkerLabels, Gauge>,
    connect_seconds: Histogram,
    lookups: Family<OutcomeLabels, Counter>,
    violations: Family<ReasonLabels, Counter>,
    terminated: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
    policy_rules: Gauge,
    enforcement: Gauge,
    dropped: Family<ClassLabels, Counter>,
    dns_rate_limited: Counter,
    waiting: Gauge,
    evicted: Counter,
}

impl Metrics {
    /// `capture`: whether transparent capture is configured (its series exist only then, so an
    /// alert on `enforcement_active == 0` never fires for an explicit-proxy warden).
    pub fn new(run_id: &str, capture: bool) -> Self {
        let labels = [(Cow::Borrowed("run_id"), Cow::Owned(run_id.to_owned()))];
        // process_* carry no prefix (every exporter's names); everything else is egress_warden_*.
        let mut root = Registry::with_labels(labels.into_iter());
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("egress_warden");
        let m = Self {
            decisions: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            open: Family::default(),
            workers: Family::default(),
            connect_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            lookups: Family::default(),
            violations: Family::default(),
            terminated: Gauge::default(),
            reloads: Family::default(),
            policy_rules: Gauge::default(),
            enforcement: Gauge::default(),
            dropped: Family::default(),
            dns_rate_limited: Counter::default(),
            waiting: Gauge::default(),
            evicted: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "Policy decisions by listener, verdict (allow, deny, report) and reason",
            m.decisions.clone(),
        );
        registry.register_with_unit(
            "upstream_sent",
            "Bytes sent upstream on behalf of the sandbox",
            Unit::Bytes,
            m.sent.clone(),
        );
        registry.register_with_unit(
            "upstream_received",
            "Bytes received from upstream for the sandbox",
            Unit::Bytes,
            m.received.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections currently open",
            m.open.clone(),
        );
        registry.register(
            "connections_waiting",
            "Client connections that have not sent their first request yet",
            m.waiting.clone(),
        );
        registry.register(
            "connections_evicted",
            "Silent connections closed to make room at --max-connections",
            m.evicted.clone(),
        );
        registry.register(
            "worker_connections",
            "Client connections currently served by each worker thread",
            m.workers.clone(),
        );
        registry.register_with_unit(
            "upstream_connect_duration",
            "Time to establish upstream TCP connections",
            Unit::Seconds,
            m.connect_seconds.clone(),
        );
        registry.register(
            "dns_lookups",
            "DNS lookups made by the warden, by outcome",
            m.lookups.clone(),
        );
        registry.register(
            "dns_rate_limited_queries",
            "DNS listener queries refused by the rate limit (summarised in the audit log)",
            m.dns_rate_limited.clone(),
        );
        registry.register(
            "violations",
            "Policy violations, by reason",
            m.violations.clone(),
        );
        registry.register(
            "run_terminated",
            "1 once the run has been terminated by a violation",
            m.terminated.clone(),
        );
        registry.register(
            "policy_reloads",
            "Allowlist reloads (SIGHUP), by result (ok, error)",
            m.reloads.clone(),
        );
        registry.register(
            "policy_rules",
            "Rules in the active policy",
            m.policy_rules.clone(),
        );
        if capture {
            registry.register(
                "enforcement_active",
                "1 while transparent capture is installed, verified and proven by probes",
                m.enforcement.clone(),
            );
            registry.register(
                "capture_dropped_packets",
                "Packets the capture rules dropped (not TCP or DNS), by class (udp, icmp, other)",
                m.dropped.clone(),
            );
        }
        let build_info: Family<VersionLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information (always 1)", build_info);
        // Pre-create the series a dashboard or alert expects to see at zero.
        m.terminated.set(0);
        // Every violation series exists at 0 from the first scrape: a counter that appears
        // already at 1 shows no increase(), and an alert on the first violation would never fire.
        for reason in Reason::ALL.into_iter().filter(|r| r.is_violation(true)) {
            let _ = m.violations.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        for outcome in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            registry: root,
            ..m
        }
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
    /// OpenMetrics (curl, `promtool check metrics`): counter families are named with their
    /// `_total` suffix, and `# UNIT` and `# EOF` lines are left out.
    pub fn encode_text(&self) -> String {
        to_classic_text(&self.encode())
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn decision(&self, listener: Listener, verdict: &'static str, reason: Reason) {
        self.decisions
            .get_or_create(&DecisionLabels {
                listener: listener.as_str(),
                verdict,
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The bytes-sent-upstream counter of a listener (kept by relays to count per chunk).
    pub fn sent_counter(&self, listener: Listener) -> Counter {
        self.sent
            .get_or_create(&ListenerLabels {
                listener: listener.as_str(),
            })
            .clone()
    }

    /// The bytes-received-from-upstream counter of a listener.
    pub fn received_counter(&self, listener: Listener) -> Counter {
        self.received
            .get_or_create(&ListenerLabels {
                listener: listener.as_str(),
            })
            .clone()
    }

    pub fn open_gauge(&self, listener: Listener) -> Gauge {
        self.open
            .get_or_create(&ListenerLabels {
                listener: listener.as_str(),
            })
            .clone()
    }

    /// The open-connections gauge of worker thread `worker` (created at zero).
    pub fn worker_gauge(&self, worker: usize) -> Gauge {
        self.workers
            .get_or_create(&WorkerLabels {
                worker: u32::try_from(worker).unwrap_or(u32::MAX),
            })
            .clone()
    }

    pub fn connect_time(&self, d: Duration) {
        self.connect_seconds.observe(d.as_secs_f64());
    }

    pub fn lookup(&self, outcome: LookupOutcome) {
        self.lookups
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The queue of connections that have not sent a request ([`crate::listener::idle`]).
    pub fn waiting(&self) -> crate::listener::idle::Waiting {
        crate::listener::idle::Waiting::new(self.waiting.clone(), self.evicted.clone())
    }

    pub fn dns_rate_limited(&self) {
        self.dns_rate_limited.inc();
    }

    pub fn violation(&self, reason: Reason) {
        self.violations
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn set_terminated(&self) {
        self.terminated.set(1);
    }

    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn set_enforcement(&self, active: bool) {
        self.enforcement.set(i64::from(active));
    }

    /// Raises a drop counter to the kernel's cumulative `total` (counters only go up).
    pub fn set_dropped(&self, class: &'static str, total: u64) {
        let c = self.dropped.get_or_create(&ClassLabels { class });
        let now = c.get();
        if total > now {
            c.inc_by(total - now);
        }
    }

    pub fn set_policy_rules(&self, n: usize) {
        self.policy_rules.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Converts OpenMetrics text from prometheus-client into the classic Prometheus text format.
fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut pending_help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(help) = pending_help.take() {
                let text = help.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total_and_drops_openmetrics_lines() {
        let m = Metrics::new("r", false);
        m.decision(Listener::Http, "allow", Reason::DomainAllowed);
        let text = m.encode_text();
        assert!(
            text.contains("# HELP egress_warden_decisions_total Policy decisions"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE egress_warden_decisions_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE egress_warden_upstream_connect_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample line survives unchanged (process_* are read anew at each encoding).
        let samples = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(samples(&text), samples(&m.encode()));
    }

    #[test]
    fn every_series_carries_the_run_id() {
        let m = Metrics::new("run-7", false);
        m.decision(Listener::Http, "deny", Reason::DomainNotAllowed);
        m.sent_counter(Listener::Socks).inc_by(10);
        m.lookup(LookupOutcome::NotFound);
        let text = m.encode();
        let samples: Vec<_> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(!samples.is_empty());
        for line in samples {
            assert!(line.contains("run_id=\"run-7\""), "{line}");
        }
        assert!(text.contains(
            "egress_warden_decisions_total{run_id=\"run-7\",listener=\"http\",verdict=\"deny\",reason=\"domain_not_allowed\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "egress_warden_upstream_sent_bytes_total{run_id=\"run-7\",listener=\"socks5\"} 10"
            ),
            "{text}"
        );
        assert!(
            text.contains("egress_warden_run_terminated{run_id=\"run-7\"} 0"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
