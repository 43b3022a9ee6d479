//! Least privilege after start-up. Start-up may need more (CAP_SYS_ADMIN to make a sandbox
//! namespace, CAP_NET_BIND_SERVICE for a low port); a running warden keeps only what its mode
//! uses, and every other capability is dropped — from the effective, permitted, inheritable,
//! ambient and bounding sets — so a compromised warden cannot regain it.
//!
//! | mode | kept after start-up | why |
//! |---|---|---|
//! | `serve`, `run` (explicit proxy only) | `CAP_KILL` under `run` | kill a sandbox tree that changed uid (setuid) |
//! | `--capture` / `run --isolate` | `CAP_NET_ADMIN` | SO_MARK on every upstream socket; reading the ruleset back |
//! | `--terminate-pid-namespace` | `CAP_KILL` | kill sandbox processes of other users |
//!
//! Capabilities are per thread in Linux: runtime threads are limited as they start, and the
//! main thread limits itself once start-up is over (threads it starts later inherit that).

use caps::{CapSet, Capability, CapsHashSet};

use crate::config::Config;

/// The capabilities a running warden keeps, for this configuration.
pub fn needed(config: &Config, runs_command: bool) -> Vec<Capability> {
    let mut keep = Vec::new();
    if config.capture.is_some() {
        keep.push(Capability::CAP_NET_ADMIN);
    }
    if config.terminate_pid_namespace || runs_command {
        keep.push(Capability::CAP_KILL);
    }
    keep
}

/// Limits the calling thread to `keep` (what it holds of it). A thread without capabilities
/// (a non-root warden) is left as it is.
pub fn limit_thread(keep: &[Capability]) -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    if permitted.is_empty() {
        return Ok(());
    }
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first, while CAP_SETPCAP is still held.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

/// The calling thread's effective capabilities, by name (for the start record and tests).
pub fn effective() -> Vec<String> {
    let mut names: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|set| set.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}
