//! Both address families of a dual-stack peer: the other family's best path is kept alive
//! while one is in use (losing IPv6 falls back to IPv4 direct before the relay), a better
//! family is retried while traffic runs on a worse one, and each family's state is explained.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::candidate::{CandidateKind, Family};

use super::remote::Remote;
use super::{Outcome, PeerPaths, Route};

/// Where one address family stands for a peer: why it carries traffic, or why it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyState {
    /// Traffic runs on it.
    InUse {
        /// The peer's address.
        addr: SocketAddr,
        /// Latest round trip.
        rtt: Duration,
    },
    /// It works and is kept alive, but the other family's path was chosen (higher priority,
    /// or it was there first and this one did not beat it by the hysteresis margin).
    Standby {
        /// The peer's address.
        addr: SocketAddr,
        /// Latest round trip.
        rtt: Duration,
    },
    /// It missed pongs and answers again; it takes traffic back after a few answers in a row.
    Recovering {
        /// The peer's address.
        addr: SocketAddr,
        /// Answers in a row so far.
        pongs: u32,
    },
    /// Its last path stopped answering (missed pongs, or data stopped flowing on it).
    Lost {
        /// The peer's address.
        addr: SocketAddr,
        /// What ended it.
        outcome: Outcome,
    },
    /// Candidates were pinged; none has answered (a firewall, or no route).
    Unanswered {
        /// How many of the peer's candidates of this family.
        candidates: usize,
    },
    /// The peer advertises no address of this family.
    PeerHasNone,
    /// We have no address of this family.
    WeHaveNone,
}

/// One family's line of a peer's explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyReport {
    /// The family.
    pub family: Family,
    /// Where it stands.
    pub state: FamilyState,
}

impl PeerPaths {
    fn family_of(r: &Remote) -> Family {
        Family::of(r.candidate.addr)
    }

    /// The best live path of `family` that is not the current route: priority, then round trip.
    fn standby_of(&self, now: Instant, family: Family) -> Option<&Remote> {
        self.remote
            .values()
            .filter(|r| {
                Self::family_of(r) == family && self.route != Route::Direct(r.candidate.addr)
            })
            .filter(|r| r.stalled_until.is_none_or(|t| now >= t) && self.alive(now, r))
            .max_by(|a, b| {
                a.candidate
                    .kind
                    .priority()
                    .cmp(&b.candidate.kind.priority())
                    .then(b.rtt.cmp(&a.rtt))
            })
    }

    /// While direct on `current`: pings the other family's best live path every heartbeat, so
    /// it is fresh (and chosen at once) when the current path dies.
    pub(super) fn keep_standby(&mut self, now: Instant, current: SocketAddr) {
        let other = Family::of(current).other();
        let Some(addr) = self.standby_of(now, other).map(|r| r.candidate.addr) else {
            self.next_standby_heartbeat = None;
            return;
        };
        if self.next_standby_heartbeat.is_none_or(|t| now >= t) {
            self.ping(now, addr);
            self.next_standby_heartbeat = Some(now + self.config.heartbeat);
        }
    }

    /// Whether, on `current`, the peer advertises a candidate of the other family that ranks
    /// higher, that we could reach (we have an address of that family), and that is not live:
    /// worth retrying every upgrade interval (an IPv6 address that came back, a firewall that
    /// let a later ping through).
    pub(super) fn better_family_wanted(&self, current: SocketAddr) -> bool {
        let other = Family::of(current).other();
        let rank = CandidateKind::of(current).priority();
        let have_local = self.local.iter().any(|c| Family::of(c.addr) == other);
        have_local
            && self.remote.iter().any(|(a, r)| {
                Family::of(*a) == other
                    && r.candidate.kind.priority() > rank
                    && self.advertised(a)
                    && (r.last_pong.is_none() || r.missed > 0)
            })
    }

    /// On `current`, every upgrade interval: pings the better family's candidates and asks the
    /// peer (CallMeMaybe) to ping ours at the same moment, which opens both stateful firewalls.
    pub(super) fn retry_better_family(&mut self, now: Instant, current: SocketAddr) {
        if now < self.next_upgrade || !self.better_family_wanted(current) {
            return;
        }
        self.next_upgrade = now + self.config.upgrade_interval;
        let other = Family::of(current).other();
        let rank = CandidateKind::of(current).priority();
        let addrs: Vec<SocketAddr> = self
            .remote
            .iter()
            .filter(|(a, r)| {
                Family::of(**a) == other
                    && r.candidate.kind.priority() > rank
                    && self.advertised(a)
                    && !self.alive(now, r)
            })
            .map(|(a, _)| *a)
            .collect();
        for a in addrs {
            self.budgeted_ping(now, a);
        }
        self.call_me_maybe(now);
    }

    /// Where each address family stands, IPv6 first: which one carries traffic and why the
    /// other does not.
    pub fn families(&self, now: Instant) -> Vec<FamilyReport> {
        [Family::Ipv6, Family::Ipv4]
            .into_iter()
            .map(|family| FamilyReport {
                family,
                state: self.family_state(now, family),
            })
            .collect()
    }

    fn family_state(&self, now: Instant, family: Family) -> FamilyState {
        if let Route::Direct(addr) = self.route {
            if Family::of(addr) == family {
                let rtt = self
                    .remote
                    .get(&addr)
                    .and_then(|r| r.rtt)
                    .unwrap_or_default();
                return FamilyState::InUse { addr, rtt };
            }
        }
        if !self.local.iter().any(|c| Family::of(c.addr) == family) {
            return FamilyState::WeHaveNone;
        }
        let ours: Vec<&Remote> = self
            .remote
            .values()
            .filter(|r| Self::family_of(r) == family)
            .collect();
        if ours.is_empty() {
            return FamilyState::PeerHasNone;
        }
        if let Some(r) = self.standby_of(now, family) {
            let addr = r.candidate.addr;
            return match (r.recovering && r.missed == 0, r.rtt) {
                (true, _) => FamilyState::Recovering {
                    addr,
                    pongs: r.streak,
                },
                (false, Some(rtt)) if r.missed == 0 => FamilyState::Standby { addr, rtt },
                _ => FamilyState::Lost {
                    addr,
                    outcome: Outcome::NoPong,
                },
            };
        }
        // The latest loss of this family, if any path of it ever answered.
        let lost = self
            .attempts
            .iter()
            .rev()
            .find(|a| {
                Family::of(a.addr) == family
                    && matches!(a.outcome, Outcome::Dead | Outcome::DataStalled)
            })
            .filter(|a| {
                ours.iter()
                    .any(|r| r.candidate.addr == a.addr && r.rtt.is_some())
            });
        match lost {
            Some(a) => FamilyState::Lost {
                addr: a.addr,
                outcome: a.outcome,
            },
            None => FamilyState::Unanswered {
                candidates: ours.len(),
            },
        }
    }
}
