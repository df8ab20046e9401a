//! The member tables (`src/codec/schemas.rs`) and the machinery that applies them
//! (`src/codec/body.rs`): every operation that has a table decodes into named members in each
//! dialect, the body answers by member name and kind, and the smaller rules of the tables. These
//! tests were written against the mutants `cargo mutants` left alive in those two files (see
//! TESTING.md).

use crate::common;

use bytes::Bytes;
use common::hex;
use cstagate::codec::body::{Body, FieldName as F, Value};
use cstagate::codec::{Apdu, Argument, ConnectionId, DeviceId, DeviceRef, Dialect, Event, Invoke, LocalDevice, ReturnResult, Wrapping};

fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let content: Vec<u8> = parts.concat();
    assert!(content.len() < 0x80, "short form only");
    let mut v = vec![tag, content.len() as u8];
    v.extend(content);
    v
}
/// Invoke id 6 of operation `op` with `arg`.
fn invoke(op: u8, arg: &[u8]) -> Bytes {
    Bytes::from(tlv(0xA1, &[&[0x02, 0x01, 0x06, 0x02, 0x01, op], arg]))
}
/// Invoke with a two-octet operation code (Phase III systemStatus 211, generateDigits 232).
fn invoke2(op: u8, arg: &[u8]) -> Bytes {
    Bytes::from(tlv(0xA1, &[&[0x02, 0x01, 0x06, 0x02, 0x02, 0x00, op], arg]))
}
fn result(op: &[u8], value: &[u8]) -> Bytes {
    Bytes::from(tlv(0xA2, &[&[0x02, 0x01, 0x06], &tlv(0x30, &[&[0x02, op.len() as u8], op, value])]))
}

fn body_of(a: &Apdu) -> &Body {
    match a {
        Apdu::Invoke(Invoke { argument: Argument::Body(b), .. }) => b,
        Apdu::Result(ReturnResult { result: Some((_, Argument::Body(b))), .. }) => b,
        Apdu::Invoke(Invoke { argument: Argument::Event(r), .. }) => r.event.body().expect("a call event"),
        other => panic!("not decoded into members (no table?): {other:?}"),
    }
}

fn dev(d: &str) -> DeviceId {
    DeviceId::dialing(d).expect("ascii")
}

const P3_CONN: &str = "6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 30 31";
const OXE_CONN: &str = "6B 0A 82 02 2B 7A 83 04 08 B3 01 00";

#[test]
fn every_argument_and_result_with_a_table_decodes_into_its_named_members_in_both_dialects() {
    let (p3, p2) = (Dialect::Phase3, Dialect::Phase2);
    let h = |s: &str| hex(s).to_vec();
    let seq = |parts: &[&[u8]]| tlv(0x30, parts);
    let (c3, c2) = (h(P3_CONN), h(OXE_CONN));
    let dev3 = h("30 05 80 03 32 30 31");
    let xref = h("55 04 00 00 00 01");
    let private = h("E1 03 04 01 07");
    // (what, dialect, APDU, the members it must decode into, whether the value is NULL)
    let cases: Vec<(&str, Dialect, Bytes, Vec<F>, bool)> = vec![
        ("monitorStart argument", p3, invoke(71, &seq(&[&dev3])), vec![F::MonitorObject], false),
        ("monitorStart argument", p2, invoke(71, &h("30 07 80 05 32 39 37 30 37")), vec![F::MonitorObject], false),
        ("monitorStop argument", p3, invoke(73, &seq(&[&xref])), vec![F::CrossRefIdentifier], false),
        ("monitorStop argument", p2, invoke(73, &xref), vec![F::CrossRefIdentifier], false),
        ("makeCall argument", p3, invoke(10, &seq(&[&dev3, &h("30 05 80 03 32 30 32")])), vec![F::CallingDevice, F::CalledDirectoryNumber], false),
        ("makeCall argument", p2, invoke(10, &h("30 0E 80 04 31 31 34 34 62 06 80 04 31 31 30 36")), vec![F::CallingDevice, F::CalledDirectoryNumber], false),
        ("clearConnection argument", p3, invoke(5, &seq(&[&c3])), vec![F::ConnectionToBeCleared], false),
        ("clearConnection argument", p2, invoke(5, &c2), vec![F::ConnectionToBeCleared], false),
        ("generateDigits argument", p3, invoke2(232, &seq(&[&c3, &h("16 03 2A 31 23")])), vec![F::ConnectionToSendDigits, F::CharactersToSend], false),
        ("sendDTMFTones argument", p2, invoke(19, &seq(&[&c2, &h("16 03 2A 31 23")])), vec![F::ConnectionToSendDigits, F::CharactersToSend], false),
        ("snapshotDevice argument", p3, invoke(74, &seq(&[&dev3])), vec![F::SnapshotObject], false),
        ("snapshotDevice argument", p2, invoke(74, &h("80 05 32 39 37 30 37")), vec![F::SnapshotObject], false),
        ("systemStatus argument", p3, invoke2(211, &seq(&[&h("0A 01 02")])), vec![F::SystemStatus], false),
        ("systemStatus argument", p2, invoke(52, &h("0A 01 02")), vec![F::SystemStatus], false),
        ("escape argument", p3, invoke(51, &private), vec![F::PrivateData], false),
        ("escape argument", p2, invoke(51, &private), vec![F::PrivateData], false),
        ("monitorStart result", p3, result(&[71], &seq(&[&xref])), vec![F::CrossRefIdentifier], false),
        ("monitorStart result", p2, result(&[71], &seq(&[&xref])), vec![F::CrossRefIdentifier], false),
        ("makeCall result", p3, result(&[10], &seq(&[&c3])), vec![F::CallingDevice], false),
        ("makeCall result", p2, result(&[10], &c2), vec![F::CallingDevice], false),
        ("makeCall result without data", p2, result(&[10], &h("05 00")), vec![], true),
        ("snapshotDevice result", p3, result(&[74], &h("30 02 05 00")), vec![F::SnapshotData], false),
        ("snapshotDevice result", p2, result(&[74], &h("76 00")), vec![F::SnapshotData], false),
        ("snapshotDevice result without data", p2, result(&[74], &h("05 00")), vec![], true),
        ("escape result", p3, result(&[51], &private), vec![F::PrivateData], false),
        ("escape result", p2, result(&[51], &private), vec![F::PrivateData], false),
        ("monitorStop result", p3, result(&[73], &h("05 00")), vec![], true),
        ("monitorStop result", p2, result(&[73], &h("05 00")), vec![], true),
        ("clearConnection result", p3, result(&[5], &h("7E 02 04 00")), vec![F::Extensions], false),
        ("clearConnection result", p2, result(&[5], &h("05 00")), vec![], true),
        ("generateDigits result", p3, result(&[0, 232], &h("05 00")), vec![], true),
        ("sendDTMFTones result", p2, result(&[19], &h("7E 02 04 00")), vec![F::Extensions], false),
        ("systemStatus result", p3, result(&[0, 211], &h("05 00")), vec![], true),
        ("systemStatus result", p2, result(&[52], &h("05 00")), vec![], true),
    ];
    for (what, d, bytes, names, null) in cases {
        let a = Apdu::decode(&bytes, d).unwrap_or_else(|e| panic!("{what} {d:?}: {e}"));
        let b = body_of(&a);
        let got: Vec<F> = b.fields.iter().map(|f| f.name).collect();
        assert_eq!(got, names, "{what} {d:?}: members");
        assert_eq!(b.null, null, "{what} {d:?}: NULL");
        assert_eq!(hex::encode(a.to_vec(d).expect("re-encodes")), hex::encode(&bytes), "{what} {d:?}: re-encoding");
    }
}

#[test]
fn a_decoded_body_answers_by_member_name_and_kind() {
    // Brief §4.9 Established (Phase III).
    let ev = hex("A1 56 02 01 09 02 01 15 30 4E 55 04 00 00 00 01 A0 46 A7 44 6B 0F 30 0D 80 02 01 02 A1 07
        30 05 80 03 32 30 31 63 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 61 07 30 05 80 03 32 30 31
        62 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 64 02 87 00 4E 01 03 0A 01 4E");
    let a = Apdu::decode(&ev, Dialect::Phase3).expect("decodes");
    let b = body_of(&a);
    let conn = ConnectionId { call: Some(hex("0102")), device: Some(LocalDevice::Static(dev("201"))) };
    assert_eq!(b.get(F::Cause), Some(&Value::Int(78)));
    assert_eq!(b.get(F::CorrelatorData), None);
    assert_eq!(b.int(F::Cause), Some(78));
    assert_eq!(b.int(F::LocalConnectionInfo), Some(3));
    assert_eq!(b.int(F::CallingDevice), None, "not an integer member");
    assert_eq!(b.device(F::AnsweringDevice), Some(&DeviceRef::Id(dev("0123456789"))));
    assert_eq!(b.device(F::LastRedirectionDevice), Some(&DeviceRef::NotKnown));
    assert_eq!(b.device(F::Cause), None);
    assert_eq!(b.device_id(F::CallingDevice), Some(&dev("201")), "a device in a role");
    assert_eq!(b.device_id(F::LastRedirectionDevice), None, "notKnown has no DeviceID");
    assert_eq!(b.digits(F::CalledDevice).as_deref(), Some("0123456789"));
    assert_eq!(b.digits(F::Cause), None);
    assert_eq!(b.connection(F::EstablishedConnection), Some(&conn));
    assert_eq!(b.connection(F::CallingDevice), None);
    assert_eq!(b.first_connection(), Some(&conn));
    assert_eq!(b.octets(F::Cause), None);
    assert_eq!(b.text(F::Cause), None);

    // A plain DeviceID member (MakeCall), octets (MonitorStart result), text (GenerateDigits).
    let mc = Apdu::decode(&invoke(10, &hex("30 0E 30 05 80 03 32 30 31 30 05 80 03 32 30 32")), Dialect::Phase3).expect("decodes");
    assert_eq!(body_of(&mc).device_id(F::CalledDirectoryNumber), Some(&dev("202")));
    assert_eq!(body_of(&mc).digits(F::CallingDevice).as_deref(), Some("201"));
    assert_eq!(body_of(&mc).device(F::CallingDevice), None, "a plain DeviceID is not a device in a role");
    assert_eq!(body_of(&mc).first_connection(), None);
    let ms = Apdu::decode(&result(&[71], &hex("30 06 55 04 00 00 00 01")), Dialect::Phase3).expect("decodes");
    assert_eq!(body_of(&ms).octets(F::CrossRefIdentifier), Some(&hex("00000001")));
    let gd = Apdu::decode(&invoke2(232, &tlv(0x30, &[&hex(P3_CONN), &hex("16 03 2A 31 23")])), Dialect::Phase3).expect("decodes");
    assert_eq!(body_of(&gd).text(F::CharactersToSend).map(|t| t.as_str()), Some("*1#"));
    assert_eq!(body_of(&gd).text(F::ConnectionToSendDigits), None);

    // The first connection member, wherever it is.
    let built = Body::new().with(F::Cause, Value::Int(1)).with(F::DroppedConnection, Value::Connection(conn.clone()));
    assert_eq!(built.first_connection(), Some(&conn));
}

#[test]
fn the_phase_ii_result_forms_are_named_bare_and_wrapped_and_nothing_else() {
    assert_eq!("bare".parse::<Wrapping>(), Ok(Wrapping::Bare));
    assert_eq!("wrapped".parse::<Wrapping>(), Ok(Wrapping::Wrapped));
    for bad in ["", "Bare", "WRAPPED", "sequence"] {
        let e = bad.parse::<Wrapping>().expect_err(bad);
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
}

#[test]
fn an_aare_diagnostic_keeps_its_source_service_user_or_service_provider() {
    // Panasonic AARE (result 0, diagnostic service-user 1), and the same with service-provider 2.
    for (diag, source, value) in [("A3 05 A1 03 02 01 01", 1u8, 1i64), ("A3 05 A2 03 02 01 02", 2, 2)] {
        let aare = hex(&format!("61 2F 80 02 07 80 A1 07 06 05 2B 0C 00 81 5A A2 03 02 01 00 {diag} BE 14 28 12 06 07 2B 0C 00 82 1D 81 48 A0 07 A0 05 03 03 00 08 00"));
        for d in [Dialect::Phase3, Dialect::Phase2] {
            let a = Apdu::decode(&aare, d).unwrap_or_else(|e| panic!("{diag}: {e}"));
            let Apdu::Aare(b) = &a else { panic!("not an AARE") };
            assert_eq!(b.get(F::ResultSourceDiagnostic), Some(&Value::Diagnostic { source, value }), "{diag}");
            assert_eq!(hex::encode(a.to_vec(d).expect("re-encodes")), hex::encode(&aare), "{diag}");
        }
    }
}

/// The event report of `ev` decoded in `from`, its body re-encoded in `to`.
fn event_in_other_dialect(ev: &Bytes, from: Dialect, to: Dialect) -> Apdu {
    let a = Apdu::decode(ev, from).expect("decodes");
    let bytes = a.to_vec(to).expect("encodes in the other dialect");
    Apdu::decode(&Bytes::from(bytes), to).expect("the other dialect decodes it")
}

#[test]
fn a_member_re_encoded_in_the_other_dialect_takes_that_dialects_tag() {
    // OXE sends Originated's callingDevice as CallingDeviceID (61); ECMA-285 has SubjectDeviceID
    // (63) there. Decoded in Phase II and written in Phase III, the member takes 63.
    let t = common::traces(".frames.tsv").into_iter().find(|t| t.name.starts_with("oxe")).expect("the OXE capture");
    let f = t.frames.iter().find(|f| f.label.as_deref().is_some_and(|l| l.contains("callControl.originated"))).expect("an Originated");
    let ev = common::apdu(&t, f);
    let p2 = Apdu::decode(&ev, Dialect::Phase2).expect("decodes");
    let calling = body_of(&p2).fields.iter().find(|f| f.name == F::CallingDevice).expect("callingDevice").clone();
    assert_eq!(calling.tag.map(|t| t.0), Some(0x61), "the capture's callingDevice tag");
    let p3 = event_in_other_dialect(&ev, Dialect::Phase2, Dialect::Phase3);
    let Apdu::Invoke(Invoke { argument: Argument::Event(r), .. }) = &p3 else { panic!("not an event") };
    let Event::Call { body, .. } = &r.event else { panic!("not a call event") };
    let moved = body.fields.iter().find(|f| f.name == F::CallingDevice).expect("callingDevice in Phase III");
    assert_eq!(moved.tag.map(|t| t.0), Some(0x63), "Phase III callingDevice is a SubjectDeviceID");
    assert_eq!(moved.value, calling.value);
}

#[test]
fn an_argument_or_result_sequence_under_another_tag_is_refused_not_rewritten() {
    // Found by the fuzz oracle's byte-for-byte check (FUZZING.md finding 6): a MakeCall argument
    // under SET (31) instead of SEQUENCE (30), and a MonitorStart result under [APPLICATION 21]
    // (35), decoded and went out again under 30.
    let cases = [
        (Dialect::Phase3, "a12702010302010a311f5f21010730068004323030359f280212343006800432303036bf2203020101", 8),
        (Dialect::Phase2, "a20e0201023009020147350455020001", 10),
    ];
    for (d, input, at) in cases {
        let e = Apdu::decode(&Bytes::from(hex::decode(input).expect("hex")), d).expect_err(input);
        assert!(matches!(e.kind, cstagate::codec::ErrorKind::UnexpectedTag { expected: "SEQUENCE", .. }), "{d:?}: {e}");
        assert_eq!(e.offset, at, "{d:?}: {e}");
        // The same APDU under 30 decodes and re-encodes as it came.
        let mut fixed = hex::decode(input).expect("hex");
        fixed[at] = 0x30;
        let a = Apdu::decode(&Bytes::from(fixed.clone()), d).unwrap_or_else(|e| panic!("{d:?}: {e}"));
        assert_eq!(a.to_vec(d).expect("re-encodes"), fixed);
    }
}

#[test]
fn an_invoke_keeps_its_linked_id_present_or_explicitly_absent() {
    // Found by the byte-for-byte fuzz oracle (FUZZING.md finding 7): the `absent [1] NULL`
    // alternative of linkedId was read and dropped, so the invoke went out without it.
    use cstagate::codec::LinkedId;
    let cases = [
        (Dialect::Phase3, "a10c020180810006052b0c008134", Some(LinkedId::Absent)),
        (Dialect::Phase2, "a1140201bf81000201336b0a82022b7a830408b30100", Some(LinkedId::Absent)),
        (Dialect::Phase3, "a111020102800101020149300655040000 0001", Some(LinkedId::Present(1))),
        (Dialect::Phase3, "a10e020102020149300655040000 0001", None),
    ];
    for (d, input, linked) in cases {
        let bytes = hex(input);
        let a = Apdu::decode(&bytes, d).unwrap_or_else(|e| panic!("{d:?} {input}: {e}"));
        let Apdu::Invoke(i) = &a else { panic!("not an invoke") };
        assert_eq!(i.linked_id, linked, "{input}");
        assert_eq!(hex::encode(a.to_vec(d).expect("re-encodes")), hex::encode(&bytes), "{d:?}: re-encoding");
    }
}

#[test]
fn members_built_in_any_order_go_out_in_the_order_of_the_table() {
    // Established, Phase III: established connection, answering device, ..., cause.
    let conn = ConnectionId { call: Some(hex("0102")), device: Some(LocalDevice::Static(dev("201"))) };
    let body = Body::new()
        .with(F::Cause, Value::Int(22))
        .with(F::AnsweringDevice, Value::Device(DeviceRef::Id(dev("201"))))
        .with(F::LocalConnectionInfo, Value::Int(3))
        .with(F::EstablishedConnection, Value::Connection(conn));
    let ev = Apdu::event(1, cstagate::codec::EventReport { xref: hex("00000001"), extensions: None, event: Event::Call { kind: cstagate::codec::EventKind::Established, body } });
    let a = Apdu::decode(&Bytes::from(ev.to_vec(Dialect::Phase3).expect("encodes")), Dialect::Phase3).expect("decodes");
    let names: Vec<F> = body_of(&a).fields.iter().map(|f| f.name).collect();
    assert_eq!(names, vec![F::EstablishedConnection, F::AnsweringDevice, F::LocalConnectionInfo, F::Cause]);
}

#[test]
fn a_member_the_dialect_has_no_slot_for_is_left_out_unless_it_is_raw_bytes() {
    // MakeCall: Phase II has no autoOriginate and no userData. A typed member it cannot express is
    // left out; a member held as raw bytes goes out verbatim, in its place.
    let body = Body::new()
        .with(F::CallingDevice, Value::DeviceId(dev("1144")))
        .with(F::CalledDirectoryNumber, Value::DeviceId(dev("1106")))
        .with(F::AutoOriginate, Value::Int(1))
        .with(F::UserData, Value::Raw(hex("7D 02 04 00")));
    let bytes = Apdu::invoke(6, cstagate::codec::Operation::MakeCall, body).to_vec(Dialect::Phase2).expect("encodes");
    assert_eq!(hex::encode(bytes), hex::encode(hex("A1 1A 02 01 06 02 01 0A 30 12 80 04 31 31 34 34 62 06 80 04 31 31 30 36 7D 02 04 00")));
}

#[test]
fn a_member_with_the_wrong_constructed_bit_is_malformed_and_a_missing_mandatory_member_is_named() {
    let d = Dialect::Phase3;
    // Panasonic ServiceInitiated with localConnectionInfo constructed (6E instead of 4E).
    let ev = hex("A1 36 02 01 02 02 01 15 30 2E 55 04 01 11 00 05 A0 26 B0 24 6B 12 30 10 80 04 30 30 36 33 A1 08 30 06 80 04 32 30 30 36 63 08 30 06 80 04 32 30 30 36 4E 01 01 0A 01 16");
    assert!(Apdu::decode(&ev, d).is_ok(), "the capture decodes");
    let mut bad = ev.to_vec();
    bad[50] = 0x6E;
    let e = Apdu::decode(&Bytes::from(bad), d).expect_err("a constructed localConnectionInfo");
    assert_eq!((e.kind.clone(), e.offset), (cstagate::codec::ErrorKind::MustBePrimitive("member"), 50), "{e}");
    // MakeCall without its called number; Established without its connection.
    let e = Apdu::decode(&invoke(10, &hex("30 07 30 05 80 03 32 30 31")), d).expect_err("no calledDirectoryNumber");
    assert_eq!(e.kind, cstagate::codec::ErrorKind::Missing("calledDirectoryNumber"), "{e}");
    let e = Apdu::decode(&hex("A1 19 02 01 07 02 01 15 30 11 55 04 00 00 00 01 A0 09 A7 07 63 05 30 03 80 01 31"), d).expect_err("no establishedConnection");
    assert_eq!(e.kind, cstagate::codec::ErrorKind::Missing("establishedConnection"), "{e}");
}
