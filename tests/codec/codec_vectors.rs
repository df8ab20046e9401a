//! The worked encodings of the protocol brief §4.9 (and the real OXE Phase II bytes of §1.2,
//! §4.7, §4.9) built from the dialect-neutral model encode byte for byte and decode back; every
//! operation of the opcode table and every event kind round-trips in both dialects.

use crate::common;

use bytes::Bytes;
use common::hex;
use cstagate::codec::apdu::{ErrorCategory, EventReport};
use cstagate::codec::body::{Body, FieldName as F, Value};
use cstagate::codec::operation::TABLE;
use cstagate::codec::{Apdu, Argument, ConnectionId, DeviceId, DeviceRef, Dialect, Event, EventKind, Framing, Invoke, LocalDevice, Op, Operation, RejectProblem};
use cstagate::decode::project_fields;

fn dev(d: &str) -> DeviceId {
    DeviceId::dialing(d).expect("ascii")
}
fn conn(call: &[u8], d: &str) -> ConnectionId {
    ConnectionId { call: Some(Bytes::copy_from_slice(call)), device: Some(LocalDevice::Static(dev(d))) }
}
fn role(d: &str) -> Value {
    Value::Device(DeviceRef::Id(dev(d)))
}

/// Frame with a 2-byte length, compare to the vector, and decode back to the same bytes.
fn check(apdu: &Apdu, dialect: Dialect, vector: &str) {
    let want = hex(vector);
    let body = apdu.to_vec(dialect).expect("encodable");
    let framed = Framing::TwoByteLength.frame(&body).expect("fits");
    assert_eq!(hex::encode(&framed), hex::encode(&want), "encoding of {apdu:?}");
    let back = Apdu::decode(&Bytes::from(body.clone()), dialect).expect("decodes");
    assert_eq!(back.to_vec(dialect).expect("re-encodes"), body);
}

#[test]
fn brief_4_9_worked_vectors_encode_byte_for_byte() {
    let p3 = Dialect::Phase3;
    check(&Apdu::invoke(1, Operation::MonitorStart, Body::new().with(F::MonitorObject, Value::DeviceId(dev("201")))), p3,
        "00 11 A1 0F 02 01 01 02 01 47 30 07 30 05 80 03 32 30 31");
    check(&Apdu::result(1, Operation::MonitorStart, Body::new().with(F::CrossRefIdentifier, Value::Octets(hex("00000001")))), p3,
        "00 12 A2 10 02 01 01 30 0B 02 01 47 30 06 55 04 00 00 00 01");
    check(&Apdu::invoke(2, Operation::MakeCall, Body::new()
            .with(F::CallingDevice, Value::DeviceId(dev("201")))
            .with(F::CalledDirectoryNumber, Value::DeviceId(dev("0123456789")))
            .with(F::AutoOriginate, Value::Int(1))), p3,
        "00 22 A1 20 02 01 02 02 01 0A 30 18 30 05 80 03 32 30 31 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 83 01 01");
    check(&Apdu::result(2, Operation::MakeCall, Body::new().with(F::CallingDevice, Value::Connection(conn(&[1, 2], "201")))), p3,
        "00 1D A2 1B 02 01 02 30 16 02 01 0A 30 11 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31");
    check(&Apdu::event(7, EventReport { xref: hex("00000001"), extensions: None, event: Event::Call { kind: EventKind::ServiceInitiated, body: Body::new()
            .with(F::InitiatedConnection, Value::Connection(conn(&[1, 2], "201")))
            .with(F::InitiatingDevice, role("201"))
            .with(F::LocalConnectionInfo, Value::Int(1))
            .with(F::Cause, Value::Int(44)) } }), p3,
        "00 34 A1 32 02 01 07 02 01 15 30 2A 55 04 00 00 00 01 A0 22 B0 20 6B 0F 30 0D 80 02 01 02 A1 07
         30 05 80 03 32 30 31 63 07 30 05 80 03 32 30 31 4E 01 01 0A 01 2C");
    check(&Apdu::event(9, EventReport { xref: hex("00000001"), extensions: None, event: Event::Call { kind: EventKind::Established, body: Body::new()
            .with(F::EstablishedConnection, Value::Connection(conn(&[1, 2], "201")))
            .with(F::AnsweringDevice, role("0123456789"))
            .with(F::CallingDevice, role("201"))
            .with(F::CalledDevice, role("0123456789"))
            .with(F::LastRedirectionDevice, Value::Device(DeviceRef::NotKnown))
            .with(F::LocalConnectionInfo, Value::Int(3))
            .with(F::Cause, Value::Int(78)) } }), p3,
        "00 58 A1 56 02 01 09 02 01 15 30 4E 55 04 00 00 00 01 A0 46 A7 44 6B 0F 30 0D 80 02 01 02 A1 07
         30 05 80 03 32 30 31 63 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 61 07 30 05 80 03 32 30 31
         62 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 64 02 87 00 4E 01 03 0A 01 4E");
    check(&Apdu::invoke(3, Operation::GenerateDigits, Body::new()
            .with(F::ConnectionToSendDigits, Value::Connection(conn(&[1, 2], "201")))
            .with(F::CharactersToSend, Value::Text("*1234567#".try_into().expect("ia5")))), p3,
        "00 27 A1 25 02 01 03 02 02 00 E8 30 1C 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31
         16 09 2A 31 32 33 34 35 36 37 23");
    check(&Apdu::invoke(4, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))), p3,
        "00 0E A1 0C 02 01 04 02 02 00 D3 30 03 0A 01 02");
    check(&Apdu::result(4, Operation::SystemStatus, Body::null()), p3, "00 0D A2 0B 02 01 04 30 06 02 02 00 D3 05 00");
    check(&Apdu::universal_failure(2, ErrorCategory::Operation, Some(12)), p3, "00 0D A3 0B 02 01 02 02 01 01 A0 03 0A 01 0C");
    check(&Apdu::reject(Some(5), RejectProblem::Invoke(1)), p3, "00 08 A4 06 02 01 05 81 01 01");
    check(&Apdu::invoke(6, Operation::MonitorStop, Body::new().with(F::CrossRefIdentifier, Value::Octets(hex("00000001")))), p3,
        "00 10 A1 0E 02 01 06 02 01 49 30 06 55 04 00 00 00 01");
}

#[test]
fn the_same_model_encodes_the_real_oxe_phase_ii_bytes() {
    let p2 = Dialect::Phase2;
    // §4.9: OXE MonitorStart, DeviceID a bare CHOICE.
    check(&Apdu::invoke(1, Operation::MonitorStart, Body::new().with(F::MonitorObject, Value::DeviceId(dev("29707")))), p2,
        "00 11 A1 0F 02 01 01 02 01 47 30 07 80 05 32 39 37 30 37");
    // §1.2: the OXE keep-alive and its answer (systemStatus 52, 2-byte invoke id).
    check(&Apdu::invoke(0x29E8, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))), p2,
        "00 0C A1 0A 02 02 29 E8 02 01 34 0A 01 02");
    check(&Apdu::result(0x29E8, Operation::SystemStatus, Body::null()), p2, "00 0D A2 0B 02 02 29 E8 30 05 02 01 34 05 00");
    // §4.7: OXE SnapshotDevice, bare DeviceID argument.
    check(&Apdu::invoke(3, Operation::SnapshotDevice, Body::new().with(F::SnapshotObject, Value::DeviceId(dev("29707")))), p2,
        "00 0F A1 0D 02 01 03 02 01 4A 80 05 32 39 37 30 37");
    // §4.3: Phase I/II MakeCall (Ericsson AppLink 4 bytes).
    check(&Apdu::invoke(6, Operation::MakeCall, Body::new()
            .with(F::CallingDevice, Value::DeviceId(dev("1144")))
            .with(F::CalledDirectoryNumber, Value::DeviceId(dev("1106")))), p2,
        "00 18 A1 16 02 01 06 02 01 0A 30 0E 80 04 31 31 34 34 62 06 80 04 31 31 30 36");
    // §4.8: Phase II universalFailure tagging.
    check(&Apdu::universal_failure(2, ErrorCategory::Operation, Some(12)), p2, "00 0B A3 09 02 01 02 02 01 01 81 01 0C");
}

/// A representative body for each decoded operation's argument.
fn sample_argument(op: Operation) -> Argument {
    let c = || Value::Connection(conn(&[0x2B, 0x7A], "2005"));
    Argument::Body(match op {
        Operation::MonitorStart => Body::new().with(F::MonitorObject, Value::DeviceId(dev("2005"))),
        Operation::MonitorStop => Body::new().with(F::CrossRefIdentifier, Value::Octets(hex("0135f303"))),
        Operation::MakeCall => Body::new().with(F::CallingDevice, Value::DeviceId(dev("2005"))).with(F::CalledDirectoryNumber, Value::DeviceId(dev("0800123456"))),
        Operation::ClearConnection => Body::new().with(F::ConnectionToBeCleared, c()),
        Operation::GenerateDigits => Body::new().with(F::ConnectionToSendDigits, c()).with(F::CharactersToSend, Value::Text("*42#".try_into().expect("ia5"))),
        Operation::SnapshotDevice => Body::new().with(F::SnapshotObject, Value::DeviceId(dev("2005"))),
        Operation::SystemStatus => Body::new().with(F::SystemStatus, Value::Int(2)),
        Operation::Escape => Body::new().with(F::PrivateData, Value::Raw(hex("04 03 01 02 03"))),
        _ => return Argument::Opaque(hex("30 03 02 01 07")),
    })
}

fn projection(a: &Argument) -> serde_json::Value {
    match a {
        Argument::Body(b) => serde_json::Value::Object(project_fields(b)),
        Argument::Event(e) => serde_json::json!({"xref": hex::encode(&e.xref), "fields": e.event.body().map(project_fields)}),
        Argument::Opaque(b) => serde_json::json!(hex::encode(b)),
        Argument::Absent => serde_json::Value::Null,
    }
}

#[test]
fn every_operation_of_the_opcode_table_round_trips_in_each_dialect() {
    let mut n = 0;
    for (op, (_, p3), (_, p2)) in TABLE {
        for (dialect, code) in [(Dialect::Phase3, p3), (Dialect::Phase2, p2)] {
            let Some(code) = code else {
                let inv = Apdu::Invoke(Invoke { invoke_id: Some(1), linked_id: None, op: Op::Known(*op), argument: Argument::Absent });
                assert!(inv.to_vec(dialect).is_err(), "{op:?} has no code in {dialect:?}");
                continue;
            };
            if *op == Operation::EventReport {
                continue; // covered per event kind below
            }
            let arg = sample_argument(*op);
            let apdu = Apdu::Invoke(Invoke { invoke_id: Some(300), linked_id: None, op: Op::Known(*op), argument: arg.clone() });
            let bytes = apdu.to_vec(dialect).expect("encodable");
            let Apdu::Invoke(back) = Apdu::decode(&Bytes::from(bytes.clone()), dialect).expect("decodes") else { panic!("not an invoke") };
            assert_eq!(back.op, Op::Known(*op), "{op:?} in {dialect:?}");
            assert_eq!(back.op.code(dialect).expect("code").local(), Some(*code));
            assert_eq!(projection(&back.argument), projection(&arg), "{op:?} in {dialect:?}");
            assert_eq!(Apdu::Invoke(back).to_vec(dialect).expect("re-encodes"), bytes);
            n += 1;
        }
    }
    assert!(n >= 40, "only {n} operations checked");
}

#[test]
fn every_event_kind_round_trips_in_each_dialect() {
    for kind in EventKind::ALL {
        for dialect in [Dialect::Phase3, Dialect::Phase2] {
            if kind.position(dialect).is_none() {
                let e = Apdu::event(1, EventReport { xref: hex("01"), extensions: None, event: Event::Call { kind, body: Body::new() } });
                assert!(e.to_vec(dialect).is_err(), "{kind:?} is not a {dialect:?} event");
                continue;
            }
            // The first member of every call event is its connection; add a device and a cause.
            let cstagate::codec::body::Form::Sequence(slots) = kind.form(dialect) else { panic!("events are sequences") };
            let mut body = Body::new().with(slots[0].name, Value::Connection(conn(&[0x2B, 0x7A], "2005")));
            if let Some(dev_slot) = slots.iter().skip(1).find(|s| s.kind == cstagate::codec::body::Kind::Device) {
                body = body.with(dev_slot.name, role("2006"));
            }
            if kind == EventKind::DigitsGenerated {
                body = body.with(F::DigitsGeneratedList, Value::Text("*42#".try_into().expect("ia5")));
            }
            // Built out of order on purpose: the encoder puts members in schema order.
            for (name, v) in [(F::Cause, 22), (F::LocalConnectionInfo, 3)] {
                if slots.iter().any(|s| s.name == name) {
                    body = body.with(name, Value::Int(v));
                }
            }
            let report = EventReport { xref: hex("0135f303"), extensions: Some(hex("7E 03 A0 01 00")), event: Event::Call { kind, body } };
            let arg = Argument::Event(report.clone());
            let bytes = Apdu::event(42, report).to_vec(dialect).expect("encodable");
            let Apdu::Invoke(back) = Apdu::decode(&Bytes::from(bytes.clone()), dialect).expect("decodes") else { panic!("not an invoke") };
            let Argument::Event(ev) = &back.argument else { panic!("not an event") };
            assert_eq!(ev.event.kind(), Some(kind), "{kind:?} in {dialect:?}");
            assert_eq!(projection(&back.argument), projection(&arg), "{kind:?} in {dialect:?}");
            assert_eq!(ev.extensions, Some(hex("7E 03 A0 01 00")));
            assert_eq!(Apdu::Invoke(back).to_vec(dialect).expect("re-encodes"), bytes);
        }
    }
}

#[test]
fn unknown_event_kinds_keep_their_bytes() {
    // Panasonic physicalDeviceFeature [3] (ringer status) from the makecall capture.
    let raw = hex("A3 0A A8 08 63 06 80 04 32 30 30 35");
    let apdu = Apdu::event(12, EventReport { xref: hex("01110005"), extensions: None, event: Event::Other { group: 3, alternative: Some(8), raw: raw.clone() } });
    let bytes = apdu.to_vec(Dialect::Phase3).expect("encodes");
    let back = Apdu::decode(&Bytes::from(bytes), Dialect::Phase3).expect("decodes");
    assert_eq!(back, apdu);
}

/// A BER TLV with a short or one-octet long length (test vectors below 256 bytes).
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content = parts.concat();
    let mut v = vec![tag];
    if content.len() >= 0x80 {
        v.push(0x81);
    }
    v.push(u8::try_from(content.len()).expect("short vector"));
    v.extend_from_slice(&content);
    v
}

/// An OXE ConnectionID (call 2b7a, dynamic device 08b30100: `captures/oxe-csta2-events-smallf00t`
/// frame 1) and OXE-style extensions: a UTCTime in security, an OID/INTEGER item in privateData.
const OXE_CONN: &str = "6B 0A 82 02 2B 7A 83 04 08 B3 01 00";
const OXE_EXT: &str = "7E 20 A0 0F 17 0D 32 35 30 33 30 31 31 36 30 37 32 33 5A A1 0D 30 0B 06 06 2B 0C 89 36 83 78 02 01 00";

fn p2_result(op: u8, value: &[u8]) -> Bytes {
    Bytes::from(tlv(0xA2, &[&[0x02, 0x01, 0x06], &tlv(0x30, &[&[0x02, 0x01, op], value])]))
}
fn p2_invoke(op: u8, value: &[u8]) -> Bytes {
    Bytes::from(tlv(0xA1, &[&[0x02, 0x01, 0x06, 0x02, 0x01, op], value]))
}
fn wrapped(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, parts)
}

/// The argument or result body of a decoded invoke or result.
fn body_of(a: &Apdu) -> &Body {
    match a {
        Apdu::Invoke(Invoke { argument: Argument::Body(b), .. }) => b,
        Apdu::Result(cstagate::codec::ReturnResult { result: Some((_, Argument::Body(b))), .. }) => b,
        other => panic!("no body in {other:?}"),
    }
}

/// Phase II values whose shape no text confirms (asn1/README.md P8) decode whether they come bare
/// or as `SEQUENCE { value, extensions OPTIONAL }` (private data and unknown members included),
/// mean the same either way, and re-encode byte for byte in the form they came.
#[test]
fn phase_ii_unverified_shapes_decode_bare_and_wrapped_and_re_encode_as_they_came() {
    use cstagate::codec::Wrapping;
    let p2 = Dialect::Phase2;
    let (c, ext) = (hex(OXE_CONN).to_vec(), hex(OXE_EXT).to_vec());
    let unknown = [0x84, 0x01, 0x01];
    let call = ConnectionId { call: Some(hex("2b7a")), device: Some(LocalDevice::Dynamic(hex("08b30100"))) };
    // (what, bare, wrapped forms, the member both must yield)
    let cases: Vec<(&str, Bytes, Vec<Bytes>, F, Value)> = vec![
        ("makeCall result", p2_result(10, &c),
            vec![p2_result(10, &wrapped(&[&c])), p2_result(10, &wrapped(&[&c, &ext])), p2_result(10, &wrapped(&[&c, &unknown, &ext]))],
            F::CallingDevice, Value::Connection(call.clone())),
        ("clearConnection argument", p2_invoke(5, &c), vec![p2_invoke(5, &wrapped(&[&c])), p2_invoke(5, &wrapped(&[&c, &ext]))],
            F::ConnectionToBeCleared, Value::Connection(call.clone())),
        ("monitorStop argument", p2_invoke(73, &hex("55 04 01 35 F3 03")), vec![p2_invoke(73, &wrapped(&[&hex("55 04 01 35 F3 03"), &ext]))],
            F::CrossRefIdentifier, Value::Octets(hex("0135f303"))),
        ("snapshotDevice argument", p2_invoke(74, &hex("80 05 32 39 37 30 37")), vec![p2_invoke(74, &wrapped(&[&hex("80 05 32 39 37 30 37"), &ext]))],
            F::SnapshotObject, Value::DeviceId(dev("29707"))),
        ("systemStatus argument", p2_invoke(52, &hex("0A 01 02")), vec![p2_invoke(52, &wrapped(&[&hex("0A 01 02"), &ext]))],
            F::SystemStatus, Value::Int(2)),
        ("snapshotDevice result", p2_result(74, &hex("76 00")), vec![p2_result(74, &wrapped(&[&hex("76 00"), &ext]))],
            F::SnapshotData, Value::Raw(hex("76 00"))),
    ];
    for (what, bare, wrapped_forms, name, value) in cases {
        for (bytes, form) in std::iter::once((bare, Wrapping::Bare)).chain(wrapped_forms.into_iter().map(|w| (w, Wrapping::Wrapped))) {
            let a = Apdu::decode(&bytes, p2).unwrap_or_else(|e| panic!("{what} {form:?} {}: {e}", hex::encode(&bytes)));
            let b = body_of(&a);
            assert_eq!(b.get(name), Some(&value), "{what} {form:?}");
            assert_eq!(b.wrapping, Some(form), "{what}");
            // Kept as it came, even by a sender that would originate the other form.
            let other = if form == Wrapping::Bare { Wrapping::Wrapped } else { Wrapping::Bare };
            assert_eq!(hex::encode(a.shaped(p2, other).to_vec(p2).expect("re-encodes")), hex::encode(&bytes), "{what} {form:?}");
        }
    }
    // Results without data: NULL, extensions, and (P8) the same wrapped in a SEQUENCE.
    // A snapshot result that is a SEQUENCE is its wrapped form, even with no data in it.
    for (op, v) in [(73, "05 00"), (73, OXE_EXT), (73, "30 00"), (74, "30 00"), (5, "30 02 05 00"), (52, "30 24 05 00 7E 20 A0 0F 17 0D 32 35 30 33 30 31 31 36 30 37 32 33 5A A1 0D 30 0B 06 06 2B 0C 89 36 83 78 02 01 00")] {
        let bytes = p2_result(op, &hex(v));
        let a = Apdu::decode(&bytes, p2).unwrap_or_else(|e| panic!("op {op} {v}: {e}"));
        assert_eq!(a.to_vec(p2).expect("re-encodes"), bytes.to_vec(), "op {op} {v}");
    }
}

/// What the gateway (or the simulator) originates keeps today's bare form, or the wrapped form
/// when its PBX profile says so; Phase III is not affected.
#[test]
fn phase_ii_values_we_originate_are_bare_unless_the_profile_says_wrapped() {
    use cstagate::codec::Wrapping;
    let p2 = Dialect::Phase2;
    let c = hex(OXE_CONN).to_vec();
    let call = ConnectionId { call: Some(hex("2b7a")), device: Some(LocalDevice::Dynamic(hex("08b30100"))) };
    let result = Apdu::result(6, Operation::MakeCall, Body::new().with(F::CallingDevice, Value::Connection(call.clone())));
    assert_eq!(result.to_vec(p2).expect("encodes"), p2_result(10, &c).to_vec());
    assert_eq!(result.clone().shaped(p2, Wrapping::Bare).to_vec(p2).expect("encodes"), p2_result(10, &c).to_vec());
    // The worked example of the issue: A2 { 02 id, 30 { 02 0A, 30 { 6B ConnectionID } } }.
    check(&result.clone().shaped(p2, Wrapping::Wrapped), p2, "00 18 A2 16 02 01 06 30 11 02 01 0A 30 0C 6B 0A 82 02 2B 7A 83 04 08 B3 01 00");
    let clear = Apdu::invoke(6, Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(call)));
    assert_eq!(clear.clone().shaped(p2, Wrapping::Wrapped).to_vec(p2).expect("encodes"), p2_invoke(5, &wrapped(&[&c])).to_vec());
    // Phase III has no such values: shaping changes nothing.
    let p3 = Dialect::Phase3;
    assert_eq!(clear.clone().shaped(p3, Wrapping::Wrapped).to_vec(p3).expect("encodes"), clear.to_vec(p3).expect("encodes"));
    // Results without data stay NULL: their form is the standard CHOICE in both phases.
    let nothing = Apdu::result(6, Operation::SystemStatus, Body::null()).shaped(p2, Wrapping::Wrapped);
    assert_eq!(nothing.to_vec(p2).expect("encodes"), p2_result(52, &[0x05, 0x00]).to_vec());
}
