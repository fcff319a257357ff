//! Replicas that follow one change log converge: whatever the interleaving of changes, and
//! however their notifications are dropped, duplicated or reordered, every replica applies
//! the changes in id order (filling gaps from the log) and ends with the same tailnet as one
//! replica applying them in order.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use burrow_control::changelog::{Change, ChangeId, Follower};
use burrow_control::{NetMap, NodeInfo, PeerInfo, Policy, RelayCapability, Tailnet};
use proptest::prelude::*;

const WIDE: &str = r#"{
  "groups": { "group:eng": ["alice", "bob"] },
  "tagOwners": { "tag:db": ["group:eng"], "tag:ci": ["alice"] },
  "acls": [
    { "action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"], "proto": "tcp" },
    { "action": "accept", "src": ["tag:ci"], "dst": ["*:22"] },
    { "action": "accept", "src": ["carol"], "dst": ["alice:*"] },
  ],
  "relay": [ { "src": ["*"], "via": ["tag:ci"] } ],
}"#;

const NARROW: &str = r#"{
  "groups": { "group:eng": ["alice", "bob"] },
  "tagOwners": { "tag:db": ["group:eng"], "tag:ci": ["alice"] },
  "acls": [ { "action": "accept", "src": ["group:eng"], "dst": ["*:22"], "proto": "tcp" } ],
}"#;

/// One thing that happens to the tailnet.
#[derive(Debug, Clone)]
enum Op {
    /// Node `n` registers (again: a new identity) as user `user` with tags.
    Register {
        n: u64,
        user: usize,
        tags: Vec<usize>,
    },
    /// Node `n` reports new endpoints.
    Endpoints { n: u64, port: u16 },
    /// Node `n` is removed (or expires).
    Remove { n: u64 },
    /// Node `n` reports its relay.
    Relay { n: u64, port: Option<u16> },
    /// The policy is replaced.
    Policy { wide: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..12u64, 0..3usize, prop::collection::vec(0..2usize, 0..2))
            .prop_map(|(n, user, tags)| Op::Register { n, user, tags }),
        4 => (1..12u64, 1..5u16).prop_map(|(n, port)| Op::Endpoints { n, port }),
        2 => (1..12u64).prop_map(|n| Op::Remove { n }),
        1 => (1..12u64, prop::option::of(40000..40002u16)).prop_map(|(n, port)| Op::Relay { n, port }),
        1 => any::<bool>().prop_map(|wide| Op::Policy { wide }),
    ]
}

fn node(n: u64, user: usize, tags: &[usize]) -> NodeInfo {
    let mut tags: Vec<String> = tags
        .iter()
        .map(|t| ["tag:db", "tag:ci"][*t].to_string())
        .collect();
    tags.sort();
    tags.dedup();
    NodeInfo {
        id: n,
        name: format!("n{n}"),
        user: ["alice", "bob", "carol"][user].to_string(),
        tags,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, n as u8))],
    }
}

/// The leader: turns each operation into the change it commits, against its own tailnet.
fn commit(records: &mut BTreeMap<u64, PeerInfo>, op: &Op) -> Option<Change> {
    Some(match op {
        Op::Register { n, user, tags } => {
            let peer = PeerInfo {
                node: node(*n, *user, tags),
                node_key: format!("key{n}"),
                disco_key: format!("disco{n}"),
                endpoints: vec![],
                home_region: 1,
            };
            records.insert(*n, peer.clone());
            Change::Upsert(peer)
        }
        Op::Endpoints { n, port } => {
            let peer = records.get_mut(n)?;
            peer.endpoints = vec![SocketAddr::from(([192, 0, 2, *n as u8], 41640 + port))];
            Change::Upsert(peer.clone())
        }
        Op::Remove { n } => {
            records.remove(n)?;
            Change::Remove { id: *n }
        }
        Op::Relay { n, port } => {
            records.get(n)?;
            Change::RelayCapability {
                id: *n,
                capability: RelayCapability {
                    port: *port,
                    fixed_mapping: port.is_some(),
                },
            }
        }
        Op::Policy { wide } => Change::Policy {
            source: if *wide { WIDE } else { NARROW }.to_string(),
        },
    })
}

fn tailnet() -> Tailnet {
    Tailnet::new(Policy::check(WIDE).unwrap().1)
}

/// Every node's netmap, peers in id order (`None` for a node not in the tailnet).
fn netmaps(net: &Tailnet) -> Vec<Option<NetMap>> {
    (1..12)
        .map(|id| {
            net.netmap(id).map(|mut m| {
                m.peers.sort_by_key(|p| p.node.id);
                m
            })
        })
        .collect()
}

/// How one replica hears of the changes: each notification dropped or not, where it moves to
/// (a later position), sent twice or not; and after which notifications it reads its gap from
/// the log.
#[derive(Debug, Clone)]
struct Delivery {
    drop: Vec<bool>,
    delay: Vec<usize>,
    twice: Vec<bool>,
    read_log_after: Vec<bool>,
}

fn delivery(n: usize) -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(prop::bool::weighted(0.25), n),
        prop::collection::vec(0..6usize, n),
        prop::collection::vec(prop::bool::weighted(0.1), n),
        prop::collection::vec(prop::bool::weighted(0.2), n),
    )
        .prop_map(|(drop, delay, twice, read_log_after)| Delivery {
            drop,
            delay,
            twice,
            read_log_after,
        })
}

/// A replica following `log` through `d`; returns its tailnet and the ids in the order it
/// applied them.
fn follow(log: &[Change], d: &Delivery) -> (Tailnet, Vec<ChangeId>) {
    let mut net = tailnet();
    let mut f = Follower::new(0);
    let mut order = Vec::new();
    // The notifications as they arrive: each moved later by its delay, some twice, some lost.
    let mut arrivals: Vec<(usize, ChangeId)> = Vec::new();
    for i in 0..log.len() {
        let id = i as ChangeId + 1;
        if !d.drop[i] {
            arrivals.push((i + d.delay[i], id));
        }
        if d.twice[i] {
            arrivals.push((i + d.delay[i] + 1, id));
        }
    }
    arrivals.sort_by_key(|(at, _)| *at);
    let apply = |f: &mut Follower, net: &mut Tailnet, order: &mut Vec<ChangeId>| {
        while let Some((id, change)) = f.next_ready() {
            order.push(id);
            let _ = change.apply(net);
        }
    };
    for (k, (_, id)) in arrivals.iter().enumerate() {
        f.offer(*id, log[*id as usize - 1].clone());
        apply(&mut f, &mut net, &mut order);
        if d.read_log_after.get(k).copied().unwrap_or(false) {
            while let Some(gap) = f.gap() {
                for id in gap {
                    f.offer(id, log[id as usize - 1].clone());
                }
                apply(&mut f, &mut net, &mut order);
            }
        }
    }
    // At the end the replica learns the log's head (a reconnect, a periodic check) and reads
    // what it is missing.
    f.note_head(log.len() as ChangeId);
    while let Some(gap) = f.gap() {
        for id in gap {
            f.offer(id, log[id as usize - 1].clone());
        }
        apply(&mut f, &mut net, &mut order);
    }
    assert_eq!(f.held(), 0);
    (net, order)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn replicas_following_a_lossy_reordered_log_converge_on_the_leaders_tailnet(
        (ops, deliveries) in prop::collection::vec(op(), 1..60).prop_flat_map(|ops| {
            let n = ops.len();
            (Just(ops), prop::collection::vec(delivery(n), 3))
        })
    ) {
        // The leader commits each operation as a change with the next id, and applies it.
        let mut leader = tailnet();
        let mut records = BTreeMap::new();
        let mut log = Vec::new();
        for op in &ops {
            if let Some(change) = commit(&mut records, op) {
                change.apply(&mut leader).unwrap();
                log.push(change);
            }
        }
        let want = netmaps(&leader);
        for d in &deliveries {
            // Delivery masks cover the operations; the log may be shorter.
            let d = Delivery {
                drop: d.drop[..log.len()].to_vec(),
                delay: d.delay[..log.len()].to_vec(),
                twice: d.twice[..log.len()].to_vec(),
                read_log_after: d.read_log_after.clone(),
            };
            let (net, order) = follow(&log, &d);
            let every: Vec<ChangeId> = (1..=log.len() as ChangeId).collect();
            prop_assert_eq!(&order, &every, "each change once, in id order");
            prop_assert_eq!(netmaps(&net), want.clone());
        }
    }
}

/// The comparison above must be able to fail: applying the same changes out of order ends
/// somewhere else.
#[test]
fn applying_out_of_order_is_caught_by_the_comparison() {
    let ops = [
        Op::Register {
            n: 1,
            user: 0,
            tags: vec![],
        },
        Op::Register {
            n: 2,
            user: 1,
            tags: vec![0],
        },
        Op::Endpoints { n: 2, port: 1 },
        Op::Remove { n: 2 },
    ];
    let mut leader = tailnet();
    let mut records = BTreeMap::new();
    let mut log = Vec::new();
    for op in &ops {
        let change = commit(&mut records, op).unwrap();
        change.apply(&mut leader).unwrap();
        log.push(change);
    }
    // The removal before the endpoint change: node 2 comes back.
    let mut wrong = tailnet();
    for i in [0, 1, 3, 2] {
        log[i].apply(&mut wrong).unwrap();
    }
    assert_ne!(netmaps(&wrong), netmaps(&leader));
}
