//! Mesh links: this relay as a watching client of another relay of the region.

use std::sync::Arc;
use std::time::Duration;

use burrow_derp::{ClientEvent, MeshKey, MeshLink};
use burrow_wg::PrivateKey;

use crate::derp_client::{self, DerpUrl};

use super::Relay;

/// Keeps a mesh link to another relay: connects as a mesh client, watches its clients, and
/// carries forwarded packets; reconnects with backoff.
pub async fn mesh_link(
    relay: Arc<Relay>,
    link: MeshLink,
    url: DerpUrl,
    key: PrivateKey,
    mesh_key: MeshKey,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4096);
        let secret = Some(mesh_key.expose().to_owned());
        match derp_client::connect_raw(&url, key.clone(), secret, true).await {
            Ok(mut conn) => {
                backoff = Duration::from_millis(250);
                let own = relay.server.lock().expect("server").public_key();
                if let Some(ClientEvent::Connected { server, .. }) = conn.client.poll_event() {
                    if server == own {
                        tracing::info!(%url, "mesh peer is this relay itself; not meshing with it");
                        return;
                    }
                }
                conn.client.watch_conns();
                relay.mesh.lock().expect("mesh").insert(link, tx);
                relay.server.lock().expect("server").mesh_link_up(link);
                tracing::info!(%url, "mesh link up");
                let r = conn
                    .run(
                        |event| {
                            if let ClientEvent::PeerPresent { key, .. }
                            | ClientEvent::PeerGone { key, .. } = &event
                            {
                                let present = matches!(event, ClientEvent::PeerPresent { .. });
                                relay
                                    .server
                                    .lock()
                                    .expect("server")
                                    .mesh_peer(link, key.0, present);
                            }
                        },
                        &mut rx,
                    )
                    .await;
                tracing::warn!(%url, error = ?r.err(), "mesh link down");
                relay.mesh.lock().expect("mesh").remove(&link);
                relay.server.lock().expect("server").mesh_link_down(link);
            }
            Err(e) => tracing::debug!(%url, error = %e, "mesh connect failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
