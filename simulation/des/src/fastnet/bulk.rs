//! A bulk transfer through the tunnel, node 0 to node 1, with TCP's congestion control in
//! small (slow start, congestion avoidance, fast retransmit on three duplicate ACKs, a
//! retransmission timer that backs off): the goodput a file copy would see on the path, and the
//! load that fills a bottleneck's queue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::PLAINTEXT_MARKER;

/// The transfer's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BulkConfig {
    /// When the sender starts, from the start of the run.
    pub start: Duration,
    /// Size of each data packet (an IPv4 packet, headers included).
    pub packet: usize,
    /// The most packets in flight (the receiver's window).
    pub window: u32,
    /// Goodput is counted from this time on.
    pub measure_from: Duration,
    /// The application's own rate limit, kbit/s (packets are paced at it): a real transfer
    /// is bounded by its disk or its server, and the simulation by its cost per packet.
    pub max_kbit: f64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            start: Duration::from_secs(1),
            packet: 1200,
            window: 1024,
            measure_from: Duration::from_secs(1),
            max_kbit: 25_000.0,
        }
    }
}

/// What the transfer achieved.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BulkOutcome {
    /// Bytes delivered in order to the receiver from `measure_from` on.
    pub delivered_bytes: u64,
    /// Goodput over the measured time, kbit/s.
    pub goodput_kbit: f64,
    /// Data packets sent, retransmissions included.
    pub sent: u64,
    /// Retransmissions (fast and on timeout).
    pub retransmits: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Bytes delivered in order in each second of the run (from the start).
    pub per_second: Vec<u64>,
    /// The smoothed round trip at the end, milliseconds.
    pub srtt_ms: Option<f64>,
}

/// The transfer's state on both ends.
pub(super) struct Bulk {
    config: BulkConfig,
    t0: Instant,
    next_seq: u64,
    /// The lowest sequence number not acknowledged yet.
    una: u64,
    /// Sent and not acknowledged: when, and whether it was sent again since (Karn).
    in_flight: BTreeMap<u64, (Instant, bool)>,
    cwnd: f64,
    ssthresh: f64,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    rto_at: Option<Instant>,
    /// Pacing: the next new packet may leave then.
    next_send: Instant,
    dupacks: u32,
    /// Fast recovery lasts until everything sent before it started is acknowledged.
    recover: Option<u64>,
    /// The receiver: the next sequence number it wants, and what arrived ahead of it.
    expected: u64,
    ahead: BTreeSet<u64>,
    pub(super) out: BulkOutcome,
}

const MIN_RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(60);
/// Marks a packet of the transfer (the IPv4 protocol byte is TCP's).
const TCP: u8 = 6;

/// A packet of the transfer as the tunnel sees it.
pub(super) enum Segment {
    Data(u64),
    Ack(u64),
}

impl Bulk {
    pub(super) fn new(config: BulkConfig, t0: Instant) -> Self {
        Bulk {
            config,
            t0,
            next_seq: 0,
            una: 0,
            in_flight: BTreeMap::new(),
            cwnd: 2.0,
            ssthresh: f64::from(config.window),
            srtt: None,
            rttvar: Duration::ZERO,
            rto: Duration::from_secs(1),
            rto_at: None,
            next_send: t0 + config.start,
            dupacks: 0,
            recover: None,
            expected: 0,
            ahead: BTreeSet::new(),
            out: BulkOutcome::default(),
        }
    }

    /// When the sender next needs the clock: its retransmission timer, or its next paced
    /// packet when the window has room.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let paced = (self.in_flight.len() < self.window()).then_some(self.next_send);
        match (paced, self.rto_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Packets the sender may have in flight.
    fn window(&self) -> usize {
        (self.cwnd.min(f64::from(self.config.window)).floor() as usize).max(1)
    }

    /// The time one packet takes at the application's rate.
    fn pace(&self) -> Duration {
        Duration::from_secs_f64(
            self.config.packet as f64 * 8.0 / (self.config.max_kbit.max(1.0) * 1000.0),
        )
    }

    /// The data packets the sender puts out at `now`: retransmission on timeout, then new
    /// data while the window allows.
    pub(super) fn poll_send(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if now < self.t0 + self.config.start {
            return out;
        }
        if self.rto_at.is_some_and(|t| t <= now) && !self.in_flight.is_empty() {
            self.out.timeouts += 1;
            self.ssthresh = (self.in_flight.len() as f64 / 2.0).max(2.0);
            self.cwnd = 1.0;
            self.recover = Some(self.next_seq);
            self.dupacks = 0;
            self.rto = (self.rto * 2).min(MAX_RTO);
            out.push(self.resend(now, self.una));
            self.rto_at = Some(now + self.rto);
        }
        let window = self.window();
        while self.in_flight.len() < window && self.next_send <= now {
            // Pacing: a sender idle for a while starts from now, not from its backlog.
            self.next_send = self.next_send.max(now - self.pace()) + self.pace();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.in_flight.insert(seq, (now, false));
            self.out.sent += 1;
            out.push(self.packet(Segment::Data(seq)));
        }
        if self.rto_at.is_none() && !self.in_flight.is_empty() {
            self.rto_at = Some(now + self.rto);
        }
        out
    }

    fn resend(&mut self, now: Instant, seq: u64) -> Vec<u8> {
        self.in_flight.insert(seq, (now, true));
        self.out.sent += 1;
        self.out.retransmits += 1;
        self.packet(Segment::Data(seq))
    }

    /// The receiver takes a data packet; returns the ACK to send back.
    pub(super) fn on_data(&mut self, now: Instant, seq: u64) -> Vec<u8> {
        if seq >= self.expected && seq < self.expected + u64::from(self.config.window) * 4 {
            self.ahead.insert(seq);
        }
        let mut delivered = 0u64;
        while self.ahead.remove(&self.expected) {
            self.expected += 1;
            delivered += self.config.packet as u64;
        }
        if delivered > 0 {
            let since = now - self.t0;
            if since >= self.config.measure_from {
                self.out.delivered_bytes += delivered;
            }
            let second = since.as_secs() as usize;
            if self.out.per_second.len() <= second {
                self.out.per_second.resize(second + 1, 0);
            }
            self.out.per_second[second] += delivered;
        }
        self.packet(Segment::Ack(self.expected))
    }

    /// The sender takes an ACK (cumulative: everything below `cum` arrived); returns any
    /// fast retransmission.
    pub(super) fn on_ack(&mut self, now: Instant, cum: u64) -> Option<Vec<u8>> {
        if cum > self.next_seq {
            return None;
        }
        if cum > self.una {
            let newly = (cum - self.una) as f64;
            // Karn: only a packet sent once gives a round-trip sample.
            if let Some((sent, false)) = self.in_flight.get(&(cum - 1)).copied() {
                self.sample(now - sent);
            }
            self.in_flight.retain(|s, _| *s >= cum);
            self.una = cum;
            self.dupacks = 0;
            self.rto_at = (!self.in_flight.is_empty()).then(|| now + self.rto);
            match self.recover {
                Some(r) if cum < r => {
                    // A partial ACK in recovery: the next hole is lost too.
                    return Some(self.resend(now, cum));
                }
                Some(_) => self.recover = None,
                None if self.cwnd < self.ssthresh => self.cwnd += newly,
                None => self.cwnd += newly / self.cwnd,
            }
            self.cwnd = self.cwnd.min(f64::from(self.config.window));
            return None;
        }
        if cum == self.una && !self.in_flight.is_empty() {
            self.dupacks += 1;
            if self.dupacks == 3 && self.recover.is_none() {
                self.ssthresh = (self.cwnd / 2.0).max(2.0);
                self.cwnd = self.ssthresh;
                self.recover = Some(self.next_seq);
                return Some(self.resend(now, cum));
            }
        }
        None
    }

    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        self.rto = (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO);
    }

    /// The outcome at `end`.
    pub(super) fn finish(&mut self, end: Instant) -> BulkOutcome {
        let measured = (end - self.t0).saturating_sub(self.config.measure_from);
        let secs = measured.as_secs_f64();
        self.out.goodput_kbit = if secs > 0.0 {
            self.out.delivered_bytes as f64 * 8.0 / secs / 1000.0
        } else {
            0.0
        };
        self.out.srtt_ms = self.srtt.map(|s| s.as_secs_f64() * 1000.0);
        self.out.clone()
    }

    /// A packet of the transfer: an IPv4 header (TCP's protocol number; data from node 0 to
    /// node 1, ACKs back), the plaintext marker, the sequence number, and padding for data.
    fn packet(&self, s: Segment) -> Vec<u8> {
        let (from, n, kind, size) = match s {
            Segment::Data(n) => (0u8, n, 0u8, self.config.packet.max(45)),
            Segment::Ack(n) => (1u8, n, 1u8, 45),
        };
        let mut p = vec![0u8; size];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[100, 64, 0, 1 + from]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2 - from]);
        p[20..36].copy_from_slice(PLAINTEXT_MARKER);
        p[36..44].copy_from_slice(&n.to_be_bytes());
        p[44] = kind;
        p
    }
}

/// The transfer's segment in a packet node `to` received, if it is one.
pub(super) fn parse(to: usize, p: &[u8]) -> Option<Segment> {
    if p.len() < 45 || p[9] != TCP || &p[20..36] != PLAINTEXT_MARKER {
        return None;
    }
    let n = u64::from_be_bytes(p[36..44].try_into().ok()?);
    match (to, p[44]) {
        (1, 0) => Some(Segment::Data(n)),
        (0, 1) => Some(Segment::Ack(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lossless pipe with a fixed delay each way: the window opens and everything arrives.
    #[test]
    fn slow_start_fills_the_window_and_everything_arrives_in_order() {
        let t0 = Instant::now();
        let config = BulkConfig {
            start: Duration::ZERO,
            packet: 1000,
            window: 64,
            measure_from: Duration::ZERO,
            max_kbit: f64::INFINITY,
        };
        let mut b = Bulk::new(config, t0);
        let one_way = Duration::from_millis(25);
        let mut now = t0;
        let mut in_transit: Vec<(Instant, Segment)> = Vec::new();
        while now < t0 + Duration::from_secs(10) {
            for p in b.poll_send(now) {
                if let Some(s) = parse(1, &p) {
                    in_transit.push((now + one_way, s));
                }
            }
            in_transit.sort_by_key(|x| x.0);
            let n = in_transit.iter().take_while(|x| x.0 <= now).count();
            let due: Vec<_> = in_transit.drain(..n).collect();
            for (_, s) in due {
                match s {
                    Segment::Data(n) => {
                        let ack = b.on_data(now, n);
                        if let Some(a) = parse(0, &ack) {
                            in_transit.push((now + one_way, a));
                        }
                    }
                    Segment::Ack(n) => {
                        if let Some(p) = b.on_ack(now, n) {
                            in_transit.push((now + one_way, parse(1, &p).expect("data")));
                        }
                    }
                }
            }
            now += Duration::from_millis(1);
        }
        let out = b.finish(now);
        assert_eq!(out.retransmits, 0);
        // 64 packets of 1,000 bytes per 50 ms round trip: 10.24 Mbit/s once the window is
        // open; slow start costs a few round trips of the 10 s.
        assert!(
            out.goodput_kbit > 9_000.0 && out.goodput_kbit <= 10_240.0,
            "{out:?}"
        );
        assert!((out.srtt_ms.expect("sampled") - 50.0).abs() < 2.0);
    }

    /// A transfer that starts at once and is not paced.
    fn unpaced(t0: Instant) -> Bulk {
        let config = BulkConfig {
            start: Duration::ZERO,
            max_kbit: f64::INFINITY,
            ..BulkConfig::default()
        };
        Bulk::new(config, t0)
    }

    #[test]
    fn three_duplicate_acks_retransmit_the_hole_and_halve_the_window() {
        let t0 = Instant::now();
        let mut b = unpaced(t0);
        b.cwnd = 20.0;
        b.ssthresh = 10.0;
        let sent = b.poll_send(t0);
        assert_eq!(sent.len(), 20);
        let now = t0 + Duration::from_millis(50);
        // Packet 0 lost: every later one acknowledges 0 again.
        assert!(b.on_ack(now, 0).is_none());
        assert!(b.on_ack(now, 0).is_none());
        let again = b.on_ack(now, 0).expect("fast retransmit");
        assert!(matches!(parse(1, &again), Some(Segment::Data(0))));
        assert_eq!(b.cwnd, 10.0);
        assert_eq!(b.out.retransmits, 1);
        // The hole filled: the ACK jumps to everything sent, and recovery ends.
        assert!(b.on_ack(now, 20).is_none());
        assert!(b.recover.is_none() && b.in_flight.is_empty());
    }

    #[test]
    fn a_timeout_resends_the_oldest_and_backs_off() {
        let t0 = Instant::now();
        let mut b = unpaced(t0);
        assert_eq!(b.poll_send(t0).len(), 2);
        let first = b.poll_timeout().expect("timer");
        assert_eq!(first, t0 + Duration::from_secs(1));
        let again = b.poll_send(first);
        assert_eq!(again.len(), 1, "only the oldest, cwnd 1 with one in flight");
        assert!(matches!(parse(1, &again[0]), Some(Segment::Data(0))));
        assert_eq!(b.poll_timeout(), Some(first + Duration::from_secs(2)));
        assert_eq!(b.out.timeouts, 1);
    }

    #[test]
    fn strangers_packets_are_not_segments() {
        assert!(parse(1, &[0u8; 60]).is_none());
        let b = Bulk::new(BulkConfig::default(), Instant::now());
        let data = b.packet(Segment::Data(7));
        assert!(parse(0, &data).is_none(), "data goes to node 1 only");
        assert!(matches!(parse(1, &data), Some(Segment::Data(7))));
    }
}
