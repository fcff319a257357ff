//! The `policy_parse` target: ACL policies (JSON or HuJSON) parsed, checked and compiled for a
//! few nodes, with the tailnet's incremental netmaps checked against a recomputation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use burrow_control::{hujson, Delta, FilterRule, NodeInfo, PeerInfo, Policy, Tailnet};

/// Parses arbitrary text as a policy. HuJSON normalising keeps every byte where it was; an
/// error names a line of the file; a policy that checks survives a JSON round trip and compiles
/// the same; the tailnet's netmaps, after joins, a change of tags and a removal, equal both a
/// fresh computation and what each node learnt from its deltas.
pub fn policy_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let json = hujson::to_json(&text);
    assert_eq!(json.len(), text.len(), "HuJSON normalising moved bytes");
    assert_eq!(
        json.matches('\n').count(),
        text.matches('\n').count(),
        "HuJSON normalising changed the lines"
    );
    let lines = text.matches('\n').count() + 1;
    let parsed = Policy::parse(&text);
    let (policy, compiled) = match Policy::check(&text) {
        Ok(ok) => ok,
        Err(e) => {
            let line = e.line();
            assert!(line <= lines, "error on line {line} of a {lines}-line file");
            return;
        }
    };
    assert_eq!(parsed.as_ref(), Ok(&policy), "check parses as parse does");
    let again = Policy::parse(&serde_json::to_string(&policy).expect("serialises"))
        .expect("a checked policy parses back");
    assert_eq!(again, policy, "JSON round trip changed the policy");
    assert_eq!(
        again.compile().expect("a checked policy compiles again"),
        compiled
    );

    let nodes = nodes_for(&policy);
    for n in &nodes {
        for rule in compiled.filter_for(n, &nodes) {
            assert!(!rule.src.is_empty() && !rule.dst.is_empty() && !rule.protos.is_empty());
            assert!(
                rule.dst
                    .iter()
                    .all(|(net, _)| n.addresses.iter().any(|a| *net == ipnet::IpNet::from(*a))),
                "a node's filter names an address not its own"
            );
        }
    }

    // Joins, one node's tags change, one node leaves; every other node's view follows its deltas.
    let mut tailnet = Tailnet::new(compiled.clone());
    let mut views: BTreeMap<u64, View> = BTreeMap::new();
    for n in &nodes {
        let deltas = tailnet.upsert(peer(n.clone()));
        apply(&mut views, deltas);
        let map = tailnet.netmap(n.id).expect("joined");
        views.insert(n.id, View::of(map.peers, map.filter));
    }
    if let Some(n) = nodes.get(2) {
        let mut moved = n.clone();
        moved.tags = policy.tag_owners.keys().skip(1).take(1).cloned().collect();
        let id = moved.id;
        let deltas = tailnet.upsert(peer(moved));
        apply(&mut views, deltas);
        // Tags change only by registering again, after which the node fetches a whole netmap.
        let map = tailnet.netmap(id).expect("still there");
        views.insert(id, View::of(map.peers, map.filter));
    }
    if let Some(n) = nodes.get(1) {
        let deltas = tailnet.remove(n.id);
        views.remove(&n.id);
        apply(&mut views, deltas);
    }
    let now: Vec<NodeInfo> = views
        .keys()
        .map(|id| tailnet.get(*id).expect("still there").node.clone())
        .collect();
    for n in &now {
        let map = tailnet.netmap(n.id).expect("still there");
        assert_eq!(
            map.filter,
            compiled.filter_for(n, &now),
            "the tailnet's filter differs from the policy's"
        );
        let mut visible: Vec<u64> = compiled
            .visible_peers(n, &now)
            .iter()
            .map(|p| p.id)
            .collect();
        visible.sort_unstable();
        let peers: Vec<u64> = map.peers.iter().map(|p| p.node.id).collect();
        assert_eq!(
            peers, visible,
            "the tailnet's peers differ from the policy's"
        );
        assert_eq!(
            views[&n.id],
            View::of(map.peers, map.filter),
            "node {} learnt a different netmap from its deltas",
            n.id
        );
    }
}

/// A node's netmap as it knows it.
#[derive(Debug, PartialEq, Eq)]
struct View {
    peers: BTreeMap<u64, PeerInfo>,
    filter: Vec<FilterRule>,
}

impl View {
    fn of(peers: Vec<PeerInfo>, filter: Vec<FilterRule>) -> Self {
        View {
            peers: peers.into_iter().map(|p| (p.node.id, p)).collect(),
            filter,
        }
    }
}

fn apply(views: &mut BTreeMap<u64, View>, deltas: Vec<(u64, Delta)>) {
    for (id, d) in deltas {
        // A node that has not joined yet gets its whole netmap when it does.
        let Some(v) = views.get_mut(&id) else {
            continue;
        };
        match d {
            Delta::PeerUpsert(p) => {
                v.peers.insert(p.node.id, p);
            }
            Delta::PeerRemove { id } => {
                v.peers.remove(&id);
            }
            Delta::Filter { rules } => v.filter = rules,
            // Relay grants are checked in burrow-control's own tests.
            Delta::Relay(_) => {}
        }
    }
}

fn peer(node: NodeInfo) -> PeerInfo {
    PeerInfo {
        node_key: format!("node-{}", node.id),
        disco_key: format!("disco-{}", node.id),
        endpoints: Vec::new(),
        home_region: 1,
        node,
    }
}

/// Nodes the policy talks about: two of its users, untagged and tagged with its tags, and one
/// inside its first host's network.
fn nodes_for(policy: &Policy) -> Vec<NodeInfo> {
    let is_user = |s: &&String| {
        !s.is_empty()
            && *s != "*"
            && !s.starts_with("group:")
            && !s.starts_with("tag:")
            && !s.contains(':')
            && !policy.hosts.contains_key(*s)
            && s.parse::<IpAddr>().is_err()
            && s.parse::<ipnet::IpNet>().is_err()
    };
    let mut users: Vec<String> = policy
        .groups
        .values()
        .flatten()
        .chain(policy.acls.iter().flat_map(|r| r.src.iter()))
        .filter(is_user)
        .take(2)
        .cloned()
        .collect();
    for fallback in ["alice", "bob"] {
        if users.len() < 2 {
            users.push(fallback.into());
        }
    }
    let tags: Vec<String> = policy.tag_owners.keys().take(2).cloned().collect();
    let node = |id: u64, user: &str, tags: &[String], addresses: Vec<IpAddr>| NodeInfo {
        id,
        name: format!("n{id}"),
        user: user.into(),
        tags: tags.to_vec(),
        addresses,
    };
    let addrs = |id: u64| {
        vec![
            IpAddr::from([100, 64, 0, id as u8]),
            IpAddr::from([0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16]),
        ]
    };
    let mut nodes = vec![
        node(1, &users[0], &[], addrs(1)),
        node(2, &users[1], &[], addrs(2)),
        node(3, &users[0], &tags[..tags.len().min(1)], addrs(3)),
        node(4, &users[1], &tags, addrs(4)),
    ];
    if let Some(net) = policy.hosts.values().find_map(|h| {
        h.parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| h.parse::<IpAddr>().ok().map(Into::into))
    }) {
        nodes.push(node(5, "nobody", &[], vec![net.addr()]));
    }
    nodes
}
