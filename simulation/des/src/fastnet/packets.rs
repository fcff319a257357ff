//! What travels in the discrete-event network: datagrams in flight and the queue that orders
//! them, link effects (delay, loss, duplication), the application packets both nodes exchange,
//! and the scan of every payload for key material and plaintext.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_wg::PrivateKey;
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

use super::{FastConfig, FastOutcome, PLAINTEXT_MARKER};

/// A datagram in flight.
#[derive(Debug, Clone)]
pub(super) enum Packet {
    /// A datagram in flight toward the Internet core (already translated).
    Up {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// A datagram arriving at side `side`'s outermost box.
    Down {
        side: usize,
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// A relayed packet leaving DERP toward node `to`'s access link (which it crosses next).
    RelayCore {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
    /// A relayed packet arriving at node `to` from node `from`.
    Relay {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
}

/// Packets by arrival time; equal times leave in the order they were scheduled.
#[derive(Default)]
pub(super) struct Queue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: BTreeMap<u64, Packet>,
    seq: u64,
}

impl Queue {
    /// Schedules `p` to arrive at `at`.
    pub(super) fn push(&mut self, at: Instant, p: Packet) {
        self.seq += 1;
        self.packets.insert(self.seq, p);
        self.heap.push(Reverse((at, self.seq)));
    }

    /// The next packet due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        loop {
            let Reverse((at, id)) = self.heap.peek().copied()?;
            if at > now {
                return None;
            }
            self.heap.pop();
            if let Some(p) = self.packets.remove(&id) {
                return Some(p);
            }
        }
    }

    /// When the next packet arrives.
    pub(super) fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
}

/// Datagrams an engine refused (replays of duplicated packets, probes from strangers…): the
/// first 64 go into the timeline, all are counted.
pub(super) fn note_error(
    out: &mut FastOutcome,
    at: Duration,
    node: usize,
    e: &burrow_node::NodeError,
) {
    out.refused += 1;
    // Duplicates (the relay's copy of a packet that came direct) are expected: count only.
    let duplicate = e.to_string().contains("replayed");
    if out.refused <= 64 && !duplicate {
        out.timeline.push(format!(
            "{:>8.3}s node{node} refused a datagram: {e}",
            at.as_secs_f64()
        ));
    }
}

/// A private key's 32 bytes, to look for on the wire.
pub(super) fn secret_bytes(k: &PrivateKey) -> [u8; 32] {
    let b64 = k.expose_base64();
    let mut out = [0u8; 32];
    let v = base64_decode(&b64);
    out.copy_from_slice(&v[..32]);
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).unwrap_or(0) as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Flags a payload that carries any of `secrets` or the application plaintext marker.
pub(super) fn scan(payload: &[u8], secrets: &[[u8; 32]], out: &mut FastOutcome) {
    if secrets.iter().any(|k| payload.windows(32).any(|w| w == k)) {
        out.key_leaked = true;
    }
    if payload
        .windows(PLAINTEXT_MARKER.len())
        .any(|w| w == PLAINTEXT_MARKER)
    {
        out.plaintext_leaked = true;
    }
}

/// One hop's delay between a side `one_way` from the core and the core: the latency plus up
/// to `jitter`.
pub(super) fn hop_delay(one_way: Duration, c: &FastConfig, rng: &mut ChaCha20Rng) -> Duration {
    let jitter = if c.jitter.is_zero() {
        Duration::ZERO
    } else {
        c.jitter.mul_f64(rng.next_u32() as f64 / u32::MAX as f64)
    };
    one_way + jitter
}

/// How many copies of a datagram a hop delivers: 0 (lost), 1, or 2 (duplicated).
pub(super) fn copies(c: &FastConfig, rng: &mut ChaCha20Rng) -> usize {
    let roll = |rng: &mut ChaCha20Rng| rng.next_u32() as f64 / u32::MAX as f64;
    if c.loss > 0.0 && roll(rng) < c.loss {
        return 0;
    }
    if c.duplicate > 0.0 && roll(rng) < c.duplicate {
        return 2;
    }
    1
}

/// An IPv4/UDP-looking packet from side `s` carrying `n` and the plaintext marker.
pub(super) fn app_packet(s: usize, n: u64, size: Option<usize>) -> Vec<u8> {
    let mut p = vec![
        0x45,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
        100,
        64,
        0,
        1 + s as u8,
        100,
        64,
        0,
        2 - s as u8,
    ];
    p.extend_from_slice(PLAINTEXT_MARKER);
    p.extend_from_slice(&n.to_be_bytes());
    if let Some(size) = size.filter(|s| *s > p.len()) {
        p.resize(size, 0);
        p[6] = 0x40; // Don't Fragment: too big means an ICMP error, not fragments
    }
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

/// The sequence number of an application packet from side `from`.
pub(super) fn app_seq(from: usize, p: &[u8]) -> Option<u64> {
    let len = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
    if p.len() != len {
        return None;
    }
    quoted_seq(from, p)
}

/// The sequence number of an application packet from side `from` whose first 44 bytes are
/// `p`'s (as an ICMP error quotes it).
pub(super) fn quoted_seq(from: usize, p: &[u8]) -> Option<u64> {
    if p.len() < 44 || p[15] != 1 + from as u8 || &p[20..36] != PLAINTEXT_MARKER {
        return None;
    }
    Some(u64::from_be_bytes(p[36..44].try_into().ok()?))
}
