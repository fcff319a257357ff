//! Token buckets: the relay's budgets (binds, challenges, forwarding), in integer arithmetic
//! with time passed in, so they are exact and deterministic.

use std::time::Instant;

/// A rate: `per_second` tokens refill each second, up to `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u64,
    /// Most tokens held at once (and held at the start).
    pub burst: u64,
}

impl Rate {
    /// `per_second` with a burst of `burst`.
    pub const fn new(per_second: u64, burst: u64) -> Self {
        Rate { per_second, burst }
    }
}

const NANOS: u128 = 1_000_000_000;

/// A token bucket; tokens are kept in billionths so refills at any rate are exact.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: Rate,
    nano_tokens: u128,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate, now: Instant) -> Self {
        Bucket {
            rate,
            nano_tokens: u128::from(rate.burst) * NANOS,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        let cap = u128::from(self.rate.burst) * NANOS;
        let added = elapsed.saturating_mul(u128::from(self.rate.per_second));
        self.nano_tokens = self.nano_tokens.saturating_add(added).min(cap);
    }

    /// Takes `n` tokens if there are that many.
    pub(crate) fn take(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        let want = u128::from(n) * NANOS;
        if self.nano_tokens >= want {
            self.nano_tokens -= want;
            true
        } else {
            false
        }
    }

    /// Whether `n` tokens are there now (without taking them).
    pub(crate) fn has(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        self.nano_tokens >= u128::from(n) * NANOS
    }

    /// Whether the bucket has refilled completely (it holds no memory of past use).
    pub(crate) fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.nano_tokens == u128::from(self.rate.burst) * NANOS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Rate::new(10, 3), t0);
        assert!(b.take(t0, 3));
        assert!(!b.take(t0, 1));
        // 10/s: one token per 100 ms.
        assert!(!b.take(t0 + Duration::from_millis(99), 1));
        assert!(b.take(t0 + Duration::from_millis(100), 1));
        // Never more than the burst, however long it waited.
        assert!(b.is_full(t0 + Duration::from_secs(3600)));
        assert!(b.take(t0 + Duration::from_secs(3600), 3));
        assert!(!b.take(t0 + Duration::from_secs(3600), 1));
        // Time going backwards adds nothing.
        assert!(!b.take(t0, 1));
    }
}
