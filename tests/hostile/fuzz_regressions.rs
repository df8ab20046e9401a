//! Replays, through the fuzz targets' own oracles (`fuzz/src/lib.rs`, included below), every
//! committed seed (`fuzz/seeds/<target>/`) and every input a fuzzer found failing
//! (`tests/fuzz_regressions/<target>/`, the raw bytes libFuzzer wrote), so plain `cargo test`
//! keeps each finding fixed. See FUZZING.md.

#[path = "../../fuzz/src/lib.rs"]
mod oracle;

use std::path::{Path, PathBuf};

/// The fuzz targets, with how many seeds (`fuzz/seeds/<target>/`) and regression inputs
/// (`tests/fuzz_regressions/<target>/`) each has at least: a directory that is missing, renamed
/// or emptied must fail the replay, not pass it with nothing replayed. Raise a number when you
/// add inputs; a target without a finding has no regression directory (0).
const TARGETS: [(&str, usize, usize); 7] = [("framer", 30, 0), ("apdu_phase3", 109, 5), ("apdu_phase2", 116, 10), ("acse", 9, 1), ("engine", 15, 8), ("link_session", 7, 0), ("xml", 286, 5)];

/// The input files of `dir` (not its README or hidden files), sorted; `None` when there is no
/// such directory.
fn inputs(dir: &Path) -> Option<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut v: Vec<PathBuf> =
        rd.map(|e| e.expect("a readable directory entry").path()).filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.') || n == "README.md")).collect();
    v.sort();
    Some(v)
}

/// The inputs of `dir`, at least `min` of them (a missing directory fails unless none is
/// expected).
fn expected_inputs(dir: &Path, min: usize) -> Vec<PathBuf> {
    match inputs(dir) {
        None if min == 0 => Vec::new(),
        None => panic!("{} is missing: {min} inputs expected there (see TARGETS in tests/hostile/fuzz_regressions.rs)", dir.display()),
        Some(v) => {
            assert!(v.len() >= min, "{} holds {} inputs, {min} expected at least (see TARGETS in tests/hostile/fuzz_regressions.rs)", dir.display(), v.len());
            v
        }
    }
}

/// Run `target`'s oracle on every seed and regression input; fail naming each input that fails.
fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let &(_, min_seeds, min_found) = TARGETS.iter().find(|t| t.0 == target).unwrap_or_else(|| panic!("{target} is not in TARGETS"));
    let seeds = expected_inputs(&root.join("fuzz/seeds").join(target), min_seeds);
    let found = expected_inputs(&root.join("tests/fuzz_regressions").join(target), min_found);
    assert!(!seeds.is_empty(), "no seeds for {target} (fuzz/make_seeds.py writes them)");
    eprintln!("{target}: {} seeds, {} regression inputs", seeds.len(), found.len());
    let mut failed = Vec::new();
    // `FUZZ_REPLAY_ONLY=<part of a file name>`: replay just the matching inputs (with
    // `FUZZ_ENGINE_TRACE=1`, to read one input's trace alone).
    let only = std::env::var("FUZZ_REPLAY_ONLY").ok();
    for p in seeds.iter().chain(&found).filter(|p| only.as_ref().is_none_or(|o| p.to_string_lossy().contains(o.as_str()))) {
        let data = std::fs::read(p).expect("readable input");
        let r = std::panic::catch_unwind(|| oracle::run(target, &data));
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned())).unwrap_or_else(|| "(a panic without a message)".to_owned());
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            failed.push(format!("{}\n  input {hex}\n  {}", p.strip_prefix(root).unwrap_or(p).display(), msg.lines().next().unwrap_or("")));
        }
    }
    assert!(failed.is_empty(), "{target}: {} of {} inputs fail:\n{}", failed.len(), seeds.len() + found.len(), failed.join("\n"));
}

#[test]
fn framer_inputs_replay() {
    replay("framer");
}

#[test]
fn apdu_phase3_inputs_replay() {
    replay("apdu_phase3");
}

#[test]
fn apdu_phase2_inputs_replay() {
    replay("apdu_phase2");
}

#[test]
fn acse_inputs_replay() {
    replay("acse");
}

#[test]
fn engine_inputs_replay() {
    replay("engine");
}

#[test]
fn link_session_inputs_replay() {
    replay("link_session");
}

#[test]
fn xml_inputs_replay() {
    replay("xml");
}

#[test]
fn every_target_has_a_replay() {
    for t in oracle::TARGETS {
        assert!(TARGETS.iter().any(|(name, ..)| name == t), "add a replay test for fuzz target {t}");
    }
    assert_eq!(TARGETS.len(), oracle::TARGETS.len(), "TARGETS names a target the oracle does not have");
}

/// Every directory of seeds or regression inputs is a target's: a misspelt or stale one would
/// otherwise never be replayed.
#[test]
fn every_input_directory_belongs_to_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["fuzz/seeds", "tests/fuzz_regressions"] {
        let mut seen = 0;
        for e in std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let p = e.expect("a readable directory entry").path();
            if p.is_dir() {
                let name = p.file_name().expect("a name").to_string_lossy().into_owned();
                assert!(TARGETS.iter().any(|(t, ..)| *t == name), "{dir}/{name} is no fuzz target's: its inputs are never replayed");
                seen += 1;
            }
        }
        let expected = TARGETS.iter().filter(|(_, seeds, found)| if dir == "fuzz/seeds" { *seeds > 0 } else { *found > 0 }).count();
        assert_eq!(seen, expected, "{dir}: one directory per target with inputs");
    }
}

/// Not a check: what the local corpora (`fuzz/corpus/engine`, `fuzz/corpus/link_session`, grown
/// by `fuzz/run.sh`) reach, to see that the stateful targets get somewhere. Each input still runs
/// through its oracle. `cargo test --release --test hostile fuzz_regressions -- --ignored --nocapture`.
#[test]
#[ignore]
fn stateful_corpora_reach() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for t in ["engine", "link_session"] {
        let all = inputs(&root.join("fuzz/corpus").join(t)).unwrap_or_default();
        for p in &all {
            oracle::run(t, &std::fs::read(p).expect("readable input"));
        }
        eprintln!("{t}: {} corpus inputs", all.len());
    }
    let e = oracle::engine_outcomes();
    let reached: Vec<String> = oracle::ENGINE_OUTCOME_NAMES.iter().zip(e).map(|(name, n)| format!("{name} {n}")).collect();
    eprintln!("engine: {}", reached.join(", "));
    let l = oracle::link_session_outcomes();
    eprintln!("link_session: ended by a framing error {}, by RLRQ/ABRT {}; up with the late-answer and liveness checks {}, up mid-frame {}; requests answered Ok {} of {}", l[0], l[1], l[2], l[3], l[4], l[5]);
}
