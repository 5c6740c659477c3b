//! The probe's traffic: listeners in the server namespace, sources in the
//! other, and what arrived; and the conntrack entries of a source, read
//! over netlink as the enforcer reads them.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::netns::{ProbeError, addr, inside};
use crate::enforce::netlink::{NFNL_SUBSYS_CTNETLINK, NLM_F_DUMP, NLM_F_REQUEST, NfSocket, attrs};

const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;

fn step(what: &str) -> impl Fn(std::io::Error) -> ProbeError + '_ {
    move |e| ProbeError::Step(format!("{what}: {e}"))
}

/// The server's sockets, made inside its namespace.
pub struct Listeners {
    /// UDP on the server's IPv4 address.
    pub udp4: UdpSocket,
    /// UDP on the server's IPv6 address.
    pub udp6: UdpSocket,
    /// TCP on the server's IPv4 address (non-blocking).
    pub tcp: TcpListener,
    /// Where TCP listens.
    pub tcp_at: SocketAddr,
}

impl Listeners {
    /// Binds the listeners on `port` inside `ns`.
    pub fn open(ns: &str, port: u16, limit: Duration) -> Result<Listeners, ProbeError> {
        let (a4, a6) = (
            SocketAddr::new(addr::SERVER_V4, port),
            SocketAddr::new(addr::SERVER_V6, port),
        );
        inside(ns, limit, move || -> Result<Listeners, ProbeError> {
            let udp4 = UdpSocket::bind(a4).map_err(step("binding UDP 192.0.2.1"))?;
            let udp6 = UdpSocket::bind(a6).map_err(step("binding UDP 2001:db8::1"))?;
            let tcp = TcpListener::bind(a4).map_err(step("binding TCP 192.0.2.1"))?;
            tcp.set_nonblocking(true)
                .map_err(step("making the TCP listener non-blocking"))?;
            Ok(Listeners {
                udp4,
                udp6,
                tcp,
                tcp_at: a4,
            })
        })?
    }
}

/// The sources' UDP sockets, made inside their namespace.
pub struct Clients {
    /// From the address to be banned.
    pub flow: UdpSocket,
    /// From the address never banned.
    pub control: UdpSocket,
    /// From the IPv6 address to be banned.
    pub v6: UdpSocket,
}

impl Clients {
    /// Binds the sockets (ephemeral ports) inside `ns`.
    pub fn open(ns: &str, limit: Duration) -> Result<Clients, ProbeError> {
        let (b4, c4, b6) = (
            SocketAddr::new(addr::BANNED_V4, 0),
            SocketAddr::new(addr::CONTROL_V4, 0),
            SocketAddr::new(addr::BANNED_V6, 0),
        );
        inside(ns, limit, move || -> Result<Clients, ProbeError> {
            Ok(Clients {
                flow: UdpSocket::bind(b4).map_err(step("binding UDP 192.0.2.2"))?,
                control: UdpSocket::bind(c4).map_err(step("binding UDP 192.0.2.3"))?,
                v6: UdpSocket::bind(b6).map_err(step("binding UDP 2001:db8::2"))?,
            })
        })?
    }

    /// The banned flow's local address, for the report.
    pub fn flow_addr(&self) -> String {
        self.flow
            .local_addr()
            .map_or_else(|_| addr::BANNED_V4.to_string(), |a| a.to_string())
    }
}

/// What one UDP exchange saw.
pub struct Udp {
    /// Datagrams of this exchange that reached the listener from the source.
    pub arrived: usize,
    /// Whether the listener's answer came back to the source.
    pub answered: bool,
}

/// Sends `n` datagrams tagged `tag` from `from` to `to`'s address and
/// counts those `to` receives from `from` within `wait`; with `answer`,
/// `to` answers each and the answer must come back.
pub fn udp(
    from: &UdpSocket,
    to: &UdpSocket,
    n: usize,
    tag: &str,
    wait: Duration,
    answer: bool,
) -> Result<Udp, ProbeError> {
    let src = from.local_addr().map_err(step("UDP source"))?;
    let dst = to.local_addr().map_err(step("UDP listener"))?;
    let mut buf = [0u8; 512];
    // Leftovers of an earlier exchange are not this one's.
    to.set_nonblocking(true).map_err(step("UDP listener"))?;
    for _ in 0..1000 {
        if to.recv_from(&mut buf).is_err() {
            break;
        }
    }
    to.set_nonblocking(false).map_err(step("UDP listener"))?;
    for i in 0..n {
        from.send_to(format!("swprobe {tag} {i}").as_bytes(), dst)
            .map_err(step("sending UDP"))?;
    }
    let want = format!("swprobe {tag} ");
    let end = Instant::now() + wait;
    let mut arrived = 0;
    while arrived < n {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        to.set_read_timeout(Some(left))
            .map_err(step("UDP listener"))?;
        match to.recv_from(&mut buf) {
            Ok((len, peer)) => {
                if peer == src && buf[..len].starts_with(want.as_bytes()) {
                    arrived += 1;
                    if answer {
                        to.send_to(b"swprobe answer", peer)
                            .map_err(step("answering UDP"))?;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(step("receiving UDP")(e)),
        }
    }
    let mut answered = false;
    if answer && arrived > 0 {
        let end = Instant::now() + wait;
        while !answered {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            from.set_read_timeout(Some(left))
                .map_err(step("UDP source"))?;
            match from.recv_from(&mut buf) {
                Ok((_, peer)) => answered = peer == dst,
                Err(_) => break,
            }
        }
    }
    Ok(Udp { arrived, answered })
}

/// A TCP connection: the source's end and the listener's.
pub struct Tcp {
    client: TcpStream,
    server: TcpStream,
}

/// Connects from `from` (an address of namespace `ns`) to the listener,
/// waiting `wait` for the connection and for the listener to accept it.
/// Returns the connection and who the listener saw, when it was accepted.
pub fn tcp_connect(
    ns: &str,
    from: IpAddr,
    l: &Listeners,
    wait: Duration,
) -> Result<(Option<Tcp>, Option<SocketAddr>), ProbeError> {
    let to = l.tcp_at;
    // The socket is made on a thread in the source's namespace.
    let client = inside(ns, wait + Duration::from_secs(1), move || {
        connect_from(SocketAddr::new(from, 0), to, wait)
    })?;
    let end = Instant::now() + if client.is_ok() { wait } else { Duration::ZERO };
    loop {
        match l.tcp.accept() {
            Ok((server, peer)) => {
                return Ok((client.ok().map(|client| Tcp { client, server }), Some(peer)));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    return Ok((None, None));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(step("accepting TCP")(e)),
        }
    }
}

/// A TCP connection from `from` to `to` (IPv4), given up after `wait`:
/// std connects only from the address the route picks.
fn connect_from(from: SocketAddr, to: SocketAddr, wait: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let sin = |a: SocketAddr| -> std::io::Result<libc::sockaddr_in> {
        let SocketAddr::V4(v4) = a else {
            return Err(std::io::Error::new(ErrorKind::Unsupported, "IPv4 only"));
        };
        // SAFETY: sockaddr_in is plain data; all zero is a valid value.
        let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        s.sin_family = libc::AF_INET as libc::sa_family_t;
        s.sin_port = v4.port().to_be();
        s.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        Ok(s)
    };
    let (src, dst) = (sin(from)?, sin(to)?);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = sock.as_raw_fd();
    // SAFETY: `src` is a valid sockaddr_in of `len` bytes, alive for the call.
    if unsafe { libc::bind(raw, (&raw const src).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as for bind.
    if unsafe { libc::connect(raw, (&raw const dst).cast(), len) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let mut pfd = libc::pollfd {
        fd: raw,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, alive for the call.
    match unsafe { libc::poll(&raw mut pfd, 1, ms) } {
        n if n < 0 => return Err(std::io::Error::last_os_error()),
        0 => return Err(ErrorKind::TimedOut.into()),
        _ => {}
    }
    let mut err: libc::c_int = 0;
    let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `elen` are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut elen,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(sock);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Sends 5 bytes on an established connection and returns how many the
/// listener's end received within `wait`.
pub fn tcp_after(mut t: Tcp, wait: Duration) -> Result<usize, ProbeError> {
    t.client
        .write_all(b"after")
        .map_err(step("sending on TCP"))?;
    t.server
        .set_nonblocking(false)
        .and_then(|()| {
            t.server
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        })
        .map_err(step("TCP"))?;
    let mut buf = [0u8; 64];
    match t.server.read(&mut buf) {
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(0),
        Err(e) => Err(step("receiving on TCP")(e)),
    }
}

const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;

/// One conntrack entry's original direction: source, protocol, port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The source address.
    pub src: IpAddr,
    /// The IP protocol number.
    pub proto: u8,
    /// The destination port (0 for protocols without ports).
    pub dport: u16,
}

/// The original direction of a conntrack tuple.
fn orig(tuple: &[u8]) -> Option<Entry> {
    let ip = attrs(tuple).find(|a| a.ty == CTA_TUPLE_IP)?;
    let src = attrs(ip.data).find_map(|a| match (a.ty, a.data.len()) {
        (CTA_IP_V4_SRC, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(a.data).ok()?)),
        (CTA_IP_V6_SRC, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(a.data).ok()?)),
        _ => None,
    })?;
    let (mut proto, mut dport) = (0, 0);
    if let Some(p) = attrs(tuple).find(|a| a.ty == CTA_TUPLE_PROTO) {
        for a in attrs(p.data) {
            match (a.ty, a.data) {
                (CTA_PROTO_NUM, [n, ..]) => proto = *n,
                (CTA_PROTO_DST_PORT, [h, l, ..]) => dport = u16::from_be_bytes([*h, *l]),
                _ => {}
            }
        }
    }
    Some(Entry { src, proto, dport })
}

/// The conntrack entries in `ns` whose original source is one of
/// `sources`.
pub fn conntrack_from(
    ns: &str,
    sources: &[IpAddr],
    limit: Duration,
) -> Result<Vec<Entry>, ProbeError> {
    let sources = sources.to_vec();
    inside(ns, limit, move || -> Result<Vec<Entry>, ProbeError> {
        let mut sock = NfSocket::open().map_err(step("opening a netfilter socket"))?;
        let mut req = sock.buffer();
        let s = req.begin(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            0,
            0,
        );
        req.end(s);
        let mut found = Vec::new();
        let r = sock.dump(&req, |m| {
            let body = m.payload.get(4..).unwrap_or_default();
            if let Some(e) = attrs(body)
                .find(|a| a.ty == CTA_TUPLE_ORIG)
                .and_then(|t| orig(t.data))
                .filter(|e| sources.contains(&e.src))
            {
                found.push(e);
            }
        });
        match r {
            Ok(None) => Ok(found),
            Ok(Some(errno)) => Err(ProbeError::Step(crate::enforce::netlink::explain(
                errno,
                "dumping the conntrack table",
            ))),
            Err(e) => Err(step("dumping the conntrack table")(e)),
        }
    })?
}
