//! IPv6 in the discrete-event network: dual-stack hosts go direct over IPv6 through stateful
//! firewalls (endpoint-independent or address-and-port-dependent filtering, 30 s UDP timeout)
//! whatever their IPv4 NATs do; an IPv6-only host reaches an IPv4-only one through DERP; an
//! IPv6 address withdrawn mid-run falls back to IPv4 direct (or DERP) and is won back.

use std::time::Duration;

use burrow_sim::fastnet::{run, Disruption, FastConfig, FastOutcome, Ipv6Access};
use burrow_sim::grid::{cell_config_v6, ipv6_pairs, parallel, run_cell_v6, Expectation};
use burrow_sim::preset;

fn pair(a: &str, b: &str, seed: u64, secs: u64) -> FastConfig {
    let chain = |n: &str| preset::get(n).unwrap_or_else(|| panic!("preset {n}")).chain;
    let mut c = FastConfig::new([chain(a), chain(b)], seed);
    c.duration = Duration::from_secs(secs);
    c.data_interval = Some(Duration::from_millis(20));
    c
}

fn show(o: &FastOutcome) -> String {
    o.timeline.join("\n")
}

/// The only packets lost are the few sent to the withdrawn address before the peer heard
/// (in flight, or within the relay's round trip of the CallMeMaybe that withdrew it): nothing
/// at the fall-back's other moments, nothing when IPv6 returns.
fn withdrawal_losses_only(o: &FastOutcome, at_s: f64, text: &str) {
    let lost = o.data_sent - o.data_received;
    assert!(lost <= 8, "{lost} lost: {:?}\n{text}", o.lost);
    for (_, _, sent) in &o.lost {
        let t = sent.as_secs_f64();
        assert!(
            (at_s - 0.1..at_s + 0.1).contains(&t),
            "a packet sent at {t} s was lost\n{text}"
        );
    }
}

fn on_ipv6(route: &str) -> bool {
    route.starts_with("Direct([")
}

#[test]
fn the_ipv6_axis_goes_direct_over_ipv6_in_every_cell() {
    let pairs = ipv6_pairs();
    assert_eq!(pairs.len(), 209, "every IPv4 cell has its IPv6 twin");
    let cells = parallel(&pairs, 2, |(a, b)| run_cell_v6(a, b, &[1]));
    for c in &cells {
        assert_eq!(c.expected, Expectation::DirectIpv6);
        assert!(c.passed(), "{}~{} with IPv6: {:?}", c.a, c.b, c.failures);
        assert_eq!(c.lost, 0, "{}~{}", c.a, c.b);
    }
    // Including the cells IPv4 alone cannot do: two hard NATs, UDP blocked on IPv4.
    for (a, b) in [
        ("hard", "hard"),
        ("udp-blocked", "easy"),
        ("srx300", "udp-blocked"),
    ] {
        let o = run(&cell_config_v6(a, b, 7).unwrap());
        assert!(o.direct_v6, "{a}~{b}:\n{}", show(&o));
        let t = o.time_to_direct_v6.unwrap();
        assert!(
            t < Duration::from_millis(500),
            "{a}~{b}: {t:?}\n{}",
            show(&o)
        );
        // IPv6 was there at once: no birthday search ran long beside it.
        assert!(o.probes < 64, "{a}~{b}: {} probes", o.probes);
    }
}

#[test]
fn both_firewall_kinds_open_to_simultaneous_pings_and_stay_open() {
    for eif in [true, false] {
        let mut c = pair("hard", "hard", 3, 150);
        c.ipv6 = [
            Some(Ipv6Access::firewall(eif)),
            Some(Ipv6Access::firewall(eif)),
        ];
        let o = run(&c);
        // Two minutes and more past the 30 s UDP timeout: heartbeats keep both firewalls open.
        assert!(o.direct_v6, "eif={eif}:\n{}", show(&o));
        assert_eq!(
            o.data_sent,
            o.data_received,
            "eif={eif}: lost {:?}\n{}",
            o.lost,
            show(&o)
        );
        assert!(
            o.switches <= 4,
            "eif={eif}: {} route changes\n{}",
            o.switches,
            show(&o)
        );
    }
}

#[test]
fn an_ipv6_only_host_reaches_an_ipv4_only_host_through_derp() {
    let mut c = pair("open", "easy", 1, 30);
    c.ipv6 = [
        Some(Ipv6Access {
            only: true,
            ..Ipv6Access::firewall(false)
        }),
        None,
    ];
    let o = run(&c);
    assert!(!o.direct && o.time_to_direct.is_none(), "{}", show(&o));
    assert_eq!(o.routes, ["Relay".to_string(), "Relay".to_string()]);
    // Everything still arrives, over DERP.
    assert!(o.data_sent > 1000);
    assert_eq!(o.data_sent, o.data_received, "{}", show(&o));
}

#[test]
fn withdrawn_ipv6_falls_back_to_ipv4_direct_and_comes_back() {
    let mut c = pair("easy", "easy", 2, 120);
    c.ipv6 = [
        Some(Ipv6Access::firewall(false)),
        Some(Ipv6Access::firewall(false)),
    ];
    c.disruptions = vec![(
        Duration::from_secs(30),
        Disruption::WithdrawIpv6(0, Duration::from_secs(30)),
    )];
    let o = run(&c);
    let text = show(&o);
    assert!(o.direct_v6, "IPv6 again at the end:\n{text}");
    // While IPv6 was gone, node 1 went to node 0's IPv4 address, not DERP.
    let during: Vec<&String> = o
        .timeline
        .iter()
        .filter(|l| l.contains("node1 path"))
        .collect();
    assert!(
        during.iter().any(|l| l.contains("-> Direct(203.0.113.10:")),
        "node1 fell back to IPv4 direct:\n{text}"
    );
    assert!(
        !during.iter().any(|l| l.ends_with("-> Relay")),
        "never to DERP:\n{text}"
    );
    // Nothing lost through both switches.
    withdrawal_losses_only(&o, 30.0, &text);
}

#[test]
fn withdrawn_ipv6_between_hard_nats_falls_back_to_derp_and_comes_back() {
    let mut c = pair("hard", "hard", 4, 120);
    c.ipv6 = [
        Some(Ipv6Access::firewall(false)),
        Some(Ipv6Access::firewall(false)),
    ];
    c.disruptions = vec![(
        Duration::from_secs(30),
        Disruption::WithdrawIpv6(1, Duration::from_secs(20)),
    )];
    let o = run(&c);
    let text = show(&o);
    assert!(
        o.timeline
            .iter()
            .any(|l| l.contains("node0 path") && l.ends_with("-> Relay")),
        "no IPv4 path between two hard NATs: DERP while IPv6 is gone\n{text}"
    );
    assert!(o.direct_v6, "IPv6 again at the end:\n{text}");
    assert!(on_ipv6(&o.routes[0]) && on_ipv6(&o.routes[1]));
    withdrawal_losses_only(&o, 30.0, &text);
}
