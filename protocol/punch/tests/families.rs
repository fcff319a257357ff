//! Dual-stack peers over an in-memory network: IPv6 wins over IPv4 by priority, the other
//! family is kept alive as a standby, losing IPv6 falls back to IPv4 direct (never the relay),
//! IPv6 is won back when it returns, a single lost pong does not flap traffic between the
//! families, and each family's state is explained.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::Message;
use burrow_punch::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const A4: &str = "203.0.113.1:41641";
const A6: &str = "[2001:db8:1::1]:41641";
const B4: &str = "198.51.100.2:41641";
const B6: &str = "[2001:db8:2::2]:41641";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Net {
    a: PeerPaths,
    b: PeerPaths,
    a_addrs: Vec<SocketAddr>,
    b_addrs: Vec<SocketAddr>,
    /// Destinations that currently receive.
    open: Vec<SocketAddr>,
    /// Pings to these destinations are dropped this many more times.
    drop_pings: Vec<(SocketAddr, u32)>,
    now: Instant,
    t0: Instant,
    /// A's route changes: (time since start, new route).
    a_routes: Vec<(Duration, Route)>,
    /// B runs its timers only every other tick, so the two sides' heartbeats are out of phase.
    b_lags: bool,
    ticks: u64,
}

impl Net {
    fn new(a_addrs: &[&str], b_addrs: &[&str]) -> Self {
        let t0 = Instant::now();
        let c = PathConfig {
            upgrade_interval: Duration::from_secs(10),
            ..PathConfig::default()
        };
        Net {
            a: PeerPaths::new(c, ChaCha20Rng::seed_from_u64(1), t0),
            b: PeerPaths::new(c, ChaCha20Rng::seed_from_u64(2), t0),
            a_addrs: a_addrs.iter().map(|s| addr(s)).collect(),
            b_addrs: b_addrs.iter().map(|s| addr(s)).collect(),
            open: a_addrs.iter().chain(b_addrs).map(|s| addr(s)).collect(),
            drop_pings: Vec::new(),
            now: t0,
            t0,
            a_routes: Vec::new(),
            b_lags: false,
            ticks: 0,
        }
    }

    fn start(&mut self) {
        let local = |v: &[SocketAddr]| -> Vec<Candidate> {
            v.iter()
                .map(|a| Candidate::direct(*a, CandidateSource::Interface))
                .collect()
        };
        let (ca, cb) = (local(&self.a_addrs), local(&self.b_addrs));
        self.a.set_local_candidates(self.now, ca);
        self.b.set_local_candidates(self.now, cb);
        self.pump();
    }

    fn pump(&mut self) {
        for _ in 0..50 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                let from = self.a_addrs.clone();
                self.deliver(true, &from, &t);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                let from = self.b_addrs.clone();
                self.deliver(false, &from, &t);
            }
            while let Some(e) = self.a.poll_event() {
                if let PathEvent::RouteChanged { to, .. } = e {
                    self.a_routes.push((self.now - self.t0, to));
                }
            }
            while self.b.poll_event().is_some() {}
            if !moved {
                return;
            }
        }
    }

    /// One transmit from A (`from_a`) or B; a direct datagram comes from the sender's address
    /// of the destination's family.
    fn deliver(&mut self, from_a: bool, sender: &[SocketAddr], t: &Transmit) {
        let now = self.now;
        let to = if from_a { &mut self.b } else { &mut self.a };
        match (t.dst, &t.msg) {
            (Dst::Relay, Message::CallMeMaybe { endpoints }) => {
                to.handle_call_me_maybe(now, endpoints)
            }
            (Dst::Direct(dst), msg) if self.open.contains(&dst) => {
                let Some(from) = sender
                    .iter()
                    .find(|a| Family::of(**a) == Family::of(dst))
                    .copied()
                else {
                    return;
                };
                match msg {
                    Message::Ping { tx_id, .. } => {
                        if let Some(d) = self.drop_pings.iter_mut().find(|d| d.0 == dst && d.1 > 0)
                        {
                            d.1 -= 1;
                            return;
                        }
                        to.handle_ping(now, 0, from, *tx_id);
                    }
                    Message::Pong { tx_id, .. } => {
                        to.handle_pong(now, 0, from, *tx_id);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(100);
            self.ticks += 1;
            self.a.handle_timeout(self.now);
            if !self.b_lags || self.ticks % 2 == 0 {
                self.b.handle_timeout(self.now);
            }
            self.pump();
        }
    }

    fn family_state(&self, f: Family) -> FamilyState {
        self.a
            .families(self.now)
            .into_iter()
            .find(|r| r.family == f)
            .unwrap()
            .state
    }
}

#[test]
fn ipv6_wins_and_ipv4_is_kept_alive_as_the_standby() {
    let mut net = Net::new(&[A4, A6], &[B4, B6]);
    net.b_lags = true;
    net.start();
    assert_eq!(net.a.route(), Route::Direct(addr(B6)), "IPv6 ranks first");
    assert_eq!(net.b.route(), Route::Direct(addr(A6)));
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.a.route(), Route::Direct(addr(B6)));
    assert!(
        matches!(net.family_state(Family::Ipv6), FamilyState::InUse { addr: a, .. } if a == addr(B6))
    );
    // IPv4 answered a minute after the start: it is pinged as the standby, not left to go stale.
    assert!(
        matches!(net.family_state(Family::Ipv4), FamilyState::Standby { addr: a, .. } if a == addr(B4)),
        "{:?}",
        net.family_state(Family::Ipv4)
    );
    let v4_pongs_late = net
        .a
        .attempts()
        .filter(|x| x.addr == addr(B4) && x.at >= net.t0 + Duration::from_secs(40))
        .filter(|x| matches!(x.outcome, Outcome::Validated(_)))
        .count();
    // …every heartbeat (3 s), not in storms: a standby ping must not set off triggered
    // checks back and forth (20 s: about 7).
    assert!(
        (5..=10).contains(&v4_pongs_late),
        "standby heartbeats: {v4_pongs_late}"
    );
}

#[test]
fn losing_ipv6_falls_back_to_ipv4_direct_and_ipv6_is_won_back() {
    let mut net = Net::new(&[A4, A6], &[B4, B6]);
    net.start();
    net.run_for(Duration::from_secs(20));
    assert_eq!(net.a.route(), Route::Direct(addr(B6)));

    // IPv6 breaks both ways.
    net.open.retain(|a| a.is_ipv4());
    let broke = net.now - net.t0;
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.a.route(), Route::Direct(addr(B4)));
    let after: Vec<Route> = net
        .a_routes
        .iter()
        .filter(|(t, _)| *t >= broke)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(
        after,
        vec![Route::Direct(addr(B4))],
        "straight to IPv4 direct, never the relay"
    );
    let moved_at = net.a_routes.iter().find(|(t, _)| *t >= broke).unwrap().0;
    assert!(
        moved_at - broke <= Duration::from_secs(8),
        "moved {:?} after the break",
        moved_at - broke
    );
    assert!(
        matches!(net.family_state(Family::Ipv6), FamilyState::Lost { .. }),
        "{:?}",
        net.family_state(Family::Ipv6)
    );

    // IPv6 comes back: retried every upgrade interval while on IPv4, and chosen again.
    net.open.extend([addr(A6), addr(B6)]);
    let back = net.now - net.t0;
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.a.route(), Route::Direct(addr(B6)));
    let regained = net.a_routes.last().unwrap().0;
    assert!(
        regained - back <= Duration::from_secs(20),
        "IPv6 won back {:?} after it returned",
        regained - back
    );
}

#[test]
fn one_lost_pong_on_ipv6_does_not_flap_between_the_families() {
    let mut net = Net::new(&[A4, A6], &[B4, B6]);
    net.start();
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.a.route(), Route::Direct(addr(B6)));
    // A's next heartbeat to B's IPv6 address is lost.
    net.drop_pings.push((addr(B6), 1));
    let switches_before = net.a_routes.len();
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.a.route(), Route::Direct(addr(B6)), "IPv6 again");
    let switches: Vec<(Duration, Route)> = net.a_routes[switches_before..].to_vec();
    // At most one excursion to IPv4 and back: no flapping while IPv6 proves itself.
    assert!(switches.len() <= 2, "{switches:?}");
    if let [(left, to4), (back, to6)] = switches[..] {
        assert_eq!(
            (to4, to6),
            (Route::Direct(addr(B4)), Route::Direct(addr(B6)))
        );
        // Back only after RECOVERY_PONGS answers in a row (heartbeats 3 s apart).
        assert!(
            back - left >= Duration::from_secs(3 * (RECOVERY_PONGS as u64 - 1)),
            "back after {:?}",
            back - left
        );
    }
    assert!(!net.a_routes.iter().any(|(_, r)| *r == Route::Relay));
}

#[test]
fn families_without_addresses_are_explained() {
    // A has IPv6 only; B has IPv4 only: nothing in common, the relay it is.
    let mut net = Net::new(&[A6], &[B4]);
    net.start();
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.a.route(), Route::Relay);
    assert_eq!(net.family_state(Family::Ipv6), FamilyState::PeerHasNone);
    assert_eq!(net.family_state(Family::Ipv4), FamilyState::WeHaveNone);

    // Both dual-stack, but IPv6 is firewalled shut: IPv4 carries, IPv6 is unanswered.
    let mut net = Net::new(&[A4, A6], &[B4, B6]);
    net.open.retain(|a| a.is_ipv4());
    net.start();
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.a.route(), Route::Direct(addr(B4)));
    assert_eq!(
        net.family_state(Family::Ipv6),
        FamilyState::Unanswered { candidates: 1 }
    );
}

#[test]
fn family_of_treats_mapped_ipv4_as_ipv4() {
    assert_eq!(Family::of(addr("[::ffff:192.0.2.1]:1")), Family::Ipv4);
    assert_eq!(Family::of(addr("192.0.2.1:1")), Family::Ipv4);
    assert_eq!(Family::of(addr(B6)), Family::Ipv6);
    assert_eq!(Family::Ipv6.other(), Family::Ipv4);
}

#[test]
fn a_standby_ping_sets_off_no_triggered_check() {
    // A ping on the other family's live standby (the peer's heartbeat) is answered with a
    // pong and nothing more: pinging back each time ping-ponged until the budget ran out.
    let mut net = Net::new(&[A4, A6], &[B4, B6]);
    net.start();
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.a.route(), Route::Direct(addr(B6)));
    // Past the last heartbeat's pong: nothing of ours is in flight to B4.
    net.run_for(Duration::from_millis(1500));
    net.a.handle_ping(net.now, 0, addr(B4), [7; 12]);
    let sent: Vec<Transmit> = std::iter::from_fn(|| net.a.poll_transmit()).collect();
    assert!(
        sent.iter().any(|t| t.dst == Dst::Direct(addr(B4))
            && matches!(t.msg, Message::Pong { tx_id, .. } if tx_id == [7; 12])),
        "{sent:?}"
    );
    assert!(
        !sent.iter().any(|t| matches!(t.msg, Message::Ping { .. })),
        "{sent:?}"
    );
}
