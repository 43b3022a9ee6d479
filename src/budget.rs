//! Upload budgets: caps on bytes sent upstream, over the whole run (`--max-upload-bytes`) and
//! per rule (`max-upload=` in the allowlist). Exfiltration through an *allowed* destination is
//! what users worry about most after DNS; a budget turns "unlimited" into a number a reviewer
//! chose. Counters are shared by every connection they cover and survive policy reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::allowlist::Rule;
use crate::enforce::{Enforcer, Ruling};
use crate::policy::Reason;

#[derive(Debug)]
struct Meter {
    cap: u64,
    used: AtomicU64,
}

impl Meter {
    fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            cap,
            used: AtomicU64::new(0),
        })
    }

    fn charge(&self, n: u64) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        before.saturating_add(n) <= self.cap
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    Run { cap: u64 },
    Rule { cap: u64, rule: String },
}

impl Exceeded {
    pub fn describe(&self) -> String {
        match self {
            Exceeded::Run { cap } => format!("run upload budget of {cap} bytes"),
            Exceeded::Rule { cap, rule } => format!("upload budget of {cap} bytes of rule {rule}"),
        }
    }
}

/// All budgets of a run.
#[derive(Debug, Default)]
pub struct Budgets {
    run: Option<Arc<Meter>>,
    /// Keyed by the rule's canonical text, so a reload that keeps the rule keeps its count.
    rules: Mutex<HashMap<String, Arc<Meter>>>,
}

/// The budgets one connection draws on: the run's, and those of every rule that allowed it
/// (a name rule, and an IP rule when the name resolved to a special address).
#[derive(Debug, Clone, Default)]
pub struct Charge {
    run: Option<Arc<Meter>>,
    rules: Vec<(Arc<Meter>, String)>,
}

impl Budgets {
    pub fn new(run_cap: Option<u64>) -> Self {
        Self {
            run: run_cap.map(Meter::new),
            rules: Mutex::default(),
        }
    }

    /// The budgets a connection allowed by `rules` draws on.
    pub fn charge_for<'a>(&self, rules: impl IntoIterator<Item = &'a Rule>) -> Charge {
        let mut charge = Charge {
            run: self.run.clone(),
            rules: Vec::new(),
        };
        for r in rules {
            let Some(cap) = r.max_upload else { continue };
            let mut meters = self.rules.lock().expect("budget lock");
            let meter = meters
                .entry(r.canonical())
                .or_insert_with(|| Meter::new(cap))
                .clone();
            if !charge.rules.iter().any(|(m, _)| Arc::ptr_eq(m, &meter)) {
                charge.rules.push((meter, r.id.to_string()));
            }
        }
        charge
    }
}

impl Charge {
    /// True when no budget applies (the relay can skip accounting).
    pub fn is_unlimited(&self) -> bool {
        self.run.is_none() && self.rules.is_empty()
    }

    /// Accounts `n` bytes about to be sent upstream; `Err` when that would exceed a budget.
    pub fn charge(&self, n: u64) -> Result<(), Exceeded> {
        for (meter, rule) in &self.rules {
            if !meter.charge(n) {
                return Err(Exceeded::Rule {
                    cap: meter.cap,
                    rule: rule.clone(),
                });
            }
        }
        if let Some(meter) = &self.run
            && !meter.charge(n)
        {
            return Err(Exceeded::Run { cap: meter.cap });
        }
        Ok(())
    }
}

/// A budget running out on a connection, and what the enforcer ruled.
#[derive(Debug, Clone)]
pub struct Breach {
    pub exceeded: Exceeded,
    pub ruling: Ruling,
}

/// A connection's budgets, and the first breach on it. Shared by both relay directions and by
/// the counting wrapper of plain-HTTP upstream connections.
#[derive(Debug, Default)]
pub struct UploadGate {
    charge: Charge,
    breach: Mutex<Option<Breach>>,
}

impl UploadGate {
    pub fn new(charge: Charge) -> Self {
        Self {
            charge,
            breach: Mutex::new(None),
        }
    }

    /// May `n` more bytes go upstream? The first breach is ruled on once (one violation per
    /// connection); after it, `report` lets everything through and `deny`/`terminate` nothing.
    pub fn admit(&self, n: u64, enforcer: &Enforcer) -> bool {
        if self.charge.is_unlimited() {
            return true;
        }
        let mut breach = self.breach.lock().expect("upload gate lock");
        if let Some(b) = &*breach {
            return b.ruling.judgement.proceeds();
        }
        match self.charge.charge(n) {
            Ok(()) => true,
            Err(exceeded) => {
                let ruling = enforcer.judge_denial(Reason::UploadBudgetExceeded);
                *breach = Some(Breach { exceeded, ruling });
                ruling.judgement.proceeds()
            }
        }
    }

    pub fn breach(&self) -> Option<Breach> {
        self.breach.lock().expect("upload gate lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::parse_text;

    #[test]
    fn rule_and_run_budgets_are_shared_across_connections() {
        let (rules, _) = parse_text("t.txt", "up.example max-upload=100\nfree.example\n");
        let budgets = Budgets::new(Some(1000));
        let a = budgets.charge_for([&rules[0]]);
        let b = budgets.charge_for([&rules[0], &rules[0]]);
        assert_eq!(a.charge(60), Ok(()));
        assert_eq!(b.charge(40), Ok(()));
        assert_eq!(
            a.charge(1),
            Err(Exceeded::Rule {
                cap: 100,
                rule: "t.txt:1".into()
            })
        );
        let free = budgets.charge_for([&rules[1]]);
        assert_eq!(free.charge(900), Ok(()));
        assert_eq!(free.charge(1), Err(Exceeded::Run { cap: 1000 }));
        assert!(Budgets::new(None).charge_for([&rules[1]]).is_unlimited());
        assert!(!budgets.charge_for([]).is_unlimited());
        // A connection allowed by two budgeted rules is held to both.
        let (two, _) = parse_text(
            "u.txt",
            "n.example max-upload=1000\n10.0.0.0/8 max-upload=10\n",
        );
        let both = Budgets::new(None).charge_for([&two[0], &two[1]]);
        assert_eq!(
            both.charge(11),
            Err(Exceeded::Rule {
                cap: 10,
                rule: "u.txt:2".into()
            })
        );
    }
}
