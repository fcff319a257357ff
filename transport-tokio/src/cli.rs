//! The `burrow` command line: every command and its arguments (clap). What each command does
//! lives in `cmd/`, one module per command.

use std::net::SocketAddr;

use burrow::netcheck::ServerSpec;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "burrow", version, about = "NAT traversal and mesh networking")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Serving TLS: a certificate from files, or a fresh self-signed one.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key", conflicts_with = "self_signed")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Serve TLS with a fresh self-signed certificate for this host name or IP address;
    /// repeatable (one certificate for all).
    #[arg(long)]
    pub self_signed: Vec<String>,
    /// Keep the self-signed certificate (DER) here, for clients to trust, and its key beside it
    /// (FILE.key, mode 0600); both are reused at the next start, so clients keep trusting it.
    #[arg(long, requires = "self_signed")]
    pub cert_out: Option<std::path::PathBuf>,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ControlCommand {
    /// Run the coordination server (HTTP; SQLite in one file).
    Serve(ControlServeArgs),
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
pub enum NodeAdminCommand {
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
pub enum AuthkeyCommand {
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
pub enum PolicyCommand {
    /// Check a policy (JSON or HuJSON): errors name the line; exit status 1 if any.
    Check {
        /// The policy file.
        file: std::path::PathBuf,
    },
    /// Make the running server read its --policy file again: every node gets the peers and
    /// filter the new policy gives it at once. A policy with errors is refused and the running
    /// one stays.
    Reload {
        /// The server's admin socket.
        #[arg(long, default_value = "burrow-control.sock")]
        admin_socket: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a STUN server (RFC 8489; RFC 5780 NAT behaviour discovery with --alt).
    Stun(StunArgs),
    /// Report what kind of network this node sits behind.
    Netcheck(NetcheckArgs),
    /// Run a WireGuard tunnel over a TUN device, from a wg-quick style config file.
    /// Needs root (CAP_NET_ADMIN). SIGUSR1 forces a new handshake with every peer.
    Wg(WgArgs),
    /// Run a DERP relay (Tailscale-compatible, protocol 2) with optional STUN, TLS and mesh.
    Derper(DerperArgs),
    /// Join the mesh: register with the control server, bring up the TUN interface, punch
    /// through NATs to peers (DERP until then) and enforce the packet filter. Needs root.
    Up(UpArgs),
    /// Peers of the running node: addresses, current path, last handshake, bytes.
    Status(StatusArgs),
    /// Disco-ping a peer (name or tailnet address): "pong from … via DERP(region) / peer relay NAME / ip:port".
    Ping(PingArgs),
    /// Why a peer is on its path: both NATs, each address family, candidate pairs tried and
    /// what came of each.
    Doctor(DoctorArgs),
    /// Stop the running node (its TUN interface goes with it).
    Down(DownArgs),
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

/// The arguments of `burrow control serve`.
#[derive(Args)]
pub struct ControlServeArgs {
    /// TCP address for the API [default: [::]:8080, dual-stack; 0.0.0.0:8080 without IPv6].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The database: a SQLite file (created and migrated at start) or postgres://USER@HOST/DB.
    #[arg(long, default_value = "burrow-control.sqlite")]
    pub db: String,
    /// ACL policy (JSON or HuJSON); without it every node reaches every other.
    #[arg(long)]
    pub policy: Option<std::path::PathBuf>,
    /// The DERP relay nodes use (region 1), handed out in every netmap.
    #[arg(long)]
    pub derp: Option<burrow::derp_client::DerpUrl>,
    /// A STUN server for region 1 (HOST:PORT as nodes reach it, `[IPv6]:PORT` too);
    /// repeatable.
    #[arg(long)]
    pub stun: Vec<SocketAddr>,
    /// The DERP map as a Tailscale-style JSON file (`tailcfg.DERPMap`), instead of --derp and
    /// --stun: every region's relay, and its STUN servers at their IPv4 and IPv6 addresses.
    #[arg(long, conflicts_with_all = ["derp", "stun"])]
    pub derp_map: Option<std::path::PathBuf>,
    /// How long a registration lasts before the node must register again with an auth
    /// key: 30s, 15m, 24h, 180d, or "never".
    #[arg(long, default_value = "never")]
    pub node_expiry: String,
    /// The admin API's Unix socket (mode 0600), for `burrow control nodes` and `node`.
    #[arg(long, default_value = "burrow-control.sock")]
    pub admin_socket: std::path::PathBuf,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Connections open at once, in total (beyond it new ones are closed at once).
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Connections open at once from one source address.
    #[arg(long, default_value_t = 512)]
    pub max_connections_per_ip: usize,
    /// Challenge, registration and map-stream requests per second from one source address
    /// (bursts of four times as many).
    #[arg(long, default_value_t = 10.0)]
    pub per_ip_rate: f64,
    /// Seconds a client has to send a request's head (slow clients are cut off).
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// A token file (at least 32 bytes) shared with relays run with `burrow derper
    /// --verify-clients`: they may then ask whether a key is a live node.
    #[arg(long)]
    pub verify_token_file: Option<std::path::PathBuf>,
}

/// The arguments of `burrow stun`.
#[derive(Args)]
pub struct StunArgs {
    /// Primary address to listen on, e.g. 0.0.0.0:3478.
    #[arg(long, default_value = "0.0.0.0:3478")]
    pub listen: SocketAddr,
    /// Alternate address (a second IP and port) for RFC 5780: the server then also
    /// listens on both IPs' other ports and honours CHANGE-REQUEST.
    #[arg(long)]
    pub alt: Option<SocketAddr>,
    /// Worker tasks per socket (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// SOFTWARE attribute to put in responses.
    #[arg(long)]
    pub software: Option<String>,
    /// Also answer RFC 3489 requests (no magic cookie), for classic NAT-type clients.
    #[arg(long)]
    pub rfc3489: bool,
    /// Answer at most this many requests a second per source address (bursts of twice
    /// that), per worker; off by default.
    #[arg(long)]
    pub per_source_rate: Option<u32>,
}

/// The arguments of `burrow netcheck`.
#[derive(Args)]
pub struct NetcheckArgs {
    /// A STUN server as [REGION=]HOST:PORT; repeat for more. Servers sharing a REGION
    /// are one region.
    #[arg(
        long = "stun",
        value_name = "[REGION=]HOST:PORT",
        required_unless_present = "derp_map"
    )]
    pub stun: Vec<ServerSpec>,
    /// A DERP map (Tailscale's JSON form): probe every region's relays' STUN ports.
    #[arg(long, value_name = "FILE")]
    pub derp_map: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 6.0)]
    pub timeout: f64,
    /// Do not ask the default gateway for a port mapping (NAT-PMP, PCP, UPnP IGD).
    #[arg(long)]
    pub no_port_mapping: bool,
}

/// The arguments of `burrow wg`.
#[derive(Args)]
pub struct WgArgs {
    /// The config file ([Interface] PrivateKey, ListenPort, Address; [Peer] PublicKey,
    /// PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Interface name (default: the config file's name without .conf, as wg-quick does).
    #[arg(long)]
    pub interface: Option<String>,
    /// Open the TUN without offloads (no `IFF_VNET_HDR`, no TSO/GRO): one packet per read
    /// and write.
    #[arg(long)]
    pub no_offload: bool,
    /// Split the sealing and opening of each large batch over two threads (its packets still
    /// sent and delivered in order). Off by default: on a machine whose cores the traffic's
    /// own TCP stacks already keep busy, the hand-over costs more than it saves.
    #[arg(long)]
    pub parallel_crypto: bool,
}

/// The arguments of `burrow derper`.
#[derive(Args)]
pub struct DerperArgs {
    /// TCP address for HTTP(S) and DERP [default: [::]:443, dual-stack; 0.0.0.0:443 without
    /// IPv6].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// UDP address for the STUN server (`[::]:PORT` answers IPv4 and IPv6).
    #[arg(long)]
    pub stun_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The relay's private key (base64), created if missing; a fresh key otherwise.
    #[arg(long)]
    pub key_file: Option<std::path::PathBuf>,
    /// File holding the region's mesh key (at least 32 bytes, e.g. `openssl rand -hex 32`).
    #[arg(long)]
    pub mesh_key: Option<std::path::PathBuf>,
    /// Another relay of the region to mesh with (http[s]://host:port/derp); repeatable.
    #[arg(long, requires = "mesh_key")]
    pub mesh_with: Vec<burrow::derp_client::DerpUrl>,
    /// Per-client rate limit, bytes per second.
    #[arg(long, requires = "burst")]
    pub rate_limit: Option<u64>,
    /// Per-client burst, bytes.
    #[arg(long, requires = "rate_limit")]
    pub burst: Option<u64>,
    /// Clients connected at once (lowered to fit the open-files limit); each costs tens
    /// of KiB, so raise it only where memory allows.
    #[arg(long, default_value_t = burrow_derp::server::DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Clients connected at once from one IPv4 address or IPv6 /64 (four times as many per
    /// IPv6 /48; loopback exempt).
    #[arg(long, default_value_t = 1000)]
    pub max_clients_per_ip: usize,
    /// Connections not authenticated yet, at once; when full, the oldest is closed.
    #[arg(long, default_value_t = 1024)]
    pub max_pending: usize,
    /// Connections not authenticated yet from one IPv4 address or IPv6 /64 (four times as
    /// many per IPv6 /48).
    #[arg(long, default_value_t = 64)]
    pub max_pending_per_ip: usize,
    /// Serve only nodes the control server knows: ask URL (the control server,
    /// http[s]://HOST:PORT) about each new client key; needs --verify-token-file.
    #[arg(long, requires = "verify_token_file")]
    pub verify_clients: Option<String>,
    /// The token shared with the control server (its --verify-token-file).
    #[arg(long, requires = "verify_clients")]
    pub verify_token_file: Option<std::path::PathBuf>,
    /// Also trust this certificate (DER or PEM) for an https:// --verify-clients server.
    #[arg(long, requires = "verify_clients")]
    pub verify_tls_ca: Vec<std::path::PathBuf>,
}

/// The arguments of `burrow up`.
#[derive(Args)]
pub struct UpArgs {
    /// The coordination server, e.g. http://192.0.2.1:8080; several replicas of one control
    /// plane comma-separated (tried in turn when one cannot be reached).
    #[arg(long)]
    pub control: String,
    /// A pre-auth key (first start, or if the server forgot this node). Prefer
    /// --auth-key-file or the BURROW_AUTH_KEY environment variable: a command line is
    /// readable by every local user.
    #[arg(long, env = "BURROW_AUTH_KEY", hide_env_values = true)]
    pub auth_key: Option<String>,
    /// A file holding the pre-auth key.
    #[arg(long, conflicts_with = "auth_key")]
    pub auth_key_file: Option<std::path::PathBuf>,
    /// Where the keys live (private keys in a 0600 file, never sent anywhere).
    #[arg(long, default_value = "/var/lib/burrow")]
    pub state_dir: std::path::PathBuf,
    /// TUN interface name.
    #[arg(long, default_value = "burrow0")]
    pub tun: String,
    /// UDP port (0: any).
    #[arg(long, default_value_t = 41641)]
    pub port: u16,
    /// The DERP relay, e.g. http://192.0.2.1:8443/derp (default: the control server's map).
    #[arg(long)]
    pub derp: Option<burrow::derp_client::DerpUrl>,
    /// A STUN server HOST:PORT; repeat (two or more tell an easy NAT from a hard one).
    /// Default: the control server's DERP map.
    #[arg(long)]
    pub stun: Vec<SocketAddr>,
    /// Host name to register (default: this machine's).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The local API socket (default: STATE_DIR/burrow.sock).
    #[arg(long)]
    pub socket: Option<std::path::PathBuf>,
    /// Also trust this certificate (DER or PEM) for https:// control and DERP servers, e.g.
    /// one written by `--self-signed … --cert-out`; repeatable.
    #[arg(long)]
    pub tls_ca: Vec<std::path::PathBuf>,
    /// Do not ask the default gateway to map the node's port (NAT-PMP, PCP, UPnP IGD).
    #[arg(long)]
    pub no_port_mapping: bool,
    /// The TUN's MTU (default: the outgoing interface's, less 60 bytes of UDP and WireGuard
    /// overhead, or 1280 with --no-path-mtu; at most 4000, the node's read buffers being 4 KiB).
    /// Peers whose path carries less get ICMP "too big".
    #[arg(long, value_parser = clap::value_parser!(u16).range(1280..=4000))]
    pub mtu: Option<u16>,
    /// Do not probe each peer's path MTU: every packet goes as it comes (the TUN's MTU is 1280
    /// unless --mtu says otherwise).
    #[arg(long)]
    pub no_path_mtu: bool,
    /// Open the TUN without offloads (no `IFF_VNET_HDR`, no TSO/GRO): one packet per read
    /// and write.
    #[arg(long)]
    pub no_offload: bool,
    /// Relay for other nodes (peer relays) on this UDP port, bound dual-stack beside the
    /// node's own; the policy's `relay` rules (or `autoRelay`) say for whom.
    #[arg(long)]
    pub relay_port: Option<u16>,
    /// An address IP:PORT peers can reach the relay at besides those found (a port forward,
    /// a cloud's public IP); repeatable. Needs --relay-port.
    #[arg(long, requires = "relay_port")]
    pub relay_endpoint: Vec<std::net::SocketAddr>,
    /// Forward at most this many Mbit/s from each client of a relayed pair (datagram bytes;
    /// a pair gets twice that). Needs --relay-port.
    #[arg(long, requires = "relay_port", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_max_mbit: u64,
}

/// The arguments of `burrow status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The node's local API socket.
    #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
    pub socket: std::path::PathBuf,
}

/// The arguments of `burrow ping`.
#[derive(Args)]
pub struct PingArgs {
    /// Name or tailnet address.
    pub peer: String,
    /// Stop at the first pong over a direct path.
    #[arg(long)]
    pub until_direct: bool,
    /// Pings at most.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub count: u32,
    /// The node's local API socket.
    #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
    pub socket: std::path::PathBuf,
}

/// The arguments of `burrow doctor`.
#[derive(Args)]
pub struct DoctorArgs {
    /// Name or tailnet address.
    pub peer: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The node's local API socket.
    #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
    pub socket: std::path::PathBuf,
}

/// The arguments of `burrow down`.
#[derive(Args)]
pub struct DownArgs {
    /// The node's local API socket.
    #[arg(long, default_value = "/var/lib/burrow/burrow.sock")]
    pub socket: std::path::PathBuf,
}
