//! What a denial does to the run: `--on-violation terminate|deny|report`. The only place that
//! decides whether a denial is a violation and that ends the run. Termination cancels one
//! token that every connection and tunnel watches, so they all close at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::config::Action;
use crate::metrics::Metrics;
use crate::policy::{Decision, Reason};

/// Resolves when the run is terminated through `kill`, the token a connection watches; never
/// for a connection without one (accepted after termination, only ever refused).
pub async fn killed(kill: Option<&CancellationToken>) {
    match kill {
        Some(kill) => kill.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The final word on one attempt, after the action is applied.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Allowed by policy.
    Allow,
    /// Denied by policy but let through (`--on-violation report`).
    Report,
    /// Refused.
    Deny,
}

impl Judgement {
    pub const fn as_str(self) -> &'static str {
        match self {
            Judgement::Allow => "allow",
            Judgement::Report => "report",
            Judgement::Deny => "deny",
        }
    }

    /// Whether the attempt goes ahead.
    pub fn proceeds(self) -> bool {
        matches!(self, Judgement::Allow | Judgement::Report)
    }
}

/// A judgement and whether it recorded a violation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ruling {
    pub judgement: Judgement,
    pub violation: bool,
    /// This ruling is the one that terminated the run.
    pub terminated_run: bool,
}

impl Ruling {
    pub const fn new(judgement: Judgement, violation: bool) -> Self {
        Self {
            judgement,
            violation,
            terminated_run: false,
        }
    }
}

/// The first violation of a terminated run.
#[derive(Clone, Debug)]
pub struct Termination {
    pub reason: Reason,
    /// What was attempted (listener, target, detail), once recorded.
    pub what: Arc<OnceLock<String>>,
}

pub struct Enforcer {
    action: Action,
    malformed_counts: bool,
    terminated: AtomicBool,
    kill: CancellationToken,
    first: OnceLock<Termination>,
    metrics: Arc<Metrics>,
}

impl Enforcer {
    pub fn new(action: Action, malformed_counts: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            action,
            malformed_counts,
            terminated: AtomicBool::new(false),
            kill: CancellationToken::new(),
            first: OnceLock::new(),
            metrics,
        }
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// Applies the action to a decision.
    pub fn judge(&self, decision: &Decision) -> Ruling {
        if decision.is_allow() {
            return Ruling::new(Judgement::Allow, false);
        }
        self.judge_denial(decision.reason)
    }

    /// Applies the action to a denial for `reason`.
    pub fn judge_denial(&self, reason: Reason) -> Ruling {
        if !reason.is_violation(self.malformed_counts) {
            return Ruling::new(Judgement::Deny, false);
        }
        self.metrics.violation(reason);
        match self.action {
            Action::Report => Ruling::new(Judgement::Report, true),
            Action::Deny => Ruling::new(Judgement::Deny, true),
            Action::Terminate => {
                let terminated_run = self.terminate(reason);
                Ruling {
                    judgement: Judgement::Deny,
                    violation: true,
                    terminated_run,
                }
            }
        }
    }

    /// Ends the run (idempotent): every connection watching [`Enforcer::kill_token`] closes.
    /// True for the call that ended it.
    pub fn terminate(&self, reason: Reason) -> bool {
        if self.terminated.swap(true, Ordering::SeqCst) {
            return false;
        }
        let _ = self.first.set(Termination {
            reason,
            what: Arc::default(),
        });
        self.metrics.set_terminated();
        self.kill.cancel();
        true
    }

    /// Records what the terminating attempt was (once).
    pub fn describe_termination(&self, what: String) {
        if let Some(t) = self.first.get() {
            let _ = t.what.set(what);
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
    }

    pub fn termination(&self) -> Option<&Termination> {
        self.first.get()
    }

    /// Cancelled when the run is terminated.
    pub fn kill_token(&self) -> &CancellationToken {
        &self.kill
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enforcer(action: Action, malformed: bool) -> Enforcer {
        Enforcer::new(action, malformed, Arc::new(Metrics::new("t", false)))
    }

    #[test]
    fn actions_table() {
        let deny = Decision::deny(Reason::DomainNotAllowed);
        let outage = Decision::deny(Reason::ResolveFailed);
        let malformed = Decision::deny(Reason::MalformedRequest);
        struct Case {
            action: Action,
            malformed_counts: bool,
            decision: Decision,
            want: Judgement,
            violation: bool,
            terminated: bool,
        }
        let cases = [
            Case {
                action: Action::Terminate,
                malformed_counts: false,
                decision: deny.clone(),
                want: Judgement::Deny,
                violation: true,
                terminated: true,
            },
            Case {
                action: Action::Deny,
                malformed_counts: false,
                decision: deny.clone(),
                want: Judgement::Deny,
                violation: true,
                terminated: false,
            },
            Case {
                action: Action::Report,
                malformed_counts: false,
                decision: deny.clone(),
                want: Judgement::Report,
                violation: true,
                terminated: false,
            },
            Case {
                action: Action::Terminate,
                malformed_counts: false,
                decision: outage.clone(),
                want: Judgement::Deny,
                violation: false,
                terminated: false,
            },
            Case {
                action: Action::Report,
                malformed_counts: false,
                decision: outage,
                want: Judgement::Deny,
                violation: false,
                terminated: false,
            },
            Case {
                action: Action::Terminate,
                malformed_counts: false,
                decision: malformed.clone(),
                want: Judgement::Deny,
                violation: false,
                terminated: false,
            },
            Case {
                action: Action::Terminate,
                malformed_counts: true,
                decision: malformed,
                want: Judgement::Deny,
                violation: true,
                terminated: true,
            },
        ];
        assert!(!cases.is_empty());
        for (i, c) in cases.into_iter().enumerate() {
            let e = enforcer(c.action, c.malformed_counts);
            let r = e.judge(&c.decision);
            assert_eq!(r.judgement, c.want, "case {i}");
            assert_eq!(r.violation, c.violation, "case {i}");
            assert_eq!(e.is_terminated(), c.terminated, "case {i}");
            assert_eq!(e.kill_token().is_cancelled(), c.terminated, "case {i}");
        }
    }

    #[test]
    fn the_first_violation_is_kept() {
        let e = enforcer(Action::Terminate, false);
        e.judge_denial(Reason::SniMismatch);
        e.judge_denial(Reason::DomainNotAllowed);
        assert_eq!(e.termination().unwrap().reason, Reason::SniMismatch);
    }
}
