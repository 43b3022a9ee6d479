//! What every listener shares — the policy snapshot, resolver, enforcer, budgets, metrics,
//! audit and summary — and [`Shared::finish`], the one place an attempt becomes a metric, an
//! audit line and a summary entry, so the three always agree.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::allowlist::Rule;
use crate::audit::{Audit, DecisionRecord, Line, SCHEMA, timestamp};
use crate::budget::Budgets;
use crate::config::Config;
use crate::dns::resolve::Resolver;
use crate::enforce::{Enforcer, Judgement, Ruling};
use crate::host::{Host, Target};
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::policy::{Decision, Policy, Reason};
use crate::summary::{Summary, ViolationEntry};

/// Longest sandbox-supplied text kept in a record (hosts that did not parse, details).
const MAX_TEXT: usize = 256;

pub struct Shared {
    pub config: Config,
    policy: ArcSwap<Policy>,
    pub resolver: Resolver,
    pub enforcer: Enforcer,
    pub budgets: Budgets,
    pub metrics: Arc<Metrics>,
    pub audit: Audit,
    pub summary: Summary,
    /// One permit per open client connection.
    pub connections: Arc<Semaphore>,
    /// Connections that have not sent their first request, evicted oldest first at the cap.
    pub waiting: Arc<crate::listener::idle::Waiting>,
    /// Every connection task, so shutdown can wait for them (and their audit lines).
    pub tasks: TaskTracker,
    /// Cancelled on shutdown: idle keep-alive connections close, in-flight ones finish.
    pub drain: CancellationToken,
    /// Capture self-test probes in flight.
    pub probes: crate::capture::probe::Probes,
    /// True while capture is installed, verified and proven (always false without capture).
    pub enforcement: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(config: Config, policy: Policy, metrics: Arc<Metrics>, audit: Audit) -> Self {
        metrics.set_policy_rules(policy.rules().len());
        Self {
            resolver: Resolver::new(
                config.dns_upstream,
                config.timeouts.dns,
                config.mark,
                metrics.clone(),
            ),
            enforcer: Enforcer::new(
                config.action,
                config.malformed_is_violation,
                metrics.clone(),
            ),
            budgets: Budgets::new(config.max_upload_bytes),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            waiting: Arc::new(metrics.waiting()),
            policy: ArcSwap::from_pointee(policy),
            summary: Summary::default(),
            tasks: TaskTracker::new(),
            drain: CancellationToken::new(),
            probes: Default::default(),
            enforcement: Default::default(),
            metrics,
            audit,
            config,
        }
    }

    /// The current policy snapshot; a connection keeps the one it started with.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn swap_policy(&self, policy: Policy) {
        self.metrics.set_policy_rules(policy.rules().len());
        self.policy.store(Arc::new(policy));
    }

    /// Records a finished attempt everywhere: metrics, summary, audit.
    pub async fn finish(&self, a: Attempt) {
        if let Some(line) = self.record(a) {
            self.audit.send(line).await;
        }
    }

    /// [`Shared::finish`] without waiting: the audit line comes back when the queue is full,
    /// for the caller to send from a task.
    pub fn record(&self, a: Attempt) -> Option<Line> {
        let ruling = a.ruling.unwrap_or(Ruling::new(Judgement::Deny, false));
        let reason = a.reason.unwrap_or(Reason::MalformedRequest);
        let verdict = ruling.judgement.as_str();
        self.metrics.decision(a.listener, verdict, reason);
        let host = a.host.as_deref().unwrap_or("(none)");
        if a.listener == Listener::Dns {
            self.summary.dns_query(host, ruling.judgement.proceeds());
        } else {
            self.summary
                .connection(host, ruling.judgement.proceeds(), a.bytes_up, a.bytes_down);
        }
        let ts = timestamp(SystemTime::now());
        if ruling.violation {
            self.summary.violation(ViolationEntry {
                ts: ts.clone(),
                listener: a.listener.as_str(),
                client: a.client,
                host: a.host.clone(),
                port: a.port,
                ip: a.ip,
                reason: reason.as_str(),
                verdict,
                detail: a.detail.clone(),
            });
        }
        let record = DecisionRecord {
            schema: SCHEMA,
            event: "decision",
            ts,
            run_id: &self.config.run_id,
            listener: a.listener.as_str(),
            client: a.client,
            host: a.host,
            port: a.port,
            ip: a.ip,
            verdict,
            reason: reason.as_str(),
            rule: a.rule.as_deref().map(|r| r.id.as_str()),
            bytes_up: a.bytes_up,
            bytes_down: a.bytes_down,
            duration_ms: u64::try_from(a.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            method: a.method,
            detail: a.detail,
            error: a.error,
            violation: ruling.violation,
        };
        self.audit.try_queue(record.to_line())
    }
}

/// Everything known about one connection, request or query, filled in as it proceeds.
#[derive(Debug)]
pub struct Attempt {
    pub listener: Listener,
    pub client: Option<SocketAddr>,
    pub started: Instant,
    pub method: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub ip: Option<IpAddr>,
    pub rule: Option<Arc<Rule>>,
    pub reason: Option<Reason>,
    pub ruling: Option<Ruling>,
    pub detail: Option<String>,
    pub error: Option<&'static str>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Attempt {
    pub fn new(listener: Listener, client: Option<SocketAddr>) -> Self {
        Self {
            listener,
            client,
            started: Instant::now(),
            method: None,
            host: None,
            port: None,
            ip: None,
            rule: None,
            reason: None,
            ruling: None,
            detail: None,
            error: None,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// Records the sandbox-supplied host text, bounded.
    pub fn set_host(&mut self, host: &str) {
        self.host = Some(bounded(host));
    }

    pub fn set_detail(&mut self, detail: impl AsRef<str>) {
        self.detail = Some(bounded(detail.as_ref()));
    }

    /// Adds `more` to the detail, after a space when there is one already.
    pub fn append_detail(&mut self, more: impl AsRef<str>) {
        match self.detail.take() {
            Some(d) if !d.is_empty() => self.set_detail(format!("{d} {}", more.as_ref())),
            _ => self.set_detail(more),
        }
    }

    /// Applies a policy decision: the reason and rule are kept and the enforcer rules on it.
    pub fn decide(&mut self, shared: &Shared, decision: &Decision) -> Judgement {
        if decision.is_allow() && shared.audit.failing() {
            // Its line might never be written: nothing more is allowed.
            return self.decide(shared, &Decision::deny(Reason::AuditUnavailable));
        }
        self.reason = Some(decision.reason);
        if decision.rule.is_some() {
            self.rule = decision.rule.clone();
        }
        if let Some(s) = &decision.special
            && self.detail.is_none()
        {
            let ip = self.ip.map(|ip| format!(" {ip}")).unwrap_or_default();
            self.set_detail(format!("{}{ip}", s.describe()));
        }
        let ruling = shared.enforcer.judge(decision);
        self.ruling = Some(ruling);
        if ruling.terminated_run {
            shared.enforcer.describe_termination(self.describe());
        }
        ruling.judgement
    }

    /// One line saying what was attempted, for the termination message.
    pub fn describe(&self) -> String {
        let host = self.host.as_deref().unwrap_or("(no host)");
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let detail = self
            .detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        format!("{} {host}{port}{detail}", self.listener.as_str())
    }

    /// Records the target, decides it with the current policy snapshot and rules on the
    /// decision. Returns the snapshot (the connection keeps using it) and the decision.
    pub fn decide_target(&mut self, shared: &Shared, target: &Target) -> (Arc<Policy>, Decision) {
        match &target.host {
            Host::Name(name) => self.set_host(name.as_str()),
            // An address's text is far below the bound.
            Host::Ip(ip) => self.host = Some(crate::audit_line::ip_text(*ip)),
        }
        self.port = Some(target.port);
        let policy = shared.policy();
        let decision = policy.decide(target);
        self.decide(shared, &decision);
        (policy, decision)
    }

    /// Whether the attempt was ruled on and may go ahead.
    pub fn proceeds(&self) -> bool {
        self.ruling.is_some_and(|r| r.judgement.proceeds())
    }

    /// Records a denial for `reason` that did not come from the policy (protocol errors,
    /// limits, SNI checks, budgets), ruled on by the enforcer.
    pub fn deny(&mut self, shared: &Shared, reason: Reason) -> Judgement {
        self.decide(shared, &Decision::deny(reason))
    }
}

/// Truncates sandbox-supplied text to [`MAX_TEXT`] bytes on a character boundary.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
