//! `burrow control`: the coordination server (`serve`) and its admin tools (`nodes`, `node`,
//! `authkey`, `policy`).

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{
    AuthkeyCommand, ControlCommand, ControlServeArgs, NodeAdminCommand, PolicyCommand,
};

/// Runs one `burrow control` subcommand.
pub async fn run(command: ControlCommand) -> Result<()> {
    match command {
        ControlCommand::Serve(args) => serve(args).await,
        ControlCommand::Nodes { admin_socket, json } => nodes(&admin_socket, json).await,
        ControlCommand::Node { command } => node(command).await,
        ControlCommand::Authkey { command } => authkey(command).await,
        ControlCommand::Policy { command } => match command {
            PolicyCommand::Check { file } => check_policy(&file),
            PolicyCommand::Reload { admin_socket } => reload_policy(&admin_socket).await,
        },
    }
}

/// `burrow control serve`: the API over HTTP(S) and the admin socket, until Ctrl-C.
async fn serve(args: ControlServeArgs) -> Result<()> {
    let ControlServeArgs {
        listen,
        db,
        policy,
        derp,
        stun,
        derp_map,
        node_expiry,
        admin_socket,
        tls,
        max_connections,
        max_connections_per_ip,
        per_ip_rate,
        header_timeout,
        verify_token_file,
    } = args;
    // Connections must fit under the open-files limit (raised to the hard limit), with
    // room for the database and the admin socket.
    let fd_room = burrow::derper::raise_fd_limit()
        .map_or(usize::MAX, |l| (l as usize).saturating_sub(128).max(64));
    if max_connections > fd_room {
        tracing::warn!(
            max_connections,
            fd_room,
            "--max-connections lowered to fit the open-files limit"
        );
    }
    let limits = burrow::control::limits::Limits {
        max_connections: max_connections.min(fd_room),
        max_connections_per_ip: max_connections_per_ip.min(fd_room),
        per_ip_rate,
        header_read_timeout: Duration::from_secs(header_timeout.max(1)),
        ..Default::default()
    };
    use burrow::control::{Control, ALLOW_ALL};
    let node_expiry =
        match node_expiry.as_str() {
            "never" => None,
            e => Some(burrow::control::parse_duration(e).with_context(|| {
                format!("--node-expiry {e:?}: use 30s, 15m, 24h, 180d or never")
            })?),
        };
    let text = match &policy {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => ALLOW_ALL.to_string(),
    };
    let compiled = Control::policy(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}",
            policy
                .as_ref()
                .map_or("policy".into(), |p| p.display().to_string())
        )
    })?;
    let store = burrow::control::open_store(&db)
        .await
        .with_context(|| format!("opening {db}"))?;
    let regions = match &derp_map {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let map = burrow_derp::DerpMap::from_json(&text)
                .with_context(|| format!("--derp-map {}", path.display()))?;
            burrow::control::derp_map::regions(&map)
                .await
                .with_context(|| format!("--derp-map {}", path.display()))?
        }
        None => derp
            .map(|url| {
                vec![burrow_control::DerpRegion {
                    id: 1,
                    code: "default".into(),
                    url: url.to_string(),
                    stun: stun.clone(),
                    ipv4: None,
                    ipv6: None,
                }]
            })
            .unwrap_or_default(),
    };
    if store.shared_url().is_some() {
        // The first server on a shared store puts its policy in force; later ones follow the
        // store's (a reload on any server replaces it everywhere).
        match store.snapshot()?.policy {
            None => {
                store.set_policy(&text)?;
            }
            Some(stored) if stored != text => eprintln!(
                "warning: the database holds another policy than {}; it stays in force \
                 (burrow control policy reload puts this file's in force everywhere)",
                policy
                    .as_ref()
                    .map_or("the built-in allow-all".into(), |p| p.display().to_string())
            ),
            Some(_) => {}
        }
    }
    let control = Control::new(store, compiled, regions)?;
    control.set_policy_file(policy.clone());
    control.set_node_expiry(node_expiry);
    if let Some(path) = &verify_token_file {
        let token = burrow::control::verify::read_token(path)
            .map_err(|e| anyhow::anyhow!("--verify-token-file: {e}"))?;
        control.set_verify_token(token);
    }
    let _expiry = control.spawn_expiry();
    let _follow = control.spawn_follow();
    let listen_on = burrow::dual_stack::listen_addr(listen, 8080);
    let listener = burrow::dual_stack::tcp_listener(listen_on, listen.is_none())
        .with_context(|| format!("binding {listen_on}"))?;
    let bound = listener.local_addr()?;
    let admin = {
        let (c, path) = (control.clone(), admin_socket.clone());
        tokio::spawn(async move {
            if let Err(e) = burrow::control::admin::serve(&path, c).await {
                tracing::error!(error = %e, "admin socket failed");
            }
        })
    };
    println!("listening on {bound}");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let tls = tls.server_config()?;
    if tls.is_none() && !bound.ip().is_loopback() {
        eprintln!(
            "warning: serving the control API over plain HTTP on {bound}: node secrets \
             and netmaps cross the network in clear and can be rewritten on the path; \
             use --tls-cert/--tls-key or --self-signed"
        );
    }
    control.serve(listener, limits, tls, shutdown).await;
    admin.abort();
    let _ = std::fs::remove_file(&admin_socket);
    Ok(())
}

/// `burrow control nodes`: the registered nodes, as a table or JSON.
async fn nodes(admin_socket: &std::path::Path, json: bool) -> Result<()> {
    let nodes = burrow::control::admin::request(admin_socket, "GET", "/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    let nodes: Vec<burrow::control::admin::NodeSummary> = serde_json::from_value(nodes)?;
    println!(
        "{:<5} {:<20} {:<12} {:<16} {:<8} EXPIRES",
        "ID", "NAME", "USER", "ADDRESS", "STATE"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for n in nodes {
        let v4 = n
            .addresses
            .iter()
            .find(|a| a.is_ipv4())
            .map_or("-".into(), |a| a.to_string());
        let state = if n.expired {
            "expired"
        } else if n.online {
            "online"
        } else {
            "offline"
        };
        let expires = match n.expires_at {
            None => "never".to_string(),
            Some(at) if at <= now => "-".to_string(),
            Some(at) => format!("in {}", human_secs(at - now)),
        };
        println!(
            "{:<5} {:<20} {:<12} {:<16} {:<8} {expires}",
            n.id, n.name, n.user, v4, state
        );
    }
    Ok(())
}

/// `burrow control node remove|expire`.
async fn node(command: NodeAdminCommand) -> Result<()> {
    let (method, path, socket) = match &command {
        NodeAdminCommand::Remove { node, admin_socket } => (
            "DELETE",
            format!("/nodes/{}", url_segment(node)),
            admin_socket,
        ),
        NodeAdminCommand::Expire { node, admin_socket } => (
            "POST",
            format!("/nodes/{}/expire", url_segment(node)),
            admin_socket,
        ),
    };
    let r = burrow::control::admin::request(socket, method, &path).await?;
    let r: burrow::control::admin::ActionResult = serde_json::from_value(r)?;
    println!("{} node {} ({})", r.action, r.node.id, r.node.name);
    Ok(())
}

/// `burrow control authkey create`: a new pre-auth key, printed once.
async fn authkey(command: AuthkeyCommand) -> Result<()> {
    let AuthkeyCommand::Create {
        db,
        user,
        reusable,
        expiry,
        tag,
    } = command;
    use burrow::control::store::AuthKeySpec;
    for t in &tag {
        if !t.starts_with("tag:") || t.len() < 5 {
            anyhow::bail!("--tag {t:?}: tags are named tag:NAME");
        }
    }
    let expires_at = match &expiry {
        None => None,
        Some(e) => {
            let d = burrow::control::parse_duration(e)
                .with_context(|| format!("--expiry {e:?}: use 30s, 15m, 24h or 90d"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            Some(now + d.as_secs())
        }
    };
    let store = burrow::control::open_store(&db)
        .await
        .with_context(|| format!("opening {db}"))?;
    let key = store.create_auth_key(&AuthKeySpec {
        user,
        reusable,
        expires_at,
        tags: tag,
    })?;
    println!("{key}");
    Ok(())
}

/// `burrow control policy reload`: the server reads its policy file again.
async fn reload_policy(admin_socket: &std::path::Path) -> Result<()> {
    let r = burrow::control::admin::request(admin_socket, "POST", "/policy/reload").await?;
    let r: burrow::control::admin::ReloadResult = serde_json::from_value(r)?;
    println!("policy reloaded: {} nodes told of a change", r.nodes_told);
    Ok(())
}

/// `burrow control policy check`: exit status 1, with the error's line, if the policy is bad.
fn check_policy(file: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match burrow_control::Policy::check(&text) {
        Ok((p, compiled)) => {
            println!(
                "{}: ok: {} rules, {} groups, {} tags, {} hosts",
                file.display(),
                compiled.len(),
                p.groups.len(),
                p.tag_owners.len(),
                p.hosts.len()
            );
            // Peer relays: who may relay through whom.
            let grants = compiled.describe_relay();
            match (grants.is_empty(), p.auto_relay) {
                (true, false) => println!("relay: none (no relay rules, autoRelay off)"),
                _ => println!(
                    "relay: {} rules, autoRelay {}",
                    grants.len(),
                    on_off(p.auto_relay)
                ),
            }
            for g in grants {
                println!("  {g}");
            }
            if p.auto_relay {
                println!(
                    "  autoRelay: a node with --relay-port and a fixed public mapping relays for \
                     every node the ACLs let reach it"
                );
            }
            Ok(())
        }
        Err(e) => {
            let line = e.line();
            eprintln!("{}:{line}: {e}", file.display());
            std::process::exit(1);
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// "3d 4h", "15m", "42s".
fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A node id or host name as one URL path segment (host names are [A-Za-z0-9-] in practice;
/// anything else is percent-encoded).
fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
