//! The IPv6 pinhole: a PCP MAP over IPv6 whose internal address is our global IPv6 address
//! opens the router's IPv6 firewall for our port (RFC 6887 §11; no NAT, so the external
//! address and port are normally our own). It runs beside the IPv4 mapping: renewed at half
//! its lease, checked with an ANNOUNCE between renewals (an epoch that went back makes it
//! again), re-made for a new address, deleted at shutdown. Only the IPv6 gateway's datagrams
//! with our nonce count.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::{
    secs, Ask, Pending, Phase, PinholeConfig, PinholeEvent, PortMapError, PortMapper, Transmit,
    ANNOUNCE_GAP, FIRST_RETRY, MAP_TRIES,
};
use crate::epoch::EpochTracker;
use crate::{pcp, pmp};

/// The pinhole's state inside [`PortMapper`].
#[derive(Debug)]
pub(super) struct Pinhole {
    /// Its own stream, so that the IPv4 side's random choices stay as they were.
    rng: ChaCha20Rng,
    nonce: [u8; 12],
    pub(super) pending: Option<Pending>,
    pub(super) addr: Option<SocketAddr>,
    renew_at: Option<Instant>,
    check_at: Option<Instant>,
    retry_at: Option<Instant>,
    epoch: EpochTracker,
    announced_at: Option<Instant>,
    /// The latest refusal: PCP result code (`None`: no answer) and words.
    pub(super) error: Option<(Option<u16>, String)>,
    pub(super) events: VecDeque<PinholeEvent>,
}

impl Pinhole {
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(6);
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        Pinhole {
            rng,
            nonce,
            pending: None,
            addr: None,
            renew_at: None,
            check_at: None,
            retry_at: None,
            epoch: EpochTracker::new(),
            announced_at: None,
            error: None,
            events: VecDeque::new(),
        }
    }

    fn clear_timers(&mut self) {
        self.renew_at = None;
        self.check_at = None;
        self.retry_at = None;
    }
}

fn server(c: PinholeConfig) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(
        c.gateway,
        pmp::SERVER_PORT,
        0,
        c.scope_id,
    ))
}

impl PortMapper {
    /// The pinhole asked for, if PCP is on.
    fn pinhole_config(&self) -> Option<PinholeConfig> {
        self.config.pinhole.filter(|_| self.config.pcp)
    }

    /// The live IPv6 pinhole.
    pub fn pinhole(&self) -> Option<SocketAddr> {
        self.pinhole.addr
    }

    /// Our IPv6 address or the IPv6 gateway changed (`None`: no global IPv6 address now).
    /// The old pinhole is deleted and a new one asked for.
    pub fn set_pinhole(&mut self, now: Instant, pinhole: Option<PinholeConfig>) {
        if pinhole == self.config.pinhole {
            return;
        }
        let old = self.pinhole_config();
        let asked = self.pinhole.addr.is_some()
            || self
                .pinhole
                .pending
                .as_ref()
                .is_some_and(|p| matches!(p.ask, Ask::Map | Ask::Renew));
        if let (Some(old), true) = (old, asked) {
            // Deleted once, unacknowledged: the old address is likely gone anyway.
            let payload = self.pinhole_request(old, 0).to_bytes();
            self.transmits.push_back(Transmit::Udp {
                dst: server(old),
                payload,
            });
        }
        self.pinhole.pending = None;
        self.pinhole.clear_timers();
        self.pinhole.epoch.reset();
        self.pinhole.error = None;
        let mut nonce = [0u8; 12];
        self.pinhole.rng.fill_bytes(&mut nonce);
        self.pinhole.nonce = nonce;
        if self.pinhole.addr.take().is_some() {
            self.pinhole.events.push_back(PinholeEvent::Lost {
                reason: "our IPv6 address changed".into(),
            });
        }
        self.config.pinhole = pinhole;
        if !matches!(
            self.phase,
            Phase::Idle | Phase::Closing { .. } | Phase::Closed
        ) {
            self.pinhole_map(now, Ask::Map);
        }
    }

    /// A probe round starts: ask for the pinhole (again: the network may have changed).
    pub(super) fn pinhole_start(&mut self, now: Instant) {
        if self.pinhole.pending.is_some() {
            return;
        }
        let ask = if self.pinhole.addr.is_some() {
            Ask::Renew
        } else {
            Ask::Map
        };
        self.pinhole_map(now, ask);
    }

    fn pinhole_request(&self, c: PinholeConfig, lifetime: u32) -> pcp::Request {
        // Suggested: our own address and port (no NAT between us and the internet).
        pcp::Request::map(
            IpAddr::V6(c.local_ip),
            lifetime,
            pcp::MapBody {
                nonce: self.pinhole.nonce,
                protocol: pcp::PROTOCOL_UDP,
                internal_port: self.config.local_port,
                external_port: self.config.local_port,
                external_ip: IpAddr::V6(c.local_ip),
            },
        )
    }

    fn pinhole_send(&mut self, now: Instant, ask: Ask, payload: Vec<u8>, max_tries: u32) {
        let Some(c) = self.pinhole_config() else {
            return;
        };
        self.transmits.push_back(Transmit::Udp {
            dst: server(c),
            payload: payload.clone(),
        });
        self.pinhole.pending = Some(Pending {
            ask,
            payload,
            next: now + FIRST_RETRY,
            interval: FIRST_RETRY,
            tries: 1,
            max_tries,
        });
    }

    fn pinhole_map(&mut self, now: Instant, ask: Ask) {
        let Some(c) = self.pinhole_config() else {
            return;
        };
        self.pinhole.clear_timers();
        let lifetime = u32::try_from(self.config.lease.as_secs()).unwrap_or(u32::MAX);
        let payload = self.pinhole_request(c, lifetime).to_bytes();
        self.pinhole_send(now, ask, payload, MAP_TRIES);
    }

    /// Shutdown: delete the pinhole if one is live or asked for.
    pub(super) fn pinhole_shutdown(&mut self, now: Instant) {
        self.pinhole.clear_timers();
        let asked = self.pinhole.addr.is_some()
            || self
                .pinhole
                .pending
                .as_ref()
                .is_some_and(|p| matches!(p.ask, Ask::Map | Ask::Renew));
        self.pinhole.pending = None;
        let Some(c) = self.pinhole_config().filter(|_| asked) else {
            return;
        };
        let payload = self.pinhole_request(c, 0).to_bytes();
        self.pinhole_send(now, Ask::Unmap, payload, 3);
    }

    /// The pinhole's deletion is done (answered or given up): finish closing.
    fn pinhole_closed(&mut self) {
        self.pinhole.pending = None;
        if self.pinhole.addr.take().is_some() {
            self.pinhole.events.push_back(PinholeEvent::Lost {
                reason: "deleted at shutdown".into(),
            });
        }
        if self.v4_closed && matches!(self.phase, Phase::Closing { .. }) {
            self.close();
        }
    }

    pub(super) fn pinhole_timeout_at(&self) -> Option<Instant> {
        [
            self.pinhole.pending.as_ref().map(|p| p.next),
            self.pinhole.renew_at,
            self.pinhole.check_at,
            self.pinhole.retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn pinhole_timeout(&mut self, now: Instant) {
        if let Some(p) = self.pinhole.pending.as_mut() {
            if now >= p.next {
                if p.tries < p.max_tries {
                    p.tries += 1;
                    p.interval *= 2;
                    p.next = now + p.interval;
                    let payload = p.payload.clone();
                    if let Some(c) = self.pinhole_config() {
                        self.transmits.push_back(Transmit::Udp {
                            dst: server(c),
                            payload,
                        });
                    }
                } else {
                    let ask = p.ask;
                    self.pinhole.pending = None;
                    match ask {
                        Ask::Unmap => self.pinhole_closed(),
                        Ask::Check => self.pinhole_failed(
                            now,
                            None,
                            "the gateway stopped answering over IPv6".into(),
                        ),
                        _ => self.pinhole_failed(
                            now,
                            None,
                            "no answer to the IPv6 pinhole request".into(),
                        ),
                    }
                }
            }
        }
        if self.pinhole.pending.is_some() {
            return;
        }
        if self.pinhole.renew_at.is_some_and(|t| now >= t) {
            self.pinhole_map(now, Ask::Renew);
        } else if self.pinhole.retry_at.is_some_and(|t| now >= t) {
            self.pinhole_map(now, Ask::Map);
        } else if self.pinhole.check_at.is_some_and(|t| now >= t) {
            self.pinhole.check_at = Some(now + self.config.check_interval);
            if let Some(c) = self.pinhole_config() {
                let payload = pcp::Request::announce(IpAddr::V6(c.local_ip)).to_bytes();
                self.pinhole_send(now, Ask::Check, payload, MAP_TRIES);
            }
        }
    }

    /// No pinhole now: say why, and try again after the retry interval.
    fn pinhole_failed(&mut self, now: Instant, code: Option<u16>, reason: String) {
        self.pinhole.error = Some((code, reason.clone()));
        self.pinhole.clear_timers();
        self.pinhole.retry_at = Some(now + self.config.retry_interval);
        if self.pinhole.addr.take().is_some() {
            self.pinhole.events.push_back(PinholeEvent::Lost { reason });
        } else {
            self.pinhole
                .events
                .push_back(PinholeEvent::Refused { code, reason });
        }
    }

    /// A datagram from an IPv6 source: only the IPv6 gateway's PCP answers are taken.
    pub(super) fn handle_pinhole_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), PortMapError> {
        let Some(c) = self.pinhole_config() else {
            return Err(PortMapError::NotGateway(from));
        };
        if from.ip() != IpAddr::V6(c.gateway) || from.port() != pmp::SERVER_PORT {
            return Err(PortMapError::NotGateway(from));
        }
        let r = pcp::Response::decode(data)?;
        let Some(pending) = self.pinhole.pending.take() else {
            // The gateway's unsolicited ANNOUNCE (it restarted): check the pinhole now.
            if r.opcode == pcp::Opcode::Announce
                && self.pinhole.addr.is_some()
                && self
                    .pinhole
                    .announced_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= ANNOUNCE_GAP)
            {
                self.pinhole.announced_at = Some(now);
                self.pinhole.check_at = Some(now);
                return Ok(());
            }
            return Err(PortMapError::Unsolicited);
        };
        let ours = match r.opcode {
            pcp::Opcode::Announce => pending.ask == Ask::Check,
            pcp::Opcode::Map => {
                matches!(pending.ask, Ask::Map | Ask::Renew | Ask::Unmap)
                    && r.map.is_some_and(|m| {
                        m.nonce == self.pinhole.nonce
                            && m.protocol == pcp::PROTOCOL_UDP
                            && m.internal_port == self.config.local_port
                    })
            }
            _ => false,
        };
        if !ours {
            self.pinhole.pending = Some(pending);
            return Err(PortMapError::Unsolicited);
        }
        let restarted = self.pinhole.epoch.observe(now, r.epoch);
        match pending.ask {
            Ask::Unmap => self.pinhole_closed(),
            Ask::Check => {
                if restarted {
                    // The gateway lost its state, our pinhole with it: make it again.
                    self.pinhole_map(now, Ask::Renew);
                }
            }
            _ => match r.map {
                Some(m) if r.result == pcp::ResultCode::Success && r.lifetime > 0 => {
                    let addr = SocketAddr::new(m.external_ip, m.external_port);
                    let lease = secs(r.lifetime);
                    self.pinhole.error = None;
                    self.pinhole.clear_timers();
                    self.pinhole.renew_at = Some(now + (lease / 2).max(Duration::from_secs(1)));
                    self.pinhole.check_at = Some(now + self.config.check_interval);
                    if self.pinhole.addr.replace(addr) != Some(addr) {
                        self.pinhole.events.push_back(PinholeEvent::Opened(addr));
                    }
                }
                _ => {
                    let code = u16::from(r.result.code());
                    let reason = format!("PCP result {:?} for the IPv6 pinhole", r.result);
                    self.pinhole_failed(now, Some(code), reason);
                }
            },
        }
        Ok(())
    }
}
