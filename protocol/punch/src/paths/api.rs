//! What the path machine takes and gives: routes and destinations, transmits, its settings,
//! and the events and attempts the driver and the explanations read.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::{Message, MAX_CALL_ME_MAYBE_ENDPOINTS};

use crate::candidate::Hysteresis;
use crate::limits::Rate;

/// Where a peer's traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// Through the DERP relay.
    Relay,
    /// Straight to this address.
    Direct(SocketAddr),
}

/// Where to send a disco message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    /// Over the peer's DERP relay.
    Relay,
    /// Over UDP to this address.
    Direct(SocketAddr),
}

/// Which of a node's UDP sockets: [`MAIN_SOCKET`] for everything, others opened for birthday
/// probing toward a hard NAT's peer.
pub type SocketId = u16;

/// The node's one long-lived UDP socket.
pub const MAIN_SOCKET: SocketId = 0;

/// A disco message for the driver to seal and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub dst: Dst,
    /// From which local socket (direct sends only).
    pub socket: SocketId,
    /// What.
    pub msg: Message,
}

/// Timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathConfig {
    /// Ping the current direct path this often (well inside a 30 s UDP mapping timeout).
    pub heartbeat: Duration,
    /// Ping the current direct path this often while data flows (shorter: a dead path is
    /// noticed, and left, sooner).
    pub active_heartbeat: Duration,
    /// A ping unanswered this long is missed (at most; see `min_pong_timeout`).
    pub pong_timeout: Duration,
    /// Once a path's round trip is known, a ping is missed after five round trips, but never
    /// sooner than this.
    pub min_pong_timeout: Duration,
    /// Missed pongs in a row before a direct path is dead.
    pub missed_before_dead: u32,
    /// ... and nothing answered on it for this long: on a lossy link a few pings in a row go
    /// unanswered now and then, and a path declared dead takes seconds to win back (data goes
    /// over the relay too as soon as one pong is missed, so waiting loses nothing).
    pub silence_before_dead: Duration,
    /// While on the relay, retry direct candidates (and re-send CallMeMaybe) this often.
    pub upgrade_interval: Duration,
    /// Path choice margin.
    pub hysteresis: Hysteresis,
    /// Budget of direct pings to the peer's candidates (answers to its CallMeMaybe, upgrade
    /// retries, triggered checks); heartbeats on the current path are not counted.
    pub pings: Rate,
    /// Budget of pongs to the peer's direct pings from addresses not validated yet.
    pub pongs: Rate,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            heartbeat: Duration::from_secs(3),
            active_heartbeat: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(5),
            min_pong_timeout: Duration::from_secs(1),
            missed_before_dead: 3,
            silence_before_dead: Duration::from_secs(5),
            upgrade_interval: Duration::from_secs(30),
            hysteresis: Hysteresis::default(),
            // One full CallMeMaybe at once, then a few a second.
            pings: Rate {
                burst: MAX_CALL_ME_MAYBE_ENDPOINTS as u32 + 4,
                per_second: 8,
            },
            pongs: Rate {
                burst: 16,
                per_second: 4,
            },
        }
    }
}

/// Why a candidate is or is not in use: the engine's explanation for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; round trip attached.
    Validated(Duration),
    /// A ping went unanswered.
    NoPong,
    /// Declared dead after missed pongs.
    Dead,
    /// Answered disco but lost data (reported by the driver): not chosen until data flows.
    DataStalled,
}

/// One attempt on one candidate, for explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When.
    pub at: Instant,
    /// Which candidate.
    pub addr: SocketAddr,
    /// What happened.
    pub outcome: Outcome,
}

/// Something the driver should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// Traffic moves.
    RouteChanged {
        /// From.
        from: Route,
        /// To.
        to: Route,
    },
    /// A candidate was tried (or lost): one line of the peer's explanation.
    Attempt(Attempt),
}
