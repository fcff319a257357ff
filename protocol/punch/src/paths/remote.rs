//! A peer's remote candidates: where they came from (its CallMeMaybe, the control plane,
//! its pings), which are kept and for how long, and what a new advertisement sets off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::{TxId, MAX_CALL_ME_MAYBE_ENDPOINTS};

use crate::candidate::{
    canonical_remote, is_acceptable_remote, Candidate, CandidateSource, Family,
};

use super::api::{Route, SocketId, MAIN_SOCKET};
use super::{PeerPaths, MAX_PEER_REFLEXIVE, MAX_REMOTE_CANDIDATES, PEER_REFLEXIVE_TTL};

#[derive(Debug, Clone)]
pub(super) struct Remote {
    pub(super) candidate: Candidate,
    pub(super) socket: SocketId,
    pub(super) pending: BTreeMap<TxId, Instant>,
    pub(super) rtt: Option<Duration>,
    pub(super) last_pong: Option<Instant>,
    pub(super) missed: u32,
    /// How many of its pings it answers (as of its latest pong): a path that loses many
    /// pings needs more misses in a row before it is taken for dead.
    pub(super) answers: AnswerRate,
    /// Lost data while answering disco: not chosen before this time.
    pub(super) stalled_until: Option<Instant>,
    /// Stalls in a row (the back-off doubles with each).
    pub(super) stalls: u32,
    /// Chosen again after a stall but not yet seen carrying data: the driver should send
    /// over the relay too.
    pub(super) probation: bool,
    /// Learned from a ping (peer-reflexive): when a ping or pong last came from it.
    pub(super) reflexive_heard: Option<Instant>,
    /// Missed a pong after it had answered: until [`RECOVERY_PONGS`] answers in a row, it does
    /// not take traffic from a working path of the other family (no flapping between IPv6 and
    /// IPv4 on a lossy link).
    pub(super) recovering: bool,
    /// Pongs in a row since the last miss.
    pub(super) streak: u32,
    /// The peer stopped advertising this address's family: one ping is out to check, and the
    /// path dies if it goes unanswered (a CallMeMaybe can be replayed, so it only asks).
    pub(super) suspect: bool,
}

/// The most misses in a row any path gets before it is dead (see `misses_for_dead`).
pub const MAX_MISSES_FOR_DEAD: u32 = 12;

/// The shortest run of unanswered pings (or datagrams) that `r`'s answer rate makes a chance
/// under one in a hundred: 2 on a path answering nine in ten, 5 on a path with one answer so
/// far, 11 at one in three; at most
/// [`MAX_MISSES_FOR_DEAD`].
pub(super) fn unlikely_run(r: &Remote) -> u32 {
    let lost = 1.0 - r.answers.rate();
    if lost <= 0.0 {
        return 1;
    }
    let run = (0.01f64.ln() / lost.ln()).ceil();
    if !run.is_finite() {
        return MAX_MISSES_FOR_DEAD;
    }
    (run as u32).clamp(1, MAX_MISSES_FOR_DEAD)
}

/// Weight of each ping's fate in a path's answer rate (about the last ten count).
const ANSWER_WEIGHT: f64 = 0.1;

/// The share of a path's pings answered since it first answered, over roughly the last ten,
/// smoothed toward one half while there are few, so a new path's first misses do not kill it
/// at once.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AnswerRate {
    answered: f64,
    pinged: f64,
}

impl AnswerRate {
    /// One ping's fate.
    pub(super) fn note(&mut self, answered: bool) {
        let keep = 1.0 - ANSWER_WEIGHT;
        self.answered = self.answered * keep + f64::from(u8::from(answered));
        self.pinged = self.pinged * keep + 1.0;
    }

    /// The smoothed share answered (Laplace's rule: a path that answered its only ping is not
    /// yet known to answer them all).
    pub(super) fn rate(&self) -> f64 {
        (self.answered + 1.0) / (self.pinged + 2.0)
    }
}

/// Answers in a row a path that missed pongs needs before it displaces a working path of the
/// other family.
pub const RECOVERY_PONGS: u32 = 3;

/// Who told us of a peer's endpoints: each source's latest list replaces its previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Advertiser {
    /// The peer itself, in a CallMeMaybe over the relay.
    Disco,
    /// The control plane, from the peer's registration.
    Control,
}

impl PeerPaths {
    pub(super) fn new_remote(candidate: Candidate, socket: SocketId) -> Remote {
        Remote {
            candidate,
            socket,
            pending: BTreeMap::new(),
            rtt: None,
            last_pong: None,
            missed: 0,
            answers: AnswerRate::default(),
            stalled_until: None,
            stalls: 0,
            probation: false,
            reflexive_heard: None,
            recovering: false,
            streak: 0,
            suspect: false,
        }
    }

    pub(super) fn advertised(&self, addr: &SocketAddr) -> bool {
        self.by_disco.contains(addr) || self.by_control.contains(addr)
    }

    pub(super) fn fresh_window(&self) -> Duration {
        self.config.pong_timeout * self.config.missed_before_dead + self.config.heartbeat
    }

    /// Missed pongs in a row, and silent for long enough besides.
    pub(super) fn dead(&self, now: Instant, r: &Remote) -> bool {
        r.missed >= self.misses_for_dead(r)
            && r.last_pong
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.silence_before_dead)
    }

    /// Misses in a row that make a path dead: `missed_before_dead`, or more on a path that
    /// answered only part of its pings, so that a run of misses that long would happen by
    /// chance less than once in a hundred times (a path answering one ping in three needs 11,
    /// one answering nine in ten the plain 3; at most [`MAX_MISSES_FOR_DEAD`]). Data goes over the relay too meanwhile, so the wait
    /// loses nothing; a path that never answered, or was killed, gets the plain count.
    pub(super) fn misses_for_dead(&self, r: &Remote) -> u32 {
        let base = self.config.missed_before_dead;
        if r.last_pong.is_none() {
            return base;
        }
        unlikely_run(r).max(base)
    }

    /// Answered lately and not dead: a path in use or about to be.
    pub(super) fn alive(&self, now: Instant, r: &Remote) -> bool {
        !self.dead(now, r)
            && r.last_pong
                .is_some_and(|t| now.saturating_duration_since(t) <= self.fresh_window())
    }

    pub(super) fn young_reflexive(&self, now: Instant, r: &Remote) -> bool {
        r.reflexive_heard
            .is_some_and(|t| now.saturating_duration_since(t) < PEER_REFLEXIVE_TTL)
    }

    /// Worth pinging on an upgrade retry: advertised now, or peer-reflexive and recent.
    pub(super) fn wanted(&self, now: Instant, addr: &SocketAddr, r: &Remote) -> bool {
        self.advertised(addr) || self.young_reflexive(now, r)
    }

    /// Forgets candidates nobody vouches for any more (no longer advertised, or peer-reflexive
    /// and silent), except the current path and paths still alive, which go when they die.
    pub(super) fn prune(&mut self, now: Instant) {
        let drop: Vec<SocketAddr> = self
            .remote
            .iter()
            .filter(|(a, r)| {
                !self.wanted(now, a, r) && self.route != Route::Direct(**a) && !self.alive(now, r)
            })
            .map(|(a, _)| *a)
            .collect();
        for a in drop {
            self.remote.remove(&a);
        }
    }

    /// Replaces one source's list of the peer's endpoints: filtered, at most one
    /// CallMeMaybe's worth, and within the total cap. Returns the list kept.
    pub(super) fn replace_advertised(
        &mut self,
        now: Instant,
        by: Advertiser,
        endpoints: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let mut list: Vec<SocketAddr> = Vec::new();
        for e in endpoints.iter().map(|e| canonical_remote(*e)) {
            if list.len() >= MAX_CALL_ME_MAYBE_ENDPOINTS {
                break;
            }
            if is_acceptable_remote(e) && !list.contains(&e) {
                list.push(e);
            }
        }
        // A family the peer itself stopped advertising altogether (its IPv6 address
        // withdrawn): its paths are checked at once, with one ping each, and die if it goes
        // unanswered (not after three missed pongs); meanwhile data goes over the relay too. A
        // replayed CallMeMaybe thus costs one ping and moves nothing. Only the peer's own
        // sealed CallMeMaybe can withdraw; single addresses come and go (predicted ports move
        // with every STUN round) and are left to their pongs.
        let gone: Vec<Family> = match by {
            Advertiser::Disco => [Family::Ipv4, Family::Ipv6]
                .into_iter()
                .filter(|f| {
                    self.by_disco.iter().any(|a| Family::of(*a) == *f)
                        && !list.iter().any(|a| Family::of(*a) == *f)
                })
                .collect(),
            Advertiser::Control => Vec::new(),
        };
        // Every path of that family goes (one found peer-reflexively too), except what the
        // control plane still vouches for.
        let withdrawn: Vec<SocketAddr> = self
            .remote
            .keys()
            .filter(|a| gone.contains(&Family::of(**a)) && !self.by_control.contains(a))
            .copied()
            .collect();
        match by {
            Advertiser::Disco => self.by_disco = list.clone(),
            Advertiser::Control => self.by_control = list.clone(),
        }
        self.check_withdrawn(now, &withdrawn);
        self.prune(now);
        list.retain(|e| {
            if self.remote.contains_key(e) {
                return true;
            }
            if self.remote.len() >= MAX_REMOTE_CANDIDATES {
                return false;
            }
            let c = Candidate::direct(*e, CandidateSource::Stun);
            self.remote.insert(*e, Self::new_remote(c, MAIN_SOCKET));
            true
        });
        match by {
            Advertiser::Disco => self.by_disco = list.clone(),
            Advertiser::Control => self.by_control = list.clone(),
        }
        list
    }

    /// Takes `from` as a peer-reflexive candidate if there is room (making room by forgetting
    /// an idle, unanswered one). Whether it is now known.
    pub(super) fn admit_reflexive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        socket: SocketId,
    ) -> bool {
        self.prune(now);
        let reflexive: Vec<(SocketAddr, Option<Instant>, bool)> = self
            .remote
            .iter()
            .filter(|(a, r)| r.reflexive_heard.is_some() && !self.advertised(a))
            .map(|(a, r)| {
                let idle =
                    self.route != Route::Direct(*a) && r.pending.is_empty() && !self.alive(now, r);
                (*a, r.reflexive_heard, idle)
            })
            .collect();
        if reflexive.len() >= MAX_PEER_REFLEXIVE {
            let oldest_idle = reflexive
                .iter()
                .filter(|(_, _, idle)| *idle)
                .min_by_key(|(a, heard, _)| (*heard, *a));
            match oldest_idle {
                Some((a, _, _)) => {
                    self.remote.remove(a);
                }
                None => return false,
            }
        }
        if self.remote.len() >= MAX_REMOTE_CANDIDATES {
            return false;
        }
        let mut r = Self::new_remote(
            Candidate::direct(from, CandidateSource::PeerReflexive),
            socket,
        );
        r.reflexive_heard = Some(now);
        self.remote.insert(from, r);
        true
    }

    /// The peer's CallMeMaybe (over the relay): ping every endpoint now — the peer is pinging
    /// ours at the same moment, so each NAT sees outbound traffic first. The list replaces the
    /// peer's previous one; unacceptable addresses are left out, and pings come out of the
    /// budget.
    pub fn handle_call_me_maybe(&mut self, now: Instant, endpoints: &[SocketAddr]) {
        self.handle_advertised(now, Advertiser::Disco, endpoints);
    }

    /// The peer's endpoints as the control plane lists them: handled as a CallMeMaybe, but
    /// kept as a list of their own (each source's latest list replaces its previous one).
    pub fn handle_control_endpoints(&mut self, now: Instant, endpoints: &[SocketAddr]) {
        self.handle_advertised(now, Advertiser::Control, endpoints);
    }

    pub(super) fn handle_advertised(
        &mut self,
        now: Instant,
        by: Advertiser,
        endpoints: &[SocketAddr],
    ) {
        let list = self.replace_advertised(now, by, endpoints);
        for e in list {
            self.budgeted_ping(now, e);
        }
        // Our own CallMeMaybe may never have reached the peer (it was not on the relay yet):
        // answer with ours so it pings us at this same moment. At most one answer a second, so
        // two nodes answering each other stop after one round.
        let answered_lately = self
            .last_call_me_maybe_reply
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if self.route == Route::Relay && !self.local.is_empty() && !answered_lately {
            self.last_call_me_maybe_reply = Some(now);
            self.call_me_maybe(now);
        }
    }
}
