//! Many peers behind one static key: routes incoming messages to the right tunnel (by the
//! initiator's static key for initiations, by receiver index for the rest) and runs the cookie
//! mechanism when the driver says the device is under load.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::crypto::mac;
use crate::keys::{PrivateKey, PublicKey};
use crate::messages::*;
use crate::noise::{self, HandshakeError};
use crate::session::{Opened, Opener, SealRun};
use crate::timers::COOKIE_REFRESH_TIME;
use crate::tunnel::{Decapsulated, Encapsulated, Event, Tunnel, TunnelConfig};
use crate::WgError;

/// A peer's handle in a [`Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub usize);

/// What `Device::decapsulate` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A peer's tunnel took the datagram.
    Peer(PeerId, Decapsulated),
    /// Under load and without a valid mac2: a cookie reply of this length is in the output
    /// buffer; send it back to the datagram's source.
    CookieReply(usize),
}

/// A WireGuard device: one static key, many peers.
pub struct Device {
    local: PrivateKey,
    local_public: PublicKey,
    mac1_to_us: [u8; 32],
    peers: Vec<Tunnel>,
    by_key: BTreeMap<PublicKey, PeerId>,
    by_index: BTreeMap<u32, PeerId>,
    indices: Vec<Vec<u32>>,
    rng: ChaCha20Rng,
    cookie_secret: [u8; 32],
    cookie_secret_born: Instant,
    under_load: bool,
    /// Handshake messages (mac1-valid) seen in the current one-second window.
    handshakes: (Instant, u32),
    /// Under load by the handshake rate until then.
    loaded_until: Option<Instant>,
    /// Under load, handshakes with a valid cookie per source IP: tokens and when counted.
    per_source: BTreeMap<std::net::IpAddr, (f64, Instant)>,
    epoch: (Instant, Duration),
}

/// Handshake messages per second past which the device is under load by itself: every
/// initiation then needs a cookie bound to its source before any Diffie-Hellman is spent on
/// it, so a flood from spoofed sources costs one MAC each (WireGuard's DoS defence).
pub const UNDER_LOAD_HANDSHAKES_PER_SECOND: u32 = 64;
/// Under load, handshakes one source (with a valid cookie) may have judged per second, and at
/// once (WireGuard's own figures): a cookie proves the source address, not good intent.
pub const HANDSHAKES_PER_SOURCE_PER_SECOND: u32 = 20;
/// See [`HANDSHAKES_PER_SOURCE_PER_SECOND`].
pub const HANDSHAKE_BURST_PER_SOURCE: u32 = 5;
/// Sources whose handshake budget is remembered at most.
const MAX_SOURCES: usize = 4096;

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("public_key", &self.local_public)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Packets waiting for a handshake, over every peer (at most 256 each): they come and go
    /// with handshakes, apart from [`footprint`](Self::footprint).
    pub fn queued(&self) -> usize {
        self.peers.iter().map(Tunnel::queued_len).sum()
    }

    /// Entries the device holds in its tables (peers, indices, sources under load, keypairs,
    /// messages waiting for the driver; packets waiting for a handshake are
    /// [`queued`](Self::queued)): a soak checks that it stays bounded.
    pub fn footprint(&self) -> usize {
        self.peers.iter().map(|t| 1 + t.footprint()).sum::<usize>()
            + self.by_key.len()
            + self.by_index.len()
            + self.indices.iter().map(Vec::len).sum::<usize>()
            + self.per_source.len()
    }

    /// A device with no peers. `unix_time` is the wall-clock time at `now`.
    pub fn new(
        private_key: PrivateKey,
        mut rng: ChaCha20Rng,
        now: Instant,
        unix_time: Duration,
    ) -> Self {
        let local_public = private_key.public_key();
        let mut cookie_secret = [0u8; 32];
        rng.fill_bytes(&mut cookie_secret);
        Device {
            mac1_to_us: noise::mac1_key(&local_public),
            local: private_key,
            local_public,
            peers: Vec::new(),
            by_key: BTreeMap::new(),
            by_index: BTreeMap::new(),
            indices: Vec::new(),
            rng,
            cookie_secret,
            cookie_secret_born: now,
            under_load: false,
            handshakes: (now, 0),
            loaded_until: None,
            per_source: BTreeMap::new(),
            epoch: (now, unix_time),
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.local_public
    }

    /// Adds a peer (or returns the existing one with this key).
    pub fn add_peer(
        &mut self,
        now: Instant,
        peer: PublicKey,
        preshared_key: Option<crate::PresharedKey>,
        persistent_keepalive: Option<Duration>,
    ) -> PeerId {
        if let Some(id) = self.by_key.get(&peer) {
            return *id;
        }
        let id = PeerId(self.peers.len());
        let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        let unix = self.epoch.1 + now.saturating_duration_since(self.epoch.0);
        self.peers.push(Tunnel::new(
            TunnelConfig {
                private_key: self.local.clone(),
                peer,
                preshared_key,
                persistent_keepalive,
            },
            rng,
            now,
            unix,
        ));
        self.indices.push(Vec::new());
        self.by_key.insert(peer, id);
        id
    }

    /// Forgets a peer: its key no longer completes a handshake with us and its sessions'
    /// receiver indices no longer decrypt. Its [`PeerId`] is not reused (a key added again gets
    /// a new one); the slot keeps an idle tunnel with no session and no timers.
    pub fn remove_peer(&mut self, now: Instant, peer: &PublicKey) -> Option<PeerId> {
        let id = self.by_key.remove(peer)?;
        for old in self.indices[id.0].drain(..) {
            if self.by_index.get(&old) == Some(&id) {
                self.by_index.remove(&old);
            }
        }
        let unix = self.epoch.1 + now.saturating_duration_since(self.epoch.0);
        let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        self.peers[id.0] = Tunnel::new(
            TunnelConfig {
                private_key: self.local.clone(),
                peer: *peer,
                preshared_key: None,
                persistent_keepalive: None,
            },
            rng,
            now,
            unix,
        );
        Some(id)
    }

    /// The peer with this public key.
    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    /// A peer's tunnel.
    pub fn tunnel(&self, id: PeerId) -> &Tunnel {
        &self.peers[id.0]
    }

    /// Starts a new handshake with a peer now (a forced rekey).
    pub fn force_handshake(&mut self, now: Instant, id: PeerId) {
        self.peers[id.0].force_handshake(now);
        self.sync_indices(id);
    }

    /// The driver's load signal: while set, handshakes need a valid mac2 (a cookie). The device
    /// also counts handshakes itself and is under load past
    /// [`UNDER_LOAD_HANDSHAKES_PER_SECOND`], whatever this says.
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    /// Whether handshakes need cookies now (set by the driver, or by the handshake rate).
    pub fn is_under_load(&self, now: Instant) -> bool {
        self.under_load || self.loaded_until.is_some_and(|t| now < t)
    }

    /// Counts a handshake; past the rate, the device stays under load for a second after the
    /// last one over it, so a steady flood stays throttled and a quiet second ends it.
    /// Takes one handshake from `src`'s budget (under load only); false when it is spent, or
    /// when the table is full of sources still spending theirs.
    fn source_allows(&mut self, now: Instant, src: std::net::IpAddr) -> bool {
        let burst = f64::from(HANDSHAKE_BURST_PER_SOURCE);
        let rate = f64::from(HANDSHAKES_PER_SOURCE_PER_SECOND);
        let refill = |tokens: f64, at: Instant| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst)
        };
        if !self.per_source.contains_key(&src) && self.per_source.len() >= MAX_SOURCES {
            // Sources whose budget is full again are indistinguishable from new ones.
            self.per_source.retain(|_, (t, at)| refill(*t, *at) < burst);
            if self.per_source.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.per_source.entry(src).or_insert((burst, now));
        *tokens = refill(*tokens, *at);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    fn count_handshake(&mut self, now: Instant) {
        if now.saturating_duration_since(self.handshakes.0) >= Duration::from_secs(1) {
            self.handshakes = (now, 0);
        }
        self.handshakes.1 = self.handshakes.1.saturating_add(1);
        if self.handshakes.1 > UNDER_LOAD_HANDSHAKES_PER_SECOND {
            self.loaded_until = Some(now + Duration::from_secs(1));
        }
    }

    fn sync_indices(&mut self, id: PeerId) {
        // The common case (data on an established session) changes nothing: compare first, so
        // the data path allocates nothing.
        if self.peers[id.0]
            .local_indices()
            .eq(self.indices[id.0].iter().copied())
        {
            return;
        }
        for old in self.indices[id.0].drain(..) {
            if self.by_index.get(&old) == Some(&id) {
                self.by_index.remove(&old);
            }
        }
        let now: Vec<u32> = self.peers[id.0].local_indices().collect();
        for i in &now {
            self.by_index.insert(*i, id);
        }
        self.indices[id.0] = now;
    }

    fn cookie_for(&mut self, now: Instant, src: SocketAddr) -> [u8; 16] {
        if now.saturating_duration_since(self.cookie_secret_born) >= COOKIE_REFRESH_TIME {
            self.rng.fill_bytes(&mut self.cookie_secret);
            self.cookie_secret_born = now;
        }
        let mut addr = [0u8; 18];
        let n = match src.ip() {
            IpAddr::V4(ip) => {
                addr[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                addr[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        addr[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
        mac(&self.cookie_secret, &[&addr[..n + 2]])
    }

    /// Handles one datagram from `src`.
    pub fn decapsulate(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Received, WgError> {
        let msg = Message::parse(datagram)?;
        let mac1_at = match msg {
            Message::Initiation(_) => Some(INITIATION_MAC1),
            Message::Response(_) => Some(RESPONSE_MAC1),
            _ => None,
        };
        if let Some(at) = mac1_at {
            if !noise::mac1_valid(datagram, at, &self.mac1_to_us) {
                return Err(HandshakeError::BadMac1.into());
            }
            self.count_handshake(now);
            if self.is_under_load(now) {
                let cookie = self.cookie_for(now, src);
                if !noise::mac2_valid(datagram, at, &cookie) {
                    let sender = le32(&datagram[4..8]);
                    let mac1: [u8; 16] = datagram[at..at + 16].try_into().expect("16 bytes");
                    let mut nonce = [0u8; 24];
                    self.rng.fill_bytes(&mut nonce);
                    let reply = noise::create_cookie_reply(
                        &self.local_public,
                        sender,
                        &mac1,
                        &cookie,
                        nonce,
                    );
                    if out.len() < COOKIE_REPLY_LEN {
                        return Err(WgError::BufferTooSmall {
                            needed: COOKIE_REPLY_LEN,
                        });
                    }
                    out[..COOKIE_REPLY_LEN].copy_from_slice(&reply);
                    return Ok(Received::CookieReply(COOKIE_REPLY_LEN));
                }
                if !self.source_allows(now, src.ip()) {
                    return Err(HandshakeError::RateLimited.into());
                }
            }
        }
        let id = match msg {
            Message::Initiation(m) => {
                let by_key = &self.by_key;
                let peers = &self.peers;
                let mut found = None;
                let consumed = noise::consume_initiation(&self.local, m, |p| {
                    let id = *by_key.get(p)?;
                    found = Some(id);
                    peers[id.0].static_static()
                })?;
                let id = found.ok_or(HandshakeError::UnknownPeer)?;
                self.peers[id.0].handle_initiation(now, consumed)?;
                self.sync_indices(id);
                return Ok(Received::Peer(id, Decapsulated::Handshake));
            }
            other => {
                let index = other.receiver_index().expect("not an initiation");
                *self
                    .by_index
                    .get(&index)
                    .ok_or(WgError::UnknownIndex(index))?
            }
        };
        let r = self.peers[id.0].decapsulate(now, datagram, out);
        self.sync_indices(id);
        Ok(Received::Peer(id, r?))
    }

    /// Encrypts a packet for a peer.
    pub fn encapsulate(
        &mut self,
        now: Instant,
        peer: PeerId,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<Encapsulated, WgError> {
        let r = self.peers[peer.0].encapsulate(now, plaintext, out);
        self.sync_indices(peer);
        r
    }

    /// Matches a transport message to its peer and keypair without changing anything, for
    /// opening outside the device (several threads may open a batch's messages at once);
    /// then [`accept_opened`](Self::accept_opened) takes each, in arrival order. `None` for
    /// anything else (a handshake message, an unknown index, an expired keypair), which goes
    /// through [`decapsulate`](Self::decapsulate).
    pub fn opener(&self, now: Instant, datagram: &[u8]) -> Option<(PeerId, Opener)> {
        let Ok(Message::Transport {
            receiver, counter, ..
        }) = Message::parse(datagram)
        else {
            return None;
        };
        let id = *self.by_index.get(&receiver)?;
        let opener = self.peers[id.0].opener(now, receiver, counter).ok()?;
        Some((id, opener))
    }

    /// Takes a message [`Opener::open`] authenticated (an opener from
    /// [`opener`](Self::opener) for `peer`), its plaintext at the start of `plaintext`: replay
    /// window, keypair confirmation, timers, as [`decapsulate`](Self::decapsulate) would have.
    pub fn accept_opened(
        &mut self,
        now: Instant,
        peer: PeerId,
        opened: Opened,
        plaintext: &[u8],
    ) -> Result<Received, WgError> {
        let tunnel = self.peers.get_mut(peer.0).ok_or(WgError::NoSession)?;
        let r = tunnel.accept_opened(now, opened, plaintext);
        self.sync_indices(peer);
        Ok(Received::Peer(peer, r?))
    }

    /// Takes counters on `peer`'s current keypair for `count` data packets, to be sealed with
    /// the returned [`SealRun`] outside the device (several threads may seal one run); `None`
    /// without a usable keypair, when each packet goes through [`encapsulate`](Self::encapsulate).
    pub fn reserve(&mut self, now: Instant, peer: PeerId, count: usize) -> Option<SealRun> {
        let run = self.peers[peer.0].reserve(now, count);
        self.sync_indices(peer);
        run
    }

    /// Runs every peer's due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            if self.peers[i].poll_timeout().is_some_and(|t| t <= now) {
                self.peers[i].handle_timeout(now);
                self.sync_indices(PeerId(i));
            }
        }
    }

    /// The earliest timer of any peer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.iter().filter_map(|p| p.poll_timeout()).min()
    }

    /// The next datagram for some peer.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.peers
            .iter_mut()
            .enumerate()
            .find_map(|(i, p)| p.poll_transmit().map(|t| (PeerId(i), t)))
    }

    /// The next event of some peer.
    pub fn poll_event(&mut self) -> Option<(PeerId, Event)> {
        self.peers
            .iter_mut()
            .enumerate()
            .find_map(|(i, p)| p.poll_event().map(|e| (PeerId(i), e)))
    }
}

#[cfg(test)]
mod source_budget_tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    /// Under load a cookie proves the source address, not good intent: each source gets
    /// WireGuard's 20 handshakes a second (5 at once), and the table of sources stays bounded.
    #[test]
    fn each_source_gets_its_own_handshake_budget_under_load() {
        let now = Instant::now();
        let mut d = Device::new(
            PrivateKey::from_bytes([1; 32]),
            ChaCha20Rng::seed_from_u64(1),
            now,
            Duration::from_secs(1_700_000_000),
        );
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..50).filter(|_| d.source_allows(now, a)).count() as u32;
        assert_eq!(allowed, HANDSHAKE_BURST_PER_SOURCE);
        assert!(d.source_allows(now, b), "another source is unaffected");
        let later = now + Duration::from_millis(500);
        let refilled = (0..50).filter(|_| d.source_allows(later, a)).count() as u32;
        assert_eq!(
            refilled,
            HANDSHAKE_BURST_PER_SOURCE.min(HANDSHAKES_PER_SOURCE_PER_SECOND / 2)
        );
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = d.source_allows(later, ip);
        }
        assert!(d.per_source.len() <= MAX_SOURCES);
    }
}
