//! A small hand-written nfnetlink client: message building, batches, acks.
//!
//! Small and central enough to write by hand: a netlink message is a 16-byte
//! header, a 4-byte nfgenmsg and type-length-value attributes aligned to 4
//! bytes. Writing it here keeps the hot path free of panics on large
//! messages and of allocations per element.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: i32 = 12;
/// Message flags.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// Dump a whole table.
pub const NLM_F_DUMP: u16 = 0x300;
/// Create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
/// `NLA_F_NESTED`: marks an attribute holding attributes.
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// nf_tables subsystem id.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// conntrack subsystem id.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;

/// Rounds up to netlink's 4-byte alignment.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds a buffer of netlink messages.
#[derive(Debug, Default)]
pub struct MsgBuf {
    buf: Vec<u8>,
    seq: u32,
    /// Sequence numbers of messages that asked for an ack.
    acked: Vec<u32>,
}

impl MsgBuf {
    /// An empty buffer whose first message gets sequence number `seq`.
    pub fn new(seq: u32) -> MsgBuf {
        MsgBuf {
            buf: Vec::with_capacity(64 * 1024),
            seq,
            acked: Vec::new(),
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded messages.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Sequence numbers that expect an ack, in order.
    pub fn acked(&self) -> &[u32] {
        &self.acked
    }

    /// The next sequence number to be used.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Starts a message: netlink header plus nfgenmsg. Returns its offset for
    /// [`MsgBuf::end`].
    pub fn begin(&mut self, msg_type: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        if flags & NLM_F_ACK != 0 {
            self.acked.push(seq);
        }
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end()
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Finishes the message started at `start`.
    pub fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Adds an attribute with a raw payload.
    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + align(len) - len, 0);
    }

    /// Adds an attribute exactly as received (header included), padded.
    pub fn attr_raw(&mut self, raw: &[u8]) {
        self.buf.extend_from_slice(raw);
        self.buf
            .resize(self.buf.len() + align(raw.len()) - raw.len(), 0);
    }

    /// Adds a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    /// Adds a big-endian u32 attribute (nf_tables' byte order).
    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// Adds a big-endian u64 attribute.
    pub fn attr_be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// Opens a nested attribute; close it with [`MsgBuf::nest_end`].
    pub fn nest_begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes the nested attribute opened at `start`.
    pub fn nest_end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Adds a nfnetlink batch-begin message for subsystem `subsys`.
    pub fn batch_begin(&mut self, subsys: u16) {
        let s = self.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, subsys);
        self.end(s);
    }

    /// Adds a nfnetlink batch-end message.
    pub fn batch_end(&mut self, subsys: u16) {
        let s = self.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, subsys);
        self.end(s);
    }
}

/// One netlink attribute, borrowed from a received message.
#[derive(Clone, Copy, Debug)]
pub struct Attr<'a> {
    /// Type, without the nested/byte-order flags.
    pub ty: u16,
    /// Payload.
    pub data: &'a [u8],
    /// The whole attribute, header included (to send it back as is).
    pub raw: &'a [u8],
}

/// Iterates over the attributes in `b`; stops at the first malformed one.
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let a = Attr {
            ty,
            data: &b[4..len],
            raw: &b[..len],
        };
        b = &b[align(len).min(b.len())..];
        Some(a)
    })
}

/// One received netlink message.
#[derive(Clone, Copy, Debug)]
pub struct Msg<'a> {
    /// Message type.
    pub ty: u16,
    /// Sequence number.
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

/// Splits a received buffer into messages.
pub fn messages(mut b: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    std::iter::from_fn(move || {
        if b.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            return None;
        }
        let m = Msg {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[16..len],
        };
        b = &b[align(len).min(b.len())..];
        Some(m)
    })
}

/// What the kernel answered to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Acknowledged.
    Ack,
    /// Refused with this errno.
    Error(i32),
}

/// A netfilter netlink socket.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
    seq: u32,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl NfSocket {
    /// Opens and binds a `NETLINK_NETFILTER` socket with large buffers, capped
    /// acks and a receive timeout (a kernel that never answers must not hang
    /// the enforcer).
    pub fn open() -> io::Result<NfSocket> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        })?;
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr outlives the call; the length matches its type.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        })?;
        let s = NfSocket {
            fd,
            seq: (std::process::id() << 16) ^ 0x5157,
        };
        let big: libc::c_int = 8 << 20;
        // FORCE variants need CAP_NET_ADMIN, which we need anyway; fall back
        // to the plain ones (capped by rmem_max) without it.
        if s.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, big)
            .is_err()
        {
            let _ = s.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, big);
        }
        if s.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, big)
            .is_err()
        {
            let _ = s.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, big);
        }
        // Errors carry only the header of the refused message, not all of it.
        let _ = s.setsockopt(libc::SOL_NETLINK, 10 /* NETLINK_CAP_ACK */, 1);
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: tv outlives the call; the length matches its type.
        check(unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        })?;
        Ok(s)
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: v outlives the call; the length matches its type.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        })
        .map(|_| ())
    }

    /// A fresh message buffer with this socket's next sequence numbers.
    pub fn buffer(&mut self) -> MsgBuf {
        MsgBuf::new(self.seq)
    }

    /// Sends `msgs` in one datagram and collects one reply per acked message.
    /// Returns replies in the order of `msgs.acked()`.
    pub fn transact(&mut self, msgs: &MsgBuf) -> io::Result<Vec<Reply>> {
        self.seq = msgs.next_seq();
        self.send(msgs.bytes())?;
        let want = msgs.acked();
        let mut replies: Vec<Option<Reply>> = vec![None; want.len()];
        let mut missing = want.len();
        let mut buf = vec![0u8; 256 * 1024];
        while missing > 0 {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                if m.ty != NLMSG_ERROR || m.payload.len() < 4 {
                    continue;
                }
                let code =
                    i32::from_ne_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                match want.iter().position(|&s| s == m.seq) {
                    Some(i) => {
                        if replies[i].is_none() {
                            missing -= 1;
                        }
                        replies[i] = Some(if code == 0 {
                            Reply::Ack
                        } else {
                            Reply::Error(-code)
                        });
                    }
                    // An error on a message that wanted no ack (the batch
                    // header itself): the whole batch was refused.
                    None if code != 0 => return Err(io::Error::from_raw_os_error(-code)),
                    None => {}
                }
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.unwrap_or(Reply::Ack))
            .collect())
    }

    /// Sends `msgs` without waiting for any answer (and without asking for
    /// acks: build them without `NLM_F_ACK`). nf_tables applies a batch
    /// inside the send itself, so its changes are in place when this
    /// returns; the error messages it may have queued are read and dropped
    /// before the next post. Never blocks: a full socket buffer is an error.
    pub fn post(&mut self, msgs: &MsgBuf) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        // SAFETY: buf is valid for writes of its length; MSG_DONTWAIT never
        // blocks.
        while unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
        self.seq = msgs.next_seq();
        self.send_with(msgs.bytes(), libc::MSG_DONTWAIT)
    }

    /// Sends a dump request and calls `each` with every answer message until
    /// the dump ends. Returns an errno the kernel answered with, if any.
    pub fn dump(
        &mut self,
        msgs: &MsgBuf,
        mut each: impl FnMut(Msg<'_>),
    ) -> io::Result<Option<i32>> {
        self.seq = msgs.next_seq();
        self.send(msgs.bytes())?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                match m.ty {
                    NLMSG_DONE => return Ok(None),
                    NLMSG_ERROR => {
                        let code = m
                            .payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return Ok(if code == 0 { None } else { Some(-code) });
                    }
                    _ => each(m),
                }
            }
        }
    }

    fn send(&self, b: &[u8]) -> io::Result<()> {
        self.send_with(b, 0)
    }

    fn send_with(&self, b: &[u8], flags: libc::c_int) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; zeroed is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: b and to outlive the call; lengths match.
        let n = check(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                b.as_ptr().cast(),
                b.len(),
                flags,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) as libc::c_int
        })?;
        if n as usize != b.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Describes an errno from nf_tables in a sentence about `what`.
pub fn explain(errno: i32, what: &str) -> String {
    match errno {
        libc::EPERM | libc::EACCES => {
            format!("{what}: permission denied; run sipwarden as root or give it CAP_NET_ADMIN")
        }
        libc::ENOENT => {
            format!("{what}: not found (was the ruleset flushed or the table deleted?)")
        }
        libc::EEXIST => format!("{what}: already exists"),
        // The kernel answers ENFILE when a set reached its `size`.
        libc::ENOSPC | libc::ENFILE => {
            format!("{what}: the set is full; raise [firewall] set_size")
        }
        libc::EMSGSIZE => format!("{what}: message too large for the netlink socket"),
        libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EOPNOTSUPP => {
            format!("{what}: nf_tables is not available in this kernel (load the nf_tables module)")
        }
        libc::EBUSY => format!("{what}: busy (another ruleset change is in progress); will retry"),
        libc::EINVAL => format!("{what}: the kernel refused it as invalid"),
        e => format!("{what}: {}", io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_aligned_messages_and_parses_them_back() {
        let mut b = MsgBuf::new(7);
        let s = b.begin(0x0a0c, NLM_F_REQUEST | NLM_F_ACK, 1, 0);
        b.attr_str(1, "sipwarden");
        let n = b.nest_begin(3);
        b.attr(1, &[192, 0, 2, 1]);
        b.attr_be64(4, 1000);
        b.nest_end(n);
        b.end(s);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(b.acked(), &[7]);
        let msgs: Vec<Msg> = messages(b.bytes()).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].seq), (0x0a0c, 7));
        let top: Vec<Attr> = attrs(&msgs[0].payload[4..]).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].data, b"sipwarden\0");
        let inner: Vec<Attr> = attrs(top[1].data).collect();
        assert_eq!(inner[0].data, &[192, 0, 2, 1]);
        assert_eq!(inner[1].data, &1000u64.to_be_bytes());
    }

    #[test]
    fn malformed_input_ends_iteration() {
        assert_eq!(attrs(&[0xff, 0xff, 1, 0]).count(), 0);
        assert_eq!(messages(&[1, 2, 3]).count(), 0);
        assert_eq!(attrs(&[]).count(), 0);
    }
}
