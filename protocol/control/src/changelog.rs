//! The tailnet's history as replicas share it: every committed change has an id, one more than
//! the change before it (a database sequence, taken in the transaction that commits the
//! change), and each replica applies changes in id order, whatever order they reach it in.
//! Notifications may be lost or come out of order; a replica holds what came early, asks the
//! log for what it missed ([`Follower::gap`]) and never applies a change before the ones ahead
//! of it, so no replica serves a map that skips a change.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::netmap::{Delta, PeerInfo, Tailnet};
use crate::policy::{Policy, PolicyError, RelayCapability};

/// A change's place in the history: 1 for the first, then one more per change; 0 is the
/// empty history.
pub type ChangeId = u64;

/// One committed change, as the log records it: enough to replay it on any replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A node registered, or its record changed (endpoints, home region, identity): the whole
    /// record.
    Upsert(PeerInfo),
    /// A node left: removed by an admin, or its key expired.
    Remove {
        /// Its id.
        id: u64,
    },
    /// What a node reported of its relay.
    RelayCapability {
        /// Its id.
        id: u64,
        /// The capability.
        capability: RelayCapability,
    },
    /// A new policy, as its source text (compiled where it is applied).
    Policy {
        /// The HuJSON source.
        source: String,
    },
}

impl Change {
    /// Applies the change to `tailnet`; returns the deltas for the nodes it touches. A policy
    /// that does not compile changes nothing (the replica that committed it had checked it).
    pub fn apply(&self, tailnet: &mut Tailnet) -> Result<Vec<(u64, Delta)>, PolicyError> {
        Ok(match self {
            Change::Upsert(peer) => tailnet.upsert(peer.clone()),
            Change::Remove { id } => tailnet.remove(*id),
            Change::RelayCapability { id, capability } => {
                tailnet.set_relay_capability(*id, *capability)
            }
            Change::Policy { source } => {
                let (_, compiled) = Policy::check(source)?;
                tailnet.set_policy(compiled)
            }
        })
    }
}

/// Changes a follower holds ahead of a gap, at most; past it the latest are let go (the log
/// still has them, and [`Follower::gap`] asks for them again once the gap is filled).
pub const MAX_HELD: usize = 4096;

/// What became of a change offered to a [`Follower`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Applied already (or older than the history the follower started from): ignored.
    Stale,
    /// Held until the changes before it arrive.
    Held,
    /// Next in line: [`Follower::next_ready`] yields it.
    Ready,
    /// Too far ahead to hold ([`MAX_HELD`] are held): let go, to be read from the log later.
    Dropped,
}

/// A replica's place in the history: the last change it applied, and the changes that came
/// early, held in id order.
#[derive(Debug, Clone, Default)]
pub struct Follower {
    applied: ChangeId,
    held: BTreeMap<ChangeId, Change>,
    /// The highest id known to exist (offered, or announced by the log).
    known: ChangeId,
}

impl Follower {
    /// A follower whose tailnet already holds every change up to `applied` (loaded from the
    /// database at start, with the log's last id read in the same transaction).
    pub fn new(applied: ChangeId) -> Self {
        Follower {
            applied,
            held: BTreeMap::new(),
            known: applied,
        }
    }

    /// The last change applied.
    pub fn applied(&self) -> ChangeId {
        self.applied
    }

    /// How many changes wait for the ones before them.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes a change from a notification or from the log.
    pub fn offer(&mut self, id: ChangeId, change: Change) -> Offered {
        if id <= self.applied {
            return Offered::Stale;
        }
        self.known = self.known.max(id);
        let next = id == self.applied + 1;
        if self.held.contains_key(&id) {
            return if next { Offered::Ready } else { Offered::Held };
        }
        if self.held.len() >= MAX_HELD {
            // Keep the earliest: they are the ones the next application needs.
            match self.held.last_key_value() {
                Some((&last, _)) if last > id => {
                    self.held.remove(&last);
                }
                _ => return Offered::Dropped,
            }
        }
        self.held.insert(id, change);
        if next {
            Offered::Ready
        } else {
            Offered::Held
        }
    }

    /// Notes that the log reaches `id` (a notification whose change is read separately, or the
    /// log's head after a reconnect): the gap up to it is to be read.
    pub fn note_head(&mut self, id: ChangeId) {
        self.known = self.known.max(id);
    }

    /// The next change in id order, if it is here; it counts as applied once taken.
    pub fn next_ready(&mut self) -> Option<(ChangeId, Change)> {
        let (&id, _) = self.held.first_key_value()?;
        if id != self.applied + 1 {
            return None;
        }
        let change = self.held.remove(&id)?;
        self.applied = id;
        Some((id, change))
    }

    /// Applies every change that is next in line to `tailnet`; returns the deltas with the id
    /// of the change each came from, in order. A change that fails to apply (a policy that
    /// does not compile) is passed over, as the replica that committed it would have.
    pub fn apply_ready(&mut self, tailnet: &mut Tailnet) -> Vec<(ChangeId, u64, Delta)> {
        let mut out = Vec::new();
        while let Some((id, change)) = self.next_ready() {
            if let Ok(deltas) = change.apply(tailnet) {
                out.extend(deltas.into_iter().map(|(node, d)| (id, node, d)));
            }
        }
        out
    }

    /// The ids known to exist but neither applied nor held before the first held change (or
    /// before the known head): what to read from the log next.
    pub fn gap(&self) -> Option<RangeInclusive<ChangeId>> {
        let first = self.applied + 1;
        let last = match self.held.first_key_value() {
            Some((&held, _)) => held - 1,
            None => self.known,
        };
        (first <= last).then_some(first..=last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove(id: u64) -> Change {
        Change::Remove { id }
    }

    #[test]
    fn changes_apply_in_id_order_whatever_order_they_come_in() {
        let mut f = Follower::new(10);
        assert_eq!(f.offer(9, remove(9)), Offered::Stale);
        assert_eq!(f.offer(13, remove(13)), Offered::Held);
        assert_eq!(f.offer(12, remove(12)), Offered::Held);
        assert_eq!(f.next_ready(), None, "11 is missing");
        assert_eq!(f.gap(), Some(11..=11));
        assert_eq!(f.offer(11, remove(11)), Offered::Ready);
        let order: Vec<ChangeId> =
            std::iter::from_fn(|| f.next_ready().map(|(id, _)| id)).collect();
        assert_eq!(order, vec![11, 12, 13]);
        assert_eq!(f.applied(), 13);
        assert_eq!(f.gap(), None);
        assert_eq!(f.offer(12, remove(12)), Offered::Stale, "applied already");
    }

    #[test]
    fn a_notified_head_opens_a_gap_to_read() {
        let mut f = Follower::new(0);
        f.note_head(5);
        assert_eq!(f.gap(), Some(1..=5));
        f.offer(3, remove(3));
        assert_eq!(f.gap(), Some(1..=2), "up to the first held");
    }

    #[test]
    fn at_most_max_held_wait_and_the_earliest_are_kept() {
        let mut f = Follower::new(0);
        for id in (2..=MAX_HELD as u64 + 1).rev() {
            assert_eq!(f.offer(id, remove(id)), Offered::Held);
        }
        // Full: a later one is let go, an earlier one pushes out the latest.
        assert_eq!(f.offer(MAX_HELD as u64 + 5, remove(0)), Offered::Dropped);
        assert_eq!(f.offer(1, remove(1)), Offered::Ready);
        assert_eq!(f.held(), MAX_HELD);
        let applied = std::iter::from_fn(|| f.next_ready()).count();
        assert_eq!(applied, MAX_HELD);
        // What was let go is asked for again.
        assert_eq!(f.gap(), Some(MAX_HELD as u64 + 1..=MAX_HELD as u64 + 5));
    }
}
