//! Path MTU discovery for one path, by padded disco pings (packetization-layer PMTUD in the
//! manner of RFC 8899: probes are ordinary datagrams, a lost one is the only signal, no ICMP).
//!
//! Sizes are UDP payload lengths of the datagrams the path carries. The machine starts from a
//! size every path is assumed to carry (an IPv6 minimum-MTU packet's), probes the largest size
//! worth having first (most paths carry it: one round trip and done), and otherwise searches
//! by bisection, the tunnel's floor (a 1,280-byte inner packet) first. A size fails after
//! [`PROBE_TRIES`] unanswered probes, so one lost probe does not shrink the path. A settled
//! path is probed again every [`REPROBE_AFTER`], and verified at its size when the driver sees
//! data go unanswered: a black hole for large packets that appears mid-path drops it back to
//! the assumed size at once and starts the search again.
//!
//! A lost probe is evidence of size only on a path that still answers: when the path has
//! answered none of the driver's other (small) pings sent since the probe, the driver pings it
//! and the verdict waits one more probe timeout; with no answer, the path is down (a NAT
//! rebinding, a cut), not too small, and the size is tried again uncounted after
//! [`DOWN_RETRY`].

use std::time::{Duration, Instant};

use burrow_disco::TxId;

/// Probes of one size that must go unanswered before the size counts as too big.
pub const PROBE_TRIES: u8 = 2;
/// A settled path is probed again after this long (its route may have changed).
pub const REPROBE_AFTER: Duration = Duration::from_secs(600);
/// A probe is given at least this long (and 3 round trips) for its pong.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// While datagrams above the assumed size go out, the confirmed size is checked again when its
/// last confirmation is older than this: a black hole for large packets shows no other sign
/// when the traffic is sparse (a ping a second, TCP retransmitting into it with back-off).
pub const REVERIFY_WHILE_LARGE: Duration = Duration::from_secs(3);
/// A lost probe on a path that answered nothing since is tried again after this long.
pub const DOWN_RETRY: Duration = Duration::from_secs(1);
/// A probe's timeout while the path's round trip is unknown.
pub const UNKNOWN_RTT_TIMEOUT: Duration = Duration::from_secs(1);
/// Probe sizes move in steps of this many bytes (WireGuard pads its plaintexts to 16, so a
/// datagram size between two steps carries no larger packet than the step below).
pub const STEP: usize = 16;

/// The sizes one path's search works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuSizes {
    /// A datagram size every path is taken to carry without probing.
    pub assumed: usize,
    /// The size probed first after the largest fails (the tunnel's minimum packet).
    pub floor: usize,
    /// The largest size worth probing (the tunnel's MTU, or the interface's, whichever binds).
    pub ceiling: usize,
}

/// Where a path's search stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtuState {
    /// Probing; datagrams above [`PathMtu::limit`] should take another way meanwhile.
    Searching,
    /// Done: [`PathMtu::limit`] is the largest size the path carried.
    Settled,
}

/// One path's discovery, as a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuReport {
    /// The largest datagram size confirmed (or assumed).
    pub limit: usize,
    /// The smallest size that went unanswered, if any.
    pub too_big: Option<usize>,
    /// The sizes the search works with.
    pub sizes: MtuSizes,
    /// Searching or settled.
    pub state: MtuState,
    /// Probes sent on this path.
    pub probes: u64,
    /// Times a confirmed size stopped getting through (a black hole appeared).
    pub black_holes: u32,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    tx_id: TxId,
    size: usize,
    sent: Instant,
    deadline: Instant,
    tries: u8,
    /// Lost, waiting for the path to show it answers at all.
    held: bool,
    /// Checking the confirmed size rather than searching above it.
    verify: bool,
}

/// Path MTU discovery on one path.
#[derive(Debug, Clone)]
pub struct PathMtu {
    sizes: MtuSizes,
    good: usize,
    bad: Option<usize>,
    probe: Option<Probe>,
    /// When the next probe goes (none: waiting for an answer, or nothing to do).
    next_at: Option<Instant>,
    /// A failed probe of this size is tried again.
    retry: Option<(usize, u8, bool)>,
    verify_wanted: bool,
    /// When a probe last confirmed the size in use.
    confirmed_at: Option<Instant>,
    /// When the settled search runs again (checks of the size in use do not move it).
    reprobe_at: Option<Instant>,
    /// The verification under way was asked for by evidence ([`PathMtu::verify`]), not by
    /// routine ([`PathMtu::note_send`]).
    suspect: bool,
    probes: u64,
    black_holes: u32,
}

impl PathMtu {
    /// A path just chosen: its first probe is due at once. Sizes are aligned to
    /// `sizes.assumed` in steps of [`STEP`]; a ceiling at or below the assumed size leaves
    /// nothing to probe.
    pub fn new(now: Instant, sizes: MtuSizes) -> Self {
        let ceiling = align_down(sizes.ceiling.max(sizes.assumed), sizes.assumed);
        let floor = align_down(sizes.floor.clamp(sizes.assumed, ceiling), sizes.assumed);
        let sizes = MtuSizes {
            ceiling,
            floor,
            ..sizes
        };
        PathMtu {
            sizes,
            good: sizes.assumed,
            bad: None,
            probe: None,
            next_at: (ceiling > sizes.assumed).then_some(now),
            retry: None,
            verify_wanted: false,
            confirmed_at: None,
            reprobe_at: None,
            suspect: false,
            probes: 0,
            black_holes: 0,
        }
    }

    /// The sizes in use.
    pub fn sizes(&self) -> MtuSizes {
        self.sizes
    }

    /// The largest datagram the path is known (or assumed) to carry.
    pub fn limit(&self) -> usize {
        self.good
    }

    /// Searching or settled.
    pub fn state(&self) -> MtuState {
        if self.probe.is_none() && self.retry.is_none() && self.next_size().is_none() {
            MtuState::Settled
        } else {
            MtuState::Searching
        }
    }

    /// The path's size once the search has settled: what packets above it are told (too big),
    /// as against sent another way while the search goes on.
    pub fn settled(&self) -> Option<usize> {
        (self.state() == MtuState::Settled).then_some(self.good)
    }

    /// The next size to probe by the search alone (not a verification), if any.
    fn next_size(&self) -> Option<usize> {
        let top = self.sizes.ceiling;
        if self.good >= top {
            return None;
        }
        let Some(bad) = self.bad else {
            return Some(top);
        };
        if self.good < self.sizes.floor && self.sizes.floor < bad {
            return Some(self.sizes.floor);
        }
        // Sizes good + k·STEP strictly below `bad`: bisect them.
        let steps = (bad - self.good).saturating_sub(1) / STEP;
        (steps > 0).then(|| self.good + STEP * steps.div_ceil(2))
    }

    /// When [`PathMtu::handle_timeout`] or [`PathMtu::poll_probe`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.probe {
            Some(p) => Some(p.deadline),
            None => self.next_at,
        }
    }

    /// The next probe, when one is due: its transaction ID (from `tx_id`) and the datagram
    /// size to pad it to. `rtt` is the path's round trip, if known (it sets the timeout).
    pub fn poll_probe(
        &mut self,
        now: Instant,
        rtt: Option<Duration>,
        tx_id: impl FnOnce() -> TxId,
    ) -> Option<(TxId, usize)> {
        if self.probe.is_some() || self.next_at.is_none_or(|t| t > now) {
            return None;
        }
        let (size, tries, verify) = match self.retry.take() {
            Some(r) => r,
            None if self.verify_wanted && self.good > self.sizes.assumed => {
                self.verify_wanted = false;
                (self.good, 0, true)
            }
            None => match self.next_size() {
                Some(s) => (s, 0, false),
                // Nothing left to search, so this is the periodic re-probe: the top again (the
                // route may have grown), or the confirmed top verified.
                None if self.good < self.sizes.ceiling => {
                    self.bad = None;
                    (self.sizes.ceiling, 0, false)
                }
                None => (self.good, 0, true),
            },
        };
        let timeout = rtt.map_or(UNKNOWN_RTT_TIMEOUT, |r| (r * 3).max(MIN_PROBE_TIMEOUT));
        let id = tx_id();
        self.probe = Some(Probe {
            tx_id: id,
            size,
            sent: now,
            deadline: now + timeout,
            tries: tries + 1,
            held: false,
            verify,
        });
        self.next_at = None;
        self.probes += 1;
        Some((id, size))
    }

    /// A pong arrived; whether it answers this path's probe.
    pub fn handle_pong(&mut self, now: Instant, tx_id: &TxId) -> bool {
        let Some(p) = self.probe.filter(|p| &p.tx_id == tx_id) else {
            return false;
        };
        self.probe = None;
        if p.verify {
            self.suspect = false;
        }
        self.good = self.good.max(p.size);
        if p.size == self.good {
            self.confirmed_at = Some(now);
        }
        if self.bad.is_some_and(|b| b <= self.good) {
            self.bad = None;
        }
        self.schedule_next(now, p.verify);
        true
    }

    /// A probe's time is up: try its size again, or count it too big. `last_pong` is when the
    /// path last answered any of the driver's other pings: until it answers one sent after the
    /// probe, the loss says nothing of size. True when the driver should ping the path (small)
    /// now: the verdict waits one more probe timeout for that answer, and without it the size
    /// is tried afresh after [`DOWN_RETRY`].
    pub fn handle_timeout(&mut self, now: Instant, last_pong: Option<Instant>) -> bool {
        let Some(p) = self.probe.filter(|p| p.deadline <= now) else {
            return false;
        };
        self.probe = None;
        if p.tries < PROBE_TRIES {
            self.retry = Some((p.size, p.tries, p.verify));
            self.next_at = Some(now);
            return false;
        }
        // Only an answer while the probe was awaited tells: one from after a long absence (the
        // route left the path and came back) says nothing of when the probe was lost.
        if !last_pong.is_some_and(|t| t >= p.sent && t <= p.deadline) {
            if !p.held {
                self.probe = Some(Probe {
                    held: true,
                    deadline: now + DOWN_RETRY,
                    ..p
                });
                return true;
            }
            self.retry = Some((p.size, 0, p.verify));
            self.next_at = Some(now + DOWN_RETRY);
            return false;
        }
        if p.verify {
            self.suspect = false;
            // A size that got through stopped getting through: start again from the assumed
            // size (the floor is probed next, then the search narrows again).
            self.black_holes += 1;
            self.good = self.sizes.assumed;
        }
        self.bad = Some(self.bad.map_or(p.size, |b| b.min(p.size)));
        if self.bad.is_some_and(|b| b <= self.good) {
            self.good = self.sizes.assumed;
        }
        self.schedule_next(now, p.verify);
        false
    }

    /// The route enters this path again after being elsewhere (nobody drove the machine
    /// meanwhile): a probe left in flight, or its retry, is tried afresh and uncounted (its
    /// loss says nothing of size, and a hold would judge it against answers from the whole
    /// absence), and the confirmed size is verified as after [`PathMtu::verify`], so large
    /// datagrams count as at risk until the answer: the path's MTU may have dropped.
    pub fn route_entered(&mut self, now: Instant) {
        let pending = self
            .probe
            .take()
            .map(|p| (p.size, p.verify))
            .or(self.retry.map(|r| (r.0, r.2)));
        if let Some((size, verify)) = pending {
            self.retry = Some((size, 0, verify));
            self.next_at = Some(now);
        }
        self.verify(now);
    }

    /// Data went unanswered on the path: probe the confirmed size again (soon, and once),
    /// since a black hole for large packets looks just like that from here.
    pub fn verify(&mut self, now: Instant) {
        if self.good > self.sizes.assumed {
            self.suspect = true;
        }
        self.ask_verify(now);
    }

    fn ask_verify(&mut self, now: Instant) {
        // Nothing to verify at the assumed size; a verification in flight or queued for a
        // retry already answers the request.
        if self.good <= self.sizes.assumed
            || self.probe.is_some_and(|p| p.verify)
            || self.retry.is_some_and(|r| r.2)
        {
            return;
        }
        self.verify_wanted = true;
        if self.probe.is_none() && self.retry.is_none() {
            self.next_at = Some(now);
        }
    }

    /// Whether the confirmed size is being checked again ([`PathMtu::verify`]) and the answer
    /// is not in yet.
    pub fn verifying(&self) -> bool {
        self.verify_wanted
            || self.probe.is_some_and(|p| p.verify)
            || self.retry.is_some_and(|r| r.2)
    }

    /// A datagram of `len` bytes went out on the path: above the assumed size, with the
    /// confirmation of the size in use older than [`REVERIFY_WHILE_LARGE`], the size is
    /// verified again. At most one probe (and its retry) per that interval while large data
    /// flows; none while it does not.
    pub fn note_send(&mut self, now: Instant, len: usize) {
        let stale = self
            .confirmed_at
            .is_none_or(|t| now.saturating_duration_since(t) > REVERIFY_WHILE_LARGE);
        if len > self.sizes.assumed && stale && self.probe.is_none() && self.retry.is_none() {
            // Counted from now, so a verification that is not answered soon is not asked again
            // by every datagram meanwhile.
            self.confirmed_at = Some(now);
            self.ask_verify(now);
        }
    }

    /// Whether a verification asked for by evidence ([`PathMtu::verify`]) is under way.
    pub fn suspected(&self) -> bool {
        self.suspect && self.verifying()
    }

    /// What the search has found so far.
    pub fn report(&self) -> MtuReport {
        MtuReport {
            limit: self.good,
            too_big: self.bad,
            sizes: self.sizes,
            state: self.state(),
            probes: self.probes,
            black_holes: self.black_holes,
        }
    }

    fn schedule_next(&mut self, now: Instant, after_verify: bool) {
        if self.good <= self.sizes.assumed {
            // A verification asked for meanwhile has nothing left to check (the size fell back
            // to the assumed one): left set, it would restart the search forever.
            self.verify_wanted = false;
        }
        if self.verify_wanted || self.next_size().is_some() {
            self.next_at = Some(now);
            return;
        }
        // Settled: a search (or re-probe) that just ended sets the next re-probe; a check of
        // the size in use leaves it where it was, so routine checks never put it off.
        let reprobe = match self.reprobe_at {
            Some(t) if after_verify && t > now => t,
            _ => now + REPROBE_AFTER,
        };
        self.reprobe_at = Some(reprobe);
        self.next_at = Some(reprobe);
    }
}

/// The largest size of the form `base + k·STEP` at or below `size` (`base` when none).
fn align_down(size: usize, base: usize) -> usize {
    base + (size.saturating_sub(base) / STEP) * STEP
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZES: MtuSizes = MtuSizes {
        assumed: 1232,
        floor: 1312,
        ceiling: 1472,
    };
    const RTT: Duration = Duration::from_millis(50);

    /// Drives `m` for `secs` simulated seconds over a path that carries datagrams up to
    /// `capacity(t)` and loses the probes `lose` picks; returns the probes sent (when, since
    /// `t0`, and their size).
    fn drive(
        m: &mut PathMtu,
        t0: Instant,
        secs: u64,
        capacity: impl Fn(Duration) -> usize,
        lose: impl FnMut(usize) -> bool,
    ) -> Vec<(Duration, usize)> {
        drive_over(m, t0, Duration::from_secs(secs), capacity, lose, |_| true)
    }

    /// As [`drive`], over a path that answers nothing at all while `path_up(t)` is false.
    fn drive_over(
        m: &mut PathMtu,
        t0: Instant,
        span: Duration,
        capacity: impl Fn(Duration) -> usize,
        mut lose: impl FnMut(usize) -> bool,
        path_up: impl Fn(Duration) -> bool,
    ) -> Vec<(Duration, usize)> {
        let mut sent = Vec::new();
        let mut id = 0u8;
        let mut pending: Option<(Instant, TxId)> = None;
        let mut now = t0;
        let end = t0 + span;
        while now < end {
            if let Some((at, tx)) = pending {
                if at <= now {
                    pending = None;
                    assert!(m.handle_pong(now, &tx));
                }
            }
            // The path answers small pings one round trip on, when it was up for them (and
            // they were sent within this drive).
            let answering = now
                .checked_sub(RTT)
                .filter(|_| now >= t0 + RTT && path_up(now - t0 - RTT) && path_up(now - t0));
            m.handle_timeout(now, answering);
            while let Some((tx, size)) = m.poll_probe(now, Some(RTT), || {
                id = id.wrapping_add(1);
                [id; 12]
            }) {
                sent.push((now - t0, size));
                let n = sent.len();
                if size <= capacity(now - t0) && !lose(n) && path_up(now - t0) {
                    pending = Some((now + RTT, tx));
                }
            }
            let next = [m.poll_timeout(), pending.map(|p| p.0)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end);
            now = next.max(now + Duration::from_millis(1)).min(end);
        }
        sent
    }

    /// A path settled at 1,472 over 5 s, then asked to verify (data went unanswered); the
    /// machine and the time of the request.
    fn settled_then_verified() -> (PathMtu, Instant) {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        drive(&mut m, t0, 5, |_| 1500, |_| false);
        assert_eq!(m.limit(), 1472);
        let t1 = t0 + Duration::from_secs(5);
        m.verify(t1);
        (m, t1)
    }

    fn sizes(sent: &[(Duration, usize)]) -> Vec<usize> {
        sent.iter().map(|s| s.1).collect()
    }

    #[test]
    fn a_path_that_carries_the_ceiling_settles_in_one_probe() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        assert_eq!(m.limit(), 1232);
        let sent = drive(&mut m, t0, 60, |_| 1500, |_| false);
        assert_eq!(sizes(&sent), vec![1472]);
        assert_eq!(m.state(), MtuState::Settled);
        assert_eq!(m.limit(), 1472);
        assert_eq!(m.settled(), Some(1472));
    }

    #[test]
    fn a_smaller_path_is_found_by_bisection_floor_first() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        let sent = drive(&mut m, t0, 60, |_| 1400, |_| false);
        // Top twice (lost), floor, then bisection.
        assert_eq!(&sizes(&sent)[..3], &[1472, 1472, 1312]);
        assert_eq!(m.limit(), 1392, "{sent:?}");
        assert_eq!(m.settled(), Some(1392));
        assert!(sent.len() <= 12, "{sent:?}");
    }

    #[test]
    fn one_lost_probe_does_not_shrink_the_path() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        let sent = drive(&mut m, t0, 60, |_| 1500, |n| n == 1);
        assert_eq!(sizes(&sent), vec![1472, 1472]);
        assert_eq!(m.limit(), 1472);
    }

    #[test]
    fn a_black_hole_found_by_verification_drops_to_the_floor_then_narrows() {
        let (mut m, t1) = settled_then_verified();
        let sent = drive(&mut m, t1, 10, |_| 1350, |_| false);
        assert_eq!(&sizes(&sent)[..3], &[1472, 1472, 1312], "{sent:?}");
        assert_eq!(m.report().black_holes, 1);
        assert_eq!(m.limit(), 1344);
        // Within a few seconds: the verification's two probes time out (3 round trips, at
        // least 200 ms each), and the floor goes out at once.
        assert!(sent[2].0 <= Duration::from_millis(500), "{sent:?}");
    }

    #[test]
    fn probes_lost_on_a_path_that_answers_nothing_do_not_shrink_it() {
        // The path goes down for every size (its NAT rebinds) just as data goes unanswered:
        // the verification's probes are lost, but so is everything else.
        let (mut m, t1) = settled_then_verified();
        let sent = drive_over(
            &mut m,
            t1,
            Duration::from_secs(10),
            |_| 1500,
            |_| false,
            |_| false,
        );
        assert_eq!(m.report().black_holes, 0, "{sent:?}");
        assert_eq!(m.limit(), 1472);
        assert!(
            sent.iter().all(|s| s.1 == 1472),
            "only the size in use, again: {sent:?}"
        );
        // Tried again (two tries, a wait for the ping, a second's pause) about once in 1.6 s,
        // not in a loop.
        assert!(sent.len() <= 2 * 7, "{sent:?}");
        // Back up: a probe whose wait for an answer ends just as the path returns may still
        // count (the race is left: it costs one step below the top until the 10-minute
        // re-probe), and the search climbs back within a few probes.
        let t2 = t1 + Duration::from_secs(10);
        let sent = drive(&mut m, t2, 3, |_| 1500, |_| false);
        assert!(m.limit() >= 1472 - STEP, "{sent:?}");
        assert!(sent.len() <= 6, "{sent:?}");
    }

    #[test]
    fn a_verification_asked_again_while_its_retry_waits_ends_when_the_size_falls() {
        // The path is down for everything while the verification runs: after 2 s its probe
        // waits as a retry. Asked again then (the route came back), and the path now carries
        // no more than the assumed size: the search settles there and stops.
        let (mut m, t1) = settled_then_verified();
        drive_over(
            &mut m,
            t1,
            Duration::from_secs(2),
            |_| 1500,
            |_| false,
            |_| false,
        );
        assert!(m.retry.is_some_and(|r| r.2), "a verification waits: {m:?}");
        let t2 = t1 + Duration::from_secs(2);
        m.verify(t2);
        let sent = drive(&mut m, t2, 60, |_| 1240, |_| false);
        assert_eq!(m.limit(), 1232, "{sent:?}");
        assert_eq!(m.state(), MtuState::Settled, "{m:?}");
        assert!(!m.verifying(), "{m:?}");
        // The verification's two tries, the floor, two bisection steps (each tried twice).
        assert!(sent.len() <= 12, "{sent:?}");
    }

    #[test]
    fn a_probe_frozen_while_the_route_was_elsewhere_counts_for_nothing() {
        // A verification's second try is in flight when the route leaves the path (cut: the
        // first try was lost); 20 s later the route is back on the path, whose size never
        // changed.
        let (mut m, t1) = settled_then_verified();
        drive_over(
            &mut m,
            t1,
            Duration::from_millis(300),
            |_| 1500,
            |_| false,
            |_| false,
        );
        assert!(m.probe.is_some_and(|p| p.tries == 2 && p.verify), "{m:?}");
        let back = t1 + Duration::from_secs(20);
        m.route_entered(back);
        assert!(
            m.suspected(),
            "large datagrams are at risk until the answer"
        );
        let sent = drive(&mut m, back, 5, |_| 1500, |_| false);
        assert_eq!(m.report().black_holes, 0, "{sent:?}");
        assert_eq!(m.limit(), 1472);
        assert!(!m.suspected());
        assert_eq!(sizes(&sent), vec![1472], "one fresh try, answered");
    }

    #[test]
    fn large_sends_reverify_a_stale_size_at_most_once_an_interval() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        drive(&mut m, t0, 1, |_| 1500, |_| false);
        assert_eq!(m.limit(), 1472);
        // Small datagrams never ask; large ones within the interval neither.
        m.note_send(t0 + Duration::from_secs(10), 200);
        m.note_send(t0 + Duration::from_millis(1500), 1472);
        assert!(!m.verifying());
        // Large ones past it ask once.
        let t1 = t0 + Duration::from_secs(10);
        m.note_send(t1, 1472);
        assert!(m.verifying());
        let sent = drive(&mut m, t1, 1, |_| 1500, |_| false);
        assert_eq!(sizes(&sent), vec![1472]);
        assert!(!m.verifying());
        m.note_send(t1 + Duration::from_secs(2), 1472);
        assert!(!m.verifying(), "confirmed just now");
    }

    #[test]
    fn routine_checks_do_not_put_off_the_ten_minute_re_probe() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        drive(&mut m, t0, 1, |_| 1400, |_| false);
        assert_eq!(m.limit(), 1392);
        // Large data every second for 11 minutes, on a path that grew to 1,500 at once.
        let mut now = t0 + Duration::from_secs(1);
        while now < t0 + REPROBE_AFTER + Duration::from_secs(60) {
            m.note_send(now, 1392);
            drive(&mut m, now, 1, |_| 1500, |_| false);
            now += Duration::from_secs(1);
        }
        assert_eq!(m.limit(), 1472, "the re-probe ran and found the room");
    }

    #[test]
    fn a_settled_path_is_probed_again_and_finds_more_room() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(t0, SIZES);
        let grows = REPROBE_AFTER + Duration::from_secs(1);
        let sent = drive(
            &mut m,
            t0,
            2 * REPROBE_AFTER.as_secs() + 10,
            |t| if t < grows { 1400 } else { 1500 },
            |_| false,
        );
        assert_eq!(m.limit(), 1472, "{sent:?}");
    }

    #[test]
    fn nothing_to_probe_when_the_ceiling_is_the_assumed_size() {
        let t0 = Instant::now();
        let mut m = PathMtu::new(
            t0,
            MtuSizes {
                ceiling: 1000,
                ..SIZES
            },
        );
        assert_eq!(m.poll_timeout(), None);
        assert!(m.poll_probe(t0, None, || [0; 12]).is_none());
        assert_eq!(m.state(), MtuState::Settled);
    }

    proptest! {
        /// Whatever the path carries and whichever probes are lost, the machine never claims
        /// more than the path carries; with no loss it finds the largest aligned size exactly.
        #[test]
        fn never_claims_more_than_the_path_carries(
            capacity in 1000usize..1600,
            losses in proptest::collection::vec(any::<bool>(), 64),
        ) {
            let t0 = Instant::now();
            let mut m = PathMtu::new(t0, SIZES);
            drive(&mut m, t0, 120, |_| capacity, |n| losses.get(n).copied().unwrap_or(false));
            prop_assert!(m.limit() <= capacity.max(SIZES.assumed));
            let mut clean = PathMtu::new(t0, SIZES);
            drive(&mut clean, t0, 120, |_| capacity, |_| false);
            let want = align_down(capacity.clamp(SIZES.assumed, SIZES.ceiling), SIZES.assumed);
            prop_assert_eq!(clean.limit(), want);
        }
    }
}
