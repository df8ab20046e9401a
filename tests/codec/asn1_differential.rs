//! Differential test: an independent ASN.1 implementation (asn1tools, compiled from the modules
//! in `asn1/`, which `.ci/run` installs from PyPI) decodes every capture APDU and every worked
//! vector to the same values as our codec. Both sides are reduced to the projection described
//! in `asn1/README.md` and compared key by key. Without asn1tools the test is skipped with a
//! notice, unless `CSTAGATE_REQUIRE_ASN1TOOLS=1` (CI) makes it mandatory.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{apdu, hex, traces};
use cstagate::codec::apdu::ErrorParameter;
use cstagate::codec::body::Form;
use cstagate::codec::schemas;
use cstagate::codec::{Apdu, Argument, Dialect, Event, Op, Operation, Wrapping};
use cstagate::decode::{project_fields, project_value};
use serde_json::{json, Map, Value as Json};

/// Operations whose argument/result both sides decode (asn1/README.md).
fn decoded_op(op: &Op) -> Option<Operation> {
    use Operation as O;
    op.known().filter(|o| matches!(o, O::MakeCall | O::ClearConnection | O::EventReport | O::Escape | O::MonitorStart | O::MonitorStop | O::SnapshotDevice | O::SystemStatus | O::GenerateDigits))
}

fn fields(op: Operation, arg: &Argument, d: Dialect, is_result: bool, o: &mut Map<String, Json>) {
    match arg {
        Argument::Absent => {}
        Argument::Opaque(_) => {}
        Argument::Event(ev) => {
            o.insert("xref".into(), json!(hex::encode(&ev.xref)));
            match &ev.event {
                Event::Call { kind, body } => {
                    o.insert("event".into(), json!(kind.name()));
                    o.insert("fields".into(), Json::Object(project_fields(body)));
                }
                Event::Other { .. } => {
                    o.insert("event".into(), json!("other"));
                    o.insert("fields".into(), json!({}));
                }
            }
        }
        Argument::Body(b) => {
            if op == Operation::EventReport && is_result {
                return;
            }
            let form = if is_result { schemas::result(op, d) } else { schemas::argument(op, d) };
            let mut f = match form {
                // A bare (non-SEQUENCE) value is projected under "value"; its wrapped form
                // (asn1/README.md P8) is a SEQUENCE, projected by members.
                Some(Form::Bare(_)) if b.wrapping != Some(Wrapping::Wrapped) => {
                    b.fields.first().and_then(|f| project_value(&f.value)).map(|v| Map::from_iter([("value".to_owned(), v)])).unwrap_or_default()
                }
                _ => project_fields(b),
            };
            // asn1tools fills in DEFAULT members: Phase III MakeCall autoOriginate DEFAULT prompt.
            if op == Operation::MakeCall && !is_result && d == Dialect::Phase3 {
                f.entry("autoOriginate").or_insert(json!(0));
            }
            o.insert("fields".into(), Json::Object(f));
        }
    }
}

fn ours(a: &Apdu, d: Dialect) -> Json {
    let mut o = Map::new();
    o.insert("kind".into(), json!(a.kind_name()));
    match a {
        Apdu::Invoke(i) => {
            o.insert("invoke_id".into(), json!(i.invoke_id));
            o.insert("opcode".into(), json!(i.op.code(d).ok().and_then(|c| c.local())));
            if let Some(op) = decoded_op(&i.op) {
                fields(op, &i.argument, d, false, &mut o);
            }
        }
        Apdu::Result(r) => {
            o.insert("invoke_id".into(), json!(r.invoke_id));
            if let Some((op, arg)) = &r.result {
                o.insert("opcode".into(), json!(op.code(d).ok().and_then(|c| c.local())));
                if let Some(op) = decoded_op(op) {
                    fields(op, arg, d, true, &mut o);
                }
            }
        }
        Apdu::Error(e) => {
            o.insert("invoke_id".into(), json!(e.invoke_id));
            o.insert("opcode".into(), json!(e.code.local()));
            if let Some(ErrorParameter::UniversalFailure(u)) = &e.parameter {
                // The tag number on the wire: Phase III explicit [0]..[7], Phase II implicit [1]..[6].
                o.insert("error_value".into(), json!([u.category.tag_number(d), u.value]));
            }
        }
        Apdu::Reject(r) => {
            o.insert("invoke_id".into(), json!(r.invoke_id));
            o.insert("problem".into(), json!([r.problem.tag_number(), r.problem.value()]));
        }
        Apdu::Aarq(_) | Apdu::Aare(_) | Apdu::Rlrq(_) | Apdu::Rlre(_) | Apdu::Abrt(_) => {
            // The decode view names the ACSE values as the projection does; keep those keys.
            cstagate::decode::describe(a, d, &mut o);
            o.retain(|k, _| matches!(k.as_str(), "kind" | "context" | "user" | "has_password" | "result" | "diagnostic" | "reason" | "source"));
            if matches!(a, Apdu::Aarq(_)) {
                o.entry("has_password").or_insert(json!(false));
            }
        }
    }
    Json::Object(o)
}

/// Keep only the keys both projections define for this kind, so each side's extra
/// conveniences (and asn1tools' `diagnostic: null`, `reason: null`) do not count.
fn comparable(mut j: Json) -> Json {
    if let Json::Object(m) = &mut j {
        m.retain(|_, v| !v.is_null());
        if let Some(Json::Object(f)) = m.get_mut("fields") {
            f.retain(|_, v| !v.is_null());
        }
    }
    j
}

fn inputs() -> Vec<(String, Dialect, Bytes)> {
    let mut v = Vec::new();
    for t in traces(".frames.tsv") {
        for f in &t.frames {
            v.push((f.origin.clone(), t.dialect, apdu(&t, f)));
        }
    }
    // The brief's §4.9 vectors (frame header stripped) and the OXE Phase II bytes.
    for (i, h) in [
        "A1 0F 02 01 01 02 01 47 30 07 30 05 80 03 32 30 31",
        "A2 10 02 01 01 30 0B 02 01 47 30 06 55 04 00 00 00 01",
        "A1 20 02 01 02 02 01 0A 30 18 30 05 80 03 32 30 31 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 83 01 01",
        "A2 1B 02 01 02 30 16 02 01 0A 30 11 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31",
        "A1 32 02 01 07 02 01 15 30 2A 55 04 00 00 00 01 A0 22 B0 20 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31 63 07 30 05 80 03 32 30 31 4E 01 01 0A 01 2C",
        "A1 56 02 01 09 02 01 15 30 4E 55 04 00 00 00 01 A0 46 A7 44 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31 63 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 61 07 30 05 80 03 32 30 31 62 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 64 02 87 00 4E 01 03 0A 01 4E",
        "A1 25 02 01 03 02 02 00 E8 30 1C 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31 16 09 2A 31 32 33 34 35 36 37 23",
        "A1 0C 02 01 04 02 02 00 D3 30 03 0A 01 02",
        "A2 0B 02 01 04 30 06 02 02 00 D3 05 00",
        "A3 0B 02 01 02 02 01 01 A0 03 0A 01 0C",
        "A4 06 02 01 05 81 01 01",
        "A1 0E 02 01 06 02 01 49 30 06 55 04 00 00 00 01",
    ]
    .iter()
    .enumerate()
    {
        v.push((format!("brief 4.9 vector {}", i + 1), Dialect::Phase3, hex(h)));
    }
    for (i, h) in [
        "A1 0F 02 01 01 02 01 47 30 07 80 05 32 39 37 30 37",
        "A1 0A 02 02 29 E8 02 01 34 0A 01 02",
        "A2 0B 02 02 29 E8 30 05 02 01 34 05 00",
        "A1 0D 02 01 03 02 01 4A 80 05 32 39 37 30 37",
        "A1 16 02 01 06 02 01 0A 30 0E 80 04 31 31 34 34 62 06 80 04 31 31 30 36",
        // P8 both forms: makeCall result bare, wrapped, wrapped with OXE-style extensions
        // (security timestamp, private data); the other P8 arguments and results wrapped.
        "A2 14 02 01 06 30 0F 02 01 0A 6B 0A 82 02 2B 7A 83 04 08 B3 01 00",
        "A2 16 02 01 06 30 11 02 01 0A 30 0C 6B 0A 82 02 2B 7A 83 04 08 B3 01 00",
        "A2 38 02 01 06 30 33 02 01 0A 30 2E 6B 0A 82 02 2B 7A 83 04 08 B3 01 00 7E 20 A0 0F 17 0D 32 35 30 33 30 31 31 36 30 37 32 33 5A A1 0D 30 0B 06 06 2B 0C 89 36 83 78 02 01 00",
        "A1 36 02 01 06 02 01 05 30 2E 6B 0A 82 02 2B 7A 83 04 08 B3 01 00 7E 20 A0 0F 17 0D 32 35 30 33 30 31 31 36 30 37 32 33 5A A1 0D 30 0B 06 06 2B 0C 89 36 83 78 02 01 00",
        "A1 12 02 01 06 02 01 05 6B 0A 82 02 2B 7A 83 04 08 B3 01 00",
        "A1 30 02 01 06 02 01 49 30 28 55 04 01 35 F3 03 7E 20 A0 0F 17 0D 32 35 30 33 30 31 31 36 30 37 32 33 5A A1 0D 30 0B 06 06 2B 0C 89 36 83 78 02 01 00",
        "A1 0C 02 01 06 02 01 49 55 04 01 35 F3 03",
        "A1 0F 02 01 06 02 01 4A 30 07 80 05 32 39 37 30 37",
        "A1 0D 02 01 06 02 01 34 30 05 0A 01 02 7E 00",
        "A2 0A 02 01 06 30 05 02 01 4A 76 00",
        "A2 0C 02 01 06 30 07 02 01 4A 30 02 76 00",
        "A2 0A 02 01 06 30 05 02 01 49 30 00",
        "A2 0C 02 01 06 30 07 02 01 05 30 02 05 00",
        "A2 0C 02 01 06 30 07 02 01 34 30 02 7E 00",
    ]
    .iter()
    .enumerate()
    {
        v.push((format!("Phase II vector {}", i + 1), Dialect::Phase2, hex(h)));
    }
    v
}

#[test]
fn asn1tools_compiled_from_asn1_decodes_every_capture_and_vector_like_our_codec() {
    if !common::require_external("asn1tools", "CSTAGATE_REQUIRE_ASN1TOOLS", &["python3", "-c", "import asn1tools"], "`pip install asn1tools==0.169.0`") {
        return;
    }
    let inputs = inputs();
    let script = common::path("tests/asn1tools/project.py");
    let mut child = Command::new("python3")
        .arg(&script)
        // Strict: every element of every APDU must be matched by a member of the modules.
        .arg("--strict")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs (checked above)");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (_, d, b) in &inputs {
            let dialect = match d {
                Dialect::Phase3 => "phase3",
                Dialect::Phase2 => "phase2",
            };
            writeln!(stdin, "{}", json!({"hex": hex::encode(b), "dialect": dialect})).expect("write");
        }
    }
    let out = child.wait_with_output().expect("projection script finishes");
    assert!(out.status.success(), "project.py failed");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).expect("utf-8").lines().collect();
    assert_eq!(lines.len(), inputs.len(), "one projection per input");
    let mut mismatches = Vec::new();
    for ((origin, d, b), line) in inputs.iter().zip(lines) {
        let theirs: Json = serde_json::from_str(line).expect("json line");
        assert!(theirs.get("error").is_none(), "{origin}: asn1tools could not decode: {theirs}");
        let ours = ours(&Apdu::decode(b, *d).unwrap_or_else(|e| panic!("{origin}: {e}")), *d);
        let (a, b) = (comparable(ours), comparable(theirs));
        if a != b {
            mismatches.push(format!("{origin}:\n  ours:      {a}\n  asn1tools: {b}"));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} APDUs differ:\n{}", mismatches.len(), inputs.len(), mismatches.join("\n"));
    assert!(inputs.len() >= 240);
}
