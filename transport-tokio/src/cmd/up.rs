//! `burrow up`: checks the arguments, reads the auth key and trusted certificates, and runs
//! the node (`burrow::up`) until Ctrl-C or SIGTERM.

use anyhow::{Context, Result};

use crate::cli::UpArgs;
use crate::cmd::common::read_certificates;

/// Runs `burrow up`.
pub async fn run(args: UpArgs) -> Result<()> {
    let UpArgs {
        control,
        auth_key,
        auth_key_file,
        state_dir,
        tun,
        port,
        derp,
        stun,
        hostname,
        socket,
        tls_ca,
        no_port_mapping,
        mtu,
        no_path_mtu,
        no_offload,
        relay_port,
        relay_endpoint,
        relay_max_mbit,
    } = args;
    let socket = socket.unwrap_or_else(|| state_dir.join("burrow.sock"));
    let mut extra_roots = Vec::new();
    for path in &tls_ca {
        extra_roots.extend(
            read_certificates(path).with_context(|| format!("--tls-ca {}", path.display()))?,
        );
    }
    if std::env::args().any(|a| a == "--auth-key" || a.starts_with("--auth-key=")) {
        eprintln!(
            "warning: --auth-key on the command line is readable by every local user \
             (/proc/PID/cmdline); use --auth-key-file or BURROW_AUTH_KEY"
        );
    }
    let auth_key = match auth_key_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("--auth-key-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => auth_key,
    };
    let hostname = match hostname {
        Some(h) if burrow::control::valid_hostname(&h) => h,
        Some(h) => anyhow::bail!(
            "--hostname {h:?}: use one DNS label (letters, digits, inner hyphens; at most 63)"
        ),
        None => burrow::control::hostname_label(
            &std::fs::read_to_string("/etc/hostname").unwrap_or_default(),
        ),
    };
    let config = burrow::up::UpConfig {
        control: control.trim_end_matches('/').to_string(),
        auth_key,
        state_dir,
        tun,
        listen_port: port,
        derp,
        stun,
        hostname,
        socket,
        extra_roots,
        port_mapping: !no_port_mapping,
        mtu,
        path_mtu: !no_path_mtu,
        offload: !no_offload,
        relay_port,
        relay_endpoints: relay_endpoint,
        relay_max_mbit,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    burrow::up::run(config, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await
}
