//! The real coordination server (`burrow control`'s router, over an in-memory SQLite store)
//! on a turmoil host, and the node side that joins it with `burrow`'s own control client: the
//! whole story (control, DERP, STUN, NATs) in simulated time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use burrow::control::client::{Connector, ControlClient};
use burrow::control::store::{AuthKeySpec, SqliteStore, Store};
use burrow::control::{Control, ALLOW_ALL};
use burrow::session::{apply_to_engine, lock, SessionDriver};
use burrow_control::{DerpRegion, NodeInfo};
use burrow_session::{Session, SessionConfig, SessionError, SessionEvent};

use crate::capture::Recorder;

/// turmoil's TCP listener as an axum listener.
struct SimListener(turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok(accepted) = self.0.accept().await {
                return accepted;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A control server's storage for one run, with the reusable pre-auth key its nodes use.
pub(crate) struct SimControl {
    store: Arc<dyn Store>,
    /// The pre-auth key.
    pub(crate) auth_key: String,
    derp: Vec<DerpRegion>,
    /// The running server (replaced at each restart), for scripted admin actions.
    current: std::sync::Mutex<Option<Arc<Control>>>,
}

impl SimControl {
    /// A fresh in-memory database and a reusable key; every netmap carries `derp`.
    pub(crate) fn new(derp: Vec<DerpRegion>) -> Result<Self, String> {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(Path::new(":memory:")).map_err(|e| e.to_string())?);
        let auth_key = store
            .create_auth_key(&AuthKeySpec {
                user: "sim".into(),
                reusable: true,
                expires_at: None,
                tags: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        Ok(SimControl {
            store,
            auth_key,
            derp,
            current: std::sync::Mutex::new(None),
        })
    }

    /// A reusable pre-auth key whose nodes belong to `user` (so a policy can name them).
    pub(crate) fn key_for(&self, user: &str) -> Result<String, String> {
        self.store
            .create_auth_key(&AuthKeySpec {
                user: user.into(),
                reusable: true,
                expires_at: None,
                tags: Vec::new(),
            })
            .map_err(|e| e.to_string())
    }

    /// The server running now (None before it started).
    pub(crate) fn current(&self) -> Option<Arc<Control>> {
        self.current.lock().expect("control").clone()
    }

    /// Serves the control API on `port` of this host until the host stops.
    pub(crate) async fn serve(&self, port: u16) -> turmoil::Result {
        let policy = Control::policy(ALLOW_ALL).map_err(|e| e.to_string())?;
        let control = Control::new(self.store.clone(), policy, self.derp.clone())
            .map_err(|e| e.to_string())?;
        *self.current.lock().expect("control") = Some(control.clone());
        let any = SocketAddr::from(([0, 0, 0, 0], port));
        let listener = turmoil::net::TcpListener::bind(any).await?;
        let limits = burrow::control::limits::Limits::default();
        control
            .serve(SimListener(listener), limits, None, std::future::pending())
            .await;
        Ok(())
    }
}

/// A control client that reaches `addr` over turmoil's TCP.
pub(crate) fn client(addr: SocketAddr) -> ControlClient {
    let connector: Connector = Arc::new(move || {
        Box::pin(async move {
            let tcp = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(tcp) as Box<dyn burrow::derper::Stream>)
        })
    });
    ControlClient::with_connector(addr.to_string(), connector)
}

/// Starts `me`'s node session (the same machine and driver as `burrow up`) and runs it until
/// the first netmap: registered, and the stream open. Registration is retried (with the
/// session's back-off) while the server is not up yet.
pub(crate) async fn join(
    control: ControlClient,
    me: &str,
    node_key: &burrow_wg::PrivateKey,
    disco_key: &burrow_wg::PrivateKey,
    auth_key: &str,
    rec: &Recorder,
) -> Result<(SessionDriver, NodeInfo), SessionError> {
    let mut config = SessionConfig::new(me, disco_key.public_key());
    config.auth_key = Some(auth_key.into());
    config.seed = crate::net::derive_seed(0, &format!("session:{me}"));
    let session = Session::new(config, tokio::time::Instant::now().into_std());
    let mut driver = SessionDriver::new(session, control, node_key.clone());
    loop {
        match driver.next_event().await {
            SessionEvent::NetMap { node, derp } => {
                let v4 = node.addresses.iter().find(|a| a.is_ipv4());
                let v4 = v4.map_or("-".into(), |a| a.to_string());
                rec.event(format_args!("control {me} registered as {v4}"));
                let peers = lock(&driver.session()).peer_count();
                let relay = derp.first().map_or("-", |r| r.url.as_str());
                rec.event(format_args!(
                    "control {me} netmap: {peers} peer(s), DERP {relay}"
                ));
                return Ok((driver, node));
            }
            SessionEvent::Failed(e) => return Err(e),
            _ => {}
        }
    }
}

/// Who wants to hear when a given peer arrives.
pub(crate) type Watch = (burrow_wg::PublicKey, tokio::sync::mpsc::UnboundedSender<()>);

/// Follows the session for the rest of the run: peers to the engine (`commands`), recorded;
/// `watch`, if any, hears when its peer arrives.
pub(crate) fn follow(
    mut driver: SessionDriver,
    commands: tokio::sync::mpsc::UnboundedSender<burrow::node::NodeCommand>,
    rec: Arc<Recorder>,
    me: String,
    watch: Option<Watch>,
) {
    tokio::spawn(async move {
        loop {
            let event = driver.next_event().await;
            match &event {
                SessionEvent::PeerUpsert { name, config } => {
                    rec.event(format_args!(
                        "control {me} heard of {name}: endpoints {:?}",
                        config.endpoints
                    ));
                    if let Some((key, known)) = &watch {
                        if config.node_key == *key {
                            let _ = known.send(());
                        }
                    }
                }
                SessionEvent::PeerRemove { name, .. } => {
                    rec.event(format_args!("control {me} forgot {name}"));
                }
                SessionEvent::NetMap { .. } => {
                    let peers = lock(&driver.session()).peer_count();
                    rec.event(format_args!("control {me} netmap resync: {peers} peer(s)"));
                }
                SessionEvent::MapResumed => {
                    let peers = lock(&driver.session()).peer_count();
                    rec.event(format_args!("control {me} netmap resumed: {peers} peer(s)"));
                }
                SessionEvent::FilterChanged => {
                    rec.event(format_args!("control {me} filter changed"));
                }
                SessionEvent::PeerRefused { name, reason } => {
                    rec.event(format_args!("control {me} refused {name}: {reason}"));
                }
                SessionEvent::EndpointsPosted(endpoints) => {
                    rec.event(format_args!("control {me} posted endpoints {endpoints:?}"));
                }
                SessionEvent::Failed(e) => {
                    rec.event(format_args!("control {me} session stopped: {e}"));
                    return;
                }
                _ => {}
            }
            if !apply_to_engine(&event, &commands) {
                return;
            }
        }
    });
}
