//! One peer: the handshake state, the previous / current / next keypairs, and the timers.
//! Sans-IO: `now` comes in, datagrams to send go out through `poll_transmit`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha20Rng;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::*;
use crate::noise::{self, ConsumedInitiation, HandshakeError, InitiatorState};
use crate::replay::REJECT_AFTER_MESSAGES;
use crate::session::{Opened, Opener, SealRun, Session};
use crate::timers::*;
use crate::WgError;

/// Displaced keypairs a tunnel still receives on (see `Tunnel::retired`).
const MAX_RETIRED: usize = 2;

/// Packets queued while no session exists; older ones are dropped beyond this.
const MAX_QUEUED: usize = 256;

/// What `encapsulate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulated {
    /// A transport message of this length is in the output buffer; send it to the peer.
    Sent(usize),
    /// No session yet: the packet is queued and a handshake is under way (see `poll_transmit`).
    Queued,
}

/// What `decapsulate` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapsulated {
    /// A plaintext packet of this length is in the output buffer (padding removed for IP packets).
    Data(usize),
    /// An authenticated keep-alive.
    Keepalive,
    /// A handshake message was consumed; answers, if any, wait in `poll_transmit`.
    Handshake,
    /// A cookie reply was stored for the next handshake message. It proves nothing about
    /// where the peer is (anyone who saw our mac1 can forge one), so drivers must not roam on it.
    CookieReply,
}

/// Something the driver may want to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new session is usable; `initiator` says which side we were.
    HandshakeCompleted {
        /// Whether we initiated.
        initiator: bool,
    },
    /// The handshake was retried for REKEY_ATTEMPT_TIME without an answer; queued packets dropped.
    HandshakeGaveUp,
    /// No session for KEY_ERASURE_TIME: every key was erased.
    KeysErased,
}

struct Pending {
    state: InitiatorState,
    mac1: [u8; 16],
}

/// Tunnel configuration.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Our static private key.
    pub private_key: PrivateKey,
    /// The peer's static public key.
    pub peer: PublicKey,
    /// Optional pre-shared key.
    pub preshared_key: Option<PresharedKey>,
    /// Send a keep-alive after this long without sending (wg's PersistentKeepalive).
    pub persistent_keepalive: Option<Duration>,
}

/// A WireGuard tunnel to one peer.
pub struct Tunnel {
    local: PrivateKey,
    peer: PublicKey,
    psk: PresharedKey,
    static_static: Option<[u8; 32]>,
    mac1_to_peer: [u8; 32],
    mac1_to_us: [u8; 32],
    persistent_keepalive: Option<Duration>,
    rng: ChaCha20Rng,
    epoch: (Instant, Duration),
    previous: Option<Session>,
    current: Option<Session>,
    next: Option<Session>,
    /// Receive-only: keypairs displaced by the last rotations, newest last (at most
    /// [`MAX_RETIRED`]). After a simultaneous handshake each side sends on its own initiator
    /// keypair, which the other holds as `previous`; when both rekey at once, what the peer
    /// still sends on for a round trip would otherwise be dropped with it.
    retired: VecDeque<Session>,
    pending: Option<Pending>,
    cookie: Option<([u8; 16], Instant)>,
    last_initiation: Option<([u8; 12], Instant)>,
    last_handshake_sent: Option<Instant>,
    last_timestamp: [u8; 12],
    last_response_mac1: Option<(u32, [u8; 16])>,
    attempts_since: Option<Instant>,
    retransmit_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    dead_peer_at: Option<Instant>,
    persistent_at: Option<Instant>,
    last_session_at: Option<Instant>,
    queued: VecDeque<Vec<u8>>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl core::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tunnel")
            .field("peer", &self.peer)
            .field("has_session", &self.current.is_some())
            .field("handshake_pending", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Entries held: keypairs, packets queued for a handshake, transmits and events waiting
    /// to be polled (see [`Device::footprint`](crate::Device::footprint)).
    pub(crate) fn footprint(&self) -> usize {
        let sessions = [&self.previous, &self.current, &self.next]
            .iter()
            .filter(|s| s.is_some())
            .count();
        sessions + self.retired.len() + self.transmits.len() + self.events.len()
    }

    /// Packets waiting for a handshake (at most 256).
    pub(crate) fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// A tunnel. `unix_time` is the wall-clock time at `now` (for TAI64N timestamps; the
    /// tunnel never reads a clock). A persistent keep-alive starts a handshake at once.
    pub fn new(
        mut config: TunnelConfig,
        rng: ChaCha20Rng,
        now: Instant,
        unix_time: Duration,
    ) -> Self {
        // A zero interval means off, as in wg(8).
        config.persistent_keepalive = config.persistent_keepalive.filter(|k| !k.is_zero());
        let local_public = config.private_key.public_key();
        let static_static = config.private_key.diffie_hellman(config.peer.as_bytes());
        Tunnel {
            mac1_to_peer: noise::mac1_key(&config.peer),
            mac1_to_us: noise::mac1_key(&local_public),
            static_static,
            local: config.private_key,
            peer: config.peer,
            psk: config.preshared_key.unwrap_or_default(),
            persistent_keepalive: config.persistent_keepalive,
            rng,
            epoch: (now, unix_time),
            previous: None,
            current: None,
            next: None,
            retired: VecDeque::new(),
            pending: None,
            cookie: None,
            last_initiation: None,
            last_handshake_sent: None,
            last_timestamp: [0; 12],
            last_response_mac1: None,
            attempts_since: None,
            retransmit_at: None,
            keepalive_at: None,
            dead_peer_at: None,
            persistent_at: config.persistent_keepalive.map(|_| now),
            last_session_at: None,
            queued: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The peer's public key.
    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// Whether a session is ready to carry data.
    pub fn has_session(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| usable(s, now))
    }

    /// Local indices this tunnel answers to (handshake in progress and live keypairs).
    pub fn local_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending
            .as_ref()
            .map(|p| p.state.local_index)
            .into_iter()
            .chain(
                [&self.previous, &self.current, &self.next]
                    .into_iter()
                    .flatten()
                    .chain(&self.retired)
                    .map(|s| s.local_index),
            )
    }

    fn unix_time(&self, now: Instant) -> Duration {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0)
    }

    fn fresh_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if !self.local_indices().any(|x| x == i) {
                return i;
            }
        }
    }

    fn ephemeral(&mut self) -> PrivateKey {
        PrivateKey::generate(&mut self.rng)
    }

    /// Keeps a displaced keypair for receiving a little longer (the oldest goes past
    /// [`MAX_RETIRED`]; each is refused after REJECT_AFTER_TIME anyway).
    fn retire(&mut self, session: Option<Session>) {
        if let Some(s) = session {
            self.retired.push_back(s);
            while self.retired.len() > MAX_RETIRED {
                self.retired.pop_front();
            }
        }
    }

    /// Starts (or restarts) a handshake now, whatever the rate limit.
    pub fn force_handshake(&mut self, now: Instant) {
        let Some(ss) = self.static_static else { return };
        let index = self.fresh_index();
        let e = self.ephemeral();
        let ts = next_timestamp(noise::tai64n(self.unix_time(now)), &self.last_timestamp);
        self.last_timestamp = ts;
        let Some((mut msg, state)) =
            noise::create_initiation(&self.local, &self.peer, e, index, ts, &ss)
        else {
            return;
        };
        let cookie = self
            .cookie
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_REFRESH_TIME)
            .map(|(c, _)| c);
        let mac1 = noise::write_macs(
            &mut msg,
            INITIATION_MAC1,
            &self.mac1_to_peer,
            cookie.as_ref(),
        );
        self.pending = Some(Pending { state, mac1 });
        self.transmits.push_back(msg.to_vec());
        self.last_handshake_sent = Some(now);
        self.attempts_since.get_or_insert(now);
        let jitter = Duration::from_millis(self.rng.next_u64() % (REKEY_TIMEOUT_JITTER_MAX_MS + 1));
        self.retransmit_at = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// Starts a handshake unless one was sent less than REKEY_TIMEOUT ago.
    fn maybe_handshake(&mut self, now: Instant) {
        let recent = self.pending.is_some()
            && self
                .last_handshake_sent
                .is_some_and(|t| now.saturating_duration_since(t) < REKEY_TIMEOUT);
        if !recent {
            self.force_handshake(now);
        }
    }

    /// Encrypts one packet for the peer into `out` (at least `transport_len(plaintext.len())`).
    pub fn encapsulate(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<Encapsulated, WgError> {
        let Some(session) = self.current.as_mut().filter(|s| usable(s, now)) else {
            if self.queued.len() >= MAX_QUEUED {
                self.queued.pop_front();
            }
            self.queued.push_back(plaintext.to_vec());
            self.maybe_handshake(now);
            return Ok(Encapsulated::Queued);
        };
        let len = session.seal(plaintext, out)?;
        self.sent_on_current(now, !plaintext.is_empty());
        Ok(Encapsulated::Sent(len))
    }

    /// Takes counters on the current keypair for `count` data packets, sealed later with the
    /// returned [`SealRun`] (outside this tunnel, on any thread). The timers count them as
    /// sent now. `None` when there is no usable keypair (or it is about to run out of
    /// counters): then [`encapsulate`](Self::encapsulate) each packet, which queues them and
    /// starts a handshake.
    pub fn reserve(&mut self, now: Instant, count: usize) -> Option<SealRun> {
        if count == 0 {
            return None;
        }
        let session = self.current.as_mut().filter(|s| usable(s, now))?;
        let until = session.created + (REJECT_AFTER_TIME - SEND_MARGIN);
        let run = session.reserve(count, until)?;
        self.sent_on_current(now, true);
        Some(run)
    }

    /// After sending on the current keypair: the timers, and a rekey when the initiator's
    /// keypair is old or has sent many messages.
    fn sent_on_current(&mut self, now: Instant, data: bool) {
        let rekey = self.current.as_ref().is_some_and(|s| {
            s.initiator
                && (now.saturating_duration_since(s.created) >= REKEY_AFTER_TIME
                    || s.send_counter >= REKEY_AFTER_MESSAGES)
        });
        self.on_sent(now, data);
        if rekey {
            self.maybe_handshake(now);
        }
    }

    fn on_sent(&mut self, now: Instant, data: bool) {
        self.keepalive_at = None;
        if data && self.dead_peer_at.is_none() {
            self.dead_peer_at = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
        }
        if let Some(k) = self.persistent_keepalive {
            self.persistent_at = Some(now + k);
        }
    }

    fn on_authenticated_receive(&mut self, now: Instant, data: bool) {
        self.dead_peer_at = None;
        if data && self.keepalive_at.is_none() {
            self.keepalive_at = Some(now + KEEPALIVE_TIMEOUT);
        }
        if let Some(k) = self.persistent_keepalive {
            self.persistent_at = Some(now + k);
        }
    }

    fn send_keepalive(&mut self, now: Instant) {
        let mut buf = [0u8; KEEPALIVE_LEN];
        if let Some(s) = self.current.as_mut().filter(|s| usable(s, now)) {
            if s.seal(&[], &mut buf).is_ok() {
                self.transmits.push_back(buf.to_vec());
                self.on_sent(now, false);
            }
        } else {
            self.maybe_handshake(now);
        }
    }

    /// Decrypts or consumes one datagram from the peer; plaintext goes into `out`.
    pub fn decapsulate(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Decapsulated, WgError> {
        match Message::parse(datagram)? {
            Message::Initiation(m) => {
                if !noise::mac1_valid(m, INITIATION_MAC1, &self.mac1_to_us) {
                    return Err(HandshakeError::BadMac1.into());
                }
                let (peer, ss) = (self.peer, self.static_static);
                let consumed = noise::consume_initiation(&self.local, m, |p| {
                    (*p == peer).then_some(ss).flatten()
                })?;
                self.handle_initiation(now, consumed)?;
                Ok(Decapsulated::Handshake)
            }
            Message::Response(m) => {
                if !noise::mac1_valid(m, RESPONSE_MAC1, &self.mac1_to_us) {
                    return Err(HandshakeError::BadMac1.into());
                }
                self.handle_response(now, m)?;
                Ok(Decapsulated::Handshake)
            }
            Message::CookieReply(m) => {
                // A cookie answers our last initiation, or (a peer under load) our last response.
                let receiver = le32(&m[4..8]);
                let mac1 = match (&self.pending, self.last_response_mac1) {
                    (Some(p), _) if p.state.local_index == receiver => p.mac1,
                    (_, Some((index, mac1))) if index == receiver => mac1,
                    _ => return Err(HandshakeError::Unexpected.into()),
                };
                let cookie = noise::consume_cookie_reply(&self.peer, m, &mac1)
                    .ok_or(HandshakeError::DecryptFailed)?;
                self.cookie = Some((cookie, now));
                Ok(Decapsulated::CookieReply)
            }
            Message::Transport {
                receiver, counter, ..
            } => self.handle_transport(now, receiver, counter, datagram, out),
        }
    }

    /// Answers an initiation already decrypted (by this tunnel or by a `Device`).
    pub fn handle_initiation(
        &mut self,
        now: Instant,
        init: ConsumedInitiation,
    ) -> Result<(), WgError> {
        if let Some((ts, at)) = self.last_initiation {
            if init.timestamp <= ts {
                return Err(HandshakeError::Replay.into());
            }
            if now.saturating_duration_since(at) < INITIATION_MIN_INTERVAL {
                return Err(HandshakeError::Flood.into());
            }
        }
        let index = self.fresh_index();
        let e = self.ephemeral();
        let (mut msg, keys) = noise::create_response(&init, &e, index, &self.psk)
            .ok_or(HandshakeError::DecryptFailed)?;
        let cookie = self
            .cookie
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_REFRESH_TIME)
            .map(|(c, _)| c);
        let mac1 = noise::write_macs(&mut msg, RESPONSE_MAC1, &self.mac1_to_peer, cookie.as_ref());
        self.last_response_mac1 = Some((index, mac1));
        self.last_initiation = Some((init.timestamp, now));
        // An authenticated packet.
        self.dead_peer_at = None;
        // The responder may not send on the new keypair until the initiator used it. The old
        // previous keypair stays receive-only a little longer: in a simultaneous handshake it
        // may be what the peer still sends on.
        self.next = Some(Session::new(&keys, now, false));
        let previous = self.previous.take();
        self.retire(previous);
        self.last_session_at = Some(now);
        self.transmits.push_back(msg.to_vec());
        Ok(())
    }

    fn handle_response(&mut self, now: Instant, m: &[u8; RESPONSE_LEN]) -> Result<(), WgError> {
        let pending = self.pending.as_ref().ok_or(HandshakeError::Unexpected)?;
        let keys = noise::consume_response(&pending.state, &self.local, m, &self.psk)?;
        self.pending = None;
        self.retransmit_at = None;
        self.attempts_since = None;
        self.dead_peer_at = None;
        // As wireguard-go: an unconfirmed responder keypair (from a simultaneous handshake) is
        // kept as previous, since the peer may already send on it; otherwise the old current is.
        match self.next.take() {
            Some(next) => {
                let current = self.current.take();
                self.retire(current);
                self.previous = Some(next);
            }
            None => {
                let previous = self.previous.take();
                self.retire(previous);
                self.previous = self.current.take();
            }
        }
        self.current = Some(Session::new(&keys, now, true));
        self.last_session_at = Some(now);
        self.events
            .push_back(Event::HandshakeCompleted { initiator: true });
        // Key confirmation: data if any is queued, else a keep-alive.
        if self.queued.is_empty() {
            self.send_keepalive(now);
        } else {
            self.flush_queue(now);
        }
        Ok(())
    }

    fn flush_queue(&mut self, now: Instant) {
        while let Some(p) = self.queued.pop_front() {
            let mut buf = vec![0u8; transport_len(p.len())];
            match self
                .current
                .as_mut()
                .filter(|s| usable(s, now))
                .map(|s| s.seal(&p, &mut buf))
            {
                Some(Ok(n)) => {
                    buf.truncate(n);
                    self.transmits.push_back(buf);
                    self.on_sent(now, !p.is_empty());
                }
                _ => {
                    self.queued.push_front(p);
                    break;
                }
            }
        }
    }

    fn handle_transport(
        &mut self,
        now: Instant,
        receiver: u32,
        counter: u64,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Decapsulated, WgError> {
        let opened = self.opener(now, receiver, counter)?.open(datagram, out)?;
        let len = opened.len();
        self.accept_opened(now, opened, &out[..len])
    }

    /// Which of our keypairs `receiver` names: 0 current, 1 next, 2 previous, 3 + k retired.
    fn slot(&self, receiver: u32) -> Option<usize> {
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == receiver);
        if is(&self.current) {
            Some(0)
        } else if is(&self.next) {
            Some(1)
        } else if is(&self.previous) {
            Some(2)
        } else {
            self.retired
                .iter()
                .position(|s| s.local_index == receiver)
                .map(|k| 3 + k)
        }
    }

    fn session(&self, slot: usize) -> Option<&Session> {
        match slot {
            0 => self.current.as_ref(),
            1 => self.next.as_ref(),
            2 => self.previous.as_ref(),
            k => self.retired.get(k - 3),
        }
    }

    fn session_mut(&mut self, slot: usize) -> Option<&mut Session> {
        match slot {
            0 => self.current.as_mut(),
            1 => self.next.as_mut(),
            2 => self.previous.as_mut(),
            k => self.retired.get_mut(k - 3),
        }
    }

    /// Matches a transport message (`receiver`, `counter`) to its keypair, refusing an unknown
    /// index or an expired keypair or counter, without changing anything: the returned
    /// [`Opener`] authenticates it anywhere, then [`accept_opened`](Self::accept_opened).
    pub fn opener(&self, now: Instant, receiver: u32, counter: u64) -> Result<Opener, WgError> {
        let session = self
            .slot(receiver)
            .and_then(|slot| self.session(slot))
            .ok_or(WgError::UnknownIndex(receiver))?;
        if now.saturating_duration_since(session.created) >= REJECT_AFTER_TIME
            || counter >= REJECT_AFTER_MESSAGES
        {
            return Err(WgError::NoSession);
        }
        Ok(session.opener(receiver, counter))
    }

    /// Takes a message [`Opener::open`] authenticated, its plaintext at the start of
    /// `plaintext` (the buffer `open` wrote): the replay window, a responder's new keypair
    /// confirmed, the timers. Fails if the keypair has gone meanwhile (or its index now names
    /// another) or the counter was seen.
    pub fn accept_opened(
        &mut self,
        now: Instant,
        opened: Opened,
        plaintext: &[u8],
    ) -> Result<Decapsulated, WgError> {
        let receiver = opened.receiver();
        let slot = self.slot(receiver).ok_or(WgError::UnknownIndex(receiver))?;
        let session = self.session_mut(slot).expect("found above");
        if now.saturating_duration_since(session.created) >= REJECT_AFTER_TIME {
            return Err(WgError::NoSession);
        }
        let plaintext = plaintext
            .get(..opened.len())
            .ok_or(WgError::BufferTooSmall {
                needed: opened.len(),
            })?;
        // Refused unless opened under this keypair's own key (an index reused meanwhile).
        session.accept(&opened)?;
        let len = plaintext.len();
        if slot == 1 {
            // First packet on the responder's new keypair confirms it.
            let previous = self.previous.take();
            self.retire(previous);
            self.previous = self.current.take();
            self.current = self.next.take();
            // As wireguard-go's timersHandshakeComplete: a confirmed keypair ends any handshake
            // attempt of ours (from a simultaneous start).
            self.pending = None;
            self.retransmit_at = None;
            self.attempts_since = None;
            self.events
                .push_back(Event::HandshakeCompleted { initiator: false });
            self.flush_queue(now);
        }
        self.on_authenticated_receive(now, len > 0);
        if let Some(s) = &self.current {
            if s.initiator && now.saturating_duration_since(s.created) >= REKEY_ON_RECEIVE_AGE {
                self.maybe_handshake(now);
            }
        }
        if len == 0 {
            return Ok(Decapsulated::Keepalive);
        }
        Ok(Decapsulated::Data(ip_length(plaintext).unwrap_or(len)))
    }

    /// Runs whatever timers are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.retransmit_at.is_some_and(|t| now >= t) {
            self.retransmit_at = None;
            if self
                .attempts_since
                .is_some_and(|t| now.saturating_duration_since(t) >= REKEY_ATTEMPT_TIME)
            {
                self.pending = None;
                self.attempts_since = None;
                self.queued.clear();
                self.events.push_back(Event::HandshakeGaveUp);
            } else if self.pending.is_some() {
                self.force_handshake(now);
            }
        }
        if self.dead_peer_at.is_some_and(|t| now >= t) {
            self.dead_peer_at = None;
            self.maybe_handshake(now);
        }
        if self.keepalive_at.is_some_and(|t| now >= t) {
            self.keepalive_at = None;
            if self.has_session(now) {
                self.send_keepalive(now);
            }
        }
        if self.persistent_at.is_some_and(|t| now >= t) {
            self.persistent_at = None;
            self.send_keepalive(now);
            if let Some(k) = self.persistent_keepalive {
                self.persistent_at.get_or_insert(now + k);
            }
        }
        if self
            .last_session_at
            .is_some_and(|t| now.saturating_duration_since(t) >= KEY_ERASURE_TIME)
        {
            self.previous = None;
            self.current = None;
            self.next = None;
            self.retired.clear();
            self.pending = None;
            self.retransmit_at = None;
            self.attempts_since = None;
            self.queued.clear();
            self.last_session_at = None;
            self.events.push_back(Event::KeysErased);
        }
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.retransmit_at,
            self.dead_peer_at,
            self.keepalive_at,
            self.persistent_at,
            self.last_session_at.map(|t| t + KEY_ERASURE_TIME),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next datagram (handshake message, keep-alive or flushed data) for the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn static_static(&self) -> Option<[u8; 32]> {
        self.static_static
    }
}

/// A timestamp strictly after `last`: the peer rejects any initiation not newer than the one
/// before, so two handshakes within one 16 ms tick (or after a clock step back) still go out.
fn next_timestamp(candidate: [u8; 12], last: &[u8; 12]) -> [u8; 12] {
    if candidate > *last {
        return candidate;
    }
    let secs = u64::from_be_bytes(last[..8].try_into().expect("8 bytes"));
    let nanos = u32::from_be_bytes(last[8..].try_into().expect("4 bytes")) as u64 + (1 << 24);
    let (secs, nanos) = if nanos >= 1_000_000_000 {
        (secs + 1, 0)
    } else {
        (secs, nanos)
    };
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&secs.to_be_bytes());
    t[8..].copy_from_slice(&(nanos as u32).to_be_bytes());
    t
}

/// How long before REJECT_AFTER_TIME a keypair stops carrying our packets: the two ends'
/// keypairs are born up to a round trip apart (the responder's when it answers), so a packet
/// sent just inside the limit by our clock can arrive past it by the peer's and be refused.
/// Such a packet is queued for a new handshake instead. Receiving keeps the full limit.
pub const SEND_MARGIN: Duration = KEEPALIVE_TIMEOUT;

fn usable(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.created) < REJECT_AFTER_TIME - SEND_MARGIN
        && s.send_counter < REJECT_AFTER_MESSAGES
}

/// The length an IPv4/IPv6 header declares, to strip WireGuard's padding; `None` unless the
/// plaintext holds a whole header and a length that fits (then it is passed on as it came).
fn ip_length(p: &[u8]) -> Option<usize> {
    let (len, header) = match p.first()? >> 4 {
        4 => (u16::from_be_bytes([*p.get(2)?, *p.get(3)?]) as usize, 20),
        6 => (
            40 + u16::from_be_bytes([*p.get(4)?, *p.get(5)?]) as usize,
            40,
        ),
        _ => return None,
    };
    (len >= header && len <= p.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::next_timestamp;

    #[test]
    fn padding_is_stripped_only_for_whole_ip_headers() {
        use super::ip_length;
        let mut v4 = vec![0x45, 0, 0, 24];
        v4.resize(32, 0);
        assert_eq!(ip_length(&v4), Some(24));
        // Found by fuzzing: a 4-byte plaintext starting 0x4_ claimed length 0.
        assert_eq!(
            ip_length(&[0x45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        assert_eq!(
            ip_length(&[0x45, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        assert_eq!(ip_length(&[0x60, 0, 0, 0, 0, 8]), None);
        assert_eq!(ip_length(&[0x10, 0, 0, 0]), None);
    }

    #[test]
    fn timestamps_strictly_increase() {
        let t = crate::noise::tai64n(core::time::Duration::from_secs(1_700_000_000));
        let n1 = next_timestamp(t, &t);
        assert!(n1 > t);
        let n2 = next_timestamp(t, &n1);
        assert!(n2 > n1);
        let late = crate::noise::tai64n(core::time::Duration::new(1_700_000_000, 999_999_999));
        let wrapped = next_timestamp(t, &late);
        assert!(wrapped > late);
        let newer = crate::noise::tai64n(core::time::Duration::from_secs(1_700_000_100));
        assert_eq!(next_timestamp(newer, &n2), newer);
    }
}
