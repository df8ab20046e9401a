//! The oracles of the fuzz targets, shared with `tests/hostile/fuzz_regressions.rs` (which includes this
//! file with `#[path]`, so plain `cargo test` replays the seeds and every input a fuzzer found
//! through exactly the same checks). Depends on `cstagate`, `bytes`, `serde_json`, `arbitrary`
//! `tokio` and `quick-xml`.
//!
//! Each function panics when a check fails; that is what libFuzzer reports as a crash.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use cstagate::codec::framing::DEFAULT_MAX_FRAME;
use cstagate::codec::{acse, Apdu, DecodeError, Dialect, Framer, Framing, Value};

/// The fuzz targets, by name (also the directory names under `fuzz/seeds/` and
/// `tests/fuzz_regressions/`).
pub const TARGETS: &[&str] = &["framer", "apdu_phase3", "apdu_phase2", "acse", "engine", "link_session", "xml"];

// `#[path]` so that the file resolves the same when `tests/hostile/fuzz_regressions.rs` includes this one.
#[path = "engine/mod.rs"]
mod engine_oracle;
#[path = "link_session.rs"]
mod link_session_oracle;
pub use engine_oracle::{engine, outcomes as engine_outcomes, OUTCOME_NAMES as ENGINE_OUTCOME_NAMES};
pub use link_session_oracle::{link_session, outcomes as link_session_outcomes};

/// Run the oracle of `target` on one input.
///
/// # Panics
/// On an unknown target name, and wherever the oracle fails.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "framer" => framer(data),
        "apdu_phase3" => apdu(data, Dialect::Phase3),
        "apdu_phase2" => apdu(data, Dialect::Phase2),
        "acse" => acse(data),
        "engine" => engine(data),
        "link_session" => link_session(data),
        "xml" => xml(data),
        _ => panic!("unknown fuzz target {target}"),
    }
}

// ---------------------------------------------------------------------------------------------
// APDU decode: the round-trip oracle.

/// Decode `data` as one APDU of dialect `d`. Whatever decodes must:
/// - render in the `cstagate decode` view (JSON and line) without panicking;
/// - re-encode; the re-encoding must decode to the same value (`PartialEq`, the members' wire
///   tags included: a decoded value re-encodes in place), and re-encode to the same bytes
///   (encoding is canonical, hence a fixed point);
/// - when the input is [`canonical`], re-encode to the input itself, byte for byte
///   ([`same_bytes_but_integers`]: only an integer the input wrote with a redundant leading
///   octet may come back minimal). This is what shows that nothing was dropped, reordered or
///   rewritten: unknown members, private data, wire tags, the order of the members.
///
/// Whatever does not decode must give an error whose offset lies inside the input.
pub fn apdu(data: &[u8], d: Dialect) {
    let input = Bytes::copy_from_slice(data);
    let first = match Apdu::decode(&input, d) {
        Ok(a) => a,
        Err(e) => {
            check_error(&e, data.len());
            return;
        }
    };
    view(&first, d);
    let enc = first.to_vec(d).unwrap_or_else(|e| panic!("a decoded APDU does not re-encode: {e}\n{first:?}"));
    let second = Apdu::decode(&Bytes::from(enc.clone()), d)
        .unwrap_or_else(|e| panic!("the re-encoding does not decode: {e}\n input {}\n re-encoded {}", hexs(data), hexs(&enc)));
    // left: the input decoded; right: its re-encoding decoded.
    assert_eq!(first, second, "re-encoding changed the value\n input {}\n re-encoded {}", hexs(data), hexs(&enc));
    let enc2 = second.to_vec(d).expect("a decoded APDU re-encodes");
    assert!(enc2 == enc, "encoding is not a fixed point\n input {}\n first {}\n second {}", hexs(data), hexs(&enc), hexs(&enc2));
    if canonical(data) {
        if let Err(why) = same_bytes_but_integers(data, &enc) {
            panic!("a canonical input does not re-encode to itself ({why})\n input      {}\n re-encoded {}\n {first:?}", hexs(data), hexs(&enc));
        }
    }
}

/// How deep [`canonical`] and [`same_bytes_but_integers`] follow constructed values (an unknown
/// member is kept verbatim whatever its depth; deeper than this, the input counts as not
/// canonical and only the fixed-point checks apply).
const CANONICAL_DEPTH: usize = 64;

/// Whether `data` is **canonical** for the byte-equality check of [`apdu`]: exactly one TLV, and
/// every TLV in it, at every depth (each constructed value's content is read as TLVs, whatever
/// member it is, up to [`CANONICAL_DEPTH`] levels), has
/// 1. a definite length (no `0x80` indefinite form), in the fewest octets: the short form below
///    128, else the long form `0x81..=0x84` with no leading zero octet and a value of at least 128;
/// 2. its identifier in the fewest octets: the low-tag form for tag numbers 0 to 30; the
///    high-tag form (`xx11111`) only for 31 and above, with no leading `0x80` octet;
/// 3. and the content of every constructed value is a sequence of such TLVs, exactly filling it.
///
/// That is DER's length and tag rules (X.690 §10.1) without DER's value rules: primitive
/// contents are not looked at (an INTEGER with a redundant leading octet is still canonical
/// here; [`same_bytes_but_integers`] allows the codec to write it minimal), nor is the order of
/// SET members. The codec writes every header this way (`ber::Writer`), so for such input
/// anything but the input's own bytes means something was lost or rewritten.
pub fn canonical(data: &[u8]) -> bool {
    let mut stack = vec![(0usize, data.len(), 0usize)];
    let mut top = true;
    while let Some((mut p, end, depth)) = stack.pop() {
        if depth > CANONICAL_DEPTH {
            return false;
        }
        while p < end {
            let Some(h) = header(data, p, end) else { return false };
            if !h.minimal {
                return false;
            }
            if h.constructed {
                stack.push((h.content, h.end, depth + 1));
            }
            p = h.end;
            if top && p != end {
                return false; // trailing bytes after the APDU
            }
        }
        top = false;
    }
    true
}

/// One TLV header as [`canonical`] reads it (definite lengths only).
struct Header {
    /// The identifier octets.
    id: std::ops::Range<usize>,
    constructed: bool,
    /// Identifier and length in the fewest octets.
    minimal: bool,
    content: usize,
    end: usize,
}

fn header(b: &[u8], start: usize, end: usize) -> Option<Header> {
    let first = *b.get(start).filter(|_| start < end)?;
    let mut p = start + 1;
    let mut minimal = true;
    if first & 0x1F == 0x1F {
        let lead = *b.get(p).filter(|_| p < end)?;
        let mut number: u64 = 0;
        loop {
            let o = *b.get(p).filter(|_| p < end)?;
            p += 1;
            number = (number << 7) | u64::from(o & 0x7F);
            if number > u64::from(u32::MAX) {
                return None;
            }
            if o & 0x80 == 0 {
                break;
            }
        }
        minimal &= lead != 0x80 && number >= 31;
    }
    let id = start..p;
    let lb = *b.get(p).filter(|_| p < end)?;
    p += 1;
    let len = if lb & 0x80 == 0 {
        usize::from(lb)
    } else {
        let n = usize::from(lb & 0x7F);
        if n == 0 || n > 4 || p + n > end {
            return None; // indefinite (0x80) or unsupported
        }
        let l = b[p..p + n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        minimal &= b[p] != 0 && l >= 0x80;
        p += n;
        l
    };
    if len > end - p {
        return None;
    }
    Some(Header { id, constructed: first & 0x20 != 0, minimal, content: p, end: p + len })
}

/// `Ok` when `output` is `input` byte for byte, or differs from it only where the input gives an
/// integer with a redundant leading octet (content of 2 to 8 octets starting `00` then a byte
/// below `0x80`, or `FF` then a byte from `0x80`) and the output has the minimal two's-complement
/// content of the same value, under the same identifier, with the lengths around it adjusted.
/// Both are compared as TLV trees of [`canonical`] headers. `Err` names the first difference.
pub fn same_bytes_but_integers(input: &[u8], output: &[u8]) -> Result<(), String> {
    if input == output {
        return Ok(());
    }
    let mut stack = vec![((0usize, input.len()), (0usize, output.len()), 0usize)];
    while let Some(((mut p, pe), (mut q, qe), depth)) = stack.pop() {
        if depth > CANONICAL_DEPTH {
            return Err("too deep to compare".into());
        }
        loop {
            match (p < pe, q < qe) {
                (false, false) => break,
                (true, false) => return Err(format!("input byte {p}: a TLV the re-encoding does not have")),
                (false, true) => return Err(format!("re-encoding byte {q}: a TLV the input does not have")),
                (true, true) => {}
            }
            let (Some(a), Some(b)) = (header(input, p, pe), header(output, q, qe)) else {
                return Err(format!("input byte {p} / re-encoding byte {q}: unreadable TLV"));
            };
            if input[a.id.clone()] != output[b.id.clone()] {
                return Err(format!("input byte {p}: identifier {} re-encoded as {}", hexs(&input[a.id.clone()]), hexs(&output[b.id.clone()])));
            }
            if a.constructed {
                stack.push(((a.content, a.end), (b.content, b.end), depth + 1));
            } else {
                let (x, y) = (&input[a.content..a.end], &output[b.content..b.end]);
                if x != y && !(redundant_leading_octet(x) && minimal_int(x) == y) {
                    return Err(format!("input byte {p}: content {} re-encoded as {}", hexs(x), hexs(y)));
                }
            }
            p = a.end;
            q = b.end;
        }
    }
    Ok(())
}

/// A two's-complement integer content (2..=8 octets) with a redundant leading octet.
fn redundant_leading_octet(c: &[u8]) -> bool {
    c.len() >= 2 && c.len() <= 8 && ((c[0] == 0x00 && c[1] & 0x80 == 0) || (c[0] == 0xFF && c[1] & 0x80 != 0))
}

/// The minimal content of the integer `c` (at most 8 octets) encodes.
fn minimal_int(c: &[u8]) -> &[u8] {
    let mut i = 0;
    while i + 1 < c.len() && ((c[i] == 0x00 && c[i + 1] & 0x80 == 0) || (c[i] == 0xFF && c[i + 1] & 0x80 != 0)) {
        i += 1;
    }
    &c[i..]
}

/// The error's offset points into the APDU (or just past its end, for truncation), and the error
/// renders.
fn check_error(e: &DecodeError, len: usize) {
    assert!(e.offset <= len, "error offset {} past the input ({len} bytes): {e}", e.offset);
    let _ = e.to_string();
}

/// The `cstagate decode` view of a decoded APDU must not panic.
fn view(a: &Apdu, d: Dialect) {
    let mut o = serde_json::Map::new();
    cstagate::decode::describe(a, d, &mut o);
    let _ = cstagate::decode::to_line(&serde_json::Value::Object(o));
    let _ = (a.kind_name(), a.invoke_id());
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// ACSE.

/// The first byte becomes an ACSE APDU tag (kept if already in `0x60..=0x64`, else mapped there),
/// then the round-trip oracle runs in both dialects, and the ACSE helpers the link uses on a
/// PBX's answer (AARE outcome, authentication, CSTA user information) must not panic.
pub fn acse(data: &[u8]) {
    let Some((&b0, rest)) = data.split_first() else { return };
    let tag = if (0x60..=0x64).contains(&b0) { b0 } else { 0x60 + b0 % 5 };
    let mut v = Vec::with_capacity(data.len());
    v.push(tag);
    v.extend_from_slice(rest);
    for d in [Dialect::Phase3, Dialect::Phase2] {
        apdu(&v, d);
        let body = match Apdu::decode(&Bytes::from(v.clone()), d) {
            Ok(Apdu::Aarq(b) | Apdu::Aare(b) | Apdu::Rlrq(b) | Apdu::Rlre(b) | Apdu::Abrt(b)) => b,
            Ok(other) => panic!("an ACSE tag decoded as {}", other.kind_name()),
            Err(_) => continue,
        };
        if let Err(r) = acse::aare_outcome(&body) {
            let _ = r.to_string();
        }
        for f in &body.fields {
            match &f.value {
                Value::Auth(a) => {
                    let _ = a.user();
                }
                Value::UserInfo(acse::UserInformation::Csta(c)) => {
                    let _ = c.versions();
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framer.

/// `max_frame` values the framer target picks from.
pub const MAX_FRAMES: [usize; 4] = [16, 300, DEFAULT_MAX_FRAME, 0xFFFF];

/// One framer case decoded from fuzz input:
/// - byte 0, configuration: bit 0 framing (0 two-byte length, 1 Siemens); bit 1 expect a
///   preamble, bit 4 which one (`'P'` or `'B'`); bits 2–3 `max_frame` from [`MAX_FRAMES`];
/// - byte 1: the number `n` of read sizes (`% 8`);
/// - the next `n` bytes: read sizes, used in turn (0 = poll with no new bytes); none means one
///   byte at a time;
/// - the rest: the stream.
#[derive(Debug, Clone)]
pub struct FramerCase<'a> {
    pub framing: Framing,
    pub preamble: Option<u8>,
    pub max_frame: usize,
    pub reads: Vec<usize>,
    pub stream: &'a [u8],
}

impl<'a> FramerCase<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&cfg, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n % 8).min(rest.len());
        let (reads, stream) = rest.split_at(n);
        let mut reads: Vec<usize> = reads.iter().map(|&b| usize::from(b)).collect();
        if reads.iter().all(|&r| r == 0) {
            reads.push(1);
        }
        Some(FramerCase {
            framing: if cfg & 1 == 0 { Framing::TwoByteLength } else { Framing::Siemens },
            preamble: (cfg & 2 != 0).then_some(if cfg & 0x10 == 0 { b'P' } else { b'B' }),
            max_frame: MAX_FRAMES[usize::from((cfg >> 2) & 3)],
            reads,
            stream,
        })
    }

    fn framer(&self) -> Framer {
        let f = Framer::new(self.framing).with_max_frame(self.max_frame);
        match self.preamble {
            Some(p) => f.expect_preamble(p),
            None => f,
        }
    }
}

/// What a framer made of a whole stream.
#[derive(Debug, PartialEq)]
pub struct FramerOutcome {
    pub frames: Vec<Bytes>,
    pub error: Option<DecodeError>,
    /// Bytes left in the buffer at the end (after the error, all the stream not consumed).
    pub leftover: Vec<u8>,
    pub preamble_taken: bool,
}

/// Feed `c.stream` to a fresh framer in reads of the given sizes (`None`: all at once), taking
/// every frame after each read. Checks on the way: each frame is non-empty and within the caps;
/// after `Ok(None)` or an error, asking again gives the same answer; an error stays an error
/// whatever arrives after it (the stream cannot be resynchronised).
pub fn read_stream(c: &FramerCase<'_>, reads: Option<&[usize]>) -> FramerOutcome {
    let mut f = c.framer();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    loop {
        loop {
            match f.decode(&mut buf) {
                Ok(Some(fr)) => {
                    assert!(!fr.is_empty(), "empty frame returned");
                    assert!(fr.len() <= c.max_frame && fr.len() <= c.framing.max_len(), "frame of {} bytes over the cap", fr.len());
                    frames.push(fr);
                }
                Ok(None) => {
                    let before = buf.len();
                    assert_eq!(f.decode(&mut buf), Ok(None), "Ok(None) then something with no new bytes");
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => {
                    assert_eq!(f.decode(&mut buf), Err(e.clone()), "an error is not final");
                    buf.extend_from_slice(&c.stream[pos..]);
                    assert_eq!(f.decode(&mut buf), Err(e.clone()), "an error is not final once more bytes arrive");
                    return FramerOutcome { frames, error: Some(e), leftover: buf.to_vec(), preamble_taken: c.preamble.is_some() && !f.awaiting_preamble() };
                }
            }
        }
        if pos == c.stream.len() {
            return FramerOutcome { frames, error: None, leftover: buf.to_vec(), preamble_taken: c.preamble.is_some() && !f.awaiting_preamble() };
        }
        let n = match reads {
            Some(r) => r[k % r.len()],
            None => c.stream.len(),
        }
        .min(c.stream.len() - pos);
        buf.extend_from_slice(&c.stream[pos..pos + n]);
        pos += n;
        k += 1;
    }
}

/// The framer target: reading in arbitrary pieces gives exactly what one read of the whole
/// stream gives (frames, error, leftover); the frames, re-framed, with the preamble and the
/// leftover, are the stream byte for byte; an error's offset is where the stream went wrong.
pub fn framer(data: &[u8]) {
    let Some(c) = FramerCase::parse(data) else { return };
    let whole = read_stream(&c, None);
    let pieces = read_stream(&c, Some(&c.reads));
    assert_eq!(pieces, whole, "reading in pieces {:?} differs from one read", c.reads);

    let mut rebuilt = Vec::with_capacity(c.stream.len());
    if whole.preamble_taken {
        rebuilt.push(c.preamble.expect("preamble"));
    }
    for fr in &whole.frames {
        rebuilt.extend_from_slice(&c.framing.frame(fr).expect("a frame read fits its framing"));
    }
    let consumed = rebuilt.len();
    rebuilt.extend_from_slice(&whole.leftover);
    assert!(rebuilt == c.stream, "frames + leftover are not the stream\n stream  {}\n rebuilt {}", hexs(c.stream), hexs(&rebuilt));
    if let Some(e) = &whole.error {
        assert_eq!(e.offset, consumed, "framing error offset is not the stream position: {e}");
        let _ = e.to_string();
    }
}

// ---------------------------------------------------------------------------------------------
// CSTA XML: framing and the round-trip oracle.

/// The XML target: byte 0 picks the framing (bit 0: `xml-header` or `xml-nul`) and the ECMA-323
/// edition the oracle encodes in (bits 1–2); the rest is the byte stream the PBX sent. With
/// `xml-nul` a stream that does not end with a NUL gets one, so a bare document is a whole
/// frame. The stream goes through a [`Framer`]; each frame through [`xml_frame`]. A framing
/// error must be `BadFrameHeader` or `FrameTooLarge` at an offset within the stream.
pub fn xml(data: &[u8]) {
    use cstagate::codec::xml::ProtocolVersion;
    let Some((&cfg, stream)) = data.split_first() else { return };
    let framing = if cfg & 1 == 0 { Framing::XmlHeader } else { Framing::XmlNul };
    let version = [ProtocolVersion::Ed3, ProtocolVersion::Ed4, ProtocolVersion::Ed5, ProtocolVersion::Ed6][usize::from((cfg >> 1) & 3)];
    let mut buf = BytesMut::from(stream);
    if framing == Framing::XmlNul && stream.last() != Some(&0) {
        buf.extend_from_slice(&[0]);
    }
    let total = buf.len();
    let mut framer = Framer::new(framing);
    loop {
        match framer.decode(&mut buf) {
            Ok(Some(frame)) => xml_frame(&frame, framing, version),
            Ok(None) => break,
            Err(e) => {
                assert!(matches!(e.kind, cstagate::codec::ErrorKind::BadFrameHeader(_) | cstagate::codec::ErrorKind::FrameTooLarge { .. }), "framing error of another kind: {e}");
                check_error(&e, total);
                break;
            }
        }
    }
}

/// One XML frame. What does not decode gives an error whose offset lies in the frame. What
/// decodes must:
/// - name itself and render in the `cstagate decode` view without panicking;
/// - encode (in the edition chosen), as a frame the framer hands back whole (with `xml-nul`: no
///   NUL inside; with `xml-header`: 4 invoke-id digits first);
/// - decode again to an **equal** [`XmlMessage`](cstagate::codec::xml::XmlMessage), and encode
///   to the same bytes again (encoding is a fixed point);
/// - when the input document is namespace-well-formed (every prefix declared, attributes
///   well-formed, [`ns_well_formed`]), so is the encoding: a verbatim fragment (unknown member,
///   private data, a device's attributes) must not lose the declaration of a prefix it uses.
pub fn xml_frame(frame: &Bytes, framing: Framing, version: cstagate::codec::xml::ProtocolVersion) {
    use cstagate::codec::xml::XmlMessage;
    let first = match XmlMessage::decode(frame, framing) {
        Ok(m) => m,
        Err(e) => {
            check_error(&e, frame.len());
            return;
        }
    };
    let _ = (first.name(), first.invoke_id());
    if let XmlMessage::Csta(a) = &first {
        view(a, Dialect::Phase3);
    }
    let enc = first.to_vec(framing, version).unwrap_or_else(|e| panic!("a decoded XML message does not encode: {e}\n input {}\n {first:?}", shown(frame)));
    match framing {
        Framing::XmlNul => assert!(!enc.contains(&0), "the encoding holds a NUL\n input {}\n encoded {}", shown(frame), shown(&enc)),
        _ => assert!(enc.len() >= 4 && enc[..4].iter().all(u8::is_ascii_digit), "the encoding does not start with 4 digits: {}", shown(&enc)),
    }
    if enc.len() <= framing.max_len() {
        let mut b = BytesMut::from(&framing.frame(&enc).expect("fits")[..]);
        let back = Framer::new(framing).decode(&mut b).expect("our frame reads back");
        assert_eq!(back.as_deref(), Some(&enc[..]), "our frame does not read back whole");
    }
    let second = XmlMessage::decode(&Bytes::from(enc.clone()), framing)
        .unwrap_or_else(|e| panic!("the encoding does not decode: {e}\n input   {}\n encoded {}", shown(frame), shown(&enc)));
    // left: the input decoded; right: its encoding decoded.
    assert_eq!(first, second, "encoding changed the message\n input   {}\n encoded {}", shown(frame), shown(&enc));
    let enc2 = second.to_vec(framing, version).expect("a decoded message encodes");
    assert!(enc2 == enc, "encoding is not a fixed point\n input  {}\n first  {}\n second {}", shown(frame), shown(&enc), shown(&enc2));
    let skip = if framing == Framing::XmlHeader { 4 } else { 0 };
    if ns_well_formed(&frame[skip..]) {
        assert!(ns_well_formed(&enc[skip..]), "a namespace-well-formed input encodes to a document that is not\n input   {}\n encoded {}", shown(frame), shown(&enc));
    }
}

/// Whether `doc` is one namespace-well-formed document as quick-xml's namespace reader sees it:
/// it reads to the end, every element and attribute prefix is declared, attributes are
/// well-formed (no duplicates, quoted values whose references resolve).
pub fn ns_well_formed(doc: &[u8]) -> bool {
    use quick_xml::events::Event as X;
    use quick_xml::name::ResolveResult;
    let Ok(s) = std::str::from_utf8(doc) else { return false };
    let mut r = quick_xml::NsReader::from_str(s);
    r.config_mut().check_end_names = true;
    loop {
        let (res, ev) = match r.read_resolved_event() {
            Ok((res, ev)) => (matches!(res, ResolveResult::Unknown(_)), ev),
            Err(_) => return false,
        };
        match ev {
            X::Start(e) | X::Empty(e) => {
                if res {
                    return false;
                }
                for a in e.attributes().with_checks(true) {
                    let Ok(a) = a else { return false };
                    if a.normalized_value(quick_xml::XmlVersion::Implicit1_0).is_err() || matches!(r.resolver().resolve_attribute(a.key).0, ResolveResult::Unknown(_)) {
                        return false;
                    }
                }
            }
            X::GeneralRef(g) if !g.is_char_ref() && !matches!(g.as_ref(), "amp" | "lt" | "gt" | "quot" | "apos") => return false,
            X::DocType(_) => return false,
            X::Eof => return true,
            _ => {}
        }
    }
}

/// Bytes for a failure message: the text where it is UTF-8, else hex.
fn shown(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => hexs(b),
    }
}
