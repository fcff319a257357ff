//! The `burrow` binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burrow::netcheck::ServerSpec;
use burrow::stun_server::StunServer;
use burrow_stun::ServerConfig;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "burrow", version, about = "NAT traversal and mesh networking")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Serving TLS: a certificate from files, or a fresh self-signed one.
#[derive(clap::Args, Debug, Clone)]
struct TlsArgs {
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key", conflicts_with = "self_signed")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve TLS with a fresh self-signed certificate for this host name or IP address;
    /// repeatable (one certificate for all).
    #[arg(long)]
    self_signed: Vec<String>,
    /// Keep the self-signed certificate (DER) here, for clients to trust, and its key beside it
    /// (FILE.key, mode 0600); both are reused at the next start, so clients keep trusting it.
    #[arg(long, requires = "self_signed")]
    cert_out: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The server's TLS configuration, if TLS was asked for.
    fn server_config(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        Ok(
            match (&self.tls_cert, &self.tls_key, &self.self_signed[..]) {
                (Some(c), Some(k), _) => Some(
                    burrow::derper::tls_from_files(c, k)
                        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
                ),
                (_, _, names) if !names.is_empty() => {
                    let kept = self.cert_out.as_ref().map(|c| {
                        let mut key = c.clone().into_os_string();
                        key.push(".key");
                        (c.clone(), std::path::PathBuf::from(key))
                    });
                    match &kept {
                        Some((cert, key)) if cert.exists() && key.exists() => {
                            let (c, k) = (std::fs::read(cert)?, std::fs::read(key)?);
                            Some(burrow::derper::tls_from_der(c, k).map_err(|e| {
                                anyhow::anyhow!("the kept certificate {}: {e}", cert.display())
                            })?)
                        }
                        _ => {
                            let (config, der, key_der) = burrow::derper::self_signed(names)
                                .map_err(|e| anyhow::anyhow!("self-signed certificate: {e}"))?;
                            if let Some((cert, key)) = &kept {
                                write_secret(key, &key_der)?;
                                std::fs::write(cert, der)
                                    .with_context(|| format!("writing {}", cert.display()))?;
                            }
                            Some(config)
                        }
                    }
                }
                _ => None,
            },
        )
    }
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ControlCommand {
    /// Run the coordination server (HTTP; SQLite in one file).
    Serve {
        /// TCP address for the API.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The database: a SQLite file (created and migrated at start) or postgres://USER@HOST/DB.
        #[arg(long, default_value = "burrow-control.sqlite")]
        db: String,
        /// ACL policy (JSON or HuJSON); without it every node reaches every other.
        #[arg(long)]
        policy: Option<std::path::PathBuf>,
        /// The DERP relay nodes use (region 1), handed out in every netmap.
        #[arg(long)]
        derp: Option<burrow::derp_client::DerpUrl>,
        /// A STUN server for region 1 (HOST:PORT as nodes reach it); repeatable.
        #[arg(long)]
        stun: Vec<SocketAddr>,
        /// How long a registration lasts before the node must register again with an auth
        /// key: 30s, 15m, 24h, 180d, or "never".
        #[arg(long, default_value = "never")]
        node_expiry: String,
        /// The admin API's Unix socket (mode 0600), for `burrow control nodes` and `node`.
        #[arg(long, default_value = "burrow-control.sock")]
        admin_socket: std::path::PathBuf,
        #[command(flatten)]
        tls: TlsArgs,
        /// Connections open at once, in total (beyond it new ones are closed at once).
        #[arg(long, default_value_t = 16_384)]
        max_connections: usize,
        /// Connections open at once from one source address.
        #[arg(long, default_value_t = 512)]
        max_connections_per_ip: usize,
        /// Challenge, registration and map-stream requests per second from one source address
        /// (bursts of four times as many).
        #[arg(long, default_value_t = 10.0)]
        per_ip_rate: f64,
        /// Seconds a client has to send a request's head (slow clients are cut off).
        #[arg(long, default_value_t = 10)]
        header_timeout: u64,
        /// A token file (at least 32 bytes) shared with relays run with `burrow derper
        /// --verify-clients`: they may then ask whether a key is a live node.
        #[arg(long)]
        verify_token_file: Option<std::path::PathBuf>,
    },
    /// List the registered nodes (asks the running server over its admin socket).
    Nodes {
        /// The server's admin socket.
        #[arg(long, default_value = "burrow-control.sock")]
        admin_socket: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove or expire a node.
    Node {
        #[command(subcommand)]
        command: NodeAdminCommand,
    },
    /// Pre-auth keys for registering nodes.
    Authkey {
        #[command(subcommand)]
        command: AuthkeyCommand,
    },
    /// ACL policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum NodeAdminCommand {
    /// Remove a node: its peers drop it at once, its `burrow up` stops, and its address is
    /// not handed out again.
    Remove {
        /// Id or host name.
        node: String,
        /// The server's admin socket.
        #[arg(long, default_value = "burrow-control.sock")]
        admin_socket: std::path::PathBuf,
    },
    /// Expire a node's key now: it leaves the tailnet until it registers again with an auth
    /// key (keeping its address).
    Expire {
        /// Id or host name.
        node: String,
        /// The server's admin socket.
        #[arg(long, default_value = "burrow-control.sock")]
        admin_socket: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum AuthkeyCommand {
    /// Create a key and print it (only its hash is stored).
    Create {
        /// The server's database (SQLite file or postgres://…).
        #[arg(long, default_value = "burrow-control.sqlite")]
        db: String,
        /// The user nodes registered with it belong to.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Usable for more than one node.
        #[arg(long)]
        reusable: bool,
        /// Refused after this long: 30s, 15m, 24h, 90d.
        #[arg(long)]
        expiry: Option<String>,
        /// A tag for nodes registered with it (tag:NAME); repeatable.
        #[arg(long)]
        tag: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy (JSON or HuJSON): errors name the line; exit status 1 if any.
    Check {
        /// The policy file.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a STUN server (RFC 8489; RFC 5780 NAT behaviour discovery with --alt).
    Stun {
        /// Primary address to listen on, e.g. 0.0.0.0:3478.
        #[arg(long, default_value = "0.0.0.0:3478")]
        listen: SocketAddr,
        /// Alternate address (a second IP and port) for RFC 5780: the server then also
        /// listens on both IPs' other ports and honours CHANGE-REQUEST.
        #[arg(long)]
        alt: Option<SocketAddr>,
        /// Worker tasks per socket (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// SOFTWARE attribute to put in responses.
        #[arg(long)]
        software: Option<String>,
        /// Also answer RFC 3489 requests (no magic cookie), for classic NAT-type clients.
        #[arg(long)]
        rfc3489: bool,
        /// Answer at most this many requests a second per source address (bursts of twice
        /// that), per worker; off by default.
        #[arg(long)]
        per_source_rate: Option<u32>,
    },
    /// Report what kind of network this node sits behind.
    Netcheck {
        /// A STUN server as [REGION=]HOST:PORT; repeat for more. Servers sharing a REGION
        /// are one region.
        #[arg(
            long = "stun",
            value_name = "[REGION=]HOST:PORT",
            required_unless_present = "derp_map"
        )]
        stun: Vec<ServerSpec>,
        /// A DERP map (Tailscale's JSON form): probe every region's relays' STUN ports.
        #[arg(long, value_name = "FILE")]
        derp_map: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 6.0)]
        timeout: f64,
    },
    /// Run a WireGuard tunnel over a TUN device, from a wg-quick style config file.
    /// Needs root (CAP_NET_ADMIN). SIGUSR1 forces a new handshake with every peer.
    Wg {
        /// The config file ([Interface] PrivateKey, ListenPort, Address; [Peer] PublicKey,
        /// PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Interface name (default: the config file's name without .conf, as wg-quick does).
        #[arg(long)]
        interface: Option<String>,
    },
    /// Run a DERP relay (Tailscale-compatible, protocol 2) with optional STUN, TLS and mesh.
    Derper {
        /// TCP address for HTTP(S) and DERP.
        #[arg(long, default_value = "0.0.0.0:443")]
        listen: SocketAddr,
        /// UDP address for the STUN server.
        #[arg(long)]
        stun_listen: Option<SocketAddr>,
        #[command(flatten)]
        tls: TlsArgs,
        /// The relay's private key (base64), created if missing; a fresh key otherwise.
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
        /// File holding the region's mesh key (at least 32 bytes, e.g. `openssl rand -hex 32`).
        #[arg(long)]
        mesh_key: Option<std::path::PathBuf>,
        /// Another relay of the region to mesh with (http[s]://host:port/derp); repeatable.
        #[arg(long, requires = "mesh_key")]
        mesh_with: Vec<burrow::derp_client::DerpUrl>,
        /// Per-client rate limit, bytes per second.
        #[arg(long, requires = "burst")]
        rate_limit: Option<u64>,
        /// Per-client burst, bytes.
        #[arg(long, requires = "rate_limit")]
        burst: Option<u64>,
        /// Clients connected at once (lowered to fit the open-files limit); each costs tens
        /// of KiB, so raise it only where memory allows.
        #[arg(long, default_value_t = burrow_derp::server::DEFAULT_MAX_CLIENTS)]
        max_clients: usize,
        /// Clients connected at once from one IPv4 address or IPv6 /64 (four times as many per
        /// IPv6 /48; loopback exempt).
        #[arg(long, default_value_t = 1000)]
        max_clients_per_ip: usize,
        /// Connections not authenticated yet, at once; when full, the oldest is closed.
        #[arg(long, default_value_t = 1024)]
        max_pending: usize,
        /// Connections not authenticated yet from one IPv4 address or IPv6 /64 (four times as
        /// many per IPv6 /48).
        #[arg(long, default_value_t = 64)]
        max_pending_per_ip: usize,
        /// Serve only nodes the control server knows: ask URL (the control server,
        /// http[s]://HOST:PORT) about each new client key; needs --verify-token-file.
        #[arg(long, requires = "verify_token_file")]
        verify_clients: Option<String>,
        /// The token shared with the control server (its --verify-token-file).
        #[arg(long, requires = "verify_clients")]
        verify_token_file: Option<std::path::PathBuf>,
        /// Also trust this certificate (DER or PEM) for an https:// --verify-clients server.
        #[arg(long, requires = "verify_clients")]
        verify_tls_ca: Vec<std::path::PathBuf>,
    },
    /// Join the mesh: register with the control server, bring up the TUN interface, punch
    /// through NATs to peers (DERP until then) and enforce the packet filter. Needs root.
    Up {
        /// The coordination server, e.g. http://192.0.2.1:8080.
        #[arg(long)]
        control: String,
        /// A pre-auth key (first start, or if the server forgot this node). Prefer
        /// --auth-key-file or the BURROW_AUTH_KEY environment variable: a command line is
        /// readable by every local user.
        #[arg(long, env = "BURROW_AUTH_KEY", hide_env_values = true)]
        auth_key: Option<String>,
        /// A file holding the pre-auth key.
        #[arg(long, conflicts_with = "auth_key")]
        auth_key_file: Option<std::path::PathBuf>,
        /// Where the keys live (private keys in a 0600 file, never sent anywhere).
        #[arg(long, default_value = "/var/lib/burrow")]
        state_dir: std::path::PathBuf,
        /// TUN interface name.
        #[arg(long, default_value = "burrow0")]
        tun: String,
        /// UDP port (0: any).
        #[arg(long, default_value_t = 41641)]
        port: u16,
        /// The DERP relay, e.g. http://192.0.2.1:8443/derp (default: the control server's map).
        #[arg(long)]
        derp: Option<burrow::derp_client::DerpUrl>,
        /// A STUN server HOST:PORT; repeat (two or more tell an easy NAT from a hard one).
        /// Default: the control server's DERP map.
        #[arg(long)]
        stun: Vec<SocketAddr>,
        /// Host name to register (default: this machine's).
        #[arg(long)]
        hostname: Option<String>,
        /// The local API socket (default: STATE_DIR/burrow.sock).
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// Also trust this certificate (DER or PEM) for https:// control and DERP servers, e.g.
        /// one written by `--self-signed … --cert-out`; repeatable.
        #[arg(long)]
        tls_ca: Vec<std::path::PathBuf>,
    },
    /// Peers of the running node: addresses, current path, last handshake, bytes.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The node's local API socket.
        #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
        socket: std::path::PathBuf,
    },
    /// Disco-ping a peer (name or tailnet address): "pong from … via DERP(region) / ip:port".
    Ping {
        /// Name or tailnet address.
        peer: String,
        /// Stop at the first pong over a direct path.
        #[arg(long)]
        until_direct: bool,
        /// Pings at most.
        #[arg(long, short = 'c', default_value_t = 10)]
        count: u32,
        /// The node's local API socket.
        #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
        socket: std::path::PathBuf,
    },
    /// Why a peer is on its path: both NATs, candidate pairs tried and what came of each.
    Doctor {
        /// Name or tailnet address.
        peer: String,
        /// The node's local API socket.
        #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
        socket: std::path::PathBuf,
    },
    /// Stop the running node (its TUN interface goes with it).
    Down {
        /// The node's local API socket.
        #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
        socket: std::path::PathBuf,
    },
    /// The coordination server's tools.
    Control {
        #[command(subcommand)]
        command: ControlCommand,
    },
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
}

/// Writes a secret file readable by its owner only.
/// Writes a file only its owner may read (created with mode 0600).
fn write_secret(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

fn main() -> ExitCode {
    // Everything burrow creates (state, keys, databases, sockets) is its owner's alone, from
    // the moment it exists: no window between bind/create and chmod (audit #18).
    nix::sys::stat::umask(nix::sys::stat::Mode::S_IRWXG | nix::sys::stat::Mode::S_IRWXO);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("burrow: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burrow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Stun {
            listen,
            alt,
            workers,
            software,
            rfc3489,
            per_source_rate,
        } => {
            if let Some(alt) = alt {
                if alt.is_ipv4() != listen.is_ipv4()
                    || alt.ip() == listen.ip()
                    || alt.port() == listen.port()
                {
                    bail!("--alt must differ from --listen in both IP and port, in the same address family");
                }
                if listen.port() == 0 || alt.port() == 0 {
                    bail!("--listen and --alt need explicit ports when --alt is given");
                }
            }
            let config = ServerConfig {
                primary: listen,
                alternate: alt,
                software,
            };
            let mut server = StunServer::bind(config)
                .await
                .context("starting the STUN server")?
                .with_rfc3489(rfc3489);
            if let Some(rate) = per_source_rate {
                server = server.with_rate_limit_per_source(rate, rate.saturating_mul(2));
            }
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            tracing::info!(addrs = ?server.local_addrs(), rfc5780 = alt.is_some(), workers, "STUN server listening");
            println!(
                "listening on {}",
                server
                    .local_addrs()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let counters = server.counters();
            server
                .run(workers, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await;
            tracing::info!(
                success = counters.success.load(Ordering::Relaxed),
                errors = counters.errors.load(Ordering::Relaxed),
                malformed = counters.malformed.load(Ordering::Relaxed),
                ignored = counters.ignored.load(Ordering::Relaxed),
                "STUN server stopped"
            );
            Ok(())
        }
        Command::Netcheck {
            stun,
            derp_map,
            json,
            timeout,
        } => {
            if !(timeout > 0.0 && timeout.is_finite()) {
                bail!("--timeout must be a positive number of seconds");
            }
            let deadline = Duration::from_secs_f64(timeout);
            let report = match derp_map {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let map = burrow_derp::DerpMap::from_json(&text)
                        .with_context(|| format!("parsing the DERP map {}", path.display()))?;
                    let mut regions = burrow::netcheck::resolve_derp_map(&map).await?;
                    // Extra --stun servers join as their own regions after the map's.
                    let base = regions.iter().map(|r| r.id).max().unwrap_or(0);
                    for (i, mut r) in burrow::netcheck::resolve_regions(&stun)
                        .await?
                        .into_iter()
                        .enumerate()
                    {
                        r.id = base + 1 + i as u32;
                        regions.push(r);
                    }
                    burrow::netcheck::run_regions(regions, deadline).await?
                }
                None => burrow::netcheck::run(&stun, deadline).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", burrow::netcheck::format_report(&report));
            }
            Ok(())
        }
        Command::Wg { config, interface } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let parsed: burrow::wg_config::WgConfig = text
                .parse()
                .with_context(|| format!("in {}", config.display()))?;
            let name = interface.unwrap_or_else(|| {
                config
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "burrow0".into())
            });
            if name.is_empty() || name.len() > 15 {
                bail!("interface name {name:?} must be 1 to 15 characters (use --interface)");
            }
            burrow::wg::run(parsed, &name, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(())
        }
        Command::Derper {
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
        } => {
            let private_key = match &key_file {
                Some(path) if path.exists() => {
                    burrow_wg::PrivateKey::from_base64(&std::fs::read_to_string(path)?)
                        .with_context(|| format!("reading the key in {}", path.display()))?
                }
                other => {
                    let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_os_rng();
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
                        &std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
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
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
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
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
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
        Command::Up {
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
        } => {
            let socket = socket.unwrap_or_else(|| state_dir.join("burrow.sock"));
            let mut extra_roots = Vec::new();
            for path in &tls_ca {
                extra_roots.extend(
                    read_certificates(path)
                        .with_context(|| format!("--tls-ca {}", path.display()))?,
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
            };
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            burrow::up::run(config, async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await
        }
        Command::Status { json, socket } => {
            use burrow::local_api::{ask, Request, Status};
            let answer = ask(&socket, &Request::Status).await?;
            let status: Status =
                serde_json::from_value(answer.into_iter().next().context("no answer")?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let addrs = |a: &[std::net::IpAddr]| {
                    a.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("{} ({})", status.name, addrs(&status.addresses));
                for p in &status.peers {
                    println!(
                        "  {:<16} {:<36} {:<28} handshake {:<10} rx {} B, tx {} B",
                        p.name,
                        addrs(&p.addresses),
                        p.path,
                        p.last_handshake_s
                            .map_or("never".into(), |s| format!("{s:.0}s ago")),
                        p.rx_bytes,
                        p.tx_bytes
                    );
                }
            }
            Ok(())
        }
        Command::Ping {
            peer,
            until_direct,
            count,
            socket,
        } => {
            use burrow::local_api::{ask, Pong, Request};
            let answers = ask(
                &socket,
                &Request::Ping {
                    peer: peer.clone(),
                    count,
                    until_direct,
                },
            )
            .await?;
            let mut direct = false;
            for a in answers {
                let pong: Pong = serde_json::from_value(a)?;
                match pong.latency_ms {
                    Some(ms) => {
                        println!("pong from {} via {} in {ms:.1} ms", pong.peer, pong.via);
                        direct |= !pong.via.starts_with("DERP");
                    }
                    None => println!("no pong from {} within 2 s", pong.peer),
                }
            }
            if until_direct && !direct {
                anyhow::bail!("no direct path to {peer} yet");
            }
            Ok(())
        }
        Command::Doctor { peer, socket } => {
            use burrow::local_api::{ask, Doctor, Request};
            let answer = ask(&socket, &Request::Doctor { peer }).await?;
            let d: Doctor =
                serde_json::from_value(answer.into_iter().next().context("no answer")?)?;
            println!("peer:      {}", d.peer);
            println!("our NAT:   {}", d.our_nat);
            println!("its NAT:   {}", d.peer_nat);
            println!("path:      {}", d.path);
            println!("birthday:  {}", d.birthday);
            println!("candidate pairs tried (oldest first):");
            for a in &d.attempts {
                println!("  {a}");
            }
            Ok(())
        }
        Command::Down { socket } => {
            burrow::local_api::ask(&socket, &burrow::local_api::Request::Down).await?;
            println!("down");
            Ok(())
        }
        Command::Control {
            command:
                ControlCommand::Serve {
                    listen,
                    db,
                    policy,
                    derp,
                    stun,
                    node_expiry,
                    admin_socket,
                    tls,
                    max_connections,
                    max_connections_per_ip,
                    per_ip_rate,
                    header_timeout,
                    verify_token_file,
                },
        } => {
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
            let node_expiry = match node_expiry.as_str() {
                "never" => None,
                e => Some(burrow::control::parse_duration(e).with_context(|| {
                    format!("--node-expiry {e:?}: use 30s, 15m, 24h, 180d or never")
                })?),
            };
            let text = match &policy {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
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
            let regions = derp
                .map(|url| {
                    vec![burrow_control::DerpRegion {
                        id: 1,
                        code: "default".into(),
                        url: url.to_string(),
                        stun: stun.clone(),
                    }]
                })
                .unwrap_or_default();
            let control = Control::new(store, compiled, regions)?;
            control.set_node_expiry(node_expiry);
            if let Some(path) = &verify_token_file {
                let token = burrow::control::verify::read_token(path)
                    .map_err(|e| anyhow::anyhow!("--verify-token-file: {e}"))?;
                control.set_verify_token(token);
            }
            let _expiry = control.spawn_expiry();
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let admin = {
                let (c, path) = (control.clone(), admin_socket.clone());
                tokio::spawn(async move {
                    if let Err(e) = burrow::control::admin::serve(&path, c).await {
                        tracing::error!(error = %e, "admin socket failed");
                    }
                })
            };
            println!("listening on {}", listener.local_addr()?);
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let tls = tls.server_config()?;
            if tls.is_none() && !listen.ip().is_loopback() {
                eprintln!(
                    "warning: serving the control API over plain HTTP on {listen}: node secrets \
                     and netmaps cross the network in clear and can be rewritten on the path; \
                     use --tls-cert/--tls-key or --self-signed"
                );
            }
            control.serve(listener, limits, tls, shutdown).await;
            admin.abort();
            let _ = std::fs::remove_file(&admin_socket);
            Ok(())
        }
        Command::Control {
            command: ControlCommand::Nodes { admin_socket, json },
        } => {
            let nodes = burrow::control::admin::request(&admin_socket, "GET", "/nodes").await?;
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
        Command::Control {
            command: ControlCommand::Node { command },
        } => {
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
        Command::Control {
            command:
                ControlCommand::Authkey {
                    command:
                        AuthkeyCommand::Create {
                            db,
                            user,
                            reusable,
                            expiry,
                            tag,
                        },
                },
        } => {
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
        Command::Control {
            command:
                ControlCommand::Policy {
                    command: PolicyCommand::Check { file },
                },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
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
                    Ok(())
                }
                Err(e) => {
                    let line = match &e {
                        burrow_control::PolicyError::Syntax { line, .. }
                        | burrow_control::PolicyError::Invalid { line, .. } => *line,
                    };
                    eprintln!("{}:{line}: {e}", file.display());
                    std::process::exit(1);
                }
            }
        }
        Command::Genkey => {
            let mut rng =
                <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_os_rng();
            println!(
                "{}",
                burrow_wg::PrivateKey::generate(&mut rng).expose_base64()
            );
            Ok(())
        }
        Command::Pubkey => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let key = burrow_wg::PrivateKey::from_base64(&line)
                .context("reading a private key on stdin")?;
            println!("{}", key.public_key());
            Ok(())
        }
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

/// The certificates in a file: PEM (one or more), or a single DER certificate.
fn read_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(b"-----") {
        let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(&bytes[..]))
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            anyhow::bail!("no certificate in the PEM file");
        }
        return Ok(certs);
    }
    Ok(vec![bytes])
}
