//! The wire sensor's packet socket and its TPACKET_V3 receive ring.
//!
//! The kernel copies each packet that passes the port filter into a ring of
//! blocks mapped into this process, and hands over a whole block at a time:
//! when it is full, or [`RETIRE_MS`] after its first packet. The sensor
//! wakes once per block instead of once per packet (`recvfrom`), which is
//! most of what a packet cost before (issue 23).
//!
//! Every offset in a block is written by the kernel; each one is checked
//! against the block's size before it is used, so a wrong one can at worst
//! lose packets, never read outside the mapping.

use std::cell::Cell;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per block: 128 KiB. A packet must fit in one block, and over
/// loopback or with segmentation offload a TCP segment reaches 64 KiB;
/// 128 KiB also keeps the kernel's allocation of each block to an order-5
/// run of pages (it falls back to vmalloc when none is free).
const BLOCK_SIZE: u32 = 128 << 10;
/// Blocks in the ring: 64, so 8 MiB. A SIP packet takes about 700 bytes of
/// a block (headers included), so the ring holds some 12,000 packets: over
/// a second of a 10,000 packets/s flood if the sensor stalls (its channel to
/// the engine full, say). At low rates each block is handed over after
/// [`RETIRE_MS`] with few packets in it, and the 64 blocks still cover
/// 64 x 20 ms = 1.3 s of stall. The old socket buffer (`rmem_default`,
/// 208 KiB) held about 200 packets.
const BLOCKS: u32 = 64;
/// A block with packets is handed over at the latest this long after it
/// was opened: the most a failure waits in the ring, and at a trickle of
/// traffic the most wake-ups per second (50).
const RETIRE_MS: u32 = 20;
/// `tp_frame_size`: TPACKET_V3 packs packets of any length into a block and
/// uses this only to check the request (`tp_frame_nr` must be the blocks
/// times the frames a block holds).
const FRAME_SIZE: u32 = 2048;
/// The offset of the link-layer address after each packet's header:
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`.
const SLL_OFFSET: usize = size_of::<libc::tpacket3_hdr>().next_multiple_of(libc::TPACKET_ALIGNMENT);

const ETH_P_ALL: u16 = 0x0003;

/// An `AF_PACKET` socket with the port filter attached and a TPACKET_V3
/// ring mapped; unmapped (then closed) on drop.
pub(super) struct Ring {
    fd: OwnedFd,
    map: NonNull<u8>,
    /// The block the kernel fills next, in order: the one to wait for. Kept
    /// here so that a sensor started again after a panic goes on from it.
    next: Cell<usize>,
    /// Whether the kernel was asked to leave out packets this host sends
    /// (bound to the loopback, where each packet shows leaving and arriving).
    pub(super) ignores_outgoing: bool,
}

// SAFETY: the mapping belongs to this value alone (nothing else holds its
// address), so moving the value to another thread moves all access with
// it. `Cell` keeps it from being shared (not `Sync`).
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `map` is the mapping of `ring_bytes()` made in `open`,
        // unmapped only here; no `Block` borrowing it outlives `self`.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), ring_bytes());
        }
    }
}

fn ring_bytes() -> usize {
    BLOCK_SIZE as usize * BLOCKS as usize
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` is a valid `T`, alive for the call, of the size given;
    // the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Ring {
    /// A packet socket on `ifindex` (every interface for 0), filtered by
    /// `filter`, with its ring mapped.
    pub(super) fn open(
        ifindex: i32,
        loopback: bool,
        filter: &[libc::sock_filter],
    ) -> std::io::Result<Ring> {
        // Protocol 0: no packet is queued before the filter and the ring are
        // in place; `bind` below names the protocol and starts the capture.
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("opening a packet socket ({e}); the wire source needs CAP_NET_RAW"),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fprog = libc::sock_fprog {
            len: u16::try_from(filter.len())
                .map_err(|_| std::io::Error::other("port filter too long"))?,
            filter: filter.as_ptr().cast_mut(),
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        // On the loopback each packet shows twice; the leaving copy is not
        // even copied to the ring (Linux 4.20 on; on older kernels the
        // option fails and the sensor skips those packets itself).
        let ignores_outgoing = loopback
            && setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32).is_ok();
        let version = libc::tpacket_versions::TPACKET_V3 as i32;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)
            .map_err(|e| std::io::Error::new(e.kind(), format!("TPACKET_V3 ({e})")))?;
        let req = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE,
            tp_block_nr: BLOCKS,
            tp_frame_size: FRAME_SIZE,
            tp_frame_nr: BLOCK_SIZE / FRAME_SIZE * BLOCKS,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("a {} MiB packet ring ({e})", ring_bytes() >> 20),
            )
        })?;
        // SAFETY: maps the ring just set up on `fd`, shared with the kernel;
        // the result is checked, and unmapped in `Drop`.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = NonNull::new(map.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap gave a null address"))?;
        let ring = Ring {
            fd,
            map,
            next: Cell::new(0),
            ignores_outgoing,
        };
        // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                ring.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ring)
    }

    /// The status word of block `i` (< `BLOCKS`), shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < BLOCKS as usize);
        let off = i * BLOCK_SIZE as usize
            + offset_of!(libc::tpacket_block_desc, hdr)
            + offset_of!(libc::tpacket_hdr_v1, block_status);
        // SAFETY: `off` is inside the mapping (i < BLOCKS) and 4-aligned
        // (blocks are page-aligned, the field at offset 8); the kernel and
        // this process only ever hand the word over with barriers, and this
        // side accesses it only through this atomic.
        unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(off).cast()) }
    }

    /// The next block the kernel handed over, waiting up to `timeout_ms`
    /// for one; `None` on timeout or an interrupted wait.
    pub(super) fn next_block(&self, timeout_ms: i32) -> std::io::Result<Option<Block<'_>>> {
        if let Some(b) = self.ready() {
            return Ok(Some(b));
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(None);
        }
        if let Some(b) = self.ready() {
            return Ok(Some(b));
        }
        // Readable, yet the block expected next is still the kernel's: this
        // side lost its place (it cannot happen while blocks are handed back
        // in order, but it must not spin). Go on from the oldest block
        // handed over, by sequence number.
        let oldest = (0..BLOCKS as usize)
            .filter(|&i| self.status(i).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0)
            .min_by_key(|&i| self.seq(i));
        Ok(oldest.map(|i| {
            self.next.set(i);
            Block { ring: self, i }
        }))
    }

    /// The bytes of block `i` (< `BLOCKS`).
    ///
    /// # Safety
    /// Only for a block whose status says it was handed over
    /// (`TP_STATUS_USER`, loaded with Acquire), and the slice only until it
    /// is handed back: the kernel writes the block again after that.
    unsafe fn bytes(&self, i: usize) -> &[u8] {
        debug_assert!(i < BLOCKS as usize);
        // SAFETY: block `i` lies inside the mapping (i < BLOCKS), which
        // lives as long as `self`; the caller guarantees the kernel leaves
        // it alone while the slice is used.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(i * BLOCK_SIZE as usize),
                BLOCK_SIZE as usize,
            )
        }
    }

    /// Block `i`'s sequence number (the kernel counts the blocks it hands
    /// over); only for a block handed over.
    fn seq(&self, i: usize) -> u64 {
        let off =
            offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, seq_num);
        // SAFETY: callers pass only blocks whose status they loaded as
        // handed over; the slice ends with this expression.
        let b = unsafe { self.bytes(i) };
        b.get(off..off + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(u64::MAX, u64::from_ne_bytes)
    }

    fn ready(&self) -> Option<Block<'_>> {
        let i = self.next.get();
        // Acquire: what the kernel wrote into the block before handing it
        // over (its status set with a write barrier) is seen from here on.
        // (A `Block` is made only when the block is this side's: dropping
        // one hands the block back.)
        if self.status(i).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
            Some(Block { ring: self, i })
        } else {
            None
        }
    }

    /// The kernel's counters since the last call (reading resets them):
    /// packets that passed the filter, and of those, dropped for want of a
    /// free block.
    pub(super) fn take_stats(&self) -> std::io::Result<(u64, u64)> {
        // SAFETY: a zeroed tpacket_stats_v3 is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((u64::from(st.tp_packets), u64::from(st.tp_drops)))
    }
}

/// A block the kernel handed over; handed back (and the ring moved on to
/// the next) on drop, also when reading it panicked.
pub(super) struct Block<'a> {
    ring: &'a Ring,
    i: usize,
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        // Release: this side's reads of the block are done before the
        // kernel may write it again.
        self.ring
            .status(self.i)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.ring.next.set((self.i + 1) % BLOCKS as usize);
    }
}

/// One packet of a block.
pub(super) struct Packet<'a> {
    /// The network-layer packet (as much of it as fit).
    pub(super) data: &'a [u8],
    /// `sll_pkttype`: `PACKET_OUTGOING` for packets this host sent.
    pub(super) pkttype: u8,
    /// The interface it was seen on.
    pub(super) ifindex: i32,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

impl Block<'_> {
    /// The block's bytes.
    fn bytes(&self) -> &[u8] {
        // SAFETY: a `Block` exists only for a block handed over, and hands
        // it back on drop, which needs every borrow of `self` (this slice's
        // lifetime) to have ended.
        unsafe { self.ring.bytes(self.i) }
    }

    /// The block's packets, in order.
    pub(super) fn packets(&self) -> impl Iterator<Item = Packet<'_>> {
        let b = self.bytes();
        let h = offset_of!(libc::tpacket_block_desc, hdr);
        let n = u32_at(b, h + offset_of!(libc::tpacket_hdr_v1, num_pkts)).unwrap_or(0);
        let first =
            u32_at(b, h + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt)).unwrap_or(0);
        let mut off = (n > 0).then_some(first as usize);
        let mut left = n;
        std::iter::from_fn(move || {
            loop {
                let at = off.take()?;
                if left == 0 {
                    return None;
                }
                left -= 1;
                let next = u32_at(b, at + offset_of!(libc::tpacket3_hdr, tp_next_offset))? as usize;
                // The last packet's next offset is 0; any other must move
                // forward (so the walk ends within the block).
                if next > 0 {
                    off = at.checked_add(next);
                }
                let snaplen = u32_at(b, at + offset_of!(libc::tpacket3_hdr, tp_snaplen))? as usize;
                let net = usize::from(u16_at(b, at + offset_of!(libc::tpacket3_hdr, tp_net))?);
                let sll = at + SLL_OFFSET;
                let pkttype = *b.get(sll + offset_of!(libc::sockaddr_ll, sll_pkttype))?;
                let ifindex = u32_at(b, sll + offset_of!(libc::sockaddr_ll, sll_ifindex))? as i32;
                let start = at.checked_add(net)?;
                match b.get(start..start.checked_add(snaplen)?) {
                    Some(data) => {
                        return Some(Packet {
                            data,
                            pkttype,
                            ifindex,
                        });
                    }
                    // Out of the block: skip it, go on with the next.
                    None => continue,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_kernel_one() {
        // include/uapi/linux/if_packet.h: a 48-byte tpacket3_hdr, the
        // sockaddr_ll right after it, block_status at 8 in the block.
        assert_eq!(size_of::<libc::tpacket3_hdr>(), 48);
        assert_eq!(SLL_OFFSET, 48);
        assert_eq!(
            offset_of!(libc::tpacket_block_desc, hdr)
                + offset_of!(libc::tpacket_hdr_v1, block_status),
            8
        );
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_net), 26);
        assert!(BLOCK_SIZE as usize >= 65_536 + SLL_OFFSET + 64);
        assert_eq!(BLOCK_SIZE % FRAME_SIZE, 0);
    }
}
