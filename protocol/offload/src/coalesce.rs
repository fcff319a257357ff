//! Coalescing (GRO): decrypted TCP segments or UDP datagrams of one flow that arrive back to
//! back become one super-packet frame for an offloading TUN, so the kernel takes up to 64 KiB
//! in one write.
//!
//! The rules are strict on purpose, so that splitting a merged frame gives back the packets
//! byte for byte and the kernel never takes a corrupt segment on trust:
//! - IPv4 without options and not a fragment, or IPv6 with TCP or UDP as its first next header;
//!   everything in the IP header equal but the lengths (and, for IPv4, the checksum and an ID
//!   one higher than the last);
//! - TCP: flags exactly ACK (PSH allowed on the last), the next sequence number, and the ack
//!   number, window, urgent pointer and options equal; UDP (only when the TUN accepted USO):
//!   a non-zero checksum;
//! - every segment as long as the first but the last, which may be shorter and ends the frame;
//! - every packet's checksums verified, and canonical, before it merges: the kernel does not
//!   check a frame marked `F_NEEDS_CSUM` again.
//!
//! Only the latest frame of a flow takes more segments, so a flow's order is kept; a packet
//! that cannot merge (a fragment, a SYN, another protocol between the same hosts) closes the
//! frames it might overtake.

use crate::checksum;
use crate::virtio::{GsoType, VirtioNetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::{TCP, TCP_PSH, UDP};

/// At most this many packets go into one frame.
pub const MAX_SEGMENTS: usize = 64;
const MAX_IP_LEN: usize = 65_535;
const TCP_ACK: u8 = 0x10;

/// Every frame slot is taken: write the frames, [`Coalescer::clear`], and push again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("every frame slot is taken")]
pub struct CoalescerFull;

/// Who a packet is between, for ordering: addresses, and ports when it has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    v6: bool,
    proto: u8,
    addrs: [u8; 32],
    ports: [u8; 4],
}

/// An open frame's merge state.
#[derive(Clone, Copy, Debug)]
struct Merge {
    v6: bool,
    ip_len: usize,
    l4_len: usize,
    /// Payload bytes of the first segment: `gso_size`.
    seg: usize,
    count: usize,
    next_seq: u32,
    next_id: u16,
}

#[derive(Debug, Default)]
struct Frame {
    /// The virtio header, then the packet.
    buf: Vec<u8>,
    key: Option<Key>,
    /// `None` once the frame takes no more segments.
    merge: Option<Merge>,
}

/// A packet that may merge.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ip_len: usize,
    l4_len: usize,
    payload: usize,
    seq: u32,
    id: u16,
    psh: bool,
}

enum Parsed {
    /// Not IP as far as can be told: a frame of its own.
    Opaque,
    /// IP between these addresses, without ports to tell flows apart.
    Between { v6: bool, addrs: [u8; 32] },
    /// TCP or UDP.
    Flow {
        key: Key,
        candidate: Option<Candidate>,
    },
}

/// Builds TUN frames (virtio header + packet) out of packets pushed in arrival order. Frames
/// live in buffers the coalescer keeps and reuses, so steady state allocates nothing.
#[derive(Debug)]
pub struct Coalescer {
    udp: bool,
    max_frames: usize,
    frames: Vec<Frame>,
    used: usize,
}

impl Coalescer {
    /// A coalescer holding at most `max_frames` frames; `udp` when the TUN accepted USO
    /// (`TUN_F_USO4|6`), otherwise only TCP merges.
    pub fn new(udp: bool, max_frames: usize) -> Self {
        Coalescer {
            udp,
            max_frames: max_frames.max(1),
            frames: Vec::new(),
            used: 0,
        }
    }

    /// Adds one packet: merged into its flow's latest frame when the rules allow, else a frame
    /// of its own. A packet that parses as nothing still gets a frame (the kernel judges it).
    pub fn push(&mut self, packet: &[u8]) -> Result<(), CoalescerFull> {
        match parse(packet, self.udp) {
            Parsed::Opaque => self.start(packet, None, None),
            Parsed::Between { v6, addrs } => {
                if self.used == self.max_frames {
                    return Err(CoalescerFull);
                }
                for f in &mut self.frames[..self.used] {
                    if f.key.is_some_and(|k| k.v6 == v6 && k.addrs == addrs) {
                        f.merge = None;
                    }
                }
                self.start(packet, None, None)
            }
            Parsed::Flow { key, candidate } => {
                let latest = self.frames[..self.used]
                    .iter()
                    .rposition(|f| f.key == Some(key));
                if let (Some(i), Some(c)) = (latest, candidate) {
                    if self.merge(i, key.proto, packet, &c) {
                        return Ok(());
                    }
                }
                let merge = candidate.filter(|c| !c.psh).map(|c| Merge {
                    v6: key.v6,
                    ip_len: c.ip_len,
                    l4_len: c.l4_len,
                    seg: c.payload,
                    count: 1,
                    next_seq: c.seq.wrapping_add(c.payload as u32),
                    next_id: c.id.wrapping_add(1),
                });
                self.start(packet, Some(key), merge)
            }
        }
    }

    /// The frames built so far, in order, each ready to write to the TUN as it is.
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.frames[..self.used].iter().map(|f| &f.buf[..])
    }

    /// Number of frames built so far.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether no frame has been built.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Forgets every frame (their buffers stay for reuse).
    pub fn clear(&mut self) {
        self.used = 0;
    }

    fn start(
        &mut self,
        packet: &[u8],
        key: Option<Key>,
        merge: Option<Merge>,
    ) -> Result<(), CoalescerFull> {
        if self.used == self.max_frames {
            return Err(CoalescerFull);
        }
        if self.used == self.frames.len() {
            self.frames.push(Frame::default());
        }
        let f = &mut self.frames[self.used];
        f.buf.clear();
        f.buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        f.buf.extend_from_slice(packet);
        f.key = key;
        f.merge = merge;
        self.used += 1;
        Ok(())
    }

    /// Appends `p`'s payload to frame `i` if every rule allows it.
    fn merge(&mut self, i: usize, proto: u8, p: &[u8], c: &Candidate) -> bool {
        let f = &mut self.frames[i];
        let Some(mut m) = f.merge else {
            return false;
        };
        let b = &f.buf[VNET_HDR_LEN..];
        let ip = c.ip_len;
        let l4 = c.l4_len;
        let fits = m.ip_len == ip
            && m.l4_len == l4
            && m.count < MAX_SEGMENTS
            && c.payload <= m.seg
            && b.len() + c.payload <= MAX_IP_LEN;
        if !fits {
            return false;
        }
        let ip_same = if !m.v6 {
            b[..2] == p[..2] && b[6..10] == p[6..10] && c.id == m.next_id
        } else {
            b[..4] == p[..4] && b[6..8] == p[6..8]
        };
        let l4_same = proto == UDP
            || (c.seq == m.next_seq
                && b[ip + 8..ip + 13] == p[ip + 8..ip + 13]
                && b[ip + 14..ip + 16] == p[ip + 14..ip + 16]
                && b[ip + 18..ip + l4] == p[ip + 18..ip + l4]);
        if !(ip_same && l4_same) {
            return false;
        }
        f.buf.extend_from_slice(&p[ip + l4..]);
        m.count += 1;
        m.next_seq = m.next_seq.wrapping_add(c.payload as u32);
        m.next_id = m.next_id.wrapping_add(1);
        let ends = c.payload < m.seg || c.psh || m.count == MAX_SEGMENTS;
        if c.psh {
            f.buf[VNET_HDR_LEN + ip + 13] |= TCP_PSH;
        }
        seal_headers(&mut f.buf, proto, &m);
        f.merge = (!ends).then_some(m);
        true
    }
}

/// Rewrites a merged frame's lengths, IPv4 header checksum, partial transport checksum and
/// virtio header for `m.count` segments.
fn seal_headers(buf: &mut [u8], proto: u8, m: &Merge) {
    let (hdr, pkt) = buf.split_at_mut(VNET_HDR_LEN);
    let total = pkt.len();
    let ip = m.ip_len;
    let v6 = m.v6;
    let (src, dst) = if v6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    if v6 {
        pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let c = checksum::ipv4_header(&pkt[..20]);
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let field = if proto == UDP {
        pkt[ip + 4..ip + 6].copy_from_slice(&((total - ip) as u16).to_be_bytes());
        6
    } else {
        16
    };
    // CHECKSUM_PARTIAL: the pseudo-header's sum, folded and not complemented.
    let partial = checksum::fold(checksum::pseudo_header(
        &pkt[src],
        &pkt[dst],
        proto,
        total - ip,
    ));
    pkt[ip + field..ip + field + 2].copy_from_slice(&partial.to_be_bytes());
    let gso = match (proto, v6) {
        (UDP, _) => GsoType::UdpL4,
        (_, false) => GsoType::TcpV4,
        (_, true) => GsoType::TcpV6,
    };
    let vnet = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: gso.to_u8(),
        hdr_len: (ip + m.l4_len) as u16,
        gso_size: m.seg as u16,
        csum_start: ip as u16,
        csum_offset: field as u16,
    };
    // The slice is exactly VNET_HDR_LEN long.
    let _ = vnet.write(hdr);
}

fn parse(p: &[u8], udp_ok: bool) -> Parsed {
    let Some(&b0) = p.first() else {
        return Parsed::Opaque;
    };
    let mut addrs = [0u8; 32];
    let (v6, ip_len, proto, lengths_ok) = match b0 >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(b0 & 0x0f) * 4;
            if ihl < 20 || ihl > p.len() {
                return Parsed::Opaque;
            }
            addrs[..8].copy_from_slice(&p[12..20]);
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if frag & 0x3fff != 0 || (p[9] != TCP && p[9] != UDP) {
                return Parsed::Between { v6: false, addrs };
            }
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let ok = ihl == 20
                && total == p.len()
                && checksum::ipv4_header(&p[..20]) == u16::from_be_bytes([p[10], p[11]]);
            (false, ihl, p[9], ok)
        }
        6 if p.len() >= 40 => {
            addrs.copy_from_slice(&p[8..40]);
            if p[6] != TCP && p[6] != UDP {
                return Parsed::Between { v6: true, addrs };
            }
            let payload = usize::from(u16::from_be_bytes([p[4], p[5]]));
            (true, 40, p[6], payload + 40 == p.len())
        }
        _ => return Parsed::Opaque,
    };
    if p.len() < ip_len + 8 {
        return Parsed::Between { v6, addrs };
    }
    let mut ports = [0u8; 4];
    ports.copy_from_slice(&p[ip_len..ip_len + 4]);
    let key = Key {
        v6,
        proto,
        addrs,
        ports,
    };
    let candidate = if lengths_ok {
        candidate(p, v6, ip_len, proto, udp_ok)
    } else {
        None
    };
    Parsed::Flow { key, candidate }
}

fn candidate(p: &[u8], v6: bool, ip: usize, proto: u8, udp_ok: bool) -> Option<Candidate> {
    let (src, dst) = if v6 {
        (&p[8..24], &p[24..40])
    } else {
        (&p[12..16], &p[16..20])
    };
    let l4 = &p[ip..];
    let pseudo = checksum::pseudo_header(src, dst, proto, l4.len());
    let (l4_len, field, psh, seq) = if proto == TCP {
        if l4.len() < 20 {
            return None;
        }
        let thl = usize::from(l4[12] >> 4) * 4;
        let flags = l4[13];
        if thl < 20 || thl > l4.len() || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
            return None;
        }
        let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
        (thl, 16, flags & TCP_PSH != 0, seq)
    } else {
        let len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
        if !udp_ok || len != l4.len() || (l4[6] == 0 && l4[7] == 0) {
            return None;
        }
        (8, 6, false, 0)
    };
    let payload = l4.len() - l4_len;
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if payload == 0 || checksum::transport(pseudo, l4, field, proto == UDP) != stored {
        return None;
    }
    Some(Candidate {
        ip_len: ip,
        l4_len,
        payload,
        seq,
        id: u16::from_be_bytes([p[4], p[5]]),
        psh,
    })
}
