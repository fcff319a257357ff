//! The lab's peer-relay checks (issue 17): hard2 and hard3, two hard NATs with no port mapping,
//! reach each other through the relay node at relay1 (an easy NAT, `--relay-port`); relay1 is
//! killed mid-run and the pair is back on DERP within the detection time; a relay node started
//! in the internet namespace takes over.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{ping, wait, Lab, RELAY_PORT};

/// What the checks need of the built lab.
pub(crate) struct RelayLab<'a> {
    pub(crate) lab: &'a mut Lab,
    pub(crate) burrow: &'a Path,
    pub(crate) inet: &'a str,
    /// Site name → (node namespace, tailnet address, router namespace).
    pub(crate) nodes: &'a BTreeMap<&'static str, (String, String, String)>,
    /// Each node's `burrow up` arguments.
    pub(crate) node_args: &'a BTreeMap<&'static str, Vec<String>>,
    pub(crate) dir: &'a Path,
    pub(crate) pubkey: &'a dyn Fn(&str) -> Result<String>,
}

/// The relay a node's log last named for `peer_key` ("peer relay changed … relay=Some(\"NAME\")"):
/// `Some(Some(name))` on a relay, `Some(None)` back on DERP, `None` never on a relay.
fn relay_in_log(log: &str, peer_key: &str) -> Option<Option<String>> {
    let l = log
        .lines()
        .rev()
        .find(|l| l.contains("peer relay changed") && l.contains(peer_key))?;
    let rest = l.split("relay=").nth(1)?;
    Some(
        rest.strip_prefix("Some(\"")
            .and_then(|r| r.split('"').next())
            .map(String::from),
    )
}

pub(crate) fn checks(l: RelayLab<'_>, failures: &mut Vec<String>) -> Result<()> {
    let (a, b) = ("hard2", "hard3");
    let (ns_a, _, _) = l.nodes[a].clone();
    let (_, addr_b, _) = l.nodes[b].clone();
    let key_b = (l.pubkey)(b)?;
    let on = |lab: &Lab| relay_in_log(&lab.log(a), &key_b).flatten();
    // 1. Through relay1.
    let went = wait(Duration::from_secs(30), || {
        ping(&ns_a, &addr_b);
        on(l.lab).as_deref() == Some("relay1")
    });
    let pings = (0..3).filter(|_| ping(&ns_a, &addr_b)).count();
    println!(
        "{a}~{b} (hard × hard, no mapping): {} ; ping {pings}/3",
        went.map_or("NOT on a peer relay".into(), |d| format!(
            "relay via relay1 after {:.1} s",
            d.as_secs_f64()
        ))
    );
    if went.is_none() || pings == 0 {
        failures.push(format!("{a}~{b}: not through the peer relay at relay1"));
        return Ok(());
    }
    // 2. relay1 dies: DERP carries the pair within the detection time, and pings keep working.
    l.lab.stop("relay1", "killed");
    let killed = Instant::now();
    let derp = wait(Duration::from_secs(15), || {
        ping(&ns_a, &addr_b);
        relay_in_log(&l.lab.log(a), &key_b) == Some(None)
    });
    let still = wait(Duration::from_secs(10), || ping(&ns_a, &addr_b));
    println!(
        "relay1 killed: {a}~{b} back on DERP after {}, ping {}",
        derp.map_or("NEVER".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        if still.is_some() { "ok" } else { "FAILED" }
    );
    if derp.is_none() || still.is_none() {
        failures.push(format!("{a}~{b}: not back on DERP after its relay died"));
    }
    // 3. A relay node appears in the internet namespace: the pair moves onto it.
    let mut args = l.node_args["relay1"].clone();
    let state = l.dir.join("relayinet").display().to_string();
    for (flag, value) in [("--hostname", "relayinet"), ("--state-dir", state.as_str())] {
        if let Some(k) = args.iter().position(|x| x == flag) {
            args[k + 1] = value.to_string();
        }
    }
    if let Some(k) = args.iter().position(|x| x == "--tun") {
        args[k + 1] = "burrowr0".into();
    }
    debug_assert!(args.iter().any(|x| *x == RELAY_PORT.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    l.lab.start("relayinet", l.inet, l.burrow, &argv)?;
    let moved = wait(Duration::from_secs(45), || {
        ping(&ns_a, &addr_b);
        on(l.lab).as_deref() == Some("relayinet")
    });
    let pings = (0..3).filter(|_| ping(&ns_a, &addr_b)).count();
    println!(
        "a relay node in the internet namespace: {a}~{b} {} ({:.1} s after relay1 died); ping {pings}/3",
        moved.map_or("NEVER on it".into(), |d| format!(
            "relay via relayinet after {:.1} s",
            d.as_secs_f64()
        )),
        killed.elapsed().as_secs_f64()
    );
    if moved.is_none() || pings == 0 {
        failures.push(format!(
            "{a}~{b}: not onto the relay node in the internet namespace"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::relay_in_log;

    #[test]
    fn reads_the_latest_relay_line_for_the_peer() {
        let log = "2026-12-03T11:00:00.000000Z  INFO burrow: peer relay changed peer=KEYB relay=Some(\"relay1\") rtt=Some(1ms)\n\
                   2026-12-03T11:00:01.000000Z  INFO burrow: peer relay changed peer=KEYC relay=Some(\"x\") rtt=None\n";
        assert_eq!(relay_in_log(log, "KEYB"), Some(Some("relay1".into())));
        let later = format!("{log}2026-12-03T11:00:02.000000Z  INFO burrow: peer relay changed peer=KEYB relay=None rtt=None\n");
        assert_eq!(relay_in_log(&later, "KEYB"), Some(None));
        assert_eq!(relay_in_log(log, "KEYD"), None);
    }
}
