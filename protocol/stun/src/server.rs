//! Sans-IO Binding server: reflexive address, RFC 5780 CHANGE-REQUEST / OTHER-ADDRESS /
//! RESPONSE-ORIGIN, 420 for unknown comprehension-required attributes. Only Binding requests
//! with the RFC 8489 magic cookie are answered (a spoofed source gets little reflected);
//! RFC 3489 answers and a per-source token bucket are opt-in (sources tracked exactly, with
//! a shared overflow budget when a flood fills the table).

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::attribute::{types, Attribute, AttributeTypes, ErrorCode};
use crate::encode::Encoder;
use crate::error::{DecodeError, EncodeError};
use crate::header::{Class, MessageType, Method};
use crate::message::Message;

/// Largest answer the server writes; callers should pass an output buffer at least this big.
pub const MAX_RESPONSE_LEN: usize = 548;

/// Longest SOFTWARE value the server sends (RFC 8489: fewer than 128 characters).
pub const MAX_SOFTWARE_LEN: usize = 128;

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The primary address (IP1:port1).
    pub primary: SocketAddr,
    /// RFC 5780 alternate address (IP2:port2). With it, the server listens on all four
    /// combinations of the two IPs and two ports and honours CHANGE-REQUEST.
    pub alternate: Option<SocketAddr>,
    /// SOFTWARE to put in responses, if any.
    pub software: Option<String>,
}

impl ServerConfig {
    /// A plain server on one address.
    pub fn new(primary: SocketAddr) -> Self {
        ServerConfig {
            primary,
            alternate: None,
            software: None,
        }
    }

    /// Every local address the driver must listen on: one, or four with an alternate.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        match self.alternate {
            None => vec![self.primary],
            Some(alt) => vec![
                self.primary,
                SocketAddr::new(self.primary.ip(), alt.port()),
                SocketAddr::new(alt.ip(), self.primary.port()),
                alt,
            ],
        }
    }
}

/// What the driver must send: `len` bytes of the output buffer, from the local socket bound
/// to `from`, to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The local address to send from (differs from the receiving one under CHANGE-REQUEST).
    pub from: SocketAddr,
    /// The destination.
    pub to: SocketAddr,
    /// Length of the response in the output buffer.
    pub len: usize,
}

/// Why a datagram got no answer. Only that datagram is affected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Ignored {
    /// Not STUN, or malformed.
    #[error("malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// A STUN indication or response: nothing to answer.
    #[error("not a request")]
    NotARequest,
    /// FINGERPRINT present and wrong.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
    /// The output buffer is too small for the answer.
    #[error("cannot write the answer: {0}")]
    Encode(#[from] EncodeError),
    /// A request without the magic cookie (RFC 3489), not answered unless enabled with
    /// [`BindingServer::answer_rfc3489`].
    #[error("RFC 3489 request (no magic cookie)")]
    Rfc3489,
    /// A request for another method than Binding.
    #[error("not a Binding request")]
    NotBinding,
    /// The source's token bucket is empty.
    #[error("rate limited")]
    RateLimited,
}

/// Running totals, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Success responses sent.
    pub success: u64,
    /// Error responses sent.
    pub errors: u64,
    /// Datagrams dropped as malformed or not STUN.
    pub malformed: u64,
    /// Indications and responses ignored.
    pub ignored: u64,
}

/// Sources the per-source limiter tracks at most, each with a token bucket of its own.
pub const TRACKED_SOURCES: usize = 16_384;

/// How long a tracked source keeps its place after its last request (longer if its bucket
/// takes longer to refill): a client asking every 20-30 s, as NAT keep-alives do, keeps its
/// own budget however many other sources appear.
pub const SOURCE_MEMORY: Duration = Duration::from_secs(60);

/// Sources the table has no room for share one budget of this many sources.
pub const OVERFLOW_SHARES: u32 = 16;

/// A token bucket, in answers.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, per_second: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The per-source limiter. Each source (an IPv4 address, an IPv6 /64) gets a bucket of its
/// own, so sources never share one: a flood from spoofed random sources cannot drain a
/// client's budget (it used to, through 1,024 hashed buckets). At most [`TRACKED_SOURCES`]
/// are tracked; a source unseen for [`SOURCE_MEMORY`] has a full bucket again and is
/// forgotten to make room (nothing is lost). When every place is held by a source seen
/// within that time (a flood of over 270 new sources a second), new sources share one
/// overflow bucket of [`OVERFLOW_SHARES`] sources: they are answered less, not at all
/// beyond it, and the total answered stays bounded.
#[derive(Debug, Clone)]
struct SourceLimiter {
    per_second: f64,
    burst: f64,
    /// How long a source unseen is kept (its bucket is full again by then).
    keep: Duration,
    sources: BTreeMap<IpAddr, (Bucket, u64)>,
    /// Tracked sources by their last request.
    by_last: BTreeMap<(Instant, u64), IpAddr>,
    seq: u64,
    overflow: Option<Bucket>,
}

impl SourceLimiter {
    fn new(per_second: u32, burst: u32) -> Self {
        let per_second = f64::from(per_second);
        let burst = f64::from(burst.max(1));
        let refill = if per_second > 0.0 {
            Duration::try_from_secs_f64(burst / per_second).unwrap_or(Duration::MAX)
        } else {
            Duration::MAX
        };
        SourceLimiter {
            per_second,
            burst,
            keep: SOURCE_MEMORY.max(refill),
            sources: BTreeMap::new(),
            by_last: BTreeMap::new(),
            seq: 0,
            overflow: None,
        }
    }

    /// The address a source is tracked by: IPv4, or the IPv6 /64.
    fn source(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
            v4 => v4,
        }
    }

    fn take(&mut self, now: Instant, ip: IpAddr) -> bool {
        let src = Self::source(ip);
        self.seq += 1;
        let seq = self.seq;
        if let Some((bucket, at)) = self.sources.get_mut(&src) {
            self.by_last.remove(&(bucket.last, *at));
            let ok = bucket.take(now, self.per_second, self.burst);
            *at = seq;
            self.by_last.insert((bucket.last, seq), src);
            return ok;
        }
        if self.sources.len() >= TRACKED_SOURCES {
            let oldest = self.by_last.first_key_value().map(|(k, v)| (*k, *v));
            match oldest {
                Some(((last, _), old)) if now.saturating_duration_since(last) >= self.keep => {
                    self.by_last.pop_first();
                    self.sources.remove(&old);
                }
                _ => {
                    let shares = f64::from(OVERFLOW_SHARES);
                    let (per_second, burst) = (self.per_second * shares, self.burst * shares);
                    let overflow = self.overflow.get_or_insert(Bucket {
                        tokens: burst,
                        last: now,
                    });
                    return overflow.take(now, per_second, burst);
                }
            }
        }
        let mut bucket = Bucket {
            tokens: self.burst,
            last: now,
        };
        let ok = bucket.take(now, self.per_second, self.burst);
        self.sources.insert(src, (bucket, seq));
        self.by_last.insert((bucket.last, seq), src);
        ok
    }
}

/// A stateless Binding server. It allocates nothing per packet: answers go into the caller's buffer.
#[derive(Debug, Clone)]
pub struct BindingServer {
    config: ServerConfig,
    stats: ServerStats,
    rfc3489: bool,
    limiter: Option<SourceLimiter>,
}

impl BindingServer {
    /// A server with this configuration. SOFTWARE is cut to [`MAX_SOFTWARE_LEN`] bytes so
    /// every answer fits [`MAX_RESPONSE_LEN`].
    pub fn new(mut config: ServerConfig) -> Self {
        if let Some(sw) = &mut config.software {
            let mut end = sw.len().min(MAX_SOFTWARE_LEN);
            while !sw.is_char_boundary(end) {
                end -= 1;
            }
            sw.truncate(end);
        }
        BindingServer {
            config,
            stats: ServerStats::default(),
            rfc3489: false,
            limiter: None,
        }
    }

    /// Also answers RFC 3489 requests (no magic cookie), for classic NAT-type clients; they
    /// get MAPPED-ADDRESS (and SOURCE-/CHANGED-ADDRESS with an alternate). Off by default.
    pub fn answer_rfc3489(mut self, on: bool) -> Self {
        self.rfc3489 = on;
        self
    }

    /// Answers at most `per_second` requests a second per source (an IPv4 address, an IPv6
    /// /64), in bursts of `burst`, in [`BindingServer::handle_packet_at`] (time comes in).
    /// Off by default. Sources are tracked exactly, [`TRACKED_SOURCES`] at most; beyond, new
    /// sources share an overflow budget (see [`SOURCE_MEMORY`], [`OVERFLOW_SHARES`]).
    /// `_seed` is unused (it seeded the hashed buckets this table replaced).
    pub fn rate_limit_per_source(mut self, per_second: u32, burst: u32, _seed: u64) -> Self {
        self.limiter = Some(SourceLimiter::new(per_second, burst));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Answers one datagram that arrived on local socket `local` from `from`, writing the
    /// response into `out` (at least [`MAX_RESPONSE_LEN`] bytes is always enough). No rate
    /// limit applies; see [`BindingServer::handle_packet_at`].
    pub fn handle_packet(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Reply, Ignored> {
        self.handle_packet_at(None, local, from, datagram, out)
    }

    /// [`BindingServer::handle_packet`] at time `now`: with a per-source rate limit, an
    /// answer beyond the source's budget is not sent ([`Ignored::RateLimited`]).
    pub fn handle_packet_at(
        &mut self,
        now: Option<Instant>,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Reply, Ignored> {
        let mut answer = self.answer(local, from, datagram, out);
        if let (Ok(_), Some(now), Some(l)) = (&answer, now, self.limiter.as_mut()) {
            if !l.take(now, from.ip()) {
                answer = Err(Ignored::RateLimited);
            }
        }
        match answer {
            Ok((reply, true)) => {
                self.stats.success += 1;
                Ok(reply)
            }
            Ok((reply, false)) => {
                self.stats.errors += 1;
                Ok(reply)
            }
            Err(e) => {
                match e {
                    Ignored::Malformed(_) | Ignored::BadFingerprint => self.stats.malformed += 1,
                    _ => self.stats.ignored += 1,
                }
                Err(e)
            }
        }
    }

    /// Writes the answer; the flag is true for a success response.
    fn answer(
        &self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<(Reply, bool), Ignored> {
        let msg = Message::parse_rfc3489(datagram)?;
        let ty = msg.message_type();
        if ty.class != Class::Request {
            return Err(Ignored::NotARequest);
        }
        let modern = msg.has_magic_cookie();
        if !modern && !self.rfc3489 {
            return Err(Ignored::Rfc3489);
        }
        // Other methods get nothing, not even an error (which would be bigger than the
        // request: a reflection gain for a spoofed source).
        if ty.method != Method::BINDING {
            return Err(Ignored::NotBinding);
        }
        if modern && msg.has_fingerprint() && msg.verify_fingerprint().is_err() {
            return Err(Ignored::BadFingerprint);
        }
        let error_type = MessageType::new(ty.method, Class::Error);
        let id = msg.xor_key();
        let software = self.config.software.as_deref();
        let reply_error = |out: &mut [u8], code: u16, reason: &str, unknown: &[u16]| {
            let mut attrs = [
                Attribute::ErrorCode(ErrorCode::new(code, reason)),
                Attribute::Padding(&[]),
                Attribute::Padding(&[]),
            ];
            let mut n = 1;
            if !unknown.is_empty() {
                attrs[n] = Attribute::UnknownAttributes(AttributeTypes::List(unknown));
                n += 1;
            }
            if let Some(sw) = software {
                attrs[n] = Attribute::Software(sw);
                n += 1;
            }
            let mut enc = Encoder::with_raw_id(error_type, id).attributes(&attrs[..n]);
            if modern {
                enc = enc.fingerprint();
            }
            let len = enc.encode(&mut &mut out[..])?;
            Ok((
                Reply {
                    from: local,
                    to: from,
                    len,
                },
                false,
            ))
        };
        let mut unknown = [0u16; 16];
        let mut n_unknown = 0;
        for t in msg.unknown_comprehension_required() {
            if n_unknown < unknown.len() {
                unknown[n_unknown] = t;
                n_unknown += 1;
            }
        }
        if n_unknown > 0 {
            return reply_error(
                out,
                ErrorCode::UNKNOWN_ATTRIBUTE,
                "Unknown Attribute",
                &unknown[..n_unknown],
            );
        }
        let mut change = None;
        let mut response_port = None;
        let mut padding = false;
        for attr in msg.attributes() {
            match attr {
                Ok(Attribute::ChangeRequest(c)) => change = Some(c),
                Ok(Attribute::ResponsePort(p)) => response_port = Some(p),
                Ok(Attribute::Padding(_)) => padding = true,
                Ok(_) => {}
                Err(_) => {
                    return reply_error(
                        out,
                        ErrorCode::BAD_REQUEST,
                        "Bad Request: malformed attribute",
                        &[],
                    )
                }
            }
        }
        if padding && response_port.is_some() {
            return reply_error(
                out,
                ErrorCode::BAD_REQUEST,
                "Bad Request: PADDING with RESPONSE-PORT",
                &[],
            );
        }
        // The address a change-IP + change-port answer would come from, relative to the
        // socket that received the request (RFC 5780 OTHER-ADDRESS).
        let other = self.config.alternate.map(|alt| {
            let ip = if local.ip() == alt.ip() {
                self.config.primary.ip()
            } else {
                alt.ip()
            };
            let port = if local.port() == alt.port() {
                self.config.primary.port()
            } else {
                alt.port()
            };
            SocketAddr::new(ip, port)
        });
        let mut reply_from = local;
        if let Some(c) = change.filter(|c| c.change_ip || c.change_port) {
            let Some(other) = other else {
                return reply_error(
                    out,
                    ErrorCode::UNKNOWN_ATTRIBUTE,
                    "Unknown Attribute: no alternate address",
                    &[types::CHANGE_REQUEST],
                );
            };
            if c.change_ip {
                reply_from.set_ip(other.ip());
            }
            if c.change_port {
                reply_from.set_port(other.port());
            }
        }
        let to = match response_port {
            Some(p) => SocketAddr::new(from.ip(), p),
            None => from,
        };
        let mut attrs = [Attribute::Padding(&[]); 4];
        let mut n = 0;
        let mut push = |a| {
            attrs[n] = a;
            n += 1;
        };
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; answer with the IPv4 form.
        let mapped = SocketAddr::new(from.ip().to_canonical(), from.port());
        if modern {
            push(Attribute::XorMappedAddress(mapped));
            if let Some(other) = other {
                push(Attribute::ResponseOrigin(reply_from));
                push(Attribute::OtherAddress(other));
            }
        } else {
            push(Attribute::MappedAddress(mapped));
            if let Some(other) = other {
                push(Attribute::SourceAddress(reply_from));
                push(Attribute::ChangedAddress(other));
            }
        }
        if let Some(sw) = software {
            push(Attribute::Software(sw));
        }
        let mut enc = Encoder::with_raw_id(MessageType::new(ty.method, Class::Success), id)
            .attributes(&attrs[..n]);
        if modern {
            enc = enc.fingerprint();
        }
        let len = enc.encode(&mut &mut out[..])?;
        Ok((
            Reply {
                from: reply_from,
                to,
                len,
            },
            true,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::ChangeRequest;
    use crate::header::TransactionId;

    fn request(attrs: &[Attribute<'_>]) -> Vec<u8> {
        let mut v = Vec::new();
        Encoder::new(MessageType::BINDING_REQUEST, TransactionId([9; 12]))
            .attributes(attrs)
            .encode(&mut v)
            .unwrap();
        v
    }

    fn rfc5780_server() -> BindingServer {
        BindingServer::new(ServerConfig {
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: Some("192.0.2.2:3479".parse().unwrap()),
            software: None,
        })
    }

    fn rfc3489_request() -> Vec<u8> {
        // RFC 3489 header: no cookie, 128-bit transaction ID.
        let mut req = vec![0x00, 0x01, 0x00, 0x00];
        req.extend_from_slice(&[0xAB; 16]);
        req
    }

    #[test]
    fn answers_with_xor_mapped_address_and_rfc5780_attributes() {
        let mut s = rfc5780_server();
        let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let r = s
            .handle_packet(s.config().primary, client, &request(&[]), &mut out)
            .unwrap();
        assert_eq!(r.from, s.config().primary);
        assert_eq!(r.to, client);
        let m = Message::parse(&out[..r.len]).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
        assert_eq!(m.transaction_id(), TransactionId([9; 12]));
        assert!(m.verify_fingerprint().is_ok());
        assert_eq!(m.mapped_address(), Some(client));
        assert_eq!(
            m.attribute(types::OTHER_ADDRESS),
            Some(Ok(Attribute::OtherAddress(
                "192.0.2.2:3479".parse().unwrap()
            )))
        );
    }

    #[test]
    fn honours_change_request_from_every_local_address() {
        let mut s = rfc5780_server();
        let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let (both, port, ip) = (
            ChangeRequest::IP_AND_PORT,
            ChangeRequest::PORT,
            ChangeRequest::IP,
        );
        let cases = [
            ("192.0.2.1:3478", both, "192.0.2.2:3479"),
            ("192.0.2.1:3478", port, "192.0.2.1:3479"),
            ("192.0.2.1:3478", ip, "192.0.2.2:3478"),
            ("192.0.2.2:3479", both, "192.0.2.1:3478"),
            ("192.0.2.1:3479", ip, "192.0.2.2:3479"),
        ];
        for (local, cr, expect) in cases {
            let req = request(&[Attribute::ChangeRequest(cr)]);
            let r = s
                .handle_packet(local.parse().unwrap(), client, &req, &mut out)
                .unwrap();
            assert_eq!(r.from, expect.parse().unwrap(), "{local} {cr:?}");
            let m = Message::parse(&out[..r.len]).unwrap();
            assert_eq!(
                m.attribute(types::RESPONSE_ORIGIN),
                Some(Ok(Attribute::ResponseOrigin(expect.parse().unwrap())))
            );
            // OTHER-ADDRESS is the change-both source as seen from the receiving socket.
            let both_from = s
                .handle_packet(
                    local.parse().unwrap(),
                    client,
                    &request(&[Attribute::ChangeRequest(both)]),
                    &mut [0u8; MAX_RESPONSE_LEN],
                )
                .unwrap()
                .from;
            assert_eq!(
                m.attribute(types::OTHER_ADDRESS),
                Some(Ok(Attribute::OtherAddress(both_from)))
            );
            assert_ne!(both_from.ip(), local.parse::<SocketAddr>().unwrap().ip());
        }
    }

    #[test]
    fn unknown_required_attribute_gets_420_listing_it() {
        let mut s = BindingServer::new(ServerConfig::new("192.0.2.1:3478".parse().unwrap()));
        let req = request(&[Attribute::Other {
            attr_type: 0x7abc,
            value: b"x",
        }]);
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let r = s
            .handle_packet(
                s.config().primary,
                "203.0.113.5:1".parse().unwrap(),
                &req,
                &mut out,
            )
            .unwrap();
        let m = Message::parse(&out[..r.len]).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
        match m.attribute(types::ERROR_CODE) {
            Some(Ok(Attribute::ErrorCode(e))) => assert_eq!(e.code, 420),
            other => panic!("{other:?}"),
        }
        match m.attribute(types::UNKNOWN_ATTRIBUTES) {
            Some(Ok(Attribute::UnknownAttributes(l))) => {
                assert_eq!(l.iter().collect::<Vec<_>>(), [0x7abc])
            }
            other => panic!("{other:?}"),
        }
        // An unknown optional attribute is ignored.
        let req = request(&[Attribute::Other {
            attr_type: 0xfabc,
            value: b"x",
        }]);
        let r = s
            .handle_packet(
                s.config().primary,
                "203.0.113.5:1".parse().unwrap(),
                &req,
                &mut out,
            )
            .unwrap();
        let m = Message::parse(&out[..r.len]).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_SUCCESS);
    }

    #[test]
    fn change_request_without_alternate_is_refused_with_420() {
        let mut s = BindingServer::new(ServerConfig::new("192.0.2.1:3478".parse().unwrap()));
        let req = request(&[Attribute::ChangeRequest(ChangeRequest {
            change_ip: true,
            change_port: true,
        })]);
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let r = s
            .handle_packet(
                s.config().primary,
                "203.0.113.5:1".parse().unwrap(),
                &req,
                &mut out,
            )
            .unwrap();
        let m = Message::parse(&out[..r.len]).unwrap();
        assert_eq!(m.message_type(), MessageType::BINDING_ERROR);
        assert_eq!(s.stats().errors, 1);
    }

    #[test]
    fn rfc3489_request_gets_mapped_source_and_changed_address_when_enabled() {
        let mut s = rfc5780_server().answer_rfc3489(true);
        let req = rfc3489_request();
        let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let r = s
            .handle_packet(s.config().primary, client, &req, &mut out)
            .unwrap();
        let m = Message::parse_rfc3489(&out[..r.len]).unwrap();
        assert_eq!(&out[4..20], &[0xAB; 16]);
        assert_eq!(
            m.attribute(types::MAPPED_ADDRESS),
            Some(Ok(Attribute::MappedAddress(client)))
        );
        assert_eq!(
            m.attribute(types::CHANGED_ADDRESS),
            Some(Ok(Attribute::ChangedAddress(
                "192.0.2.2:3479".parse().unwrap()
            )))
        );
        assert!(m.attribute(types::XOR_MAPPED_ADDRESS).is_none());
    }

    /// Audit #15: by default neither cookie-less (RFC 3489) requests nor other methods get
    /// an answer: nothing to reflect at a spoofed source.
    #[test]
    fn rfc3489_and_non_binding_requests_get_no_answer_by_default() {
        let mut s = rfc5780_server();
        let client: SocketAddr = "203.0.113.5:50000".parse().unwrap();
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let primary = s.config().primary;
        assert_eq!(
            s.handle_packet(primary, client, &rfc3489_request(), &mut out),
            Err(Ignored::Rfc3489)
        );
        // An Allocate-like request (method 0x003) with the cookie.
        let mut other = Vec::new();
        Encoder::new(
            MessageType::new(Method::new(0x003), Class::Request),
            TransactionId([9; 12]),
        )
        .encode(&mut other)
        .unwrap();
        assert_eq!(
            s.handle_packet(primary, client, &other, &mut out),
            Err(Ignored::NotBinding)
        );
        // Also in RFC 3489 mode.
        let mut s = rfc5780_server().answer_rfc3489(true);
        assert_eq!(
            s.handle_packet(primary, client, &other, &mut out),
            Err(Ignored::NotBinding)
        );
        assert_eq!(s.stats().ignored, 1);
        assert_eq!((s.stats().success, s.stats().errors), (0, 0));
    }

    /// Audit #15: with a per-source budget, a source gets its burst then its rate, other
    /// sources are unaffected, and the limit follows the time passed in.
    #[test]
    fn per_source_token_bucket_limits_answers() {
        let mut s = rfc5780_server().rate_limit_per_source(2, 3, 7);
        let t0 = Instant::now();
        let (victim, other): (SocketAddr, SocketAddr) = (
            "203.0.113.5:1".parse().unwrap(),
            "198.51.100.9:1".parse().unwrap(),
        );
        let primary = s.config().primary;
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let mut answered = |s: &mut BindingServer, at: Instant, from: SocketAddr| {
            s.handle_packet_at(Some(at), primary, from, &request(&[]), &mut out)
                .is_ok()
        };
        let burst = (0..10).filter(|_| answered(&mut s, t0, victim)).count();
        assert_eq!(burst, 3);
        assert!(answered(&mut s, t0, other));
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| answered(&mut s, t1, victim)).count(), 2);
        // Without a time, no limit (the sans-IO callers that do not pass one).
        assert!(s
            .handle_packet(primary, victim, &request(&[]), &mut out)
            .is_ok());
    }

    /// Audit #15 follow-up (attack `stun-drain`): a flood from 20,000 spoofed sources, each
    /// draining its budget, used to empty all 1,024 hashed buckets and silence the server for
    /// everyone. Now a client that asked within SOURCE_MEMORY keeps its own budget, a new
    /// source still gets the overflow's share once it refills, a single target stays limited
    /// to its burst, and the flood's answers stay bounded by the table and the overflow.
    #[test]
    fn a_spoofed_flood_cannot_drain_everyones_budget() {
        let (rate, burst) = (2u32, 3u32);
        let mut s = rfc5780_server().rate_limit_per_source(rate, burst, 7);
        let primary = s.config().primary;
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let req = request(&[]);
        let mut answered = |s: &mut BindingServer, at: Instant, from: SocketAddr| {
            s.handle_packet_at(Some(at), primary, from, &req, &mut out)
                .is_ok()
        };
        let t0 = Instant::now();
        let client: SocketAddr = "203.0.113.5:41641".parse().unwrap();
        assert!(answered(&mut s, t0, client));
        // Twenty seconds later (a NAT keep-alive's interval), the flood.
        let t1 = t0 + Duration::from_secs(20);
        let mut flood_answers = 0usize;
        for i in 0..20_000u32 {
            let spoofed = SocketAddr::new(IpAddr::V4((0x0a00_0000 | i).into()), 9);
            for _ in 0..=burst {
                flood_answers += usize::from(answered(&mut s, t1, spoofed));
            }
        }
        assert!(
            flood_answers
                <= (TRACKED_SOURCES - 1) * burst as usize + (OVERFLOW_SHARES * burst) as usize,
            "{flood_answers}"
        );
        assert!(answered(&mut s, t1, client), "the known client is answered");
        // A source the table has no room for shares the overflow: once it refills, answered.
        let newcomer: SocketAddr = "198.51.100.9:3478".parse().unwrap();
        assert!(answered(&mut s, t1 + Duration::from_secs(1), newcomer));
        // One target still gets its burst only.
        let target: SocketAddr = "203.0.113.77:1".parse().unwrap();
        let t2 = t1 + Duration::from_secs(61);
        assert_eq!((0..10).filter(|_| answered(&mut s, t2, target)).count(), 3);
        // Sources of one IPv6 /64 are one source.
        let v6 = |h: u16| SocketAddr::new(IpAddr::V6([0x2001, 0xdb8, 0, 0, 0, 0, 0, h].into()), 1);
        assert_eq!((1..10).filter(|h| answered(&mut s, t2, v6(*h))).count(), 3);
    }

    #[test]
    fn garbage_is_counted_and_ignored() {
        let mut s = rfc5780_server();
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let r = s.handle_packet(
            s.config().primary,
            "203.0.113.5:1".parse().unwrap(),
            &[1, 2, 3],
            &mut out,
        );
        assert!(matches!(r, Err(Ignored::Malformed(_))));
        assert_eq!(s.stats().malformed, 1);
    }
}
