//! Where each address family stands for a peer, as the local API carries it (plain strings and
//! numbers, so older and newer nodes read each other) and as `burrow doctor` and
//! `burrow status` say it.

use std::net::SocketAddr;

use burrow_punch::{CandidateKind, Family, FamilyReport, FamilyState, Outcome, RECOVERY_PONGS};
use serde::{Deserialize, Serialize};

/// One address family of a peer: whether it carries traffic, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyStatus {
    /// "ipv4" or "ipv6".
    pub family: String,
    /// "in-use", "standby", "recovering", "lost", "unanswered", "peer-has-none" or
    /// "we-have-none".
    pub state: String,
    /// The peer's address on this family (in use, standby, recovering, lost).
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// Latest round trip, milliseconds (in use, standby).
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Answers in a row so far (recovering).
    #[serde(default)]
    pub pongs: Option<u32>,
    /// What ended the path (lost): "no-pong", "dead", "data-stalled".
    #[serde(default)]
    pub outcome: Option<String>,
    /// The peer's candidates of this family that were pinged (unanswered).
    #[serde(default)]
    pub candidates: Option<usize>,
}

impl FamilyStatus {
    /// The engine's report, for the wire.
    pub fn from_report(r: &FamilyReport) -> Self {
        let mut s = FamilyStatus {
            family: match r.family {
                Family::Ipv4 => "ipv4",
                Family::Ipv6 => "ipv6",
            }
            .into(),
            state: String::new(),
            addr: None,
            rtt_ms: None,
            pongs: None,
            outcome: None,
            candidates: None,
        };
        // One division of exact integers: 900 µs is 0.9, not 0.8999….
        let ms = |d: std::time::Duration| d.as_nanos() as f64 / 1e6;
        s.state = match r.state {
            FamilyState::InUse { addr, rtt } => {
                (s.addr, s.rtt_ms) = (Some(addr), Some(ms(rtt)));
                "in-use"
            }
            FamilyState::Standby { addr, rtt } => {
                (s.addr, s.rtt_ms) = (Some(addr), Some(ms(rtt)));
                "standby"
            }
            FamilyState::Recovering { addr, pongs } => {
                (s.addr, s.pongs) = (Some(addr), Some(pongs));
                "recovering"
            }
            FamilyState::Lost { addr, outcome } => {
                (s.addr, s.outcome) = (Some(addr), Some(outcome_name(outcome).into()));
                "lost"
            }
            FamilyState::Unanswered { candidates } => {
                s.candidates = Some(candidates);
                "unanswered"
            }
            FamilyState::PeerHasNone => "peer-has-none",
            FamilyState::WeHaveNone => "we-have-none",
        }
        .into();
        s
    }

    /// "IPv4" or "IPv6" (or the wire name, from a newer node).
    fn label(&self) -> &str {
        super::family_label(&self.family)
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Validated(_) => "validated",
        Outcome::NoPong => "no-pong",
        Outcome::Dead => "dead",
        Outcome::DataStalled => "data-stalled",
    }
}

fn outcome_words(o: &str) -> &str {
    match o {
        "no-pong" => "pings unanswered",
        "dead" => "missed pongs",
        "data-stalled" => "data stopped flowing",
        "validated" => "answered",
        other => other,
    }
}

fn addr_words(a: Option<SocketAddr>) -> String {
    a.map_or("?".into(), |a| a.to_string())
}

fn rtt_words(ms: Option<f64>) -> String {
    ms.map_or("? ms".into(), |ms| format!("{ms:.1} ms"))
}

/// One line of `burrow doctor` for `f`, e.g. "IPv4: standby (works, 0.9 ms; IPv6 ranks
/// first)"; `all` is every family of the peer (to say which one carries the traffic).
pub fn family_line(f: &FamilyStatus, all: &[FamilyStatus]) -> String {
    let label = f.label();
    let in_use = all
        .iter()
        .find(|o| o.family != f.family && o.state == "in-use");
    let carrier = in_use.map_or("DERP".to_string(), |o| o.label().to_string());
    let what = match f.state.as_str() {
        "in-use" => format!(
            "in use, {}, rtt {}",
            addr_words(f.addr),
            rtt_words(f.rtt_ms)
        ),
        "standby" => {
            let why = match (in_use, f.addr) {
                (Some(o), Some(mine)) => {
                    let rank = |a: SocketAddr| CandidateKind::of(a).priority();
                    match o.addr.map(rank) {
                        Some(theirs) if theirs > rank(mine) => {
                            format!("; {} ranks first", o.label())
                        }
                        _ => format!("; {} got there first", o.label()),
                    }
                }
                (Some(o), None) => format!("; {} in use", o.label()),
                (None, _) => String::new(),
            };
            format!("standby (works, {}{why})", rtt_words(f.rtt_ms))
        }
        "recovering" => format!(
            "recovering ({} of {RECOVERY_PONGS} answers)",
            f.pongs.unwrap_or(0)
        ),
        "lost" => format!(
            "lost ({}, {}); {carrier} carries the traffic",
            addr_words(f.addr),
            outcome_words(f.outcome.as_deref().unwrap_or("?"))
        ),
        "unanswered" => {
            let n = f.candidates.unwrap_or(0);
            let s = if n == 1 { "" } else { "s" };
            format!("no answer from {n} candidate{s} (a firewall, or no route)")
        }
        "peer-has-none" => format!("the peer has no {label} address"),
        "we-have-none" => format!("we have no {label} address"),
        other => other.to_string(),
    };
    format!("{label}: {what}")
}

/// For `burrow status`: the family standing by beside a direct path, e.g. "IPv4 standby".
pub fn standby_note(all: &[FamilyStatus]) -> Option<String> {
    let direct = all.iter().any(|f| f.state == "in-use");
    all.iter()
        .find(|f| f.state == "standby")
        .filter(|_| direct)
        .map(|f| format!("{} standby", f.label()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const V6: &str = "[2001:db8:2::2]:41641";
    const V4: &str = "10.202.2.2:41641";

    fn report(family: Family, state: FamilyState) -> FamilyStatus {
        FamilyStatus::from_report(&FamilyReport { family, state })
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn lines(all: &[FamilyStatus]) -> Vec<String> {
        all.iter().map(|f| family_line(f, all)).collect()
    }

    #[test]
    fn ipv6_in_use_and_ipv4_standing_by() {
        let all = [
            report(
                Family::Ipv6,
                FamilyState::InUse {
                    addr: addr(V6),
                    rtt: Duration::from_micros(1200),
                },
            ),
            report(
                Family::Ipv4,
                FamilyState::Standby {
                    addr: addr(V4),
                    rtt: Duration::from_micros(900),
                },
            ),
        ];
        assert_eq!(
            lines(&all),
            [
                "IPv6: in use, [2001:db8:2::2]:41641, rtt 1.2 ms",
                "IPv4: standby (works, 0.9 ms; IPv6 ranks first)",
            ]
        );
        assert_eq!(standby_note(&all).as_deref(), Some("IPv4 standby"));
        let json = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "family": "ipv4", "state": "standby", "addr": "10.202.2.2:41641",
                "rtt_ms": 0.9, "pongs": null, "outcome": null, "candidates": null
            })
        );
        assert_eq!(json["rtt_ms"], 0.9);
        let back: FamilyStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, all[1]);
    }

    #[test]
    fn a_standby_that_ranks_higher_waits_on_the_one_there_first() {
        // A public IPv4 path in use (hysteresis kept it), IPv6 working beside it.
        let all = [
            report(
                Family::Ipv6,
                FamilyState::Standby {
                    addr: addr(V6),
                    rtt: Duration::from_millis(3),
                },
            ),
            report(
                Family::Ipv4,
                FamilyState::InUse {
                    addr: addr("198.51.100.7:41641"),
                    rtt: Duration::from_millis(2),
                },
            ),
        ];
        assert_eq!(
            family_line(&all[0], &all),
            "IPv6: standby (works, 3.0 ms; IPv4 got there first)"
        );
        assert_eq!(standby_note(&all).as_deref(), Some("IPv6 standby"));
    }

    #[test]
    fn ipv6_lost_and_ipv4_carrying() {
        let all = [
            report(
                Family::Ipv6,
                FamilyState::Lost {
                    addr: addr(V6),
                    outcome: Outcome::Dead,
                },
            ),
            report(
                Family::Ipv4,
                FamilyState::InUse {
                    addr: addr(V4),
                    rtt: Duration::from_micros(800),
                },
            ),
        ];
        assert_eq!(
            lines(&all),
            [
                "IPv6: lost ([2001:db8:2::2]:41641, missed pongs); IPv4 carries the traffic",
                "IPv4: in use, 10.202.2.2:41641, rtt 0.8 ms",
            ]
        );
        assert_eq!(standby_note(&all), None);
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json["state"], "lost");
        assert_eq!(json["outcome"], "dead");
        assert_eq!(json["addr"], V6);
        assert!(json["rtt_ms"].is_null());
    }

    #[test]
    fn lost_with_nothing_direct_leaves_derp_carrying() {
        let all = [
            report(
                Family::Ipv6,
                FamilyState::Lost {
                    addr: addr(V6),
                    outcome: Outcome::DataStalled,
                },
            ),
            report(
                Family::Ipv4,
                FamilyState::Lost {
                    addr: addr(V4),
                    outcome: Outcome::NoPong,
                },
            ),
        ];
        assert_eq!(
            lines(&all),
            [
                "IPv6: lost ([2001:db8:2::2]:41641, data stopped flowing); DERP carries the traffic",
                "IPv4: lost (10.202.2.2:41641, pings unanswered); DERP carries the traffic",
            ]
        );
        assert_eq!(
            serde_json::to_value(&all[0]).unwrap()["outcome"],
            "data-stalled"
        );
        assert_eq!(serde_json::to_value(&all[1]).unwrap()["outcome"], "no-pong");
    }

    #[test]
    fn recovering_counts_answers_toward_the_switch_back() {
        let f = report(
            Family::Ipv6,
            FamilyState::Recovering {
                addr: addr(V6),
                pongs: 2,
            },
        );
        assert_eq!(family_line(&f, &[]), "IPv6: recovering (2 of 3 answers)");
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["state"], "recovering");
        assert_eq!(json["pongs"], 2);
        assert_eq!(json["addr"], V6);
    }

    #[test]
    fn unanswered_counts_candidates() {
        let one = report(Family::Ipv6, FamilyState::Unanswered { candidates: 1 });
        assert_eq!(
            family_line(&one, &[]),
            "IPv6: no answer from 1 candidate (a firewall, or no route)"
        );
        let three = report(Family::Ipv4, FamilyState::Unanswered { candidates: 3 });
        assert_eq!(
            family_line(&three, &[]),
            "IPv4: no answer from 3 candidates (a firewall, or no route)"
        );
        let json = serde_json::to_value(&three).unwrap();
        assert_eq!(json["state"], "unanswered");
        assert_eq!(json["candidates"], 3);
        assert!(json["addr"].is_null());
    }

    #[test]
    fn missing_addresses_on_either_side() {
        let ours = report(Family::Ipv6, FamilyState::WeHaveNone);
        let theirs = report(Family::Ipv6, FamilyState::PeerHasNone);
        assert_eq!(family_line(&ours, &[]), "IPv6: we have no IPv6 address");
        assert_eq!(
            family_line(&theirs, &[]),
            "IPv6: the peer has no IPv6 address"
        );
        assert_eq!(
            serde_json::to_value(&ours).unwrap()["state"],
            "we-have-none"
        );
        assert_eq!(
            serde_json::to_value(&theirs).unwrap()["state"],
            "peer-has-none"
        );
        assert_eq!(serde_json::to_value(&theirs).unwrap()["family"], "ipv6");
    }

    #[test]
    fn a_state_from_a_newer_node_is_shown_as_it_came() {
        let f: FamilyStatus =
            serde_json::from_value(serde_json::json!({ "family": "ipv6", "state": "napping" }))
                .unwrap();
        assert_eq!(f.addr, None);
        assert_eq!(family_line(&f, &[]), "IPv6: napping");
    }
}
