//! `egress-warden check`: validates allowlists the way `serve` loads them and prints every
//! rule in normal form with the ports it allows, then the policy hash — the command to run in
//! CI on a change to an allowlist.

use std::io::Write;
use std::path::PathBuf;

use crate::allowlist;
use crate::policy::Policy;

/// Prints the normalised policy to `out`, or every error to `err`. Returns whether it loaded.
pub fn check(paths: &[PathBuf], out: &mut impl Write, err: &mut impl Write) -> bool {
    match allowlist::load(paths) {
        Ok(set) => {
            let files = set.files.len();
            let width = set
                .rules
                .iter()
                .map(|r| r.id.as_str().len())
                .max()
                .unwrap_or(0);
            let policy = Policy::new(set);
            for rule in policy.rules() {
                let _ = writeln!(
                    out,
                    "{:width$}  {}  # ports {}",
                    rule.id.as_str(),
                    rule.canonical(),
                    rule.ports.describe()
                );
            }
            let _ = writeln!(
                out,
                "ok: {} rules from {files} files; policy {}",
                policy.rules().len(),
                policy.sha256()
            );
            true
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_rules_or_every_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "Example.COM\n*.b.example:*\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(check(&[dir.path().to_owned()], &mut out, &mut err));
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("a.txt:1  example.com  # ports 80,443"),
            "{out}"
        );
        assert!(out.contains("*.b.example:*  # ports any"), "{out}");
        assert!(
            out.contains("ok: 2 rules from 1 files; policy sha256:"),
            "{out}"
        );

        std::fs::write(dir.path().join("b.txt"), "*\nfoo.*\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(!check(&[dir.path().to_owned()], &mut out, &mut err));
        let err = String::from_utf8(err).unwrap();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.contains("b.txt:1: ") && err.contains("b.txt:2: "),
            "{err}"
        );
    }
}
