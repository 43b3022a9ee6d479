//! Start-up resource limits: the connection cap is only real if the process may open the file
//! descriptors it needs, so the soft `RLIMIT_NOFILE` is raised to cover it (never past the hard
//! limit, which only the deployment can lift), and a shortfall is reported with the numbers.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// File descriptors besides connections: listeners, the DNS sockets, the audit log, pooled
/// pipes and those of tunnels moving bytes right now.
const SPARE_FDS: u64 = 1024;

/// Descriptors `max_connections` needs: each connection holds its client and upstream socket,
/// and each of `workers` threads may keep [`crate::pool::PER_THREAD`] idle upstream ones.
pub fn fds_needed(max_connections: usize, workers: usize) -> u64 {
    let pooled = (workers as u64).saturating_mul(crate::pool::PER_THREAD as u64);
    (max_connections as u64).saturating_mul(2) + pooled + SPARE_FDS
}

/// What [`raise_nofile`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
    pub needed: u64,
}

impl NoFile {
    /// True when the hard limit keeps the cap from being reached.
    pub fn short(&self) -> bool {
        self.soft < self.needed
    }
}

/// Raises the soft `RLIMIT_NOFILE` to what `max_connections` needs, up to the hard limit.
/// A soft limit already higher is left alone (a child of `run` inherits it unchanged).
pub fn raise_nofile(max_connections: usize, workers: usize) -> nix::Result<NoFile> {
    let needed = fds_needed(max_connections, workers);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = needed.min(hard);
    let soft = if want > soft {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
        want
    } else {
        soft
    };
    Ok(NoFile { soft, hard, needed })
}

/// Raises the limit at start-up and says so when the cap cannot be reached.
pub fn apply(max_connections: usize, workers: usize) {
    match raise_nofile(max_connections, workers) {
        Ok(n) if n.short() => tracing::warn!(
            soft = n.soft,
            hard = n.hard,
            needed = n.needed,
            "--max-connections {max_connections} needs {} file descriptors but the hard \
             RLIMIT_NOFILE is {}: connections past about {} fail at accept; raise the hard \
             limit (docker run --ulimit nofile=N:N, systemd LimitNOFILE=) or lower the cap",
            n.needed,
            n.hard,
            n.hard.saturating_sub(n.needed - 2 * max_connections as u64) / 2
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_two_descriptors_per_connection_plus_pooled_and_spares() {
        // (cap, worker threads, descriptors)
        let cases = [
            (1, 1, 1090),
            (4096, 1, 9280),
            (4096, 16, 10240),
            (50_000, 2, 101_152),
        ];
        assert!(!cases.is_empty());
        for (cap, workers, want) in cases {
            assert_eq!(fds_needed(cap, workers), want, "{cap} {workers}");
        }
    }
}
