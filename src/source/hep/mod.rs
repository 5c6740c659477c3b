//! The HEP source: SIP messages mirrored by the server itself, in HEP
//! (Homer Encapsulation Protocol; v3, and v1/v2), over UDP and TCP.
//!
//! Kamailio (`siptrace`), OpenSIPS (`proto_hep`), FreeSWITCH (Sofia
//! `capture-server`), Asterisk (`res_hep`) and rtpengine send a copy of
//! each SIP message they receive or send, after decrypting it: HEP sees SIP
//! over TLS and WebSocket, which the wire sensor never can. The messages go
//! through the same pairing as the wire sensor's
//! ([`source::sip`](crate::source::sip)).
//!
//! Trust: the address counted is the HEP source-address chunk (filled in by
//! the server from the packet it received), never text of the SIP message.
//! A HEP packet is accepted only from a sender inside `allow` and, with a
//! `password`, carrying it as its authentication key; the rest are dropped
//! and counted. Every sender accepted is never banned (the set only grows,
//! see [`HepSenders`]).

pub mod decode;
mod listen;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

pub use self::decode::{HepError, HepPacket, Transport, decode, frame_len};
pub use self::listen::{FRAME_TIMEOUT, HepListeners, IDLE_TIMEOUT, MAX_CONNECTIONS};
use crate::event::{FailureEvent, JailId, Time};
use crate::source::scanner::ScannerList;
use crate::source::sip::{Tracker, failure_event, parse_sip};

/// The port HEP collectors (Homer's heplify-server) listen on.
pub const DEFAULT_PORT: u16 = 9060;

/// `hep = { listen = "127.0.0.1:9060", password = "...", allow = [...] }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HepConfig {
    /// Where to listen, UDP and TCP.
    pub listen: SocketAddr,
    /// The authentication key every packet must carry, if any.
    pub password: Option<String>,
    /// Senders accepted.
    pub allow: Vec<IpNet>,
}

impl HepConfig {
    /// Whether the listener is reachable from beyond this host.
    pub fn beyond_loopback(&self) -> bool {
        !self.listen.ip().is_loopback()
    }

    /// A warning to give at start and in `doctor`: a listener beyond
    /// loopback without a password takes spoofed UDP from anyone in
    /// `allow` (a forged source address is all it needs).
    pub fn warning(&self) -> Option<String> {
        (self.beyond_loopback() && self.password.is_none()).then(|| {
            format!(
                "hep listens on {} beyond loopback without a password: anyone who can forge a UDP packet from an address in allow can make sipwarden ban any address; set password (the servers' HEP auth key)",
                self.listen
            )
        })
    }

    /// What status shows for this listener.
    pub fn label(&self) -> String {
        format!("{} (udp, tcp)", self.listen)
    }
}

/// Counters for `status` and metrics.
#[derive(Debug, Default)]
pub struct HepStats {
    /// Listening.
    pub up: AtomicBool,
    /// SIP messages read.
    pub messages: AtomicU64,
    /// Failures found.
    pub failures: AtomicU64,
    /// Packets from senders outside `allow` (dropped).
    pub dropped_sender: AtomicU64,
    /// Packets without the right authentication key (dropped).
    pub dropped_auth: AtomicU64,
    /// Packets that are not HEP, or broken HEP (dropped; on TCP the
    /// connection is closed).
    pub dropped_malformed: AtomicU64,
    /// TCP connections refused because [`MAX_CONNECTIONS`] were open.
    pub busy: AtomicU64,
    /// TCP connections open now.
    pub connections: AtomicU64,
}

/// Most HEP senders remembered (and protected).
pub const MAX_SENDERS: usize = 1024;

/// The HEP senders seen so far, shared by every HEP listener: the daemon
/// protects each in every jail before it counts a failure a sender
/// reported (the sender records itself before it hands the failure on).
/// The list only grows, up to [`MAX_SENDERS`].
#[derive(Debug, Default)]
pub struct HepSenders {
    inner: Mutex<(Vec<IpAddr>, usize)>,
}

impl HepSenders {
    /// Notes `addr` as a sender; `false` when the list is full.
    pub fn note(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        if g.0.contains(&addr) {
            return true;
        }
        if g.0.len() >= MAX_SENDERS {
            return false;
        }
        g.0.push(addr);
        true
    }

    /// The senders noted since the last call.
    pub fn take_new(&self) -> Vec<IpNet> {
        let Ok(mut g) = self.inner.lock() else {
            return Vec::new();
        };
        let (list, taken) = &mut *g;
        let new = list[*taken..].iter().map(|a| IpNet::from(*a)).collect();
        *taken = list.len();
        new
    }
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The sender is outside `allow`.
    Sender,
    /// No or a wrong authentication key.
    Auth,
    /// Not HEP, or broken HEP.
    Malformed(HepError),
}

/// What happens to every HEP packet, whichever socket brought it: checks,
/// decoding, the SIP pairing. No sockets here, so it tests without them.
pub struct HepIntake {
    /// The jail its failures count for.
    pub jail: JailId,
    /// Its name, for logs.
    pub jail_name: String,
    /// The configuration.
    pub cfg: HepConfig,
    /// Attack-tool user agents.
    pub scanners: Arc<ScannerList>,
    /// Counters.
    pub stats: Arc<HepStats>,
    /// Senders seen (protected by the daemon).
    pub senders: Arc<HepSenders>,
    tracker: Mutex<Tracker>,
    /// Transports seen so far (bits of [`transport_bit`]): the first SIP
    /// message of each is logged, so an operator sees TLS arrive.
    transports: std::sync::atomic::AtomicU8,
}

/// A transport's bit in [`HepIntake`]'s record of those seen.
fn transport_bit(t: Transport) -> u8 {
    match t {
        Transport::Udp => 1,
        Transport::Tcp => 2,
        Transport::Tls => 4,
        Transport::Sctp => 8,
        Transport::Other(_) => 16,
    }
}

impl HepIntake {
    /// A fresh intake.
    pub fn new(
        jail: JailId,
        cfg: HepConfig,
        scanners: Arc<ScannerList>,
        stats: Arc<HepStats>,
        senders: Arc<HepSenders>,
    ) -> HepIntake {
        HepIntake {
            jail,
            jail_name: String::new(),
            cfg,
            scanners,
            stats,
            senders,
            tracker: Mutex::new(Tracker::default()),
            transports: Default::default(),
        }
    }

    /// Whether `sender` may send at all.
    pub fn allowed(&self, sender: IpAddr) -> bool {
        let s = sender.to_canonical();
        self.cfg.allow.iter().any(|n| n.contains(&s))
    }

    /// Reads one HEP packet from `sender`, received at `now`; a failure it
    /// shows is pushed on `out`.
    pub fn packet(
        &self,
        sender: IpAddr,
        bytes: &[u8],
        now: Time,
        out: &mut Vec<FailureEvent>,
    ) -> Result<(), Dropped> {
        let r = self.check(sender, bytes, now, out);
        let counter = match r {
            Ok(()) => return Ok(()),
            Err(Dropped::Sender) => &self.stats.dropped_sender,
            Err(Dropped::Auth) => &self.stats.dropped_auth,
            Err(Dropped::Malformed(_)) => &self.stats.dropped_malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn check(
        &self,
        sender: IpAddr,
        bytes: &[u8],
        now: Time,
        out: &mut Vec<FailureEvent>,
    ) -> Result<(), Dropped> {
        if !self.allowed(sender) {
            return Err(Dropped::Sender);
        }
        let p = decode(bytes).map_err(Dropped::Malformed)?;
        if let Some(want) = &self.cfg.password {
            let given = p.auth_key.unwrap_or_default();
            let want = want.as_bytes();
            // Compared in constant time.
            let same = given.len() == want.len()
                && given.iter().zip(want).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
            if !same {
                return Err(Dropped::Auth);
            }
        }
        // Recorded before any failure it reports is handed on.
        self.senders.note(sender);
        if !p.is_sip() {
            return Ok(());
        }
        let Some(m) = parse_sip(p.payload) else {
            return Ok(());
        };
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        let t = p.transport();
        let bit = transport_bit(t);
        if self.transports.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            tracing::info!(
                "[{}] hep: first SIP over {} (protocol {}) mirrored by {sender}",
                self.jail_name,
                t.name(),
                p.protocol
            );
        }
        // A request comes from the client; an answer goes to it. Both
        // addresses are the server's own record of the packet.
        let from_client = m.method.is_some();
        let client = if from_client { p.src.0 } else { p.dst.0 };
        if crate::net::never_a_source(client) {
            return Ok(());
        }
        let signal = match self.tracker.lock() {
            Ok(mut t) => t.observe(client, from_client, &m, &self.scanners),
            Err(_) => None,
        };
        if let Some(signal) = signal {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            out.push(failure_event(self.jail, client, signal, now));
        }
        Ok(())
    }
}

/// The fuzz target's body, also replayed by `cargo test` over the fuzz
/// corpus: arbitrary bytes through the decoder, the stream framing and the
/// intake (with and without a password). Must never panic.
pub fn fuzz_hep(data: &[u8]) {
    static INTAKES: std::sync::OnceLock<[HepIntake; 2]> = std::sync::OnceLock::new();
    let intakes = INTAKES.get_or_init(|| {
        let make = |password: Option<&str>| {
            HepIntake::new(
                JailId(0),
                HepConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
                    password: password.map(str::to_string),
                    allow: vec![IpNet::from(IpAddr::from([127, 0, 0, 1]))],
                },
                Arc::new(ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)),
                Arc::default(),
                Arc::default(),
            )
        };
        [make(None), make(Some("secret"))]
    });
    if let Ok(p) = decode(data) {
        // What decodes borrows inside the input.
        assert!(p.payload.len() <= data.len());
        if p.version == 3 {
            assert!(matches!(frame_len(data), Ok(Some(n)) if n <= data.len()));
        }
    }
    let _ = frame_len(data);
    let mut out = Vec::new();
    for i in intakes {
        let _ = i.packet(IpAddr::from([127, 0, 0, 1]), data, Time(0), &mut out);
    }
    for ev in &out {
        assert!(!crate::net::never_a_source(ev.addr));
    }
}

#[cfg(test)]
mod tests;
