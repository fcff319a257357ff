//! What a relay server reports: refusals, drops and their reasons, counters, events and
//! per-endpoint information.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use burrow_disco::DiscoError;
use burrow_wg::PublicKey;
use thiserror::Error;

use crate::geneve::GeneveError;

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AllocError {
    /// The server knows no address of its own yet; retry in 3 s (Tailscale's `ServerRetryAfter`).
    #[error("relay server has no address to advertise yet; retry after 3 s")]
    NotReady,
    /// The requester is not one of the pair it asks for.
    #[error("requester is not one of the two clients")]
    RequesterNotInPair,
    /// Both clients are the same key.
    #[error("the two clients are the same disco key")]
    SameClient,
    /// A client is the relay server's own disco key.
    #[error("a client is the relay server's own disco key")]
    ServerKey,
    /// A client's disco key is unusable (low order).
    #[error("a client's disco key is unusable")]
    BadKey,
    /// [`RelayLimits::max_sessions`] endpoints are open.
    #[error("relay is at its limit of {0} endpoints")]
    TooManySessions(usize),
    /// The requester has [`RelayLimits::max_sessions_per_requester`] endpoints open.
    #[error("requester is at its limit of {0} endpoints")]
    TooManyForRequester(usize),
    /// Every 24-bit VNI is in use.
    #[error("no free VNI")]
    VniExhausted,
}

/// A budget that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Budget {
    /// [`RelayLimits::binds_per_session`].
    SessionBinds,
    /// [`RelayLimits::challenges_per_source_ip`].
    SourceChallenges,
    /// [`RelayLimits::challenges_total`].
    TotalChallenges,
    /// [`RelayLimits::max_tracked_sources`].
    SourceTable,
    /// [`RelayLimits::leg_packets`].
    LegPackets,
    /// [`RelayLimits::leg_bytes`].
    LegBytes,
    /// [`RelayLimits::session_packets`].
    SessionPackets,
    /// [`RelayLimits::session_bytes`].
    SessionBytes,
    /// [`RelayLimits::max_queued_transmits`].
    TransmitQueue,
}

/// Why a datagram was dropped (every [`RelayServer::handle_input`] error is one, and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RelayError {
    /// Not a Geneve header the relay reads.
    #[error("not a relay packet: {0}")]
    Geneve(#[from] GeneveError),
    /// No endpoint has this VNI.
    #[error("no relay endpoint has VNI {0}")]
    UnknownVni(u32),
    /// A control packet that does not carry disco.
    #[error("control packet does not carry disco")]
    ControlNotDisco,
    /// The disco sender is neither client of the endpoint.
    #[error("disco sender is not a client of this endpoint")]
    NotAClient,
    /// The disco datagram does not open or parse.
    #[error("bad disco in a control packet: {0}")]
    Disco(DiscoError),
    /// A disco message other than Bind or Answer in a control packet.
    #[error("control packet carries neither Bind nor Answer")]
    UnexpectedMessage,
    /// A Bind or Answer whose VNI or remote key does not match the endpoint, or generation 0.
    #[error("Bind or Answer does not match the endpoint")]
    BindMismatch,
    /// An Answer with the wrong generation or MAC (or from another address than the Challenge went to).
    #[error("Answer refused: wrong generation, or MAC not for this source")]
    AnswerRefused,
    /// An Answer that would bind both legs to the same address.
    #[error("both legs would be bound to one address")]
    SameAddress,
    /// A data packet while not both legs are bound.
    #[error("endpoint is not bound on both legs")]
    NotOpen,
    /// A data packet from an address neither leg is bound to.
    #[error("data from an address that is not bound")]
    UnboundSource,
    /// A budget ran out.
    #[error("over the relay's {0:?} budget")]
    OverBudget(Budget),
}

/// Counted reasons for drops, as keys of [`RelayStats::dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// [`RelayError::Geneve`].
    Geneve,
    /// [`RelayError::UnknownVni`].
    UnknownVni,
    /// [`RelayError::ControlNotDisco`].
    ControlNotDisco,
    /// [`RelayError::NotAClient`].
    NotAClient,
    /// [`RelayError::Disco`].
    Disco,
    /// [`RelayError::UnexpectedMessage`].
    UnexpectedMessage,
    /// [`RelayError::BindMismatch`].
    BindMismatch,
    /// [`RelayError::AnswerRefused`].
    AnswerRefused,
    /// [`RelayError::SameAddress`].
    SameAddress,
    /// [`RelayError::NotOpen`].
    NotOpen,
    /// [`RelayError::UnboundSource`].
    UnboundSource,
    /// [`RelayError::OverBudget`].
    OverBudget(Budget),
}

impl RelayError {
    /// The counter this drop goes to.
    pub fn reason(&self) -> DropReason {
        match self {
            RelayError::Geneve(_) => DropReason::Geneve,
            RelayError::UnknownVni(_) => DropReason::UnknownVni,
            RelayError::ControlNotDisco => DropReason::ControlNotDisco,
            RelayError::NotAClient => DropReason::NotAClient,
            RelayError::Disco(_) => DropReason::Disco,
            RelayError::UnexpectedMessage => DropReason::UnexpectedMessage,
            RelayError::BindMismatch => DropReason::BindMismatch,
            RelayError::AnswerRefused => DropReason::AnswerRefused,
            RelayError::SameAddress => DropReason::SameAddress,
            RelayError::NotOpen => DropReason::NotOpen,
            RelayError::UnboundSource => DropReason::UnboundSource,
            RelayError::OverBudget(b) => DropReason::OverBudget(*b),
        }
    }
}

/// What the relay did, in totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Endpoints allocated (new ones, not repeats).
    pub allocations: u64,
    /// Allocations refused.
    pub allocations_refused: u64,
    /// Challenges sent.
    pub challenges_sent: u64,
    /// Legs bound (including rebinds).
    pub binds_completed: u64,
    /// Datagrams forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded (whole datagrams, Geneve header included).
    pub forwarded_bytes: u64,
    /// Endpoints closed because both clients did not bind in time.
    pub expired_unbound: u64,
    /// Endpoints closed because a leg was idle.
    pub expired_idle: u64,
    /// Endpoints closed because a client may no longer use the relay.
    pub revoked: u64,
    /// Events dropped because the driver did not drain them.
    pub events_dropped: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
}

impl RelayStats {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// "Send this same datagram, unchanged, to `dst`": the forwarding verdict of
/// [`RelayServer::handle_input`]. The driver sends its own buffer, so nothing is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The other leg's bound address.
    pub dst: SocketAddr,
}

/// Why an endpoint closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Not bound by both clients within the bind lifetime.
    BindTimeout,
    /// A leg sent nothing for the steady-state lifetime.
    Idle,
    /// The relay's operator no longer lets a client use it ([`RelayServer::close_unless`]).
    Revoked,
}

/// Something the driver may want to log or show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A new endpoint.
    Allocated {
        /// Its VNI.
        vni: u32,
        /// The sorted client pair.
        client_disco: [PublicKey; 2],
        /// Its Lamport ID.
        lamport_id: u64,
    },
    /// A client's address was bound (or rebound).
    Bound {
        /// The endpoint.
        vni: u32,
        /// The client.
        client: PublicKey,
        /// Its address, now the only one its packets are forwarded from and to.
        addr: SocketAddr,
        /// A rebind: this replaced an earlier address.
        rebind: bool,
    },
    /// Both legs bound: the endpoint forwards.
    Open {
        /// The endpoint.
        vni: u32,
    },
    /// An endpoint closed and its VNI is free.
    Closed {
        /// The endpoint.
        vni: u32,
        /// Why.
        reason: CloseReason,
    },
}

/// One endpoint as seen from outside (for status output and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its VNI.
    pub vni: u32,
    /// The sorted client pair; index `i` is leg `i`.
    pub client_disco: [PublicKey; 2],
    /// Its Lamport ID.
    pub lamport_id: u64,
    /// Each leg's bound address.
    pub bound: [Option<SocketAddr>; 2],
    /// Datagrams forwarded from each leg.
    pub packets: [u64; 2],
    /// Bytes forwarded from each leg.
    pub bytes: [u64; 2],
}
