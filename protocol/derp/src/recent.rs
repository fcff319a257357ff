//! A bounded map of recent entries, each forgotten a fixed time after it was (re)inserted:
//! the relay's memory of ClientInfo nonces and of verification answers. Time comes in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// At most `capacity` entries; an entry lives `ttl` after its last insert; when full, the
/// oldest entry goes first.
#[derive(Debug)]
pub(crate) struct Recent<K: Ord + Clone, V> {
    ttl: Duration,
    capacity: usize,
    items: BTreeMap<K, (V, Instant, u64)>,
    order: BTreeMap<(Instant, u64), K>,
    seq: u64,
}

impl<K: Ord + Clone, V> Recent<K, V> {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Recent {
            ttl,
            capacity,
            items: BTreeMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Forgets entries older than the time to live.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((&(at, _), _)) = self.order.first_key_value() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, k)) = self.order.pop_first() {
            self.items.remove(&k);
        }
    }

    /// The live value for `k`, if any.
    pub(crate) fn get(&mut self, now: Instant, k: &K) -> Option<&V> {
        self.expire(now);
        self.items.get(k).map(|(v, _, _)| v)
    }

    /// Inserts or refreshes `k`; evicts the oldest entry when full.
    pub(crate) fn insert(&mut self, now: Instant, k: K, v: V) {
        self.expire(now);
        if self.capacity == 0 {
            return;
        }
        if let Some((_, at, seq)) = self.items.remove(&k) {
            self.order.remove(&(at, seq));
        }
        while self.items.len() >= self.capacity {
            self.pop_oldest();
        }
        self.seq += 1;
        self.order.insert((now, self.seq), k.clone());
        self.items.insert(k, (v, now, self.seq));
    }

    /// Forgets `k`.
    pub(crate) fn remove(&mut self, k: &K) {
        if let Some((_, at, seq)) = self.items.remove(k) {
            self.order.remove(&(at, seq));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_oldest_goes_when_full() {
        let t0 = Instant::now();
        let mut r = Recent::new(Duration::from_secs(10), 3);
        for i in 0..3u8 {
            r.insert(t0 + Duration::from_secs(i as u64), i, ());
        }
        assert!(r.get(t0, &0).is_some());
        r.insert(t0 + Duration::from_secs(3), 3, ());
        assert_eq!(r.len(), 3);
        assert!(r.get(t0 + Duration::from_secs(3), &0).is_none(), "evicted");
        // Refreshing 1 keeps it past its first expiry.
        r.insert(t0 + Duration::from_secs(5), 1, ());
        assert!(r.get(t0 + Duration::from_secs(12), &1).is_some());
        assert!(r.get(t0 + Duration::from_secs(12), &2).is_none(), "expired");
        assert!(r.get(t0 + Duration::from_secs(15), &1).is_none());
        r.insert(t0, 9, ());
        r.remove(&9);
        assert_eq!(r.len(), 0);
    }
}
