//! A hostile peer (or someone replaying its disco packets) against one peer's path machine:
//! unusable addresses, endpoint floods, replays from spoofed sources. Audit findings #3 and #9:
//! each test names what it would have let through before.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_disco::Message;
use burrow_punch::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn paths(t0: Instant) -> PeerPaths {
    PeerPaths::new(PathConfig::default(), ChaCha20Rng::seed_from_u64(5), t0)
}

fn drain(p: &mut PeerPaths) -> Vec<Transmit> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

fn pinged(sent: &[Transmit]) -> Vec<SocketAddr> {
    sent.iter()
        .filter_map(|t| match (t.dst, &t.msg) {
            (Dst::Direct(a), Message::Ping { .. }) => Some(a),
            _ => None,
        })
        .collect()
}

fn pongs(sent: &[Transmit]) -> usize {
    sent.iter()
        .filter(|t| matches!(t.msg, Message::Pong { .. }))
        .count()
}

fn candidates(p: &PeerPaths) -> BTreeSet<SocketAddr> {
    p.remote_candidates().map(|c| c.addr).collect()
}

#[test]
fn the_remote_address_rule() {
    for good in [
        "203.0.113.7:41641",
        "192.168.1.20:41641",
        "10.0.0.2:1",
        "100.64.1.2:41641",
        "[2001:db8::1]:41641",
        "[fd00::2]:41641",
        "[::ffff:198.51.100.2]:41641",
        "[64:ff9b::c633:6402]:41641",
        "[2002:cb00:7107::1]:41641",
        "[2001:db8:1:2::3]:41641",
    ] {
        assert!(is_acceptable_remote(addr(good)), "{good} refused");
    }
    for bad in [
        "203.0.113.7:0",
        "0.0.0.0:41641",
        "0.1.2.3:41641",
        "127.0.0.1:22",
        "127.8.9.10:53",
        "169.254.10.20:41641",
        "224.0.0.251:5353",
        "239.255.255.250:1900",
        "255.255.255.255:41641",
        "240.0.0.1:41641",
        "[::]:41641",
        "[::1]:22",
        "[::127.0.0.1]:22",
        "[fe80::1]:41641",
        "[ff02::fb]:5353",
        "[::ffff:127.0.0.1]:22",
        "[::ffff:224.0.0.251]:5353",
        "[::ffff:0.0.0.0]:41641",
        "[::ffff:169.254.1.1]:41641",
        // IPv6 that carries an IPv4 address, judged by it: NAT64 to the metadata service,
        // loopback, multicast; 6to4 of loopback; IPv4-translated of 240/4.
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b::7f00:1]:22",
        "[64:ff9b:1::e000:fb]:5353",
        "[2002:7f00:1::1]:22",
        "[::ffff:0:f000:1]:41641",
        // Site-local (deprecated) and discard-only.
        "[fec0::1]:41641",
        "[100::1]:41641",
    ] {
        assert!(!is_acceptable_remote(addr(bad)), "{bad} accepted");
    }
    assert_eq!(
        canonical_remote(addr("[::ffff:198.51.100.2]:7")),
        addr("198.51.100.2:7")
    );
}

/// A full CallMeMaybe (60 endpoints) salted with unusable addresses: only the acceptable ones
/// are kept and pinged. Before: every one was pinged, 0.0.0.0 and 255.255.255.255 included.
#[test]
fn a_call_me_maybe_is_filtered() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    let bad = [
        "0.0.0.0:41641",
        "127.0.0.1:22",
        "224.0.0.251:5353",
        "255.255.255.255:41641",
        "169.254.1.1:41641",
        "[::1]:22",
        "[fe80::1]:41641",
        "203.0.113.9:0",
        "[::ffff:127.0.0.1]:53",
    ]
    .map(addr);
    let mut endpoints: Vec<SocketAddr> = bad.to_vec();
    let good: Vec<SocketAddr> = (0..51u16)
        .map(|k| SocketAddr::from(([198, 51, 100, 2], 2000 + k)))
        .collect();
    endpoints.extend(&good);
    assert_eq!(endpoints.len(), burrow_disco::MAX_CALL_ME_MAYBE_ENDPOINTS);
    p.handle_call_me_maybe(t0, &endpoints);
    let sent = pinged(&drain(&mut p));
    assert_eq!(
        sent, good,
        "only the acceptable endpoints, once each, in order"
    );
    assert_eq!(candidates(&p), good.iter().copied().collect());
}

/// A second CallMeMaybe replaces the first: the old addresses are forgotten and not pinged on
/// the next upgrade retry. Before: the set only grew, and all of it was re-pinged forever.
#[test]
fn a_new_call_me_maybe_replaces_the_old_one() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    let first: Vec<SocketAddr> = (0..40u16)
        .map(|k| SocketAddr::from(([198, 51, 100, 7], 1000 + k)))
        .collect();
    let second = vec![addr("203.0.113.5:41641"), addr("192.168.1.20:41641")];
    p.handle_call_me_maybe(t0, &first);
    drain(&mut p);
    p.handle_call_me_maybe(t0 + Duration::from_secs(1), &second);
    assert_eq!(candidates(&p), second.iter().copied().collect());
    drain(&mut p);
    // The next upgrade retry pings the new set only.
    let mut retried = Vec::new();
    let mut t = t0 + Duration::from_secs(1);
    while t < t0 + Duration::from_secs(65) {
        t += Duration::from_millis(500);
        p.handle_timeout(t);
        retried.extend(pinged(&drain(&mut p)));
    }
    assert!(!retried.is_empty(), "upgrade retries happened");
    assert!(
        retried.iter().all(|a| second.contains(a)),
        "an old address was pinged again: {retried:?}"
    );
    // The control plane's list is kept apart: replacing it leaves the CallMeMaybe list alone.
    p.handle_control_endpoints(t, &[addr("198.51.100.99:41641")]);
    p.handle_control_endpoints(t, &[addr("198.51.100.98:41641")]);
    let mut want: BTreeSet<SocketAddr> = second.iter().copied().collect();
    want.insert(addr("198.51.100.98:41641"));
    assert_eq!(candidates(&p), want);
}

/// A peer relaying CallMeMaybes as fast as it can: the pings it gets out of us stay within the
/// budget. Before: 60 pings per message, without limit.
#[test]
fn a_call_me_maybe_flood_is_held_to_the_ping_budget() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    let rate = PathConfig::default().pings;
    let mut sent = 0usize;
    for k in 0..1000u32 {
        let now = t0 + Duration::from_millis(10 * u64::from(k)); // 10 s of 100 messages a second
        let endpoints: Vec<SocketAddr> = (0..60u32)
            .map(|j| SocketAddr::from(([198, 51, 100, (k % 200) as u8 + 1], 1000 + j as u16)))
            .collect();
        p.handle_call_me_maybe(now, &endpoints);
        sent += pinged(&drain(&mut p)).len();
        assert!(candidates(&p).len() <= MAX_REMOTE_CANDIDATES);
    }
    let ceiling = rate.burst as usize + 10 * rate.per_second as usize;
    assert!(sent <= ceiling, "{sent} pings in 10 s (budget {ceiling})");
    assert!(sent >= rate.burst as usize, "the budget is not zero");
}

/// One captured ping replayed from 1,000 spoofed sources: one Pong, one candidate. Fresh
/// captured pings from 1,000 sources: pongs within the budget, candidates within the cap.
/// Before: 1,000 Pongs, 1,000 pings back and 1,000 permanent candidates.
#[test]
fn replayed_pings_from_spoofed_sources_get_one_answer_and_few_candidates() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    p.handle_call_me_maybe(t0, &[addr("203.0.113.5:41641")]);
    drain(&mut p);
    let mut sent = Vec::new();
    for k in 0..1000u32 {
        let from = SocketAddr::from(([198, 51, 100, (k % 250) as u8 + 1], 1000 + k as u16));
        p.handle_ping(t0 + Duration::from_millis(u64::from(k)), 0, from, [7; 12]);
        sent.extend(drain(&mut p));
    }
    assert_eq!(pongs(&sent), 1, "a replayed ping is answered once");
    assert!(pinged(&sent).len() <= 1);
    assert_eq!(
        candidates(&p).len(),
        2,
        "the advertised one and the first source"
    );

    // Distinct transaction IDs (many captured pings): the pong budget and the cap hold.
    let rate = PathConfig::default().pongs;
    let mut sent = Vec::new();
    let start = t0 + Duration::from_secs(2);
    for k in 0..1000u32 {
        let from = SocketAddr::from(([203, 0, 113, (k % 250) as u8 + 1], 2000 + k as u16));
        let mut tx = [0u8; 12];
        tx[..4].copy_from_slice(&k.to_be_bytes());
        p.handle_ping(start + Duration::from_millis(u64::from(k)), 0, from, tx);
        sent.extend(drain(&mut p));
        assert!(candidates(&p).len() <= 1 + MAX_PEER_REFLEXIVE);
    }
    let ceiling = rate.burst as usize + rate.per_second as usize;
    assert!(pongs(&sent) <= ceiling, "{} pongs in 1 s", pongs(&sent));
    assert!(pinged(&sent).len() <= MAX_PEER_REFLEXIVE);
}

/// Peer-reflexive candidates that go quiet are forgotten; ones still pinging are kept.
/// Before: kept forever (and re-pinged every upgrade retry).
#[test]
fn peer_reflexive_candidates_age_out() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    let quiet = addr("198.51.100.50:40000");
    let chatty = addr("198.51.100.51:40001");
    p.handle_ping(t0, 0, quiet, [1; 12]);
    p.handle_ping(t0, 0, chatty, [2; 12]);
    assert_eq!(candidates(&p), [quiet, chatty].into_iter().collect());
    let mut t = t0;
    let mut k = 3u8;
    while t < t0 + PEER_REFLEXIVE_TTL + Duration::from_secs(30) {
        t += Duration::from_secs(5);
        if t.duration_since(t0).as_secs() % 30 == 0 {
            p.handle_ping(t, 0, chatty, [k; 12]);
            k += 1;
        }
        p.handle_timeout(t);
        drain(&mut p);
    }
    assert_eq!(candidates(&p), [chatty].into_iter().collect());
}

/// An unusable source never gets a Pong or becomes a candidate.
#[test]
fn pings_from_unusable_sources_are_dropped() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    for (k, from) in [
        "127.0.0.1:41641",
        "169.254.3.4:41641",
        "[::1]:41641",
        "0.0.0.0:1",
    ]
    .map(addr)
    .into_iter()
    .enumerate()
    {
        assert!(!p.handle_ping(t0, 0, from, [k as u8; 12]));
    }
    assert!(drain(&mut p).is_empty());
    assert!(candidates(&p).is_empty());
}

/// A flood of fresh-looking pings from spoofed sources spends the pong budget, but the peer's
/// pings on the validated path are still answered (the path does not die of it).
#[test]
fn the_validated_path_is_answered_through_a_pong_flood() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    let peer = addr("203.0.113.5:41641");
    p.handle_call_me_maybe(t0, &[peer]);
    let tx = drain(&mut p)
        .into_iter()
        .find_map(|t| match t.msg {
            Message::Ping { tx_id, .. } => Some(tx_id),
            _ => None,
        })
        .unwrap();
    assert!(p.handle_pong(t0 + Duration::from_millis(20), 0, peer, tx));
    assert_eq!(p.route(), Route::Direct(peer));
    let now = t0 + Duration::from_millis(30);
    for k in 0..500u32 {
        let mut tx = [1u8; 12];
        tx[..4].copy_from_slice(&k.to_be_bytes());
        let from = SocketAddr::from(([198, 51, 100, 9], 3000 + k as u16));
        p.handle_ping(now, 0, from, tx);
    }
    drain(&mut p);
    assert!(
        p.handle_ping(now, 0, peer, [0xee; 12]),
        "the path's own ping"
    );
    assert_eq!(pongs(&drain(&mut p)), 1);
}

/// Birthday targets: only the peer's advertised public endpoints, and at most two.
#[test]
fn birthday_targets_are_a_few_advertised_public_endpoints() {
    let t0 = Instant::now();
    let mut p = paths(t0);
    let mut endpoints = vec![
        addr("192.168.1.20:41641"),
        addr("127.0.0.1:41641"),
        addr("10.0.0.5:41641"),
    ];
    endpoints.extend((0..50u16).map(|k| SocketAddr::from(([198, 51, 100, 7], 1000 + k))));
    p.handle_call_me_maybe(t0, &endpoints);
    // A peer-reflexive address is not something the peer advertised.
    p.handle_ping(t0, 0, addr("203.0.113.77:5555"), [3; 12]);
    assert_eq!(
        p.advertised_public(MAX_BIRTHDAY_TARGETS),
        vec![addr("198.51.100.7:1000"), addr("198.51.100.7:1001")]
    );
}

/// Answers every direct ping in `sent` with a pong from its destination.
fn answer_all(p: &mut PeerPaths, now: Instant, sent: &[Transmit]) {
    for t in sent {
        if let (Dst::Direct(a), Message::Ping { tx_id, .. }) = (t.dst, &t.msg) {
            p.handle_pong(now, 0, a, *tx_id);
        }
    }
}

#[test]
fn only_the_peer_itself_withdrawing_a_whole_family_ends_a_path_and_a_replay_moves_nothing() {
    let t0 = Instant::now();
    let (b4, b6, b6_other) = (
        addr("198.51.100.2:41641"),
        addr("[2001:db8:2::2]:41641"),
        addr("[2001:db8:2::77]:41641"),
    );
    let mut p = paths(t0);
    p.set_local_candidates(
        t0,
        vec![
            Candidate::direct(addr("203.0.113.1:41641"), CandidateSource::Stun),
            Candidate::direct(addr("[2001:db8:1::1]:41641"), CandidateSource::Interface),
        ],
    );
    p.handle_call_me_maybe(t0, &[b4, b6]);
    p.handle_control_endpoints(t0, &[b4, b6]);
    let sent = drain(&mut p);
    answer_all(&mut p, t0, &sent);
    assert_eq!(p.route(), Route::Direct(b6));

    // The control plane's list (anyone who compromised or confused it) cannot withdraw.
    p.handle_control_endpoints(t0, &[b4]);
    assert_eq!(p.route(), Route::Direct(b6));
    // The peer's own list moving within a family (another IPv6 address) withdraws nothing
    // at once: the path is left to its pongs.
    p.handle_call_me_maybe(t0, &[b4, b6_other]);
    assert_eq!(p.route(), Route::Direct(b6));
    assert!(!p.attempts().any(|a| a.outcome == Outcome::Dead));
    // A CallMeMaybe without IPv6 (replayed from when the peer had none, or a real
    // withdrawal) only asks: one ping to the IPv6 path, the relay carrying data meanwhile.
    p.handle_call_me_maybe(t0, &[b4]);
    assert_eq!(p.route(), Route::Direct(b6));
    assert!(
        p.on_probation(b6),
        "the relay carries data while it is checked"
    );
    let sent = drain(&mut p);
    assert!(pinged(&sent).contains(&b6), "{sent:?}");
    // Answered (a replay: the peer still has IPv6): nothing moves.
    answer_all(&mut p, t0, &sent);
    let later = t0 + Duration::from_secs(6);
    p.handle_timeout(later);
    assert_eq!(p.route(), Route::Direct(b6));
    assert!(!p.on_probation(b6));
    // A real withdrawal: the check goes unanswered and the path dies after one pong timeout,
    // not three; IPv4 (answering) takes over.
    let t1 = later + Duration::from_millis(100);
    p.handle_call_me_maybe(t1, &[b4, b6]); // the peer's real list again
    let sent = drain(&mut p);
    answer_all(&mut p, t1, &sent);
    p.handle_call_me_maybe(t1, &[b4]);
    let sent = drain(&mut p);
    let v4_only: Vec<Transmit> = sent
        .into_iter()
        .filter(|t| t.dst != Dst::Direct(b6))
        .collect();
    answer_all(&mut p, t1, &v4_only);
    p.handle_timeout(t1 + Duration::from_secs(5));
    assert_eq!(p.route(), Route::Direct(b4));
    assert!(
        p.attempts()
            .any(|a| a.addr == b6 && a.outcome == Outcome::Dead),
        "{:?}",
        p.attempts().collect::<Vec<_>>()
    );
}
