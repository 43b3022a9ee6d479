//! Bidirectional byte relay for tunnels: counts bytes both ways, enforces the upload budget on
//! the way up, closes on idle or when the run is terminated, and propagates half-close (a FIN
//! one way becomes a `shutdown(Write)` the other way) so no byte is lost or reordered.
//!
//! Both directions work on `&TcpStream` through readiness, so neither needs a split borrow.
//! Bytes move by splice(2) through a pipe ([`crate::splice`]) that a direction holds only while
//! bytes are in flight: an idle tunnel holds no buffer and no pipe.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::UploadGate;
use crate::enforce::Enforcer;
use crate::splice::{Fill, Pipe};

/// Why a relay ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides finished sending (or one side finished and the other closed).
    Closed,
    /// No traffic either way for the idle timeout.
    Idle,
    /// The run was terminated.
    Killed,
    /// The upload budget refused more bytes.
    Budget,
    /// A socket error (reset, broken pipe, …).
    Error,
}

impl End {
    /// The audit `error` field for ends that were not a clean close.
    pub fn error_kind(self) -> Option<&'static str> {
        match self {
            End::Closed => None,
            End::Idle => Some("idle_timeout"),
            End::Killed => Some("run_terminated"),
            End::Budget => Some("upload_budget_exceeded"),
            End::Error => Some("connection_error"),
        }
    }
}

/// Counters of one relay, readable while it runs and after.
#[derive(Debug, Default)]
pub struct Traffic {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Traffic {
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// Everything a relay needs besides the two sockets.
pub struct Relay<'a> {
    pub sent: Counter,
    pub received: Counter,
    pub gate: &'a UploadGate,
    pub enforcer: &'a Enforcer,
    pub idle: Duration,
    pub kill: Option<&'a CancellationToken>,
    pub traffic: &'a Traffic,
}

enum PumpError {
    Io,
    Budget,
}

/// Tracks the last time any byte moved, to enforce the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            tokio::time::sleep_until(deadline).await;
            if Instant::now() >= self.last() + idle {
                return;
            }
        }
    }
}

impl Relay<'_> {
    /// Sends `prefix` (bytes already read from the client) upstream, then relays both ways
    /// until both sides are done, the tunnel idles out, the run is killed or a budget runs out.
    /// The prefix is taken by value and freed once sent, so a long tunnel does not hold it.
    pub async fn run(&self, client: &TcpStream, upstream: &TcpStream, prefix: BytesMut) -> End {
        let activity = Activity::new();
        if !prefix.is_empty() {
            if !self.gate.admit(prefix.len() as u64, self.enforcer) {
                return End::Budget;
            }
            if write_all(upstream, &prefix).await.is_err() {
                return End::Error;
            }
            self.count_up(prefix.len());
        }
        drop(prefix);
        let both = async {
            tokio::try_join!(
                self.pump(client, upstream, true, &activity),
                self.pump(upstream, client, false, &activity),
            )
        };
        let killed = crate::enforce::killed(self.kill);
        tokio::select! {
            r = both => match r {
                Ok(_) => End::Closed,
                Err(PumpError::Budget) => End::Budget,
                Err(PumpError::Io) => End::Error,
            },
            () = activity.idle_for(self.idle) => End::Idle,
            () = killed => End::Killed,
        }
    }

    fn count_up(&self, n: usize) {
        self.traffic.up.fetch_add(n as u64, Ordering::Relaxed);
        self.sent.inc_by(n as u64);
    }

    /// Counts bytes delivered to the client (also used while the first flight is sniffed).
    pub fn count_down(&self, n: usize) {
        self.traffic.down.fetch_add(n as u64, Ordering::Relaxed);
        self.received.inc_by(n as u64);
    }

    async fn pump(
        &self,
        src: &TcpStream,
        dst: &TcpStream,
        up: bool,
        activity: &Activity,
    ) -> Result<(), PumpError> {
        let mut pipe: Option<Pipe> = None;
        let result = self.pump_with(src, dst, up, activity, &mut pipe).await;
        if let Some(p) = pipe {
            p.give_back(); // closed instead when bytes were left in it
        }
        result
    }

    async fn pump_with(
        &self,
        src: &TcpStream,
        dst: &TcpStream,
        up: bool,
        activity: &Activity,
        slot: &mut Option<Pipe>,
    ) -> Result<(), PumpError> {
        loop {
            src.readable().await.map_err(|_| PumpError::Io)?;
            let pipe = match slot {
                Some(p) => p,
                None => slot.insert(Pipe::take().map_err(|e| {
                    tracing::warn!(error = %e, "cannot create a pipe for a tunnel");
                    PumpError::Io
                })?),
            };
            let (n, drained) = match pipe.fill_from(src) {
                Ok(Fill { n: 0, .. }) => {
                    // EOF: pass the half-close on; the other direction keeps going.
                    let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(Fill { n, drained }) => (n, drained),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing more to move for now: the pipe (empty) goes back while we wait.
                    if let Some(p) = slot.take() {
                        p.give_back();
                    }
                    continue;
                }
                Err(_) => return Err(PumpError::Io),
            };
            if up && !self.gate.admit(n as u64, self.enforcer) {
                return Err(PumpError::Budget);
            }
            while pipe.held() > 0 {
                dst.writable().await.map_err(|_| PumpError::Io)?;
                match pipe.drain_into(dst) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(PumpError::Io),
                }
            }
            if drained {
                // The next wait is for new bytes: the empty pipe goes back meanwhile.
                if let Some(p) = slot.take() {
                    p.give_back();
                }
            }
            activity.touch();
            if up {
                self.count_up(n);
            } else {
                self.count_down(n);
            }
        }
    }
}

/// Writes all of `data` to a socket shared by reference.
pub async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
