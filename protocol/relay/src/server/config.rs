//! What a relay server is configured with: its addresses, lifetimes and budgets.

use std::net::SocketAddr;
use std::time::Duration;

use crate::budget::Rate;

/// Tailscale's bind lifetime: an endpoint not bound by both clients this long after its
/// allocation is closed.
pub const DEFAULT_BIND_LIFETIME: Duration = Duration::from_secs(30);
/// Tailscale's steady-state lifetime: a bound endpoint closes when either leg is silent this long.
pub const DEFAULT_STEADY_STATE_LIFETIME: Duration = Duration::from_secs(300);
/// How often the challenge MAC secret changes (the previous one stays valid one more period).
pub const DEFAULT_SECRET_ROTATION: Duration = Duration::from_secs(120);

/// burrow's budgets, beyond Tailscale's relay (which has none but VNI exhaustion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Endpoints open at once.
    pub max_sessions: usize,
    /// Endpoints one requesting disco key may have open at once.
    pub max_sessions_per_requester: usize,
    /// Binds answered (Challenges sent) per endpoint, both legs together.
    pub binds_per_session: Rate,
    /// Challenges sent to one source IP address, over all endpoints.
    pub challenges_per_source_ip: Rate,
    /// Challenges sent in total.
    pub challenges_total: Rate,
    /// Source IPs whose challenge budget is remembered; when full (and none has refilled),
    /// Binds from new sources go unanswered.
    pub max_tracked_sources: usize,
    /// Packets forwarded per endpoint, both directions together.
    pub session_packets: Rate,
    /// Bytes forwarded per endpoint, both directions together.
    pub session_bytes: Rate,
    /// Packets forwarded from one leg.
    pub leg_packets: Rate,
    /// Bytes forwarded from one leg.
    pub leg_bytes: Rate,
    /// Challenges waiting for the driver to send them.
    pub max_queued_transmits: usize,
    /// Events waiting for the driver.
    pub max_queued_events: usize,
}

impl RelayLimits {
    /// Forwarding budgets for legs of `mbit_per_second` (datagram bytes; the default is
    /// 1,000): a leg gets that rate with a two-second burst and one packet per 1,250 bytes of
    /// it (no fewer than the default 100,000/s); an endpoint twice a leg's.
    pub fn with_leg_rate(mut self, mbit_per_second: u64) -> Self {
        let bytes = mbit_per_second.max(1).saturating_mul(125_000);
        let packets = (bytes / 1_250).max(100_000);
        self.leg_bytes = Rate::new(bytes, bytes.saturating_mul(2));
        self.leg_packets = Rate::new(packets, packets.saturating_mul(2));
        self.session_bytes = Rate::new(bytes.saturating_mul(2), bytes.saturating_mul(4));
        self.session_packets = Rate::new(packets.saturating_mul(2), packets.saturating_mul(4));
        self
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_sessions: 4096,
            max_sessions_per_requester: 64,
            binds_per_session: Rate::new(10, 20),
            challenges_per_source_ip: Rate::new(50, 200),
            challenges_total: Rate::new(2000, 4000),
            max_tracked_sources: 4096,
            session_packets: Rate::new(200_000, 400_000),
            session_bytes: Rate::new(250_000_000, 500_000_000),
            leg_packets: Rate::new(100_000, 200_000),
            leg_bytes: Rate::new(125_000_000, 250_000_000),
            max_queued_transmits: 256,
            max_queued_events: 1024,
        }
    }
}

/// How a relay server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The addresses clients should bind to (static ones, interface addresses, STUN results).
    /// Empty: allocation fails with [`AllocError::NotReady`].
    pub addrs: Vec<SocketAddr>,
    /// See [`DEFAULT_BIND_LIFETIME`].
    pub bind_lifetime: Duration,
    /// See [`DEFAULT_STEADY_STATE_LIFETIME`].
    pub steady_state_lifetime: Duration,
    /// See [`DEFAULT_SECRET_ROTATION`] (at least 1 s).
    pub secret_rotation: Duration,
    /// Budgets.
    pub limits: RelayLimits,
}

impl RelayConfig {
    /// Tailscale's timers and burrow's default budgets, advertising `addrs`.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        RelayConfig {
            addrs,
            bind_lifetime: DEFAULT_BIND_LIFETIME,
            steady_state_lifetime: DEFAULT_STEADY_STATE_LIFETIME,
            secret_rotation: DEFAULT_SECRET_ROTATION,
            limits: RelayLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leg_rate_is_one_gigabit_and_it_scales() {
        let d = RelayLimits::default();
        assert_eq!(
            d.clone().with_leg_rate(1_000),
            d,
            "1,000 Mbit/s is the default"
        );
        let fast = RelayLimits::default().with_leg_rate(10_000);
        assert_eq!(fast.leg_bytes, Rate::new(1_250_000_000, 2_500_000_000));
        assert_eq!(fast.leg_packets, Rate::new(1_000_000, 2_000_000));
        assert_eq!(fast.session_bytes.per_second, 2 * fast.leg_bytes.per_second);
        let slow = RelayLimits::default().with_leg_rate(10);
        assert_eq!(slow.leg_bytes.per_second, 1_250_000);
        assert_eq!(
            slow.leg_packets.per_second, 100_000,
            "never fewer packets than the default"
        );
        assert_eq!(fast.max_sessions, d.max_sessions, "the rest unchanged");
    }
}
