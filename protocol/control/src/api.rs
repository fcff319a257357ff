//! The control API's wire types: what a node and the coordination server exchange over HTTP
//! (JSON bodies and the server-sent events of the map stream). Third parties speak the protocol
//! with these alone.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::netmap::{Delta, NetMap};
use crate::policy::NodeInfo;

/// A message on a node's map stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MapMessage {
    /// The whole netmap (first message, and after any reconnect).
    NetMap(NetMap),
    /// A change.
    Delta(Delta),
    /// The first message of a stream that resumed (the node named the last change it saw,
    /// `Last-Event-ID`): the deltas since that change follow, and no netmap.
    Resumed {
        /// The last change the node saw.
        since: crate::changelog::ChangeId,
    },
}

/// The answer to a registration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The node as the tailnet sees it (id, addresses, user, tags).
    pub node: NodeInfo,
    /// Bearer secret for this node's later requests.
    pub secret: String,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("node", &self.node)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `POST /machine/endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsRequest {
    /// Candidate endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region.
    pub home_region: u16,
    /// The UDP port the node relays on for others (`burrow up --relay-port N`); None: it does
    /// not relay (and what nodes older than this send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_port: Option<u16>,
    /// Its STUN results show a fixed public mapping (no NAT, or an endpoint-independent one);
    /// with the policy's `autoRelay`, a relay with one serves everyone the ACLs let reach it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_mapping: bool,
}

/// `GET /machine/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// 32 bytes, base64.
    pub challenge: String,
    /// The X25519 public key to seal the registration to (base64), good for this challenge only.
    pub server_key: String,
}

/// `POST /machine/register`: a registration sealed with the node's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// WireGuard public key (base64). Never the private one.
    pub node_key: String,
    /// The challenge being answered (base64, as received).
    pub challenge: String,
    /// `RegisterBody` as JSON, in a NaCl box from the node key to the challenge's server key
    /// (base64).
    pub sealed: String,
}

/// What a registration says, inside the box.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterBody {
    /// A pre-auth key from `burrow control authkey create` (a new node, or an expired one).
    #[serde(default)]
    pub auth_key: Option<String>,
    /// The node's current secret (renewal without an auth key).
    #[serde(default)]
    pub node_secret: Option<String>,
    /// The node's host name (a DNS label).
    pub hostname: String,
    /// Disco public key (base64).
    pub disco_key: String,
    /// The challenge again, so the box is bound to it.
    pub challenge: String,
}

impl std::fmt::Debug for RegisterBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterBody")
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field(
                "node_secret",
                &self.node_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("hostname", &self.hostname)
            .field("disco_key", &self.disco_key)
            .finish_non_exhaustive()
    }
}
