//! Batches in caller-owned buffers: IP packets ([`PacketBatch`]) and datagrams to send
//! ([`TransmitBatch`]), each one byte buffer and an index, so a burst goes through the engine
//! without a buffer per packet and leaves as runs a GSO send takes whole.

use std::net::SocketAddr;

use burrow_punch::{SocketId, MAIN_SOCKET};
use burrow_wg::PublicKey;

use crate::engine::RELAY_SOCKET;

/// The most a UDP run carries: below the 64 KiB an IP datagram can hold, headers included.
pub const RUN_BYTES: usize = 60_000;

/// Where a transmit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A datagram from one of the node's sockets.
    Udp {
        /// From which socket.
        socket: SocketId,
        /// To.
        dst: SocketAddr,
    },
    /// A packet for DERP to relay.
    Derp {
        /// The region (the peer's home).
        region: u16,
        /// The receiving node's key.
        dst: PublicKey,
    },
}

/// One transmit: where, and where its bytes sit in its lane.
#[derive(Debug, Clone, Copy)]
struct Slot {
    dest: Dest,
    at: usize,
    len: usize,
}

/// The lanes: the main socket's datagrams, the relay socket's, every other socket's (birthday
/// probes), DERP packets.
const LANES: usize = 4;
const DERP_LANE: usize = 3;

/// Which lane a transmit's bytes go to.
fn lane_of(dest: Dest) -> usize {
    match dest {
        Dest::Udp {
            socket: MAIN_SOCKET,
            ..
        } => 0,
        Dest::Udp {
            socket: RELAY_SOCKET,
            ..
        } => 1,
        Dest::Udp { .. } => 2,
        Dest::Derp { .. } => DERP_LANE,
    }
}

/// Transmits taken one at a time that a batch keeps before it sheds them (when they are at
/// least half of it too), so a caller that never drains it whole does not make it grow.
const SHED_AFTER: usize = 64;

/// Datagrams to send, in the order the engine made them. The main socket's datagrams sit back
/// to back in a lane of their own, as do the relay socket's, the birthday sockets' and the
/// DERP packets, so consecutive datagrams from one socket to one destination are one
/// contiguous slice ([`TransmitBatch::udp_runs`]) however the others interleave with them.
#[derive(Debug, Clone, Default)]
pub struct TransmitBatch {
    lanes: [Vec<u8>; LANES],
    slots: Vec<Slot>,
    /// Transmits before this one were taken one at a time ([`TransmitBatch::pop_front`]).
    head: usize,
}

impl TransmitBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` bytes of the main socket's datagrams and `count`
    /// transmits.
    pub fn with_capacity(bytes: usize, count: usize) -> Self {
        let mut b = Self::default();
        b.lanes[0].reserve(bytes);
        b.slots.reserve(count);
        b
    }

    /// Transmits waiting.
    pub fn len(&self) -> usize {
        self.slots.len() - self.head
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting, every lane.
    pub fn bytes(&self) -> usize {
        self.slots[self.head..].iter().map(|s| s.len).sum()
    }

    /// Forgets every transmit, keeping the memory.
    pub fn clear(&mut self) {
        self.lanes.iter_mut().for_each(Vec::clear);
        self.slots.clear();
        self.head = 0;
    }

    /// Drops the transmits already taken one at a time, and their bytes.
    fn shed_taken(&mut self) {
        if self.head == self.slots.len() {
            self.clear();
            return;
        }
        for (l, lane) in self.lanes.iter_mut().enumerate() {
            // Every lane's bytes before its first transmit still waiting were taken.
            let cut = self.slots[self.head..]
                .iter()
                .find(|s| lane_of(s.dest) == l)
                .map_or(lane.len(), |s| s.at);
            lane.drain(..cut);
            for s in self.slots[self.head..]
                .iter_mut()
                .filter(|s| lane_of(s.dest) == l)
            {
                s.at -= cut;
            }
        }
        self.slots.drain(..self.head);
        self.head = 0;
    }

    /// The end of `dest`'s lane, where a new transmit goes.
    fn lane_for_push(&mut self, dest: Dest) -> &mut Vec<u8> {
        if self.head > 0
            && (self.head == self.slots.len() || self.head >= SHED_AFTER.max(self.len()))
        {
            self.shed_taken();
        }
        &mut self.lanes[lane_of(dest)]
    }

    /// Adds a transmit at the end.
    pub fn push(&mut self, dest: Dest, payload: &[u8]) {
        let lane = self.lane_for_push(dest);
        let at = lane.len();
        lane.extend_from_slice(payload);
        self.slots.push(Slot {
            dest,
            at,
            len: payload.len(),
        });
    }

    /// Adds a transmit that `write` makes in place, in at most `max` bytes: it returns the
    /// length written, or `None` to add nothing.
    pub(crate) fn push_with(
        &mut self,
        dest: Dest,
        max: usize,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        let lane = self.lane_for_push(dest);
        let at = lane.len();
        lane.resize(at + max, 0);
        match write(&mut lane[at..]) {
            Some(len) if len <= max => {
                lane.truncate(at + len);
                self.slots.push(Slot { dest, at, len });
            }
            _ => lane.truncate(at),
        }
    }

    fn bytes_of(&self, s: &Slot) -> &[u8] {
        &self.lanes[lane_of(s.dest)][s.at..s.at + s.len]
    }

    /// Every transmit waiting, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Dest, &[u8])> + '_ {
        self.slots[self.head..]
            .iter()
            .map(|s| (s.dest, self.bytes_of(s)))
    }

    /// The first transmit waiting, taken out of the batch.
    pub fn pop_front(&mut self) -> Option<(Dest, &[u8])> {
        if self.head == self.slots.len() {
            self.clear();
            return None;
        }
        self.head += 1;
        let s = self.slots[self.head - 1];
        Some((s.dest, self.bytes_of(&s)))
    }

    /// The DERP packets waiting, in order: region, receiving node, bytes.
    pub fn derp(&self) -> impl Iterator<Item = (u16, PublicKey, &[u8])> + '_ {
        self.iter().filter_map(|(d, b)| match d {
            Dest::Derp { region, dst } => Some((region, dst, b)),
            Dest::Udp { .. } => None,
        })
    }

    /// The UDP datagrams waiting, as runs for one send each: consecutive datagrams from one
    /// socket to one destination, all of one size but the last (which may be shorter), at most
    /// `max_segments` of them and [`RUN_BYTES`] in all (a longer datagram goes as a run of its
    /// own). A run of one is a plain datagram. DERP packets and the other socket kinds'
    /// datagrams in between do not break a run (the main socket, the relay socket and the
    /// birthday sockets each have a lane; birthday sockets share theirs). Runs come in the
    /// order of their first datagrams, each socket's datagrams in the order they were made.
    pub fn udp_runs(&self, max_segments: usize) -> UdpRuns<'_> {
        UdpRuns {
            batch: self,
            next: [self.head; DERP_LANE],
            max_segments: max_segments.max(1),
        }
    }

    /// Moves every transmit of `other` to the end of this batch, leaving `other` empty. When
    /// this batch is empty the two swap buffers: nothing is copied.
    pub fn append(&mut self, other: &mut TransmitBatch) {
        if self.is_empty() {
            std::mem::swap(self, other);
            other.clear();
            return;
        }
        for i in other.head..other.slots.len() {
            let s = other.slots[i];
            self.push(s.dest, other.bytes_of(&s));
        }
        other.clear();
    }
}

/// Consecutive UDP datagrams from one socket to one destination, back to back in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRun<'a> {
    /// From which socket.
    pub socket: SocketId,
    /// To.
    pub dst: SocketAddr,
    /// Every datagram's size but the last's (which may be shorter).
    pub segment: usize,
    /// The datagrams, back to back.
    pub datagrams: &'a [u8],
}

impl<'a> UdpRun<'a> {
    /// How many datagrams.
    pub fn count(&self) -> usize {
        self.datagrams.len().div_ceil(self.segment.max(1)).max(1)
    }

    /// The datagrams, one by one.
    pub fn segments(&self) -> impl Iterator<Item = &'a [u8]> {
        let segment = self.segment.max(1);
        let all = self.datagrams;
        let empty = all.is_empty().then_some(all);
        all.chunks(segment).chain(empty)
    }
}

/// The iterator of [`TransmitBatch::udp_runs`].
#[derive(Debug)]
pub struct UdpRuns<'a> {
    batch: &'a TransmitBatch,
    /// Per socket lane, the slot to look from for its next datagram.
    next: [usize; DERP_LANE],
    max_segments: usize,
}

impl UdpRuns<'_> {
    /// The slot of lane `lane`'s next datagram, from its cursor on.
    fn first_in(&self, lane: usize) -> Option<usize> {
        let slots = &self.batch.slots;
        (self.next[lane]..slots.len()).find(|&i| lane_of(slots[i].dest) == lane)
    }
}

impl<'a> Iterator for UdpRuns<'a> {
    type Item = UdpRun<'a>;

    fn next(&mut self) -> Option<UdpRun<'a>> {
        // The run starting earliest goes first, so new flows leave in the order they were
        // made (the port-prediction ledger counts them in that order).
        let (lane, at) = (0..DERP_LANE)
            .filter_map(|l| self.first_in(l).map(|i| (l, i)))
            .min_by_key(|&(_, i)| i)?;
        let slots = &self.batch.slots;
        let first = slots[at];
        self.next[lane] = at + 1;
        let Dest::Udp { socket, dst } = first.dest else {
            unreachable!("socket lanes hold UDP datagrams");
        };
        let segment = first.len;
        let (mut end, mut count) = (first.at + first.len, 1);
        let mut i = at + 1;
        while segment > 0 && count < self.max_segments {
            let Some(s) = slots.get(i) else { break };
            i += 1;
            if lane_of(s.dest) != lane {
                // Another lane's bytes are elsewhere: they do not break the run.
                continue;
            }
            let fits = s.dest == first.dest
                && s.len > 0
                && s.len <= segment
                && s.at == end
                && end - first.at + s.len <= RUN_BYTES;
            if !fits {
                break;
            }
            end += s.len;
            count += 1;
            self.next[lane] = i;
            if s.len < segment {
                break;
            }
        }
        Some(UdpRun {
            socket,
            dst,
            segment,
            datagrams: &self.batch.lanes[lane][first.at..end],
        })
    }
}

/// IP packets with their peers, back to back in one buffer: packets for the engine to send
/// ([`Node::send_batch`](crate::Node::send_batch)) or packets it delivered.
#[derive(Debug, Clone, Default)]
pub struct PacketBatch {
    bytes: Vec<u8>,
    slots: Vec<(PublicKey, usize, usize)>,
}

impl PacketBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` bytes and `count` packets.
    pub fn with_capacity(bytes: usize, count: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            slots: Vec::with_capacity(count),
        }
    }

    /// Adds a packet for (or from) `peer`.
    pub fn push(&mut self, peer: PublicKey, packet: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(packet);
        self.slots.push((peer, at, packet.len()));
    }

    /// How many packets.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Packet `i` and its peer.
    pub fn get(&self, i: usize) -> Option<(PublicKey, &[u8])> {
        let &(peer, at, len) = self.slots.get(i)?;
        Some((peer, &self.bytes[at..at + len]))
    }

    /// Every packet and its peer, in order.
    pub fn iter(&self) -> impl Iterator<Item = (PublicKey, &[u8])> + '_ {
        self.slots
            .iter()
            .map(|&(peer, at, len)| (peer, &self.bytes[at..at + len]))
    }

    /// Forgets every packet, keeping the memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.slots.clear();
    }

    /// Bytes of room it holds (what it keeps when cleared).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

/// What a batch call did: how many items went in, how many of them were refused (each for
/// the reason its one-at-a-time call would have given), and the last refusal.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Items taken.
    pub handled: usize,
    /// Items refused.
    pub refused: usize,
    /// The last item refused (its index in the batch) and why.
    pub last_error: Option<(usize, crate::NodeError)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(socket: SocketId, port: u16) -> Dest {
        Dest::Udp {
            socket,
            dst: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    fn derp() -> Dest {
        Dest::Derp {
            region: 1,
            dst: PublicKey([7; 32]),
        }
    }

    fn runs(b: &TransmitBatch, max: usize) -> Vec<(SocketId, u16, usize, usize)> {
        b.udp_runs(max)
            .map(|r| (r.socket, r.dst.port(), r.segment, r.count()))
            .collect()
    }

    #[test]
    fn runs_gather_equal_datagrams_to_one_destination_in_order() {
        let mut b = TransmitBatch::new();
        for _ in 0..3 {
            b.push(udp(0, 1), &[1; 100]);
        }
        // A DERP copy in between does not break the run.
        b.push(derp(), &[9; 100]);
        b.push(udp(0, 1), &[1; 60]);
        // Another destination, then a larger datagram after a shorter one.
        b.push(udp(0, 2), &[2; 100]);
        b.push(udp(0, 2), &[2; 50]);
        b.push(udp(0, 2), &[2; 100]);
        // Another socket.
        b.push(udp(3, 2), &[3; 100]);
        assert_eq!(
            runs(&b, 64),
            vec![
                (0, 1, 100, 4),
                (0, 2, 100, 2),
                (0, 2, 100, 1),
                (3, 2, 100, 1)
            ]
        );
        let first = b.udp_runs(64).next().unwrap();
        assert_eq!(first.datagrams.len(), 360);
        let sizes: Vec<usize> = first.segments().map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![100, 100, 100, 60]);
        assert_eq!(b.derp().count(), 1);
        assert_eq!(b.len(), 9);
    }

    #[test]
    fn a_run_stops_at_the_segment_limit_and_below_64_kib() {
        let mut b = TransmitBatch::new();
        for _ in 0..10 {
            b.push(udp(0, 1), &[0; 1000]);
        }
        assert_eq!(
            runs(&b, 4),
            vec![(0, 1, 1000, 4), (0, 1, 1000, 4), (0, 1, 1000, 2)]
        );
        b.clear();
        for _ in 0..70 {
            b.push(udp(0, 1), &[0; 1000]);
        }
        let r = runs(&b, 128);
        assert_eq!(r, vec![(0, 1, 1000, 60), (0, 1, 1000, 10)]);
        assert!(b.udp_runs(128).all(|r| r.datagrams.len() <= RUN_BYTES));
    }

    #[test]
    fn each_socket_keeps_its_runs_whatever_interleaves() {
        let mut b = TransmitBatch::new();
        for k in 0..6 {
            // A node relaying for others while it sends its own traffic.
            b.push(udp(0, 1), &[k; 100]);
            b.push(udp(RELAY_SOCKET, 2), &[k; 80]);
            b.push(derp(), &[k; 10]);
            b.push(udp(5, 3), &[k; 40]);
        }
        assert_eq!(
            runs(&b, 64),
            vec![(0, 1, 100, 6), (RELAY_SOCKET, 2, 80, 6), (5, 3, 40, 6)]
        );
        for r in b.udp_runs(64) {
            // Each run's datagrams in the order they were pushed.
            let firsts: Vec<u8> = r.segments().map(|d| d[0]).collect();
            assert_eq!(firsts, (0..6).collect::<Vec<u8>>());
        }
    }

    #[test]
    fn runs_leave_in_the_order_their_first_datagrams_were_made() {
        let mut b = TransmitBatch::new();
        b.push(udp(7, 1), &[1; 40]); // a birthday socket's probe first
        b.push(udp(0, 2), &[2; 100]);
        b.push(udp(RELAY_SOCKET, 3), &[3; 80]);
        b.push(udp(0, 2), &[2; 100]);
        b.push(udp(7, 1), &[1; 40]);
        let order: Vec<(SocketId, u16, usize)> = b
            .udp_runs(64)
            .map(|r| (r.socket, r.dst.port(), r.count()))
            .collect();
        assert_eq!(order, vec![(7, 1, 2), (0, 2, 2), (RELAY_SOCKET, 3, 1)]);
    }

    #[test]
    fn a_batch_taken_one_at_a_time_but_never_drained_stays_bounded() {
        let mut b = TransmitBatch::new();
        let mut taken = 0u32;
        for k in 0..10_000u32 {
            b.push(udp(0, 1), &k.to_be_bytes());
            b.push(derp(), &k.to_be_bytes());
            // Always one left behind.
            while b.len() > 1 {
                let (_, bytes) = b.pop_front().unwrap();
                assert_eq!(bytes, (taken / 2).to_be_bytes(), "in order");
                taken += 1;
            }
            assert!(b.slots.len() <= 2 * SHED_AFTER + 2, "{}", b.slots.len());
            assert!(b.lanes.iter().map(Vec::len).sum::<usize>() <= 8 * (SHED_AFTER + 2));
        }
        assert_eq!(b.iter().count(), 1);
    }

    #[test]
    fn popping_one_at_a_time_and_appending_keep_the_order() {
        let mut a = TransmitBatch::new();
        a.push(udp(0, 1), b"one");
        a.push(derp(), b"two");
        a.push(udp(0, 1), b"three");
        assert_eq!(a.pop_front(), Some((udp(0, 1), &b"one"[..])));
        let mut out = TransmitBatch::new();
        out.push(derp(), b"zero");
        out.append(&mut a);
        assert!(a.is_empty());
        let got: Vec<(Dest, Vec<u8>)> = out.iter().map(|(d, b)| (d, b.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (derp(), b"zero".to_vec()),
                (derp(), b"two".to_vec()),
                (udp(0, 1), b"three".to_vec()),
            ]
        );
        // Into an empty batch the buffers swap.
        let mut empty = TransmitBatch::new();
        empty.append(&mut out);
        assert_eq!(empty.len(), 3);
        assert!(out.is_empty());
        while empty.pop_front().is_some() {}
        assert!(empty.is_empty());
        assert_eq!(empty.bytes(), 0);
    }

    #[test]
    fn packet_batches_keep_packets_and_peers_in_order() {
        let mut p = PacketBatch::with_capacity(64, 2);
        p.push(PublicKey([1; 32]), b"abc");
        p.push(PublicKey([2; 32]), b"");
        p.push(PublicKey([3; 32]), b"de");
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(2), Some((PublicKey([3; 32]), &b"de"[..])));
        let lens: Vec<usize> = p.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(lens, vec![3, 0, 2]);
        p.clear();
        assert!(p.is_empty() && p.get(0).is_none());
    }
}
