//! Admission of connections that have not authenticated yet (TLS, HTTP head, ClientInfo):
//! a cap per source address and a global cap. A full global cap closes the *oldest* pending
//! connection rather than refusing the new one, so a slow-handshake flood cannot lock out a
//! client whose handshake takes one round trip. Sans-IO: the driver maps tickets to sockets.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One pending connection's place at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Why the gate refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// This source (an IPv4 address or an IPv6 /64) already has its share pending.
    #[error("too many unauthenticated connections from this address")]
    PerAddress,
    /// The global cap is zero.
    #[error("no unauthenticated connections allowed")]
    Closed,
}

/// The source bucket an address counts against: the address itself for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// Whether per-address caps apply to this source: loopback is exempt (local tools and
/// benchmarks; a local user can exhaust the host anyway). Global caps still apply.
pub fn is_capped_source(ip: IpAddr) -> bool {
    !ip.to_canonical().is_loopback()
}

/// Caps on unauthenticated connections.
#[derive(Debug)]
pub struct PreAuthGate {
    max_total: usize,
    max_per_address: usize,
    next: u64,
    pending: BTreeMap<Ticket, Option<IpAddr>>,
    per_address: BTreeMap<IpAddr, usize>,
}

impl PreAuthGate {
    /// A gate letting at most `max_total` connections wait, `max_per_address` per source.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        PreAuthGate {
            max_total,
            max_per_address,
            next: 0,
            pending: BTreeMap::new(),
            per_address: BTreeMap::new(),
        }
    }

    /// Lets a connection from `ip` wait for authentication. Returns its ticket and, when the
    /// global cap was full, the ticket of the oldest pending connection, which the driver
    /// must close now.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(Ticket, Option<Ticket>), GateRefusal> {
        if self.max_total == 0 {
            return Err(GateRefusal::Closed);
        }
        let bucket = is_capped_source(ip).then(|| address_bucket(ip));
        if let Some(b) = bucket {
            if self.per_address.get(&b).copied().unwrap_or(0) >= self.max_per_address {
                return Err(GateRefusal::PerAddress);
            }
        }
        let evicted = if self.pending.len() >= self.max_total {
            let oldest = self.pending.keys().next().copied();
            if let Some(t) = oldest {
                self.release(t);
            }
            oldest
        } else {
            None
        };
        self.next += 1;
        let ticket = Ticket(self.next);
        self.pending.insert(ticket, bucket);
        if let Some(b) = bucket {
            *self.per_address.entry(b).or_default() += 1;
        }
        Ok((ticket, evicted))
    }

    /// The connection authenticated or ended; false if it was not pending (already evicted
    /// or released).
    pub fn release(&mut self, ticket: Ticket) -> bool {
        let Some(bucket) = self.pending.remove(&ticket) else {
            return false;
        };
        if let Some(b) = bucket {
            if let Some(n) = self.per_address.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&b);
                }
            }
        }
        true
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_refuses_and_global_cap_evicts_the_oldest() {
        let mut g = PreAuthGate::new(4, 2);
        let (t1, _) = g.admit(ip("192.0.2.1")).unwrap();
        g.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(g.admit(ip("192.0.2.1")), Err(GateRefusal::PerAddress));
        // One /64 is one source.
        g.admit(ip("2001:db8::1")).unwrap();
        g.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(g.admit(ip("2001:db8::3")), Err(GateRefusal::PerAddress));
        // Full: the next source gets in and the oldest connection is to be closed.
        let (_, evicted) = g.admit(ip("198.51.100.7")).unwrap();
        assert_eq!(evicted, Some(t1));
        assert_eq!(g.len(), 4);
        assert!(!g.release(t1), "already evicted");
        // Its address has room again.
        assert!(g.admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn loopback_is_capped_only_globally() {
        let mut g = PreAuthGate::new(3, 1);
        for _ in 0..10 {
            g.admit(ip("127.0.0.1")).unwrap();
        }
        assert_eq!(g.len(), 3);
        assert_eq!(
            PreAuthGate::new(0, 1).admit(ip("127.0.0.1")),
            Err(GateRefusal::Closed)
        );
    }
}
