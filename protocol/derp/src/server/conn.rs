//! One connection's state: where its handshake stands, its queues (control, disco, data)
//! and, for a mesh watcher, the client list walked as its writer drains.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::ops::Bound;
use std::time::Instant;

use bytes::Bytes;

use crate::frame::{Frame, FrameDecoder, PeerGoneReason, NONCE_LEN};
use crate::nacl::BoxKey;

/// A connection's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A frame's bytes, ready to queue.
pub(super) fn frame(f: Frame<'_>) -> Bytes {
    Bytes::from(f.to_vec())
}

pub(super) enum State {
    AwaitingClientInfo,
    /// ClientInfo opened; waiting for the driver's verdict on `key`.
    Verifying {
        key: [u8; 32],
        nonce: [u8; NONCE_LEN],
        bx: Box<BoxKey>,
    },
    Active {
        key: [u8; 32],
        mesh: bool,
    },
}

/// A key waiting for its verdict.
pub(super) struct Pending {
    pub(super) conns: BTreeSet<ConnId>,
    /// The source counted for this lookup (that of the connection that caused it).
    pub(super) source: Option<IpAddr>,
}

/// A relayed packet waiting in a queue: its RecvPacket header plus the packet bytes sliced
/// from the sender's read buffer (no copy until the writer batches it).
pub(super) struct Out {
    pub(super) header: [u8; 37],
    pub(super) body: Bytes,
}

impl Out {
    pub(super) fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
    }
}

/// Where a watcher's dump of the client list stands.
#[derive(Clone, Copy)]
pub(super) enum Dump {
    Start,
    After([u8; 32]),
    Done,
}

/// A mesh watcher's pending news: the client list, walked as its writer drains (not
/// queued), and the keys whose presence changed since, announced as they are when written.
pub(super) struct Watch {
    pub(super) dump: Dump,
    pub(super) changed: BTreeSet<[u8; 32]>,
}

impl Watch {
    pub(super) fn next_dump_key(
        &self,
        by_key: &BTreeMap<[u8; 32], ConnId>,
        own: [u8; 32],
    ) -> Option<[u8; 32]> {
        let mut keys = match self.dump {
            Dump::Done => return None,
            Dump::Start => by_key.range::<[u8; 32], _>(..),
            Dump::After(k) => by_key.range((Bound::Excluded(k), Bound::Unbounded)),
        };
        keys.find(|(k, _)| **k != own).map(|(k, _)| *k)
    }

    pub(super) fn pending(&self, by_key: &BTreeMap<[u8; 32], ConnId>, own: [u8; 32]) -> bool {
        !self.changed.is_empty() || self.next_dump_key(by_key, own).is_some()
    }

    pub(super) fn next_frame(
        &mut self,
        by_key: &BTreeMap<[u8; 32], ConnId>,
        own: [u8; 32],
    ) -> Option<Bytes> {
        if let Some(key) = self.changed.pop_first() {
            return Some(if by_key.contains_key(&key) {
                present(key)
            } else {
                frame(Frame::PeerGone {
                    key,
                    reason: PeerGoneReason::Disconnected,
                })
            });
        }
        match self.next_dump_key(by_key, own) {
            Some(key) => {
                self.dump = Dump::After(key);
                Some(present(key))
            }
            None => {
                self.dump = Dump::Done;
                None
            }
        }
    }
}

pub(super) fn present(key: [u8; 32]) -> Bytes {
    frame(Frame::PeerPresent {
        key,
        endpoint: None,
        flags: None,
    })
}

pub(super) struct Conn {
    pub(super) state: State,
    pub(super) decoder: FrameDecoder,
    pub(super) data: VecDeque<Out>,
    pub(super) disco: VecDeque<Out>,
    pub(super) control: VecDeque<Bytes>,
    pub(super) watch: Option<Box<Watch>>,
    pub(super) last_write: Instant,
    pub(super) tokens: f64,
    pub(super) last_refill: Instant,
    pub(super) preferred: bool,
    pub(super) accepted_at: Instant,
    pub(super) last_peer_gone: Option<Instant>,
    /// The source address, if the driver said.
    pub(super) ip: Option<IpAddr>,
    /// The source address this client counts against in the per-source caps, once admitted.
    pub(super) counted: Option<IpAddr>,
}

/// What a connection writes next.
pub(super) enum Next {
    Frame(Bytes),
    Packet(Out),
}

impl Conn {
    pub(super) fn own_key(&self) -> [u8; 32] {
        match self.state {
            State::Active { key, .. } | State::Verifying { key, .. } => key,
            State::AwaitingClientInfo => [0; 32],
        }
    }

    pub(super) fn next(&mut self, by_key: &BTreeMap<[u8; 32], ConnId>) -> Option<Next> {
        if let Some(b) = self.control.pop_front() {
            return Some(Next::Frame(b));
        }
        let own = self.own_key();
        if let Some(b) = self.watch.as_mut().and_then(|w| w.next_frame(by_key, own)) {
            return Some(Next::Frame(b));
        }
        self.disco
            .pop_front()
            .or_else(|| self.data.pop_front())
            .map(Next::Packet)
    }

    pub(super) fn has_output(&self, by_key: &BTreeMap<[u8; 32], ConnId>) -> bool {
        !self.control.is_empty()
            || !self.disco.is_empty()
            || !self.data.is_empty()
            || self
                .watch
                .as_ref()
                .is_some_and(|w| w.pending(by_key, self.own_key()))
    }
}

pub(super) fn materialize(next: Next) -> Bytes {
    match next {
        Next::Frame(b) => b,
        Next::Packet(o) => {
            let mut v = Vec::with_capacity(37 + o.body.len());
            o.append_to(&mut v);
            Bytes::from(v)
        }
    }
}

pub(super) fn c_mut(conns: &mut BTreeMap<ConnId, Conn>, id: ConnId) -> &mut Conn {
    conns.get_mut(&id).expect("connection exists")
}
