//! UPnP IGD codec tests. The fixtures are our own reconstructions of what miniupnpd 2.3.x
//! and other gateways send (layout, header casing, prefixes), written by hand; bytes captured
//! from a real miniupnpd are to be added next to them.

use std::net::{Ipv4Addr, SocketAddr};

use burrow_portmap::upnp::soap::error_code;
use burrow_portmap::upnp::{
    description, http, soap, ssdp, Action, ActionResponse, HttpResponse, HttpUrl,
    PortMappingRequest, ServiceKind, UpnpError,
};
use burrow_portmap::TransportProtocol;
use proptest::prelude::*;

fn url(s: &str) -> HttpUrl {
    HttpUrl::parse(s).expect("valid URL")
}

fn mapping() -> PortMappingRequest {
    PortMappingRequest {
        remote_host: None,
        external_port: 41641,
        protocol: TransportProtocol::Udp,
        internal_port: 41641,
        internal_client: Ipv4Addr::new(192, 168, 1, 23),
        description: "burrow <node> & co".into(),
        lease_seconds: 7200,
    }
}

const WANIP1: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
const WANIP2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";

// ---- URLs ----

#[test]
fn url_parse_and_display() {
    let u = url("http://192.168.1.1:5000/rootDesc.xml");
    assert_eq!(u.addr, "192.168.1.1:5000".parse::<SocketAddr>().unwrap());
    assert_eq!(u.path, "/rootDesc.xml");
    assert_eq!(u.to_string(), "http://192.168.1.1:5000/rootDesc.xml");
    let u = url("HTTP://10.0.0.1");
    assert_eq!(u.addr.port(), 80);
    assert_eq!(u.path, "/");
    assert_eq!(u.to_string(), "http://10.0.0.1/");
    let u = url("http://[fe80::1]:49152/desc?x=1#frag");
    assert_eq!(u.addr, "[fe80::1]:49152".parse::<SocketAddr>().unwrap());
    assert_eq!(u.path, "/desc?x=1");
    assert_eq!(u.to_string(), "http://[fe80::1]:49152/desc?x=1");
    assert_eq!(url("http://[::1]/a").to_string(), "http://[::1]/a");
}

#[test]
fn url_refusals() {
    for bad in [
        "https://192.168.1.1/",
        "http://router.local/rootDesc.xml",
        "http://user@192.168.1.1/",
        "http://192.168.1.1:99999/",
        "http://192.168.1.1:5x/",
        "http://[::1/",
        "http:///x",
        "ftp://1.2.3.4/",
        "",
        "192.168.1.1/x",
    ] {
        assert!(
            matches!(HttpUrl::parse(bad), Err(UpnpError::Url(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn url_join() {
    let base = url("http://192.168.1.1:5000/dir/rootDesc.xml?q");
    assert_eq!(base.join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
    assert_eq!(base.join("ctl/IPConn").unwrap().path, "/dir/ctl/IPConn");
    assert_eq!(base.join("../ctl/IPConn").unwrap().path, "/ctl/IPConn");
    assert_eq!(base.join("./a/./b").unwrap().path, "/dir/a/b");
    assert_eq!(base.join("?x=1").unwrap().path, "/dir/rootDesc.xml?x=1");
    assert_eq!(base.join("").unwrap(), base);
    let abs = base.join("http://192.168.1.254:1900/ctl").unwrap();
    assert_eq!(abs.to_string(), "http://192.168.1.254:1900/ctl");
    assert_eq!(
        base.join("//10.0.0.1:80/x").unwrap().to_string(),
        "http://10.0.0.1/x"
    );
    assert!(base.join("https://1.2.3.4/").is_err());
    assert!(base.join("http://gateway/ctl").is_err());
    assert_eq!(base.join("  /ctl/IPConn\n").unwrap().path, "/ctl/IPConn");
}

// ---- SSDP ----

#[test]
fn m_search_bytes() {
    assert_eq!(
        ssdp::m_search("urn:schemas-upnp-org:device:InternetGatewayDevice:1"),
        b"M-SEARCH * HTTP/1.1\r\n\
HOST: 239.255.255.250:1900\r\n\
MAN: \"ssdp:discover\"\r\n\
MX: 2\r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
\r\n"
    );
    assert_eq!(ssdp::SSDP_ADDR.to_string(), "239.255.255.250:1900");
    assert_eq!(ssdp::SEARCH_TARGETS.len(), 4);
    assert!(ssdp::SEARCH_TARGETS.contains(&"ssdp:all"));
}

/// miniupnpd 2.3.x's answer to an M-SEARCH for the IGD device type (reconstructed).
const MINIUPNPD_SSDP: &[u8] = b"HTTP/1.1 200 OK\r\n\
CACHE-CONTROL: max-age=120\r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
USN: uuid:d1f9e0c2-6a1b-4b6e-9a3e-2f1d0c4b5a61::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
EXT:\r\n\
SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.3\r\n\
LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\
OPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n\
01-NLS: 1\r\n\
BOOTID.UPNP.ORG: 1\r\n\
CONFIGID.UPNP.ORG: 1337\r\n\
\r\n";

#[test]
fn ssdp_miniupnpd_answer() {
    let r = ssdp::parse_response(MINIUPNPD_SSDP).unwrap();
    assert_eq!(r.location, url("http://192.168.1.1:5000/rootDesc.xml"));
    assert_eq!(
        r.search_target,
        "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
    );
    assert_eq!(
        r.usn.as_deref(),
        Some("uuid:d1f9e0c2-6a1b-4b6e-9a3e-2f1d0c4b5a61::urn:schemas-upnp-org:device:InternetGatewayDevice:1")
    );
    assert_eq!(
        r.server.as_deref(),
        Some("Debian/12 UPnP/1.1 MiniUPnPd/2.3.3")
    );
}

#[test]
fn ssdp_odd_casing_and_spacing() {
    // A consumer router's style: mixed case, no space after the colon, LF line ends, no
    // final empty line.
    let odd = b"HTTP/1.1 200 OK\nCache-Control:max-age=1800\nLocation:http://192.168.0.1:49152/gatedesc.xml\nServer:Linux/2.4 UPnP/1.0 SDK/1.2\nst:upnp:rootdevice\nUsn:uuid:75802409::upnp:rootdevice\nExt:";
    let r = ssdp::parse_response(odd).unwrap();
    assert_eq!(r.location, url("http://192.168.0.1:49152/gatedesc.xml"));
    assert_eq!(r.search_target, "upnp:rootdevice");
    let upper = b"HTTP/1.1 200 OK\r\nlOcAtIoN:   http://10.0.0.138:80/IGD.xml  \r\nsT: urn:schemas-upnp-org:service:WANIPConnection:1\r\n\r\n";
    let r = ssdp::parse_response(upper).unwrap();
    assert_eq!(r.location, url("http://10.0.0.138/IGD.xml"));
    assert_eq!(r.usn, None);
}

#[test]
fn ssdp_refusals() {
    let notify = b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNT: upnp:rootdevice\r\nNTS: ssdp:alive\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n";
    assert!(matches!(
        ssdp::parse_response(notify),
        Err(UpnpError::Ssdp(_))
    ));
    let not_ok = b"HTTP/1.1 404 Not Found\r\nLOCATION: http://192.168.1.1/\r\nST: x\r\n\r\n";
    assert_eq!(
        ssdp::parse_response(not_ok),
        Err(UpnpError::Ssdp("not a 200 answer"))
    );
    let no_loc = b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n";
    assert_eq!(
        ssdp::parse_response(no_loc),
        Err(UpnpError::Missing("LOCATION"))
    );
    let name = b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\nLOCATION: http://router/x\r\n\r\n";
    assert!(matches!(ssdp::parse_response(name), Err(UpnpError::Url(_))));
    assert!(ssdp::parse_response(b"").is_err());
    assert!(ssdp::parse_response(&[0xff; 40]).is_err());
}

#[test]
fn ssdp_server_side() {
    let st = ssdp::parse_m_search(&ssdp::m_search(ssdp::SEARCH_TARGETS[3])).unwrap();
    assert_eq!(st, "ssdp:all");
    // Another client's M-SEARCH: lower case headers, MX 3.
    let other = b"M-SEARCH * HTTP/1.1\r\nhost:239.255.255.250:1900\r\nst:urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\nman:\"ssdp:discover\"\r\nmx:3\r\n\r\n";
    assert_eq!(
        ssdp::parse_m_search(other).unwrap(),
        "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
    );
    assert!(ssdp::parse_m_search(MINIUPNPD_SSDP).is_err());
    assert_eq!(
        ssdp::parse_m_search(b"M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\n\r\n"),
        Err(UpnpError::Missing("ST"))
    );
    let loc = url("http://192.168.1.1:5000/rootDesc.xml");
    let answer = ssdp::response(
        &loc,
        "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
        "uuid:d1f9e0c2-6a1b-4b6e-9a3e-2f1d0c4b5a61::urn:schemas-upnp-org:device:InternetGatewayDevice:1",
        "Debian/12 UPnP/1.1 MiniUPnPd/2.3.3",
    );
    assert_eq!(answer, MINIUPNPD_SSDP);
    let r = ssdp::parse_response(&answer).unwrap();
    assert_eq!(r.location, loc);
}

// ---- HTTP ----

#[test]
fn get_bytes() {
    assert_eq!(
        http::get(&url("http://192.168.1.1:5000/rootDesc.xml")),
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        http::get(&url("http://[fd00::1]/d.xml")),
        b"GET /d.xml HTTP/1.1\r\nHost: [fd00::1]:80\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn post_soap_bytes() {
    assert_eq!(
        http::post_soap(
            &url("http://192.168.1.1:5000/ctl/IPConn"),
            WANIP1,
            "GetExternalIPAddress",
            b"<x/>"
        ),
        b"POST /ctl/IPConn HTTP/1.1\r\n\
Host: 192.168.1.1:5000\r\n\
Content-Type: text/xml; charset=\"utf-8\"\r\n\
SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:1#GetExternalIPAddress\"\r\n\
Content-Length: 4\r\n\
Connection: close\r\n\
\r\n\
<x/>"
    );
}

/// miniupnpd's HTTP head for a SOAP answer (reconstructed).
fn miniupnpd_http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nConnection: close\r\nContent-Length: {}\r\nServer: Debian/12 UPnP/1.1 MiniUPnPd/2.3.3\r\nExt:\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn http_content_length_and_partial() {
    let full = miniupnpd_http("200 OK", "hello world");
    for cut in 0..full.len() {
        assert_eq!(http::parse_response(&full[..cut]), Ok(None), "cut {cut}");
        assert!(http::parse_response_at_eof(&full[..cut]).is_err());
    }
    let r = http::parse_response(&full).unwrap().unwrap();
    assert_eq!(
        r,
        HttpResponse {
            status: 200,
            body: b"hello world".to_vec()
        }
    );
}

#[test]
fn http_chunked() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    for cut in 0..wire.len() {
        assert_eq!(http::parse_response(&wire[..cut]), Ok(None), "cut {cut}");
    }
    let r = http::parse_response(wire).unwrap().unwrap();
    assert_eq!(r.body, b"hello world");
    // Upper-case hex and no trailer.
    let wire = b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
    let r = http::parse_response(wire).unwrap().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (500, &b"0123456789"[..]));
    assert!(
        http::parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .is_err()
    );
    assert_eq!(
        http::parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFF\r\n"),
        Err(UpnpError::TooLarge)
    );
}

#[test]
fn http_until_eof() {
    let wire = b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<root/>";
    assert_eq!(http::parse_response(wire), Ok(None));
    let r = http::parse_response_at_eof(wire).unwrap();
    assert_eq!(r.body, b"<root/>");
    // An interim 100 Continue is skipped.
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(http::parse_response(wire).unwrap().unwrap().body, b"ok");
}

#[test]
fn http_caps_and_errors() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        http::MAX_RESPONSE + 1
    );
    assert_eq!(
        http::parse_response(big.as_bytes()),
        Err(UpnpError::TooLarge)
    );
    let mut eof = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    eof.resize(http::MAX_RESPONSE + 100, b'a');
    assert_eq!(http::parse_response_at_eof(&eof), Err(UpnpError::TooLarge));
    assert_eq!(http::parse_response(&eof), Err(UpnpError::TooLarge));
    assert!(matches!(
        http::parse_response(b"garbage\r\n\r\n"),
        Err(UpnpError::Http(_))
    ));
    assert!(matches!(
        http::parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
        Err(UpnpError::Http(_))
    ));
}

#[test]
fn http_server_side() {
    let post = http::post_soap(
        &url("http://192.168.1.1:5000/ctl/IPConn"),
        WANIP1,
        "GetStatusInfo",
        b"body!",
    );
    for cut in 0..post.len() {
        assert_eq!(http::parse_request(&post[..cut]), Ok(None), "cut {cut}");
    }
    let req = http::parse_request(&post).unwrap().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/ctl/IPConn");
    assert_eq!(
        req.soap_action.as_deref(),
        Some("urn:schemas-upnp-org:service:WANIPConnection:1#GetStatusInfo")
    );
    assert_eq!(req.body, b"body!");
    let get = http::parse_request(&http::get(&url("http://192.168.1.1:5000/rootDesc.xml")))
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            get.method.as_str(),
            get.path.as_str(),
            get.soap_action,
            get.body.len()
        ),
        ("GET", "/rootDesc.xml", None, 0)
    );
    assert_eq!(
        http::response(200, b"<a/>"),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nConnection: close\r\nContent-Length: 4\r\nServer: burrow UPnP/1.1 burrow-igd/0.1\r\nExt:\r\n\r\n<a/>"
    );
    let back = http::parse_response(&http::response(500, b"fault"))
        .unwrap()
        .unwrap();
    assert_eq!((back.status, back.body.as_slice()), (500, &b"fault"[..]));
}

// ---- descriptions ----

/// A miniupnpd 2.3.x IGD v1 rootDesc.xml (reconstructed; no URLBase, relative control URLs).
const MINIUPNPD_V1_DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337"><specVersion><major>1</major><minor>1</minor></specVersion><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><friendlyName>Debian router</friendlyName><manufacturer>Debian</manufacturer><manufacturerURL>https://www.debian.org/</manufacturerURL><modelDescription>MiniUPnP daemon</modelDescription><modelName>MiniUPnPd</modelName><modelNumber>2.3.3</modelNumber><modelURL>https://miniupnp.tuxfamily.org/</modelURL><serialNumber>00000000</serialNumber><UDN>uuid:d1f9e0c2-6a1b-4b6e-9a3e-2f1d0c4b5a60</UDN><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><serviceId>urn:upnp-org:serviceId:L3Forwarding1</serviceId><SCPDURL>/L3F.xml</SCPDURL><controlURL>/ctl/L3F</controlURL><eventSubURL>/evt/L3F</eventSubURL></service></serviceList><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><friendlyName>WANDevice</friendlyName><manufacturer>MiniUPnP</manufacturer><manufacturerURL>https://miniupnp.tuxfamily.org/</manufacturerURL><modelDescription>WAN Device</modelDescription><modelName>WAN Device</modelName><modelNumber>20240101</modelNumber><modelURL>https://miniupnp.tuxfamily.org/</modelURL><serialNumber>00000000</serialNumber><UDN>uuid:d1f9e0c2-6a1b-4b6e-9a3e-2f1d0c4b5a61</UDN><UPC>000000000000</UPC><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType><serviceId>urn:upnp-org:serviceId:WANCommonIFC1</serviceId><SCPDURL>/WANCfg.xml</SCPDURL><controlURL>/ctl/CmnIfCfg</controlURL><eventSubURL>/evt/CmnIfCfg</eventSubURL></service></serviceList><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><friendlyName>WANConnectionDevice</friendlyName><manufacturer>MiniUPnP</manufacturer><manufacturerURL>https://miniupnp.tuxfamily.org/</manufacturerURL><modelDescription>MiniUPnP daemon</modelDescription><modelName>MiniUPnPd</modelName><modelNumber>20240101</modelNumber><modelURL>https://miniupnp.tuxfamily.org/</modelURL><serialNumber>00000000</serialNumber><UDN>uuid:d1f9e0c2-6a1b-4b6e-9a3e-2f1d0c4b5a62</UDN><UPC>000000000000</UPC><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><SCPDURL>/WANIPCn.xml</SCPDURL><controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL></service></serviceList></device></deviceList></device></deviceList><presentationURL>http://192.168.1.1/</presentationURL></device></root>
"#;

#[test]
fn description_miniupnpd_v1() {
    let loc = url("http://192.168.1.1:5000/rootDesc.xml");
    let d = description::parse_description(MINIUPNPD_V1_DESC.as_bytes(), &loc).unwrap();
    assert_eq!(d.friendly_name.as_deref(), Some("Debian router"));
    assert_eq!(d.igd_version, 1);
    assert_eq!(d.services.len(), 1);
    let s = d.best_service().unwrap();
    assert_eq!(s.kind, ServiceKind::WanIpConnection1);
    assert_eq!(s.service_type, WANIP1);
    assert_eq!(s.control_url, url("http://192.168.1.1:5000/ctl/IPConn"));
}

/// An IGD v2 with WANIPConnection:2, indented, with a URLBase and an absolute control URL
/// for one service (reconstructed).
const V2_DESC: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a v2 gateway -->
<root xmlns="urn:schemas-upnp-org:device-1-0">
  <specVersion><major>1</major><minor>0</minor></specVersion>
  <URLBase>http://192.168.0.1:49000/</URLBase>
  <device>
    <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
    <friendlyName>  Box &amp; Co  </friendlyName>
    <deviceList>
      <device>
        <deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
        <deviceList>
          <device>
            <deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
            <serviceList>
              <service>
                <serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
                <controlURL>http://192.168.0.1:49001/upnp/control/WANIPConn1</controlURL>
              </service>
              <service>
                <serviceType> urn:schemas-upnp-org:service:WANIPConnection:2 </serviceType>
                <serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
                <controlURL>upnp/control/WANIPConn2</controlURL>
              </service>
            </serviceList>
          </device>
        </deviceList>
      </device>
    </deviceList>
  </device>
</root>"#;

#[test]
fn description_v2_with_url_base() {
    let loc = url("http://192.168.0.1:1900/igd.xml");
    let d = description::parse_description(V2_DESC.as_bytes(), &loc).unwrap();
    assert_eq!(d.igd_version, 2);
    assert_eq!(d.friendly_name.as_deref(), Some("Box & Co"));
    assert_eq!(d.services.len(), 2);
    assert_eq!(
        d.services[0].control_url,
        url("http://192.168.0.1:49001/upnp/control/WANIPConn1")
    );
    let best = d.best_service().unwrap();
    assert_eq!(best.kind, ServiceKind::WanIpConnection2);
    assert_eq!(best.service_type, WANIP2);
    assert_eq!(
        best.control_url,
        url("http://192.168.0.1:49000/upnp/control/WANIPConn2")
    );
}

/// A PPP-only gateway with prefixed elements, a relative control URL and no URLBase.
const PPP_DESC: &str = r#"<?xml version="1.0"?>
<d:root xmlns:d="urn:schemas-upnp-org:device-1-0">
<d:device><d:deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</d:deviceType>
<d:deviceList><d:device><d:deviceType>urn:schemas-upnp-org:device:WANDevice:1</d:deviceType>
<d:deviceList><d:device><d:deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</d:deviceType>
<d:serviceList><d:service><d:serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</d:serviceType>
<d:controlURL><![CDATA[ppp/ctl?id=1]]></d:controlURL></d:service></d:serviceList>
</d:device></d:deviceList></d:device></d:deviceList></d:device></d:root>"#;

#[test]
fn description_ppp_only() {
    let loc = url("http://10.0.0.1:8080/desc/root.xml");
    let d = description::parse_description(PPP_DESC.as_bytes(), &loc).unwrap();
    assert_eq!(d.friendly_name, None);
    let s = d.best_service().unwrap();
    assert_eq!(s.kind, ServiceKind::WanPppConnection1);
    assert_eq!(s.control_url, url("http://10.0.0.1:8080/desc/ppp/ctl?id=1"));
}

#[test]
fn description_both_ip_and_ppp_and_bad_ones() {
    // PPP first, then IP:1 in a second WANConnectionDevice; a service without controlURL.
    let xml = r#"<root><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<deviceList><device><deviceList>
<device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/ppp</controlURL></service></serviceList></device>
<device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ip</controlURL></service></serviceList></device>
</deviceList></device></deviceList></device></root>"#;
    let d = description::parse_description(xml.as_bytes(), &url("http://10.0.0.1/")).unwrap();
    assert_eq!(d.services.len(), 2);
    assert_eq!(d.best_service().unwrap().control_url.path, "/ip");
}

#[test]
fn description_errors() {
    let loc = url("http://10.0.0.1/");
    let no_wan = r#"<root><device><deviceType>urn:schemas-upnp-org:device:MediaServer:1</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:ContentDirectory:1</serviceType><controlURL>/cd</controlURL></service></serviceList></device></root>"#;
    assert_eq!(
        description::parse_description(no_wan.as_bytes(), &loc),
        Err(UpnpError::NoWanService)
    );
    let no_ctl = r#"<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType></service></serviceList></device></root>"#;
    assert_eq!(
        description::parse_description(no_ctl.as_bytes(), &loc),
        Err(UpnpError::Missing("controlURL"))
    );
    let host_ctl = r#"<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>http://gw.lan/ctl</controlURL></service></serviceList></device></root>"#;
    assert!(matches!(
        description::parse_description(host_ctl.as_bytes(), &loc),
        Err(UpnpError::Url(_))
    ));
    assert_eq!(
        description::parse_description(b"<root></root>", &loc),
        Err(UpnpError::Missing("device"))
    );
    assert!(matches!(
        description::parse_description(b"<root><device>", &loc),
        Err(UpnpError::Xml(_))
    ));
    assert!(matches!(
        description::parse_description(b"not xml", &loc),
        Err(UpnpError::Xml(_))
    ));
    let deep = "<root>".to_string() + &"<a>".repeat(100) + &"</a>".repeat(100) + "</root>";
    assert!(matches!(
        description::parse_description(deep.as_bytes(), &loc),
        Err(UpnpError::Xml(_))
    ));
    let big = vec![b' '; http::MAX_RESPONSE + 1];
    assert_eq!(
        description::parse_description(&big, &loc),
        Err(UpnpError::TooLarge)
    );
}

#[test]
fn description_render_round_trip() {
    let loc = url("http://192.168.1.1:5000/rootDesc.xml");
    for v in [1, 2] {
        let xml = description::render(
            "sim <gw>",
            v,
            &[
                (ServiceKind::WanPppConnection1, "/ctl/PPPConn"),
                (ServiceKind::WanIpConnection1, "/ctl/IPConn"),
            ],
        );
        let d = description::parse_description(&xml, &loc).unwrap();
        assert_eq!(d.igd_version, v);
        assert_eq!(d.friendly_name.as_deref(), Some("sim <gw>"));
        assert_eq!(d.services.len(), 2);
        assert_eq!(
            d.best_service().unwrap().control_url,
            url("http://192.168.1.1:5000/ctl/IPConn")
        );
    }
    let xml = description::render("x", 2, &[(ServiceKind::WanIpConnection2, "/ctl/IPConn")]);
    let text = String::from_utf8(xml.clone()).unwrap();
    assert!(text
        .starts_with("<?xml version=\"1.0\"?>\r\n<root xmlns=\"urn:schemas-upnp-org:device-1-0\""));
    assert!(
        text.contains("<serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>")
    );
    assert_eq!(
        description::parse_description(&xml, &loc)
            .unwrap()
            .best_service()
            .unwrap()
            .kind,
        ServiceKind::WanIpConnection2
    );
}

// ---- SOAP requests ----

const ENV_OPEN: &str = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>";
const ENV_CLOSE: &str = "</s:Body></s:Envelope>\r\n";

#[test]
fn soap_request_bytes() {
    assert_eq!(
        String::from_utf8(soap::encode_request(WANIP1, &Action::GetExternalIpAddress)).unwrap(),
        format!("{ENV_OPEN}<u:GetExternalIPAddress xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"></u:GetExternalIPAddress>{ENV_CLOSE}")
    );
    assert_eq!(
        String::from_utf8(soap::encode_request(WANIP1, &Action::GetStatusInfo)).unwrap(),
        format!("{ENV_OPEN}<u:GetStatusInfo xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"></u:GetStatusInfo>{ENV_CLOSE}")
    );
    assert_eq!(
        String::from_utf8(soap::encode_request(WANIP1, &Action::AddPortMapping(mapping()))).unwrap(),
        format!("{ENV_OPEN}<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
<NewRemoteHost></NewRemoteHost><NewExternalPort>41641</NewExternalPort><NewProtocol>UDP</NewProtocol>\
<NewInternalPort>41641</NewInternalPort><NewInternalClient>192.168.1.23</NewInternalClient><NewEnabled>1</NewEnabled>\
<NewPortMappingDescription>burrow &lt;node&gt; &amp; co</NewPortMappingDescription><NewLeaseDuration>7200</NewLeaseDuration>\
</u:AddPortMapping>{ENV_CLOSE}")
    );
    let mut tcp = mapping();
    tcp.protocol = TransportProtocol::Tcp;
    tcp.remote_host = Some(Ipv4Addr::new(203, 0, 113, 9));
    tcp.external_port = 0;
    tcp.lease_seconds = 0;
    tcp.description = "b".into();
    assert_eq!(
        String::from_utf8(soap::encode_request(WANIP2, &Action::AddAnyPortMapping(tcp))).unwrap(),
        format!("{ENV_OPEN}<u:AddAnyPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\">\
<NewRemoteHost>203.0.113.9</NewRemoteHost><NewExternalPort>0</NewExternalPort><NewProtocol>TCP</NewProtocol>\
<NewInternalPort>41641</NewInternalPort><NewInternalClient>192.168.1.23</NewInternalClient><NewEnabled>1</NewEnabled>\
<NewPortMappingDescription>b</NewPortMappingDescription><NewLeaseDuration>0</NewLeaseDuration>\
</u:AddAnyPortMapping>{ENV_CLOSE}")
    );
    assert_eq!(
        String::from_utf8(soap::encode_request(WANIP1, &Action::DeletePortMapping { external_port: 5, protocol: TransportProtocol::Udp })).unwrap(),
        format!("{ENV_OPEN}<u:DeletePortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
<NewRemoteHost></NewRemoteHost><NewExternalPort>5</NewExternalPort><NewProtocol>UDP</NewProtocol>\
</u:DeletePortMapping>{ENV_CLOSE}")
    );
}

#[test]
fn action_names() {
    assert_eq!(Action::GetExternalIpAddress.name(), "GetExternalIPAddress");
    assert_eq!(Action::GetStatusInfo.name(), "GetStatusInfo");
    assert_eq!(Action::AddPortMapping(mapping()).name(), "AddPortMapping");
    assert_eq!(
        Action::AddAnyPortMapping(mapping()).name(),
        "AddAnyPortMapping"
    );
    assert_eq!(
        Action::DeletePortMapping {
            external_port: 1,
            protocol: TransportProtocol::Tcp
        }
        .name(),
        "DeletePortMapping"
    );
}

// ---- SOAP responses ----

fn ok(body: &str) -> HttpResponse {
    HttpResponse {
        status: 200,
        body: body.as_bytes().to_vec(),
    }
}

/// miniupnpd's envelope around an answer (reconstructed).
fn miniupnpd_envelope(inner: &str) -> String {
    format!("<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>{inner}</s:Body></s:Envelope>\r\n")
}

#[test]
fn soap_external_ip() {
    let a = Action::GetExternalIpAddress;
    let r = ok(&miniupnpd_envelope("<u:GetExternalIPAddressResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse>"));
    assert_eq!(
        soap::decode_response(&a, &r),
        Ok(ActionResponse::ExternalIpAddress(Some(Ipv4Addr::new(
            203, 0, 113, 7
        ))))
    );
    // miniupnpd with no external address sends an empty element.
    let r = ok(&miniupnpd_envelope("<u:GetExternalIPAddressResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewExternalIPAddress></NewExternalIPAddress></u:GetExternalIPAddressResponse>"));
    assert_eq!(
        soap::decode_response(&a, &r),
        Ok(ActionResponse::ExternalIpAddress(None))
    );
    // SOAP-ENV prefix, m: prefix, whitespace, extra elements, 0.0.0.0.
    let r = ok("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"http://schemas.xmlsoap.org/soap/envelope/\">\n  <SOAP-ENV:Header/>\n  <SOAP-ENV:Body>\n    <m:GetExternalIPAddressResponse xmlns:m=\"urn:schemas-upnp-org:service:WANPPPConnection:1\">\n      <Extra>1</Extra>\n      <NewExternalIPAddress> 0.0.0.0 </NewExternalIPAddress>\n    </m:GetExternalIPAddressResponse>\n  </SOAP-ENV:Body>\n</SOAP-ENV:Envelope>\n");
    assert_eq!(
        soap::decode_response(&a, &r),
        Ok(ActionResponse::ExternalIpAddress(None))
    );
    // No prefixes at all.
    let r = ok("<Envelope><Body><GetExternalIPAddressResponse><NewExternalIPAddress>198.51.100.1</NewExternalIPAddress></GetExternalIPAddressResponse></Body></Envelope>");
    assert_eq!(
        soap::decode_response(&a, &r),
        Ok(ActionResponse::ExternalIpAddress(Some(Ipv4Addr::new(
            198, 51, 100, 1
        ))))
    );
    let r = ok("<Envelope><Body><GetExternalIPAddressResponse></GetExternalIPAddressResponse></Body></Envelope>");
    assert_eq!(
        soap::decode_response(&a, &r),
        Err(UpnpError::Missing("NewExternalIPAddress"))
    );
    let r = ok("<Envelope><Body><GetExternalIPAddressResponse><NewExternalIPAddress>gw</NewExternalIPAddress></GetExternalIPAddressResponse></Body></Envelope>");
    assert!(matches!(
        soap::decode_response(&a, &r),
        Err(UpnpError::Xml(_))
    ));
    let r = ok("<Envelope><Body><GetStatusInfoResponse/></Body></Envelope>");
    assert!(matches!(
        soap::decode_response(&a, &r),
        Err(UpnpError::Xml(_))
    ));
}

#[test]
fn soap_status_info_not_connected() {
    let r = ok(&miniupnpd_envelope("<u:GetStatusInfoResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewConnectionStatus>Disconnected</NewConnectionStatus><NewLastConnectionError>ERROR_NONE</NewLastConnectionError><NewUptime>4242</NewUptime></u:GetStatusInfoResponse>"));
    assert_eq!(
        soap::decode_response(&Action::GetStatusInfo, &r),
        Ok(ActionResponse::StatusInfo {
            connection_status: "Disconnected".into(),
            last_error: Some("ERROR_NONE".into()),
            uptime: Some(4242)
        })
    );
}

#[test]
fn soap_add_and_delete() {
    let add = Action::AddPortMapping(mapping());
    let r = ok(&miniupnpd_envelope(
        "<u:AddPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"/>",
    ));
    assert_eq!(
        soap::decode_response(&add, &r),
        Ok(ActionResponse::PortMappingAdded)
    );
    assert_eq!(
        soap::decode_response(&add, &ok("")),
        Ok(ActionResponse::PortMappingAdded)
    );
    let any = Action::AddAnyPortMapping(mapping());
    let r = ok(&miniupnpd_envelope("<u:AddAnyPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"><NewReservedPort>41642</NewReservedPort></u:AddAnyPortMappingResponse>"));
    assert_eq!(
        soap::decode_response(&any, &r),
        Ok(ActionResponse::AnyPortMappingAdded {
            reserved_port: 41642
        })
    );
    let del = Action::DeletePortMapping {
        external_port: 41641,
        protocol: TransportProtocol::Udp,
    };
    let r = ok(&miniupnpd_envelope(
        "<u:DeletePortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"/>",
    ));
    assert_eq!(
        soap::decode_response(&del, &r),
        Ok(ActionResponse::PortMappingDeleted)
    );
}

/// miniupnpd's fault body (reconstructed: no XML declaration).
fn miniupnpd_fault(code: u16, desc: &str) -> HttpResponse {
    HttpResponse {
        status: 500,
        body: format!("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>{desc}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>").into_bytes(),
    }
}

#[test]
fn soap_faults() {
    let add = Action::AddPortMapping(mapping());
    for (code, desc) in [
        (error_code::INVALID_ARGS, "Invalid Args"),
        (
            error_code::ONLY_PERMANENT_LEASES_SUPPORTED,
            "OnlyPermanentLeasesSupported",
        ),
        (
            error_code::CONFLICT_IN_MAPPING_ENTRY,
            "ConflictInMappingEntry",
        ),
        (error_code::ACTION_NOT_AUTHORIZED, "Action not authorized"),
    ] {
        assert_eq!(
            soap::decode_response(&add, &miniupnpd_fault(code, desc)),
            Err(UpnpError::Fault {
                code,
                description: desc.into()
            })
        );
        // The server-side encoder gives the same bytes as the reconstruction.
        assert_eq!(
            soap::encode_fault(code, desc),
            miniupnpd_fault(code, desc).body
        );
    }
    // Another stack: SOAP-ENV prefix, whitespace, namespaced UPnPError, fault on a 200.
    let odd = HttpResponse { status: 200, body: b"<?xml version=\"1.0\"?>\n<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"http://schemas.xmlsoap.org/soap/envelope/\">\n<SOAP-ENV:Body>\n<SOAP-ENV:Fault>\n<faultcode>SOAP-ENV:Client</faultcode>\n<detail>\n<e:UPnPError xmlns:e=\"urn:schemas-upnp-org:control-1-0\">\n<e:errorCode> 718 </e:errorCode>\n</e:UPnPError>\n</detail>\n</SOAP-ENV:Fault>\n</SOAP-ENV:Body>\n</SOAP-ENV:Envelope>".to_vec() };
    assert_eq!(
        soap::decode_response(&add, &odd),
        Err(UpnpError::Fault {
            code: 718,
            description: String::new()
        })
    );
    // Non-2xx without a usable fault.
    assert_eq!(
        soap::decode_response(
            &add,
            &HttpResponse {
                status: 401,
                body: b"<html>no</html>".to_vec()
            }
        ),
        Err(UpnpError::Status(401))
    );
    assert_eq!(
        soap::decode_response(
            &add,
            &HttpResponse {
                status: 500,
                body: Vec::new()
            }
        ),
        Err(UpnpError::Status(500))
    );
    let bad_code = HttpResponse { status: 500, body: b"<Envelope><Body><Fault><detail><UPnPError><errorCode>x</errorCode></UPnPError></detail></Fault></Body></Envelope>".to_vec() };
    assert_eq!(
        soap::decode_response(&add, &bad_code),
        Err(UpnpError::Status(500))
    );
}

// ---- SOAP server side ----

#[test]
fn soap_server_round_trips() {
    let actions = [
        Action::GetExternalIpAddress,
        Action::GetStatusInfo,
        Action::AddPortMapping(mapping()),
        Action::AddAnyPortMapping(mapping()),
        Action::DeletePortMapping {
            external_port: 41641,
            protocol: TransportProtocol::Tcp,
        },
    ];
    for st in [WANIP1, WANIP2] {
        for a in &actions {
            let body = soap::encode_request(st, a);
            let header = format!("{st}#{}", a.name());
            assert_eq!(
                soap::decode_request(Some(&header), &body),
                Ok((st.to_owned(), a.clone()))
            );
            assert_eq!(
                soap::decode_request(None, &body),
                Ok((st.to_owned(), a.clone()))
            );
            // Through HTTP too.
            let wire = http::post_soap(
                &url("http://192.168.1.1:5000/ctl/IPConn"),
                st,
                a.name(),
                &body,
            );
            let req = http::parse_request(&wire).unwrap().unwrap();
            assert_eq!(
                soap::decode_request(req.soap_action.as_deref(), &req.body),
                Ok((st.to_owned(), a.clone()))
            );
        }
    }
    let responses = [
        (
            Action::GetExternalIpAddress,
            ActionResponse::ExternalIpAddress(Some(Ipv4Addr::new(203, 0, 113, 7))),
        ),
        (
            Action::GetExternalIpAddress,
            ActionResponse::ExternalIpAddress(None),
        ),
        (
            Action::GetStatusInfo,
            ActionResponse::StatusInfo {
                connection_status: "Connected".into(),
                last_error: Some("ERROR_NONE".into()),
                uptime: Some(7),
            },
        ),
        (
            Action::GetStatusInfo,
            ActionResponse::StatusInfo {
                connection_status: "Unconfigured".into(),
                last_error: None,
                uptime: None,
            },
        ),
        (
            Action::AddPortMapping(mapping()),
            ActionResponse::PortMappingAdded,
        ),
        (
            Action::AddAnyPortMapping(mapping()),
            ActionResponse::AnyPortMappingAdded {
                reserved_port: 1024,
            },
        ),
        (
            Action::DeletePortMapping {
                external_port: 1,
                protocol: TransportProtocol::Udp,
            },
            ActionResponse::PortMappingDeleted,
        ),
    ];
    for (a, r) in responses {
        let wire = http::response(200, &soap::encode_response(WANIP1, &r));
        let resp = http::parse_response(&wire).unwrap().unwrap();
        assert_eq!(soap::decode_response(&a, &resp), Ok(r));
    }
    let wire = http::response(
        500,
        &soap::encode_fault(725, "OnlyPermanentLeasesSupported"),
    );
    let resp = http::parse_response(&wire).unwrap().unwrap();
    assert_eq!(
        soap::decode_response(&Action::AddPortMapping(mapping()), &resp),
        Err(UpnpError::Fault {
            code: 725,
            description: "OnlyPermanentLeasesSupported".into()
        })
    );
}

#[test]
fn soap_response_bytes() {
    assert_eq!(
        String::from_utf8(soap::encode_response(WANIP1, &ActionResponse::ExternalIpAddress(Some(Ipv4Addr::new(203, 0, 113, 7))))).unwrap(),
        miniupnpd_envelope("<u:GetExternalIPAddressResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse>")
    );
}

#[test]
fn soap_server_errors() {
    let unknown = format!("{ENV_OPEN}<u:GetGenericPortMappingEntry xmlns:u=\"{WANIP1}\"><NewPortMappingIndex>0</NewPortMappingIndex></u:GetGenericPortMappingEntry>{ENV_CLOSE}");
    assert_eq!(
        soap::decode_request(None, unknown.as_bytes()),
        Err(UpnpError::Fault {
            code: 401,
            description: "Invalid Action".into()
        })
    );
    let missing = format!("{ENV_OPEN}<u:AddPortMapping xmlns:u=\"{WANIP1}\"><NewExternalPort>1</NewExternalPort></u:AddPortMapping>{ENV_CLOSE}");
    assert_eq!(
        soap::decode_request(None, missing.as_bytes()),
        Err(UpnpError::Fault {
            code: 402,
            description: "Invalid Args".into()
        })
    );
    let bad_proto = format!("{ENV_OPEN}<u:DeletePortMapping xmlns:u=\"{WANIP1}\"><NewExternalPort>1</NewExternalPort><NewProtocol>SCTP</NewProtocol></u:DeletePortMapping>{ENV_CLOSE}");
    assert!(matches!(
        soap::decode_request(None, bad_proto.as_bytes()),
        Err(UpnpError::Fault { code: 402, .. })
    ));
    let body = soap::encode_request(WANIP1, &Action::GetStatusInfo);
    assert!(matches!(
        soap::decode_request(Some("urn:x#GetExternalIPAddress"), &body),
        Err(UpnpError::Xml(_))
    ));
    let no_ns = b"<Envelope><Body><GetStatusInfo/></Body></Envelope>";
    assert_eq!(
        soap::decode_request(None, no_ns),
        Err(UpnpError::Missing("service type"))
    );
    assert_eq!(
        soap::decode_request(Some("\"urn:x:1#GetStatusInfo\""), no_ns),
        Ok(("urn:x:1".into(), Action::GetStatusInfo))
    );
    assert!(soap::decode_request(None, b"<a><b></a>").is_err());
    assert!(soap::decode_request(None, b"<Envelope><Body>&bogus;</Body></Envelope>").is_err());
}

// ---- never panic ----

fn valid_messages() -> Vec<Vec<u8>> {
    let loc = url("http://192.168.1.1:5000/rootDesc.xml");
    vec![
        MINIUPNPD_SSDP.to_vec(),
        ssdp::m_search(ssdp::SEARCH_TARGETS[0]),
        MINIUPNPD_V1_DESC.as_bytes().to_vec(),
        V2_DESC.as_bytes().to_vec(),
        PPP_DESC.as_bytes().to_vec(),
        miniupnpd_http("200 OK", MINIUPNPD_V1_DESC),
        miniupnpd_fault(725, "OnlyPermanentLeasesSupported").body,
        soap::encode_request(WANIP1, &Action::AddPortMapping(mapping())),
        soap::encode_response(
            WANIP2,
            &ActionResponse::AnyPortMappingAdded { reserved_port: 9 },
        ),
        http::post_soap(
            &loc,
            WANIP1,
            "GetStatusInfo",
            &soap::encode_request(WANIP1, &Action::GetStatusInfo),
        ),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
    ]
}

fn feed_all(data: &[u8]) {
    let loc = url("http://192.168.1.1:5000/rootDesc.xml");
    let _ = ssdp::parse_response(data);
    let _ = ssdp::parse_m_search(data);
    let _ = http::parse_response(data);
    let _ = http::parse_response_at_eof(data);
    let _ = http::parse_request(data);
    let _ = description::parse_description(data, &loc);
    let _ = soap::decode_request(None, data);
    let _ = soap::decode_request(
        Some("urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"),
        data,
    );
    for status in [200, 500] {
        let r = HttpResponse {
            status,
            body: data.to_vec(),
        };
        for a in [
            Action::GetExternalIpAddress,
            Action::GetStatusInfo,
            Action::AddPortMapping(mapping()),
            Action::AddAnyPortMapping(mapping()),
            Action::DeletePortMapping {
                external_port: 1,
                protocol: TransportProtocol::Udp,
            },
        ] {
            let _ = soap::decode_response(&a, &r);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = HttpUrl::parse(s);
        let _ = loc.join(s);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed_all(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..11,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut msg = valid_messages().swap_remove(which);
        for (at, byte, kind) in edits {
            if msg.is_empty() { break; }
            let i = at.index(msg.len());
            match kind {
                0 => msg[i] = byte,
                1 => { msg.insert(i, byte); }
                _ => { msg.truncate(i); }
            }
        }
        feed_all(&msg);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "[<>/a-zA-Z:&;#\\[\\]0-9 .?\"=\r\n-]{0,300}") {
        feed_all(s.as_bytes());
    }

    #[test]
    fn url_display_round_trips(a in any::<[u8; 4]>(), port in any::<u16>(), path in "(/[a-zA-Z0-9._~%-]{0,8}){0,4}(\\?[a-z=&]{0,8})?") {
        let u = HttpUrl::parse(&format!("http://{}:{port}{path}", Ipv4Addr::from(a))).unwrap();
        prop_assert_eq!(HttpUrl::parse(&u.to_string()).unwrap(), u);
    }
}

#[test]
fn description_odd_encoding_decl_and_non_igd_root() {
    // An ASCII body declared ISO-8859-1, whose root device is not an IGD: the services are
    // still found and the version is 0 (unknown).
    let xml = r#"<?xml version="1.0" encoding="ISO-8859-1"?><root><device><deviceType>urn:vendor:device:Gateway:1</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/c</controlURL></service></serviceList></device></root>"#;
    let d = description::parse_description(xml.as_bytes(), &url("http://10.0.0.1/")).unwrap();
    assert_eq!(d.igd_version, 0);
    assert_eq!(d.best_service().unwrap().control_url.path, "/c");
}
