//! WireGuard's timer constants (whitepaper §6; wireguard-go `device/constants.go`).

use core::time::Duration;

/// Initiate a new handshake when the current keypair is this old (initiator side).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use a keypair older than this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up on a handshake after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Up to this much random extra delay on each retransmission.
pub const REKEY_TIMEOUT_JITTER_MAX_MS: u64 = 334;
/// Send a keep-alive when data arrived and nothing was sent back for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initiate a new handshake after sending this many messages on one keypair.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Cookies are fresh for this long; the responder's cookie secret rotates at the same age.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// Accept at most one initiation per peer per this interval (50 per second).
pub const INITIATION_MIN_INTERVAL: Duration = Duration::from_millis(20);
/// Erase all keys when no new session was made for this long (3 × REJECT_AFTER_TIME).
pub const KEY_ERASURE_TIME: Duration = Duration::from_secs(540);
/// On receive, the initiator rekeys a keypair this old (REJECT − KEEPALIVE − REKEY_TIMEOUT).
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(165);
