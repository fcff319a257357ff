//! Ladder finding (the absurd rung): a STUN round whose answers were all lost left the node
//! without its public address for the 20 s until the next round, and a peer behind a
//! filtering NAT could not reach it meanwhile. A round that cannot classify the mapping is
//! now tried again after 1 s, then 2 s, 4 s… up to the usual interval.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_node::{Node, NodeConfig, Transmit};
use burrow_wg::PrivateKey;

/// When each STUN transaction toward `server` was first sent, over `run` of unanswered time.
fn rounds(server: SocketAddr, others: &[SocketAddr], run: Duration) -> Vec<Duration> {
    let t0 = Instant::now();
    let mut c = NodeConfig::new(
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
        1,
    );
    c.local_addrs = vec!["10.0.0.2:41641".parse().unwrap()];
    c.stun_servers = std::iter::once(server)
        .chain(others.iter().copied())
        .collect();
    let mut node = Node::new(c, t0);
    let mut first_seen: BTreeMap<Vec<u8>, Duration> = BTreeMap::new();
    let mut now = t0;
    while now < t0 + run {
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        while let Some(t) = node.poll_transmit() {
            if let Transmit::Udp { dst, payload, .. } = t {
                if dst == server && payload.len() >= 20 {
                    first_seen
                        .entry(payload[8..20].to_vec())
                        .or_insert(now - t0);
                }
            }
        }
        now = node
            .poll_timeout()
            .map_or(now + Duration::from_secs(1), |t| {
                t.max(now + Duration::from_millis(1))
            });
    }
    let mut starts: Vec<Duration> = first_seen.into_values().collect();
    starts.sort();
    starts
}

#[test]
fn a_round_without_answers_is_retried_within_seconds_backing_off_to_the_interval() {
    let s1: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let s2: SocketAddr = "198.51.100.2:3478".parse().unwrap();
    let starts = rounds(s1, &[s2], Duration::from_secs(90));
    // Rounds end after 3 s; then 1, 2, 4, 8, 16 s, then the 20 s interval.
    assert!(
        starts
            .iter()
            .filter(|t| **t < Duration::from_secs(20))
            .count()
            >= 4,
        "{starts:?}"
    );
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2)
            .all(|g| g[1] + Duration::from_millis(10) >= g[0]),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(24)),
        "{gaps:?}"
    );
    assert!(
        gaps.last().is_some_and(|g| *g >= Duration::from_secs(20)),
        "{gaps:?}"
    );
}
