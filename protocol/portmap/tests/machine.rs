//! The client machine against the modelled gateway (`burrow_portmap::gateway`), one LAN hop
//! apart: which protocol maps, what the report says, renewals, reboots, conflicts, refusals
//! and shutdown.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use burrow_portmap::gateway::GatewayConfig;
use burrow_portmap::{Event, Input, PortMapError, Protocol, TransportProtocol};
use common::{ext, gw, Lan, CLIENT_PORT, EXT, GW, ME, PORT};

#[test]
fn all_three_map_with_nat_pmp_at_once() {
    let mut lan = Lan::new(gw(|_| {}), |_| {});
    lan.start();
    lan.run_until(Duration::from_millis(1));
    let m = lan.mapper.mapping().expect("mapped");
    assert_eq!(m.protocol, Protocol::Pmp);
    assert_eq!(m.external, ext(PORT));
    assert_eq!(m.lease, Some(Duration::from_secs(7200)));
    assert!(!m.private_external);
    // No need to wait for the probe deadline: nothing is preferred to NAT-PMP.
    assert_eq!(lan.events[0].0, Duration::ZERO);
    let r = lan.reports()[0];
    assert!(r.protocols[0].answered && r.protocols[0].mapped);
    assert!(r.protocols[1].answered, "{r:?}");
    let inbound = lan.gw.inbound(lan.now, TransportProtocol::Udp, PORT);
    assert_eq!(inbound, Some(SocketAddrV4::new(ME, PORT)));
}

#[test]
fn pcp_only_maps_with_pcp_and_says_why_not_nat_pmp() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.upnp = None;
        }),
        |_| {},
    );
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let m = lan.mapper.mapping().expect("mapped");
    assert_eq!(m.protocol, Protocol::Pcp);
    assert_eq!(m.external, ext(PORT));
    let r = lan.reports()[0].clone();
    assert!(!r.protocols[0].answered);
    assert_eq!(
        r.protocols[0].error.as_deref(),
        Some("the gateway speaks PCP only")
    );
    assert!(!r.protocols[2].answered);
}

#[test]
fn nat_pmp_only_gateway_answers_pcp_in_its_own_format() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pcp = false;
            c.upnp = None;
        }),
        |c| c.pmp = false,
    );
    lan.start();
    lan.run_until(Duration::from_secs(1));
    assert!(lan.mapper.mapping().is_none());
    let r = lan.reports()[0].clone();
    assert_eq!(
        r.protocols[1].error.as_deref(),
        Some("the gateway speaks NAT-PMP only")
    );
    assert_eq!(r.protocols[1].error_code, Some(1));
}

#[test]
fn upnp_v1_maps_with_add_port_mapping() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
            c.upnp = Some(1);
        }),
        |_| {},
    );
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let m = lan.mapper.mapping().expect("mapped");
    assert_eq!(m.protocol, Protocol::Upnp);
    assert_eq!(m.external, ext(PORT));
    let r = lan.reports()[0].clone();
    assert!(r.protocols[2].answered && r.protocols[2].mapped);
    assert_eq!(r.protocols[2].external_ip, Some(IpAddr::V4(EXT)));
}

#[test]
fn upnp_v2_lets_the_gateway_pick_the_port() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
        }),
        |_| {},
    );
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let m = lan.mapper.mapping().expect("mapped");
    assert_eq!(m.protocol, Protocol::Upnp);
    // The suggested port was free, so AddAnyPortMapping gave it.
    assert_eq!(m.external, ext(PORT));
}

#[test]
fn upnp_permanent_leases_only_and_a_conflict() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
            c.upnp = Some(1);
            c.permanent_leases_only = true;
        }),
        |_| {},
    );
    // Another host holds our port already.
    let other = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 20), CLIENT_PORT);
    let add = burrow_portmap::upnp::soap::encode_request(
        "urn:schemas-upnp-org:service:WANIPConnection:1",
        &burrow_portmap::upnp::Action::AddPortMapping(burrow_portmap::upnp::PortMappingRequest {
            remote_host: None,
            external_port: PORT,
            protocol: TransportProtocol::Udp,
            internal_port: 9,
            internal_client: *other.ip(),
            description: "other".into(),
            lease_seconds: 0,
        }),
    );
    let url = burrow_portmap::upnp::HttpUrl::parse("http://192.168.1.1:5000/ctl/IPConn").unwrap();
    let req = burrow_portmap::upnp::http::post_soap(
        &url,
        "urn:schemas-upnp-org:service:WANIPConnection:1",
        "AddPortMapping",
        &add,
    );
    assert!(lan.gw.handle_http(lan.now, other, &req).is_some());
    assert_eq!(
        lan.gw.inbound(lan.now, TransportProtocol::Udp, PORT),
        Some(SocketAddrV4::new(*other.ip(), 9))
    );

    lan.start();
    lan.run_until(Duration::from_secs(1));
    let m = lan.mapper.mapping().expect("mapped");
    assert_eq!(m.protocol, Protocol::Upnp);
    assert_eq!(m.lease, None, "permanent after error 725");
    assert_ne!(m.external.port(), PORT, "another port after error 718");
    assert_eq!(
        lan.gw
            .inbound(lan.now, TransportProtocol::Udp, m.external.port()),
        Some(SocketAddrV4::new(ME, PORT))
    );
}

#[test]
fn a_denying_gateway_maps_nothing_and_the_report_says_why() {
    let mut lan = Lan::new(gw(|c| c.deny = true), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(5));
    assert!(lan.mapper.mapping().is_none());
    let r = lan.reports()[0].clone();
    assert!(r.protocols.iter().all(|p| p.answered && !p.mapped), "{r:?}");
    assert_eq!(r.protocols[0].error_code, Some(2));
    assert_eq!(r.protocols[1].error_code, Some(2));
    assert_eq!(r.protocols[2].error_code, Some(606));
    assert_eq!(lan.gw.mappings(lan.now).count(), 0);
}

#[test]
fn no_gateway_support_ends_the_round_at_the_probe_deadline() {
    let mut lan = Lan::new(GatewayConfig::none(GW, EXT), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(2));
    let reports = lan.reports();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].protocols.iter().all(|p| !p.answered));
    assert!(lan.mapper.mapping().is_none());
    // It looks again after the retry interval.
    let sent_before = lan.events.len();
    lan.run_until(Duration::from_secs(301));
    assert!(lan.events.len() > sent_before);
}

#[test]
fn renewal_at_half_the_lease_keeps_the_mapping() {
    let mut lan = Lan::new(gw(|c| c.max_lease = 600), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(1));
    assert_eq!(
        lan.mapper.mapping().unwrap().lease,
        Some(Duration::from_secs(600))
    );
    lan.run_until(Duration::from_secs(3 * 3600));
    assert!(lan.mapper.mapping().is_some());
    assert!(lan
        .gw
        .inbound(lan.now, TransportProtocol::Udp, PORT)
        .is_some());
    assert!(!lan
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Lost { .. })));
}

#[test]
fn a_rebooted_gateway_is_noticed_by_its_epoch_and_mapped_again() {
    for (pmp, pcp) in [(true, true), (false, true)] {
        let mut lan = Lan::new(
            gw(|c| {
                c.pmp = pmp;
                c.pcp = pcp;
                c.upnp = None;
            }),
            |_| {},
        );
        lan.start();
        lan.run_until(Duration::from_secs(100));
        lan.gw.reboot(lan.now);
        assert!(lan
            .gw
            .inbound(lan.now, TransportProtocol::Udp, PORT)
            .is_none());
        // Noticed at the next check (every 30 s), long before the renewal.
        lan.run_until(Duration::from_secs(140));
        assert!(
            lan.events
                .iter()
                .any(|(_, e)| matches!(e, Event::GatewayRestarted(_))),
            "{:?}",
            lan.events
        );
        assert_eq!(
            lan.gw.inbound(lan.now, TransportProtocol::Udp, PORT),
            Some(SocketAddrV4::new(ME, PORT)),
            "{pmp} {pcp}: {:?}",
            lan.events
        );
    }
}

#[test]
fn a_rebooted_gateways_announcement_brings_the_check_forward() {
    for (pmp, pcp) in [(true, true), (false, true)] {
        let mut lan = Lan::new(
            gw(|c| {
                c.pmp = pmp;
                c.pcp = pcp;
                c.upnp = None;
            }),
            |_| {},
        );
        lan.start();
        lan.run_until(Duration::from_secs(100));
        let checks_before = lan.events.len();
        lan.gw.reboot(lan.now);
        // What the restarted gateway multicasts: its address (NAT-PMP) or an ANNOUNCE (PCP),
        // with its new epoch.
        let (port, ask) = if pmp {
            (
                5351,
                burrow_portmap::pmp::Request::ExternalAddress.to_bytes(),
            )
        } else {
            (
                5351,
                burrow_portmap::pcp::Request::announce(IpAddr::V4(ME)).to_bytes(),
            )
        };
        let from = SocketAddrV4::new(ME, CLIENT_PORT);
        let announcement = lan
            .gw
            .handle_udp(lan.now, from, port, &ask)
            .expect("the gateway answers");
        let src = SocketAddr::new(IpAddr::V4(GW), port);
        for _ in 0..3 {
            // Repeated announcements bring one check forward, not three.
            lan.mapper
                .handle_input(
                    lan.now,
                    Input::Udp {
                        from: src,
                        data: &announcement,
                    },
                )
                .expect("an announcement is welcome while mapped");
        }
        // Mapped again within a second, not at the next 30 s check.
        lan.run_until(Duration::from_secs(101));
        assert!(
            lan.events[checks_before..]
                .iter()
                .any(|(_, e)| matches!(e, Event::GatewayRestarted(_))),
            "{pmp} {pcp}: {:?}",
            lan.events
        );
        assert_eq!(
            lan.gw.inbound(lan.now, TransportProtocol::Udp, PORT),
            Some(SocketAddrV4::new(ME, PORT)),
            "{pmp} {pcp}: {:?}",
            lan.events
        );
    }
    // Before anything is mapped, an announcement is unsolicited.
    let mut lan = Lan::new(gw(|_| {}), |_| {});
    let ask = burrow_portmap::pmp::Request::ExternalAddress.to_bytes();
    let answer = lan
        .gw
        .handle_udp(lan.now, SocketAddrV4::new(ME, CLIENT_PORT), 5351, &ask)
        .expect("the gateway answers");
    assert!(matches!(
        lan.mapper.handle_input(
            lan.now,
            Input::Udp {
                from: SocketAddr::new(IpAddr::V4(GW), 5351),
                data: &answer,
            },
        ),
        Err(PortMapError::Unsolicited)
    ));
}

#[test]
fn upnp_mappings_lost_in_a_reboot_come_back_at_the_next_check() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
        }),
        |_| {},
    );
    lan.start();
    lan.run_until(Duration::from_secs(10));
    lan.gw.reboot(lan.now);
    lan.run_until(Duration::from_secs(45));
    assert!(lan
        .gw
        .inbound(lan.now, TransportProtocol::Udp, PORT)
        .is_some());
    assert!(lan.mapper.mapping().is_some());
}

#[test]
fn a_new_external_address_moves_the_mapping() {
    let mut lan = Lan::new(gw(|_| {}), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(5));
    let new_ip = Ipv4Addr::new(203, 0, 113, 77);
    lan.gw.set_external_ip(new_ip);
    lan.run_until(Duration::from_secs(40));
    let m = lan.mapper.mapping().unwrap();
    assert_eq!(m.external, SocketAddr::V4(SocketAddrV4::new(new_ip, PORT)));
    let mapped: Vec<_> = lan
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Mapped(_)))
        .collect();
    assert_eq!(mapped.len(), 2, "{mapped:?}");
}

#[test]
fn a_double_nat_is_reported_as_private() {
    let mut lan = Lan::new(GatewayConfig::all(GW, Ipv4Addr::new(100, 64, 3, 4)), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let m = lan.mapper.mapping().unwrap();
    assert!(m.private_external);
    assert!(lan.reports()[0].protocols[0].private_external);
}

#[test]
fn a_gateway_gone_silent_loses_the_mapping() {
    let mut lan = Lan::new(gw(|_| {}), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(5));
    lan.blackhole = true;
    lan.run_until(Duration::from_secs(60));
    assert!(lan.mapper.mapping().is_none());
    assert!(lan.events.iter().any(|(_, e)| matches!(
        e,
        Event::Lost {
            protocol: Protocol::Pmp,
            ..
        }
    )));
}

#[test]
fn shutdown_deletes_the_mapping_with_each_protocol() {
    for (pmp, pcp, upnp) in [
        (true, false, None),
        (false, true, None),
        (false, false, Some(1)),
        (false, false, Some(2)),
    ] {
        let mut lan = Lan::new(
            gw(|c| {
                c.pmp = pmp;
                c.pcp = pcp;
                c.upnp = upnp;
            }),
            |_| {},
        );
        lan.start();
        lan.run_until(Duration::from_secs(1));
        assert!(
            lan.mapper.mapping().is_some(),
            "{pmp} {pcp} {upnp:?}: {:?}",
            lan.events
        );
        lan.mapper.shutdown(lan.now);
        lan.run_until(Duration::from_secs(3));
        assert!(lan.mapper.is_closed());
        assert_eq!(lan.gw.mappings(lan.now).count(), 0, "{pmp} {pcp} {upnp:?}");
        assert!(matches!(lan.events.last(), Some((_, Event::Closed))));
    }
}

#[test]
fn strangers_and_off_gateway_urls_are_refused() {
    let mut lan = Lan::new(gw(|_| {}), |_| {});
    lan.start();
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 66)), 5351);
    let fake = burrow_portmap::pmp::Response::ExternalAddress {
        result: burrow_portmap::pmp::ResultCode::Success,
        epoch: 1,
        external: Ipv4Addr::new(6, 6, 6, 6),
    }
    .to_bytes();
    assert_eq!(
        lan.mapper.handle_input(
            lan.now,
            Input::Udp {
                from: stranger,
                data: &fake
            }
        ),
        Err(PortMapError::NotGateway(stranger))
    );
    // An SSDP answer from the gateway that points elsewhere.
    let url = burrow_portmap::upnp::HttpUrl::parse("http://192.168.1.66:80/desc.xml").unwrap();
    let ssdp = burrow_portmap::upnp::ssdp::response(
        &url,
        "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
        "uuid:x",
        "x",
    );
    let r = lan.mapper.handle_input(
        lan.now,
        Input::Udp {
            from: SocketAddr::new(IpAddr::V4(GW), 1900),
            data: &ssdp,
        },
    );
    assert!(matches!(r, Err(PortMapError::Upnp(_))), "{r:?}");
    // Garbage from the gateway is an error for that datagram only.
    let r = lan.mapper.handle_input(
        lan.now,
        Input::Udp {
            from: SocketAddr::new(IpAddr::V4(GW), 5351),
            data: &[0, 0x80, 1],
        },
    );
    assert!(r.is_err());
    lan.run_until(Duration::from_secs(1));
    assert_eq!(lan.mapper.mapping().unwrap().external, ext(PORT));
}

#[test]
fn an_igd_that_fails_every_add_falls_back_to_nothing_and_says_why() {
    // Discovery and queries answer, AddPortMapping fails (here with 501 ActionFailed).
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
            c.upnp = Some(1);
            c.fail_add = Some(501);
        }),
        |_| {},
    );
    lan.start();
    lan.run_until(Duration::from_secs(5));
    assert!(lan.mapper.mapping().is_none());
    let r = lan.reports()[0].clone();
    assert!(r.protocols[2].answered);
    assert_eq!(r.protocols[2].error_code, Some(501), "{r:?}");
    assert_eq!(r.protocols[2].external_ip, Some(IpAddr::V4(EXT)));
}

#[test]
fn a_full_mapping_table_is_reported_and_mapped_later() {
    let mut lan = Lan::new(gw(|c| c.max_mappings = 0), |c| {
        c.retry_interval = Duration::from_secs(60);
    });
    lan.start();
    lan.run_until(Duration::from_secs(5));
    assert!(lan.mapper.mapping().is_none());
    let r = lan.reports()[0].clone();
    // NAT-PMP: out of resources (4); PCP: no resources (8); UPnP: no port maps available (728).
    assert_eq!(r.protocols[0].error_code, Some(4), "{r:?}");
    assert_eq!(r.protocols[1].error_code, Some(8), "{r:?}");
    assert_eq!(r.protocols[2].error_code, Some(728), "{r:?}");
    // Room again: the next round maps.
    let mut c = lan.gw.config().clone();
    c.max_mappings = 8;
    lan.gw = burrow_portmap::gateway::Gateway::new(c, lan.now, 2);
    lan.run_until(Duration::from_secs(70));
    assert_eq!(lan.mapper.mapping().unwrap().external, ext(PORT));
}
