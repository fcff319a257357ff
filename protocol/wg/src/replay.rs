//! The anti-replay sliding window (RFC 6479 style, as wireguard-go and Linux): a ring of
//! 128 × 64-bit blocks, accepting any counter within the last 8,128.

/// Counters at or beyond this are never accepted (2^64 − 2^13 − 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

const BLOCKS: usize = 128;
/// How far behind the highest counter seen a packet may still arrive.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * 64;

/// Which counters have been seen.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    last: u64,
    blocks: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            last: 0,
            blocks: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// Accepts `counter` once: false if it was seen, is too old, or is past the limit.
    /// Call only after the packet authenticated.
    pub fn check_and_set(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let block = counter >> 6;
        if counter > self.last {
            let current = self.last >> 6;
            let advance = (block - current).min(BLOCKS as u64);
            for i in 1..=advance {
                self.blocks[((current + i) % BLOCKS as u64) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW {
            return false;
        }
        let slot = &mut self.blocks[(block % BLOCKS as u64) as usize];
        let bit = 1u64 << (counter & 63);
        if *slot & bit != 0 {
            return false;
        }
        *slot |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_semantics() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_set(0));
        assert!(!w.check_and_set(0));
        assert!(w.check_and_set(5));
        assert!(w.check_and_set(3));
        assert!(!w.check_and_set(3));
        assert!(w.check_and_set(10_000));
        assert!(!w.check_and_set(10_000 - WINDOW - 1), "too old");
        assert!(w.check_and_set(10_000 - WINDOW), "oldest still inside");
        assert!(w.check_and_set(10_000 - 1));
        assert!(!w.check_and_set(REJECT_AFTER_MESSAGES));
    }
}
