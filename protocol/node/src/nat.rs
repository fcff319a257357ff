//! What the node knows about its own NAT, from STUN answers on its one socket: the reflexive
//! address, whether the mapping varies by destination ("hard"), and whether it is predictable.

use std::net::SocketAddr;

/// Largest port step still taken as a sequential allocator (larger steps look random).
pub const MAX_SEQUENTIAL_DELTA: i32 = 64;

/// The node's view of its NAT after a STUN round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatView {
    /// The reflexive address the first server saw.
    pub reflexive: SocketAddr,
    /// Servers saw different ports or IPs: endpoint-dependent mapping.
    pub mapping_varies: bool,
    /// For a varying mapping: the port step between consecutive mappings, when it looks
    /// sequential (RFC 4787 port allocation), so the next ports can be predicted.
    pub delta: Option<i32>,
    /// The last mapped port seen (the base for prediction).
    pub last_port: u16,
}

impl NatView {
    /// Whether peers should birthday-probe us: the mapping varies and cannot be predicted.
    pub fn is_hard_random(&self) -> bool {
        self.mapping_varies && self.delta.is_none()
    }
}

/// Classifies from the mapped addresses servers reported, in the order they were asked.
pub fn classify(mapped: &[SocketAddr]) -> Option<NatView> {
    let first = *mapped.first()?;
    let last = *mapped.last()?;
    let mapping_varies = mapped.iter().any(|m| *m != first);
    let delta = if mapping_varies && mapped.iter().all(|m| m.ip() == first.ip()) {
        let steps: Vec<i32> = mapped
            .windows(2)
            .map(|w| w[1].port() as i32 - w[0].port() as i32)
            .collect();
        let d = steps[0];
        (d != 0 && d.abs() <= MAX_SEQUENTIAL_DELTA && steps.iter().all(|s| *s == d)).then_some(d)
    } else {
        None
    };
    Some(NatView {
        reflexive: first,
        mapping_varies,
        delta,
        last_port: last.port(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tells_easy_from_hard_and_sequential_from_random() {
        let easy = classify(&[a("203.0.113.5:4000"), a("203.0.113.5:4000")]).unwrap();
        assert!(!easy.mapping_varies && !easy.is_hard_random());
        let seq = classify(&[a("203.0.113.5:4000"), a("203.0.113.5:4001")]).unwrap();
        assert_eq!(
            (seq.mapping_varies, seq.delta, seq.last_port),
            (true, Some(1), 4001)
        );
        assert!(!seq.is_hard_random());
        let random = classify(&[a("203.0.113.5:4000"), a("203.0.113.5:51234")]).unwrap();
        assert!(random.is_hard_random());
        let two_ips = classify(&[a("203.0.113.5:4000"), a("203.0.113.6:4001")]).unwrap();
        assert!(two_ips.is_hard_random());
        assert_eq!(classify(&[]), None);
    }
}
