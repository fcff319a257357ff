//! Per-node route stretches (relay, peer relay, direct) and the times the direct path was in
//! doubt, for the report's timelines (`FastConfig::record_episodes`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a node's traffic to its peer was doing during an [`Episode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpisodeKind {
    /// Over DERP.
    Relay,
    /// Through a peer relay.
    PeerRelay,
    /// On a direct path.
    Direct,
    /// The direct path was in doubt (everything also went over the relay).
    InDoubt,
}

/// One stretch of time, in seconds from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Episode {
    /// Start.
    pub from_s: f64,
    /// End.
    pub to_s: f64,
    /// What it was.
    pub kind: EpisodeKind,
}

/// What one node's route did, as the run goes.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    /// Route changes in order (the route from then on).
    routes: Vec<(Instant, EpisodeKind)>,
    /// Doubt episodes by when they began: how long they lasted (`None`: still open when
    /// last looked at).
    doubts: BTreeMap<Instant, Option<Duration>>,
}

impl Recorder {
    /// The route from `now` on.
    pub(super) fn route(&mut self, now: Instant, kind: EpisodeKind) {
        if self.routes.last().map(|r| r.1) != Some(kind) {
            self.routes.push((now, kind));
        }
    }

    /// A doubt episode as the engine's explanation reports it (seen again as it ends).
    pub(super) fn doubt(&mut self, began: Instant, lasted: Option<Duration>) {
        self.doubts.insert(began, lasted);
    }

    /// The stretches from `t0` to `end`: routes first (relay until the first change), then the
    /// doubts (open ones run to `end`).
    pub(super) fn episodes(&self, t0: Instant, end: Instant) -> Vec<Episode> {
        let s = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
        let mut out = Vec::new();
        let mut from = (t0, EpisodeKind::Relay);
        for &(at, kind) in &self.routes {
            if at > from.0 {
                out.push(Episode {
                    from_s: s(from.0),
                    to_s: s(at),
                    kind: from.1,
                });
            }
            from = (at, kind);
        }
        if end > from.0 {
            out.push(Episode {
                from_s: s(from.0),
                to_s: s(end),
                kind: from.1,
            });
        }
        for (&began, lasted) in &self.doubts {
            let until = lasted.map_or(end, |d| (began + d).min(end));
            out.push(Episode {
                from_s: s(began),
                to_s: s(until),
                kind: EpisodeKind::InDoubt,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_the_run_and_doubts_lie_on_top() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Recorder::default();
        r.route(at(0), EpisodeKind::Relay);
        r.route(at(1500), EpisodeKind::Direct);
        r.route(at(1500), EpisodeKind::Direct);
        r.route(at(7000), EpisodeKind::Relay);
        r.doubt(at(4000), Some(Duration::from_millis(250)));
        r.doubt(at(9000), None);
        let e = r.episodes(t0, at(10_000));
        let kinds: Vec<_> = e.iter().map(|e| (e.from_s, e.to_s, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0.0, 1.5, EpisodeKind::Relay),
                (1.5, 7.0, EpisodeKind::Direct),
                (7.0, 10.0, EpisodeKind::Relay),
                (4.0, 4.25, EpisodeKind::InDoubt),
                (9.0, 10.0, EpisodeKind::InDoubt),
            ]
        );
    }

    #[test]
    fn a_run_with_no_route_change_is_relayed_throughout() {
        let t0 = Instant::now();
        let e = Recorder::default().episodes(t0, t0 + Duration::from_secs(3));
        assert_eq!(
            e,
            vec![Episode {
                from_s: 0.0,
                to_s: 3.0,
                kind: EpisodeKind::Relay
            }]
        );
    }
}
