//! Connections that have not sent their first request yet, oldest first. When the connection
//! cap is reached, the one that has waited longest is closed to make room, so connections
//! that say nothing (slowloris, a leaked pool) cannot keep real requests out for up to
//! `--handshake-timeout`. Connections that are working (a request, a tunnel) are never evicted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Waiting {
    inner: Mutex<Inner>,
    /// `connections_waiting`: entries in the queue.
    gauge: Gauge,
    /// `connections_evicted_total`.
    evicted: Counter,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Ordered by arrival: the first entry has waited longest.
    queue: BTreeMap<u64, CancellationToken>,
}

/// A connection's place in the queue; leaves it when dropped.
struct Ticket {
    id: u64,
    token: CancellationToken,
    owner: Arc<Waiting>,
}

impl Waiting {
    pub fn new(gauge: Gauge, evicted: Counter) -> Self {
        Self {
            inner: Mutex::default(),
            gauge,
            evicted,
        }
    }

    /// Resolves if the caller is evicted. The caller is in the queue only while this future
    /// lives and has been polled: made a branch of the select that waits for the first
    /// request, it costs nothing to a connection whose request is already there (the read
    /// branch is taken before this one is first polled) and leaves the queue with the select.
    pub async fn until_evicted(self: &Arc<Self>) {
        let ticket = self.enter();
        ticket.token.cancelled().await;
    }

    /// Queues a connection that is waiting for its first request.
    fn enter(self: &Arc<Self>) -> Ticket {
        let token = CancellationToken::new();
        let mut inner = self.inner.lock().expect("waiting lock");
        let id = inner.next;
        inner.next += 1;
        inner.queue.insert(id, token.clone());
        self.gauge.inc();
        Ticket {
            id,
            token,
            owner: self.clone(),
        }
    }

    /// Closes the connection that has waited longest; false when none is waiting.
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.inner.lock().expect("waiting lock").queue.pop_first();
        match oldest {
            Some((_, token)) => {
                self.gauge.dec();
                self.evicted.inc();
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("waiting lock").queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.owner.inner.lock().expect("waiting lock");
        if inner.queue.remove(&self.id).is_some() {
            self.owner.gauge.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_is_evicted_first() {
        let waiting = Arc::new(Waiting::default());
        let first = waiting.enter();
        let second = waiting.enter();
        let third = waiting.enter();
        drop(second);
        assert_eq!(waiting.len(), 2);
        assert!(waiting.evict_oldest());
        assert!(first.token.is_cancelled());
        assert!(!third.token.is_cancelled());
        drop(first);
        assert!(waiting.evict_oldest());
        assert!(third.token.is_cancelled());
        drop(third);
        assert!(waiting.is_empty());
        assert!(!waiting.evict_oldest());
        assert_eq!(waiting.gauge.get(), 0);
        assert_eq!(waiting.evicted.get(), 2);
    }
}
