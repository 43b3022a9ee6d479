//! A minimal netlink client, enough to program nf_tables and configure links: message and
//! attribute encoding, a request that waits for every ack, and dumps. The warden talks to the
//! kernel itself, so the container image needs no `nft`, `iptables` or `ip` binary.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const HEADER_LEN: usize = 16;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("kernel refused message {seq}: {errno}")]
    Kernel { seq: u32, errno: nix::errno::Errno },
    #[error("malformed netlink response")]
    Malformed,
    #[error("no answer from the kernel (netlink timeout)")]
    Timeout,
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused a message.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// One netlink message under construction.
#[derive(Debug, Clone)]
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub fn new(kind: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; HEADER_LEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Self { buf }
    }

    /// Appends raw bytes (a family header such as `nfgenmsg` or `ifinfomsg`).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("netlink attribute under 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v)
    }

    /// A u32 in network byte order (nf_tables integer attributes).
    pub fn attr_be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }

    /// A u32 in host byte order (rtnetlink integer attributes).
    pub fn attr_ne32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A nested attribute whose contents `f` writes.
    pub fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = u16::try_from(self.buf.len() - start).expect("nested attribute under 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Sets the length and sequence number and returns the wire bytes.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("netlink message under 4 GiB");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One received message: type, flags, sequence number and payload (after the header).
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into messages.
pub fn messages(mut buf: &[u8]) -> Result<Vec<Received<'_>>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < HEADER_LEN || len > buf.len() {
            return Err(NetlinkError::Malformed);
        }
        out.push(Received {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes")),
            payload: &buf[HEADER_LEN..len],
        });
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or_default();
    }
    Ok(out)
}

/// Iterates the attributes in `buf`, yielding (type without flags, payload).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[4..len];
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// The first attribute of type `kind`.
pub fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// A string attribute without its NUL terminator.
pub fn attr_string(buf: &[u8], kind: u16) -> Option<String> {
    let v = attr(buf, kind)?;
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    Some(String::from_utf8_lossy(v).into_owned())
}

/// A netlink socket of one protocol, in the network namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open(protocol: SockProtocol) -> Result<Self, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(io::Error::from)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(io::Error::from)?;
        let timeout = TimeVal::from(libc_timeval(Duration::from_secs(5)));
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        // Large dumps and batch error replies must fit.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        Ok(Self { fd, seq: 1 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let n = send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()).map_err(io::Error::from)?;
        if n != bytes.len() {
            return Err(NetlinkError::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                "short netlink send",
            )));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, NetlinkError> {
        match recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => Ok(n),
            Err(nix::errno::Errno::EAGAIN) => Err(NetlinkError::Timeout),
            Err(e) => Err(NetlinkError::Io(e.into())),
        }
    }

    /// Sends `bytes` (one message or a batch) and waits for an ack of each of `acks`.
    pub fn transact(&mut self, bytes: &[u8], acks: &[u32]) -> Result<(), NetlinkError> {
        self.send(bytes)?;
        let mut pending: Vec<u32> = acks.to_vec();
        let mut buf = vec![0u8; 1 << 16];
        while !pending.is_empty() {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n])? {
                if m.kind != NLMSG_ERROR {
                    continue;
                }
                let code = i32::from_ne_bytes(
                    m.payload
                        .get(0..4)
                        .ok_or(NetlinkError::Malformed)?
                        .try_into()
                        .expect("4 bytes"),
                );
                if code != 0 {
                    return Err(NetlinkError::Kernel {
                        seq: m.seq,
                        errno: nix::errno::Errno::from_raw(-code),
                    });
                }
                pending.retain(|s| *s != m.seq);
            }
        }
        Ok(())
    }

    /// Sends a dump request and returns every message (type and payload) until `NLMSG_DONE`.
    pub fn dump(&mut self, bytes: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        self.send(bytes)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n])? {
                match m.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            m.payload
                                .get(0..4)
                                .ok_or(NetlinkError::Malformed)?
                                .try_into()
                                .expect("4 bytes"),
                        );
                        if code != 0 {
                            return Err(NetlinkError::Kernel {
                                seq: m.seq,
                                errno: nix::errno::Errno::from_raw(-code),
                            });
                        }
                    }
                    kind => out.push((kind, m.payload.to_vec())),
                }
            }
        }
    }
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_nested_attributes_round_trip() {
        let mut m = Msg::new(0x0a06, NLM_F_REQUEST | NLM_F_ACK);
        m.bytes(&[1, 0, 0, 0]);
        m.attr_str(1, "egress_warden");
        m.nest(4, |m| {
            m.attr_be32(1, 3);
            m.attr(2, &[9, 9, 9]);
        });
        let bytes = m.finish(42);
        assert_eq!(bytes.len() % 4, 0);
        let msgs = messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].kind, msgs[0].seq), (0x0a06, 42));
        let body = &msgs[0].payload[4..];
        assert_eq!(attr_string(body, 1).as_deref(), Some("egress_warden"));
        let nested = attr(body, 4).unwrap();
        assert_eq!(attr(nested, 1), Some(&3u32.to_be_bytes()[..]));
        assert_eq!(attr(nested, 2), Some(&[9u8, 9, 9][..]));
    }

    #[test]
    fn truncated_input_is_malformed_not_a_panic() {
        let bytes = Msg::new(1, 0).finish(1);
        for i in 1..bytes.len() {
            let _ = messages(&bytes[..i]);
            let _ = attrs(&bytes[..i]).count();
        }
        let mut bad = bytes.clone();
        bad[0] = 200;
        assert!(matches!(messages(&bad), Err(NetlinkError::Malformed)));
    }
}
