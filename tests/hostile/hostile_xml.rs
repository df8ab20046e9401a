//! Hostile CSTA XML (ECMA-323) from the PBX side, at the codec level: byte streams through the
//! [`Framer`] (`xml-header` and `xml-nul`) and each frame through [`XmlMessage::decode`], as the
//! link does with what the socket delivers. (The gateway-side XML link is not on `main` yet, so
//! these tests stop at the codec; `hostile_csta.rs` throws BER at the real link over TCP.)
//!
//! What it proves, for each hostile input: a defined error (`BadFrameHeader` or `FrameTooLarge`
//! from the framer, after which the stream cannot be resynchronised and the link must drop; an
//! `Xml*` kind from the decoder, after which the link keeps reading), no panic, no unbounded
//! buffering, and — where the framing delimits documents on its own — the next good document in
//! the same stream still decodes.

use bytes::{Bytes, BytesMut};
use cstagate::codec::framing::MAX_XML_FRAME;
use cstagate::codec::xml::tree::{MAX_XML_DEPTH, MAX_XML_ELEMENTS};
use cstagate::codec::xml::XmlMessage;
use cstagate::codec::{Apdu, DecodeError, ErrorKind, Framer, Framing};

const GOOD: &str = r#"<?xml version="1.0" encoding="UTF-8"?><EstablishedEvent xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed4"><monitorCrossRefID>77</monitorCrossRefID><establishedConnection><callID>4711</callID><deviceID>2005</deviceID></establishedConnection><answeringDevice><deviceIdentifier>0800</deviceIdentifier></answeringDevice><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause></EstablishedEvent>"#;

/// One document framed: with the header, invoke id `id` (4 characters, written as given).
fn framed(framing: Framing, id: &str, doc: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    if framing == Framing::XmlHeader {
        content.extend_from_slice(id.as_bytes());
    }
    content.extend_from_slice(doc);
    framing.frame(&content).expect("fits").to_vec()
}

/// Every frame of `stream` (one read), and the framing error that ended it, if any.
fn frames(framing: Framing, stream: &[u8]) -> (Vec<Bytes>, Option<DecodeError>) {
    let mut f = Framer::new(framing);
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    loop {
        match f.decode(&mut buf) {
            Ok(Some(fr)) => out.push(fr),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The decode error of a hostile document, framed in `framing`.
fn refused(framing: Framing, doc: &[u8]) -> ErrorKind {
    let (fr, err) = frames(framing, &framed(framing, "0001", doc));
    assert_eq!((fr.len(), err), (1, None), "one frame");
    match XmlMessage::decode(&fr[0], framing) {
        Ok(m) => panic!("decoded a hostile document: {m:?}"),
        Err(e) => e.kind,
    }
}

fn is_event(m: &XmlMessage) -> bool {
    matches!(m, XmlMessage::Csta(Apdu::Invoke(i)) if matches!(i.argument, cstagate::codec::Argument::Event(_)))
}

/// For both framings: the hostile document gets `expect`, and a good event right behind it in
/// the same stream still decodes (both framings delimit documents without reading them).
fn refused_then_next_good(doc: &[u8], expect: impl Fn(&ErrorKind) -> bool) {
    for framing in [Framing::XmlHeader, Framing::XmlNul] {
        let kind = refused(framing, doc);
        assert!(expect(&kind), "{framing:?}: {kind:?} for {}", String::from_utf8_lossy(doc));
        let mut stream = framed(framing, "0001", doc);
        stream.extend_from_slice(&framed(framing, "9999", GOOD.as_bytes()));
        let (fr, err) = frames(framing, &stream);
        assert_eq!((fr.len(), err), (2, None), "{framing:?}");
        assert!(XmlMessage::decode(&fr[0], framing).is_err());
        let next = XmlMessage::decode(&fr[1], framing).unwrap_or_else(|e| panic!("{framing:?}: the good document after a bad one: {e}"));
        assert!(is_event(&next), "{next:?}");
    }
}

#[test]
fn the_good_event_decodes_in_both_framings() {
    for framing in [Framing::XmlHeader, Framing::XmlNul] {
        let (fr, err) = frames(framing, &framed(framing, "9999", GOOD.as_bytes()));
        assert_eq!((fr.len(), err), (1, None));
        let m = XmlMessage::decode(&fr[0], framing).expect("decodes");
        assert!(is_event(&m));
        assert_eq!(m.invoke_id(), (framing == Framing::XmlHeader).then_some(9999));
    }
}

#[test]
fn billion_laughs_and_external_entities_are_refused_before_anything_is_expanded() {
    let mut lol = String::from(r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">"#);
    for i in 1..10 {
        let prev = if i == 1 { "lol".to_owned() } else { format!("lol{}", i - 1) };
        lol.push_str(&format!("<!ENTITY lol{i} \"{}\">", format!("&{prev};").repeat(10)));
    }
    lol.push_str("]><EstablishedEvent><monitorCrossRefID>&lol9;</monitorCrossRefID></EstablishedEvent>");
    refused_then_next_good(lol.as_bytes(), |k| *k == ErrorKind::XmlDoctype);
    let xxe = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><EstablishedEvent><monitorCrossRefID>&e;</monitorCrossRefID></EstablishedEvent>"#;
    refused_then_next_good(xxe, |k| *k == ErrorKind::XmlDoctype);
    // A bare external DTD (no internal subset) too.
    refused_then_next_good(br#"<!DOCTYPE x SYSTEM "http://attacker.example/x.dtd"><x/>"#, |k| *k == ErrorKind::XmlDoctype);
}

#[test]
fn an_undefined_entity_is_refused_not_left_as_text() {
    refused_then_next_good(b"<EstablishedEvent><monitorCrossRefID>&passwd;</monitorCrossRefID></EstablishedEvent>", |k| *k == ErrorKind::XmlEntity);
}

#[test]
fn deep_nesting_and_too_many_elements_hit_the_caps() {
    let deep = format!("<MakeCall>{}{}</MakeCall>", "<a>".repeat(MAX_XML_DEPTH), "</a>".repeat(MAX_XML_DEPTH));
    refused_then_next_good(deep.as_bytes(), |k| *k == ErrorKind::XmlTooDeep(MAX_XML_DEPTH));
    // Just under the cap is fine (and kept as an unknown member).
    let ok = format!("<SystemRegister>{}{}</SystemRegister>", "<a>".repeat(MAX_XML_DEPTH - 1), "</a>".repeat(MAX_XML_DEPTH - 1));
    assert!(matches!(XmlMessage::decode(&Bytes::from(ok), Framing::XmlNul), Ok(XmlMessage::Unknown { .. })));
    let wide = format!("<MakeCall>{}</MakeCall>", "<a/>".repeat(MAX_XML_ELEMENTS));
    refused_then_next_good(wide.as_bytes(), |k| *k == ErrorKind::XmlTooLarge(MAX_XML_ELEMENTS));
}

#[test]
fn not_utf8_a_second_root_and_text_outside_the_root_are_refused() {
    refused_then_next_good(b"<EstablishedEvent><monitorCrossRefID>\xff\xfe</monitorCrossRefID></EstablishedEvent>", |k| *k == ErrorKind::XmlNotUtf8);
    // Latin-1 declared: still only UTF-8 is read.
    refused_then_next_good(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>\xe9</a>", |k| *k == ErrorKind::XmlNotUtf8);
    let syntax = |k: &ErrorKind| matches!(k, ErrorKind::XmlSyntax(_));
    refused_then_next_good(b"<SystemStatus><systemStatus>normal</systemStatus></SystemStatus><SystemStatus/>", syntax);
    refused_then_next_good(b"<SystemStatus><systemStatus>normal</systemStatus></SystemStatus>trailing", syntax);
    refused_then_next_good(b"leading<SystemStatus><systemStatus>normal</systemStatus></SystemStatus>", syntax);
    refused_then_next_good(b"<SystemStatus><systemStatus>normal</systemStatus></SystemStatus><![CDATA[x]]>", syntax);
    refused_then_next_good(b"<SystemStatus><systemStatus>normal</systemStatus>", syntax);
    refused_then_next_good(b"<SystemStatus><systemStatus>normal</SystemStatus></systemStatus>", syntax);
    // No root at all: with the header, a frame of whitespace is an error; `xml-nul` skips it
    // as a keep-alive (tests/codec: framing).
    assert!(syntax(&refused(Framing::XmlHeader, b"   ")));
    assert!(syntax(&refused(Framing::XmlHeader, b"<!-- nothing -->")));
}

#[test]
fn a_truncated_header_waits_and_a_bad_one_is_final() {
    let good = framed(Framing::XmlHeader, "9999", GOOD.as_bytes());
    // Every proper prefix of a frame is "more bytes needed", never an error or a frame.
    for cut in 0..good.len() {
        let (fr, err) = frames(Framing::XmlHeader, &good[..cut]);
        assert_eq!((fr.len(), err), (0, None), "cut at {cut}");
    }
    // Invoke id not 4 digits: refused by the framer as soon as the 8 header bytes are in.
    for id in ["00x1", "-001", "+001", " 001", "\u{0}001"] {
        let (fr, err) = frames(Framing::XmlHeader, &framed(Framing::XmlHeader, id, GOOD.as_bytes()));
        assert!(fr.is_empty());
        assert!(matches!(err.map(|e| e.kind), Some(ErrorKind::BadFrameHeader(m)) if m.contains("digits")), "{id:?}");
        // And by the decoder, for a frame that reached it some other way.
        let e = XmlMessage::decode(&Bytes::from(format!("{id}<a/>")), Framing::XmlHeader).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::BadFrameHeader(_)), "{id:?}: {e}");
    }
    // Not starting with 00 00.
    let mut bad = good.clone();
    bad[0] = 1;
    assert!(matches!(frames(Framing::XmlHeader, &bad).1.map(|e| e.kind), Some(ErrorKind::BadFrameHeader(_))));
}

#[test]
fn a_length_shorter_than_the_header_is_refused_and_a_longer_one_misframes_into_an_error() {
    for total in 0u16..8 {
        let mut s = vec![0, 0];
        s.extend_from_slice(&total.to_be_bytes());
        s.extend_from_slice(b"0001<a/>");
        let (fr, err) = frames(Framing::XmlHeader, &s);
        assert!(fr.is_empty());
        assert!(matches!(err.map(|e| e.kind), Some(ErrorKind::BadFrameHeader(_))), "length {total}");
    }
    // Announced 10 bytes longer than the document: the framer waits for them...
    let doc = GOOD.as_bytes();
    let mut s = vec![0, 0];
    s.extend_from_slice(&u16::try_from(doc.len() + 8 + 10).expect("small").to_be_bytes());
    s.extend_from_slice(b"9999");
    s.extend_from_slice(doc);
    assert_eq!(frames(Framing::XmlHeader, &s), (vec![], None));
    // ...and takes them from the next message: that document is refused with a defined error
    // (the next header's bytes are no XML), and the stream is out of step for good: what follows
    // is a bad header, which the link must answer by dropping the connection.
    s.extend_from_slice(&framed(Framing::XmlHeader, "9999", doc));
    let (fr, err) = frames(Framing::XmlHeader, &s);
    assert_eq!(fr.len(), 1);
    let e = XmlMessage::decode(&fr[0], Framing::XmlHeader).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::XmlSyntax(_)), "{e}");
    assert!(matches!(err.map(|e| e.kind), Some(ErrorKind::BadFrameHeader(_))));
}

#[test]
fn an_oversize_message_is_refused_before_it_is_buffered() {
    // The 16-bit length cannot announce more than 64 KiB: the largest it can (0xFFFF) is within
    // the default cap and waits for its bytes; a framer with a smaller cap refuses it at once.
    let mut s = vec![0, 0, 0xFF, 0xFF];
    s.extend_from_slice(b"0001<a>");
    assert_eq!(frames(Framing::XmlHeader, &s), (vec![], None));
    let e = Framer::new(Framing::XmlHeader).with_max_frame(16 * 1024).decode(&mut BytesMut::from(&s[..])).unwrap_err();
    assert_eq!(e.kind, ErrorKind::FrameTooLarge { size: 0xFFFF - 4, cap: 16 * 1024 });
    // Nor can we write one.
    assert!(matches!(Framing::XmlHeader.frame(&vec![b'x'; MAX_XML_FRAME + 1]).unwrap_err().kind, ErrorKind::FrameTooLarge { .. }));
    // A NUL-framed document that never ends: buffered up to the cap, then refused, whatever the
    // size of the reads.
    let mut f = Framer::new(Framing::XmlNul);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"<EstablishedEvent><monitorCrossRefID>");
    let mut fed = buf.len();
    let err = loop {
        match f.decode(&mut buf) {
            Ok(None) => {
                assert!(fed <= MAX_XML_FRAME, "buffered {fed} bytes without refusing");
                buf.extend_from_slice(&[b'7'; 4096]);
                fed += 4096;
            }
            Ok(Some(fr)) => panic!("a frame out of a document that never ends: {} bytes", fr.len()),
            Err(e) => break e,
        }
    };
    assert!(matches!(err.kind, ErrorKind::FrameTooLarge { cap, .. } if cap == MAX_XML_FRAME - 1), "{err}");
    assert!(fed <= MAX_XML_FRAME + 4096, "refused only after {fed} bytes");
}

#[test]
fn a_frame_cut_short_inside_the_document_is_a_syntax_error_and_the_next_frame_decodes() {
    let cut = &GOOD.as_bytes()[..GOOD.len() / 2];
    refused_then_next_good(cut, |k| matches!(k, ErrorKind::XmlSyntax(_)));
}
