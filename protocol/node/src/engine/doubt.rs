//! A direct path in doubt: data sent on it went unanswered for longer than the path normally
//! takes to answer (3 round trips, at least 100 ms). While in doubt every packet also goes over
//! the relay and the path is pinged at once; the path is demoted only on the usual evidence
//! (missed pongs), so one late answer costs some duplicates, never a flap.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The shortest wait for an answer before a path is in doubt.
pub const MIN_DOUBT_AFTER: Duration = Duration::from_millis(100);
/// Round trips without an answer before a path is in doubt.
pub const DOUBT_RTTS: u32 = 3;
/// Answer delays remembered to judge whether the path normally answers quickly.
const SAMPLES: usize = 8;
/// Samples needed before doubt is possible at all (a new path, or traffic that just started).
const MIN_SAMPLES: usize = 4;
/// Episodes kept for the explanation.
pub const EPISODES_KEPT: usize = 16;

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoubtEnd {
    /// Something authenticated came back on the path: it works.
    Answered,
    /// Our ping on it was answered (disco passes), but none of our data was: the copies stop,
    /// and if such doubts recur, the path eats data.
    Pong,
    /// The traffic left the path (demoted on missed pongs, or another path chosen).
    Left,
}

/// One time a direct path was in doubt, for the explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoubtEpisode {
    /// The path.
    pub addr: SocketAddr,
    /// When the doubt began.
    pub began: Instant,
    /// How long it lasted, and how it ended (`None`: still in doubt).
    pub ended: Option<(Duration, DoubtEnd)>,
    /// WireGuard datagrams also sent over the relay meanwhile, and their bytes.
    pub duplicated: u64,
    /// See `duplicated`.
    pub duplicated_bytes: u64,
}

/// Episodes beginning on one path within [`RECUR_WINDOW`], none settled by data on the path
/// (each ended on a pong, or left), that count as a data stall: the path answers disco, yet
/// nothing of the peer's comes back on it.
pub const RECURRING_EPISODES: usize = 2;
/// See [`RECURRING_EPISODES`] (the data-stall time).
pub const RECUR_WINDOW: Duration = Duration::from_secs(15);

/// What [`Doubt::on_send`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Verdict {
    /// Send over the relay as well.
    pub(crate) in_doubt: bool,
    /// The doubt begins now: ping the path at once.
    pub(crate) began: bool,
    /// The doubt keeps coming back on this path: treat it as a data stall.
    pub(crate) recurring: bool,
}

/// The doubt state of one peer's direct path.
#[derive(Debug, Default)]
pub(crate) struct Doubt {
    /// The path the clock runs for, the first data sent on it since the last answer, and the
    /// latest data sent on it.
    clock: Option<(SocketAddr, Instant, Instant)>,
    /// Recent delays from a first unanswered data packet to the next authenticated one.
    answers: VecDeque<Duration>,
    /// An episode is under way (the last of `episodes`).
    open: bool,
    episodes: VecDeque<DoubtEpisode>,
}

impl Doubt {
    /// Entries held (answer times, episodes kept).
    pub(super) fn footprint(&self) -> usize {
        self.answers.len() + self.episodes.len()
    }

    /// The wait for an answer after which the path at `rtt` is in doubt.
    pub(crate) fn threshold(rtt: Option<Duration>) -> Duration {
        rtt.map_or(MIN_DOUBT_AFTER, |r| (r * DOUBT_RTTS).max(MIN_DOUBT_AFTER))
    }

    /// Whether the path answers within `threshold` as a rule: all but at most one of at least
    /// [`MIN_SAMPLES`] recent answers came that fast. A one-way stream (answered only by
    /// keep-alives every 10 s) never is, so it is never in doubt on this evidence.
    fn answers_quickly(&self, threshold: Duration) -> bool {
        self.answers.len() >= MIN_SAMPLES
            && self.answers.iter().filter(|d| **d > threshold).count() <= 1
    }

    /// Data is about to be sent on the direct path `addr` (round trip `rtt`).
    pub(crate) fn on_send(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        rtt: Option<Duration>,
    ) -> Verdict {
        let threshold = Self::threshold(rtt);
        if self
            .episodes
            .back()
            .is_some_and(|e| self.open && e.addr != addr)
        {
            // Another path now: that doubt is over.
            self.end(now, DoubtEnd::Left);
        }
        // The clock starts at the first data after an answer, after a pause longer than the
        // threshold (the peer owed no answer to what came before it), or on a new path.
        let since = match self.clock {
            Some((a, since, last))
                if a == addr && now.saturating_duration_since(last) <= threshold =>
            {
                since
            }
            _ => now,
        };
        self.clock = Some((addr, since, now));
        if self.open {
            return Verdict {
                in_doubt: true,
                ..Verdict::default()
            };
        }
        let late = now.saturating_duration_since(since) > threshold;
        if !(late && self.answers_quickly(threshold)) {
            return Verdict::default();
        }
        // Doubts that data on the path settled (a lossy link) do not count.
        let recent = self
            .episodes
            .iter()
            .filter(|e| {
                e.addr == addr
                    && now.saturating_duration_since(e.began) < RECUR_WINDOW
                    && !matches!(e.ended, Some((_, DoubtEnd::Answered)))
            })
            .count();
        if self.episodes.len() == EPISODES_KEPT {
            self.episodes.pop_front();
        }
        self.episodes.push_back(DoubtEpisode {
            addr,
            began: now,
            ended: None,
            duplicated: 0,
            duplicated_bytes: 0,
        });
        self.open = true;
        Verdict {
            in_doubt: true,
            began: true,
            recurring: recent + 1 >= RECURRING_EPISODES,
        }
    }

    /// Whether a datagram to `addr` (a keep-alive, a handshake) goes over the relay as well.
    pub(crate) fn in_doubt_about(&self, addr: SocketAddr) -> bool {
        self.open && self.episodes.back().is_some_and(|e| e.addr == addr)
    }

    /// Whether an episode is under way.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// A datagram of `len` bytes went over the relay too because of the doubt.
    pub(crate) fn note_duplicate(&mut self, len: usize) {
        if let (true, Some(e)) = (self.open, self.episodes.back_mut()) {
            e.duplicated += 1;
            e.duplicated_bytes += len as u64;
        }
    }

    /// Something authenticated arrived from the peer: directly from `direct` (its source), or
    /// over a relay (`None`). An answer from the doubted path itself ends the doubt; one over
    /// the relay, or from another address, does not (the path may still be dead).
    pub(crate) fn answered(&mut self, now: Instant, direct: Option<SocketAddr>) {
        if self.open {
            if direct.is_some() && self.in_doubt_about(direct.expect("some")) {
                self.end(now, DoubtEnd::Answered);
                self.clock = None;
            }
            return;
        }
        if let Some((_, since, _)) = self.clock.take() {
            if self.answers.len() == SAMPLES {
                self.answers.pop_front();
            }
            self.answers.push_back(now.saturating_duration_since(since));
        }
    }

    /// Our ping on `from` was answered: the path carries disco both ways, so the copies stop
    /// and data gets a threshold's time again to be answered (if it still is not, the doubt
    /// comes back, and recurs into a data stall).
    pub(crate) fn pong(&mut self, now: Instant, from: SocketAddr) {
        if self.in_doubt_about(from) {
            self.end(now, DoubtEnd::Pong);
            if let Some((a, since, _)) = self.clock.as_mut() {
                if *a == from {
                    *since = now;
                }
            }
        }
    }

    /// The episode under way ends (`how`).
    pub(crate) fn end(&mut self, now: Instant, how: DoubtEnd) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        if let Some(e) = self.episodes.back_mut() {
            e.ended = Some((now.saturating_duration_since(e.began), how));
        }
    }

    /// Episodes, oldest first.
    pub(crate) fn episodes(&self) -> Vec<DoubtEpisode> {
        self.episodes.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const A: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        1,
    );
    const B: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)),
        2,
    );
    const RTT: Option<Duration> = Some(Duration::from_millis(50));

    /// A doubt that has learned the path answers within 20 ms; the clock is then idle.
    fn learned(t0: Instant) -> Doubt {
        let mut d = Doubt::default();
        for k in 0..8 {
            let sent = t0 + ms(100 * k);
            assert_eq!(d.on_send(sent, A, RTT), Verdict::default());
            d.answered(sent + ms(20), Some(A));
        }
        d
    }

    /// Sends data every 20 ms from `from` until `until` (exclusive); the last verdict.
    fn stream(d: &mut Doubt, from: Instant, until: Instant) -> Vec<(Instant, Verdict)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < until {
            out.push((t, d.on_send(t, A, RTT)));
            t += ms(20);
        }
        out
    }

    #[test]
    fn the_threshold_is_three_round_trips_and_at_least_100_ms() {
        assert_eq!(Doubt::threshold(Some(ms(50))), ms(150));
        assert_eq!(Doubt::threshold(Some(ms(10))), ms(100));
        assert_eq!(Doubt::threshold(None), ms(100));
    }

    #[test]
    fn unanswered_data_past_the_threshold_starts_one_episode() {
        let t0 = Instant::now();
        let mut d = learned(t0);
        let start = t0 + ms(1000);
        let v = stream(&mut d, start, start + ms(200));
        let began: Vec<_> = v.iter().filter(|(_, v)| v.began).collect();
        assert_eq!(began.len(), 1);
        assert_eq!(began[0].0, start + ms(160), "the first send past 150 ms");
        assert!(v.iter().all(|(t, v)| v.in_doubt == (*t >= start + ms(160))));
        d.note_duplicate(100);
        d.note_duplicate(50);
        // An answer over the relay, or from another address, proves nothing about the path.
        d.answered(start + ms(200), None);
        d.answered(start + ms(200), Some(B));
        assert!(d.in_doubt_about(A));
        d.answered(start + ms(260), Some(A));
        assert!(!d.in_doubt_about(A));
        let e = d.episodes();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].duplicated, e[0].duplicated_bytes), (2, 150));
        assert_eq!(e[0].ended, Some((ms(100), DoubtEnd::Answered)));
    }

    #[test]
    fn a_pause_restarts_the_clock() {
        // Our pure ACK goes unanswered (the peer owes none); the next keystroke a second later
        // is not late.
        let t0 = Instant::now();
        let mut d = learned(t0);
        let ack = t0 + ms(1000);
        assert_eq!(d.on_send(ack, A, RTT), Verdict::default());
        assert_eq!(d.on_send(ack + ms(1000), A, RTT), Verdict::default());
        assert!(d.episodes().is_empty());
    }

    #[test]
    fn a_path_that_answers_slowly_as_a_rule_is_never_in_doubt() {
        // A one-way stream: answered by keep-alives every 10 s.
        let t0 = Instant::now();
        let mut d = Doubt::default();
        let mut t = t0;
        for _ in 0..8 {
            stream(&mut d, t, t + Duration::from_secs(10));
            t += Duration::from_secs(10);
            d.answered(t, Some(A));
        }
        assert!(stream(&mut d, t, t + Duration::from_secs(5))
            .iter()
            .all(|(_, v)| !v.in_doubt));
        // Too few samples yet: no doubt either.
        let mut fresh = Doubt::default();
        assert!(stream(&mut fresh, t, t + Duration::from_secs(5))
            .iter()
            .all(|(_, v)| !v.in_doubt));
    }

    #[test]
    fn a_pong_stops_the_copies_and_recurring_doubt_is_a_stall() {
        let t0 = Instant::now();
        let mut d = learned(t0);
        let mut t = t0 + ms(1000);
        let mut recurring = Vec::new();
        for round in 0..3 {
            let v = stream(&mut d, t, t + ms(200));
            assert!(v.iter().any(|(_, v)| v.began), "round {round}");
            recurring.push(v.iter().any(|(_, v)| v.recurring));
            // The probe's pong: disco passes, so the copies stop; data gets 150 ms again.
            d.pong(t + ms(200), A);
            assert!(!d.in_doubt_about(A));
            assert!(!d.on_send(t + ms(220), A, RTT).in_doubt);
            t += ms(220);
        }
        assert_eq!(
            recurring,
            vec![false, true, true],
            "the second episode within 15 s"
        );
        // Far apart, episodes do not recur.
        let later = t + RECUR_WINDOW;
        let v = stream(&mut d, later, later + ms(200));
        assert!(v.iter().any(|(_, v)| v.began) && v.iter().all(|(_, v)| !v.recurring));
    }

    #[test]
    fn doubts_that_data_on_the_path_settled_do_not_recur() {
        // A lossy link: answers come late now and then, but on the path.
        let t0 = Instant::now();
        let mut d = learned(t0);
        let mut t = t0 + ms(1000);
        for _ in 0..5 {
            let v = stream(&mut d, t, t + ms(200));
            assert!(v.iter().any(|(_, v)| v.began) && v.iter().all(|(_, v)| !v.recurring));
            d.answered(t + ms(200), Some(A));
            t += ms(300);
        }
    }

    #[test]
    fn a_new_path_ends_the_doubt_about_the_old_one_and_starts_its_own_clock() {
        let t0 = Instant::now();
        let mut d = learned(t0);
        let start = t0 + ms(1000);
        stream(&mut d, start, start + ms(200));
        assert!(d.in_doubt_about(A));
        assert_eq!(d.on_send(start + ms(200), B, RTT), Verdict::default());
        assert_eq!(d.episodes()[0].ended, Some((ms(40), DoubtEnd::Left)));
        assert!(!d.in_doubt_about(B));
    }

    #[test]
    fn episodes_are_bounded() {
        let t0 = Instant::now();
        let mut d = learned(t0);
        for k in 0..40u64 {
            let t = t0 + Duration::from_secs(10 + k);
            assert!(stream(&mut d, t, t + ms(200)).iter().any(|(_, v)| v.began));
            d.answered(t + ms(300), Some(A));
        }
        assert_eq!(d.episodes().len(), EPISODES_KEPT);
    }
}
