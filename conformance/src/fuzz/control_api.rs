//! The `control_api` target: the coordination server's real HTTP router (`burrow control
//! serve`'s, over an in-memory SQLite store, with node expiry and the relays' verification
//! route turned on) driven in-process with arbitrary requests.
//!
//! An input is a script of up to [`MAX_REQUESTS`] requests, each:
//! `route:u8 flags:u8 [auth:len8] [header name:len8 value:len8] [path:len8] body:len16le`
//! (a `lenN` field is an N-bit length, then that many bytes; a short input ends the field).
//! `route` picks from [`ROUTES`], or past its end takes the path from the input (method by
//! `route % 4`). `flags`: bit 0 `Content-Type: application/json`; bit 1 `Authorization: Bearer
//! @SECRET@`; bit 2 an `Authorization` value from the input; bit 3 one more header from the
//! input; bits 4–5 the client address; bit 6 the body in two chunks; bit 7, for a sealed
//! registration, the setup node's key instead of a fresh one.
//!
//! The `SEALED` route is a registration done right: its body, if it is a registration body
//! (auth key or node secret, host name, disco key), is sealed with a node key for a challenge
//! fetched through the router, as `burrow up` does; otherwise it goes out raw. In bodies,
//! paths and header values, `@AUTHKEY@` (reusable key of user alice), `@ONEOFF@` (one-off key
//! of bob, tagged), `@SECRET@` (secret of the node registered at setup), `@LAST@` (secret
//! from this script's latest registration), `@NODEKEY@` / `@NODEKEYURL@` (the setup node's
//! key, base64 / its verification path), `@DISCOKEY@` (its disco key) and `@VERIFY@` (the
//! verification token) become the real values, so scripts get past authentication without
//! knowing the random tokens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use burrow::control::identity::{seal_registration, ChallengeResponse, RegisterBody};
use burrow::control::store::{AuthKeySpec, Registration, SqliteStore, Store};
use burrow::control::verify;
use burrow::control::{Control, ALLOW_ALL};
use burrow_wg::PrivateKey;
use futures::FutureExt;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Requests per input.
pub const MAX_REQUESTS: usize = 8;

/// The routes a script names by index: (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/machine/register"),
    ("POST", "/machine/endpoints"),
    ("GET", "/machine/map"),
    ("GET", "/machine/challenge"),
    ("GET", "/health"),
    ("GET", "/derp/verify/@NODEKEYURL@"),
    ("POST", "/machine/map"),
    ("GET", "/machine/register"),
    ("PUT", "/machine/endpoints"),
    ("POST", "/machine/challenge"),
    ("POST", SEALED),
];

/// Marks the sealed registration in [`ROUTES`].
const SEALED: &str = "sealed /machine/register";

/// Routes whose handlers read a JSON body: garbage there must be refused with a 4xx.
const BODY_ROUTES: &[&str] = &["/machine/register", "/machine/endpoints"];

/// Routes that need a node's secret.
const AUTHENTICATED: &[&str] = &["/machine/endpoints", "/machine/map"];

/// The DERP verification token.
const VERIFY_TOKEN: &str = "fuzz-verify-token-0123456789abcdef";

/// One server, fresh for every input (so a finding replays exactly), and what the script may
/// refer to.
struct Server {
    router: Router,
    auth_key: String,
    one_off: String,
    secret: String,
    node_key: PrivateKey,
}

fn server() -> Server {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(Path::new(":memory:")).expect("in-memory store"));
    let auth_key = store
        .create_auth_key(&AuthKeySpec {
            user: "alice".into(),
            reusable: true,
            expires_at: None,
            tags: Vec::new(),
        })
        .expect("auth key");
    let one_off = store
        .create_auth_key(&AuthKeySpec {
            user: "bob".into(),
            reusable: false,
            expires_at: None,
            tags: vec!["tag:server".into()],
        })
        .expect("auth key");
    let node_key = PrivateKey::from_bytes([1; 32]);
    // Its disco key is the one `script` names @DISCOKEY@.
    let disco = PrivateKey::from_bytes([2; 32]).public_key().to_base64();
    let (_, secret, _) = store
        .register(&Registration {
            auth_key: Some(&auth_key),
            node_secret: None,
            name: "existing",
            node_key: &node_key.public_key().to_base64(),
            disco_key: &disco,
            expires_at: None,
            challenge: None,
        })
        .expect("setup registration");
    let policy = Control::policy(ALLOW_ALL).expect("policy");
    let derp = vec![burrow_control::DerpRegion {
        id: 1,
        code: "fuzz".into(),
        url: "http://127.0.0.1:3340/derp".into(),
        stun: Vec::new(),
        ipv4: None,
        ipv6: None,
    }];
    let control = Control::new(store, policy, derp).expect("control server");
    control.set_verify_token(VERIFY_TOKEN.into());
    // Registrations expire (a day on), as with `serve --node-expiry 1d`.
    control.set_node_expiry(Some(std::time::Duration::from_secs(86_400)));
    Server {
        router: control.router(),
        auth_key,
        one_off,
        secret,
        node_key,
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
}

/// Reads script fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn field8(&mut self) -> &'a [u8] {
        let n = self.byte().unwrap_or(0) as usize;
        self.take(n)
    }

    fn field16(&mut self) -> &'a [u8] {
        let lo = self.byte().unwrap_or(0) as usize;
        let hi = self.byte().unwrap_or(0) as usize;
        self.take(lo | hi << 8)
    }
}

/// `data` with every placeholder replaced.
fn substitute(data: &[u8], values: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    'next: while i < data.len() {
        for (name, value) in values {
            if data[i..].starts_with(name.as_bytes()) {
                out.extend_from_slice(value.as_bytes());
                i += name.len();
                continue 'next;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A response, its body read whole (or, for a stream, its first chunk only).
struct Answer {
    status: StatusCode,
    body: Bytes,
}

async fn send(router: &Router, req: Request<Body>, stream: bool) -> Answer {
    let resp = match ServiceExt::<Request<Body>>::oneshot(router.clone(), req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let body = if stream && status.is_success() {
        // The stream stays open: its first event is there at once, nothing more is awaited.
        body.frame()
            .now_or_never()
            .expect("a map stream starts at once")
            .expect("a map stream starts with an event")
            .expect("a map stream starts without an error")
            .into_data()
            .unwrap_or_default()
    } else {
        body.collect()
            .await
            .expect("a response body reads to its end")
            .to_bytes()
    };
    Answer { status, body }
}

/// Seals `body` as a registration with `key`, for a challenge fetched through the router from
/// `source`; None if no challenge was given (e.g. the source is rate-limited).
async fn sealed(
    router: &Router,
    source: SocketAddr,
    key: &PrivateKey,
    body: RegisterBody,
) -> Option<Vec<u8>> {
    let mut req = Request::get("/machine/challenge")
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(ConnectInfo(source));
    let a = send(router, req, false).await;
    assert!(
        a.status.is_success() || a.status == StatusCode::TOO_MANY_REQUESTS,
        "GET /machine/challenge: {}",
        a.status
    );
    let challenge: ChallengeResponse = serde_json::from_slice(&a.body).ok()?;
    let sealed = seal_registration(key, &challenge, body).expect("the server's own challenge");
    Some(serde_json::to_vec(&sealed).expect("serialises"))
}

/// Runs a script of requests against a fresh control server. Nothing may panic; every answer
/// is a 2xx or a 4xx (never a server error); a body that is not JSON is refused with a 4xx;
/// an authenticated route succeeds only with a live node secret, a registration only with a
/// real auth key or secret; a map stream starts with the netmap.
pub fn control_api(data: &[u8]) {
    let s = server();
    RUNTIME.with(|rt| rt.block_on(script(&s, data)));
}

async fn script(s: &Server, data: &[u8]) {
    let mut r = Reader(data);
    // Secrets that authenticate a node right now, as far as the script knows.
    let mut secrets = vec![s.secret.clone()];
    let mut last = String::new();
    let node_key = s.node_key.public_key();
    let node_key_b64 = node_key.to_base64();
    let disco_key = PrivateKey::from_bytes([2; 32]).public_key().to_base64();
    let node_key_url = verify::path_for(&node_key)
        .trim_start_matches("/derp/verify/")
        .to_string();
    for i in 0..MAX_REQUESTS {
        let Some(route) = r.byte() else { return };
        let flags = r.byte().unwrap_or(0);
        let values = [
            ("@AUTHKEY@", s.auth_key.as_str()),
            ("@ONEOFF@", s.one_off.as_str()),
            ("@SECRET@", s.secret.as_str()),
            ("@LAST@", last.as_str()),
            ("@NODEKEYURL@", node_key_url.as_str()),
            ("@NODEKEY@", node_key_b64.as_str()),
            ("@VERIFY@", VERIFY_TOKEN),
            ("@DISCOKEY@", disco_key.as_str()),
        ];
        let auth = (flags & 4 != 0).then(|| substitute(r.field8(), &values));
        let extra = (flags & 8 != 0).then(|| (r.field8(), substitute(r.field8(), &values)));
        let (method, path) = match ROUTES.get(route as usize) {
            Some((m, p)) => (m.as_bytes(), substitute(p.as_bytes(), &values)),
            None => {
                let methods: [&[u8]; 4] = [b"GET", b"POST", b"PUT", b"DELETE"];
                (methods[route as usize % 4], substitute(r.field8(), &values))
            }
        };
        let mut body = substitute(r.field16(), &values);
        let source = [
            SocketAddr::from(([127, 0, 0, 1], 40000)),
            SocketAddr::from(([203, 0, 113, 5], 1234)),
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 5)),
            SocketAddr::from(([198, 51, 100, 9], 9)),
        ][(flags >> 4 & 3) as usize];

        // What the registration says, for the check of its answer below.
        let said = body.clone();
        let path = if path == SEALED.as_bytes() {
            if let Ok(b) = serde_json::from_slice::<RegisterBody>(&body) {
                let key = if flags & 128 != 0 {
                    s.node_key.clone()
                } else {
                    PrivateKey::from_bytes([10 + i as u8; 32])
                };
                match sealed(&s.router, source, &key, b).await {
                    Some(sealed) => body = sealed,
                    None => continue,
                }
            }
            b"/machine/register".to_vec()
        } else {
            path
        };

        let Ok(method) = Method::from_bytes(method) else {
            continue;
        };
        let mut builder = Request::builder().method(method.clone()).uri(&path[..]);
        if flags & 1 != 0 {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if flags & 2 != 0 {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {}", s.secret));
        }
        if let Some(v) = auth
            .as_deref()
            .and_then(|v| HeaderValue::from_bytes(v).ok())
        {
            builder = builder.header(header::AUTHORIZATION, v);
        }
        if let Some((name, value)) = &extra {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                builder = builder.header(n, v);
            }
        }
        let body_json = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
        let req_body = if flags & 64 != 0 && body.len() > 1 {
            let (a, b) = body.split_at(body.len() / 2);
            let chunks = [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
            Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, Infallible>)))
        } else {
            Body::from(body.clone())
        };
        let Ok(mut req) = builder.body(req_body) else {
            continue; // not a request hyper would ever hand the router
        };
        req.extensions_mut().insert(ConnectInfo(source));
        let route_path = req.uri().path().to_string();
        let live_secret = req
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .any(|v| secrets.iter().any(|s| contains(v.as_bytes(), s.as_bytes())));

        let is_map = method == Method::GET && route_path == "/machine/map";
        let a = send(&s.router, req, is_map).await;
        let what = format!("{method} {}: {}", String::from_utf8_lossy(&path), a.status);
        assert!(
            a.status.is_success() || a.status.is_client_error(),
            "{what}: neither 2xx nor 4xx"
        );
        let route_path = route_path.as_str();
        if method == Method::POST && BODY_ROUTES.contains(&route_path) && !body_json {
            assert!(
                a.status.is_client_error(),
                "{what} for a body that is not JSON"
            );
        }
        if a.status.is_success() && AUTHENTICATED.contains(&route_path) {
            assert!(live_secret, "{what} without a node's secret");
        }
        if is_map && a.status.is_success() {
            assert!(
                contains(&a.body, b"net-map"),
                "{what}: first event not a netmap"
            );
        }
        if a.status.is_success() && method == Method::POST && route_path == "/machine/register" {
            assert!(
                [&s.auth_key, &s.one_off]
                    .into_iter()
                    .chain(&secrets)
                    .any(|k| contains(&said, k.as_bytes())),
                "{what} without an auth key or a secret"
            );
            let v: serde_json::Value =
                serde_json::from_slice(&a.body).expect("a registration's answer is JSON");
            if let Some(secret) = v.get("secret").and_then(|x| x.as_str()) {
                last = secret.to_string();
                secrets.push(last.clone());
            }
        }
    }
}
