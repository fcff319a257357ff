//! A gateway's epoch: the seconds since its mapping state began, carried in every NAT-PMP
//! and PCP response. Compared with our own clock it tells when the gateway lost its
//! mappings (a reboot), so that they are made again at once rather than at the next renewal.

use std::time::Instant;

/// The last epoch a gateway gave, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochTracker {
    last: Option<(u32, Instant)>,
}

impl EpochTracker {
    /// Nothing seen yet.
    pub fn new() -> Self {
        EpochTracker::default()
    }

    /// Records `epoch`, received at `now`. True when it shows the gateway lost its state
    /// since the last one (RFC 6887 §8.5, which also covers RFC 6886 §3.6): the epoch went
    /// back, or it and our clock advanced by amounts that disagree beyond 2 s and 1/16.
    pub fn observe(&mut self, now: Instant, epoch: u32) -> bool {
        let lost = match self.last {
            None => false,
            Some((prev, at)) if now >= at => {
                if u64::from(epoch) + 1 < u64::from(prev) {
                    true
                } else {
                    let client = now.duration_since(at).as_secs_f64();
                    let server = f64::from(epoch.saturating_sub(prev));
                    client + 2.0 < server - server / 16.0 || server + 2.0 < client - client / 16.0
                }
            }
            // A response older than the last one: judge nothing by it.
            Some(_) => return false,
        };
        self.last = Some((epoch, now));
        lost
    }

    /// Forgets the gateway (a new gateway, or a new probe).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steady_clocks_are_not_a_reboot() {
        let t0 = Instant::now();
        let mut e = EpochTracker::new();
        assert!(!e.observe(t0, 1000));
        assert!(!e.observe(t0 + Duration::from_secs(60), 1060));
        // Within 2 s and 1/16 either way.
        assert!(!e.observe(t0 + Duration::from_secs(120), 1118));
        assert!(!e.observe(t0 + Duration::from_secs(3600), 4600));
    }

    #[test]
    fn an_epoch_that_goes_back_or_lags_is_a_reboot() {
        let t0 = Instant::now();
        let mut e = EpochTracker::new();
        e.observe(t0, 1000);
        assert!(e.observe(t0 + Duration::from_secs(30), 5));
        // Restarted 10 s ago, but already past the old value: lags our clock.
        let mut e = EpochTracker::new();
        e.observe(t0, 20);
        assert!(e.observe(t0 + Duration::from_secs(600), 30));
        // Running far ahead of our clock is as suspect.
        let mut e = EpochTracker::new();
        e.observe(t0, 20);
        assert!(e.observe(t0 + Duration::from_secs(10), 500));
    }
}
