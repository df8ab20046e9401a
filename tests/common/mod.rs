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

/// Every capture file with the given suffix.
pub fn traces(suffix: &str) -> Vec<Trace> {
    let dir = root().join("captures");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("captures/ exists")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(suffix))
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
