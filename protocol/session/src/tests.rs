//! The session machine against hand-written expectations, and its peers against a reference
//! model of the netmap under random streams of netmaps and deltas.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_control::{
    Delta, DropReason, FilterRule, MapMessage, NetMap, NodeInfo, PeerInfo, PortRange,
    RegisterResponse, Verdict,
};
use burrow_wg::{PrivateKey, PublicKey};
use proptest::prelude::*;

use crate::{
    Failure, Input, Request, RequestKind, Session, SessionConfig, SessionError, SessionEvent,
};

fn key(n: u8) -> PublicKey {
    PrivateKey::from_bytes([n; 32]).public_key()
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("n{id}"),
        user: "alice".into(),
        tags: vec![],
        addresses: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, id as u8))],
    }
}

fn peer(id: u64, port: u16) -> PeerInfo {
    PeerInfo {
        node: node(id),
        node_key: key(id as u8).to_base64(),
        disco_key: key(100 + id as u8).to_base64(),
        endpoints: vec![SocketAddr::from(([192, 0, 2, id as u8], port))],
        home_region: 1,
    }
}

fn netmap(peers: Vec<PeerInfo>) -> NetMap {
    NetMap {
        node: node(1),
        peers,
        filter: vec![],
        derp: vec![],
        relay: Default::default(),
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::new("n1", key(200));
    c.auth_key = Some("burrowkey-test".into());
    c.backoff_jitter = 0.0; // exact waits below; the jitter has its own test
    c
}

/// A session registered and following, with every event so far drained.
fn following(now: Instant, peers: Vec<PeerInfo>) -> Session {
    let mut s = Session::new(config(), now);
    assert!(matches!(s.poll_transmit(), Some(Request::Register(_))));
    s.handle_input(
        now,
        Input::Registered(RegisterResponse {
            node: node(1),
            secret: "sec".into(),
        }),
    );
    assert_eq!(
        s.poll_transmit(),
        Some(Request::OpenMap {
            secret: "sec".into(),
            since: None,
        })
    );
    s.handle_input(now, Input::MapOpened(netmap(peers)));
    drain(&mut s);
    s
}

/// The driver's report of a failed request.
fn failed(request: RequestKind, failure: Failure) -> Input {
    Input::Failed { request, failure }
}

fn drain(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn upserts(events: &[SessionEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::PeerUpsert { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn removes(events: &[SessionEvent]) -> Vec<PublicKey> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::PeerRemove { key, .. } => Some(*key),
            _ => None,
        })
        .collect()
}

/// A UDP packet from `src` to `dst`, port 7 to 9.
fn udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, 7, 0, 9, 0, 8, 0, 0]);
    p
}

#[test]
fn registers_then_opens_the_map_and_hands_its_peers_to_the_engine() {
    let now = Instant::now();
    let mut s = Session::new(config(), now);
    let Some(Request::Register(body)) = s.poll_transmit() else {
        panic!("registration first")
    };
    assert_eq!(body.auth_key.as_deref(), Some("burrowkey-test"));
    assert_eq!(body.disco_key, key(200).to_base64());
    s.handle_input(
        now,
        Input::Registered(RegisterResponse {
            node: node(1),
            secret: "sec".into(),
        }),
    );
    assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
    s.handle_input(now, Input::MapOpened(netmap(vec![peer(2, 1), peer(3, 1)])));
    let events = drain(&mut s);
    assert_eq!(events[0], SessionEvent::SecretChanged("sec".into()));
    assert!(matches!(events[1], SessionEvent::NetMap { .. }));
    assert_eq!(upserts(&events), ["n2", "n3"]);
    assert_eq!(s.peer_for_ip("100.64.0.3".parse().unwrap()), Some(key(3)));
}

#[test]
fn a_node_with_a_secret_opens_the_map_without_registering() {
    let mut c = config();
    c.secret = Some("kept".into());
    let mut s = Session::new(c, Instant::now());
    assert_eq!(
        s.poll_transmit(),
        Some(Request::OpenMap {
            secret: "kept".into(),
            since: None,
        })
    );
}

/// A stream that is lost reopens after the last change it delivered in full, and a resumed
/// stream keeps the netmap it had.
#[test]
fn a_lost_stream_resumes_after_its_last_change() {
    let now = Instant::now();
    let mut s = following(now, vec![peer(2, 1)]);
    s.handle_input(now, Input::MapSeen(7));
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerUpsert(peer(3, 1)))),
    );
    s.handle_input(now, Input::MapSeen(8));
    s.handle_input(now, Input::MapLost);
    let later = s.poll_timeout().expect("a reconnect is due");
    s.handle_timeout(later);
    assert_eq!(
        s.poll_transmit(),
        Some(Request::OpenMap {
            secret: "sec".into(),
            since: Some(8),
        })
    );
    drain(&mut s);
    s.handle_input(later, Input::MapResumed);
    assert_eq!(
        s.peer_for_ip("100.64.0.3".parse().unwrap()),
        Some(key(3)),
        "kept"
    );
    s.handle_input(
        later,
        Input::Map(MapMessage::Delta(Delta::PeerRemove { id: 2 })),
    );
    assert_eq!(
        s.peer_for_ip("100.64.0.2".parse().unwrap()),
        None,
        "followed"
    );
}

#[test]
fn without_a_secret_or_an_auth_key_the_session_stops() {
    let mut s = Session::new(SessionConfig::new("n1", key(200)), Instant::now());
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(
        s.poll_event(),
        Some(SessionEvent::Failed(SessionError::NotRegistered))
    );
}

#[test]
fn a_resync_changes_only_what_changed_and_removes_the_missing() {
    let now = Instant::now();
    let mut s = following(now, vec![peer(2, 1), peer(3, 1), peer(4, 1)]);
    s.handle_input(now, Input::MapLost);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_millis(500)));
    s.handle_timeout(now + Duration::from_millis(500));
    assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
    // While the stream was down: 3 left, 4 moved, 5 joined; 2 is as it was.
    let t = now + Duration::from_secs(1);
    s.handle_input(
        t,
        Input::MapOpened(netmap(vec![peer(2, 1), peer(4, 2), peer(5, 1)])),
    );
    let events = drain(&mut s);
    assert_eq!(upserts(&events), ["n4", "n5"]);
    assert_eq!(removes(&events), [key(3)]);
    assert_eq!(s.peer_for_ip("100.64.0.3".parse().unwrap()), None);
    assert_eq!(s.peer_count(), 3);
}

#[test]
fn deltas_upsert_remove_and_rekey() {
    let now = Instant::now();
    let mut s = following(now, vec![peer(2, 1)]);
    // The same peer again: nothing for the engine.
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerUpsert(peer(2, 1)))),
    );
    assert!(drain(&mut s).is_empty());
    // New endpoints: an update.
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerUpsert(peer(2, 9)))),
    );
    assert_eq!(upserts(&drain(&mut s)), ["n2"]);
    // A new node key for the same node: the old key goes, the new one comes.
    let mut rekeyed = peer(2, 9);
    rekeyed.node_key = key(42).to_base64();
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerUpsert(rekeyed))),
    );
    let events = drain(&mut s);
    assert_eq!(removes(&events), [key(2)]);
    assert_eq!(upserts(&events), ["n2"]);
    assert_eq!(s.peer_for_ip("100.64.0.2".parse().unwrap()), Some(key(42)));
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerRemove { id: 2 })),
    );
    assert_eq!(removes(&drain(&mut s)), [key(42)]);
    assert_eq!(s.peer_count(), 0);
    // Removing an unknown id is nothing.
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerRemove { id: 2 })),
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_peer_claiming_anothers_address_or_key_is_refused() {
    let now = Instant::now();
    let mut s = following(now, vec![peer(2, 1)]);
    let mut thief = peer(3, 1);
    thief.node.addresses = peer(2, 1).node.addresses;
    s.handle_input(now, Input::Map(MapMessage::Delta(Delta::PeerUpsert(thief))));
    let events = drain(&mut s);
    assert!(
        matches!(&events[..], [SessionEvent::PeerRefused { name, .. }] if name == "n3"),
        "{events:?}"
    );
    let mut twin = peer(4, 1);
    twin.node_key = peer(2, 1).node_key;
    s.handle_input(now, Input::Map(MapMessage::Delta(Delta::PeerUpsert(twin))));
    assert!(matches!(
        &drain(&mut s)[..],
        [SessionEvent::PeerRefused { .. }]
    ));
    let mut garbled = peer(5, 1);
    garbled.disco_key = "not base64!".into();
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerUpsert(garbled))),
    );
    assert!(matches!(
        &drain(&mut s)[..],
        [SessionEvent::PeerRefused { .. }]
    ));
    assert_eq!(s.peer_for_ip("100.64.0.2".parse().unwrap()), Some(key(2)));
    assert_eq!(s.peer_count(), 1);
}

#[test]
fn reconnects_back_off_and_a_forgotten_node_registers_again() {
    let now = Instant::now();
    let mut s = following(now, vec![]);
    s.handle_input(now, Input::MapLost);
    let mut t = now;
    let mut waits = Vec::new();
    for _ in 0..7 {
        let due = s.poll_timeout().expect("a back-off");
        waits.push(due - t);
        t = due;
        s.handle_timeout(t);
        assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
        s.handle_input(t, failed(RequestKind::OpenMap, Failure::Transient));
    }
    let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    // The server forgot the running node (an admin removed it, or it expired): even with an
    // auth key it stays out.
    s.handle_timeout(s.poll_timeout().unwrap());
    assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
    s.handle_input(t, failed(RequestKind::OpenMap, Failure::Unauthorized));
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(
        drain(&mut s),
        [SessionEvent::Failed(SessionError::NodeRemoved)]
    );
}

#[test]
fn at_start_a_forgotten_node_registers_again_with_its_auth_key() {
    let mut c = config();
    c.secret = Some("old".into());
    let now = Instant::now();
    let mut s = Session::new(c, now);
    assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
    s.handle_input(now, failed(RequestKind::OpenMap, Failure::Unauthorized));
    let Some(Request::Register(body)) = s.poll_transmit() else {
        panic!("registers again")
    };
    assert_eq!(body.auth_key.as_deref(), Some("burrowkey-test"));
}

#[test]
fn a_forgotten_node_without_an_auth_key_stops() {
    let mut c = SessionConfig::new("n1", key(200));
    c.secret = Some("old".into());
    let now = Instant::now();
    let mut s = Session::new(c, now);
    assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
    s.handle_input(now, failed(RequestKind::OpenMap, Failure::Unauthorized));
    assert_eq!(
        drain(&mut s),
        [SessionEvent::Failed(SessionError::NodeRemoved)]
    );
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn endpoints_are_posted_on_change_only_spaced_and_retried() {
    let now = Instant::now();
    let a: Vec<SocketAddr> = vec!["192.0.2.1:41641".parse().unwrap()];
    let b: Vec<SocketAddr> = vec!["192.0.2.1:41642".parse().unwrap()];
    let mut s = Session::new(config(), now);
    // Found before the stream opened: posted once it is.
    s.handle_input(now, Input::LocalEndpoints(a.clone()));
    assert!(matches!(s.poll_transmit(), Some(Request::Register(_))));
    assert_eq!(s.poll_transmit(), None);
    s.handle_input(
        now,
        Input::Registered(RegisterResponse {
            node: node(1),
            secret: "sec".into(),
        }),
    );
    s.poll_transmit();
    s.handle_input(now, Input::MapOpened(netmap(vec![])));
    let Some(Request::PostEndpoints { request, .. }) = s.poll_transmit() else {
        panic!("a post")
    };
    assert_eq!(request.endpoints, a);
    // A change while the post is in flight waits for it.
    s.handle_input(now, Input::LocalEndpoints(b.clone()));
    assert_eq!(s.poll_transmit(), None);
    s.handle_input(now, Input::EndpointsPosted(a.clone()));
    // ... and for the spacing.
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(1)));
    let t = now + Duration::from_secs(1);
    s.handle_timeout(t);
    let Some(Request::PostEndpoints { request, .. }) = s.poll_transmit() else {
        panic!("the changed set is posted")
    };
    assert_eq!(request.endpoints, b);
    s.handle_input(t, failed(RequestKind::PostEndpoints, Failure::Transient));
    assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)));
    s.handle_timeout(t + Duration::from_secs(5));
    assert!(matches!(
        s.poll_transmit(),
        Some(Request::PostEndpoints { .. })
    ));
    s.handle_input(t, Input::EndpointsPosted(b.clone()));
    // The same set again: nothing.
    s.handle_input(t + Duration::from_secs(9), Input::LocalEndpoints(b.clone()));
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.posted_endpoints(), Some(&b[..]));
}

#[test]
fn the_filter_follows_the_netmap_and_flows_let_answers_in() {
    let now = Instant::now();
    let mut s = following(now, vec![peer(2, 1)]);
    let from_peer = udp([100, 64, 0, 2], [100, 64, 0, 1]);
    // No rules: nothing gets in.
    assert!(matches!(
        s.admit_inbound(now, &key(2), &from_peer),
        Verdict::Drop(DropReason::Denied)
    ));
    // An answer to what this node sent does.
    let out = udp([100, 64, 0, 1], [100, 64, 0, 2]);
    assert_eq!(s.route_outbound(now, &out), Some(key(2)));
    let mut answer = udp([100, 64, 0, 2], [100, 64, 0, 1]);
    answer[20..24].copy_from_slice(&[0, 9, 0, 7]);
    assert_eq!(s.admit_inbound(now, &key(2), &answer), Verdict::Reply);
    // No route to an address no peer owns.
    assert_eq!(
        s.route_outbound(now, &udp([100, 64, 0, 1], [100, 64, 0, 77])),
        None
    );
    // The policy changes: the peer may now reach this node.
    let rule = FilterRule {
        src: vec!["100.64.0.2/32".parse().unwrap()],
        dst: vec![("100.64.0.1/32".parse().unwrap(), PortRange::ALL)],
        protos: vec![17],
    };
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::Filter { rules: vec![rule] })),
    );
    assert_eq!(drain(&mut s), [SessionEvent::FilterChanged]);
    assert_eq!(s.admit_inbound(now, &key(2), &from_peer), Verdict::Accept);
    // Removed: its packets stop at once, whatever the engine still holds.
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerRemove { id: 2 })),
    );
    assert_eq!(
        s.admit_inbound(now, &key(2), &from_peer),
        Verdict::Drop(DropReason::NotAPeer)
    );
}

/// What the netmap says a node's peers are: the last whole netmap with the deltas since.
#[derive(Debug, Clone)]
enum Step {
    Whole(Vec<(u64, u16)>),
    Upsert(u64, u16),
    Remove(u64),
    Lost,
}

fn step() -> impl Strategy<Value = Step> {
    let id = 2u64..8;
    prop_oneof![
        proptest::collection::btree_map(id.clone(), 1u16..4, 0..6)
            .prop_map(|m| Step::Whole(m.into_iter().collect())),
        (id.clone(), 1u16..4).prop_map(|(i, p)| Step::Upsert(i, p)),
        id.prop_map(Step::Remove),
        Just(Step::Lost),
    ]
}

proptest! {
    /// Whatever the stream does, the peers the engine was told about (applying every event in
    /// order) are exactly those the netmap says, with the netmap's endpoints, and every
    /// tailnet address routes to its owner.
    #[test]
    fn the_engine_holds_what_the_netmap_says(steps in proptest::collection::vec(step(), 1..40)) {
        let now = Instant::now();
        let mut s = following(now, vec![]);
        let mut model: BTreeMap<u64, u16> = BTreeMap::new();
        let mut engine: BTreeMap<PublicKey, Vec<SocketAddr>> = BTreeMap::new();
        let mut t = now;
        for step in steps {
            t += Duration::from_secs(1);
            match step {
                Step::Whole(peers) => {
                    model = peers.iter().copied().collect();
                    let map = netmap(peers.iter().map(|&(i, p)| peer(i, p)).collect());
                    s.handle_input(t, Input::Map(MapMessage::NetMap(map)));
                }
                Step::Upsert(i, p) => {
                    model.insert(i, p);
                    s.handle_input(t, Input::Map(MapMessage::Delta(Delta::PeerUpsert(peer(i, p)))));
                }
                Step::Remove(i) => {
                    model.remove(&i);
                    s.handle_input(t, Input::Map(MapMessage::Delta(Delta::PeerRemove { id: i })));
                }
                Step::Lost => {
                    s.handle_input(t, Input::MapLost);
                    t = s.poll_timeout().unwrap();
                    s.handle_timeout(t);
                    let opened = matches!(s.poll_transmit(), Some(Request::OpenMap { .. }));
                    prop_assert!(opened, "reopens the stream");
                    let map = netmap(model.iter().map(|(&i, &p)| peer(i, p)).collect());
                    s.handle_input(t, Input::MapOpened(map));
                }
            }
            for e in std::iter::from_fn(|| s.poll_event()) {
                match e {
                    SessionEvent::PeerUpsert { config, .. } => {
                        engine.insert(config.node_key, config.endpoints);
                    }
                    SessionEvent::PeerRemove { key, .. } => {
                        prop_assert!(engine.remove(&key).is_some(), "removed a peer never added");
                    }
                    SessionEvent::PeerRefused { .. } => prop_assert!(false, "nothing here is refused"),
                    _ => {}
                }
            }
            let expected: BTreeMap<PublicKey, Vec<SocketAddr>> = model
                .iter()
                .map(|(&i, &p)| (key(i as u8), peer(i, p).endpoints))
                .collect();
            prop_assert_eq!(&engine, &expected);
            for i in 2u64..8 {
                let ip = IpAddr::V4(Ipv4Addr::new(100, 64, 0, i as u8));
                prop_assert_eq!(s.peer_for_ip(ip), model.contains_key(&i).then(|| key(i as u8)));
            }
        }
    }
}

#[test]
fn at_start_a_permanent_refusal_stops_the_session_and_later_it_is_retried() {
    let now = Instant::now();
    let mut s = Session::new(config(), now);
    s.poll_transmit();
    s.handle_input(
        now,
        failed(
            RequestKind::Register,
            Failure::Permanent("409: the disco key is taken".into()),
        ),
    );
    assert_eq!(
        drain(&mut s),
        [SessionEvent::Failed(SessionError::Unusable(
            "409: the disco key is taken".into()
        ))]
    );
    // Once running, the same answer is waited out (the server may be mid-upgrade).
    let mut s = following(now, vec![]);
    s.handle_input(now, Input::MapLost);
    s.handle_timeout(s.poll_timeout().unwrap());
    s.poll_transmit();
    s.handle_input(
        now,
        failed(RequestKind::OpenMap, Failure::Permanent("503".into())),
    );
    assert!(drain(&mut s).is_empty());
    assert!(s.poll_timeout().is_some());
}

#[test]
fn a_server_that_forgets_the_node_again_at_once_is_not_looped_on() {
    let mut c = config();
    c.secret = Some("old".into());
    let now = Instant::now();
    let mut s = Session::new(c, now);
    for round in 0..2 {
        assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
        s.handle_input(now, failed(RequestKind::OpenMap, Failure::Unauthorized));
        if round == 0 {
            assert!(matches!(s.poll_transmit(), Some(Request::Register(_))));
            s.handle_input(
                now,
                Input::Registered(RegisterResponse {
                    node: node(1),
                    secret: "new".into(),
                }),
            );
        }
    }
    let events = drain(&mut s);
    assert_eq!(
        events.last(),
        Some(&SessionEvent::Failed(SessionError::NodeRemoved))
    );
}

#[test]
fn secrets_stay_out_of_debug() {
    let now = Instant::now();
    let mut c = config();
    c.secret = Some("s3cr3t-bearer".into());
    let mut s = Session::new(c, now);
    let request = s.poll_transmit().unwrap();
    let event = SessionEvent::SecretChanged("s3cr3t-bearer".into());
    let post = Request::PostEndpoints {
        secret: "s3cr3t-bearer".into(),
        request: burrow_control::EndpointsRequest {
            endpoints: vec![],
            home_region: 1,
            relay_port: None,
            fixed_mapping: false,
        },
    };
    for text in [
        format!("{s:?}"),
        format!("{request:?}"),
        format!("{event:?}"),
        format!("{post:?}"),
        format!("{:?}", config()),
    ] {
        assert!(
            !text.contains("s3cr3t-bearer") && !text.contains("burrowkey-test"),
            "{text}"
        );
    }
}

#[test]
fn back_off_waits_are_stretched_by_up_to_a_quarter_differently_per_seed() {
    let now = Instant::now();
    let first_wait = |seed: u64| {
        let mut c = config();
        c.backoff_jitter = 0.25;
        c.seed = seed;
        c.secret = Some("kept".into());
        let mut s = Session::new(c, now);
        s.poll_transmit();
        s.handle_input(now, failed(RequestKind::OpenMap, Failure::Transient));
        s.poll_timeout().unwrap() - now
    };
    let waits: Vec<Duration> = (0..20).map(first_wait).collect();
    for w in &waits {
        assert!(
            *w >= Duration::from_millis(500) && *w <= Duration::from_millis(625),
            "{w:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
    assert!(distinct.len() > 10, "{waits:?}");
    assert_eq!(first_wait(3), first_wait(3), "the same seed, the same wait");
}

fn relay_policies(events: &[SessionEvent]) -> Vec<burrow_node::PeerRelayPolicy> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::PeerRelayPolicy(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn grants(relays: &[u64], clients: &[u64]) -> burrow_control::RelayGrants {
    burrow_control::RelayGrants {
        relays: relays.iter().copied().collect(),
        clients: clients.iter().copied().collect(),
    }
}

#[test]
fn relay_grants_become_the_engines_peer_relay_policy() {
    let now = Instant::now();
    let mut s = Session::new(config(), now);
    s.poll_transmit();
    s.handle_input(
        now,
        Input::Registered(RegisterResponse {
            node: node(1),
            secret: "sec".into(),
        }),
    );
    s.poll_transmit();
    let mut map = netmap(vec![peer(2, 41641), peer(3, 41641), peer(4, 41641)]);
    // Peer 3 relays for us; we relay for 2 and 4; 9 is no peer of ours and is ignored.
    map.relay = grants(&[3, 9], &[2, 4]);
    s.handle_input(now, Input::MapOpened(map));
    let p = relay_policies(&drain(&mut s));
    assert_eq!(p.len(), 1, "one policy for the whole netmap");
    assert_eq!(p[0].relays, [key(3)].into());
    assert_eq!(p[0].clients, [key(2), key(4)].into());
    assert_eq!(s.peer_relay_policy(), &p[0]);

    // A delta moves the grants; an unchanged policy is not repeated.
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::Relay(grants(&[3], &[2])))),
    );
    let p = relay_policies(&drain(&mut s));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].clients, [key(2)].into());
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::Filter { rules: vec![] })),
    );
    assert!(relay_policies(&drain(&mut s)).is_empty());

    // The relay leaves the netmap: it is no candidate any more, even with the grant held.
    s.handle_input(
        now,
        Input::Map(MapMessage::Delta(Delta::PeerRemove { id: 3 })),
    );
    let p = relay_policies(&drain(&mut s));
    assert_eq!(p.len(), 1);
    assert!(p[0].relays.is_empty());
    assert_eq!(p[0].clients, [key(2)].into());
}

#[test]
fn a_relay_reports_its_port_and_its_fixed_mapping_with_the_endpoints() {
    let now = Instant::now();
    let mut c = config();
    c.relay_port = Some(7000);
    c.secret = Some("sec".into());
    let mut s = Session::new(c, now);
    assert!(matches!(s.poll_transmit(), Some(Request::OpenMap { .. })));
    s.handle_input(now, Input::MapOpened(netmap(vec![])));
    let a = vec![SocketAddr::from(([192, 0, 2, 1], 41641))];
    s.handle_input(now, Input::LocalEndpoints(a.clone()));
    let Some(Request::PostEndpoints { request, .. }) = s.poll_transmit() else {
        panic!("a post")
    };
    assert_eq!(request.relay_port, Some(7000));
    assert!(!request.fixed_mapping);
    s.handle_input(now, Input::EndpointsPosted(a.clone()));
    // STUN finds the mapping fixed: posted again (after the spacing) with the same endpoints.
    s.handle_input(now, Input::FixedMapping(true));
    assert_eq!(s.poll_transmit(), None, "spaced");
    let t = now + Duration::from_secs(1);
    s.handle_timeout(t);
    let Some(Request::PostEndpoints { request, .. }) = s.poll_transmit() else {
        panic!("a post for the mapping")
    };
    assert_eq!(request.endpoints, a);
    assert!(request.fixed_mapping);
    s.handle_input(t, Input::EndpointsPosted(a.clone()));
    s.handle_timeout(t + Duration::from_secs(5));
    assert_eq!(s.poll_transmit(), None, "nothing new");
}

#[test]
fn a_node_that_does_not_relay_never_posts_for_its_mapping() {
    let now = Instant::now();
    let mut s = following(now, vec![]);
    let a = vec![SocketAddr::from(([192, 0, 2, 1], 41641))];
    s.handle_input(now, Input::LocalEndpoints(a.clone()));
    let Some(Request::PostEndpoints { request, .. }) = s.poll_transmit() else {
        panic!("a post")
    };
    assert_eq!((request.relay_port, request.fixed_mapping), (None, false));
    s.handle_input(now, Input::EndpointsPosted(a));
    s.handle_input(now, Input::FixedMapping(true));
    s.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(s.poll_transmit(), None);
}
