//! The JSON inside ClientInfo and ServerInfo, sealed in NaCl boxes.

use serde::{Deserialize, Serialize};

/// What a client tells the server (Tailscale's field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Protocol version (2).
    #[serde(default)]
    pub version: u32,
    /// The region's mesh key, proving the client is a peer server.
    #[serde(rename = "meshKey", default, skip_serializing_if = "Option::is_none")]
    pub mesh_key: Option<String>,
    /// The client answers Ping with Pong.
    #[serde(rename = "CanAckPings", default)]
    pub can_ack_pings: bool,
    /// A monitoring prober, not a real node.
    #[serde(
        rename = "IsProber",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_prober: bool,
}

/// What the server tells the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol version (2).
    #[serde(default)]
    pub version: u32,
    /// Per-client rate limit, bytes per second (0 = none).
    #[serde(
        rename = "tokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_per_second: u64,
    /// Per-client burst, bytes (0 = none).
    #[serde(
        rename = "tokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_burst: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
