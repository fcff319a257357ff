//! Budgets that keep a peer (or someone replaying its packets) from steering our sends: a token
//! bucket for pings and pongs, and a window of recently seen disco transaction IDs. Time comes in.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use burrow_disco::TxId;

/// The shape of a [`TokenBucket`]: how many at once, and how many more each second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens when full (the largest burst).
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
}

/// A token bucket over explicit time: full at the start, one token per send, refilled at a
/// fixed rate up to its burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: u32,
    /// Time up to which refill has been counted.
    counted: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate.burst,
            counted: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.rate.burst || self.rate.per_second == 0 {
            // Time spent full (or with no refill) earns nothing.
            self.counted = self.counted.max(now);
            return;
        }
        let per_token =
            (Duration::from_secs(1) / self.rate.per_second).max(Duration::from_nanos(1));
        let elapsed = now.saturating_duration_since(self.counted);
        let earned = elapsed.as_nanos() / per_token.as_nanos();
        if earned == 0 {
            return;
        }
        let room = u128::from(self.rate.burst - self.tokens);
        if earned >= room {
            self.tokens = self.rate.burst;
            self.counted = now;
        } else {
            self.tokens += earned as u32;
            self.counted += per_token * earned as u32;
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Takes `n` tokens if there are that many (all or none).
    pub fn try_take_n(&mut self, now: Instant, n: u32) -> bool {
        self.refill(now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens
    }
}

/// Disco transaction IDs seen recently (at most `capacity`, each for `ttl`): a Ping whose ID is
/// in the window is a replay (or a duplicate) and gets no answer.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    ttl: Duration,
    capacity: usize,
    seen: BTreeSet<TxId>,
    order: VecDeque<(Instant, TxId)>,
}

impl ReplayWindow {
    /// An empty window remembering up to `capacity` IDs for `ttl` each.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        ReplayWindow {
            ttl,
            capacity,
            seen: BTreeSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `tx_id` at `now`. False when it was already seen within the window.
    pub fn first_sighting(&mut self, now: Instant, tx_id: TxId) -> bool {
        while let Some(&(at, id)) = self.order.front() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
        if self.seen.contains(&tx_id) {
            return false;
        }
        if self.capacity == 0 {
            return true;
        }
        if self.order.len() >= self.capacity {
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
        self.seen.insert(tx_id);
        self.order.push_back((now, tx_id));
        true
    }

    /// IDs remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no ID is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                burst: 5,
                per_second: 2,
            },
            t0,
        );
        assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 5);
        // Half a second earns one token; a long idle spell earns no more than the burst.
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(700)));
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 5);
        // Over 10 s from empty: exactly 20 more.
        let sent = (1..=1000)
            .filter(|k| b.try_take(later + Duration::from_millis(10 * k)))
            .count();
        assert_eq!(sent, 20);
    }

    #[test]
    fn bucket_without_refill_or_with_time_going_back_never_panics() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(
            Rate {
                burst: 1,
                per_second: 0,
            },
            t0,
        );
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_secs(1000)));
        let mut fast = TokenBucket::new(
            Rate {
                burst: 1,
                per_second: u32::MAX,
            },
            t0,
        );
        assert!(fast.try_take(t0));
        assert!(!fast.try_take(t0 - Duration::from_secs(1)));
        assert!(fast.try_take(t0 + Duration::from_millis(1)));
    }

    #[test]
    fn replay_window_drops_repeats_until_they_expire_and_stays_bounded() {
        let t0 = Instant::now();
        let mut w = ReplayWindow::new(Duration::from_secs(60), 4);
        assert!(w.first_sighting(t0, [1; 12]));
        assert!(!w.first_sighting(t0, [1; 12]));
        assert!(!w.first_sighting(t0 + Duration::from_secs(59), [1; 12]));
        assert!(w.first_sighting(t0 + Duration::from_secs(60), [1; 12]));
        for k in 2..100u8 {
            assert!(w.first_sighting(t0 + Duration::from_secs(61), [k; 12]));
        }
        assert_eq!(w.len(), 4);
        assert!(!w.first_sighting(t0 + Duration::from_secs(61), [99; 12]));
    }
}
