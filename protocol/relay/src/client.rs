//! The client's side of the bind handshake, as a small sans-IO machine: Binds to every
//! advertised relay address, the first valid Challenge answered, the relay address reported.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::{BindBody, BoxKey, DiscoError, Message, UdpRelayEndpoint};
use burrow_wg::{PrivateKey, PublicKey};
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::geneve::{control_frame, GeneveError, GeneveHeader, GeneveProtocol, MAX_VNI};
use crate::Transmit;

pub use crate::geneve::{decap, encap};

/// How often Binds are sent again while no Challenge came.
pub const BIND_RETRY: Duration = Duration::from_secs(1);
/// The longest a client tries (Tailscale's cap on the endpoint's bind lifetime).
pub const MAX_BIND_ATTEMPT: Duration = Duration::from_secs(30);

/// Why a binding cannot start, or why a datagram was not its Challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BindingError {
    /// Our disco key is not one of the endpoint's two clients.
    #[error("our disco key is not a client of this relay endpoint")]
    NotAClient,
    /// The peer's disco key is not the endpoint's other client.
    #[error("the peer is not the other client of this relay endpoint")]
    PeerNotInPair,
    /// The endpoint's VNI is 0 or over 24 bits.
    #[error("relay endpoint VNI {0:#x} is not a valid 24-bit VNI")]
    BadVni(u32),
    /// The endpoint lists no address.
    #[error("relay endpoint has no address")]
    NoAddresses,
    /// Handshake generations are nonzero.
    #[error("handshake generation 0")]
    ZeroGeneration,
    /// The relay server's disco key is unusable.
    #[error("relay server's disco key is unusable")]
    BadKey,
    /// Not a Geneve header we read.
    #[error("not a relay packet: {0}")]
    Geneve(#[from] GeneveError),
    /// Not a control disco packet for this endpoint's VNI.
    #[error("not a handshake packet for this endpoint")]
    NotForUs,
    /// From an address the endpoint does not advertise.
    #[error("from {0}, which the relay endpoint does not advertise")]
    UnknownSource(SocketAddr),
    /// Not sealed by the relay server's disco key.
    #[error("not from the relay server's disco key")]
    NotFromServer,
    /// The disco datagram does not open or parse.
    #[error("bad disco: {0}")]
    Disco(DiscoError),
    /// A disco message other than a Challenge.
    #[error("not a Challenge")]
    NotAChallenge,
    /// A Challenge for another VNI, generation or peer.
    #[error("Challenge for another VNI, generation or peer")]
    ChallengeMismatch,
    /// The handshake is over (answered, or given up); later Challenges are ignored.
    #[error("handshake already finished")]
    Finished,
}

/// What happened to the binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingEvent {
    /// A Challenge came from `relay_addr` and was answered there: the path to the peer is
    /// (`relay_addr`, `vni`) once the peer binds too (the relay sends no acknowledgement; a
    /// disco Ping through the relay confirms it).
    Bound {
        /// The relay address that answered.
        relay_addr: SocketAddr,
        /// The endpoint's VNI.
        vni: u32,
    },
    /// No Challenge within the bind lifetime (at most 30 s).
    GaveUp {
        /// The endpoint's VNI.
        vni: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Binding,
    Bound(SocketAddr),
    GaveUp,
}

/// One client's bind handshake with a relay endpoint.
pub struct RelayBinding {
    endpoint: UdpRelayEndpoint,
    local_public: PublicKey,
    peer: PublicKey,
    server_box: BoxKey,
    generation: u32,
    give_up_at: Instant,
    next_send: Instant,
    state: State,
    rng: ChaCha20Rng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<BindingEvent>,
}

impl std::fmt::Debug for RelayBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBinding")
            .field("vni", &self.endpoint.vni)
            .field("server_disco", &self.endpoint.server_disco)
            .field("generation", &self.generation)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RelayBinding {
    /// Starts binding to `endpoint` as `local` (a client of it) towards `peer` (the other
    /// client), with handshake `generation` (nonzero, new per handshake). The first Binds are
    /// ready in [`poll_transmit`](Self::poll_transmit) at once.
    pub fn new(
        now: Instant,
        endpoint: UdpRelayEndpoint,
        local: &PrivateKey,
        peer: PublicKey,
        generation: u32,
        rng: ChaCha20Rng,
    ) -> Result<Self, BindingError> {
        let local_public = local.public_key();
        if !endpoint.client_disco.contains(&local_public) {
            return Err(BindingError::NotAClient);
        }
        if peer == local_public || !endpoint.client_disco.contains(&peer) {
            return Err(BindingError::PeerNotInPair);
        }
        if endpoint.vni == 0 || endpoint.vni > MAX_VNI {
            return Err(BindingError::BadVni(endpoint.vni));
        }
        if endpoint.addrs.is_empty() {
            return Err(BindingError::NoAddresses);
        }
        let server_box = BoxKey::new(local, &endpoint.server_disco).ok_or(BindingError::BadKey)?;
        let mut b = RelayBinding {
            give_up_at: now + endpoint.bind_lifetime.min(MAX_BIND_ATTEMPT),
            endpoint,
            local_public,
            peer,
            server_box,
            generation: 1,
            next_send: now,
            state: State::Binding,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        b.rebind(now, generation)?;
        Ok(b)
    }

    /// Starts a new handshake with a new `generation` (for example after our address changed);
    /// the relay keeps forwarding to the old address until the new Answer checks out.
    pub fn rebind(&mut self, now: Instant, generation: u32) -> Result<(), BindingError> {
        if generation == 0 {
            return Err(BindingError::ZeroGeneration);
        }
        self.generation = generation;
        self.state = State::Binding;
        self.give_up_at = now + self.endpoint.bind_lifetime.min(MAX_BIND_ATTEMPT);
        self.send_binds(now);
        Ok(())
    }

    /// The endpoint this binds to.
    pub fn endpoint(&self) -> &UdpRelayEndpoint {
        &self.endpoint
    }

    /// The relay address answered, once bound.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        match self.state {
            State::Bound(a) => Some(a),
            _ => None,
        }
    }

    fn body(&self, challenge: [u8; 32]) -> BindBody {
        BindBody {
            vni: self.endpoint.vni,
            generation: self.generation,
            remote_key: self.peer,
            challenge,
        }
    }

    fn send_binds(&mut self, now: Instant) {
        let bind = Message::BindUdpRelayEndpoint(self.body([0; 32]));
        for i in 0..self.endpoint.addrs.len() {
            let sealed = bind.seal_with(&self.server_box, &self.local_public, &mut self.rng);
            let payload = control_frame(self.endpoint.vni, &sealed).expect("VNI checked in new");
            self.transmits.push_back(Transmit {
                dst: self.endpoint.addrs[i],
                payload,
            });
        }
        self.next_send = now + BIND_RETRY;
    }

    /// A datagram from `src` that may be the relay's Challenge. The first valid one is
    /// answered to `src`; anything else is an error and changes nothing.
    pub fn handle_input(
        &mut self,
        _now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), BindingError> {
        if self.state != State::Binding {
            return Err(BindingError::Finished);
        }
        let (h, payload) = GeneveHeader::decode(datagram)?;
        if !h.control || h.protocol != GeneveProtocol::Disco || h.vni != self.endpoint.vni {
            return Err(BindingError::NotForUs);
        }
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        if !self.endpoint.addrs.iter().any(|a| canon(*a) == canon(src)) {
            return Err(BindingError::UnknownSource(src));
        }
        if burrow_disco::sender(payload) != Some(self.endpoint.server_disco) {
            return Err(BindingError::NotFromServer);
        }
        let Message::BindUdpRelayEndpointChallenge(c) =
            Message::open_with(&self.server_box, payload).map_err(BindingError::Disco)?
        else {
            return Err(BindingError::NotAChallenge);
        };
        if c.vni != self.endpoint.vni
            || c.generation != self.generation
            || c.remote_key != self.peer
        {
            return Err(BindingError::ChallengeMismatch);
        }
        let answer = Message::BindUdpRelayEndpointAnswer(self.body(c.challenge));
        let sealed = answer.seal_with(&self.server_box, &self.local_public, &mut self.rng);
        let payload = control_frame(self.endpoint.vni, &sealed).expect("VNI checked in new");
        self.transmits.push_back(Transmit { dst: src, payload });
        self.state = State::Bound(src);
        self.events.push_back(BindingEvent::Bound {
            relay_addr: src,
            vni: self.endpoint.vni,
        });
        Ok(())
    }

    /// Resends Binds each second; gives up at the bind lifetime (at most 30 s).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Binding {
            return;
        }
        if now >= self.give_up_at {
            self.state = State::GaveUp;
            self.events.push_back(BindingEvent::GaveUp {
                vni: self.endpoint.vni,
            });
        } else if now >= self.next_send {
            self.send_binds(now);
        }
    }

    /// The next Bind or Answer to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<BindingEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) (only while binding).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state == State::Binding).then(|| self.next_send.min(self.give_up_at))
    }
}
