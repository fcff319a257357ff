//! The IPv6 pinhole (PCP MAP over IPv6, RFC 6887 §11) against the modelled gateway: made,
//! renewed at half its lease, made again after a reboot, deleted at shutdown, refused, moved
//! to a new address, and forged answers ignored.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use burrow_portmap::{
    pcp, Event, Input, PinholeConfig, PinholeEvent, PortMapError, Transmit, TransportProtocol,
};
use common::{gw, Lan, GW6, ME6, PORT};

fn pinhole_lan(tweak: impl FnOnce(&mut burrow_portmap::gateway::GatewayConfig)) -> Lan {
    Lan::new(
        gw(|c| {
            c.lan_ip6 = Some(GW6);
            tweak(c);
        }),
        |c| {
            c.pinhole = Some(PinholeConfig {
                gateway: GW6,
                local_ip: ME6,
                scope_id: 0,
            })
        },
    )
}

fn me6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ME6, port, 0, 0)
}

fn opened(lan: &Lan) -> usize {
    lan.pinhole_events
        .iter()
        .filter(|(_, e)| matches!(e, PinholeEvent::Opened(_)))
        .count()
}

#[test]
fn a_pinhole_is_opened_beside_the_ipv4_mapping() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let want = SocketAddr::V6(me6(PORT));
    assert_eq!(lan.mapper.pinhole(), Some(want));
    assert!(lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    assert_eq!(lan.pinhole_events.len(), 1, "{:?}", lan.pinhole_events);
    assert_eq!(lan.pinhole_events[0].1, PinholeEvent::Opened(want));
    let r = lan.mapper.report();
    assert_eq!(r.pinhole, Some(want));
    assert_eq!(r.pinhole_error, None);
    // The IPv4 mapping is as it would be without the pinhole.
    assert!(lan.mapper.mapping().is_some());
}

#[test]
fn without_ipv6_on_the_gateway_there_is_no_pinhole_and_ipv4_still_maps() {
    let mut lan = pinhole_lan(|c| c.lan_ip6 = None);
    lan.start();
    lan.run_until(Duration::from_secs(10));
    assert!(lan.mapper.mapping().is_some());
    assert_eq!(lan.mapper.pinhole(), None);
    let r = lan.mapper.report();
    assert_eq!(r.pinhole_error_code, None);
    assert!(r.pinhole_error.is_some(), "{r:?}");
    assert!(matches!(
        lan.pinhole_events[..],
        [(_, PinholeEvent::Refused { code: None, .. })]
    ));
}

#[test]
fn the_pinhole_is_renewed_at_half_its_lease() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(3590));
    let expires = |lan: &Lan| lan.gw.pinholes(lan.now).next().map(|p| p.expires);
    // Not renewed yet: it lapses 7,200 s after it was made.
    assert_eq!(expires(&lan), Some(lan.t0 + Duration::from_secs(7200)));
    lan.run_until(Duration::from_secs(3610));
    let renewed = expires(&lan).expect("still open");
    assert!(
        renewed >= lan.t0 + Duration::from_secs(3600 + 7200),
        "{:?}",
        renewed - lan.t0
    );
    lan.run_until(Duration::from_secs(20_000));
    assert!(lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    // The same pinhole all along: no new event.
    assert_eq!(opened(&lan), 1, "{:?}", lan.pinhole_events);
}

#[test]
fn a_rebooted_gateway_gets_the_pinhole_again() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(100));
    lan.gw.reboot(lan.now);
    assert!(!lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    // Noticed at the next check (every 30 s) by the epoch, long before the renewal.
    lan.run_until(Duration::from_secs(125));
    assert!(
        lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)),
        "{:?}",
        lan.pinhole_events
    );
    assert!(lan.mapper.pinhole().is_some());
}

#[test]
fn a_rebooted_gateways_ipv6_announcement_brings_the_check_forward() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(100));
    lan.gw.reboot(lan.now);
    let announce = pcp::Request::announce(IpAddr::V6(ME6)).to_bytes();
    let answer = lan
        .gw
        .handle_udp6(lan.now, me6(5350), 5351, &announce)
        .expect("answered");
    let from = SocketAddr::new(IpAddr::V6(GW6), 5351);
    let now = lan.now;
    lan.mapper
        .handle_input(
            now,
            Input::Udp {
                from,
                data: &answer,
            },
        )
        .expect("taken");
    lan.run_until(Duration::from_secs(101));
    assert!(lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
}

#[test]
fn the_pinhole_is_deleted_at_shutdown() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(10));
    assert!(lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    let now = lan.now;
    lan.mapper.shutdown(now);
    lan.pump();
    assert!(!lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    assert!(lan.gw.mappings(lan.now).next().is_none());
    assert!(lan.mapper.is_closed());
    assert_eq!(lan.mapper.pinhole(), None);
    assert!(matches!(
        lan.pinhole_events.last(),
        Some((_, PinholeEvent::Lost { .. }))
    ));
    assert_eq!(
        lan.events
            .iter()
            .filter(|(_, e)| *e == Event::Closed)
            .count(),
        1
    );
}

#[test]
fn shutdown_waits_for_the_pinholes_deletion_then_gives_up() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(10));
    // The gateway no longer answers over IPv6 (its IPv6 went away).
    lan.gw.reboot(lan.now);
    let cfg = lan.gw.config().clone();
    lan.gw = burrow_portmap::gateway::Gateway::new(
        burrow_portmap::gateway::GatewayConfig {
            lan_ip6: None,
            ..cfg
        },
        lan.now,
        1,
    );
    let now = lan.now;
    lan.mapper.shutdown(now);
    lan.pump();
    // IPv4's deletion is answered; IPv6's is not: still closing.
    assert!(!lan.mapper.is_closed());
    lan.run_until(Duration::from_secs(12));
    assert!(lan.mapper.is_closed());
}

#[test]
fn a_refused_pinhole_is_reported_with_the_pcp_error() {
    let mut lan = pinhole_lan(|c| c.deny = true);
    lan.start();
    lan.run_until(Duration::from_secs(1));
    assert_eq!(lan.mapper.pinhole(), None);
    assert!(!lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    let r = lan.mapper.report();
    assert_eq!(r.pinhole, None);
    // NOT_AUTHORIZED.
    assert_eq!(r.pinhole_error_code, Some(2));
    assert!(r
        .pinhole_error
        .as_deref()
        .unwrap()
        .contains("NotAuthorized"));
    assert!(matches!(
        lan.pinhole_events[..],
        [(_, PinholeEvent::Refused { code: Some(2), .. })]
    ));
    // Asked again after the retry interval (300 s), not before.
    lan.run_until(Duration::from_secs(299));
    assert_eq!(lan.pinhole_events.len(), 1);
    lan.run_until(Duration::from_secs(302));
    assert_eq!(lan.pinhole_events.len(), 2);
}

#[test]
fn a_pinhole_refused_at_renewal_is_lost() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(10));
    // The owner turns mapping off.
    let cfg = lan.gw.config().clone();
    lan.gw = burrow_portmap::gateway::Gateway::new(
        burrow_portmap::gateway::GatewayConfig { deny: true, ..cfg },
        lan.t0,
        1,
    );
    lan.run_until(Duration::from_secs(3610));
    assert_eq!(lan.mapper.pinhole(), None);
    assert!(lan
        .pinhole_events
        .iter()
        .any(|(_, e)| matches!(e, PinholeEvent::Lost { .. })));
    assert_eq!(lan.mapper.report().pinhole_error_code, Some(2));
}

/// The mapper's pending IPv6 MAP request, taken off its queue unsent.
fn pending_map(lan: &mut Lan) -> pcp::Request {
    let mut found = None;
    while let Some(t) = lan.mapper.poll_transmit() {
        if let Transmit::Udp {
            dst: SocketAddr::V6(dst),
            payload,
        } = t
        {
            assert_eq!(*dst.ip(), GW6);
            assert_eq!(dst.port(), 5351);
            found = Some(pcp::Request::decode(&payload).expect("PCP"));
        }
    }
    found.expect("an IPv6 MAP request")
}

fn success(req: &pcp::Request, external: SocketAddr) -> Vec<u8> {
    pcp::Response {
        opcode: pcp::Opcode::Map,
        result: pcp::ResultCode::Success,
        lifetime: 7200,
        epoch: 50,
        map: Some(pcp::MapBody {
            external_port: external.port(),
            external_ip: external.ip(),
            ..req.map.expect("a MAP body")
        }),
        options: Vec::new(),
        other_body: Vec::new(),
    }
    .to_bytes()
}

#[test]
fn forged_answers_are_ignored() {
    let mut lan = pinhole_lan(|_| {});
    let now = lan.now;
    lan.mapper.start(now);
    let req = pending_map(&mut lan);
    let map = req.map.unwrap();
    // What we ask for: our own address and port, UDP, our nonce.
    assert_eq!(req.client_ip, IpAddr::V6(ME6));
    assert_eq!(map.external_ip, IpAddr::V6(ME6));
    assert_eq!((map.internal_port, map.external_port), (PORT, PORT));
    assert_eq!(map.protocol, pcp::PROTOCOL_UDP);
    assert_eq!(req.lifetime, 7200);

    let evil = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 1)),
        9,
    );
    let gw6 = SocketAddr::new(IpAddr::V6(GW6), 5351);
    let feed = |lan: &mut Lan, from: SocketAddr, data: &[u8]| {
        let now = lan.now;
        lan.mapper.handle_input(now, Input::Udp { from, data })
    };
    // Our nonce, but from another host, or from the gateway's address but another port.
    let other_host = SocketAddr::new(evil.ip(), 5351);
    assert_eq!(
        feed(&mut lan, other_host, &success(&req, evil)),
        Err(PortMapError::NotGateway(other_host))
    );
    let other_port = SocketAddr::new(IpAddr::V6(GW6), 5350);
    assert_eq!(
        feed(&mut lan, other_port, &success(&req, evil)),
        Err(PortMapError::NotGateway(other_port))
    );
    // From the gateway, but with a wrong nonce, or for another port.
    let mut wrong = req.clone();
    wrong.map.as_mut().unwrap().nonce[0] ^= 1;
    assert_eq!(
        feed(&mut lan, gw6, &success(&wrong, evil)),
        Err(PortMapError::Unsolicited)
    );
    let mut other = req.clone();
    other.map.as_mut().unwrap().internal_port = 22;
    assert_eq!(
        feed(&mut lan, gw6, &success(&other, evil)),
        Err(PortMapError::Unsolicited)
    );
    // Garbage from the gateway.
    assert!(feed(&mut lan, gw6, &[2, 0x81, 0, 0]).is_err());
    assert_eq!(lan.mapper.pinhole(), None);
    assert!(lan.mapper.poll_pinhole_event().is_none());
    // The real answer still counts.
    let real = SocketAddr::V6(me6(PORT));
    assert_eq!(feed(&mut lan, gw6, &success(&req, real)), Ok(()));
    assert_eq!(lan.mapper.pinhole(), Some(real));
    // A replayed answer changes nothing (none pending).
    assert_eq!(
        feed(&mut lan, gw6, &success(&req, evil)),
        Err(PortMapError::Unsolicited)
    );
    assert_eq!(lan.mapper.pinhole(), Some(real));
}

#[test]
fn without_a_pinhole_config_ipv6_datagrams_are_refused() {
    let mut lan = Lan::new(gw(|c| c.lan_ip6 = Some(GW6)), |_| {});
    lan.start();
    let now = lan.now;
    let from = SocketAddr::new(IpAddr::V6(GW6), 5351);
    assert_eq!(
        lan.mapper.handle_input(
            now,
            Input::Udp {
                from,
                data: &[0; 60]
            }
        ),
        Err(PortMapError::NotGateway(from))
    );
    // And nothing is sent over IPv6.
    lan.run_until(Duration::from_secs(5));
    assert!(lan.gw.pinholes(lan.now).next().is_none());
    assert!(lan.pinhole_events.is_empty());
}

#[test]
fn a_new_address_moves_the_pinhole() {
    let mut lan = pinhole_lan(|_| {});
    lan.start();
    lan.run_until(Duration::from_secs(10));
    let new = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x20);
    let now = lan.now;
    lan.mapper.set_pinhole(
        now,
        Some(PinholeConfig {
            gateway: GW6,
            local_ip: new,
            scope_id: 0,
        }),
    );
    // The old one is deleted (sent from the old address, still configured for a moment),
    // the new one asked for from the new address.
    let mut sent = Vec::new();
    while let Some(t) = lan.mapper.poll_transmit() {
        if let Transmit::Udp {
            dst: SocketAddr::V6(dst),
            payload,
        } = t
        {
            sent.push((dst, pcp::Request::decode(&payload).unwrap(), payload));
        }
    }
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].1.lifetime, 0);
    assert_eq!(sent[0].1.client_ip, IpAddr::V6(ME6));
    assert_eq!(sent[1].1.client_ip, IpAddr::V6(new));
    assert_ne!(sent[0].1.map.unwrap().nonce, sent[1].1.map.unwrap().nonce);
    for (dst, req, payload) in &sent {
        let IpAddr::V6(src) = req.client_ip else {
            unreachable!()
        };
        let answer = lan
            .gw
            .handle_udp6(
                lan.now,
                SocketAddrV6::new(src, 40000, 0, 0),
                dst.port(),
                payload,
            )
            .expect("answered");
        let _ = lan.mapper.handle_input(
            now,
            Input::Udp {
                from: SocketAddr::V6(*dst),
                data: &answer,
            },
        );
    }
    lan.pump();
    assert!(!lan.gw.inbound6(lan.now, TransportProtocol::Udp, me6(PORT)));
    let moved = SocketAddrV6::new(new, PORT, 0, 0);
    assert!(lan.gw.inbound6(lan.now, TransportProtocol::Udp, moved));
    assert_eq!(lan.mapper.pinhole(), Some(SocketAddr::V6(moved)));
    let kinds: Vec<_> = lan.pinhole_events.iter().map(|(_, e)| e.clone()).collect();
    assert!(
        matches!(
            &kinds[..],
            [
                PinholeEvent::Opened(_),
                PinholeEvent::Lost { .. },
                PinholeEvent::Opened(b)
            ] if *b == SocketAddr::V6(moved)
        ),
        "{kinds:?}"
    );
    // No IPv6 address any more: nothing asked, nothing live.
    lan.mapper.set_pinhole(now, None);
    lan.pump();
    assert_eq!(lan.mapper.pinhole(), None);
}

proptest::proptest! {
    /// Whatever arrives over IPv6 before the gateway's answer — random bytes, or well-formed
    /// MAP successes with a guessed nonce, from the gateway or anyone — opens no pinhole,
    /// panics nowhere, and leaves the real answer working.
    #[test]
    fn guessed_answers_open_no_pinhole(
        junk in proptest::collection::vec(
            (
                proptest::bool::ANY,
                proptest::array::uniform12(proptest::prelude::any::<u8>()),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
                proptest::prelude::any::<u128>(),
            ),
            1..24,
        ),
    ) {
        let mut lan = pinhole_lan(|_| {});
        let now = lan.now;
        lan.mapper.start(now);
        let req = pending_map(&mut lan);
        let real_nonce = req.map.unwrap().nonce;
        let gw6 = SocketAddr::new(IpAddr::V6(GW6), 5351);
        for (shaped, nonce, bytes, src) in junk {
            let data = if shaped {
                let mut guess = req.clone();
                guess.map.as_mut().unwrap().nonce = nonce;
                success(&guess, SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), 9))
            } else {
                bytes
            };
            let from = if src % 2 == 0 {
                gw6
            } else {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), 5351)
            };
            let taken = lan.mapper.handle_input(now, Input::Udp { from, data: &data });
            if taken.is_ok() {
                // Only the gateway's answer with our nonce counts.
                proptest::prop_assert_eq!(from, gw6);
                proptest::prop_assert_eq!(nonce, real_nonce);
            }
        }
        proptest::prop_assert_eq!(lan.mapper.pinhole(), None);
        let real = SocketAddr::V6(me6(PORT));
        let answer = success(&req, real);
        let taken = lan.mapper.handle_input(now, Input::Udp { from: gw6, data: &answer });
        proptest::prop_assert_eq!(taken, Ok(()));
        proptest::prop_assert_eq!(lan.mapper.pinhole(), Some(real));
    }
}
