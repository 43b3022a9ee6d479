//! Thread-per-core serving: each shard is a thread with its own single-threaded tokio runtime
//! that serves its connections to the end, so a request, a tunnel's bytes and its timers never
//! wake another thread. One shard in [`ACCEPT_EVERY`] accepts from the listening sockets; an
//! accepting shard keeps a connection unless it already serves more than its share, and then
//! hands it to the least-loaded shard.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How many more open connections than the least-loaded shard a shard keeps before it hands a
/// new one over. One keeps bursts balanced without moving every other connection.
const SLACK: usize = 1;

/// Shards 0, 4, 8, … accept. Every shard that waits on a listening socket is woken for each new
/// connection and all but one find nothing to accept: with 16 shards accepting, that herd cost
/// more than the hand-over it saves (docs/performance.md#worker-threads).
pub const ACCEPT_EVERY: usize = 4;

/// Most shards (a bound on threads and on the `--worker-threads` flag).
pub const MAX_SHARDS: usize = 1024;

struct Shard {
    handle: Handle,
    /// Open connections this shard serves (`egress_warden_worker_connections`).
    load: Gauge,
}

/// The shards' runtimes and loads, shared by every accept loop.
pub struct Shards {
    shards: Vec<Shard>,
}

/// Owns the shard threads. Dropping it stops them: their runtimes drop what they still run.
pub struct ShardThreads {
    shards: Arc<Shards>,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

/// One connection's place on a shard, counted until dropped.
pub struct Slot {
    load: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.load.dec();
    }
}

/// The shard a new connection goes to, of `count` shards with `load(i)` open connections each:
/// the accepting shard `me`, unless it serves more than [`SLACK`] connections more than the
/// least-loaded one, which then gets it.
pub fn pick(count: usize, load: impl Fn(usize) -> usize, me: usize) -> usize {
    let Some((least, min)) = (0..count).map(|i| (i, load(i))).min_by_key(|&(_, l)| l) else {
        return me;
    };
    if me < count && load(me) > min + SLACK {
        least
    } else {
        me
    }
}

/// The default shard count: the CPUs this process may use (affinity and cgroup quota).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ShardThreads {
    /// Starts `count` shard threads; `on_start` runs first on each (it drops capabilities).
    /// `gauge(i)` is where shard `i` counts its open connections.
    pub fn start(
        count: usize,
        gauge: impl Fn(usize) -> Gauge,
        on_start: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let count = count.clamp(1, MAX_SHARDS);
        let on_start = Arc::new(on_start);
        let stop = CancellationToken::new();
        let mut shards = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, rx) = std::sync::mpsc::channel();
            let (on_start, stop) = (on_start.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("egress-warden-{i}"))
                .spawn(move || {
                    on_start();
                    let built = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .on_thread_start({
                            let on_start = on_start.clone();
                            move || on_start()
                        })
                        .build();
                    match built {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            rt.block_on(stop.cancelled());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            threads.push(thread);
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other(format!("shard {i} ended while starting")))??;
            shards.push(Shard {
                handle,
                load: gauge(i),
            });
        }
        Ok(Self {
            shards: Arc::new(Shards { shards }),
            stop,
            threads,
        })
    }

    pub fn shards(&self) -> &Arc<Shards> {
        &self.shards
    }
}

impl Shards {
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The runtime of shard `i`.
    pub fn handle(&self, i: usize) -> &Handle {
        &self.shards[i].handle
    }

    /// Chooses the shard for a connection accepted by shard `me` and counts it there.
    pub fn place(&self, me: usize) -> (usize, Slot) {
        let load = |i: usize| usize::try_from(self.shards[i].load.get()).unwrap_or(0);
        let target = pick(self.shards.len(), load, me);
        let load = self.shards[target].load.clone();
        load.inc();
        (target, Slot { load })
    }
}

impl Drop for ShardThreads {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_keeps_its_connection_unless_it_is_ahead_by_more_than_the_slack() {
        // (loads, accepting shard, chosen shard)
        let cases: &[(&[usize], usize, usize)] = &[
            (&[0], 0, 0),
            (&[0, 0], 0, 0),
            (&[1, 0], 0, 0),
            (&[2, 0], 0, 1),
            (&[2, 1], 0, 0),
            (&[5, 3, 1], 0, 2),
            (&[5, 3, 1], 1, 2),
            (&[5, 3, 1], 2, 2),
            (&[3, 3, 3, 1], 1, 3),
            (&[0, 9], 1, 0),
        ];
        assert!(!cases.is_empty());
        for (loads, me, want) in cases {
            let got = pick(loads.len(), |i| loads[i], *me);
            assert_eq!(got, *want, "loads {loads:?}, accepted by {me}");
        }
    }

    #[test]
    fn a_burst_accepted_by_one_shard_ends_up_spread() {
        for shards in [2usize, 3, 8] {
            let mut loads = vec![0; shards];
            for _ in 0..64 {
                let t = pick(shards, |i| loads[i], 0);
                loads[t] += 1;
            }
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(max - min <= SLACK + 1, "{shards} shards: {loads:?}");
        }
    }

    #[test]
    fn shards_run_tasks_on_their_own_threads_and_count_slots() {
        let threads = ShardThreads::start(2, |_| Gauge::default(), || {}).unwrap();
        let shards = threads.shards();
        assert_eq!(shards.len(), 2);
        let names: Vec<String> = (0..2)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                shards.handle(i).spawn(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    tx.send(name).unwrap();
                });
                rx.recv().unwrap().unwrap()
            })
            .collect();
        assert_eq!(names, ["egress-warden-0", "egress-warden-1"]);
        let (a, slot_a) = shards.place(0);
        let (b, slot_b) = shards.place(0);
        let (c, _slot_c) = shards.place(0);
        assert_eq!((a, b, c), (0, 0, 1));
        // Loads are now [2, 1]; with the first two given back, [0, 1], so shard 1 keeps one
        // more connection and hands the next to shard 0.
        drop((slot_a, slot_b));
        let (d, _slot_d) = shards.place(1);
        let (e, _slot_e) = shards.place(1);
        assert_eq!((d, e), (1, 0), "slots give their place back when dropped");
    }
}
