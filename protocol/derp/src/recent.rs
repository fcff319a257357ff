//! Bounded memories, time passed in: [`Recent`], entries forgotten a fixed time after they
//! were (re)inserted (the relay's verification answers); [`NonceMemory`], the ClientInfo
//! nonces each admitted key has used (replay refusal).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::NONCE_LEN;

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

/// The ClientInfo nonces of admitted keys, per key, so that a captured ClientInfo cannot be
/// replayed. Only admitted keys are recorded (never a handshake still being verified), and a
/// key's nonces are kept for as long as it is connected: handshakes of other keys can never
/// push them out. After its last connection ends, a key's nonces are kept for `window`;
/// departed keys hold at most `departed_budget` nonces in all, the longest gone forgotten
/// first. A key keeps its [`NONCES_PER_KEY`] latest nonces (only its own reconnections push
/// its older ones out).
#[derive(Debug)]
pub(crate) struct NonceMemory {
    window: Duration,
    departed_budget: usize,
    keys: BTreeMap<[u8; 32], KeyNonces>,
    /// Keys with no live connection, by when their last one ended.
    departed: BTreeMap<(Instant, u64), [u8; 32]>,
    /// Nonces held by departed keys.
    departed_nonces: usize,
    seq: u64,
}

/// Nonces remembered per key: its latest reconnections.
pub(crate) const NONCES_PER_KEY: usize = 32;

#[derive(Debug)]
struct KeyNonces {
    nonces: VecDeque<[u8; NONCE_LEN]>,
    /// Admitted connections of this key now (briefly two while one replaces the other).
    live: usize,
    /// Where it stands in `departed`, once `live` is zero.
    departed: Option<(Instant, u64)>,
}

impl NonceMemory {
    pub(crate) fn new(window: Duration, departed_budget: usize) -> Self {
        NonceMemory {
            window,
            departed_budget,
            keys: BTreeMap::new(),
            departed: BTreeMap::new(),
            departed_nonces: 0,
            seq: 0,
        }
    }

    /// Forgets departed keys gone longer than the window.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((&(at, _), _)) = self.departed.first_key_value() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            self.forget_oldest_departed();
        }
    }

    fn forget_oldest_departed(&mut self) {
        if let Some((_, key)) = self.departed.pop_first() {
            if let Some(k) = self.keys.remove(&key) {
                self.departed_nonces -= k.nonces.len();
            }
        }
    }

    /// Whether `key` has used `nonce` (while connected, or within the window since).
    pub(crate) fn contains(
        &mut self,
        now: Instant,
        key: &[u8; 32],
        nonce: &[u8; NONCE_LEN],
    ) -> bool {
        self.expire(now);
        self.keys
            .get(key)
            .is_some_and(|k| k.nonces.iter().any(|n| n == nonce))
    }

    /// `key` was admitted with `nonce`: remembered until the window after it leaves.
    pub(crate) fn connected(&mut self, now: Instant, key: [u8; 32], nonce: [u8; NONCE_LEN]) {
        self.expire(now);
        let k = self.keys.entry(key).or_insert_with(|| KeyNonces {
            nonces: VecDeque::new(),
            live: 0,
            departed: None,
        });
        if let Some(at) = k.departed.take() {
            self.departed.remove(&at);
            self.departed_nonces -= k.nonces.len();
        }
        if k.nonces.len() >= NONCES_PER_KEY {
            k.nonces.pop_front();
        }
        k.nonces.push_back(nonce);
        k.live += 1;
    }

    /// A connection of `key` ended; when it was the last, the window starts.
    pub(crate) fn disconnected(&mut self, now: Instant, key: &[u8; 32]) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        k.live = k.live.saturating_sub(1);
        if k.live > 0 || k.departed.is_some() {
            return;
        }
        self.seq += 1;
        let at = (now, self.seq);
        k.departed = Some(at);
        self.departed_nonces += k.nonces.len();
        self.departed.insert(at, *key);
        while self.departed_nonces > self.departed_budget {
            self.forget_oldest_departed();
        }
        self.expire(now);
    }

    /// Keys remembered (connected and departed).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.keys.len()
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

    /// A connected key's nonces survive any number of other keys coming and going; a departed
    /// key's last the window, within the departed budget (the longest gone forgotten first).
    #[test]
    fn other_keys_cannot_push_out_a_connected_keys_nonces() {
        let t0 = Instant::now();
        let mut m = NonceMemory::new(Duration::from_secs(600), 8);
        let victim = [1u8; 32];
        m.connected(t0, victim, [1; NONCE_LEN]);
        m.disconnected(t0, &victim);
        m.connected(t0, victim, [2; NONCE_LEN]);
        for i in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[31] = 9;
            m.connected(t0, k, [3; NONCE_LEN]);
            m.disconnected(t0, &k);
        }
        assert!(m.contains(t0, &victim, &[1; NONCE_LEN]));
        assert!(m.contains(t0, &victim, &[2; NONCE_LEN]));
        assert!(m.keys() <= 1 + 8, "departed keys stay within the budget");
        // Departed: kept for the window, unless pushed out by later departures.
        m.disconnected(t0, &victim);
        let late = t0 + Duration::from_secs(599);
        assert!(m.contains(late, &victim, &[1; NONCE_LEN]));
        assert!(!m.contains(t0 + Duration::from_secs(600), &victim, &[1; NONCE_LEN]));
        // A key keeps its latest NONCES_PER_KEY nonces.
        for i in 0..=NONCES_PER_KEY as u8 {
            m.connected(late, victim, [i; NONCE_LEN]);
        }
        assert!(!m.contains(late, &victim, &[0; NONCE_LEN]));
        assert!(m.contains(late, &victim, &[1; NONCE_LEN]));
    }
}
