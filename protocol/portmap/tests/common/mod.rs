//! A LAN for the client machine's tests: the port mapper and the modelled gateway one hop
//! apart, every exchange answered at once, time advanced to the mapper's deadlines.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use burrow_portmap::gateway::{Gateway, GatewayConfig};
use burrow_portmap::{Event, Input, PinholeEvent, PortMapper, PortMapperConfig, Transmit};

pub const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
pub const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
pub const PORT: u16 = 41641;
/// The router's and our IPv6 addresses (global: no NAT66, a firewall).
pub const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
/// The port mapper's own socket.
pub const CLIENT_PORT: u16 = 40000;

pub struct Lan {
    pub mapper: PortMapper,
    pub gw: Gateway,
    pub now: Instant,
    pub events: Vec<(Duration, Event)>,
    pub t0: Instant,
    /// Drop every datagram to the gateway (it is unreachable).
    pub blackhole: bool,
    /// The source of our IPv6 datagrams.
    pub me6: Ipv6Addr,
    pub pinhole_events: Vec<(Duration, PinholeEvent)>,
}

impl Lan {
    pub fn new(gw: GatewayConfig, tweak: impl FnOnce(&mut PortMapperConfig)) -> Self {
        let t0 = Instant::now();
        let mut c = PortMapperConfig::new(GW, ME, PORT, 7);
        tweak(&mut c);
        Lan {
            mapper: PortMapper::new(c),
            gw: Gateway::new(gw, t0, 1),
            now: t0,
            events: Vec::new(),
            t0,
            blackhole: false,
            me6: ME6,
            pinhole_events: Vec::new(),
        }
    }

    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.mapper.poll_transmit() {
                moved = true;
                if self.blackhole {
                    continue;
                }
                let from = SocketAddrV4::new(ME, CLIENT_PORT);
                match t {
                    Transmit::Udp {
                        dst: SocketAddr::V6(dst),
                        payload,
                    } => {
                        if *dst.ip() != GW6 {
                            continue;
                        }
                        let from6 = SocketAddrV6::new(self.me6, CLIENT_PORT, 0, 0);
                        if let Some(answer) =
                            self.gw.handle_udp6(self.now, from6, dst.port(), &payload)
                        {
                            let src = SocketAddr::new(IpAddr::V6(GW6), dst.port());
                            let _ = self.mapper.handle_input(
                                self.now,
                                Input::Udp {
                                    from: src,
                                    data: &answer,
                                },
                            );
                        }
                    }
                    Transmit::Udp { dst, payload } => {
                        let to_gw = dst.ip() == IpAddr::V4(GW) || dst.port() == 1900;
                        if !to_gw {
                            continue;
                        }
                        if let Some(answer) =
                            self.gw.handle_udp(self.now, from, dst.port(), &payload)
                        {
                            let src = SocketAddr::new(IpAddr::V4(GW), dst.port());
                            let _ = self.mapper.handle_input(
                                self.now,
                                Input::Udp {
                                    from: src,
                                    data: &answer,
                                },
                            );
                        }
                    }
                    Transmit::Http { id, dst, request } => {
                        assert_eq!(dst.ip(), IpAddr::V4(GW));
                        let answer = self.gw.handle_http(self.now, from, &request);
                        let _ = self.mapper.handle_input(
                            self.now,
                            Input::Http {
                                id,
                                response: answer.as_deref(),
                            },
                        );
                    }
                }
            }
            while let Some(e) = self.mapper.poll_event() {
                moved = true;
                self.events.push((self.now - self.t0, e));
            }
            while let Some(e) = self.mapper.poll_pinhole_event() {
                moved = true;
                self.pinhole_events.push((self.now - self.t0, e));
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs until `at` after the start.
    pub fn run_until(&mut self, at: Duration) {
        let end = self.t0 + at;
        self.pump();
        while let Some(t) = self.mapper.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.mapper.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
    }

    pub fn start(&mut self) {
        self.mapper.start(self.now);
        self.pump();
    }

    pub fn reports(&self) -> Vec<&burrow_portmap::Report> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Report(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

pub fn gw(tweak: impl FnOnce(&mut GatewayConfig)) -> GatewayConfig {
    let mut c = GatewayConfig::all(GW, EXT);
    tweak(&mut c);
    c
}

pub fn ext(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(EXT, port))
}
