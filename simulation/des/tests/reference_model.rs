//! The node engine and the session machine against a reference model, in a whole simulated
//! tailnet: random sequences of joins, removals, endpoint changes, NAT rebindings, relay
//! restarts and policy changes. After every step the world settles, and then for every pair of members: the route
//! class is the model's (direct: nothing here blocks UDP), a probe is delivered exactly when
//! the policy allows it, each member holds exactly the peers the policy lets it see, and no
//! private key was ever on any wire.

use std::collections::BTreeSet;
use std::time::Duration;

use burrow_des::world::World;
use burrow_punch::Route;
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

const SLOTS: usize = 4;
const ALLOW_ALL: &str = r#"{ "acls": [ { "action": "accept", "src": ["*"], "dst": ["*:*"] } ] }"#;
/// Only n0 may reach n1.
const NARROW: &str = r#"{ "acls": [ { "action": "accept", "src": ["n0"], "dst": ["n1:*"] } ] }"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyKind {
    AllowAll,
    Narrow,
}

impl PolicyKind {
    fn text(self) -> &'static str {
        match self {
            PolicyKind::AllowAll => ALLOW_ALL,
            PolicyKind::Narrow => NARROW,
        }
    }

    /// Whether a packet from `a` to `b` gets in.
    fn allows(self, a: usize, b: usize) -> bool {
        match self {
            PolicyKind::AllowAll => a != b,
            PolicyKind::Narrow => a == 0 && b == 1,
        }
    }

    /// Whether `a` and `b` see each other (either may talk to the other).
    fn visible(self, a: usize, b: usize) -> bool {
        self.allows(a, b) || self.allows(b, a)
    }
}

/// The model: who is a member, and the policy.
#[derive(Debug, Clone)]
struct Model {
    members: BTreeSet<usize>,
    policy: PolicyKind,
}

#[derive(Debug, Clone)]
enum Step {
    Join(usize),
    Leave(usize),
    Rebind(usize),
    ChangeEndpoints(usize),
    RestartRelay,
    Policy(PolicyKind),
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            members: BTreeSet::new(),
            policy: PolicyKind::AllowAll,
        })
        .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        prop_oneof![
            3 => (0..SLOTS).prop_map(Step::Join),
            1 => (0..SLOTS).prop_map(Step::Leave),
            1 => (0..SLOTS).prop_map(Step::Rebind),
            1 => (0..SLOTS).prop_map(Step::ChangeEndpoints),
            1 => Just(Step::RestartRelay),
            1 => prop_oneof![Just(PolicyKind::AllowAll), Just(PolicyKind::Narrow)].prop_map(Step::Policy),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        match step {
            Step::Join(s) => {
                state.members.insert(*s);
            }
            Step::Leave(s) => {
                state.members.remove(s);
            }
            Step::Policy(p) => state.policy = *p,
            Step::Rebind(_) | Step::ChangeEndpoints(_) | Step::RestartRelay => {}
        }
        state
    }
}

struct Tailnet;

impl StateMachineTest for Tailnet {
    type SystemUnderTest = World;
    type Reference = Reference;

    fn init_test(model: &Model) -> World {
        World::new(7, model.policy.text()).expect("the policy checks")
    }

    fn apply(mut world: World, model: &Model, step: Step) -> World {
        match step {
            Step::Join(s) => world.join(s),
            Step::Leave(s) => world.remove(s),
            Step::Rebind(s) => world.rebind(s),
            Step::ChangeEndpoints(s) => world.change_endpoints(s),
            Step::RestartRelay => world.restart_relay(),
            Step::Policy(p) => {
                let (_, compiled) = burrow_control::Policy::check(p.text()).expect("checks");
                world.set_policy(compiled);
            }
        }
        // Settle: registration, netmaps, pings, a confirmed direct path.
        world.run_for(Duration::from_secs(8));
        check(&mut world, model);
        world
    }
}

/// The world against the model, for every pair.
fn check(world: &mut World, model: &Model) {
    for &a in &model.members {
        assert!(world.is_member(a), "n{a} is running");
        let expected: Vec<usize> = (model.members.iter().copied())
            .filter(|&b| b != a && model.policy.visible(a, b))
            .collect();
        assert_eq!(world.peers_of(a), expected, "the peers n{a} holds");
    }
    for &a in &model.members {
        for &b in &model.members {
            if a == b {
                continue;
            }
            if model.policy.visible(a, b) {
                assert!(
                    matches!(world.route(a, b), Some(Route::Direct(_))),
                    "n{a} → n{b} is direct, not {:?} (at {:?})",
                    world.route(a, b),
                    world.elapsed()
                );
            }
            assert_eq!(
                world.probe(a, b),
                model.policy.allows(a, b),
                "a packet n{a} → n{b} gets in exactly when the policy allows it"
            );
        }
    }
    assert!(!world.key_on_wire(), "a private key was on a wire");
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        max_shrink_iters: 64,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]
    #[test]
    fn the_tailnet_matches_its_reference_model(sequential 1..10 => Tailnet);
}

/// The world itself, by hand: two members go direct and talk; a narrow policy then lets only
/// n0 reach n1, and a third member sees nobody.
#[test]
fn two_members_go_direct_and_a_policy_narrows_them() {
    let mut w = World::new(1, ALLOW_ALL).unwrap();
    w.join(0);
    w.join(1);
    w.run_for(Duration::from_secs(8));
    assert!(
        matches!(w.route(0, 1), Some(Route::Direct(_))),
        "{:?}",
        w.route(0, 1)
    );
    assert!(w.probe(0, 1) && w.probe(1, 0));
    let (_, narrow) = burrow_control::Policy::check(NARROW).unwrap();
    w.set_policy(narrow);
    w.join(2);
    w.run_for(Duration::from_secs(8));
    assert!(w.probe(0, 1));
    assert!(!w.probe(1, 0), "n0's filter drops what n1 starts");
    assert!(!w.probe(2, 0) && w.peers_of(2).is_empty());
    assert_eq!(w.peers_of(0), [1]);
    assert!(w.elapsed() >= Duration::from_secs(16));
    assert!(!w.key_on_wire());
}
