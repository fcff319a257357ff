//! `burrow control policy check FILE`: ok with a summary, or the file and line of the error
//! and exit status 1.

use std::process::Command;

fn check(text: &str) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("burrow-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("p{}.hujson", text.len()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["control", "policy", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_policy_is_summarised() {
    let (ok, out, _) = check(
        "{\n  // eng → db\n  \"groups\": {\"group:eng\": [\"alice\"]},\n  \"tagOwners\": {\"tag:db\": [\"group:eng\"]},\n  \"acls\": [{\"action\": \"accept\", \"src\": [\"group:eng\"], \"dst\": [\"tag:db:5432\"]},],\n}\n",
    );
    assert!(ok);
    assert!(
        out.contains("ok: 1 rules, 1 groups, 1 tags, 0 hosts"),
        "{out}"
    );
}

#[test]
fn a_bad_policy_names_file_and_line() {
    let (ok, _, err) = check(
        "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:ghosts\"], \"dst\": [\"*:*\"]}\n  ]\n}\n",
    );
    assert!(!ok);
    assert!(
        err.contains(".hujson:3: line 3: group \"group:ghosts\" is not defined"),
        "{err}"
    );
}

#[test]
fn relay_grants_are_listed() {
    let (ok, out, err) = check(
        "{\n  \"groups\": {\"group:eng\": [\"alice\", \"bob\"]},\n  \"tagOwners\": {\"tag:relay\": [\"ops\"]},\n  \"acls\": [],\n  \"relay\": [{\"src\": [\"group:eng\"], \"via\": [\"tag:relay\"]}],\n  \"autoRelay\": true,\n}\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("relay: 1 rules, autoRelay on"), "{out}");
    assert!(
        out.contains("  group:eng (alice, bob) may relay through tag:relay"),
        "{out}"
    );
    let (ok, out, _) = check("{\"acls\": []}");
    assert!(ok);
    assert!(
        out.contains("relay: none (no relay rules, autoRelay off)"),
        "{out}"
    );
}

#[test]
fn a_bad_relay_rule_names_file_and_line() {
    let (ok, _, err) = check(
        "{\n  \"relay\": [\n    {\"src\": [\"*\"],\n     \"via\": [\"tag:ghost\"]}\n  ]\n}\n",
    );
    assert!(!ok);
    assert!(
        err.contains(".hujson:4: line 4: relay rule 1: via \"tag:ghost\""),
        "{err}"
    );
    let (ok, _, err) = check("{\n  \"relay\": [{\"src\": [\"*\"], \"via\": []}]\n}\n");
    assert!(!ok);
    assert!(
        err.contains(".hujson:2: line 2: relay rule 1: \"via\" is empty"),
        "{err}"
    );
}
