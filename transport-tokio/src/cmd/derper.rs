//! `burrow derper`: the DERP relay, with its admission caps fitted to the open-files limit,
//! optional STUN and mesh links; tells clients to come back when it stops.

use std::time::Duration;

use anyhow::{Context, Result};
use burrow::stun_server::StunServer;
use burrow_stun::ServerConfig;

use crate::cli::DerperArgs;
use crate::cmd::common::{read_certificates, write_secret};

/// Runs `burrow derper`.
pub async fn run(args: DerperArgs) -> Result<()> {
    let DerperArgs {
        listen,
        stun_listen,
        tls,
        key_file,
        mesh_key,
        mesh_with,
        rate_limit,
        burst,
        max_clients,
        max_clients_per_ip,
        max_pending,
        max_pending_per_ip,
        verify_clients,
        verify_token_file,
        verify_tls_ca,
    } = args;
    let private_key = match &key_file {
        Some(path) if path.exists() => {
            burrow_wg::PrivateKey::from_base64(&std::fs::read_to_string(path)?)
                .with_context(|| format!("reading the key in {}", path.display()))?
        }
        other => {
            let mut rng =
                <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_os_rng();
            let k = burrow_wg::PrivateKey::generate(&mut rng);
            if let Some(path) = other {
                write_secret(path, k.expose_base64().as_bytes())?;
            }
            k
        }
    };
    let tls = tls.server_config()?;
    let mesh_key = match &mesh_key {
        Some(p) => Some(
            burrow_derp::MeshKey::new(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("--mesh-key {}", p.display()))?,
        ),
        None => None,
    };
    let verify = match (&verify_clients, &verify_token_file) {
        (Some(url), Some(file)) => {
            let token = burrow::control::verify::read_token(file)
                .map_err(|e| anyhow::anyhow!("--verify-token-file: {e}"))?;
            let mut roots = Vec::new();
            for path in &verify_tls_ca {
                roots.extend(
                    read_certificates(path)
                        .with_context(|| format!("--verify-tls-ca {}", path.display()))?,
                );
            }
            Some(
                burrow::derper::VerifyClients::new(url, &token, roots)
                    .map_err(|e| anyhow::anyhow!("--verify-clients {url}: {e}"))?,
            )
        }
        _ => None,
    };
    let mut admission = burrow::derper::Admission {
        max_pending,
        max_pending_per_ip,
        max_clients,
        max_clients_per_ip,
        verify,
    };
    // Raise the open-files limit, and keep the caps under it: refusing connections
    // beats running out of descriptors.
    if let Some(limit) = burrow::derper::raise_fd_limit() {
        let fitted = admission.clone().fit_to_fd_limit(limit);
        if (fitted.max_pending, fitted.max_clients) != (max_pending, max_clients) {
            tracing::warn!(
                open_files = limit,
                max_pending = fitted.max_pending,
                max_clients = fitted.max_clients,
                "caps lowered to fit the open-files limit"
            );
        }
        admission = fitted;
    }
    let config = burrow::derper::DerperConfig {
        private_key: private_key.clone(),
        mesh_key: mesh_key.clone(),
        mesh_with: mesh_with.clone(),
        tls,
        rate_limit: rate_limit.zip(burst),
        admission,
    };
    let relay = burrow::derper::Relay::new(&config);
    let listen_on = burrow::dual_stack::listen_addr(listen, 443);
    let listener = burrow::dual_stack::tcp_listener(listen_on, listen.is_none())
        .with_context(|| format!("listening on {listen_on}"))?;
    let bound = listener.local_addr()?;
    if let Some(stun) = stun_listen {
        let server = StunServer::bind(ServerConfig::new(stun))
            .await
            .context("starting the STUN server")?;
        tracing::info!(addr = %server.config().primary, "STUN server listening");
        tokio::spawn(server.run(1, std::future::pending()));
    }
    for (i, url) in mesh_with.into_iter().enumerate() {
        let key = mesh_key.clone().expect("clap requires --mesh-key");
        tokio::spawn(burrow::derper::mesh_link(
            relay.clone(),
            burrow_derp::MeshLink(i as u32),
            url,
            private_key.clone(),
            key,
        ));
    }
    tracing::info!(addr = %bound, public_key = %private_key.public_key(), tls = config.tls.is_some(), "DERP relay listening");
    println!("listening on {bound}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = burrow::derper::serve(relay.clone(), listener) => r?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Ask clients to come back shortly, then give the writers a moment to send it.
    relay.announce_restart(Duration::from_millis(500), Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
