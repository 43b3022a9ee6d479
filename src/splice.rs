//! Zero-copy relaying for tunnels: bytes move socket → pipe → socket with splice(2), so the
//! payload never enters the warden's memory and costs no copy. Pipes come from a small shared
//! pool and are held only while bytes are in flight: an idle tunnel holds none, which keeps
//! file descriptors at two per tunnel and stays clear of the kernel's per-user pipe budget
//! (`/proc/sys/fs/pipe-user-pages-soft`, beyond which new pipes shrink to one page).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Capacities asked for each pipe, largest first; the capacity is also the most bytes moved
/// per splice. 1 MiB (the unprivileged `pipe-max-size`) costs about 20% less CPU per byte than
/// 256 KiB on loopback (fewer splices, wake-ups and pushes; docs/performance.md). The kernel
/// counts a pipe's capacity against the per-user budget (`pipe-user-pages-soft`, 64 MiB by
/// default) whether or not it holds bytes, so a smaller size is the fallback when the large
/// one is refused, and the pool is kept small.
pub const PIPE_SIZES: [usize; 2] = [1024 * 1024, 256 * 1024];

/// Idle pipes kept for reuse (16 MiB of capacity at most, a quarter of the default per-user
/// budget); beyond this a returned pipe is closed.
const POOL_MAX: usize = 16;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// The two ends of a pipe, empty whenever it is in the pool.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet out.
    held: usize,
    /// The pipe's capacity (what the kernel granted).
    capacity: usize,
}

impl Pipe {
    /// A pipe from the pool, or a new one.
    pub fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(p);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // The kernel may refuse (per-user budget, a lower `pipe-max-size`): then a smaller size,
        // or whatever the pipe has (64 KiB, or one page once the user is over budget).
        let capacity = PIPE_SIZES
            .iter()
            .find_map(|&size| fcntl(&write, FcntlArg::F_SETPIPE_SZ(size as i32)).ok())
            .or_else(|| fcntl(&write, FcntlArg::F_GETPIPE_SZ).ok())
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(4096);
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity,
        })
    }

    /// Returns an empty pipe to the pool; a pipe still holding bytes is closed instead.
    pub fn give_back(self) {
        if self.held != 0 {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }

    /// Moves what `src` has ready into the pipe: `Ok(0)` is EOF, `WouldBlock` means nothing
    /// was ready (readiness is cleared, so the caller awaits `readable` again).
    pub fn fill_from(&mut self, src: &TcpStream) -> io::Result<Fill> {
        let room = self.capacity - self.held;
        let slots = self.capacity / page_size();
        let held = self.held;
        let (n, drained) = crate::readiness::read_with(src, || {
            let n = splice(
                src,
                None,
                &self.write,
                None,
                room,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )?;
            Ok((n, proves_drained(held, room, slots, n)))
        })?;
        self.held += n;
        Ok(Fill { n, drained })
    }

    /// Moves as much of the pipe's contents into `dst` as it takes now.
    pub fn drain_into(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let n = dst.try_io(Interest::WRITABLE, || {
            splice(
                &self.read,
                None,
                dst,
                None,
                self.held,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )
            .map_err(io::Error::from)
        })?;
        self.held -= n;
        Ok(n)
    }

    /// Bytes waiting in the pipe.
    pub fn held(&self) -> usize {
        self.held
    }
}

/// What one [`Pipe::fill_from`] moved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Bytes moved into the pipe; 0 is end of stream.
    pub n: usize,
    /// The socket had nothing more: its readiness was cleared, so the next wait is for new
    /// bytes (and the pipe, once emptied, can go back to the pool first).
    pub drained: bool,
}

/// Whether a splice of `n` bytes from a TCP socket into a pipe that held `held` bytes, asked
/// for `room` bytes, proves the socket had no more (as an `EAGAIN` would, `crate::readiness`).
/// The kernel's TCP splice stops at the first of: the socket's queue is empty, `room` bytes
/// moved, the pipe's slots are full, a FIN (whose closed state tokio keeps) or urgent data.
/// Each slot takes at least one byte, so from an empty pipe fewer bytes than it has `slots`,
/// and fewer than `room`, can only mean the first (or the last two). A pipe that already held
/// bytes may have had few slots free, so it proves nothing.
fn proves_drained(held: usize, room: usize, slots: usize, n: usize) -> bool {
    held == 0 && n < room.min(slots)
}

/// The kernel's page size: a pipe has one slot per page of capacity.
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .filter(|&p| p > 0)
            // Unknown: assume the largest page Linux uses, which gives the fewest slots.
            .unwrap_or(64 * 1024)
    })
}

/// Idle pipes in the pool (for tests and diagnostics).
pub fn pooled() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_a_short_splice_into_an_empty_pipe_proves_the_socket_drained() {
        // (held, room, slots, n, drained)
        let cases = [
            (0, 1 << 20, 256, 32, true),
            (0, 1 << 20, 256, 255, true),
            // As many bytes as slots: the slots may have run out first.
            (0, 1 << 20, 256, 256, false),
            (0, 1 << 20, 256, 64 * 1024, false),
            // All the room asked for was taken: more may be waiting.
            (0, 100, 256, 100, false),
            (0, 100, 256, 99, true),
            // Bytes already in the pipe may have used up its slots.
            (10, 1 << 20, 256, 32, false),
        ];
        assert!(!cases.is_empty());
        for (held, room, slots, n, want) in cases {
            assert_eq!(
                proves_drained(held, room, slots, n),
                want,
                "held {held}, room {room}, slots {slots}, n {n}"
            );
        }
    }

    #[tokio::test]
    async fn bytes_cross_the_pipe_unchanged_and_the_pipe_returns_empty() {
        let (mut a, a_peer) = pair().await;
        let (b_peer, mut b) = pair().await;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut pipe = Pipe::take().unwrap();
        // The largest size the system allows (the per-user budget does not bind root).
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let want = PIPE_SIZES.iter().copied().find(|&s| s <= max);
        assert_eq!(Some(pipe.capacity), want.or(Some(pipe.capacity)));
        assert!(pipe.capacity >= 64 * 1024);
        let mut moved = 0;
        loop {
            a_peer.readable().await.unwrap();
            match pipe.fill_from(&a_peer) {
                Ok(Fill { n: 0, .. }) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
            while pipe.held() > 0 {
                b_peer.writable().await.unwrap();
                match pipe.drain_into(&b_peer) {
                    Ok(n) => moved += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        drop(b_peer);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(moved, data.len());
        assert_eq!(got, data);
        let before = pooled();
        pipe.give_back();
        assert_eq!(pooled(), before + 1);
        drop(writer.await.unwrap());
    }
}
