//! ACL policies: parsing (JSON and HuJSON), errors with line numbers, compilation, the
//! receiver's filter, and the tailnet's incremental netmaps.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use burrow_control::netmap::address_v4;
use burrow_control::{
    parse_packet, Delta, Filter, NodeInfo, PeerInfo, Policy, PolicyError, Tailnet, Verdict,
};
use proptest::prelude::*;

const POLICY: &str = r#"{
  // Who is who.
  "groups": {
    "group:eng": ["alice", "bob"],
    "group:all": ["group:eng", "carol"],
  },
  "tagOwners": { "tag:db": ["group:eng"], "tag:ci": ["alice"] },
  "hosts": { "office": "192.168.10.0/24" },
  "acls": [
    // Engineers reach the databases on 5432 only.
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"], "proto": "tcp" },
    // CI reaches everything on 22 and 8000-8100.
    { "action": "accept", "src": ["tag:ci"], "dst": ["*:22,8000-8100"] },
    // Everyone pings everyone.
    { "action": "accept", "src": ["group:all"], "dst": ["*:*"], "proto": "icmp" },
    { "action": "accept", "src": ["office"], "dst": ["carol:80"] },
  ],
}"#;

fn node(id: u64, user: &str, tags: &[&str]) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("n{id}"),
        user: user.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        addresses: vec![address_v4(id as u32)],
    }
}

fn ip(n: &NodeInfo) -> [u8; 4] {
    match n.addresses[0] {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!(),
    }
}

/// An IPv4 packet: TCP/UDP with ports, or ICMP with a type.
/// The sending peer in the filter tests.
const PEER: burrow_control::PeerTag = [7; 32];

fn packet(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    if proto == 1 {
        p.extend_from_slice(&[dport as u8, 0, 0, 0, 0, 0, 0, 0]);
    } else {
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
    }
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

#[test]
fn hujson_policy_compiles_and_filters_at_the_receiver() {
    let (_, policy) = Policy::check(POLICY).unwrap();
    let alice = node(1, "alice", &[]);
    let carol = node(2, "carol", &[]);
    let db = node(3, "alice", &["tag:db"]);
    let ci = node(4, "alice", &["tag:ci"]);
    let nodes = vec![alice.clone(), carol.clone(), db.clone(), ci.clone()];
    let t = Instant::now();

    let mut db_filter = Filter::new(policy.filter_for(&db, &nodes));
    assert_eq!(
        db_filter.inbound(t, PEER, &packet(6, ip(&alice), ip(&db), 40000, 5432)),
        Verdict::Accept
    );
    assert!(matches!(
        db_filter.inbound(t, PEER, &packet(6, ip(&alice), ip(&db), 40000, 22)),
        Verdict::Drop(_)
    ));
    assert!(
        matches!(
            db_filter.inbound(t, PEER, &packet(17, ip(&alice), ip(&db), 40000, 5432)),
            Verdict::Drop(_)
        ),
        "tcp only"
    );
    assert!(
        matches!(
            db_filter.inbound(t, PEER, &packet(6, ip(&carol), ip(&db), 40000, 5432)),
            Verdict::Drop(_)
        ),
        "carol is not in group:eng"
    );
    assert_eq!(
        db_filter.inbound(t, PEER, &packet(6, ip(&ci), ip(&db), 40000, 8050)),
        Verdict::Accept,
        "ci on 8000-8100"
    );
    assert!(matches!(
        db_filter.inbound(t, PEER, &packet(6, ip(&ci), ip(&db), 40000, 8101)),
        Verdict::Drop(_)
    ));
    assert_eq!(
        db_filter.inbound(t, PEER, &packet(1, ip(&carol), ip(&db), 0, 8)),
        Verdict::Accept,
        "nested group pings"
    );
    // A tagged node is its tags, not its owner: ci (alice's) does not get alice's rights.
    assert!(matches!(
        db_filter.inbound(t, PEER, &packet(6, ip(&ci), ip(&db), 40000, 5432)),
        Verdict::Drop(_)
    ));

    // Host aliases and CIDRs: the office network reaches carol on 80.
    let mut carol_filter = Filter::new(policy.filter_for(&carol, &nodes));
    assert_eq!(
        carol_filter.inbound(t, PEER, &packet(6, [192, 168, 10, 7], ip(&carol), 1234, 80)),
        Verdict::Accept
    );
    assert!(matches!(
        carol_filter.inbound(t, PEER, &packet(6, [192, 168, 11, 7], ip(&carol), 1234, 80)),
        Verdict::Drop(_)
    ));

    // Visibility: carol sees no database (she may not reach it and it may not reach her)...
    let seen = |n: &NodeInfo| {
        policy
            .visible_peers(n, &nodes)
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>()
    };
    assert!(!seen(&carol).contains(&db.id) || policy.may_talk(&carol, &db));
    assert!(seen(&alice).contains(&db.id));
    assert!(
        seen(&db).contains(&alice.id),
        "the db hears from alice, so it knows her"
    );
}

#[test]
fn replies_to_flows_the_receiver_started_get_in() {
    let (_, policy) = Policy::check(POLICY).unwrap();
    let alice = node(1, "alice", &[]);
    let db = node(3, "alice", &["tag:db"]);
    let nodes = vec![alice.clone(), db.clone()];
    let t = Instant::now();
    // alice's own filter: nothing lets the db connect to alice...
    let mut f = Filter::new(policy.filter_for(&alice, &nodes));
    let answer = packet(6, ip(&db), ip(&alice), 5432, 40000);
    assert!(matches!(f.inbound(t, PEER, &answer), Verdict::Drop(_)));
    // ...but after alice connects to it, its answers come in, for a while.
    f.outbound(t, PEER, &packet(6, ip(&alice), ip(&db), 40000, 5432));
    assert_eq!(f.inbound(t, PEER, &answer), Verdict::Reply);
    assert!(
        matches!(
            f.inbound(t, PEER, &packet(6, ip(&db), ip(&alice), 5432, 40001)),
            Verdict::Drop(_)
        ),
        "another port"
    );
    assert!(
        matches!(
            f.inbound(t + Duration::from_secs(121), PEER, &answer),
            Verdict::Drop(_)
        ),
        "idle flow forgotten"
    );
    // ICMP echo reply after an echo request.
    f.outbound(t, PEER, &packet(1, ip(&alice), ip(&db), 0, 8));
    assert_eq!(
        f.inbound(t, PEER, &packet(1, ip(&db), ip(&alice), 0, 0)),
        Verdict::Reply
    );
    // Not IP at all.
    assert!(matches!(
        f.inbound(t, PEER, &[0x10, 1, 2]),
        Verdict::Drop(burrow_control::DropReason::NotIp)
    ));
}

fn err_line(src: &str) -> (usize, String) {
    match Policy::check(src) {
        Err(PolicyError::Syntax { line, message, .. }) => (line, message),
        Err(PolicyError::Invalid { line, message }) => (line, message),
        Err(e) => (e.line(), e.to_string()),
        Ok(_) => panic!("accepted: {src}"),
    }
}

#[test]
fn errors_name_the_line() {
    let (line, _) =
        err_line("{\n  \"acls\": [\n    { \"action\": \"accept\" \"src\": [] }\n  ]\n}");
    assert_eq!(line, 3, "missing comma");
    let (line, m) = err_line("{\n  \"acls\": [\n    { \"action\": \"accept\", \"src\": [\"group:nope\"], \"dst\": [\"*:*\"] }\n  ]\n}");
    assert_eq!(line, 3);
    assert!(m.contains("group:nope") && m.contains("not defined"), "{m}");
    let (line, m) = err_line(
        "{\n\n  \"acls\": [{ \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:80-\"] }]\n}",
    );
    assert_eq!(line, 3);
    assert!(m.contains("ports"), "{m}");
    let (_, m) = err_line(r#"{ "acls": [{ "action": "deny", "src": ["*"], "dst": ["*:*"] }] }"#);
    assert!(m.contains("only \"accept\""), "{m}");
    let (_, m) =
        err_line(r#"{ "acls": [{ "action": "accept", "src": ["tag:x"], "dst": ["*:*"] }] }"#);
    assert!(m.contains("tagOwners"), "{m}");
    let (_, m) = err_line(
        r#"{ "groups": { "group:a": ["group:a"] }, "acls": [{ "action": "accept", "src": ["group:a"], "dst": ["*:*"] }] }"#,
    );
    assert!(m.contains("contains itself"), "{m}");
    let (_, m) = err_line(r#"{ "acls": [{ "action": "accept", "src": ["*"], "dst": ["*"] }] }"#);
    assert!(m.contains("needs :PORTS"), "{m}");
    let (_, m) = err_line(r#"{ "acl": [] }"#);
    assert!(m.contains("unknown field"), "{m}");
    let (_, m) = err_line(
        r#"{ "acls": [{ "action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "sctp" }] }"#,
    );
    assert!(m.contains("proto"), "{m}");
}

/// Nodes from proptest specs: (user index, tag indexes).
fn nodes_from(specs: &[(usize, Vec<usize>)]) -> Vec<NodeInfo> {
    let users = ["alice", "bob", "carol", "dave"];
    let tags = ["tag:db", "tag:ci", "tag:db"];
    specs
        .iter()
        .enumerate()
        .map(|(i, (u, t))| {
            let mut tg: Vec<&str> = t.iter().map(|k| tags[*k]).collect();
            tg.dedup();
            node(i as u64 + 1, users[*u], &tg)
        })
        .collect()
}

fn peer(n: NodeInfo) -> PeerInfo {
    PeerInfo {
        node_key: format!("key{}", n.id),
        disco_key: format!("disco{}", n.id),
        endpoints: vec![],
        home_region: 1,
        node: n,
    }
}

#[test]
fn tailnet_sends_deltas_only_to_nodes_that_can_see_the_change() {
    let (_, policy) = Policy::check(POLICY).unwrap();
    let mut net = Tailnet::new(policy);
    for n in [
        node(1, "alice", &[]),
        node(2, "carol", &[]),
        node(3, "alice", &["tag:db"]),
        node(5, "dave", &[]),
    ] {
        net.upsert(peer(n));
    }
    // dave is in no group: he hears only from those who may ping anyone (alice, carol), and
    // knows nothing of the db.
    let daves: Vec<u64> = net
        .netmap(5)
        .unwrap()
        .peers
        .iter()
        .map(|p| p.node.id)
        .collect();
    assert_eq!(daves, vec![1, 2]);
    // The db moves: alice (group:eng → db) and carol (icmp to *) hear of it; dave does not.
    let mut db = peer(node(3, "alice", &["tag:db"]));
    db.endpoints = vec!["203.0.113.5:41641".parse().unwrap()];
    let deltas = net.upsert(db.clone());
    let told: Vec<u64> = deltas.iter().map(|(id, _)| *id).collect();
    assert!(told.contains(&1) && told.contains(&2), "{told:?}");
    assert!(!told.contains(&5) && !told.contains(&3), "{told:?}");
    assert!(
        deltas
            .iter()
            .all(|(_, d)| matches!(d, Delta::PeerUpsert(p) if p == &db)),
        "an endpoint change is a peer update only"
    );
    // The same endpoints again (every STUN round re-reports them): nobody is told anything.
    assert!(net.upsert(db.clone()).is_empty());
    // The netmap alice gets on connect has the db with its endpoints, and alice's filter.
    let m = net.netmap(1).unwrap();
    assert!(m.peers.iter().any(|p| p == &db));
    // Removal reaches the same nodes.
    let gone: Vec<u64> = net.remove(3).into_iter().map(|(id, _)| id).collect();
    assert!(gone.contains(&1) && gone.contains(&2) && !gone.contains(&5));
}

proptest! {
    #[test]
    fn watchers_are_exactly_the_nodes_that_may_talk_either_way(
        specs in prop::collection::vec((0usize..4, prop::collection::vec(0usize..3, 0..2)), 1..30),
        target in 0usize..30,
    ) {
        let (_, policy) = Policy::check(POLICY).unwrap();
        let nodes = nodes_from(&specs);
        let mut net = Tailnet::new(policy.clone());
        for n in &nodes {
            net.upsert(peer(n.clone()));
        }
        let me = &nodes[target % nodes.len()];
        let brute: std::collections::BTreeSet<u64> = policy.visible_peers(me, &nodes).iter().map(|p| p.id).collect();
        prop_assert_eq!(net.watchers(me), brute);
    }

    #[test]
    fn parsers_never_panic(text in ".{0,300}", bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = Policy::check(&text);
        let _ = parse_packet(&bytes);
        let _ = Filter::default().inbound(Instant::now(), PEER, &bytes);
    }
}

proptest! {
    #[test]
    fn indexed_filters_equal_the_reference_and_deltas_cover_every_change(
        specs in prop::collection::vec((0usize..4, prop::collection::vec(0usize..3, 0..2)), 1..25),
        target in 0usize..25,
    ) {
        let (_, policy) = Policy::check(POLICY).unwrap();
        let nodes = nodes_from(&specs);
        let mut net = Tailnet::new(policy.clone());
        // Filters as the tailnet believes each node has them, from the deltas alone.
        let mut filters: std::collections::BTreeMap<u64, Vec<burrow_control::FilterRule>> = Default::default();
        let mut sofar: Vec<NodeInfo> = Vec::new();
        for n in &nodes {
            sofar.push(n.clone());
            for (id, d) in net.upsert(peer(n.clone())) {
                if let Delta::Filter { rules } = d {
                    filters.insert(id, rules);
                }
            }
            // Every node's filter, as sent, equals the reference computed from scratch.
            for m in &sofar {
                let reference = policy.filter_for(m, &sofar);
                prop_assert_eq!(filters.get(&m.id).cloned().unwrap_or_default(), reference.clone(), "node {}", m.id);
                prop_assert_eq!(net.netmap(m.id).unwrap().filter, reference);
            }
        }
        // And after a removal.
        let gone = nodes[target % nodes.len()].id;
        for (id, d) in net.remove(gone) {
            if let Delta::Filter { rules } = d {
                filters.insert(id, rules);
            }
        }
        let rest: Vec<NodeInfo> = nodes.iter().filter(|n| n.id != gone).cloned().collect();
        for m in &rest {
            prop_assert_eq!(filters.get(&m.id).cloned().unwrap_or_default(), policy.filter_for(m, &rest), "node {} after removal", m.id);
        }
    }
}

/// A second policy for policy changes: only engineers, to anyone, on ssh.
const NARROW: &str = r#"{
  "groups": { "group:eng": ["alice", "bob"] },
  "tagOwners": { "tag:db": ["group:eng"], "tag:ci": ["alice"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["*:22"], "proto": "tcp" } ],
}"#;

proptest! {
    /// A policy change: each node's netmap as it held it, with the deltas `set_policy` sent it
    /// applied, equals the netmap it would get on connect under the new policy.
    #[test]
    fn a_policy_change_brings_every_netmap_up_to_date(
        specs in prop::collection::vec((0usize..4, prop::collection::vec(0usize..3, 0..2)), 1..20),
        narrow_first in any::<bool>(),
    ) {
        let (first, second) = if narrow_first { (NARROW, POLICY) } else { (POLICY, NARROW) };
        let policy = |text| Policy::check(text).unwrap().1;
        let nodes = nodes_from(&specs);
        let mut net = Tailnet::new(policy(first));
        for n in &nodes {
            net.upsert(peer(n.clone()));
        }
        let mut held: std::collections::BTreeMap<u64, burrow_control::NetMap> =
            nodes.iter().map(|n| (n.id, net.netmap(n.id).unwrap())).collect();
        for (id, d) in net.set_policy(policy(second)) {
            let m = held.get_mut(&id).unwrap();
            match d {
                Delta::PeerUpsert(p) => {
                    prop_assert!(!m.peers.iter().any(|q| q.node.id == p.node.id), "an upsert of a peer already held");
                    m.peers.push(p);
                }
                Delta::PeerRemove { id } => {
                    let before = m.peers.len();
                    m.peers.retain(|q| q.node.id != id);
                    prop_assert_eq!(m.peers.len() + 1, before, "a removal of a peer not held");
                }
                Delta::Filter { rules } => {
                    prop_assert_ne!(&m.filter, &rules, "a filter delta that changes nothing");
                    m.filter = rules;
                }
                Delta::Relay(g) => m.relay = g,
            }
        }
        for n in &nodes {
            let mut want = net.netmap(n.id).unwrap();
            let got = held.get_mut(&n.id).unwrap();
            got.peers.sort_by_key(|p| p.node.id);
            want.peers.sort_by_key(|p| p.node.id);
            prop_assert_eq!(&*got, &want, "node {}", n.id);
        }
    }
}
