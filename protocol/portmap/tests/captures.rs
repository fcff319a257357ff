//! The codecs against bytes captured from a real miniupnpd 2.3.1 (Debian's
//! miniupnpd-nftables) in the namespace lab: `tests/captures/`, made by `cargo xtask
//! igd-capture` (its README lists every file). Each gateway message decodes, and encodes back
//! to the same bytes; each client request (natpmpc's, upnpc's, the xtask's PCP) decodes on the
//! gateway side.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use burrow_portmap::pcp::{self, Opcode};
use burrow_portmap::pmp::{self, PmpError};
use burrow_portmap::upnp::{self, Action, ActionResponse, HttpUrl, ServiceKind, UpnpError};
use burrow_portmap::{EpochTracker, TransportProtocol};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn names(prefix: &str, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {prefix}*{suffix} captures");
    v
}

const WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

#[test]
fn nat_pmp_responses_decode_and_encode_back_byte_for_byte() {
    let mut seen_map = false;
    for name in names("natpmp-", ".response.bin") {
        let bytes = read(&name);
        if name.contains("op9") {
            // An opcode we never send: miniupnpd answers 0x89 with result 5 (unsupported).
            assert_eq!(pmp::Response::decode(&bytes), Err(PmpError::Opcode(0x89)));
            assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), 5);
            continue;
        }
        let r = pmp::Response::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.contains("result-3") {
            // The answer to a version-3 request: 24 bytes, version 0, result 3.
            assert_eq!(r.result(), pmp::ResultCode::NetworkFailure, "{name}");
            continue;
        }
        assert_eq!(r.to_bytes(), bytes, "{name}");
        match r {
            pmp::Response::ExternalAddress {
                result, external, ..
            } => {
                assert_eq!(result, pmp::ResultCode::Success, "{name}");
                assert_eq!(external, WAN, "{name}");
            }
            pmp::Response::Map {
                protocol,
                result,
                internal_port,
                ..
            } => {
                seen_map = true;
                assert_eq!(protocol, TransportProtocol::Udp);
                assert_eq!(internal_port, 41641);
                let want = if name.contains("result-2") {
                    pmp::ResultCode::NotAuthorized
                } else {
                    pmp::ResultCode::Success
                };
                assert_eq!(result, want, "{name}");
            }
        }
    }
    assert!(seen_map);
}

#[test]
fn natpmpc_requests_decode_on_the_gateway_side() {
    for name in names("natpmp-", ".request.bin") {
        let bytes = read(&name);
        match pmp::Request::decode(&bytes) {
            Ok(r) => assert_eq!(r.to_bytes(), bytes, "{name}"),
            Err(e) => assert!(name.contains("op9"), "{name}: {e}"),
        }
    }
    assert_eq!(
        pmp::Request::decode(&read("unknown-26-version-3.request.bin")),
        Err(PmpError::Version(3))
    );
    assert_eq!(
        pmp::Request::decode(&read("natpmp-06-map-udp.request.bin")),
        Ok(pmp::Request::Map {
            protocol: TransportProtocol::Udp,
            internal_port: 41641,
            suggested_external_port: 41641,
            lifetime: 7200,
        })
    );
}

#[test]
fn pcp_messages_decode_and_encode_back_byte_for_byte() {
    for name in names("pcp-", ".bin") {
        let bytes = read(&name);
        if name.contains(".request.") {
            let r = pcp::Request::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.to_bytes(), bytes, "{name}");
            continue;
        }
        // Responses, and the ANNOUNCE miniupnpd multicasts when it starts.
        let r = pcp::Response::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.to_bytes(), bytes, "{name}");
        if name.contains("announce") {
            assert_eq!(r.opcode, Opcode::Announce);
            assert_eq!(r.result, pcp::ResultCode::Success);
        }
        if name.contains("-map") && !name.contains("result") {
            let m = r.map.expect("a MAP body");
            assert_eq!(r.result, pcp::ResultCode::Success, "{name}");
            assert_eq!(m.protocol, pcp::PROTOCOL_UDP);
            assert_eq!(m.external_ip, IpAddr::V4(WAN), "{name}");
            assert_eq!(r.lifetime, 7200, "{name}");
        }
        if name.contains("result-2") {
            assert_eq!(r.result, pcp::ResultCode::NotAuthorized, "{name}");
        }
    }
}

#[test]
fn the_restarted_daemons_epoch_goes_back() {
    // The epoch (seconds since miniupnpd started) in the NAT-PMP answers before and after the
    // restart: a tracker that saw the first sees the reboot in the last, whatever the clock.
    let epoch = |n: &str| pmp::Response::decode(&read(n)).unwrap().epoch();
    let before = epoch("natpmp-restart-06-address.response.bin");
    let after = epoch("natpmp-restart-12-address.response.bin");
    assert!(after < before || before == 0, "{before} then {after}");
    let t = std::time::Instant::now();
    let mut e = EpochTracker::new();
    e.observe(t, before);
    // Had the gateway kept running, 30 s later it would say before + 30.
    assert!(e.observe(t + std::time::Duration::from_secs(30), after));
}

fn location() -> HttpUrl {
    HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap()
}

#[test]
fn miniupnpds_description_gives_wan_ip_connection_2() {
    let d =
        upnp::description::parse_description(&read("miniupnpd-rootdesc.xml"), &location()).unwrap();
    assert_eq!(d.igd_version, 2);
    let s = d.best_service().expect("a WAN service");
    assert_eq!(s.kind, ServiceKind::WanIpConnection2);
    assert_eq!(
        s.control_url.to_string(),
        "http://192.168.1.1:5000/ctl/IPConn"
    );
    // The same body through HTTP.
    let http =
        upnp::http::parse_response_at_eof(&read("miniupnpd-rootdesc.response.http")).unwrap();
    assert_eq!(http.status, 200);
    assert_eq!(http.body, read("miniupnpd-rootdesc.xml"));
}

#[test]
fn miniupnpds_ssdp_answer_points_at_the_description() {
    let r =
        upnp::ssdp::parse_response(&read("miniupnpd-ssdp-response-InternetGatewayDevice-1.txt"))
            .unwrap();
    assert_eq!(r.location, location());
    assert_eq!(
        r.search_target,
        "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
    );
    // upnpc's M-SEARCH decodes on the gateway side.
    let st = upnp::ssdp::parse_m_search(&read("upnpc-ssdp-msearch-InternetGatewayDevice-1.txt"))
        .unwrap();
    assert_eq!(st, "urn:schemas-upnp-org:device:InternetGatewayDevice:1");
}

fn soap(name: &str, action: &Action) -> Result<ActionResponse, UpnpError> {
    let http = upnp::http::parse_response_at_eof(&read(name)).unwrap();
    upnp::soap::decode_response(action, &http)
}

#[test]
fn miniupnpds_soap_answers_and_faults() {
    assert_eq!(
        soap(
            "miniupnpd-soap-GetExternalIPAddress.response.http",
            &Action::GetExternalIpAddress
        ),
        Ok(ActionResponse::ExternalIpAddress(Some(WAN)))
    );
    match soap(
        "miniupnpd-soap-GetStatusInfo.response.http",
        &Action::GetStatusInfo,
    ) {
        Ok(ActionResponse::StatusInfo {
            connection_status, ..
        }) => assert_eq!(connection_status, "Connected"),
        other => panic!("{other:?}"),
    }
    let add = |external_port| {
        Action::AddPortMapping(upnp::PortMappingRequest {
            remote_host: None,
            external_port,
            protocol: TransportProtocol::Udp,
            internal_port: 41641,
            internal_client: Ipv4Addr::new(192, 168, 1, 2),
            description: "x".into(),
            lease_seconds: 7200,
        })
    };
    assert_eq!(
        soap("miniupnpd-soap-AddPortMapping.response.http", &add(41641)),
        Ok(ActionResponse::PortMappingAdded)
    );
    let delete = Action::DeletePortMapping {
        external_port: 41641,
        protocol: TransportProtocol::Udp,
    };
    assert_eq!(
        soap("miniupnpd-soap-DeletePortMapping.response.http", &delete),
        Ok(ActionResponse::PortMappingDeleted)
    );
    for (name, code) in [
        ("miniupnpd-soap-AddPortMapping-fault-718.response.http", 718),
        (
            "miniupnpd-deny-soap-AddPortMapping-fault-606.response.http",
            606,
        ),
    ] {
        match soap(name, &add(41641)) {
            Err(UpnpError::Fault { code: c, .. }) => assert_eq!(c, code, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn upnpcs_requests_decode_on_the_gateway_side() {
    for (name, want) in [
        (
            "miniupnpd-soap-GetExternalIPAddress.request.http",
            "GetExternalIPAddress",
        ),
        ("miniupnpd-soap-GetStatusInfo.request.http", "GetStatusInfo"),
        (
            "miniupnpd-soap-AddPortMapping.request.http",
            "AddPortMapping",
        ),
        (
            "miniupnpd-soap-DeletePortMapping.request.http",
            "DeletePortMapping",
        ),
    ] {
        let req = upnp::http::parse_request(&read(name))
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/ctl/IPConn");
        let (service, action) =
            upnp::soap::decode_request(req.soap_action.as_deref(), &req.body).unwrap();
        assert!(service.contains("WANIPConnection"), "{service}");
        assert_eq!(action.name(), want);
    }
}
