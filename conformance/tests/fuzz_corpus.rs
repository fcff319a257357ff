//! Replays each fuzz target's committed corpus (fuzz/corpus/TARGET/*) as an ordinary test.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_target_has_a_corpus_and_it_replays_cleanly() {
    for (name, body) in burrow_conformance::fuzz::TARGETS {
        let dir = corpus_dir(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 5,
            "{name}: corpus too small ({} inputs)",
            files.len()
        );
        for f in files {
            let data = std::fs::read(&f).unwrap();
            body(&data);
        }
    }
}
