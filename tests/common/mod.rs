//! Shared helpers for the codec tests: the captures under `captures/` with their framing and
//! dialect.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cstagate::capture::{self, CapturedFrame};
use cstagate::codec::{Dialect, Framing};

pub struct Trace {
    pub name: String,
    pub framing: Framing,
    pub dialect: Dialect,
    pub frames: Vec<CapturedFrame>,
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Framing and dialect of a capture, from its vendor (captures/README.md).
pub fn profile(name: &str) -> (Framing, Dialect) {
    if name.starts_with("hipath") {
        (Framing::Siemens, Dialect::Phase3)
    } else if name.starts_with("oxe") {
        (Framing::TwoByteLength, Dialect::Phase2)
    } else {
        (Framing::TwoByteLength, Dialect::Phase3)
    }
}

/// Every BER capture file with the given suffix. The synthetic CSTA XML traces (`xml-*`) are
/// left out: they have no `.frames.tsv` twin and no BER to re-encode; `tests/cli/decode_xml.rs`
/// writes and reads them.
pub fn traces(suffix: &str) -> Vec<Trace> {
    let dir = root().join("captures");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("captures/ exists")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(suffix) && !n.starts_with("xml-"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no {suffix} captures");
    names
        .into_iter()
        .map(|name| {
            let (framing, dialect) = profile(&name);
            let frames = capture::read_file(&dir.join(&name), Some(framing), None).expect("capture readable");
            Trace { name, framing, dialect, frames }
        })
        .collect()
}

/// The APDU bytes of a frame (header stripped).
pub fn apdu(t: &Trace, f: &CapturedFrame) -> Bytes {
    let framed = f.framed.clone().unwrap_or_else(|e| panic!("{}: {e}", f.origin));
    capture::unframe(t.framing, &framed).unwrap_or_else(|e| panic!("{}: {e}", f.origin))
}

pub fn hex(s: &str) -> Bytes {
    Bytes::from(hex::decode(s.split_whitespace().collect::<String>()).expect("valid hex"))
}

pub fn path(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Whether an external program a test needs is present: `probe` (a program and its
/// arguments) runs and exits 0. When it does not, the test is mandatory if the environment
/// variable `require_var` is `1` (CI sets it: `.ci/run`), and this panics; otherwise it prints a
/// notice past the test harness's output capture (so `cargo test` shows it even for a passing
/// test) and returns `false`, and the test returns early. A fresh machine with only the Rust
/// toolchain thus passes the suite and says what it skipped.
pub fn require_external(what: &str, require_var: &str, probe: &[&str], install: &str) -> bool {
    use std::io::Write;
    let (program, args) = probe.split_first().expect("a probe command");
    let present = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return true;
    }
    let probe: Vec<String> = probe.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { (*a).to_owned() }).collect();
    let probe = probe.join(" ");
    assert!(std::env::var(require_var).as_deref() != Ok("1"), "{what} is required ({require_var}=1) but `{probe}` failed; install it: {install}");
    // Straight to the process's stderr: `eprintln!` would be captured and shown only on failure.
    let _ = writeln!(std::io::stderr(), "NOTICE: {what} not found (`{probe}` failed): this test is SKIPPED. Install it ({install}) to run it; {require_var}=1 makes it mandatory, as in CI.");
    false
}

/// The seed of a test that draws random inputs: `CSTAGATE_TEST_SEED=<u64>` replays a run,
/// otherwise a fresh one. Printed first (cargo shows it with a failing test's output), so that
/// any failure can be replayed.
pub fn test_seed(name: &str) -> u64 {
    let seed = match std::env::var("CSTAGATE_TEST_SEED") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("CSTAGATE_TEST_SEED={v:?} is not a u64")),
        Err(_) => rand::random(),
    };
    eprintln!("{name}: seed {seed} (replay: CSTAGATE_TEST_SEED={seed})");
    seed
}

/// A metric's value as `GET /metrics` shows it (`name` with its labels, e.g.
/// `cstagate_ivr_unknown_context_total{adapter="webhook"}`).
pub async fn metric(http: &cstagate::http_client::Http, name: &str) -> u64 {
    let (s, body) = http.raw("GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(s, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' '))).unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}")).trim().parse().unwrap()
}
