//! The NAT boxes obey their definitions (RFC 4787 vocabulary).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_sim::nat::{Dependence, Drop, NatConfig, NatTable, PortAllocation, Refresh};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn config(mapping: Dependence, filtering: Dependence, allocation: PortAllocation) -> NatConfig {
    NatConfig {
        translate: true,
        mapping,
        filtering,
        allocation,
        port_low: 1024,
        port_high: 65535,
        timeout: Duration::from_secs(30),
        refresh: Refresh::Outbound,
        capacity: None,
        hairpin: false,
        gateway: None,
        background: 0.0,
        block_udp: false,
    }
}

fn table(c: NatConfig, seed: u64) -> NatTable {
    NatTable::new(c, ChaCha20Rng::seed_from_u64(seed))
}

fn internal() -> SocketAddr {
    "10.0.0.2:40000".parse().unwrap()
}

fn remote() -> impl Strategy<Value = SocketAddr> {
    (
        1u8..=8,
        1u8..=4,
        prop_oneof![Just(3478u16), Just(3479u16), 1000u16..1010],
    )
        .prop_map(|(a, b, port)| SocketAddr::from(([198, 51, a, b], port)))
}

proptest! {
    #[test]
    fn eim_gives_one_external_port_for_every_destination(dsts in proptest::collection::vec(remote(), 1..40), seed in any::<u64>()) {
        let mut t = table(config(Dependence::EndpointIndependent, Dependence::AddressAndPortDependent, PortAllocation::Random), seed);
        let now = Instant::now();
        let ports: BTreeSet<u16> = dsts.iter().map(|d| t.outbound(now, internal(), *d).unwrap()).collect();
        prop_assert_eq!(ports.len(), 1);
    }

    #[test]
    fn apdm_gives_a_port_per_destination_endpoint(dsts in proptest::collection::vec(remote(), 1..40), seed in any::<u64>()) {
        let mut t = table(config(Dependence::AddressAndPortDependent, Dependence::AddressAndPortDependent, PortAllocation::Random), seed);
        let now = Instant::now();
        let distinct: BTreeSet<SocketAddr> = dsts.iter().copied().collect();
        let ports: BTreeSet<u16> = dsts.iter().map(|d| t.outbound(now, internal(), *d).unwrap()).collect();
        prop_assert_eq!(ports.len(), distinct.len());
    }

    #[test]
    fn adm_gives_a_port_per_destination_ip(dsts in proptest::collection::vec(remote(), 1..40), seed in any::<u64>()) {
        let mut t = table(config(Dependence::AddressDependent, Dependence::AddressAndPortDependent, PortAllocation::Random), seed);
        let now = Instant::now();
        let ips: BTreeSet<_> = dsts.iter().map(|d| d.ip()).collect();
        let ports: BTreeSet<u16> = dsts.iter().map(|d| t.outbound(now, internal(), *d).unwrap()).collect();
        prop_assert_eq!(ports.len(), ips.len());
    }

    #[test]
    fn filtering_admits_exactly_what_it_should(
        contacted in proptest::collection::vec(remote(), 1..10),
        probe in remote(),
        filtering in prop_oneof![Just(Dependence::EndpointIndependent), Just(Dependence::AddressDependent), Just(Dependence::AddressAndPortDependent)],
    ) {
        let mut t = table(config(Dependence::EndpointIndependent, filtering, PortAllocation::PreserveIfFree), 1);
        let now = Instant::now();
        let mut port = 0;
        for c in &contacted {
            port = t.outbound(now, internal(), *c).unwrap();
        }
        let admitted = t.inbound(now, port, probe);
        let should = match filtering {
            Dependence::EndpointIndependent => true,
            Dependence::AddressDependent => contacted.iter().any(|c| c.ip() == probe.ip()),
            Dependence::AddressAndPortDependent => contacted.contains(&probe),
        };
        prop_assert_eq!(admitted.is_ok(), should);
        if should {
            prop_assert_eq!(admitted.unwrap(), internal());
        } else {
            prop_assert_eq!(admitted, Err(Drop::Filtered));
        }
    }

    #[test]
    fn mappings_expire_after_the_timeout_and_not_before(timeout_s in 1u64..120, elapsed_ms in 0u64..240_000) {
        let mut c = config(Dependence::EndpointIndependent, Dependence::AddressAndPortDependent, PortAllocation::PreserveIfFree);
        c.timeout = Duration::from_secs(timeout_s);
        let mut t = table(c, 1);
        let t0 = Instant::now();
        let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let port = t.outbound(t0, internal(), server).unwrap();
        let later = t0 + Duration::from_millis(elapsed_ms);
        let r = t.inbound(later, port, server);
        if Duration::from_millis(elapsed_ms) < Duration::from_secs(timeout_s) {
            prop_assert_eq!(r, Ok(internal()));
        } else {
            prop_assert_eq!(r, Err(Drop::NoMapping));
            prop_assert_eq!(t.take_closed(), vec![port]);
        }
    }

    #[test]
    fn a_full_table_drops_new_flows_and_counts_them(capacity in 1usize..50, extra in 1usize..50) {
        let mut c = config(Dependence::AddressAndPortDependent, Dependence::AddressAndPortDependent, PortAllocation::Random);
        c.capacity = Some(capacity);
        let mut t = table(c, 3);
        let now = Instant::now();
        let mut dropped = 0;
        for i in 0..capacity + extra {
            let dst = SocketAddr::from(([198, 51, 100, 1], 1000 + i as u16));
            match t.outbound(now, internal(), dst) {
                Ok(_) => {}
                Err(Drop::TableFull) => dropped += 1,
                Err(e) => prop_assert!(false, "unexpected {:?}", e),
            }
        }
        prop_assert_eq!(dropped, extra);
        let s = t.stats();
        prop_assert_eq!(s.dropped_table_full as usize, extra);
        prop_assert_eq!(s.peak_sessions, capacity);
        // Existing flows still pass.
        let first = SocketAddr::from(([198, 51, 100, 1], 1000));
        prop_assert!(t.outbound(now, internal(), first).is_ok());
    }

    #[test]
    fn sequential_allocation_is_predictable(stride in 1u16..8, n in 2usize..30, seed in any::<u64>()) {
        let mut t = table(config(Dependence::AddressAndPortDependent, Dependence::AddressAndPortDependent, PortAllocation::Sequential { stride }), seed);
        let now = Instant::now();
        let ports: Vec<u16> = (0..n)
            .map(|i| t.outbound(now, internal(), SocketAddr::from(([198, 51, 100, 1], 2000 + i as u16))).unwrap())
            .collect();
        for w in ports.windows(2) {
            let span = 65535u32 - 1024 + 1;
            let step = (w[1] as u32 + span - w[0] as u32) % span;
            prop_assert_eq!(step, stride as u32);
        }
    }
}

#[test]
fn random_allocation_is_uniform_over_its_range() {
    // 64 ports, 12,800 allocations, each mapping expired before the next: chi-square over the
    // 64 buckets must stay under the p = 0.001 critical value for 63 degrees of freedom.
    let mut c = config(
        Dependence::AddressAndPortDependent,
        Dependence::AddressAndPortDependent,
        PortAllocation::Random,
    );
    c.port_low = 20_000;
    c.port_high = 20_063;
    c.timeout = Duration::from_secs(1);
    let mut t = table(c, 42);
    let t0 = Instant::now();
    let mut counts = [0u32; 64];
    let samples = 12_800;
    for i in 0..samples {
        let now = t0 + Duration::from_secs(2 * i as u64);
        let p = t
            .outbound(now, internal(), SocketAddr::from(([198, 51, 100, 1], 3478)))
            .unwrap();
        assert!((20_000..=20_063).contains(&p), "{p} outside the range");
        counts[(p - 20_000) as usize] += 1;
    }
    let expected = samples as f64 / 64.0;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    assert!(
        chi2 < 103.4,
        "chi-square {chi2:.1} says allocation is not uniform: {counts:?}"
    );
}

#[test]
fn a_firewall_keeps_addresses_and_filters() {
    let mut c = config(
        Dependence::EndpointIndependent,
        Dependence::AddressAndPortDependent,
        PortAllocation::PreserveIfFree,
    );
    c.translate = false;
    let mut t = table(c, 1);
    let now = Instant::now();
    let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    assert_eq!(t.outbound(now, internal(), server), Ok(internal().port()));
    assert_eq!(t.inbound(now, internal().port(), server), Ok(internal()));
    assert_eq!(
        t.inbound(now, internal().port(), "198.51.100.1:3479".parse().unwrap()),
        Err(Drop::Filtered)
    );
}

#[test]
fn blocked_udp_passes_nothing() {
    let mut c = config(
        Dependence::EndpointIndependent,
        Dependence::EndpointIndependent,
        PortAllocation::PreserveIfFree,
    );
    c.block_udp = true;
    let mut t = table(c, 1);
    assert_eq!(
        t.outbound(
            Instant::now(),
            internal(),
            "198.51.100.1:3478".parse().unwrap()
        ),
        Err(Drop::Blocked)
    );
}

#[test]
fn inbound_refreshes_only_when_configured() {
    for (refresh, alive) in [(Refresh::Outbound, false), (Refresh::Both, true)] {
        let mut c = config(
            Dependence::EndpointIndependent,
            Dependence::AddressAndPortDependent,
            PortAllocation::PreserveIfFree,
        );
        c.refresh = refresh;
        let mut t = table(c, 1);
        let t0 = Instant::now();
        let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let port = t.outbound(t0, internal(), server).unwrap();
        // Inbound keep-alives every 20 s; after 50 s only an inbound-refreshed mapping lives.
        assert!(t
            .inbound(t0 + Duration::from_secs(20), port, server)
            .is_ok());
        assert!(
            t.inbound(t0 + Duration::from_secs(40), port, server)
                .is_ok()
                == alive
        );
        assert_eq!(
            t.inbound(t0 + Duration::from_secs(50), port, server)
                .is_ok(),
            alive,
            "{refresh:?}"
        );
    }
}

#[test]
fn preserve_if_free_keeps_the_port_then_falls_back() {
    let c = config(
        Dependence::EndpointIndependent,
        Dependence::AddressAndPortDependent,
        PortAllocation::PreserveIfFree,
    );
    let mut t = table(c, 9);
    let now = Instant::now();
    let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    assert_eq!(t.outbound(now, internal(), server), Ok(40000));
    // A second host with the same internal port gets another one.
    let other: SocketAddr = "10.0.0.3:40000".parse().unwrap();
    let p = t.outbound(now, other, server).unwrap();
    assert_ne!(p, 40000);
}
