//! Replays, through the fuzz targets' own oracles (`fuzz/src/lib.rs`, included below), every
//! committed seed (`fuzz/seeds/<target>/`) and every input a fuzzer found failing
//! (`tests/fuzz_regressions/<target>/`, the raw bytes libFuzzer wrote), so plain `cargo test`
//! keeps each finding fixed. See FUZZING.md.

#[path = "../../fuzz/src/lib.rs"]
mod oracle;

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.') || n == "README.md")).collect();
    v.sort();
    v
}

/// Run `target`'s oracle on every seed and regression input; fail naming each input that fails.
fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = inputs(&root.join("fuzz/seeds").join(target));
    let found = inputs(&root.join("tests/fuzz_regressions").join(target));
    assert!(!seeds.is_empty(), "no seeds for {target} (fuzz/make_seeds.py writes them)");
    let mut failed = Vec::new();
    for p in seeds.iter().chain(&found) {
        let data = std::fs::read(p).expect("readable input");
        let r = std::panic::catch_unwind(|| oracle::run(target, &data));
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned())).unwrap_or_default();
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
fn every_target_has_a_replay() {
    for t in oracle::TARGETS {
        assert!(["framer", "apdu_phase3", "apdu_phase2", "acse", "engine", "link_session"].contains(t), "add a replay test for fuzz target {t}");
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
        let all = inputs(&root.join("fuzz/corpus").join(t));
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
