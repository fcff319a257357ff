//! The relay's Prometheus text for `/metrics`.

use std::sync::atomic::Ordering;

use super::Relay;

impl Relay {
    /// Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let s = self.server.lock().expect("server").stats();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        gauge(
            "derp_clients",
            "Clients connected now.",
            "gauge",
            s.clients as u64,
        );
        gauge(
            "derp_packets_relayed_total",
            "Packets relayed.",
            "counter",
            s.packets_relayed,
        );
        gauge(
            "derp_bytes_relayed_total",
            "Packet bytes relayed.",
            "counter",
            s.bytes_relayed,
        );
        gauge(
            "derp_packets_forwarded_total",
            "Packets forwarded over the mesh.",
            "counter",
            s.packets_forwarded,
        );
        gauge(
            "derp_bad_connections_total",
            "Connections closed for bad input.",
            "counter",
            s.bad_connections,
        );
        gauge(
            "derp_mesh_peers",
            "Mesh links up.",
            "gauge",
            s.mesh_peers as u64,
        );
        gauge(
            "derp_connections_total",
            "Connections accepted.",
            "counter",
            self.connections_total.load(Ordering::Relaxed),
        );
        gauge(
            "derp_http_requests_total",
            "HTTP requests served.",
            "counter",
            self.http_requests.load(Ordering::Relaxed),
        );
        gauge(
            "derp_pending_connections",
            "Connections not authenticated yet.",
            "gauge",
            self.gate.lock().expect("gate").gate.len() as u64,
        );
        gauge(
            "derp_pending_refused_total",
            "Connections closed at once: their source had too many pending.",
            "counter",
            self.pending_refused.load(Ordering::Relaxed),
        );
        gauge(
            "derp_pending_evicted_total",
            "Pending connections closed to make room for newer ones.",
            "counter",
            self.pending_evicted.load(Ordering::Relaxed),
        );
        gauge(
            "derp_accept_errors_total",
            "Failed accepts (e.g. out of file descriptors), each followed by a back-off.",
            "counter",
            self.accept_errors.load(Ordering::Relaxed),
        );
        gauge(
            "derp_replayed_client_infos_total",
            "Handshakes refused as replays of an earlier ClientInfo.",
            "counter",
            s.replayed_client_infos,
        );
        gauge(
            "derp_refused_clients_total",
            "Clients refused by a cap or by verification.",
            "counter",
            s.refused_clients,
        );
        gauge(
            "derp_pending_verifications",
            "Client keys waiting for the control server's answer.",
            "gauge",
            s.pending_verifications as u64,
        );
        if let Some(v) = &self.verify {
            gauge(
                "derp_verify_connections_total",
                "Connections opened to the control server for client verification.",
                "counter",
                v.connections_opened(),
            );
        }
        out.push_str("# HELP derp_packets_dropped_total Packets dropped, by reason.\n# TYPE derp_packets_dropped_total counter\n");
        for (reason, n) in [
            (
                "unknown_destination",
                burrow_derp::DropReason::UnknownDestination,
            ),
            ("queue_full", burrow_derp::DropReason::QueueFull),
            ("rate_limited", burrow_derp::DropReason::RateLimited),
        ]
        .map(|(l, r)| (l, s.drops.get(&r).copied().unwrap_or(0)))
        {
            out.push_str(&format!(
                "derp_packets_dropped_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}
