//! The wire sensor: SIP seen on the network, whatever the server logs.
//!
//! A packet socket (AF_PACKET, needs CAP_NET_RAW) receives every IPv4 and
//! IPv6 packet of an interface, in and out. UDP datagrams and TCP segments
//! to or from the configured SIP ports are read as SIP messages (a TCP
//! message split over segments is not reassembled: each segment that starts
//! a message is read). The messages go through the SIP pairing every SIP
//! feeder shares ([`source::sip`](crate::source::sip)): what counts as a
//! failure is decided there.
//!
//! The address is the packet's source address (of the request; of the
//! response's destination), never text from the message.
//!
//! Packets come through a TPACKET_V3 ring shared with the kernel
//! ([`ring`]): one wake-up per block of packets, not one per packet. The
//! kernel's count of packets it dropped because the ring was full is shown
//! in `status` (`dropped_kernel`).

mod ring;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc::Sender;

use crate::event::{FailureEvent, JailId, Time};
use crate::source::scanner::ScannerList;
use crate::source::sip::{Tracker, failure_event, parse_sip};

/// `wire = { interface = "eth0", ports = [5060] }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireConfig {
    /// The interface to watch; `None` for every interface.
    pub interface: Option<String>,
    /// SIP ports (UDP and TCP).
    pub ports: Vec<u16>,
}

/// Counters for `status`.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Capturing.
    pub up: AtomicBool,
    /// SIP messages read.
    pub messages: AtomicU64,
    /// Failures found.
    pub failures: AtomicU64,
    /// Packets taken from the kernel: IP packets to or from the SIP ports,
    /// SIP or not (on the loopback, each once).
    pub packets: AtomicU64,
    /// Packets the kernel dropped before the sensor saw them, for want of a
    /// free block in the ring (the sensor did not keep up): failures in them
    /// were missed.
    pub drops: AtomicU64,
}

/// The transport payload of an IP packet to or from one of `ports`:
/// (source, destination, source port, destination port, payload).
pub fn transport<'a>(pkt: &'a [u8], ports: &[u16]) -> Option<(IpAddr, IpAddr, u16, u16, &'a [u8])> {
    let version = pkt.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
            // Fragments other than the first carry no header to read.
            let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff;
            if ihl < 20 || frag != 0 {
                return None;
            }
            let src = IpAddr::from(<[u8; 4]>::try_from(pkt.get(12..16)?).ok()?);
            let dst = IpAddr::from(<[u8; 4]>::try_from(pkt.get(16..20)?).ok()?);
            (src, dst, *pkt.get(9)?, pkt.get(ihl..total.min(pkt.len()))?)
        }
        6 => {
            let src = IpAddr::from(<[u8; 16]>::try_from(pkt.get(8..24)?).ok()?);
            let dst = IpAddr::from(<[u8; 16]>::try_from(pkt.get(24..40)?).ok()?);
            // Extension headers are not followed: SIP packets carry none.
            (src, dst, *pkt.get(6)?, pkt.get(40..)?)
        }
        _ => return None,
    };
    let (sport, dport, payload) = match proto {
        17 => {
            let sp = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
            let dp = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
            (sp, dp, l4.get(8..)?)
        }
        6 => {
            let sp = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
            let dp = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
            let off = usize::from(l4.get(12)? >> 4) * 4;
            (sp, dp, l4.get(off..)?)
        }
        _ => return None,
    };
    (ports.contains(&sport) || ports.contains(&dport)).then_some((src, dst, sport, dport, payload))
}

/// One wire sensor for a jail.
pub struct WireSource {
    /// What to watch.
    pub cfg: WireConfig,
    /// The jail its failures count for.
    pub jail: JailId,
    /// Where batches go.
    pub tx: Sender<Vec<FailureEvent>>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Attack-tool user agents.
    pub scanners: Arc<ScannerList>,
    /// Counters.
    pub stats: Arc<WireStats>,
}

/// How long the sensor waits for a block before it looks at `stop` again.
const POLL_MS: i32 = 250;
/// How often the kernel's drop counter is read.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl WireSource {
    /// Opens the packet socket (so a missing capability is reported at
    /// start) and reads on a thread of its own, supervised: a panic starts
    /// the reading again (shown in `health`).
    pub fn spawn(
        self,
        health: Arc<crate::supervise::Health>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let ring = open_ring(self.cfg.interface.as_deref(), &self.cfg.ports)?;
        std::thread::Builder::new()
            .name("wire".into())
            .spawn(move || {
                let name = format!(
                    "wire {}",
                    self.cfg.interface.as_deref().unwrap_or("all interfaces")
                );
                let stop = self.stop.clone();
                crate::supervise::run_thread(
                    &name,
                    &health,
                    &|| stop.load(Ordering::Relaxed),
                    || self.run(&ring),
                );
            })
    }

    fn run(&self, ring: &ring::Ring) {
        self.stats.up.store(true, Ordering::Relaxed);
        let mut tracker = Tracker::default();
        // On loopback every packet shows twice, leaving and arriving: the
        // leaving copy is skipped there (on other interfaces the server's
        // answers are the leaving packets, and are needed). Bound to the
        // loopback, the kernel already leaves them out.
        // SAFETY: a valid C string literal.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
        let skip_lo_outgoing = !ring.ignores_outgoing;
        let mut batch = Vec::new();
        let mut stats_at = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            match ring.next_block(POLL_MS) {
                Ok(Some(block)) => {
                    let mut n = 0u64;
                    for p in block.packets() {
                        n += 1;
                        if skip_lo_outgoing && p.ifindex == lo && p.pkttype == libc::PACKET_OUTGOING
                        {
                            continue;
                        }
                        self.packet(p.data, &mut tracker, &mut batch);
                    }
                    // Handed back to the kernel here.
                    drop(block);
                    self.stats.packets.fetch_add(n, Ordering::Relaxed);
                }
                Ok(None) => {}
                Err(e) => {
                    // poll(2) on a valid descriptor fails only for want of
                    // memory: say so, and wait before trying again.
                    tracing::warn!("wire: waiting for packets: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(u64::from(
                        POLL_MS.unsigned_abs(),
                    )));
                }
            }
            if stats_at.elapsed() >= STATS_EVERY {
                stats_at = std::time::Instant::now();
                self.take_drops(ring);
            }
            // The failures of a block (or several, when the channel was
            // full) go in one batch.
            if !batch.is_empty() && self.tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                break;
            }
        }
        self.take_drops(ring);
        self.stats.up.store(false, Ordering::Relaxed);
    }

    /// Adds the kernel's drops since the last reading to the counters.
    fn take_drops(&self, ring: &ring::Ring) {
        match ring.take_stats() {
            Ok((_passed, dropped)) => {
                if dropped > 0 {
                    self.stats.drops.fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(
                        "wire: the kernel dropped {dropped} packet(s) to or from the SIP ports: the sensor did not keep up"
                    );
                }
            }
            Err(e) => tracing::debug!("wire: reading the packet statistics: {e}"),
        }
    }

    fn packet(&self, pkt: &[u8], tracker: &mut Tracker, out: &mut Vec<FailureEvent>) {
        let Some((src, dst, sport, _dport, payload)) = transport(pkt, &self.cfg.ports) else {
            return;
        };
        let Some(m) = parse_sip(payload) else {
            return;
        };
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        // A request comes from the client; an answer from the server's SIP
        // port goes to it.
        let from_client = !self.cfg.ports.contains(&sport) || m.method.is_some();
        let client = if from_client { src } else { dst };
        if crate::net::never_a_source(client) {
            return;
        }
        if let Some(signal) = tracker.observe(client, from_client, &m, &self.scanners) {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            out.push(failure_event(self.jail, client, signal, Time::now()));
        }
    }
}

/// A classic BPF program, attached to the socket, that passes only IPv4 and
/// IPv6 UDP and TCP packets to or from `ports` (first fragments only): the
/// kernel drops RTP and everything else before it reaches the sensor.
fn bpf_program(ports: &[u16]) -> Vec<libc::sock_filter> {
    #[derive(Clone, Copy, PartialEq)]
    enum T {
        Next,
        L(&'static str),
    }
    struct I(u16, T, T, u32);
    const LDB: u16 = 0x30; // ld byte [k]
    const LDH: u16 = 0x28; // ld half [k]
    const LDH_X: u16 = 0x48; // ld half [x + k]
    const LDX_MSH: u16 = 0xb1; // x = 4 * ([k] & 0xf)
    const AND: u16 = 0x54;
    const JEQ: u16 = 0x15;
    const JSET: u16 = 0x45;
    const RET: u16 = 0x06;
    let mut prog: Vec<I> = Vec::new();
    let mut labels: Vec<(&'static str, usize)> = Vec::new();
    let ports_from = |prog: &mut Vec<I>, load: I| {
        prog.push(load);
        for &p in ports {
            prog.push(I(JEQ, T::L("accept"), T::Next, u32::from(p)));
        }
    };
    prog.push(I(LDB, T::Next, T::Next, 0));
    prog.push(I(AND, T::Next, T::Next, 0xf0));
    prog.push(I(JEQ, T::Next, T::L("v6"), 0x40));
    prog.push(I(LDB, T::Next, T::Next, 9));
    prog.push(I(JEQ, T::L("v4l4"), T::Next, 17));
    prog.push(I(JEQ, T::L("v4l4"), T::L("drop"), 6));
    labels.push(("v4l4", prog.len()));
    prog.push(I(LDH, T::Next, T::Next, 6));
    prog.push(I(JSET, T::L("drop"), T::Next, 0x1fff));
    prog.push(I(LDX_MSH, T::Next, T::Next, 0));
    ports_from(&mut prog, I(LDH_X, T::Next, T::Next, 0));
    ports_from(&mut prog, I(LDH_X, T::Next, T::Next, 2));
    prog.push(I(RET, T::Next, T::Next, 0));
    labels.push(("v6", prog.len()));
    prog.push(I(JEQ, T::Next, T::L("drop"), 0x60));
    prog.push(I(LDB, T::Next, T::Next, 6));
    prog.push(I(JEQ, T::L("v6l4"), T::Next, 17));
    prog.push(I(JEQ, T::L("v6l4"), T::L("drop"), 6));
    labels.push(("v6l4", prog.len()));
    ports_from(&mut prog, I(LDH, T::Next, T::Next, 40));
    ports_from(&mut prog, I(LDH, T::Next, T::Next, 42));
    labels.push(("drop", prog.len()));
    prog.push(I(RET, T::Next, T::Next, 0));
    labels.push(("accept", prog.len()));
    prog.push(I(RET, T::Next, T::Next, 0x40000));
    let at = |t: T, i: usize| -> u8 {
        match t {
            T::Next => 0,
            T::L(name) => {
                let pos = labels
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(i + 1, |(_, p)| *p);
                // Ports are few: every jump stays within cBPF's 255.
                u8::try_from(pos - (i + 1)).unwrap_or(u8::MAX)
            }
        }
    };
    prog.iter()
        .enumerate()
        .map(|(i, I(code, jt, jf, k))| libc::sock_filter {
            code: *code,
            jt: at(*jt, i),
            jf: at(*jf, i),
            k: *k,
        })
        .collect()
}

/// A packet socket on `interface` (all interfaces for `None`), with the
/// port filter attached and its ring mapped.
fn open_ring(interface: Option<&str>, ports: &[u16]) -> std::io::Result<ring::Ring> {
    let ifindex = match interface {
        Some(name) => {
            let c = std::ffi::CString::new(name)
                .map_err(|_| std::io::Error::other("interface name with a NUL byte"))?;
            // SAFETY: `c` is a valid C string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if i == 0 {
                return Err(std::io::Error::other(format!(
                    "no interface named {name:?} (see `ip link`)"
                )));
            }
            i32::try_from(i).map_err(|_| std::io::Error::other("interface index out of range"))?
        }
        None => 0,
    };
    // SAFETY: a valid C string literal.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let loopback = ifindex != 0 && u32::try_from(ifindex).is_ok_and(|i| i == lo);
    ring::Ring::open(ifindex, loopback, &bpf_program(ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP/IPv4 packet from `src` to 10.0.0.1:5060 carrying `payload`.
    fn udp4(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 0, 0, 1]);
        let total = (20 + 8 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&5062u16.to_be_bytes());
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    /// Issue 16, finding 10: a packet whose source can never be one (a
    /// spoofed `0.0.0.0`, broadcast, multicast) is not counted.
    #[test]
    fn never_a_source_is_not_counted() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let w = WireSource {
            cfg: WireConfig {
                interface: None,
                ports: vec![5060],
            },
            jail: JailId(0),
            tx,
            stop: Arc::default(),
            scanners: Arc::new(ScannerList::new(crate::source::scanner::DEFAULT_SCANNERS)),
            stats: Arc::default(),
        };
        let opt = b"OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\n\r\n";
        let mut t = Tracker::default();
        let mut out = Vec::new();
        for src in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [224, 0, 0, 1],
            [239, 1, 2, 3],
        ] {
            w.packet(&udp4(src, opt), &mut t, &mut out);
            assert!(out.is_empty(), "{src:?}: {out:?}");
        }
        w.packet(&udp4([10, 0, 0, 3], opt), &mut t, &mut out);
        assert_eq!(out.len(), 1, "a real source is counted");
    }

    #[test]
    fn transport_reads_udp_over_ipv4() {
        let payload = b"hello";
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let total = (20 + 8 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&5062u16.to_be_bytes());
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let (s, d, sp, dp, pl) = transport(&p, &[5060]).unwrap();
        assert_eq!(
            (s.to_string(), d.to_string(), sp, dp, pl),
            (
                "10.0.0.2".into(),
                "10.0.0.1".into(),
                5062,
                5060,
                &payload[..]
            )
        );
        assert!(transport(&p, &[5070]).is_none());
        assert!(transport(&p[..10], &[5060]).is_none());
    }
}
