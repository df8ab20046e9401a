//! CSTA XML (ECMA-323): every message the gateway and the simulator use, in the shapes real PBXs
//! send (default namespace of any edition, old `ecma.ch` URIs, `ns3:` prefixes, no namespace,
//! pretty or single-line, with or without the declaration, private data and unknown elements
//! anywhere), decodes to the same model; our encodings parse back; kept bytes survive.

use bytes::Bytes;
use cstagate::codec::body::FieldName as F;
use cstagate::codec::xml::{ProtocolVersion, XmlMessage};
use cstagate::codec::{Apdu, Argument, Event, EventKind, Framing, Op, Operation, Value};
use cstagate::csta::{self, CallEvent, CallId};

fn framed(id: &str, doc: &str) -> Bytes {
    Bytes::from(format!("{id}{doc}"))
}

fn decode(id: &str, doc: &str) -> XmlMessage {
    XmlMessage::decode(&framed(id, doc), Framing::XmlHeader).unwrap_or_else(|e| panic!("{e}: {doc}"))
}

fn apdu(id: &str, doc: &str) -> Apdu {
    match decode(id, doc) {
        XmlMessage::Csta(a) => a,
        other => panic!("not CSTA: {other:?}"),
    }
}

/// The same document in the shapes of the issue: `{r}` is the root name, `{b}` the members.
fn shapes(root: &str, members: &str) -> Vec<String> {
    let ns4 = "http://www.ecma-international.org/standards/ecma-323/csta/ed4";
    vec![
        format!(r#"<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="{ns4}">{members}</{root}>"#),
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root}\n  xmlns=\"http://www.ecma-international.org/standards/ecma-323/csta/ed6\"\n  xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n  {}\n</{root}>\n", members.replace("><", ">\n  <")),
        format!(r#"<{root} xmlns="http://www.ecma.ch/standards/ecma-323/csta/ed2">{members}</{root}>"#),
        format!(r#"<ns3:{root} xmlns:ns3="{ns4}">{}</ns3:{root}>"#, prefix(members)),
        format!("<{root}>{members}<extensions><privateData><private><vendor:x xmlns:vendor=\"urn:v\">1</vendor:x></private></privateData></extensions></{root}>"),
        format!("<{root}><vendorThing a=\"1\"><deep/></vendorThing>{members}</{root}>"),
    ]
}

/// `<a>` → `<ns3:a>` for every element of a fragment.
fn prefix(members: &str) -> String {
    members.replace("</", "\u{1}").replace('<', "<ns3:").replace('\u{1}', "</ns3:")
}

#[test]
fn make_call_and_its_response_in_every_shape() {
    for doc in shapes("MakeCall", r#"<callingDevice typeOfNumber="explicitPublic:subscriber">2005</callingDevice><calledDirectoryNumber>0800123</calledDirectoryNumber><autoOriginate>prompt</autoOriginate>"#) {
        let Apdu::Invoke(i) = apdu("0042", &doc) else { panic!("{doc}") };
        assert_eq!((i.invoke_id, i.op.clone()), (Some(42), Op::Known(Operation::MakeCall)), "{doc}");
        let Argument::Body(b) = &i.argument else { panic!("{doc}") };
        assert_eq!(csta::make_call_args(b), Some(("2005".into(), "0800123".into())), "{doc}");
        assert_eq!(b.int(F::AutoOriginate), Some(0), "{doc}");
    }
    let body = "<callingDevice><callID>FF000100000000004A7F8F4F3C0E0000</callID><deviceID>N&lt;302118840100&gt;;noa=nk</deviceID></callingDevice>";
    for doc in shapes("MakeCallResponse", body) {
        let Apdu::Result(r) = apdu("0042", &doc) else { panic!("{doc}") };
        let Some((Op::Known(Operation::MakeCall), Argument::Body(b))) = &r.result else { panic!("{doc}") };
        assert_eq!(csta::made_call(b), Some(CallId::from(&b"FF000100000000004A7F8F4F3C0E0000"[..])), "{doc}");
        assert_eq!(b.connection(F::CallingDevice).and_then(|c| c.device_digits()).as_deref(), Some("302118840100"), "{doc}");
    }
}

#[test]
fn events_decode_to_the_engine_s_call_events() {
    let conn = "<callID>4711</callID><deviceID>2005</deviceID>";
    let cases = [
        ("ServiceInitiatedEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><initiatedConnection>{conn}</initiatedConnection><initiatingDevice><deviceIdentifier>2005</deviceIdentifier></initiatingDevice><localConnectionInfo>initiated</localConnectionInfo><cause>newCall</cause>"), EventKind::ServiceInitiated),
        ("OriginatedEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><originatedConnection>{conn}</originatedConnection><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>"), EventKind::Originated),
        ("DeliveredEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><connection>{conn}</connection><alertingDevice><deviceIdentifier>0800</deviceIdentifier></alertingDevice><callingDevice><notKnown/></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><lastRedirectionDevice><numberDialed>0800</numberDialed></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause>"), EventKind::Delivered),
        ("EstablishedEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><establishedConnection>{conn}</establishedConnection><answeringDevice><deviceIdentifier>0800</deviceIdentifier></answeringDevice><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause>"), EventKind::Established),
        ("NetworkReachedEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><outboundConnection>{conn}</outboundConnection><networkInterfaceUsed><deviceIdentifier>T1</deviceIdentifier></networkInterfaceUsed><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause>"), EventKind::NetworkReached),
        ("FailedEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><failedConnection>{conn}</failedConnection><failingDevice><deviceIdentifier>0800</deviceIdentifier></failingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>fail</localConnectionInfo><cause>busy</cause>"), EventKind::Failed),
        ("ConnectionClearedEvent", format!("<monitorCrossRefID>77</monitorCrossRefID><droppedConnection>{conn}</droppedConnection><releasingDevice><deviceIdentifier>2005</deviceIdentifier></releasingDevice><localConnectionInfo>null</localConnectionInfo><cause>normalClearing</cause>"), EventKind::ConnectionCleared),
    ];
    for (root, members, kind) in cases {
        for doc in shapes(root, &members) {
            let Apdu::Invoke(i) = apdu("9999", &doc) else { panic!("{doc}") };
            assert_eq!(i.invoke_id, Some(9999));
            let Argument::Event(ev) = &i.argument else { panic!("{doc}") };
            assert_eq!(ev.xref.as_ref(), b"77", "{doc}");
            let Event::Call { kind: k, body } = &ev.event else { panic!("{doc}") };
            assert_eq!(*k, kind, "{doc}");
            let e = csta::call_event(*k, body).unwrap_or_else(|| panic!("no call event: {doc}"));
            assert_eq!(e.call(), &CallId::from(&b"4711"[..]), "{doc}");
            if kind == EventKind::Failed {
                assert_eq!(e, CallEvent::Failed { call: CallId::from(&b"4711"[..]), cause: Some(3) }, "busy is cause 3");
            }
        }
    }
}

#[test]
fn monitor_start_response_error_and_system_status() {
    for doc in shapes("MonitorStart", "<monitorObject><deviceObject>2005</deviceObject></monitorObject>") {
        let Apdu::Invoke(i) = apdu("0001", &doc) else { panic!() };
        let Argument::Body(b) = &i.argument else { panic!() };
        assert_eq!(b.digits(F::MonitorObject).as_deref(), Some("2005"), "{doc}");
    }
    for doc in shapes("MonitorStartResponse", "<monitorCrossRefID>1234567</monitorCrossRefID><actualMonitorFilter><callcontrol/></actualMonitorFilter>") {
        let Apdu::Result(r) = apdu("0001", &doc) else { panic!() };
        let Some((_, Argument::Body(b))) = &r.result else { panic!() };
        assert_eq!(b.octets(F::CrossRefIdentifier).map(|x| x.as_ref()), Some(&b"1234567"[..]), "{doc}");
    }
    for (cat, val, expect) in [("operation", "invalidCallID", 11), ("systemResourceAvailibility", "resourceBusy", 2), ("systemResourceAvailability", "2", 2)] {
        let doc = format!("<CSTAErrorCode xmlns=\"http://www.ecma-international.org/standards/ecma-323/csta/ed4\"><{cat}>{val}</{cat}></CSTAErrorCode>");
        let Apdu::Error(e) = apdu("0003", &doc) else { panic!() };
        let Some(cstagate::codec::apdu::ErrorParameter::UniversalFailure(u)) = e.parameter else { panic!("{doc}") };
        assert_eq!(u.value, Some(expect), "{doc}");
    }
    let Apdu::Invoke(i) = apdu("0005", "<SystemStatus><systemStatus>normal</systemStatus></SystemStatus>") else { panic!() };
    assert_eq!(i.op, Op::Known(Operation::SystemStatus));
    let Argument::Body(b) = &i.argument else { panic!() };
    assert_eq!(b.int(F::SystemStatus), Some(2));
}

#[test]
fn our_encodings_parse_back_to_the_same_model() {
    let call = CallId::from(&b"FF0001"[..]);
    let msgs = [
        Apdu::invoke(7, Operation::MakeCall, csta::make_call("2005", "0800123").unwrap()),
        Apdu::invoke(8, Operation::MonitorStart, csta::monitor_start("2005").unwrap()),
        Apdu::invoke(9, Operation::ClearConnection, csta::clear_connection(&call, "2005")),
        Apdu::invoke(10, Operation::GenerateDigits, csta::generate_digits(&call, "2005", "*123#").unwrap()),
        Apdu::result(7, Operation::MakeCall, csta::make_call_result(&call, "2005")),
    ];
    for m in msgs {
        let wire = XmlMessage::Csta(m.clone()).to_vec(Framing::XmlHeader, ProtocolVersion::Ed4).unwrap();
        let back = XmlMessage::decode(&Bytes::from(wire.clone()), Framing::XmlHeader).unwrap();
        assert_eq!(back, XmlMessage::Csta(m), "{}", String::from_utf8_lossy(&wire));
    }
}

#[test]
fn unknown_elements_and_private_data_survive_re_encoding() {
    let doc = r#"<EstablishedEvent xmlns="urn:x"><monitorCrossRefID>77</monitorCrossRefID><vendorThing a="1"><deep>x</deep></vendorThing><establishedConnection><callID>1</callID><deviceID typeOfNumber="explicitPublic:subscriber">N&lt;2005&gt;;noa=nk</deviceID></establishedConnection><extensions><privateData><private>ab</private></privateData></extensions></EstablishedEvent>"#;
    let m = decode("9999", doc);
    let wire = m.to_vec(Framing::XmlHeader, ProtocolVersion::Ed4).unwrap();
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("9999"), "{text}");
    for kept in [r#"<vendorThing a="1"><deep>x</deep></vendorThing>"#, "<extensions><privateData><private>ab</private></privateData></extensions>", r#"<deviceID typeOfNumber="explicitPublic:subscriber">N&lt;2005&gt;;noa=nk</deviceID>"#] {
        assert!(text.contains(kept), "{kept} lost: {text}");
    }
    assert_eq!(XmlMessage::decode(&Bytes::from(wire), Framing::XmlHeader).unwrap(), m, "and it decodes to the same model");
    let Apdu::Invoke(i) = apdu("9999", doc) else { panic!() };
    let Argument::Event(ev) = i.argument else { panic!() };
    let Event::Call { body, .. } = ev.event else { panic!() };
    assert!(body.fields.iter().any(|f| matches!(&f.value, Value::Raw(r) if r.starts_with(b"<vendorThing"))));
}

/// The first event's connection: its call id and its device's digits as text.
fn connection_of(m: &XmlMessage) -> (Vec<u8>, String) {
    let XmlMessage::Csta(Apdu::Invoke(i)) = m else { panic!("{m:?}") };
    let Argument::Event(ev) = &i.argument else { panic!() };
    let Event::Call { body, .. } = &ev.event else { panic!() };
    let c = body.connection(F::EstablishedConnection).expect("connection");
    let Some(cstagate::codec::LocalDevice::Static(d)) = &c.device else { panic!() };
    let cstagate::codec::DeviceIdentifier::Dialing(t) = &d.ident else { panic!("{d:?}") };
    (c.call.clone().expect("call").to_vec(), t.as_str().to_owned())
}

#[test]
fn text_is_trimmed_of_xml_white_space_only_and_a_carriage_return_survives_re_encoding() {
    let doc = "<EstablishedEvent><monitorCrossRefID>1</monitorCrossRefID><establishedConnection><callID>\n  \u{a0}47\u{85}11 \t</callID><deviceID>20&#13;05</deviceID></establishedConnection></EstablishedEvent>";
    let m = decode("9999", doc);
    assert_eq!(connection_of(&m), ("\u{a0}47\u{85}11".as_bytes().to_vec(), "20\r05".to_owned()), "a no-break space and an NEL are content, not white space");
    let wire = m.to_vec(Framing::XmlHeader, ProtocolVersion::Ed4).unwrap();
    let text = String::from_utf8(wire.clone()).unwrap();
    assert!(text.contains("<deviceID>20&#13;05</deviceID>"), "a literal CR would read as LF in any other parser: {text}");
    assert_eq!(XmlMessage::decode(&Bytes::from(wire), Framing::XmlHeader).unwrap(), m);
}

#[test]
fn characters_xml_cannot_carry_read_as_they_are_written() {
    let doc = "<EstablishedEvent><monitorCrossRefID>1</monitorCrossRefID><establishedConnection><callID>a\u{1}b&#2;c\u{fffe}</callID><deviceID>2005</deviceID></establishedConnection></EstablishedEvent>";
    let m = decode("9999", doc);
    assert_eq!(connection_of(&m).0, "a?b?c\u{fffd}".as_bytes());
    let wire = m.to_vec(Framing::XmlHeader, ProtocolVersion::Ed4).unwrap();
    assert_eq!(XmlMessage::decode(&Bytes::from(wire), Framing::XmlHeader).unwrap(), m);
}

#[test]
fn a_kept_fragment_carries_the_prefix_declarations_it_needs() {
    let doc = r#"<ns3:EstablishedEvent xmlns:ns3="urn:csta" xmlns:v="urn:vendor"><ns3:monitorCrossRefID>1</ns3:monitorCrossRefID><ns3:establishedConnection xmlns:w="urn:w"><ns3:callID>1</ns3:callID><ns3:deviceID w:kind="x">2005</ns3:deviceID></ns3:establishedConnection><v:thing ns3:a="1"><ns3:deep/></v:thing></ns3:EstablishedEvent>"#;
    let m = decode("9999", doc);
    let text = String::from_utf8(m.to_vec(Framing::XmlHeader, ProtocolVersion::Ed4).unwrap()).unwrap();
    assert!(text.contains(r#"<deviceID w:kind="x" xmlns:w="urn:w">2005</deviceID>"#), "{text}");
    assert!(text.contains(r#"<v:thing xmlns:ns3="urn:csta" xmlns:v="urn:vendor" ns3:a="1"><ns3:deep/></v:thing>"#), "{text}");
}

#[test]
fn a_connection_with_two_call_ids_or_two_devices_is_not_guessed() {
    for conn in ["<callID>1</callID><callID>2</callID><deviceID>2005</deviceID>", "<callID>1</callID><deviceID>2005</deviceID><deviceID>2006</deviceID>"] {
        // A mandatory member that is ambiguous: the event does not decode, and says which member.
        let doc = format!("<EstablishedEvent><monitorCrossRefID>7</monitorCrossRefID><establishedConnection>{conn}</establishedConnection></EstablishedEvent>");
        let err = XmlMessage::decode(&framed("9999", &doc), Framing::XmlHeader).unwrap_err();
        assert!(err.to_string().contains("establishedConnection"), "{conn}: {err}");
        // Where the member is not one the event names, it is kept verbatim and re-encodes as it came.
        let doc = format!("<EstablishedEvent><monitorCrossRefID>7</monitorCrossRefID><establishedConnection><callID>9</callID></establishedConnection><primaryOldCall>{conn}</primaryOldCall></EstablishedEvent>");
        let m = decode("9999", &doc);
        let wire = String::from_utf8(m.to_vec(Framing::XmlHeader, ProtocolVersion::Ed4).unwrap()).unwrap();
        assert!(wire.contains(&format!("<primaryOldCall>{conn}</primaryOldCall>")), "kept as it came: {wire}");
    }
}
