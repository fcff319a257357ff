//! NAT-PMP and PCP messages, byte for byte (the layouts of RFC 6886 §3 and RFC 6887 §7–§13;
//! neither RFC gives example bytes, so these are written out from the field tables), and
//! decoders that never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use burrow_portmap::pcp::{self, MapBody, Opcode, PcpError, PcpOption};
use burrow_portmap::pmp::{self, PmpError};
use burrow_portmap::TransportProtocol;
use proptest::prelude::*;

#[test]
fn pmp_requests() {
    assert_eq!(pmp::Request::ExternalAddress.to_bytes(), [0, 0]);
    let map = pmp::Request::Map {
        protocol: TransportProtocol::Udp,
        internal_port: 41641,
        suggested_external_port: 41641,
        lifetime: 7200,
    };
    let bytes = [0, 1, 0, 0, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20];
    assert_eq!(map.to_bytes(), bytes);
    assert_eq!(pmp::Request::decode(&bytes), Ok(map));
    let tcp_delete = [0, 2, 0, 0, 0x1f, 0x90, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        pmp::Request::decode(&tcp_delete),
        Ok(pmp::Request::Map {
            protocol: TransportProtocol::Tcp,
            internal_port: 8080,
            suggested_external_port: 0,
            lifetime: 0,
        })
    );
}

#[test]
fn pmp_responses() {
    let ext = [0, 0x80, 0, 0, 0, 0, 0x0e, 0x10, 203, 0, 113, 7];
    let r = pmp::Response::decode(&ext).unwrap();
    assert_eq!(
        r,
        pmp::Response::ExternalAddress {
            result: pmp::ResultCode::Success,
            epoch: 3600,
            external: Ipv4Addr::new(203, 0, 113, 7),
        }
    );
    assert_eq!(r.to_bytes(), ext);
    let map = [
        0, 0x81, 0, 0, 0, 0, 0x0e, 0x10, 0xa2, 0xa9, 0xc3, 0x50, 0, 0, 0x1c, 0x20,
    ];
    let r = pmp::Response::decode(&map).unwrap();
    assert_eq!(
        r,
        pmp::Response::Map {
            protocol: TransportProtocol::Udp,
            result: pmp::ResultCode::Success,
            epoch: 3600,
            internal_port: 41641,
            external_port: 50000,
            lifetime: 7200,
        }
    );
    assert_eq!(r.to_bytes(), map);
    // An error may come short: only the header and the epoch.
    let short = [0, 0x81, 0, 2, 0, 0, 0, 5];
    let r = pmp::Response::decode(&short).unwrap();
    assert_eq!(r.result(), pmp::ResultCode::NotAuthorized);
    assert_eq!(r.epoch(), 5);
    // A success may not.
    assert_eq!(
        pmp::Response::decode(&[0, 0x81, 0, 0, 0, 0, 0, 5]),
        Err(PmpError::TooShort { len: 8, need: 16 })
    );
    assert_eq!(
        pmp::Response::decode(&[2, 0x80, 0, 0]),
        Err(PmpError::Version(2))
    );
    assert_eq!(
        pmp::Response::decode(&[0, 0x01, 0, 0]),
        Err(PmpError::Direction(1))
    );
    assert_eq!(
        pmp::Response::decode(&[0, 0x85, 0, 0, 0, 0, 0, 0]),
        Err(PmpError::Opcode(0x85))
    );
    assert_eq!(
        pmp::ResultCode::from_code(4),
        pmp::ResultCode::OutOfResources
    );
    assert_eq!(pmp::ResultCode::Other(99).code(), 99);
}

const CLIENT: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 10];

#[test]
fn pcp_announce() {
    let r = pcp::Request::announce(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)));
    let mut want = vec![2, 0, 0, 0, 0, 0, 0, 0];
    want.extend_from_slice(&CLIENT);
    assert_eq!(r.to_bytes(), want);
    assert_eq!(pcp::Request::decode(&want), Ok(r));
    // The answer: R bit, result 0, lifetime 0, epoch 77, 96 reserved bits.
    let mut answer = vec![2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 77];
    answer.extend_from_slice(&[0; 12]);
    let a = pcp::Response::decode(&answer).unwrap();
    assert_eq!(a.opcode, Opcode::Announce);
    assert_eq!(a.result, pcp::ResultCode::Success);
    assert_eq!(a.epoch, 77);
    assert_eq!(a.to_bytes(), answer);
}

fn nonce() -> [u8; 12] {
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
}

#[test]
fn pcp_map_request_and_response() {
    let body = MapBody {
        nonce: nonce(),
        protocol: pcp::PROTOCOL_UDP,
        internal_port: 41641,
        external_port: 0,
        external_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mut r = pcp::Request::map(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), 7200, body);
    r.options.push(PcpOption::PreferFailure);
    let mut want = vec![2, 1, 0, 0, 0, 0, 0x1c, 0x20];
    want.extend_from_slice(&CLIENT);
    want.extend_from_slice(&nonce());
    want.extend_from_slice(&[17, 0, 0, 0, 0xa2, 0xa9, 0, 0]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    want.extend_from_slice(&[2, 0, 0, 0]); // PREFER_FAILURE, no data
    assert_eq!(want.len(), 64);
    assert_eq!(r.to_bytes(), want);
    assert_eq!(pcp::Request::decode(&want), Ok(r));

    let mut answer = vec![2, 0x81, 0, 0, 0, 0, 0x1c, 0x20, 0, 0, 0, 100];
    answer.extend_from_slice(&[0; 12]);
    answer.extend_from_slice(&nonce());
    answer.extend_from_slice(&[17, 0, 0, 0, 0xa2, 0xa9, 0xa2, 0xaa]);
    answer.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 2]);
    let a = pcp::Response::decode(&answer).unwrap();
    assert_eq!(a.lifetime, 7200);
    assert_eq!(a.epoch, 100);
    let m = a.map.unwrap();
    assert_eq!(m.nonce, nonce());
    assert_eq!(m.external_port, 41642);
    assert_eq!(m.external_ip, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)));
    assert_eq!(a.to_bytes(), answer);
}

#[test]
fn pcp_ipv6_map_and_options() {
    let client: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let body = MapBody {
        nonce: nonce(),
        protocol: pcp::PROTOCOL_UDP,
        internal_port: 41641,
        external_port: 41641,
        external_ip: IpAddr::V6(client),
    };
    let mut r = pcp::Request::map(IpAddr::V6(client), 600, body);
    r.options.push(PcpOption::Filter {
        prefix_length: 128,
        remote_port: 3478,
        remote_ip: IpAddr::V6("2001:db8::1".parse().unwrap()),
    });
    r.options
        .push(PcpOption::ThirdParty(IpAddr::V4(Ipv4Addr::new(
            10, 0, 0, 9,
        ))));
    r.options.push(PcpOption::Unknown {
        code: 200,
        data: vec![9, 9, 9],
    });
    let b = r.to_bytes();
    // Header 24 + MAP 36 + FILTER 4+20 + THIRD_PARTY 4+16 + unknown 4+3+1 padding.
    assert_eq!(b.len(), 24 + 36 + 24 + 20 + 8);
    assert_eq!(&b[8..24], &client.octets());
    assert_eq!(&b[60..64], &[3, 0, 0, 20]);
    assert_eq!(&b[64..68], &[0, 128, 0x0d, 0x96]);
    assert_eq!(&b[104..112], &[200, 0, 0, 3, 9, 9, 9, 0]);
    assert_eq!(pcp::Request::decode(&b), Ok(r));
}

#[test]
fn pcp_malformed() {
    assert_eq!(
        pcp::Response::decode(&[2, 0x80, 0, 0]),
        Err(PcpError::TooShort { len: 4, need: 24 })
    );
    assert_eq!(pcp::Response::decode(&[2; 26]), Err(PcpError::Length(26)));
    assert_eq!(
        pcp::Response::decode(&[2; 1104]),
        Err(PcpError::Length(1104))
    );
    assert_eq!(pcp::Response::decode(&[0; 24]), Err(PcpError::Version(0)));
    let mut req = vec![2, 0x01, 0, 0];
    req.resize(24, 0);
    assert_eq!(pcp::Response::decode(&req), Err(PcpError::Direction));
    // MAP without its body.
    assert!(matches!(
        pcp::Request::decode(&req),
        Err(PcpError::TooShort { need: 60, .. })
    ));
    // An error response may carry no body.
    let mut err = vec![2, 0x81, 0, 8, 0, 0, 0, 30, 0, 0, 0, 1];
    err.resize(24, 0);
    let r = pcp::Response::decode(&err).unwrap();
    assert_eq!(r.result, pcp::ResultCode::NoResources);
    assert!(r.result.is_transient());
    assert!(r.map.is_none());
    // An option longer than the message.
    let mut opt = pcp::Request::announce(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_bytes();
    opt.extend_from_slice(&[3, 0, 0, 20]);
    assert_eq!(
        pcp::Request::decode(&opt),
        Err(PcpError::Option { code: 3 })
    );
    // PREFER_FAILURE with data.
    let mut opt = pcp::Request::announce(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_bytes();
    opt.extend_from_slice(&[2, 0, 0, 4, 1, 2, 3, 4]);
    assert_eq!(
        pcp::Request::decode(&opt),
        Err(PcpError::Option { code: 2 })
    );
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>()
            .prop_filter("not v4-mapped", |o| Ipv6Addr::from(*o)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn option() -> impl Strategy<Value = PcpOption> {
    prop_oneof![
        ip().prop_map(PcpOption::ThirdParty),
        Just(PcpOption::PreferFailure),
        (any::<u8>(), any::<u16>(), ip()).prop_map(|(prefix_length, remote_port, remote_ip)| {
            PcpOption::Filter {
                prefix_length,
                remote_port,
                remote_ip,
            }
        }),
        (4u8.., prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(code, data)| PcpOption::Unknown { code, data }),
    ]
}

proptest! {
    #[test]
    fn decoders_never_panic(data in prop::collection::vec(any::<u8>(), 0..1200)) {
        let _ = pmp::Request::decode(&data);
        let _ = pmp::Response::decode(&data);
        let _ = pcp::Request::decode(&data);
        let _ = pcp::Response::decode(&data);
    }

    #[test]
    fn pcp_map_round_trips(
        client in ip(),
        lifetime in any::<u32>(),
        nonce in any::<[u8; 12]>(),
        protocol in any::<u8>(),
        internal_port in any::<u16>(),
        external_port in any::<u16>(),
        external_ip in ip(),
        options in prop::collection::vec(option(), 0..4),
        epoch in any::<u32>(),
        result in any::<u8>(),
    ) {
        let body = MapBody { nonce, protocol, internal_port, external_port, external_ip };
        let mut r = pcp::Request::map(client, lifetime, body);
        r.options = options.clone();
        let b = r.to_bytes();
        prop_assert_eq!(b.len() % 4, 0);
        prop_assert_eq!(pcp::Request::decode(&b), Ok(r));
        let resp = pcp::Response {
            opcode: Opcode::Map,
            result: pcp::ResultCode::from_code(result),
            lifetime,
            epoch,
            map: Some(body),
            options,
            other_body: Vec::new(),
        };
        prop_assert_eq!(pcp::Response::decode(&resp.to_bytes()), Ok(resp));
    }

    #[test]
    fn pmp_map_round_trips(
        tcp in any::<bool>(),
        internal_port in any::<u16>(),
        external_port in any::<u16>(),
        lifetime in any::<u32>(),
        epoch in any::<u32>(),
        result in any::<u16>(),
    ) {
        let protocol = if tcp { TransportProtocol::Tcp } else { TransportProtocol::Udp };
        let req = pmp::Request::Map { protocol, internal_port, suggested_external_port: external_port, lifetime };
        prop_assert_eq!(pmp::Request::decode(&req.to_bytes()), Ok(req));
        let resp = pmp::Response::Map {
            protocol,
            result: pmp::ResultCode::from_code(result),
            epoch,
            internal_port,
            external_port,
            lifetime,
        };
        prop_assert_eq!(pmp::Response::decode(&resp.to_bytes()), Ok(resp));
    }
}
