//! Path MTU discovery in the discrete-event network: per-link MTUs that drop larger packets
//! without a word (black holes: the simulator sends no ICMP), an application that sends
//! full-size packets with Don't Fragment and lowers its size when told (as TCP does).

use std::time::Duration;

use burrow_node::MtuConfig;
use burrow_sim::fastnet::{run, Disruption, FastConfig, FastNet, FastOutcome, RelaySite};
use burrow_sim::preset;

/// The tunnel MTU a 1,500-byte interface allows over IPv4 (20 + 8 + 32 bytes of overhead).
const TUNNEL_MTU: u16 = 1440;

/// Two easy NATs, 50 full-size packets a second each way, for `secs` simulated seconds.
fn pair(seed: u64, secs: u64, link_mtu: [Option<usize>; 2]) -> FastConfig {
    let chain = |n: &str| preset::get(n).expect("preset").chain;
    let mut c = FastConfig::new([chain("easy"), chain("easy")], seed);
    c.data_interval = Some(Duration::from_millis(20));
    c.duration = Duration::from_secs(secs);
    c.data_size = Some(usize::from(TUNNEL_MTU));
    c.link_mtu = link_mtu;
    c.mtu = Some(MtuConfig {
        tunnel_mtu: TUNNEL_MTU,
        ..MtuConfig::default()
    });
    c
}

fn no_loss(o: &FastOutcome, seed: u64) {
    assert!(
        o.lost.is_empty(),
        "seed {seed}: lost {:?}\n{}",
        o.lost,
        o.timeline.join("\n")
    );
}

#[test]
fn a_path_that_carries_the_tunnel_mtu_is_used_at_full_size() {
    for seed in 1..=5 {
        let o = run(&pair(seed, 20, [None, None]));
        assert!(o.direct, "seed {seed}");
        no_loss(&o, seed);
        assert_eq!(o.path_mtu, [Some(TUNNEL_MTU); 2], "seed {seed}");
        assert_eq!(o.too_big, [0, 0], "seed {seed}");
        // One probe settles it (the ceiling); then, while full-size data flows, one every
        // 3 s checks the size again (20 s: at most 7 in all), and none of that costs a copy
        // over DERP.
        assert!(o.mtu_probes.iter().all(|p| (1..=8).contains(p)), "{o:?}");
        assert_eq!(o.doubt_duplicated, [0, 0], "seed {seed}");
    }
}

#[test]
fn a_smaller_link_is_found_and_larger_packets_are_told_not_lost() {
    for seed in 1..=5 {
        // Side 1's link carries 1,400-byte IP packets: 1,372-byte datagrams, so 1,328-byte
        // inner packets (WireGuard pads to 16).
        let o = run(&pair(seed, 30, [None, Some(1400)]));
        assert!(o.direct, "seed {seed}: {:?}", o.routes);
        no_loss(&o, seed);
        assert_eq!(o.path_mtu, [Some(1328); 2], "seed {seed}");
        assert!(
            o.too_big.iter().all(|t| *t >= 1),
            "seed {seed}: {:?}",
            o.too_big
        );
        // Packets too big for the path went over DERP while the search ran, never into the
        // black hole.
        assert!(o.oversize_relayed.iter().all(|n| *n > 0), "{o:?}");
        // The search (at most 12), then one check every 3 s while large data flows.
        assert!(
            o.mtu_probes.iter().all(|p| *p <= 12 + 10),
            "{:?}",
            o.mtu_probes
        );
    }
}

#[test]
fn without_discovery_the_same_link_eats_every_large_packet() {
    let mut c = pair(1, 20, [None, Some(1400)]);
    c.mtu = Some(MtuConfig {
        discovery: false,
        tunnel_mtu: TUNNEL_MTU,
        ..MtuConfig::default()
    });
    let o = run(&c);
    assert!(
        o.lost_by_node.iter().all(|n| *n > 100),
        "{:?}",
        o.lost_by_node
    );
}

#[test]
fn a_black_hole_that_appears_mid_path_is_found_within_seconds() {
    let mut worst = Duration::ZERO;
    for seed in 1..=5 {
        let mut net = FastNet::new(&pair(seed, 40, [None, None]));
        // At 10 s side 1's link stops carrying more than 1,380-byte IP packets: 1,352-byte
        // datagrams, 1,312-byte inner packets.
        let at = Duration::from_secs(10);
        net.disrupt(at, Disruption::LinkMtu(1, Some(1380)));
        net.drive_until(at);
        let peer = [net.node(1).public_key(), net.node(0).public_key()];
        assert_eq!(net.node(0).path_mtu(&peer[0]), Some(TUNNEL_MTU));
        let mut found = None;
        while net.step() {
            let settled = (0..2).all(|s| net.node(s).path_mtu(&peer[s]) == Some(1312));
            if settled && found.is_none() {
                found = Some(net.elapsed() - at);
            }
        }
        let o = net.finish();
        let found = found.unwrap_or_else(|| panic!("seed {seed}: never settled: {o:?}"));
        // Each failing size waits for a heartbeat's answer (about 1 s) before it counts, so a
        // path that is down is not taken for a small one.
        assert!(found <= Duration::from_secs(5), "seed {seed}: {found:?}");
        worst = worst.max(found);
        assert!(o.direct, "seed {seed}: {:?}", o.routes);
        assert!(o.black_holes.iter().all(|b| *b >= 1), "seed {seed}: {o:?}");
        assert_eq!(o.path_mtu, [Some(1312); 2], "seed {seed}");
        // Lost: only what was in flight or sent before the path fell into doubt (3 round
        // trips, at least 100 ms); the doubt's copies over DERP, and DERP while the size is
        // checked and searched, carry the rest. 50 packets/s: 10 packets is 200 ms.
        assert!(
            o.lost_by_node.iter().all(|n| *n <= 10),
            "seed {seed}: lost {:?}\n{}",
            o.lost_by_node,
            o.timeline.join("\n")
        );
        eprintln!(
            "seed {seed}: settled at 1312 {:.3} s after the black hole; lost {:?}; copies over DERP {:?}; probes {:?}",
            found.as_secs_f64(),
            o.lost_by_node,
            o.doubt_duplicated,
            o.mtu_probes
        );
    }
    eprintln!("worst: {:.3} s", worst.as_secs_f64());
}

#[test]
fn a_black_hole_that_opens_while_the_path_is_cut_costs_nothing_when_it_returns() {
    for seed in 1..=5 {
        let mut c = pair(seed, 60, [None, None]);
        // The path is cut from 10 s to 30 s while the tunnel is idle (so the path dies of
        // missed heartbeats, nothing in doubt); traffic resumes over DERP at 12 s, and at 15 s
        // side 1's link shrinks to 1,380-byte IP packets. The path comes back with the full
        // size it confirmed before the cut.
        c.data_active = vec![
            (Duration::ZERO, Duration::from_secs(8)),
            (Duration::from_secs(12), Duration::from_secs(60)),
        ];
        c.disruptions = vec![
            (
                Duration::from_secs(10),
                Disruption::CutDirect(Duration::from_secs(20)),
            ),
            (Duration::from_secs(15), Disruption::LinkMtu(1, Some(1380))),
        ];
        // Losses count from the cut's end.
        c.measure_from = Duration::from_secs(30);
        let o = run(&c);
        assert!(o.direct, "seed {seed}: {:?}", o.routes);
        assert_eq!(o.path_mtu, [Some(1312); 2], "seed {seed}");
        // Entering the path again checks its size first, with large packets over DERP as
        // well meanwhile: nothing sent after the cut is lost.
        assert!(o.tail_sent > 2000, "seed {seed}: {}", o.tail_sent);
        assert!(
            o.lost.is_empty(),
            "seed {seed}: lost after the path came back {:?}\n{}",
            o.lost,
            o.timeline.join("\n")
        );
    }
}

#[test]
fn a_path_below_the_tunnel_floor_carries_small_packets_and_derp_the_rest() {
    for seed in 1..=3 {
        // 1,300-byte IP packets: not even a 1,280-byte inner packet fits (it needs 1,340).
        let mut c = pair(seed, 20, [Some(1300), None]);
        c.data_size = Some(1280);
        let o = run(&c);
        assert!(
            o.direct,
            "seed {seed}: small packets go direct: {:?}",
            o.routes
        );
        no_loss(&o, seed);
        assert_eq!(o.too_big, [0, 0], "no error below the IPv6 minimum");
        assert!(o.oversize_relayed.iter().all(|n| *n > 500), "{o:?}");
    }
}

/// What the soak's loss accounting asks: which sizes leave on the direct path. A packet
/// queued for a handshake goes out later, by this answer.
#[test]
fn the_engine_tells_which_sizes_leave_on_a_path_below_the_floor() {
    let mut c = pair(1, 20, [Some(1300), None]);
    c.data_size = Some(1280);
    let mut net = FastNet::new(&c);
    net.drive_until(Duration::from_secs(15));
    let n = net.node(0);
    let peer = n.peer_keys()[0];
    assert!(matches!(
        n.route(&peer),
        Some(burrow_punch::Route::Direct(_))
    ));
    // 1,300 less 28 carries a 1,272-byte datagram: 1,000 bytes (1,040 sealed) fit, 1,280
    // (1,312 sealed) do not.
    assert!(n.goes_direct(&peer, 1000));
    assert!(!n.goes_direct(&peer, 1280));
    assert!(!n.goes_direct(
        &burrow_wg::PrivateKey::from_bytes([9; 32]).public_key(),
        100
    ));
}

#[test]
fn full_size_packets_through_a_peer_relay_are_told_its_smaller_size() {
    for seed in 1..=3 {
        // Two hard NATs that meet only through an open relay node, 1,500-byte access links:
        // a full-size packet's datagram plus the relay's 8-byte Geneve header is 1,508 bytes
        // of IP, one the link does not carry.
        let chain = |n: &str| preset::get(n).expect("preset").chain;
        let mut c = pair(seed, 20, [Some(1500), Some(1500)]);
        c.chains = [chain("hard"), chain("hard")];
        c.relays = vec![RelaySite {
            chain: Vec::new(),
            one_way: Duration::from_millis(10),
        }];
        let o = run(&c);
        assert_eq!(o.peer_relay, Some(0), "seed {seed}: {:?}", o.routes);
        no_loss(&o, seed);
        // 1,500 less 28 (IP, UDP), 8 (Geneve) and 32 (WireGuard), in 16-byte steps.
        assert_eq!(o.path_mtu, [Some(1424); 2], "seed {seed}");
        assert!(
            o.too_big.iter().all(|t| *t >= 1),
            "seed {seed}: {:?}",
            o.too_big
        );
    }
}
