//! Idle upstream HTTP connections, kept per worker thread after the client connection that
//! opened them closes, so the sandbox's next plain-HTTP request to the same target skips a TCP
//! handshake (and a round trip). A connection is reused only for the same target, only while
//! the policy still allows its address, and only for [`IDLE_FOR`]: less than the common 5 s
//! keep-alive timeout of servers, so a server rarely closes one just as it is reused.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::forward::UpstreamHttp;
use crate::host::Target;
use crate::state::Shared;

/// How long an idle connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(4);
/// Most idle connections to one target, per worker thread.
pub const PER_TARGET: usize = 32;
/// Most idle connections per worker thread.
pub const PER_THREAD: usize = 64;

/// What the pool needs to know of a connection.
pub trait Reusable {
    fn target(&self) -> &Target;
    /// Not closed (by either side).
    fn is_open(&self) -> bool;
    /// Done with its last response and able to take a request now.
    fn is_ready(&self) -> bool;
}

impl Reusable for UpstreamHttp {
    fn target(&self) -> &Target {
        &self.target
    }
    fn is_open(&self) -> bool {
        self.is_usable()
    }
    fn is_ready(&self) -> bool {
        self.sender.is_ready()
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// The idle connections of one thread, oldest first.
struct Pool<C> {
    idle: Vec<Idle<C>>,
}

thread_local! {
    static POOL: RefCell<Pool<UpstreamHttp>> = const { RefCell::new(Pool { idle: Vec::new() }) };
}

impl<C: Reusable> Pool<C> {
    fn sweep(&mut self, now: Instant) {
        self.idle
            .retain(|i| now.duration_since(i.since) < IDLE_FOR && i.conn.is_open());
    }

    fn take(&mut self, target: &Target, now: Instant, allowed: impl Fn(&C) -> bool) -> Option<C> {
        self.sweep(now);
        let i = self
            .idle
            .iter()
            .rposition(|i| i.conn.target() == target && i.conn.is_ready() && allowed(&i.conn))?;
        Some(self.idle.remove(i).conn)
    }

    /// Keeps `conn`, closing the oldest idle one to its target or at all when over a bound.
    /// A connection still finishing its response is kept: it is ready by the time it is taken
    /// (or it closes, and is swept).
    fn put(&mut self, conn: C, now: Instant) {
        if !conn.is_open() {
            return;
        }
        self.sweep(now);
        let same = self
            .idle
            .iter()
            .filter(|i| i.conn.target() == conn.target())
            .count();
        if same >= PER_TARGET
            && let Some(i) = self
                .idle
                .iter()
                .position(|i| i.conn.target() == conn.target())
        {
            self.idle.remove(i);
        }
        if self.idle.len() >= PER_THREAD {
            self.idle.remove(0);
        }
        self.idle.push(Idle { conn, since: now });
    }
}

/// An idle connection to `target` that `allowed` (the policy re-check) accepts.
pub fn take(target: &Target, allowed: impl Fn(&UpstreamHttp) -> bool) -> Option<UpstreamHttp> {
    POOL.with(|p| p.borrow_mut().take(target, Instant::now(), allowed))
}

/// Keeps `conn` for reuse, unless the warden is shutting down or the run was terminated.
pub fn put(shared: &Shared, conn: UpstreamHttp) {
    if shared.drain.is_cancelled() || shared.enforcer.is_terminated() {
        return;
    }
    // `try_with`: a connection dropped while its thread exits is simply closed.
    let _ = POOL.try_with(|p| p.borrow_mut().put(conn, Instant::now()));
}

/// Runs on each worker thread: closes connections idle for [`IDLE_FOR`], and all of them when
/// the warden starts draining or the run is terminated.
pub async fn keep(shared: Arc<Shared>) {
    let kill = shared.enforcer.kill_token().clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(IDLE_FOR / 2) => {
                POOL.with(|p| p.borrow_mut().sweep(Instant::now()));
            }
            () = shared.drain.cancelled() => break,
            () = kill.cancelled() => break,
        }
    }
    POOL.with(|p| p.borrow_mut().idle.clear());
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        target: Target,
        id: u32,
        open: bool,
        ready: bool,
    }

    impl Reusable for Fake {
        fn target(&self) -> &Target {
            &self.target
        }
        fn is_open(&self) -> bool {
            self.open
        }
        fn is_ready(&self) -> bool {
            self.ready
        }
    }

    fn target(host: &str) -> Target {
        Target::parse_authority_or(host, 80).unwrap()
    }

    fn fake(host: &str, id: u32) -> Fake {
        Fake {
            target: target(host),
            id,
            open: true,
            ready: true,
        }
    }

    #[test]
    fn only_a_ready_open_connection_to_the_same_target_that_the_policy_allows_is_reused() {
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        // (what is in the pool, when taken, the policy allows it, the id taken)
        type Case = (fn() -> Vec<Fake>, Instant, bool, Option<u32>);
        let cases: Vec<Case> = vec![
            (|| vec![fake("a.test", 1)], later(10), true, Some(1)),
            (|| vec![fake("b.test", 1)], later(10), true, None),
            (|| vec![fake("a.test:8080", 1)], later(10), true, None),
            (|| vec![fake("a.test", 1)], later(10), false, None),
            (|| vec![fake("a.test", 1)], later(4_000), true, None),
            (
                || {
                    vec![Fake {
                        open: false,
                        ..fake("a.test", 1)
                    }]
                },
                later(10),
                true,
                None,
            ),
            (
                || {
                    vec![Fake {
                        ready: false,
                        ..fake("a.test", 1)
                    }]
                },
                later(10),
                true,
                None,
            ),
            // The most recently kept of several is taken first.
            (
                || vec![fake("a.test", 1), fake("a.test", 2)],
                later(10),
                true,
                Some(2),
            ),
        ];
        assert!(!cases.is_empty());
        for (i, (conns, when, allowed, want)) in cases.into_iter().enumerate() {
            let mut pool = Pool { idle: Vec::new() };
            for c in conns() {
                pool.put(c, t0);
            }
            let got = pool
                .take(&target("a.test"), when, |_| allowed)
                .map(|c| c.id);
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn the_pool_is_bounded_per_target_and_per_thread_dropping_the_oldest() {
        let now = Instant::now();
        let mut pool = Pool { idle: Vec::new() };
        for id in 0..(PER_TARGET as u32 + 5) {
            pool.put(fake("a.test", id), now);
        }
        assert_eq!(pool.idle.len(), PER_TARGET);
        assert_eq!(pool.idle[0].conn.id, 5, "the oldest went first");
        for id in 0..PER_THREAD as u32 {
            pool.put(fake(&format!("h{id}.test"), 1000 + id), now);
        }
        assert_eq!(pool.idle.len(), PER_THREAD);
        assert!(pool.idle.iter().all(|i| i.conn.id >= 1000));
    }
}
