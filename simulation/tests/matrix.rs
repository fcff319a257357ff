//! netcheck classifies every NAT preset correctly, and every scenario file holds, over seeds.
//! (`cargo xtask sim --matrix` runs the full 20 seeds; this runs fewer in a debug build.)

use burrow_sim::preset;
use burrow_sim::scenario::{self, RunOptions, Scenario};

fn assert_passes(s: &Scenario, seeds: std::ops::RangeInclusive<u64>) {
    for seed in seeds {
        let (o, _) = scenario::run(s, seed, &RunOptions::default()).unwrap();
        assert!(
            o.passed,
            "{} seed {seed} failed (replay: cargo xtask sim --seed {seed} ...): error {:?}, mismatches {:?}",
            o.scenario, o.error, o.mismatches
        );
    }
}

#[test]
fn netcheck_matrix_every_preset() {
    for p in preset::NAMES {
        assert_passes(&scenario::netcheck_for_preset(p).unwrap(), 1..=4);
    }
}

#[test]
fn netcheck_matrix_over_ipv6() {
    for p in ["open", "firewall", "easy", "hard"] {
        let s = scenario::netcheck_for_preset_in(p, scenario::Family::Ipv6).unwrap();
        assert_passes(&s, 1..=2);
    }
}

#[test]
fn scenario_files_hold() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_passes(&s, 1..=4);
            n += 1;
        }
    }
    assert!(n >= 5, "scenario files missing");
}

#[test]
fn expectations_can_fail() {
    // A scenario expecting the wrong verdict must fail, naming the field.
    let mut s = scenario::netcheck_for_preset("easy").unwrap();
    s.expect.nat_type = Some("hard".into());
    let (o, _) = scenario::run(&s, 1, &RunOptions::default()).unwrap();
    assert!(!o.passed);
    assert_eq!(o.mismatches[0].field, "nat_type");
    assert_eq!(o.mismatches[0].got, "easy");
}

#[test]
fn bad_scenarios_are_typed_errors() {
    let cases = [
        ("name = 'x'\n[workload]\nkind = 'netcheck'\nnode = 'ghost'\nservers = []\n", "not defined"),
        ("name = 'x'\n[[box]]\nname = 'b'\npreset = 'nope'\n[[node]]\nname = 'n'\nbehind = 'b'\n[[server]]\nname = 's'\n[workload]\nkind = 'netcheck'\nnode = 'n'\nservers = ['s']\n", "unknown preset"),
        ("name = 'x'\n[[box]]\nname = 'a'\npreset = 'easy'\nbehind = 'b'\n[[box]]\nname = 'b'\npreset = 'easy'\nbehind = 'a'\n[[node]]\nname = 'n'\n[[server]]\nname = 's'\n[workload]\nkind = 'netcheck'\nnode = 'n'\nservers = ['s']\n", "cycle"),
        ("name = 'x'\nbogus = 1\n", "unknown field"),
    ];
    for (text, needle) in cases {
        let e = Scenario::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
}

#[test]
fn pcaps_carry_real_headers_and_the_translation() {
    let s = scenario::netcheck_for_preset("easy").unwrap();
    let (_, rec) = scenario::run(
        &s,
        1,
        &RunOptions {
            capture: true,
            keep_trace: false,
        },
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("burrow-sim-pcap-{}", std::process::id()));
    let files = rec.write_pcaps(&dir, "").unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "home-inside.pcap",
        "home-outside.pcap",
        "stun1.pcap",
        "stun2.pcap",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let inside = std::fs::read(dir.join("home-inside.pcap")).unwrap();
    let outside = std::fs::read(dir.join("home-outside.pcap")).unwrap();
    // Global header: pcap magic, LINKTYPE_RAW (101).
    assert_eq!(&inside[..4], &[0xa1, 0xb2, 0xc3, 0xd4]);
    assert_eq!(u32::from_be_bytes(inside[20..24].try_into().unwrap()), 101);
    // First packet: IPv4 from the private address inside, from the public one outside.
    let first_src = |f: &[u8]| -> [u8; 4] { f[24 + 16 + 12..24 + 16 + 16].try_into().unwrap() };
    assert_eq!(first_src(&inside)[0], 10, "inside shows the private source");
    assert_eq!(
        first_src(&outside),
        [203, 0, 113, 1],
        "outside shows the translated source"
    );
    // tshark decodes STUN in them, when installed.
    if let Some(tshark) = burrow_conformance_tools_which("tshark") {
        let out = std::process::Command::new(tshark)
            .args(["-r"])
            .arg(dir.join("home-outside.pcap"))
            .args(["-Y", "stun", "-T", "fields", "-e", "stun.type"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().count() >= 4,
            "tshark decoded too little STUN: {text}"
        );
    } else if std::env::var_os("BURROW_REQUIRE_INTEROP").is_some() {
        panic!("tshark not found although BURROW_REQUIRE_INTEROP is set (package tshark)");
    } else {
        eprintln!(
            "SKIPPED tshark decoding check: tshark not found (install Debian package tshark)"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn burrow_conformance_tools_which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
