//! Every APDU of every real capture decodes, matches its label, and re-encodes to the same
//! bytes; the pcap readers see the same APDUs as the frame lists.

use crate::common;

use common::{apdu, traces};
use cstagate::codec::{Apdu, Argument, Event};

/// `AARQ`, `invoke id=2 op=21(cSTAEventReport) event=callControl.delivered`, ... →
/// (kind, invoke id, opcode, event).
fn parse_label(label: &str) -> (String, Option<i64>, Option<i64>, Option<String>) {
    let label = label.split(" | ").next().unwrap_or("");
    let mut words = label.split_whitespace();
    let kind = match words.next().unwrap_or("") {
        "AARQ" => "aarq",
        "AARE" => "aare",
        "invoke" => "invoke",
        "returnResult" => "result",
        "returnError" => "error",
        "reject" => "reject",
        other => panic!("unknown label kind {other}"),
    }
    .to_owned();
    let (mut id, mut op, mut ev) = (None, None, None);
    for w in words {
        if let Some(v) = w.strip_prefix("id=") {
            id = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("op=") {
            op = v.split('(').next().and_then(|n| n.parse().ok());
        } else if let Some(v) = w.strip_prefix("event=") {
            ev = Some(match v.strip_prefix("callControl.") {
                Some(name) => name.to_owned(),
                None => "other".to_owned(),
            });
        }
    }
    (kind, id, op, ev)
}

#[test]
fn every_capture_apdu_decodes_and_matches_its_label() {
    let mut checked = 0;
    for t in traces(".frames.tsv") {
        for f in &t.frames {
            let bytes = apdu(&t, f);
            let decoded = Apdu::decode(&bytes, t.dialect).unwrap_or_else(|e| panic!("{}: {e}", f.origin));
            let (kind, id, op, ev) = parse_label(f.label.as_deref().expect("tsv rows are labelled"));
            assert_eq!(decoded.kind_name(), kind, "{}", f.origin);
            if kind != "reject" {
                assert_eq!(decoded.invoke_id(), id, "{}", f.origin);
            }
            let (opcode, event) = match &decoded {
                Apdu::Invoke(i) => (
                    i.op.code(t.dialect).ok().and_then(|c| c.local()),
                    match &i.argument {
                        Argument::Event(r) => Some(match &r.event {
                            Event::Call { kind, .. } => kind.name().to_owned(),
                            Event::Other { .. } => "other".to_owned(),
                        }),
                        _ => None,
                    },
                ),
                Apdu::Result(r) => (r.result.as_ref().and_then(|(op, _)| op.code(t.dialect).ok()).and_then(|c| c.local()), None),
                _ => (None, None),
            };
            assert_eq!(opcode, op, "{}", f.origin);
            assert_eq!(event, ev, "{}", f.origin);
            checked += 1;
        }
    }
    assert_eq!(checked, 224, "all APDUs of the four captures");
}

#[test]
fn every_capture_apdu_reencodes_to_the_same_bytes() {
    for t in traces(".frames.tsv") {
        for f in &t.frames {
            let bytes = apdu(&t, f);
            let decoded = Apdu::decode(&bytes, t.dialect).unwrap_or_else(|e| panic!("{}: {e}", f.origin));
            let again = decoded.to_vec(t.dialect).unwrap_or_else(|e| panic!("{}: {e}", f.origin));
            assert_eq!(hex::encode(&again), hex::encode(&bytes), "{}", f.origin);
        }
    }
}

#[test]
fn pcaps_carry_the_same_apdus_as_the_frame_lists() {
    let tsv = traces(".frames.tsv");
    let pcap = traces(".synth.pcap");
    assert_eq!(tsv.len(), pcap.len());
    for (a, b) in tsv.iter().zip(&pcap) {
        let xs: Vec<_> = a.frames.iter().map(|f| (f.dir, apdu(a, f))).collect();
        let ys: Vec<_> = b.frames.iter().map(|f| (f.dir, apdu(b, f))).collect();
        assert_eq!(xs.len(), ys.len(), "{} vs {}", a.name, b.name);
        assert_eq!(xs, ys, "{} vs {}", a.name, b.name);
    }
}
