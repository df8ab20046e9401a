//! CSTA XML (ECMA-323 over TCP, sessions of ECMA-354), the third wire dialect, sans-IO like the
//! BER codec: one framed document in, one typed value out, and back.
//!
//! It maps onto the **same dialect-neutral model** as BER, so the link, the association engine,
//! the API and the tools work unchanged over it: a `MakeCall` document is an
//! [`Apdu::Invoke`] of [`Operation::MakeCall`] whose [`Body`] has the same members as the BER
//! argument; `MakeCallResponse` is an [`Apdu::Result`]; `CSTAErrorCode` an [`Apdu::Error`]
//! with its universalFailure; an `EstablishedEvent` an event report whose cross-reference id is
//! its `monitorCrossRefID`. The member tables are the Phase III ones of `schemas.rs` (ECMA-323
//! is the XML form of ECMA-269 Phase III), looked up by element name. What is particular to
//! XML is here:
//! - [`tree`]: the document read with `quick-xml` (no DTD, no entities beyond the predefined,
//!   depth and element caps, UTF-8 only), by local name whatever the namespace or prefix;
//! - [`names`]: enumerations written as names (`normalClearing`, `connected`);
//! - [`session`]: ECMA-354 `StartApplicationSession` and friends, which stand where ACSE
//!   stands in BER;
//! - `csta`: members and values: devices as text with their attributes kept
//!   (`N<302118840100>;noa=nk` stays as it came, [`dialable`] derives the number), connections as
//!   `callID` and `deviceID`, call and cross-reference ids as the text they are;
//! - the invoke id: with the 8-byte header, the frame starts with 4 ASCII digits (events carry
//!   `9999`); without (`xml-nul`), there is none and answers are matched by operation.
//!
//! Bytes kept verbatim (an unknown element's [`Value::Raw`], an unknown event, a vendor's error
//! parameter, a device's attributes in `DeviceId::rest`) are the XML they came as, written back
//! as they came; they are only ever re-encoded in XML.

mod csta;
pub mod names;
pub mod session;
pub mod tree;

use bytes::Bytes;

use crate::codec::ber::{DecodeError, ErrorKind};
use crate::codec::framing::Framing;
use crate::codec::Apdu;
pub use csta::dialable;
pub use session::{AppSession, Login, LoginStyle, StartSession};

#[cfg(doc)]
use crate::codec::{Body, Operation, Value};

/// The invoke id the PBX puts on events (unsolicited messages).
pub const EVENT_INVOKE_ID: i64 = 9999;
/// Our invoke ids stay below [`EVENT_INVOKE_ID`]: four digits, 9999 excluded.
pub const MAX_XML_INVOKE_ID: i64 = 9998;

/// The ECMA-323 edition, which names the namespace of the documents (config key
/// `xml_protocol_version`, default ed4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolVersion {
    Ed3,
    #[default]
    Ed4,
    Ed5,
    Ed6,
}

impl ProtocolVersion {
    pub fn namespace(self) -> &'static str {
        match self {
            ProtocolVersion::Ed3 => "http://www.ecma-international.org/standards/ecma-323/csta/ed3",
            ProtocolVersion::Ed4 => "http://www.ecma-international.org/standards/ecma-323/csta/ed4",
            ProtocolVersion::Ed5 => "http://www.ecma-international.org/standards/ecma-323/csta/ed5",
            ProtocolVersion::Ed6 => "http://www.ecma-international.org/standards/ecma-323/csta/ed6",
        }
    }
    /// The edition a namespace URI names (any edition, also the old `ecma.ch` URIs).
    pub fn from_namespace(uri: &str) -> Option<ProtocolVersion> {
        let ed = uri.trim_end_matches('/').rsplit('/').next()?;
        Some(match ed {
            "ed3" => ProtocolVersion::Ed3,
            "ed4" => ProtocolVersion::Ed4,
            "ed5" => ProtocolVersion::Ed5,
            "ed6" => ProtocolVersion::Ed6,
            _ => return None,
        })
    }
}

/// One CSTA XML message.
#[derive(Debug, Clone, PartialEq)]
pub enum XmlMessage {
    /// A CSTA request, response, error or event, in the dialect-neutral model (the invoke id is
    /// the header's; `None` without a header).
    Csta(Apdu),
    /// An ECMA-354 application-session message.
    Session { invoke_id: Option<i64>, msg: AppSession },
    /// A document whose root element is no message this codec knows (`SystemRegister`, a vendor
    /// request): its root name and the whole document, verbatim.
    Unknown { invoke_id: Option<i64>, name: String, raw: Bytes },
}

impl XmlMessage {
    pub fn invoke_id(&self) -> Option<i64> {
        match self {
            XmlMessage::Csta(a) => a.invoke_id(),
            XmlMessage::Session { invoke_id, .. } | XmlMessage::Unknown { invoke_id, .. } => *invoke_id,
        }
    }

    /// The root element's name.
    pub fn name(&self) -> String {
        match self {
            XmlMessage::Csta(a) => csta::root_name(a),
            XmlMessage::Session { msg, .. } => msg.name().to_owned(),
            XmlMessage::Unknown { name, .. } => name.clone(),
        }
    }

    /// Decode one frame as the framer handed it out: with `xml-header`, 4 invoke-id digits then
    /// the document; with `xml-nul`, the document alone.
    ///
    /// # Errors
    /// A frame shorter than its invoke id, a document that does not parse (see [`tree::parse`]),
    /// or a known message whose mandatory members are missing or malformed.
    pub fn decode(frame: &Bytes, framing: Framing) -> Result<XmlMessage, DecodeError> {
        let (invoke_id, doc, at) = split_frame(frame, framing)?;
        let doc = tree::without_forbidden_characters(doc);
        let root = tree::parse(&doc).map_err(|e| e.shifted(at))?;
        if let Some(msg) = AppSession::from_element(&root) {
            return Ok(XmlMessage::Session { invoke_id, msg });
        }
        match csta::decode(&root, &doc, invoke_id).map_err(|e| e.shifted(at))? {
            Some(apdu) => Ok(XmlMessage::Csta(apdu)),
            None => Ok(XmlMessage::Unknown { invoke_id, name: root.name.to_owned(), raw: doc }),
        }
    }

    /// Encode as one frame's content for `framing` (the invoke-id digits first with
    /// `xml-header`), the document in `version`'s namespace, appending to `out`.
    ///
    /// # Errors
    /// An APDU with no XML form (ACSE APDUs; an operation ECMA-323 does not define).
    pub fn encode(&self, framing: Framing, version: ProtocolVersion, out: &mut Vec<u8>) -> Result<(), XmlEncodeError> {
        match self {
            XmlMessage::Csta(a) => encode_apdu(a, framing, version, out),
            XmlMessage::Session { invoke_id, msg } => {
                invoke_digits(*invoke_id, framing, out);
                msg.write(out);
                Ok(())
            }
            XmlMessage::Unknown { invoke_id, raw, .. } => {
                invoke_digits(*invoke_id, framing, out);
                out.extend_from_slice(raw);
                Ok(())
            }
        }
    }

    /// [`XmlMessage::encode`] into a new buffer.
    ///
    /// # Errors
    /// As [`XmlMessage::encode`].
    pub fn to_vec(&self, framing: Framing, version: ProtocolVersion) -> Result<Vec<u8>, XmlEncodeError> {
        let mut v = Vec::with_capacity(256);
        self.encode(framing, version, &mut v)?;
        Ok(v)
    }
}

/// [`XmlMessage::encode`] of a CSTA message, without wrapping (and cloning) it into one.
///
/// # Errors
/// As [`XmlMessage::encode`].
pub fn encode_apdu(a: &Apdu, framing: Framing, version: ProtocolVersion, out: &mut Vec<u8>) -> Result<(), XmlEncodeError> {
    let start = out.len();
    invoke_digits(a.invoke_id(), framing, out);
    csta::encode(a, version, out).inspect_err(|_| out.truncate(start))
}

/// With the header, the frame starts with the invoke id as 4 digits (9999 when it has none).
fn invoke_digits(id: Option<i64>, framing: Framing, out: &mut Vec<u8>) {
    if framing == Framing::XmlHeader {
        let id = id.unwrap_or(EVENT_INVOKE_ID).rem_euclid(10_000);
        out.extend_from_slice(format!("{id:04}").as_bytes());
    }
}

/// A frame as logs show it: the only way XML frames are rendered for a log. The text (lossy
/// UTF-8), with the content of every `password` element (whatever its prefix) replaced by
/// `<redacted>`, and the digits between `*` and `#` (a proof call's secret context id) masked as
/// in [`crate::codec::acse::for_log`].
pub fn for_log(frame: &[u8]) -> String {
    let masked = crate::codec::acse::mask_dtmf_suffixes(frame);
    let text = String::from_utf8_lossy(&masked);
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    // Each start tag whose local name is `password`: its content up to the next '<' is secret.
    while let Some(i) = rest.find("password") {
        let (head, tail) = rest.split_at(i + "password".len());
        out.push_str(head);
        let tag_start = head.rfind('<');
        let is_start_tag = tag_start.is_some_and(|t| {
            let name = &head[t + 1..];
            !name.starts_with('/') && name.rsplit(':').next() == Some("password")
        }) && tail.starts_with(['>', '/', ' ', '\t', '\n', '\r']);
        match (is_start_tag, tail.find('>')) {
            (true, Some(gt)) if !tail[..gt].ends_with('/') => {
                out.push_str(&tail[..=gt]);
                let after = &tail[gt + 1..];
                let end = after.find('<').unwrap_or(after.len());
                out.push_str("<redacted>");
                rest = &after[end..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// The invoke id of a frame without decoding its document (to answer a document that does not
/// parse).
pub fn frame_invoke_id(frame: &[u8], framing: Framing) -> Option<i64> {
    if framing != Framing::XmlHeader {
        return None;
    }
    let digits = frame.get(..4)?;
    // Digits only: `str::parse` would also take a sign ("-001", "+001").
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
}

fn split_frame(frame: &Bytes, framing: Framing) -> Result<(Option<i64>, Bytes, usize), DecodeError> {
    if framing != Framing::XmlHeader {
        return Ok((None, frame.clone(), 0));
    }
    let id = frame_invoke_id(frame, framing).ok_or_else(|| DecodeError::new(ErrorKind::BadFrameHeader("CSTA XML invoke id must be 4 ASCII digits"), 0))?;
    Ok((Some(id), frame.slice(4..), 4))
}

/// Why a message has no XML form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XmlEncodeError {
    #[error("{0} has no CSTA XML form")]
    NoXmlForm(&'static str),
}

/// A small XML writer: elements in the default namespace of the root, text escaped.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }
    pub(crate) fn open_root(&mut self, name: &str, ns: &str) {
        self.out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b" xmlns=\"");
        self.out.extend_from_slice(ns.as_bytes());
        self.out.extend_from_slice(b"\">");
    }
    pub(crate) fn close_root(&mut self, name: &str) {
        self.close(name);
    }
    pub(crate) fn open(&mut self, name: &str) {
        self.open_with(name, "");
    }
    /// Open with attributes as written (leading space included, or empty).
    pub(crate) fn open_with(&mut self, name: &str, attrs: &str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(attrs.as_bytes());
        self.out.push(b'>');
    }
    pub(crate) fn close(&mut self, name: &str) {
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
    }
    pub(crate) fn empty(&mut self, name: &str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"/>");
    }
    pub(crate) fn leaf(&mut self, name: &str, text: &str) {
        self.leaf_with(name, "", text);
    }
    pub(crate) fn leaf_with(&mut self, name: &str, attrs: &str, text: &str) {
        self.open_with(name, attrs);
        self.text(text);
        self.close(name);
    }
    pub(crate) fn text(&mut self, text: &str) {
        for c in text.chars() {
            match c {
                '&' => self.out.extend_from_slice(b"&amp;"),
                '<' => self.out.extend_from_slice(b"&lt;"),
                '>' => self.out.extend_from_slice(b"&gt;"),
                // A parser turns a literal CR (and CR LF) into LF (XML 1.0 §2.11): only the
                // reference keeps it.
                '\r' => self.out.extend_from_slice(b"&#13;"),
                // Characters XML 1.0 cannot carry at all are written as the decoder reads them
                // (tree::without_forbidden_characters): controls as '?', U+FFFE and U+FFFF as
                // U+FFFD.
                c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => self.out.push(b'?'),
                '\u{fffe}' | '\u{ffff}' => self.out.extend_from_slice("\u{fffd}".as_bytes()),
                c => {
                    let mut b = [0u8; 4];
                    self.out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
    }
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
}
