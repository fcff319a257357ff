//! The control server's defences against load (security audit #5 and #6): per-source and
//! per-key token buckets, and an HTTP/1 server loop with a header-read timeout and caps on
//! connections in total and per source address. Every table here is bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::time::Instant;

/// Load limits for `burrow control serve`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_connections_per_ip: usize,
    /// A request's head must arrive within this, or the connection closes.
    pub header_read_timeout: Duration,
    /// A request (its body included) must be answered within this (streams: their first byte).
    pub request_timeout: Duration,
    /// Challenge, registration and map-stream requests per second from one source address
    /// (bursts of four times as many).
    pub per_ip_rate: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            max_connections_per_ip: 512,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            per_ip_rate: 10.0,
        }
    }
}

/// Token buckets by key, bounded in how many keys they remember.
#[derive(Debug)]
pub struct RateLimiter<K: Ord> {
    buckets: BTreeMap<K, (f64, Instant)>,
    burst: f64,
    per_second: f64,
    max_keys: usize,
}

impl<K: Ord + Clone> RateLimiter<K> {
    /// `per_second` sustained, `burst` at once, at most `max_keys` keys remembered.
    pub fn new(per_second: f64, burst: f64, max_keys: usize) -> Self {
        RateLimiter {
            buckets: BTreeMap::new(),
            burst,
            per_second,
            max_keys,
        }
    }

    /// Forgets `key` (its budget starts full if it comes back).
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    /// Takes one token for `key`; false when its bucket is empty, or when the table is full of
    /// keys that are all still limited.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            // Forget keys whose buckets have refilled: they are indistinguishable from new.
            let (burst, rate) = (self.burst, self.per_second);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// Open connections, in total, per source address, and per IPv6 /48 (a site: its 65,536
/// /64s share [`burrow_derp::gate::SITE_SHARES`] sources' worth, as at the derper).
#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_ip: BTreeMap<IpAddr, usize>,
    per_site: BTreeMap<IpAddr, usize>,
}

/// The /48 an IPv6 source belongs to (None for IPv4).
fn site_of(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            Some(IpAddr::V6(std::net::Ipv6Addr::new(
                s[0], s[1], s[2], 0, 0, 0, 0, 0,
            )))
        }
        _ => None,
    }
}

/// One fewer in a count, forgetting it at zero.
fn decrement(map: &mut BTreeMap<IpAddr, usize>, key: &IpAddr) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    ip: IpAddr,
    table: Arc<Mutex<Connections>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.table.lock().expect("connections");
        t.total = t.total.saturating_sub(1);
        decrement(&mut t.per_ip, &self.ip);
        if let Some(site) = site_of(self.ip) {
            decrement(&mut t.per_site, &site);
        }
    }
}

fn admit(table: &Arc<Mutex<Connections>>, ip: IpAddr, limits: &Limits) -> Option<Admitted> {
    let mut t = table.lock().expect("connections");
    let here = t.per_ip.get(&ip).copied().unwrap_or(0);
    if t.total >= limits.max_connections || here >= limits.max_connections_per_ip {
        return None;
    }
    let site = site_of(ip);
    if let Some(site) = site {
        let cap = limits
            .max_connections_per_ip
            .saturating_mul(burrow_derp::gate::SITE_SHARES);
        if t.per_site.get(&site).copied().unwrap_or(0) >= cap {
            return None;
        }
        *t.per_site.entry(site).or_insert(0) += 1;
    }
    t.total += 1;
    *t.per_ip.entry(ip).or_insert(0) += 1;
    Some(Admitted {
        ip,
        table: table.clone(),
    })
}

/// The unit the per-source limits count: an IPv4 address (an IPv4-mapped IPv6 address is
/// its IPv4 address), or an IPv6 /64 (one subscriber's usual allocation, so rotating through a
/// /64 gains nothing).
pub fn source_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves `router` over HTTP/1 on `listener` until `shutdown`, with TLS when `tls` is given.
/// Connections beyond the caps (in total, and per source bucket) are closed at once, before
/// any TLS work; handshakes must finish within 10 s and request heads within the header-read
/// timeout. Each request carries its source address (`ConnectInfo<SocketAddr>`). Accept errors
/// (the process is out of file descriptors) are waited out by the listener, never fatal.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let table = Arc::new(Mutex::new(Connections::default()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            _ = &mut shutdown => return,
            c = listener.accept() => c,
        };
        // On a dual-stack listener an IPv4 client arrives IPv4-mapped: it is that IPv4
        // address, for the caps and for every handler (`ConnectInfo`, [`Source`]).
        let addr = crate::dual_stack::canonical(addr);
        let Some(admitted) = admit(&table, source_bucket(addr.ip()), &limits) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%addr, refused, "connection cap reached; closing new connections");
            }
            drop(io);
            continue;
        };
        let (router, acceptor) = (router.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            match acceptor {
                None => serve_connection(io, addr, router, limits).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => serve_connection(tls, addr, router, limits).await,
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, addr: SocketAddr, router: Router, limits: Limits)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(%addr, error = %e, "connection ended");
    }
}

/// The source a request came from, as [`source_bucket`] counts it (unspecified when served
/// without one, as in in-process tests and fuzzing).
#[derive(Debug, Clone, Copy)]
pub struct Source(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| source_bucket(c.0.ip())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_site_is_capped_across_its_64s() {
        // 65,536 /64s in one /48: together they get SITE_SHARES sources' worth, not more.
        let table = Arc::new(Mutex::new(Connections::default()));
        let limits = Limits {
            max_connections: 1000,
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let cap = 2 * burrow_derp::gate::SITE_SHARES;
        let mut held = Vec::new();
        for k in 0..100u16 {
            let ip: IpAddr = format!("2001:db8:7:{k:x}::1").parse().unwrap();
            if let Some(a) = admit(&table, source_bucket(ip), &limits) {
                held.push(a);
            }
        }
        assert_eq!(held.len(), cap, "one site holds {} connections", held.len());
        // Another site, and IPv4, are not held back by it.
        let other: IpAddr = "2001:db8:8::1".parse().unwrap();
        assert!(admit(&table, source_bucket(other), &limits).is_some());
        assert!(admit(&table, "198.51.100.7".parse().unwrap(), &limits).is_some());
        // Closing one frees a place for the site.
        held.pop();
        let again: IpAddr = "2001:db8:7:ffff::1".parse().unwrap();
        assert!(admit(&table, source_bucket(again), &limits).is_some());
    }

    #[test]
    fn sources_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        let b = |s: &str| source_bucket(s.parse().unwrap());
        assert_eq!(b("192.0.2.7"), b("::ffff:192.0.2.7"));
        assert_eq!(b("2001:db8:1:2:aaaa::1"), b("2001:db8:1:2:bbbb::2"));
        assert_ne!(b("2001:db8:1:2::1"), b("2001:db8:1:3::1"));
    }

    #[tokio::test]
    async fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = crate::dual_stack::tcp_listener("[::]:0".parse().unwrap(), true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = Router::new().route(
            "/",
            axum::routing::get(
                |ConnectInfo(a): ConnectInfo<SocketAddr>, Source(s): Source| async move {
                    format!("{} {s}", a.ip())
                },
            ),
        );
        let limits = Limits {
            max_connections_per_ip: 1,
            ..Default::default()
        };
        tokio::spawn(serve(
            listener,
            router,
            limits,
            None,
            std::future::pending(),
        ));
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b);
        assert_eq!(body, Some("127.0.0.1 127.0.0.1"), "{out}");
    }

    #[test]
    fn buckets_refill_and_the_table_stays_bounded() {
        let t = Instant::now();
        let mut l = RateLimiter::new(1.0, 2.0, 3);
        assert!(l.allow(&1, t) && l.allow(&1, t));
        assert!(!l.allow(&1, t), "burst spent");
        assert!(l.allow(&1, t + Duration::from_secs(1)), "refilled");
        assert!(l.allow(&2, t) && l.allow(&3, t));
        assert!(!l.allow(&4, t), "table full of limited keys");
        assert!(
            l.allow(&4, t + Duration::from_secs(10)),
            "idle keys forgotten"
        );
        assert!(l.buckets.len() <= 3);
    }
}
