//! The simulator's hostile member (`burrow-sim --attack`): every attack leaves the victim's
//! invariants standing, and a run that did not attack is caught rather than passed.

use std::time::Duration;

use burrow_sim::attack::{run, Attack};

#[test]
fn attack_hostile_member_in_the_simulator() {
    for attack in Attack::ALL {
        let out = run(attack, 1, Duration::from_secs(15));
        assert!(out.failures.is_empty(), "{}", out.line());
        assert!(out.hostile_packets > 0, "{}", out.line());
        assert!(out.honest.0 > 0 && out.honest.1 > 0, "{}", out.line());
    }
}

#[test]
fn attack_runs_are_deterministic() {
    let a = run(Attack::CallMeMaybeSpray, 5, Duration::from_secs(8));
    let b = run(Attack::CallMeMaybeSpray, 5, Duration::from_secs(8));
    assert_eq!(a.line(), b.line());
}
