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
mod tests;
