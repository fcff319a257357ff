//! The port mapper under attack from its own network: a LAN host forging the gateway's
//! answers or pointing discovery elsewhere, an on-path answer for another mapping, a gateway
//! (or impostor) sending garbage, oversized or endless HTTP. Each is refused or contained: no
//! mapping from a stranger, no request to any address but the gateway's, every bad datagram a
//! typed error that leaves the machine working.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use burrow_portmap::upnp::{self, HttpUrl, ServiceKind};
use burrow_portmap::{pcp, pmp, Input, PortMapError, Protocol, Transmit};
use common::{ext, gw, Lan, GW, PORT};

const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 66);

#[test]
fn forged_answers_from_a_lan_host_map_nothing() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
            c.upnp = None;
        }),
        |_| {},
    );
    lan.start();
    let forged = [
        pmp::Response::ExternalAddress {
            result: pmp::ResultCode::Success,
            epoch: 1,
            external: Ipv4Addr::new(6, 6, 6, 6),
        }
        .to_bytes(),
        pmp::Response::Map {
            protocol: burrow_portmap::TransportProtocol::Udp,
            result: pmp::ResultCode::Success,
            epoch: 1,
            internal_port: PORT,
            external_port: 1,
            lifetime: 7200,
        }
        .to_bytes(),
    ];
    for port in [5351, 1900, 5350] {
        for f in &forged {
            let from = SocketAddr::new(IpAddr::V4(STRANGER), port);
            assert_eq!(
                lan.mapper
                    .handle_input(lan.now, Input::Udp { from, data: f }),
                Err(PortMapError::NotGateway(from))
            );
        }
    }
    lan.run_until(Duration::from_secs(2));
    assert!(lan.mapper.mapping().is_none());
    assert!(lan.reports()[0].protocols.iter().all(|p| !p.answered));
}

#[test]
fn a_description_pointing_off_the_gateway_is_not_followed() {
    // The gateway's own SSDP answer leads to a description whose control URL is elsewhere
    // (a compromised or confused IGD; following it would make the node a request forger).
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.pcp = false;
            c.upnp = None;
        }),
        |c| {
            c.pmp = false;
            c.pcp = false;
        },
    );
    lan.mapper.start(lan.now);
    let location = HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap();
    let ssdp = upnp::ssdp::response(
        &location,
        "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
        "uuid:x",
        "x",
    );
    let from = SocketAddr::new(IpAddr::V4(GW), 1900);
    let mut http_id = None;
    while let Some(t) = lan.mapper.poll_transmit() {
        if let Transmit::Http { .. } = t {
            panic!("HTTP before discovery");
        }
    }
    lan.mapper
        .handle_input(lan.now, Input::Udp { from, data: &ssdp })
        .unwrap();
    while let Some(t) = lan.mapper.poll_transmit() {
        if let Transmit::Http { id, dst, .. } = t {
            assert_eq!(dst.ip(), IpAddr::V4(GW));
            http_id = Some(id);
        }
    }
    let body = upnp::description::render(
        "evil",
        1,
        &[(ServiceKind::WanIpConnection1, "http://10.9.9.9:80/ctl")],
    );
    let answer = upnp::http::response(200, &body);
    let r = lan.mapper.handle_input(
        lan.now,
        Input::Http {
            id: http_id.expect("a description request"),
            response: Some(&answer),
        },
    );
    assert!(matches!(r, Err(PortMapError::Upnp(_))), "{r:?}");
    while let Some(t) = lan.mapper.poll_transmit() {
        if let Transmit::Http { dst, .. } = t {
            assert_eq!(dst.ip(), IpAddr::V4(GW), "followed a URL off the gateway");
        }
    }
    lan.run_until(Duration::from_secs(5));
    assert!(lan.mapper.mapping().is_none());
    let r = &lan.reports()[0].protocols[2];
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("not on the gateway"),
        "{r:?}"
    );
}

#[test]
fn an_answer_for_another_pcp_mapping_is_ignored() {
    let mut lan = Lan::new(
        gw(|c| {
            c.pmp = false;
            c.upnp = None;
        }),
        |c| {
            c.pmp = false;
            c.upnp = false;
        },
    );
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let m = lan.mapper.mapping().expect("mapped with PCP");
    assert_eq!(m.protocol, Protocol::Pcp);
    // A MAP answer with someone else's nonce, claiming our port moved.
    let spoof = pcp::Response {
        opcode: pcp::Opcode::Map,
        result: pcp::ResultCode::Success,
        lifetime: 7200,
        epoch: 1,
        map: Some(pcp::MapBody {
            nonce: [0xee; 12],
            protocol: pcp::PROTOCOL_UDP,
            internal_port: PORT,
            external_port: 1,
            external_ip: IpAddr::V4(Ipv4Addr::new(6, 6, 6, 6)),
        }),
        options: Vec::new(),
        other_body: Vec::new(),
    }
    .to_bytes();
    let from = SocketAddr::new(IpAddr::V4(GW), 5351);
    let _ = lan
        .mapper
        .handle_input(lan.now, Input::Udp { from, data: &spoof });
    lan.run_until(Duration::from_secs(100));
    assert_eq!(lan.mapper.mapping().unwrap().external, ext(PORT));
}

#[test]
fn garbage_from_the_gateway_is_one_error_per_datagram() {
    let mut lan = Lan::new(gw(|_| {}), |_| {});
    lan.start();
    lan.run_until(Duration::from_secs(1));
    let before = lan.mapper.mapping();
    assert!(before.is_some());
    let from = SocketAddr::new(IpAddr::V4(GW), 5351);
    let mut junk = vec![0u8; 0];
    for i in 0..2000u32 {
        junk.clear();
        junk.extend((0..(i % 70)).map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8)));
        if let Some(b) = junk.first_mut() {
            *b = [0u8, 2, 7][i as usize % 3];
        }
        let _ = lan
            .mapper
            .handle_input(lan.now, Input::Udp { from, data: &junk });
    }
    lan.run_until(Duration::from_secs(120));
    assert_eq!(
        lan.mapper.mapping().map(|m| m.external),
        before.map(|m| m.external)
    );
}

#[test]
fn an_oversized_or_missing_http_answer_ends_only_the_upnp_leg() {
    let mut huge = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n".to_vec();
    huge.resize(200 * 1024, b'x');
    for answer in [Some(huge), None] {
        let mut lan = Lan::new(
            gw(|c| {
                c.pmp = false;
                c.pcp = false;
            }),
            |c| {
                c.pmp = false;
                c.pcp = false;
            },
        );
        lan.mapper.start(lan.now);
        let ssdp = upnp::ssdp::response(
            &HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap(),
            "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
            "uuid:x",
            "x",
        );
        let from = SocketAddr::new(IpAddr::V4(GW), 1900);
        while lan.mapper.poll_transmit().is_some() {}
        lan.mapper
            .handle_input(lan.now, Input::Udp { from, data: &ssdp })
            .unwrap();
        let Some(Transmit::Http { id, .. }) = lan.mapper.poll_transmit() else {
            panic!("no description request");
        };
        let r = lan.mapper.handle_input(
            lan.now,
            Input::Http {
                id,
                response: answer.as_deref(),
            },
        );
        if answer.is_some() {
            assert!(
                matches!(r, Err(PortMapError::Upnp(upnp::UpnpError::TooLarge))),
                "{r:?}"
            );
        }
        // The round ends without a mapping, and a later round starts afresh.
        lan.run_until(Duration::from_secs(400));
        assert!(
            lan.mapper.mapping().is_some(),
            "the next round maps with the real gateway"
        );
    }
}
