//! Netcheck against in-process STUN servers behind a small model of RFC 4787 NAT behaviour.
//! The NAT model is a test fake of pure logic; real NAT boxes live in the simulator and lab.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_netcheck::{
    Config, Event, FilteringBehavior, MappingBehavior, NatType, Netcheck, PortAllocation, Region,
    Report,
};
use burrow_stun::{BindingServer, ServerConfig};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dep {
    Independent,
    Address,
    AddressAndPort,
}

#[derive(Clone, Copy, Debug)]
enum Alloc {
    Preserve,
    Sequential(u16),
    Random,
}

#[derive(Clone, Copy, Debug)]
struct Nat {
    mapping: Dep,
    filtering: Dep,
    alloc: Alloc,
    blocked: bool,
}

const PUBLIC_IP: &str = "203.0.113.7";

struct World {
    nat: Option<Nat>,
    local: SocketAddr,
    /// (destination key) -> external port
    mappings: BTreeMap<(IpAddr, u16), u16>,
    /// remote endpoints contacted per external port
    contacted: Vec<(u16, SocketAddr)>,
    next_port: u16,
    rng_state: u32,
    servers: Vec<(BindingServer, Duration)>,
    /// Index of a server that ignores CHANGE-REQUEST: it answers from where it was asked.
    liar: Option<usize>,
}

impl World {
    fn key(&self, dst: SocketAddr) -> (IpAddr, u16) {
        match self.nat.map(|n| n.mapping) {
            Some(Dep::Address) => (dst.ip(), 0),
            Some(Dep::AddressAndPort) => (dst.ip(), dst.port()),
            _ => ("0.0.0.0".parse().unwrap(), 0),
        }
    }

    /// Outbound translation: the source the server sees.
    fn outbound(&mut self, dst: SocketAddr) -> Option<SocketAddr> {
        let Some(nat) = self.nat else {
            return Some(self.local);
        };
        if nat.blocked {
            return None;
        }
        let key = self.key(dst);
        let port = match self.mappings.get(&key) {
            Some(p) => *p,
            None => {
                let p = match nat.alloc {
                    Alloc::Preserve if self.mappings.is_empty() => self.local.port(),
                    Alloc::Preserve | Alloc::Sequential(_) => {
                        let step = if let Alloc::Sequential(s) = nat.alloc {
                            s
                        } else {
                            1
                        };
                        self.next_port += step;
                        self.next_port
                    }
                    Alloc::Random => {
                        self.rng_state = self
                            .rng_state
                            .wrapping_mul(1_103_515_245)
                            .wrapping_add(12345);
                        1024 + (self.rng_state >> 8) as u16 % 60000
                    }
                };
                self.mappings.insert(key, p);
                p
            }
        };
        self.contacted.push((port, dst));
        Some(SocketAddr::new(PUBLIC_IP.parse().unwrap(), port))
    }

    /// Inbound filtering of a packet from `src` to external `to`.
    fn inbound_allowed(&self, src: SocketAddr, to: SocketAddr) -> bool {
        let Some(nat) = self.nat else { return true };
        self.contacted.iter().any(|&(port, dst)| {
            port == to.port()
                && match nat.filtering {
                    Dep::Independent => true,
                    Dep::Address => dst.ip() == src.ip(),
                    Dep::AddressAndPort => dst == src,
                }
        })
    }
}

fn rfc5780(primary: &str, alt: &str) -> BindingServer {
    BindingServer::new(ServerConfig {
        primary: primary.parse().unwrap(),
        alternate: Some(alt.parse().unwrap()),
        software: None,
    })
}

fn plain(primary: &str) -> BindingServer {
    BindingServer::new(ServerConfig::new(primary.parse().unwrap()))
}

fn run(nat: Option<Nat>, servers: Vec<(BindingServer, u64)>) -> (Report, Duration) {
    run_with(nat, servers, None)
}

fn run_with(
    nat: Option<Nat>,
    servers: Vec<(BindingServer, u64)>,
    liar: Option<usize>,
) -> (Report, Duration) {
    let local: SocketAddr = "10.0.0.2:41000".parse().unwrap();
    let regions = servers
        .iter()
        .enumerate()
        .map(|(i, (s, _))| Region {
            id: i as u32 + 1,
            code: format!("r{}", i + 1),
            servers: vec![s.config().primary],
        })
        .collect();
    let mut config = Config::new(regions, Some(local), None);
    config.local_ips = vec![local.ip()];
    let mut world = World {
        nat,
        local,
        mappings: BTreeMap::new(),
        contacted: Vec::new(),
        next_port: 50_000,
        rng_state: 99,
        servers: servers
            .into_iter()
            .map(|(s, ms)| (s, Duration::from_millis(ms)))
            .collect(),
        liar,
    };
    let t0 = Instant::now();
    let mut check = Netcheck::new(config, ChaCha20Rng::seed_from_u64(5));
    check.start(t0).unwrap();
    // (arrival time, seq) -> (from, payload)
    let mut inflight: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut payloads: BTreeMap<u64, (SocketAddr, Vec<u8>)> = BTreeMap::new();
    let mut seq = 0u64;
    let mut now = t0;
    loop {
        while let Some(t) = check.poll_transmit() {
            let Some(src) = world.outbound(t.dst) else {
                continue;
            };
            let Some(idx) = world
                .servers
                .iter()
                .position(|(s, _)| s.config().listen_addresses().contains(&t.dst))
            else {
                continue;
            };
            let (server, rtt) = &mut world.servers[idx];
            let rtt = *rtt;
            let mut out = [0u8; 548];
            if let Ok(mut reply) = server.handle_packet(t.dst, src, &t.payload, &mut out) {
                if world.liar == Some(idx) {
                    reply.from = t.dst;
                }
                if world_allows(&world, reply.from, reply.to) {
                    seq += 1;
                    inflight.push(Reverse((now + rtt, seq)));
                    payloads.insert(seq, (reply.from, out[..reply.len].to_vec()));
                }
            }
        }
        if let Some(Event::Report(r)) = check.poll_event() {
            return (r, now - t0);
        }
        let next_arrival = inflight.peek().map(|Reverse((t, _))| *t);
        let next_timer = check.poll_timeout();
        match (next_arrival, next_timer) {
            (Some(a), t) if t.is_none_or(|t| a <= t) => {
                let Reverse((at, s)) = inflight.pop().unwrap();
                now = at;
                let (from, p) = payloads.remove(&s).unwrap();
                let _ = check.handle_input(now, from, &p);
            }
            (_, Some(t)) | (Some(t), None) => {
                now = t;
                check.handle_timeout(now);
            }
            (None, None) => panic!("netcheck stalled without a report"),
        }
    }
}

fn world_allows(world: &World, from: SocketAddr, to: SocketAddr) -> bool {
    world.inbound_allowed(from, to)
}

fn two_servers() -> Vec<(BindingServer, u64)> {
    vec![
        (rfc5780("192.0.2.1:3478", "192.0.2.2:3479"), 30),
        (plain("198.51.100.1:3478"), 10),
    ]
}

#[test]
fn no_nat_reports_none_and_latency() {
    let (r, took) = run(None, two_servers());
    assert_eq!(r.nat_type, NatType::None);
    assert_eq!(r.global_v4, Some("10.0.0.2:41000".parse().unwrap()));
    assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
    assert_eq!(r.filtering, FilteringBehavior::EndpointIndependent);
    assert_eq!(r.port_allocation, PortAllocation::Preserving);
    assert_eq!(r.region_latency[0].v4_ms, Some(30.0));
    assert_eq!(r.region_latency[1].v4_ms, Some(10.0));
    assert_eq!(r.preferred_region, Some(2));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn easy_nat_with_port_restricted_filtering() {
    let nat = Nat {
        mapping: Dep::Independent,
        filtering: Dep::AddressAndPort,
        alloc: Alloc::Sequential(1),
        blocked: false,
    };
    let (r, _) = run(Some(nat), two_servers());
    assert_eq!(r.nat_type, NatType::Easy);
    assert_eq!(r.mapping, MappingBehavior::EndpointIndependent);
    assert_eq!(r.filtering, FilteringBehavior::AddressAndPortDependent);
    assert_eq!(r.global_v4.unwrap().ip().to_string(), PUBLIC_IP);
    assert_eq!(r.port_allocation, PortAllocation::Unknown);
}

#[test]
fn full_cone_and_restricted_cone_filtering() {
    let full = Nat {
        mapping: Dep::Independent,
        filtering: Dep::Independent,
        alloc: Alloc::Preserve,
        blocked: false,
    };
    let (r, _) = run(Some(full), two_servers());
    assert_eq!(r.filtering, FilteringBehavior::EndpointIndependent);
    assert_eq!(r.port_allocation, PortAllocation::Preserving);
    let restricted = Nat {
        filtering: Dep::Address,
        ..full
    };
    let (r, _) = run(Some(restricted), two_servers());
    assert_eq!(r.filtering, FilteringBehavior::AddressDependent);
    assert_eq!(r.nat_type, NatType::Easy);
}

#[test]
fn hard_nat_with_sequential_ports() {
    let nat = Nat {
        mapping: Dep::AddressAndPort,
        filtering: Dep::AddressAndPort,
        alloc: Alloc::Sequential(2),
        blocked: false,
    };
    let (r, _) = run(Some(nat), two_servers());
    assert_eq!(r.nat_type, NatType::Hard);
    assert_eq!(r.mapping_varies_by_dest_ip, Some(true));
    assert_eq!(r.mapping, MappingBehavior::AddressAndPortDependent);
    assert_eq!(r.port_allocation, PortAllocation::Sequential { delta: 2 });
}

#[test]
fn address_dependent_mapping_with_random_ports() {
    let nat = Nat {
        mapping: Dep::Address,
        filtering: Dep::AddressAndPort,
        alloc: Alloc::Random,
        blocked: false,
    };
    let (r, _) = run(Some(nat), two_servers());
    assert_eq!(r.nat_type, NatType::Hard);
    assert_eq!(r.mapping, MappingBehavior::AddressDependent);
    assert_eq!(r.port_allocation, PortAllocation::Random);
}

#[test]
fn hard_nat_detected_from_one_rfc5780_server_alone() {
    let nat = Nat {
        mapping: Dep::AddressAndPort,
        filtering: Dep::AddressAndPort,
        alloc: Alloc::Sequential(1),
        blocked: false,
    };
    let (r, _) = run(
        Some(nat),
        vec![(rfc5780("192.0.2.1:3478", "192.0.2.2:3479"), 5)],
    );
    assert_eq!(r.nat_type, NatType::Hard);
}

#[test]
fn one_plain_server_cannot_tell() {
    let nat = Nat {
        mapping: Dep::Independent,
        filtering: Dep::AddressAndPort,
        alloc: Alloc::Preserve,
        blocked: false,
    };
    let (r, _) = run(Some(nat), vec![(plain("192.0.2.1:3478"), 5)]);
    assert_eq!(r.nat_type, NatType::Unknown);
    assert_eq!(r.mapping_varies_by_dest_ip, None);
    assert_eq!(r.filtering, FilteringBehavior::Unknown);
}

#[test]
fn udp_blocked_ends_within_the_deadline() {
    let nat = Nat {
        mapping: Dep::Independent,
        filtering: Dep::Independent,
        alloc: Alloc::Preserve,
        blocked: true,
    };
    let (r, took) = run(Some(nat), two_servers());
    assert_eq!(r.nat_type, NatType::UdpBlocked);
    assert!(!r.udp && !r.ipv4 && !r.ipv6);
    assert_eq!(r.preferred_region, None);
    assert!(took <= Duration::from_secs(5), "{took:?}");
}

#[test]
fn json_field_names_are_stable() {
    let (r, _) = run(None, two_servers());
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    for field in [
        "udp",
        "ipv4",
        "ipv6",
        "global_v4",
        "global_v6",
        "mapping_varies_by_dest_ip",
        "mapping",
        "filtering",
        "port_allocation",
        "region_latency",
        "preferred_region",
        "port_mapping",
        "nat_type",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    assert_eq!(v["nat_type"], "none");
    assert_eq!(v["filtering"], "endpoint-independent");
    assert_eq!(v["port_allocation"]["kind"], "preserving");
}

#[test]
fn a_server_ignoring_change_request_proves_nothing_about_filtering() {
    let full = Nat {
        mapping: Dep::Independent,
        filtering: Dep::Independent,
        alloc: Alloc::Preserve,
        blocked: false,
    };
    let (r, _) = run_with(Some(full), two_servers(), Some(0));
    assert_eq!(r.filtering, FilteringBehavior::Unknown);
    // Mapping is still measured: it needs only answers, not their source.
    assert_eq!(r.mapping, MappingBehavior::EndpointIndependent);
}

#[test]
fn first_round_traffic_to_the_alternate_ip_disqualifies_the_filtering_test() {
    // The second server sits on the first one's alternate IP: probing it opens an
    // address-dependent filter for that IP before the test could run.
    let nat = Nat {
        mapping: Dep::Independent,
        filtering: Dep::Address,
        alloc: Alloc::Preserve,
        blocked: false,
    };
    let servers = vec![
        (rfc5780("192.0.2.1:3478", "192.0.2.2:3479"), 10),
        (plain("192.0.2.2:4000"), 10),
    ];
    let (r, _) = run(Some(nat), servers);
    assert_eq!(r.filtering, FilteringBehavior::Unknown);
    assert_eq!(r.nat_type, NatType::Easy);
}
