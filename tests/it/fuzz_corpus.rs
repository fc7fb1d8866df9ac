//! Replays every file of `fuzz/corpus/<target>/` through its fuzz entry point (`src/fuzz.rs`) on
//! the stable toolchain: the seeds, and every input a fuzzing run kept or a finding added, must
//! still return without a panic. `scripts/fuzz` runs the targets themselves under libFuzzer.
//!
//! Requirements: EXT-4.4-2 (malicious content is rejected, not crashed on), INT-4.1-3 (no input
//! makes the decision path fail open), INT-8-2 (export verification survives hostile files).

use std::path::Path;

#[test]
fn every_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, target) in scp_pep::fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {name} has no corpus");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} panicked", f.display());
        }
        total += files.len();
    }
    assert!(total >= scp_pep::fuzz::TARGETS.len());
}
