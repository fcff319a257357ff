//! Admission of connections that have not authenticated yet (TLS, HTTP head, ClientInfo):
//! a cap per source (an IPv4 address; an IPv6 /64, and a few times that per /48) and a
//! global cap. A full global cap closes the *oldest* pending connection rather than refusing
//! the new one, so a slow-handshake flood cannot lock out a client whose handshake takes one
//! round trip. Sans-IO: the driver maps tickets to sockets.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One pending connection's place at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Why the gate refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// This source (an IPv4 address or an IPv6 /64, or its /48 with [`SITE_SHARES`] shares)
    /// already has its share pending.
    #[error("too many unauthenticated connections from this address")]
    PerAddress,
    /// The global cap is zero.
    #[error("no unauthenticated connections allowed")]
    Closed,
}

/// The source bucket an address counts against: the address itself for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    prefix(ip, 64)
}

/// The address with everything after the first `bits` bits cleared (IPv6), or the IPv4
/// address itself (IPv4-mapped IPv6 counts as IPv4).
fn prefix(ip: IpAddr, bits: u32) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> bits)).into()),
        v4 => v4,
    }
}

/// Whether per-address caps apply to this source: loopback is exempt (local tools and
/// benchmarks; a local user can exhaust the host anyway). Global caps still apply.
pub fn is_capped_source(ip: IpAddr) -> bool {
    !ip.to_canonical().is_loopback()
}

/// How many per-source shares one IPv6 /48 may hold in all: a site (a customer's /48 holds
/// 65,536 /64s) gets a few hosts' worth, not 65,536.
pub const SITE_SHARES: usize = 4;

/// A bucket sources are counted in: an IPv4 address or IPv6 /64 (`site` false), or an
/// IPv6 /48 (`site` true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Bucket {
    net: IpAddr,
    site: bool,
}

/// Counts per source with a cap: `cap` per IPv4 address or IPv6 /64, and
/// `cap` × [`SITE_SHARES`] per IPv6 /48. Loopback is not counted (see
/// [`is_capped_source`]).
#[derive(Debug, Default, Clone)]
pub struct SourceCounts {
    counts: BTreeMap<Bucket, usize>,
}

impl SourceCounts {
    /// No sources counted.
    pub fn new() -> Self {
        Self::default()
    }

    fn buckets(ip: IpAddr) -> impl Iterator<Item = Bucket> {
        let capped = is_capped_source(ip);
        let host = capped.then(|| Bucket {
            net: address_bucket(ip),
            site: false,
        });
        let site = (capped && ip.to_canonical().is_ipv6()).then(|| Bucket {
            net: prefix(ip, 48),
            site: true,
        });
        host.into_iter().chain(site)
    }

    /// Whether one more from `ip` would exceed `cap`, not counting one from `except` (a
    /// connection about to be replaced).
    pub fn is_full(&self, ip: IpAddr, cap: usize, except: Option<IpAddr>) -> bool {
        Self::buckets(ip).any(|b| {
            let mut n = self.counts.get(&b).copied().unwrap_or(0);
            if except.is_some_and(|e| Self::buckets(e).any(|eb| eb == b)) {
                n = n.saturating_sub(1);
            }
            let limit = if b.site {
                cap.saturating_mul(SITE_SHARES)
            } else {
                cap
            };
            n >= limit
        })
    }

    /// Counts one more from `ip`.
    pub fn add(&mut self, ip: IpAddr) {
        for b in Self::buckets(ip) {
            *self.counts.entry(b).or_default() += 1;
        }
    }

    /// Counts one fewer from `ip`.
    pub fn remove(&mut self, ip: IpAddr) {
        for b in Self::buckets(ip) {
            if let Some(n) = self.counts.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&b);
                }
            }
        }
    }

    /// Buckets with a count (for tests and metrics).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Caps on unauthenticated connections.
#[derive(Debug)]
pub struct PreAuthGate {
    max_total: usize,
    max_per_address: usize,
    next: u64,
    pending: BTreeMap<Ticket, IpAddr>,
    per_address: SourceCounts,
}

impl PreAuthGate {
    /// A gate letting at most `max_total` connections wait, `max_per_address` per source.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        PreAuthGate {
            max_total,
            max_per_address,
            next: 0,
            pending: BTreeMap::new(),
            per_address: SourceCounts::new(),
        }
    }

    /// Lets a connection from `ip` wait for authentication. Returns its ticket and, when the
    /// global cap was full, the ticket of the oldest pending connection, which the driver
    /// must close now.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(Ticket, Option<Ticket>), GateRefusal> {
        if self.max_total == 0 {
            return Err(GateRefusal::Closed);
        }
        if self.per_address.is_full(ip, self.max_per_address, None) {
            return Err(GateRefusal::PerAddress);
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
        self.pending.insert(ticket, ip);
        self.per_address.add(ip);
        Ok((ticket, evicted))
    }

    /// The connection authenticated or ended; false if it was not pending (already evicted
    /// or released).
    pub fn release(&mut self, ticket: Ticket) -> bool {
        let Some(ip) = self.pending.remove(&ticket) else {
            return false;
        };
        self.per_address.remove(ip);
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

    /// One IPv6 /48 (a site) holds at most SITE_SHARES sources' worth, however many /64s it
    /// spreads over (it used to count as 65,536 sources).
    #[test]
    fn an_ipv6_site_is_capped_across_its_64s() {
        let mut g = PreAuthGate::new(1000, 2);
        let mut admitted = 0;
        for subnet in 0..100u16 {
            for host in 1..=2u16 {
                let a = format!("2001:db8:7:{subnet:x}::{host:x}");
                admitted += usize::from(g.admit(ip(&a)).is_ok());
            }
        }
        assert_eq!(admitted, 2 * SITE_SHARES);
        // Another /48 is another site; IPv4 is unaffected.
        assert!(g.admit(ip("2001:db8:8::1")).is_ok());
        assert!(g.admit(ip("192.0.2.1")).is_ok());
        // The /64 whose bits past /48 are zero is not confused with its /48.
        let mut g = PreAuthGate::new(1000, 1);
        g.admit(ip("2001:db8:9::1")).unwrap();
        assert_eq!(g.admit(ip("2001:db8:9::2")), Err(GateRefusal::PerAddress));
        assert!(g.admit(ip("2001:db8:9:1::1")).is_ok());
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
