//! The audit log: one JSON line per decision (per connection, and per request for plain HTTP),
//! plus `start`, `reload` and `end` lines. Field names are a public, versioned schema
//! (`schema: 1`): fields may be added, never renamed or removed.
//!
//! Lines are serialised by the caller and written by one dedicated thread through a bounded
//! channel (backpressure, not loss). The writer group-commits: woken by a line, it lets
//! [`LINGER`] pass before draining the queue and writing once, so a busy run costs one wake-up
//! and one `write` per batch instead of per line, while a denial still reaches the file within a
//! few milliseconds. If a line cannot be written, the run stops: an audit log with holes is
//! worse than no run.
//!
//! A file keeps `--audit-reserve` bytes of disk allocated ahead of its end (`fallocate` with
//! `KEEP_SIZE`), so the disk filling up is noticed while there is still room for the lines
//! of requests already in flight: the run is stopped at once ([`Audit::failing`] makes every
//! later decision a denial) and those lines still land. A write that fails anyway is cut back
//! to its last complete line, so the log never ends in a torn line.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::AuditTarget;

/// Version of the record schema written in every line.
pub const SCHEMA: u32 = 1;

/// Lines queued before writers wait.
const QUEUE: usize = 16 * 1024;

/// How long the writer lets lines gather after the first one wakes it. While it sleeps,
/// senders do not have to wake it, so this bounds the writer's wake-ups to ~500 per second.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// RFC 3339 UTC timestamp with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    crate::audit_line::rfc3339_millis(t)
}

/// One decision about one connection, request or query.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'a> {
    pub schema: u32,
    pub event: &'static str,
    pub ts: String,
    pub run_id: &'a str,
    /// `http`, `socks5`.
    pub listener: &'static str,
    pub client: Option<SocketAddr>,
    /// The host as the sandbox asked for it (normalised when it parsed).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The address dialled (or refused).
    pub ip: Option<IpAddr>,
    /// `allow`, `deny` or `report` (allowed, but would have been denied).
    pub verdict: &'static str,
    pub reason: &'static str,
    /// `file:line` of the rule that allowed it.
    pub rule: Option<&'a str>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// HTTP method (`CONNECT` for tunnels); absent for SOCKS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// What exactly was refused, e.g. `sni=evil.test` or `link_local 169.254.169.254`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Why an allowed connection failed or ended early (e.g. `connect_refused`, `idle_timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// True when this denial was a violation acted on by `--on-violation`.
    pub violation: bool,
}

enum Msg {
    Line(Vec<u8>),
    Close(oneshot::Sender<()>),
}

/// A serialised audit line that found the queue full.
#[must_use = "a line that is not sent is lost from the audit log"]
pub struct Line(Vec<u8>);

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    failed: CancellationToken,
}

/// The writer thread; join it after [`Audit::close`].
pub struct AuditThread(JoinHandle<()>);

impl AuditThread {
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Audit {
    /// Opens the target and starts the writer. `failed` is cancelled if a write fails.
    /// `reserve`: disk space a file keeps allocated ahead of its end (`--audit-reserve`):
    /// room for the lines of every request in flight when the disk fills (sandbox-supplied
    /// text is bounded to 256 bytes a field, so a line is a few hundred bytes). Given back
    /// when the log is closed.
    pub fn open(
        target: &AuditTarget,
        reserve: u64,
        failed: CancellationToken,
    ) -> io::Result<(Self, AuditThread)> {
        let sink = match target {
            AuditTarget::Stderr => Sink::Stream(Box::new(io::stderr())),
            AuditTarget::Stdout => Sink::Stream(Box::new(io::stdout())),
            AuditTarget::File(path) => {
                let context = |e: io::Error| {
                    io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()))
                };
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(context)?;
                let mut sink = FileSink::new(file, reserve).map_err(context)?;
                // A disk without room for the reserve is full already: refuse to start.
                sink.reserve(0).map_err(|e| {
                    context(io::Error::new(
                        e.kind(),
                        format!("cannot reserve {reserve} bytes (--audit-reserve): {e}"),
                    ))
                })?;
                Sink::File(sink)
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_failed = failed.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, sink, writer_failed))?;
        Ok((Self { tx, failed }, AuditThread(thread)))
    }

    /// True once the log could not be written, or the disk has no room left beyond the
    /// reserve: the run is ending, and nothing more may be allowed.
    pub fn failing(&self) -> bool {
        self.failed.is_cancelled()
    }

    /// Queues one record (waits while the queue is full).
    pub async fn write<T: Serialize>(&self, record: &T) {
        if let Some(line) = self.try_write(record) {
            self.send(line).await;
        }
    }

    /// Queues one record if the queue has room now; otherwise hands the serialised line back
    /// for [`Audit::send`], so a caller that cannot wait (a `Drop`) waits only when it must.
    pub fn try_write<T: Serialize>(&self, record: &T) -> Option<Line> {
        let mut line = serde_json::to_vec(record).expect("audit records always serialise");
        line.push(b'\n');
        self.try_queue(line)
    }

    /// [`Audit::try_write`] for a line already written (with its newline).
    pub fn try_queue(&self, line: Vec<u8>) -> Option<Line> {
        match self.tx.try_send(Msg::Line(line)) {
            Err(mpsc::error::TrySendError::Full(Msg::Line(line))) => Some(Line(line)),
            // Sent, or the channel is closed: the writer failed (already signalled through
            // the `failed` token) or the run is ending.
            _ => None,
        }
    }

    /// Queues a line [`Audit::try_write`] could not, waiting while the queue is full.
    pub async fn send(&self, line: Line) {
        let _ = self.tx.send(Msg::Line(line.0)).await;
    }

    /// Flushes everything queued so far and stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Where lines go.
enum Sink {
    /// A regular file (or anything opened by path): reserved ahead, cut back on failure.
    File(FileSink),
    /// stdout or stderr.
    Stream(Box<dyn Write + Send>),
}

impl Sink {
    /// Gives back the space reserved past the last line.
    fn close(&mut self) {
        if let Sink::File(f) = self
            && f.reserved > f.len
        {
            let _ = f.file.set_len(f.len);
        }
    }

    /// Writes one batch of whole lines.
    fn write_batch(&mut self, batch: &[u8], failed: &CancellationToken) -> io::Result<()> {
        match self {
            Sink::File(f) => f.write_batch(batch, failed),
            Sink::Stream(w) => w.write_all(batch).and_then(|()| w.flush()),
        }
    }
}

struct FileSink {
    file: std::fs::File,
    /// Bytes of whole lines in the file.
    len: u64,
    /// Allocated up to here (`KEEP_SIZE`: the file's size is still `len`).
    reserved: u64,
    /// fallocate works on this file system (tmpfs, ext4, xfs, btrfs do; a FIFO does not).
    can_reserve: bool,
    /// `--audit-reserve`.
    reserve: u64,
}

impl FileSink {
    fn new(file: std::fs::File, reserve: u64) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            len: meta.len(),
            reserved: meta.len(),
            can_reserve: meta.file_type().is_file() && reserve > 0,
            reserve,
            file,
        })
    }

    /// Allocates up to `len + extra + reserve`. Fails with ENOSPC when the disk has no room.
    fn reserve(&mut self, extra: u64) -> io::Result<()> {
        let want = self.len + extra + self.reserve;
        if !self.can_reserve || self.reserved >= want {
            return Ok(());
        }
        // Grow by another whole reserve, so a busy log asks once per reserve's worth of lines.
        let to = want + self.reserve;
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let offset = i64::try_from(self.reserved).unwrap_or(i64::MAX);
        let span = i64::try_from(to - self.reserved).unwrap_or(i64::MAX);
        match nix::fcntl::fallocate(&self.file, flags, offset, span) {
            Ok(()) => {
                self.reserved = to;
                Ok(())
            }
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                self.can_reserve = false;
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn write_batch(&mut self, batch: &[u8], failed: &CancellationToken) -> io::Result<()> {
        if let Err(e) = self.reserve(batch.len() as u64) {
            // No room beyond the reserve: stop the run now, and keep writing into the reserve
            // the lines of what was already in flight.
            if !failed.is_cancelled() {
                tracing::error!(error = %e, "the audit log's disk is full; stopping the run");
                failed.cancel();
            }
        }
        let mut written = 0;
        while written < batch.len() {
            match self.file.write(&batch[written..]) {
                Ok(0) => {
                    return self.cut_back(batch, written, io::ErrorKind::WriteZero.into());
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.cut_back(batch, written, e),
            }
        }
        self.len += batch.len() as u64;
        Ok(())
    }

    /// After a short write: truncates the file to its last complete line and returns `err`.
    fn cut_back(&mut self, batch: &[u8], written: usize, err: io::Error) -> io::Result<()> {
        let whole = batch[..written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        self.len += whole as u64;
        let _ = self.file.set_len(self.len);
        Err(err)
    }
}

fn write_loop(mut rx: mpsc::Receiver<Msg>, mut sink: Sink, failed: CancellationToken) {
    // Writing to an already open file needs no privilege.
    let _ = crate::privileges::limit_thread(&[]);
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        if matches!(first, Msg::Line(_)) {
            std::thread::sleep(LINGER);
        }
        let mut next = Some(first);
        let mut close = None;
        // Write everything already queued at once.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => batch.extend_from_slice(&line),
                Msg::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        let result = sink.write_batch(&batch, &failed);
        batch.clear();
        if batch.capacity() > 1024 * 1024 {
            batch.shrink_to(64 * 1024);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit log; stopping the run");
            failed.cancel();
            sink.close();
            return;
        }
        if let Some(done) = close {
            sink.close();
            let _ = done.send(());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_reach_the_file_in_order_and_close_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let failed = CancellationToken::new();
        let (audit, thread) =
            Audit::open(&AuditTarget::File(path.clone()), 0, failed.clone()).unwrap();
        for i in 0..1000 {
            audit
                .write(&serde_json::json!({"schema": SCHEMA, "n": i}))
                .await;
        }
        audit.close().await;
        thread.join();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines.iter().enumerate().all(|(i, v)| v["n"] == i));
        assert!(!failed.is_cancelled());
    }

    #[tokio::test]
    async fn a_line_that_finds_the_queue_full_comes_back_and_is_sent_in_order() {
        // A FIFO nobody reads yet: the writer blocks once the pipe and its buffer are full,
        // so the queue fills. Opening it read-write here keeps the writer's open from blocking.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audit.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let mut reader = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let failed = CancellationToken::new();
        let (audit, thread) =
            Audit::open(&AuditTarget::File(fifo), 1 << 20, failed.clone()).unwrap();
        let mut n = 0u64;
        let full = loop {
            if let Some(line) = audit.try_write(&serde_json::json!({"n": n})) {
                break line;
            }
            n += 1;
        };
        assert!(n >= QUEUE as u64, "the queue took only {n} lines");
        // Drain the FIFO while the held line and one more are sent.
        let drain = std::thread::spawn(move || {
            let mut text = String::new();
            let mut lines = 0;
            let mut buf = [0u8; 64 * 1024];
            while lines < n + 2 {
                let got = io::Read::read(&mut reader, &mut buf).unwrap();
                text.push_str(std::str::from_utf8(&buf[..got]).unwrap());
                lines = text.matches('\n').count() as u64;
            }
            text
        });
        audit.send(full).await;
        audit.write(&serde_json::json!({"n": n + 1})).await;
        audit.close().await;
        thread.join();
        let text = drain.join().unwrap();
        let got: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, (0..n + 2).collect::<Vec<_>>());
        assert!(!failed.is_cancelled());
    }

    #[tokio::test]
    async fn a_failing_sink_cancels_the_run() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let failed = CancellationToken::new();
        let (audit, thread) =
            Audit::open(&AuditTarget::File("/dev/full".into()), 0, failed.clone()).unwrap();
        audit.write(&serde_json::json!({"schema": SCHEMA})).await;
        failed.cancelled().await;
        thread.join();
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
    }
}
