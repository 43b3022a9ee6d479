//! Who sent the warden its terminating signal. A sandbox that shares the warden's PID namespace
//! could end the warden with `kill -TERM 1` and leave a run that looks cleanly shut down; the
//! sender's pid and uid (from `siginfo`) tell a container runtime or the warden's parent apart
//! from anything else, and the end record and summary say which. The one module that needs
//! `unsafe`: registering an action that receives `siginfo` is an unsafe call.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::sys::signal::Signal;
use serde::Serialize;

/// The first terminating signal: its number (0 while none came), sender pid and uid.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static PID: AtomicI32 = AtomicI32::new(0);
static UID: AtomicU32 = AtomicU32::new(0);

/// A terminating signal and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The signal number (15 for SIGTERM, 2 for SIGINT).
    pub signal: i32,
    /// The sender's pid as the warden's PID namespace sees it: 0 when it came from outside
    /// the namespace (the container runtime, kubelet) or from the kernel.
    pub pid: i32,
    /// The sender's real uid.
    pub uid: u32,
}

impl Origin {
    /// Whether the sender is one that may end a run cleanly: from outside the warden's PID
    /// namespace (pid 0: `docker stop`, kubelet), or the warden's own parent (a supervisor,
    /// a shell). Anything else — a process beside the warden, such as the sandbox — is not.
    pub fn is_supervisor(&self, parent: i32) -> bool {
        self.pid == 0 || self.pid == parent
    }
}

/// Records the sender of SIGTERM and SIGINT. Call before the runtime installs its own handlers
/// for them: the actions run in registration order, so the origin is stored before the event
/// loop is woken.
pub fn watch() -> std::io::Result<()> {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let number = signal as i32;
        let action = move |info: &_| {
            if SIGNAL.load(Ordering::Acquire) != 0 {
                return; // the first one is the one that ended the run
            }
            // SAFETY: for a signal sent with kill(2) or sigqueue(3) (SI_USER, SI_QUEUE) the
            // kernel fills si_pid and si_uid; for others the union reads as 0.
            let (pid, uid) = unsafe { sender(info) };
            PID.store(pid, Ordering::Relaxed);
            UID.store(uid, Ordering::Relaxed);
            SIGNAL.store(number, Ordering::Release);
        };
        // SAFETY: the action is async-signal-safe: it reads two fields of the siginfo the
        // kernel filled in for this delivery and stores integers in atomics; it allocates
        // nothing and takes no lock.
        unsafe { signal_hook_registry::register_sigaction(number, action) }?;
    }
    Ok(())
}

/// The sender's pid and uid.
///
/// # Safety
/// `info` must be the siginfo of a signal delivery (the union is read as the kill fields).
unsafe fn sender(info: &nix::libc::siginfo_t) -> (i32, u32) {
    // SAFETY: as the caller promises.
    unsafe { (info.si_pid(), info.si_uid()) }
}

/// The first terminating signal received, if any.
pub fn received() -> Option<Origin> {
    let signal = SIGNAL.load(Ordering::Acquire);
    (signal != 0).then(|| Origin {
        signal,
        pid: PID.load(Ordering::Relaxed),
        uid: UID.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_runtime_or_the_parent_may_end_a_run_cleanly() {
        let from = |pid| Origin {
            signal: 15,
            pid,
            uid: 0,
        };
        assert!(from(0).is_supervisor(1234), "outside the PID namespace");
        assert!(from(1234).is_supervisor(1234), "the parent");
        assert!(!from(42).is_supervisor(1234), "a process beside the warden");
        assert!(
            !from(42).is_supervisor(0),
            "PID 1 has no parent in its namespace"
        );
    }
}
