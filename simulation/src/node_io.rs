//! A simulated node's ways out: its DERP client over turmoil TCP, and a binder for more UDP
//! sockets behind the same uplink (birthday probing), for burrow's own `run_node`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::capture::Recorder;
use crate::net::{derive_seed, SimSocket, Uplink};

/// burrow's DERP client for node `me`, connecting to `relay` over turmoil TCP; its
/// randomness derives from `seed`, so runs replay.
pub(crate) fn derp_client(
    relay: SocketAddr,
    key: &burrow_wg::PrivateKey,
    seed: u64,
    me: &str,
) -> burrow::derp_client::DerpClient {
    let url = burrow::derp_client::DerpUrl {
        tls: false,
        host: relay.ip().to_string(),
        port: relay.port(),
        path: "/derp".into(),
    };
    let key = key.clone();
    let conn_seed = Arc::new(AtomicU64::new(derive_seed(
        seed,
        &format!("derp-client:{me}"),
    )));
    burrow::derp_client::DerpClient::spawn_with(
        url.to_string(),
        move || {
            let (url, key) = (url.clone(), key.clone());
            let rng = ChaCha20Rng::seed_from_u64(conn_seed.fetch_add(1, Ordering::Relaxed));
            async move {
                let tcp = turmoil::net::TcpStream::connect(relay).await?;
                burrow::derp_client::upgrade(Box::new(tcp), &url, key, None, false, rng).await
            }
        },
        ChaCha20Rng::seed_from_u64(derive_seed(seed, &format!("derp-jitter:{me}"))),
    )
}

/// Opens birthday sockets for a simulated node: more sockets behind the same uplink.
pub(crate) struct SimBinder {
    pub(crate) ip: IpAddr,
    pub(crate) uplink: Uplink,
    pub(crate) rec: Arc<Recorder>,
}

impl burrow::node::SocketBinder for SimBinder {
    type Socket = SimSocket;
    fn bind(&self) -> impl std::future::Future<Output = std::io::Result<SimSocket>> + Send {
        SimSocket::bind(
            SocketAddr::new(self.ip, 0),
            self.uplink.clone(),
            self.rec.clone(),
        )
    }
}
