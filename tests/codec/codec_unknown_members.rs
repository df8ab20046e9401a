//! Unknown members (vendor additions, members of a later edition, tags a member table does not
//! name) are kept in their place and re-encoded byte for byte, in both dialects: in event bodies,
//! arguments, results and ACSE APDUs. The inputs are real capture APDUs with members spliced in
//! (the lengths fixed up by [`splice`]), so they look like what a PBX would send.
//!
//! Each test asserts the decoded view too: how many unknown members, where, with which wire tag
//! and which bytes; and that the known members read exactly as in the capture without them.

use crate::common;

use bytes::Bytes;
use common::{apdu, hex, traces};
use cstagate::codec::ber::Tag;
use cstagate::codec::body::{Body, Field, FieldName as F, Value};
use cstagate::codec::{Apdu, Argument, Dialect, Event, Invoke, ReturnResult};
use cstagate::decode::project_fields;

// ---------------------------------------------------------------------------------------------
// A small BER tree editor for canonical (definite, minimal-length) input.

/// One TLV: a node read from the input (its identifier octets, and its content or its children),
/// or bytes written verbatim (a spliced member, in whatever form it has).
#[derive(Clone, Debug)]
enum Node {
    Primitive { id: Vec<u8>, content: Vec<u8> },
    Constructed { id: Vec<u8>, children: Vec<Node> },
    Verbatim(Vec<u8>),
}

fn parse_all(b: &[u8]) -> Vec<Node> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let (n, used) = parse_one(&b[i..]);
        v.push(n);
        i += used;
    }
    v
}

fn parse_one(b: &[u8]) -> (Node, usize) {
    let mut j = 1;
    if b[0] & 0x1F == 0x1F {
        while b[j] & 0x80 != 0 {
            j += 1;
        }
        j += 1;
    }
    let id = b[..j].to_vec();
    let lb = b[j];
    j += 1;
    assert_ne!(lb, 0x80, "splice() takes definite lengths only");
    let len = if lb & 0x80 == 0 {
        usize::from(lb)
    } else {
        let n = usize::from(lb & 0x7F);
        let l = b[j..j + n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        j += n;
        l
    };
    let content = &b[j..j + len];
    let node = if b[0] & 0x20 != 0 { Node::Constructed { id, children: parse_all(content) } } else { Node::Primitive { id, content: content.to_vec() } };
    (node, j + len)
}

fn put_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

fn write(n: &Node, out: &mut Vec<u8>) {
    match n {
        Node::Verbatim(b) => out.extend_from_slice(b),
        Node::Primitive { id, content } => {
            out.extend_from_slice(id);
            put_len(content.len(), out);
            out.extend_from_slice(content);
        }
        Node::Constructed { id, children } => {
            let mut c = Vec::new();
            for ch in children {
                write(ch, &mut c);
            }
            out.extend_from_slice(id);
            put_len(c.len(), out);
            out.extend(c);
        }
    }
}

/// `apdu` with `members` inserted into the constructed value at `path` (child indexes from the
/// APDU's outer TLV down), each at its index among that value's original children (several at
/// one index go in the order given); every enclosing length is fixed up. Also returns where each
/// inserted member ends up among the value's children.
fn splice(apdu: &[u8], path: &[usize], members: &[(usize, &[u8])]) -> (Vec<u8>, Vec<usize>) {
    let mut roots = parse_all(apdu);
    let mut again = Vec::new();
    write(&roots[0], &mut again);
    assert_eq!(hex::encode(&again), hex::encode(apdu), "the capture APDU is not canonical BER; splice() would change it");
    let mut node = &mut roots[0];
    for &i in path {
        node = match node {
            Node::Constructed { children, .. } => &mut children[i],
            other => panic!("path goes through a primitive {other:?}"),
        };
    }
    let Node::Constructed { children, .. } = node else { panic!("path ends at a primitive") };
    let mut at = Vec::new();
    for (k, &(i, m)) in members.iter().enumerate() {
        assert!(k == 0 || members[k - 1].0 <= i, "list the members in order");
        // Earlier inserts shifted this index by their number.
        let pos = i + k;
        children.insert(pos, Node::Verbatim(m.to_vec()));
        at.push(pos);
    }
    let mut out = Vec::new();
    write(&roots[0], &mut out);
    (out, at)
}

/// The tag of a member's first identifier octets, as the codec names it ([`Tag`]).
fn tag_of(member: &[u8]) -> Tag {
    if member[0] & 0x1F != 0x1F {
        return Tag(u32::from(member[0]));
    }
    let mut n = 0u32;
    for &b in &member[1..] {
        n = (n << 7) | u32::from(b & 0x7F);
        if b & 0x80 == 0 {
            break;
        }
    }
    Tag((u32::from(member[0]) << 24) | n)
}

// ---------------------------------------------------------------------------------------------
// Inputs and checks.

/// The first APDU of the capture named `capture…` whose label contains `label`.
fn captured(capture: &str, label: &str) -> (Dialect, Bytes) {
    for t in traces(".frames.tsv").into_iter().filter(|t| t.name.starts_with(capture)) {
        if let Some(f) = t.frames.iter().find(|f| f.label.as_deref().is_some_and(|l| l.split(" | ").next().unwrap_or("").contains(label))) {
            return (t.dialect, apdu(&t, f));
        }
    }
    panic!("no {label:?} in capture {capture}");
}

/// The member list of an event body, argument, result or ACSE APDU.
fn body(a: &Apdu) -> &Body {
    match a {
        Apdu::Invoke(Invoke { argument: Argument::Body(b), .. }) => b,
        Apdu::Invoke(Invoke { argument: Argument::Event(r), .. }) => match &r.event {
            Event::Call { body, .. } => body,
            other => panic!("not a call event: {other:?}"),
        },
        Apdu::Result(ReturnResult { result: Some((_, Argument::Body(b))), .. }) => b,
        Apdu::Aarq(b) | Apdu::Aare(b) | Apdu::Rlrq(b) | Apdu::Rlre(b) | Apdu::Abrt(b) => b,
        other => panic!("no member list in {other:?}"),
    }
}

fn known(b: &Body) -> Vec<Field> {
    b.fields.iter().filter(|f| f.name != F::Unknown).cloned().collect()
}

/// `spliced` (= `original` with `members` inserted) decodes in `d`; the body exposes exactly the
/// inserted members as unknown, at positions `at` (in the order of the wire), each with its wire
/// tag and its bytes verbatim; the known members read as in `original`; and the APDU re-encodes
/// to `spliced` byte for byte.
fn assert_kept(d: Dialect, original: &[u8], spliced: &[u8], members: &[(usize, &[u8])], at: &[usize]) {
    let what = hex::encode(spliced);
    let a = Apdu::decode(&Bytes::copy_from_slice(spliced), d).unwrap_or_else(|e| panic!("{d:?}: {e}\n {what}"));
    let b = body(&a);
    let unknown: Vec<(usize, &Field)> = b.fields.iter().enumerate().filter(|(_, f)| f.name == F::Unknown).collect();
    assert_eq!(unknown.len(), members.len(), "{d:?}: unknown members kept, of {}: {:?}\n {what}", members.len(), b.fields);
    for ((i, f), (&(_, m), &want_at)) in unknown.iter().zip(members.iter().zip(at)) {
        assert_eq!(*i, want_at, "{d:?}: unknown member {} is not in its place: {:?}", hex::encode(m), b.fields);
        assert_eq!(f.tag, Some(tag_of(m)), "{d:?}: wire tag of unknown member {}", hex::encode(m));
        assert_eq!(f.value, Value::Raw(Bytes::copy_from_slice(m)), "{d:?}: bytes of unknown member");
    }
    let plain = Apdu::decode(&Bytes::copy_from_slice(original), d).expect("the capture APDU decodes");
    assert_eq!(known(b), known(body(&plain)), "{d:?}: the known members read differently with unknown members around them");
    assert_eq!(project_fields(b), project_fields(body(&plain)), "{d:?}: the decode view changed");
    let again = a.to_vec(d).expect("re-encodes");
    assert_eq!(hex::encode(&again), what, "{d:?}: re-encoding is not the input byte for byte");
}

/// Splice `members` into `original` at `path` and check them kept in `d` (see [`assert_kept`]).
fn check(d: Dialect, original: &[u8], path: &[usize], members: &[(usize, &[u8])]) -> Vec<u8> {
    let (spliced, at) = splice(original, path, members);
    assert_kept(d, original, &spliced, members, &at);
    spliced
}

// Members no table names (nor their constructed-bit twins: those are malformed, not unknown).
/// `[40]` primitive, high-tag-number form.
const CTX40: &[u8] = &[0x9F, 0x28, 0x02, 0x12, 0x34];
/// `[9]` constructed, holding an OCTET STRING.
const CTX9: &[u8] = &[0xA9, 0x05, 0x04, 0x03, 0x01, 0x02, 0x03];
/// `[APPLICATION 33]` primitive.
const APP33: &[u8] = &[0x5F, 0x21, 0x01, 0x07];
/// `[PRIVATE 127]` primitive.
const PRIV127: &[u8] = &[0xDF, 0x7F, 0x03, 0x41, 0x42, 0x43];
/// `[34]` constructed, high-tag-number form, holding an INTEGER.
const CTX34: &[u8] = &[0xBF, 0x22, 0x03, 0x02, 0x01, 0x01];

// Paths to the member lists: Invoke A1 { id, opcode, argument 30 {..} }; the event report
// 30 { xref, A0 { An {body} } } (Phase II: An { 30 {body} }); ReturnResult A2 { id, 30 { opcode,
// result 30 {..} } }.
const P3_EVENT: &[usize] = &[2, 1, 0];
const P2_EVENT: &[usize] = &[2, 1, 0, 0];
const ARGUMENT: &[usize] = &[2];
const RESULT: &[usize] = &[1, 1];

#[test]
fn phase_iii_event_keeps_unknown_members_before_between_and_after_the_known_ones_byte_for_byte() {
    // Panasonic Established: 6B 63 61 62 64 4E 0A.
    let (d, ev) = captured("panasonic-csta3-makecall", "callControl.established");
    assert_eq!(d, Dialect::Phase3);
    check(d, &ev, P3_EVENT, &[(0, CTX40), (2, CTX9), (2, APP33), (7, PRIV127)]);
    // One alone, right after the connection, and one after the last member.
    check(d, &ev, P3_EVENT, &[(1, CTX34)]);
    check(d, &ev, P3_EVENT, &[(7, CTX9)]);
    // Other event kinds: ServiceInitiated and ConnectionCleared (6B 63 4E 0A).
    for label in ["callControl.serviceInitiated", "callControl.connectionCleared", "callControl.delivered"] {
        let (_, ev) = captured("panasonic-csta3-makecall", label);
        check(d, &ev, P3_EVENT, &[(0, APP33), (2, CTX9), (4, PRIV127)]);
    }
}

#[test]
fn phase_ii_event_keeps_unknown_members_before_between_and_after_the_known_ones_byte_for_byte() {
    // OXE Established (EXPLICIT A5 { 30 {..} }, long-form lengths): 6B 63 61 62 64 4E 0A, then
    // the report's own extensions.
    let (d, ev) = captured("oxe-csta2-events", "callControl.established");
    assert_eq!(d, Dialect::Phase2);
    check(d, &ev, P2_EVENT, &[(0, CTX40), (3, CTX9), (3, APP33), (7, PRIV127)]);
    check(d, &ev, P2_EVENT, &[(1, CTX34)]);
    for label in ["callControl.delivered", "callControl.originated", "callControl.conferenced", "callControl.transferred", "callControl.connectionCleared"] {
        let (_, ev) = captured("oxe-csta2-events", label);
        check(d, &ev, P2_EVENT, &[(0, APP33), (1, CTX9), (2, PRIV127)]);
    }
}

#[test]
fn phase_iii_arguments_keep_unknown_members_byte_for_byte() {
    // MakeCall: 30 calling, 30 called (both required); MonitorStart: 30 object, A0 filter.
    let (d, mc) = captured("panasonic-csta3-makecall", "op=10(makeCall)");
    check(d, &mc, ARGUMENT, &[(0, APP33), (1, CTX40), (2, CTX34)]);
    let (_, ms) = captured("panasonic-csta3-makecall", "op=71(monitorStart)");
    check(d, &ms, ARGUMENT, &[(1, CTX9), (2, PRIV127)]);
}

#[test]
fn phase_iii_results_keep_unknown_members_byte_for_byte() {
    // MonitorStart result: 55 xref, A0 filter; MakeCall result: 6B.
    let (d, ms) = captured("panasonic-csta3-makecall", "returnResult id=1 op=71(monitorStart)");
    check(d, &ms, RESULT, &[(1, CTX40), (2, CTX9)]);
    let (_, mc) = captured("panasonic-csta3-makecall", "op=10(makeCall)");
    let (_, mc_result) = captured("panasonic-csta3-makecall", "returnResult id=3 op=10(makeCall)");
    assert_ne!(mc, mc_result);
    check(d, &mc_result, RESULT, &[(0, PRIV127), (1, APP33)]);
}

#[test]
fn phase_ii_arguments_keep_unknown_members_byte_for_byte() {
    let p2 = Dialect::Phase2;
    // OXE MonitorStart (brief §4.9, the bytes OXE takes): a bare DeviceID CHOICE.
    let ms = hex("A1 0F 02 01 01 02 01 47 30 07 80 05 32 39 37 30 37");
    check(p2, &ms, ARGUMENT, &[(0, CTX40), (1, CTX9)]);
    // Phase I/II MakeCall (brief §4.3): 80 calling, 62 called.
    let mc = hex("A1 16 02 01 06 02 01 0A 30 0E 80 04 31 31 34 34 62 06 80 04 31 31 30 36");
    check(p2, &mc, ARGUMENT, &[(1, APP33), (2, PRIV127)]);
    // MonitorStop in the wrapped form of a bare value (asn1/README.md P8): 30 { 55 xref }.
    let stop = hex("A1 0E 02 01 06 02 01 49 30 06 55 04 01 35 F3 03");
    check(p2, &stop, ARGUMENT, &[(1, CTX34)]);
}

#[test]
fn phase_ii_results_keep_unknown_members_byte_for_byte() {
    let p2 = Dialect::Phase2;
    // The MonitorStart result has the same members in both dialects: the Panasonic one, read as
    // Phase II.
    let (_, ms) = captured("panasonic-csta3-makecall", "returnResult id=1 op=71(monitorStart)");
    check(p2, &ms, RESULT, &[(0, APP33), (2, CTX9)]);
    // OXE MakeCall result in the wrapped form: 30 { 6B connection }.
    let mc = hex("A2 16 02 01 06 30 11 02 01 0A 30 0C 6B 0A 82 02 2B 7A 83 04 08 B3 01 00");
    check(p2, &mc, RESULT, &[(1, CTX40)]);
    // A result without data, wrapped: 30 { 05 00 }.
    let none = hex("A2 0C 02 01 06 30 07 02 01 34 30 02 05 00");
    check(p2, &none, RESULT, &[(1, PRIV127)]);
}

#[test]
fn acse_apdus_keep_unknown_members_byte_for_byte_in_both_dialects() {
    // Panasonic AARE: 80 A1 A2 A3 BE; AARQ: 80 A1 BE.
    let (_, aare) = captured("panasonic-csta3-makecall", "AARE");
    let (_, aarq) = captured("panasonic-csta3-makecall", "AARQ");
    for d in [Dialect::Phase3, Dialect::Phase2] {
        check(d, &aare, &[], &[(1, CTX40), (4, CTX34), (5, PRIV127)]);
        check(d, &aarq, &[], &[(0, APP33), (3, CTX9)]);
    }
}

#[test]
fn a_known_tag_out_of_order_is_kept_as_an_unknown_member_in_its_place() {
    // A second SubjectDeviceID (63) after localConnectionInfo: no slot is left for it, so it is
    // kept as it came, where it came.
    let (d, ev) = captured("panasonic-csta3-makecall", "callControl.established");
    let again = hex("63 08 30 06 80 04 32 30 30 37");
    check(d, &ev, P3_EVENT, &[(6, &again)]);
    let (d2, ev2) = captured("oxe-csta2-events", "callControl.established");
    check(d2, &ev2, P2_EVENT, &[(6, &again)]);
}

#[test]
fn unknown_members_in_forms_the_encoder_never_writes_are_kept_verbatim() {
    // An indefinite length, and a long-form length where the short form would do: the codec
    // writes neither, yet an unknown member comes back exactly as it came.
    let indefinite = hex("A9 80 04 01 07 00 00");
    let long_len = hex("89 81 02 41 42");
    let (d, ev) = captured("panasonic-csta3-makecall", "callControl.established");
    check(d, &ev, P3_EVENT, &[(1, &indefinite), (7, &long_len)]);
    let (d2, ev2) = captured("oxe-csta2-events", "callControl.established");
    check(d2, &ev2, P2_EVENT, &[(1, &indefinite), (7, &long_len)]);
}

/// The regression inputs the fuzzers start from (`tests/fuzz_regressions/apdu_phase3/`,
/// `apdu_phase2/`, `acse/`, replayed through the fuzz oracles by `tests/hostile`) are the spliced
/// captures of the tests above. `CSTAGATE_WRITE_REGRESSIONS=1` (re)writes them.
#[test]
fn the_fuzz_regression_inputs_with_unknown_members_are_these_spliced_captures() {
    let (d3, ev3) = captured("panasonic-csta3-makecall", "callControl.established");
    let (d2, ev2) = captured("oxe-csta2-events", "callControl.established");
    let (_, ms) = captured("panasonic-csta3-makecall", "returnResult id=1 op=71(monitorStart)");
    let (_, mc) = captured("panasonic-csta3-makecall", "op=10(makeCall)");
    let (_, aare) = captured("panasonic-csta3-makecall", "AARE");
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("apdu_phase3/unknown-members-in-established-event", check(d3, &ev3, P3_EVENT, &[(0, CTX40), (2, CTX9), (2, APP33), (7, PRIV127)])),
        ("apdu_phase3/unknown-members-in-makecall-argument", check(d3, &mc, ARGUMENT, &[(0, APP33), (1, CTX40), (2, CTX34)])),
        ("apdu_phase3/unknown-members-in-monitorstart-result", check(d3, &ms, RESULT, &[(1, CTX40), (2, CTX9)])),
        ("apdu_phase2/unknown-members-in-established-event", check(d2, &ev2, P2_EVENT, &[(0, CTX40), (3, CTX9), (3, APP33), (7, PRIV127)])),
        ("apdu_phase2/unknown-members-in-monitorstart-result", check(d2, &ms, RESULT, &[(0, APP33), (2, CTX9)])),
        ("acse/unknown-members-in-aare", check(d3, &aare, &[], &[(1, CTX40), (4, CTX34), (5, PRIV127)])),
    ];
    let dir = common::path("tests/fuzz_regressions");
    for (name, bytes) in inputs {
        let p = dir.join(name);
        if std::env::var("CSTAGATE_WRITE_REGRESSIONS").as_deref() == Ok("1") {
            std::fs::create_dir_all(p.parent().expect("a directory")).expect("writable");
            std::fs::write(&p, &bytes).expect("writable");
        }
        let committed = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(hex::encode(committed), hex::encode(&bytes), "{name}");
    }
}
