//! Codec throughput on the real capture mix: decode and encode, APDUs per second on one core.
//! Figures go to BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cstagate::capture;
use cstagate::codec::{Apdu, Dialect, Framing};

/// Every APDU of the captures, with its dialect; `events_only` keeps the event reports.
fn mix(events_only: bool) -> Vec<(Dialect, Bytes)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("captures");
    let mut out = Vec::new();
    for name in ["panasonic-csta3-makecall-20160727", "panasonic-csta3-rejects-20161101", "hipath-csta3-session-20130104", "oxe-csta2-events-smallf00t"] {
        let (framing, dialect) = match name {
            n if n.starts_with("hipath") => (Framing::Siemens, Dialect::Phase3),
            n if n.starts_with("oxe") => (Framing::TwoByteLength, Dialect::Phase2),
            _ => (Framing::TwoByteLength, Dialect::Phase3),
        };
        for f in capture::read_file(&dir.join(format!("{name}.frames.tsv")), Some(framing), None).expect("capture") {
            let apdu = capture::unframe(framing, &f.framed.expect("frame")).expect("unframe");
            let is_event = matches!(Apdu::decode(&apdu, dialect), Ok(Apdu::Invoke(ref i)) if matches!(i.argument, cstagate::codec::Argument::Event(_)));
            if !events_only || is_event {
                out.push((dialect, apdu));
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    for (label, events_only) in [("capture-mix", false), ("events", true)] {
        let apdus = mix(events_only);
        let decoded: Vec<(Dialect, Apdu)> = apdus.iter().map(|(d, b)| (*d, Apdu::decode(b, *d).expect("decodes"))).collect();
        let mut g = c.benchmark_group(format!("codec/{label}"));
        g.throughput(Throughput::Elements(apdus.len() as u64));
        g.bench_function("decode", |b| {
            b.iter(|| {
                for (d, bytes) in &apdus {
                    black_box(Apdu::decode(black_box(bytes), *d).ok());
                }
            })
        });
        let mut buf = Vec::with_capacity(512);
        g.bench_function("encode", |b| {
            b.iter(|| {
                for (d, a) in &decoded {
                    buf.clear();
                    black_box(a.encode(*d, &mut buf).ok());
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
