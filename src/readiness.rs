//! Reads that leave a socket marked not-readable when they show it drained. tokio clears a
//! socket's readiness only when a read fails with `EAGAIN`, so every burst costs one read that
//! moves nothing; on a short CONNECT tunnel that was two of its ~27 syscalls. A read that
//! returns less than it could have taken proves the receive queue was empty at that moment,
//! which is what `EAGAIN` would prove: tokio's own `AsyncRead` for `TcpStream` makes the same
//! inference. Data that arrives later raises a new epoll event, so nothing is missed; a
//! read-side close stays visible, because clearing readiness keeps the closed bits.

use std::io::{self, Read};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Runs `op`, one non-blocking read from `stream` that returns the bytes it moved and whether
/// they emptied the socket; if they did (and were not end of stream), the stream's read
/// readiness is cleared. Returns the bytes moved and whether readiness was cleared. `Ok(0)` is
/// end of stream and `WouldBlock` means nothing was ready, as for [`TcpStream::try_read`].
pub fn read_with(
    stream: &TcpStream,
    op: impl FnOnce() -> io::Result<(usize, bool)>,
) -> io::Result<(usize, bool)> {
    let mut short = None;
    // Returning WouldBlock from the closure is how tokio is told to clear readiness: it does so
    // only if no new readiness event was recorded since this call observed it.
    let r = stream.try_io(Interest::READABLE, || {
        let (n, drained) = op()?;
        if n > 0 && drained {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok((n, true)),
        None => r.map(|n| (n, false)),
    }
}

/// [`TcpStream::try_read`], less the `EAGAIN` read after a short one.
pub fn try_read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let (n, _) = read_with(stream, || {
        let n = (&*socket2::SockRef::from(stream)).read(buf)?;
        Ok((n, n < buf.len()))
    })?;
    Ok(n)
}

/// Two ends of a loopback TCP connection, for unit tests of socket code.
#[cfg(test)]
pub(crate) async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Whether `stream` is still marked readable (without reading).
    async fn marked_readable(stream: &TcpStream) -> bool {
        tokio::time::timeout(Duration::ZERO, stream.readable())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_short_read_clears_readiness_and_a_full_one_keeps_it() {
        let (mut writer, reader) = pair().await;
        writer.write_all(b"0123456789").await.unwrap();
        reader.readable().await.unwrap();
        // A full buffer: more may be there, so readiness stays.
        let mut four = [0u8; 4];
        assert_eq!(try_read(&reader, &mut four).unwrap(), 4);
        assert!(marked_readable(&reader).await);
        // A short read: the queue is empty, so readiness goes without an EAGAIN read.
        let mut big = [0u8; 64];
        assert_eq!(try_read(&reader, &mut big).unwrap(), 6);
        assert_eq!(&big[..6], b"456789");
        assert!(!marked_readable(&reader).await);
        // New bytes raise it again.
        writer.write_all(b"ab").await.unwrap();
        reader.readable().await.unwrap();
        assert_eq!(try_read(&reader, &mut big).unwrap(), 2);
    }

    #[tokio::test]
    async fn end_of_stream_after_a_short_read_is_still_seen() {
        let (mut writer, reader) = pair().await;
        writer.write_all(b"last").await.unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        let mut buf = [0u8; 64];
        // Wait until the reactor has seen the FIN.
        loop {
            let ready = reader.ready(Interest::READABLE).await.unwrap();
            if ready.is_read_closed() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(try_read(&reader, &mut buf).unwrap(), 4);
        // Readiness keeps the closed bit, so the reader is woken for the EOF.
        tokio::time::timeout(Duration::from_secs(5), reader.readable())
            .await
            .expect("end of stream lost")
            .unwrap();
        assert_eq!(try_read(&reader, &mut buf).unwrap(), 0);
    }
}
