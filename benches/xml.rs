//! CSTA XML (ECMA-323) codec throughput on one core: `XmlMessage::decode` and `encode` over a
//! realistic event mix in the shapes OpenScape Voice sends (ed4 default namespace, long hex
//! call ids, `N<+…>;noa=…` device ids with `typeOfNumber` attributes, a third of them with
//! Siemens private data), reporting events per second. The issue's target is ≥ 200,000 events/s
//! decode per core; figures and the comparison with BER go to BENCHMARKS.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use cstagate::codec::xml::{ProtocolVersion, XmlMessage};
use cstagate::codec::Framing;

const NS: &str = "http://www.ecma-international.org/standards/ecma-323/csta/ed4";
const PRIV: &str = r#"<extensions><privateData><private><osc:SiemensCallData xmlns:osc="http://www.siemens.com/openscape/csta"><osc:globalCallID>0101000A3B4C5D6E7F80</osc:globalCallID><osc:callType>voice</osc:callType><osc:trunkGroup>12</osc:trunkGroup></osc:SiemensCallData></private></privateData></extensions>"#;

fn dev(number: &str) -> String {
    format!(r#"<deviceIdentifier typeOfNumber="explicitPublic:international">N&lt;+49891234{number}&gt;;noa=int</deviceIdentifier>"#)
}

fn conn(call: u32, number: &str) -> String {
    format!(r#"<callID>FF0001000000000{call:08X}4A7F8F4F3C0E0000</callID><deviceID typeOfNumber="explicitPublic:international">N&lt;+49891234{number}&gt;;noa=int</deviceID>"#)
}

/// The five events of one outgoing call, for call `n`; `private`: with Siemens private data.
fn call_events(n: u32, private: bool) -> Vec<String> {
    let (a, b) = ("2005", "0800");
    let x = format!("<monitorCrossRefID>{}</monitorCrossRefID>", 1000 + n % 50);
    let p = if private { PRIV } else { "" };
    let doc = |root: &str, members: String| format!(r#"<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="{NS}">{x}{members}{p}</{root}>"#);
    vec![
        doc("ServiceInitiatedEvent", format!("<initiatedConnection>{}</initiatedConnection><initiatingDevice>{}</initiatingDevice><localConnectionInfo>initiated</localConnectionInfo><cause>newCall</cause>", conn(n, a), dev(a))),
        doc("OriginatedEvent", format!("<originatedConnection>{}</originatedConnection><callingDevice>{}</callingDevice><calledDevice>{}</calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>", conn(n, a), dev(a), dev(b))),
        doc("DeliveredEvent", format!("<connection>{}</connection><alertingDevice>{}</alertingDevice><callingDevice>{}</callingDevice><calledDevice>{}</calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>", conn(n, b), dev(b), dev(a), dev(b))),
        doc("EstablishedEvent", format!("<establishedConnection>{}</establishedConnection><answeringDevice>{}</answeringDevice><callingDevice>{}</callingDevice><calledDevice>{}</calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause>", conn(n, b), dev(b), dev(a), dev(b))),
        doc("ConnectionClearedEvent", format!("<droppedConnection>{}</droppedConnection><releasingDevice>{}</releasingDevice><localConnectionInfo>null</localConnectionInfo><cause>normalClearing</cause>", conn(n, b), dev(b))),
    ]
}

/// 60 events: 12 calls, every third with private data; frames as the framer hands them out
/// (`9999` then the document).
fn mix() -> Vec<Bytes> {
    (0..12u32).flat_map(|n| call_events(n, n % 3 == 0)).map(|d| Bytes::from(format!("9999{d}"))).collect()
}

fn bench(c: &mut Criterion) {
    let frames = mix();
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    eprintln!("xml/events: {} events, {} bytes, {} bytes on average", frames.len(), bytes, bytes / frames.len());
    let decoded: Vec<XmlMessage> = frames.iter().map(|f| XmlMessage::decode(f, Framing::XmlHeader).expect("decodes")).collect();
    let mut g = c.benchmark_group("xml/events");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(XmlMessage::decode(black_box(f), Framing::XmlHeader).ok());
            }
        })
    });
    let mut buf = Vec::with_capacity(2048);
    g.bench_function("encode", |b| {
        b.iter(|| {
            for m in &decoded {
                buf.clear();
                black_box(m.encode(Framing::XmlHeader, ProtocolVersion::Ed4, &mut buf).ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

/// `XML_BENCH_PASSES=n` runs `n` decode passes over the mix and nothing else: a fixed amount of
/// work, so that `valgrind --tool=callgrind` counts instructions per event reproducibly (the
/// machine is shared; wall-clock figures move with the neighbours' load, instruction counts do
/// not). See BENCHMARKS.md.
fn main() {
    if let Some(n) = std::env::var("XML_BENCH_PASSES").ok().and_then(|v| v.parse::<usize>().ok()) {
        let frames = mix();
        for _ in 0..n {
            for f in &frames {
                black_box(XmlMessage::decode(black_box(f), Framing::XmlHeader).ok());
            }
        }
        eprintln!("decoded {} events", n * frames.len());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
