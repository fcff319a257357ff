//! The real coordination server (`burrow control`'s router, over an in-memory SQLite store)
//! on a turmoil host, and the node side that joins it with `burrow`'s own control client: the
//! whole story (control, DERP, STUN, NATs) in simulated time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use burrow::control::client::{ClientError, Connector, ControlClient, MapStream};
use burrow::control::store::{AuthKeySpec, SqliteStore, Store};
use burrow::control::{Control, RegisterBody, ALLOW_ALL};
use burrow_control::{DerpRegion, NetMap};

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
        })
    }

    /// Serves the control API on `port` of this host until the host stops.
    pub(crate) async fn serve(&self, port: u16) -> turmoil::Result {
        let policy = Control::policy(ALLOW_ALL).map_err(|e| e.to_string())?;
        let control = Control::new(self.store.clone(), policy, self.derp.clone())
            .map_err(|e| e.to_string())?;
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

/// What joining gave a node.
pub(crate) struct Joined {
    /// Bearer secret for later requests.
    pub(crate) secret: String,
    /// The first netmap.
    pub(crate) netmap: NetMap,
    /// The stream of changes after it.
    pub(crate) stream: MapStream,
}

/// Registers `me` and opens its netmap stream, retrying while the server is not up yet.
pub(crate) async fn join(
    control: &ControlClient,
    me: &str,
    node_key: &burrow_wg::PrivateKey,
    disco_key: &burrow_wg::PrivateKey,
    auth_key: &str,
    rec: &Recorder,
) -> Result<Joined, ClientError> {
    let body = RegisterBody {
        auth_key: Some(auth_key.into()),
        hostname: me.into(),
        disco_key: disco_key.public_key().to_base64(),
        ..RegisterBody::default()
    };
    let mut tries = 0;
    let registered = loop {
        match control.register(node_key, body.clone()).await {
            Ok(r) => break r,
            Err(ClientError::Io(_)) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let v4 = registered
        .node
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .map_or("-".into(), |a| a.to_string());
    rec.event(format_args!("control {me} registered as {v4}"));
    let (stream, netmap) = control.open_map(&registered.secret).await?;
    rec.event(format_args!(
        "control {me} netmap: {} peer(s), DERP {}",
        netmap.peers.len(),
        netmap.derp.first().map_or("-", |r| r.url.as_str())
    ));
    Ok(Joined {
        secret: registered.secret,
        netmap,
        stream,
    })
}
