//! BER (X.690) tag-length-value layer: the one place that reads and writes raw BER.
//!
//! Decoding is strict about what makes bytes wrong (lengths past the end, trailing bytes,
//! malformed headers, nesting deeper than [`MAX_DEPTH`]) and tolerant about what PBXs legitimately
//! vary: indefinite lengths on constructed values (X.690 §8.1.3.6) and non-minimal length
//! octets are accepted on input. Encoding is canonical (DER-like definite, minimal lengths and
//! minimal two's-complement integers, X.690 §8.1.3.5 and §8.3.2), which is what the worked vectors
//! of the protocol brief use.
//!
//! Every error carries the absolute byte offset in the APDU where it was found, so an admin can
//! point at the byte in a PBX trace.

use bytes::Bytes;

/// How deep constructed values may nest before the input is rejected. Real CSTA APDUs nest about
/// ten levels (ROSE → argument → event choice → event → connection → device); 32 leaves room for
/// vendor private data while keeping recursion bounded.
pub const MAX_DEPTH: usize = 32;

/// What was wrong with the bytes. The offset lives in [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("input ends inside a {0}")]
    Truncated(&'static str),
    #[error("length {length} runs past the end of the enclosing value ({available} bytes left)")]
    LengthPastEnd { length: usize, available: usize },
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("length field of {0} octets is not supported")]
    LengthTooLong(usize),
    #[error("indefinite length on a primitive value")]
    IndefinitePrimitive,
    #[error("indefinite-length value has no end-of-contents marker")]
    MissingEndOfContents,
    #[error("tag number too large")]
    TagTooLarge,
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("expected {expected}, found tag {found}")]
    UnexpectedTag { expected: &'static str, found: Tag },
    #[error("{0} must be primitive")]
    MustBePrimitive(&'static str),
    #[error("{0} must be constructed")]
    MustBeConstructed(&'static str),
    #[error("bad {0}")]
    BadValue(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("frame of {size} bytes exceeds the cap of {cap}")]
    FrameTooLarge { size: usize, cap: usize },
    #[error("bad frame header: {0}")]
    BadFrameHeader(&'static str),
    // CSTA XML (ECMA-323): the document itself.
    #[error("CSTA XML is not UTF-8")]
    XmlNotUtf8,
    #[error("XML: {0}")]
    XmlSyntax(String),
    #[error("XML document type declarations are refused (no DTD, no entity definitions)")]
    XmlDoctype,
    #[error("XML entity reference other than the five predefined ones")]
    XmlEntity,
    #[error("XML nesting deeper than {0} elements")]
    XmlTooDeep(usize),
    #[error("XML document with more than {0} elements")]
    XmlTooLarge(usize),
    #[error("XML: expected {expected}, found <{found}>")]
    XmlUnexpected { expected: &'static str, found: String },
}

/// A decoding failure: what, where (byte offset from the start of the APDU, or of the stream for
/// framing errors), and in which value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}{}", context_suffix(.context))]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub offset: usize,
    /// The ASN.1 value being decoded when the error was found (e.g. `MakeCallArgument`).
    pub context: &'static str,
}

fn context_suffix(c: &&'static str) -> String {
    if c.is_empty() { String::new() } else { format!(" (in {c})") }
}

impl DecodeError {
    pub fn new(kind: ErrorKind, offset: usize) -> Self {
        DecodeError { kind, offset, context: "" }
    }
    /// Name the value being decoded, unless an inner layer already did.
    #[must_use]
    pub fn within(mut self, context: &'static str) -> Self {
        if self.context.is_empty() {
            self.context = context;
        }
        self
    }
    /// Shift the offset, for errors found in a sub-buffer decoded in a second step.
    #[must_use]
    pub fn shifted(mut self, by: usize) -> Self {
        self.offset += by;
        self
    }
}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// A BER identifier: the first identifier octet for low tag numbers (so `Tag(0x6B)` is
/// `[APPLICATION 11]` constructed, as written in the protocol brief); high tag numbers keep the
/// class/constructed bits in the top byte and the number below.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl Tag {
    pub const INTEGER: Tag = Tag(0x02);
    pub const BIT_STRING: Tag = Tag(0x03);
    pub const OCTET_STRING: Tag = Tag(0x04);
    pub const NULL: Tag = Tag(0x05);
    pub const OID: Tag = Tag(0x06);
    pub const ENUMERATED: Tag = Tag(0x0A);
    pub const SEQUENCE: Tag = Tag(0x30);
    pub const IA5_STRING: Tag = Tag(0x16);

    fn first_octet(self) -> u8 {
        if self.0 > 0xFF { (self.0 >> 24) as u8 } else { self.0 as u8 }
    }
    pub fn constructed(self) -> bool {
        self.first_octet() & 0x20 != 0
    }
    /// 0 universal, 1 application, 2 context-specific, 3 private.
    pub fn class(self) -> u8 {
        self.first_octet() >> 6
    }
    pub fn number(self) -> u32 {
        if self.0 > 0xFF { self.0 & 0x00FF_FFFF } else { self.0 & 0x1F }
    }
    /// Context-specific tag `[n]`, constructed or not.
    pub fn context(n: u8, constructed: bool) -> Tag {
        Tag(0x80 | u32::from(n) | if constructed { 0x20 } else { 0 })
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 > 0xFF {
            write!(f, "0x{:02X}/{}", self.first_octet(), self.number())
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}
impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// One decoded TLV. Positions are absolute offsets into the APDU.
#[derive(Debug, Clone, Copy)]
pub struct Tlv {
    pub tag: Tag,
    /// Offset of the identifier octet.
    pub start: usize,
    /// Offset of the first content octet.
    pub content_start: usize,
    /// Offset just past the content (before any end-of-contents octets).
    pub content_end: usize,
    /// Offset just past the whole TLV (including end-of-contents octets).
    pub end: usize,
}

impl Tlv {
    pub fn content_len(&self) -> usize {
        self.content_end - self.content_start
    }
    pub fn expect(&self, tag: Tag, what: &'static str) -> Result<()> {
        if self.tag == tag {
            Ok(())
        } else {
            Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: what, found: self.tag }, self.start))
        }
    }
    pub fn primitive(&self, what: &'static str) -> Result<()> {
        if self.tag.constructed() {
            Err(DecodeError::new(ErrorKind::MustBePrimitive(what), self.start))
        } else {
            Ok(())
        }
    }
    pub fn constructed(&self, what: &'static str) -> Result<()> {
        if self.tag.constructed() {
            Ok(())
        } else {
            Err(DecodeError::new(ErrorKind::MustBeConstructed(what), self.start))
        }
    }
}

/// Reads consecutive TLVs from a region of one APDU buffer.
///
/// The buffer is a [`Bytes`], so values can be handed out as zero-copy slices.
#[derive(Clone)]
pub struct Reader<'a> {
    src: &'a Bytes,
    pos: usize,
    end: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over the whole buffer, at depth 0.
    pub fn new(src: &'a Bytes) -> Self {
        Reader { src, pos: 0, end: src.len(), depth: 0 }
    }

    /// A reader over the content of a constructed TLV read by this reader (or one of its parents).
    pub fn enter(&self, tlv: &Tlv) -> Result<Reader<'a>> {
        if self.depth + 1 > MAX_DEPTH {
            return Err(DecodeError::new(ErrorKind::TooDeep, tlv.start));
        }
        Ok(Reader { src: self.src, pos: tlv.content_start, end: tlv.content_end, depth: self.depth + 1 })
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.end
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn depth(&self) -> usize {
        self.depth
    }
    pub fn source(&self) -> &'a Bytes {
        self.src
    }

    /// The content bytes of a TLV as a zero-copy slice.
    pub fn content(&self, tlv: &Tlv) -> Bytes {
        self.src.slice(tlv.content_start..tlv.content_end)
    }
    pub fn content_slice(&self, tlv: &Tlv) -> &'a [u8] {
        &self.src[tlv.content_start..tlv.content_end]
    }
    /// The whole TLV (header, content, end-of-contents) as a zero-copy slice.
    pub fn raw(&self, tlv: &Tlv) -> Bytes {
        self.src.slice(tlv.start..tlv.end)
    }

    /// Look at the next TLV without consuming it.
    pub fn peek(&self) -> Result<Option<Tlv>> {
        self.clone().next()
    }

    /// Read the next TLV, or `None` at the end of the region.
    pub fn next(&mut self) -> Result<Option<Tlv>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let tlv = read_tlv(self.src, self.pos, self.end, self.depth)?;
        self.pos = tlv.end;
        Ok(Some(tlv))
    }

    /// Read the next TLV, which must exist.
    pub fn required(&mut self, what: &'static str) -> Result<Tlv> {
        match self.next()? {
            Some(t) => Ok(t),
            None => Err(DecodeError::new(ErrorKind::Missing(what), self.pos)),
        }
    }

    /// Fail unless the region has been read completely.
    pub fn finish(&self) -> Result<()> {
        if self.pos < self.end {
            Err(DecodeError::new(ErrorKind::TrailingBytes(self.end - self.pos), self.pos))
        } else {
            Ok(())
        }
    }

    /// A primitive INTEGER or ENUMERATED content, at most 8 octets.
    pub fn integer(&self, tlv: &Tlv, what: &'static str) -> Result<i64> {
        tlv.primitive(what)?;
        parse_integer(self.content_slice(tlv)).ok_or_else(|| DecodeError::new(ErrorKind::BadValue(what), tlv.start))
    }

    /// A primitive NULL (content must be empty).
    pub fn null(&self, tlv: &Tlv, what: &'static str) -> Result<()> {
        tlv.primitive(what)?;
        if tlv.content_len() != 0 {
            return Err(DecodeError::new(ErrorKind::BadValue(what), tlv.start));
        }
        Ok(())
    }

    /// A primitive string whose content must be IA5 (7-bit).
    pub fn ia5(&self, tlv: &Tlv, what: &'static str) -> Result<Ia5> {
        tlv.primitive(what)?;
        let content = self.content(tlv);
        Ia5::new(content).ok_or_else(|| DecodeError::new(ErrorKind::BadValue(what), tlv.start))
    }

    /// A primitive OCTET STRING-like content.
    pub fn octets(&self, tlv: &Tlv, what: &'static str) -> Result<Bytes> {
        tlv.primitive(what)?;
        Ok(self.content(tlv))
    }
}

/// Parse one TLV header at `pos` (bounded by `end`) and locate its end.
fn read_tlv(src: &[u8], pos: usize, end: usize, depth: usize) -> Result<Tlv> {
    let start = pos;
    let mut p = pos;
    let first = *src.get(p).filter(|_| p < end).ok_or_else(|| DecodeError::new(ErrorKind::Truncated("tag"), p))?;
    p += 1;
    let tag = if first & 0x1F == 0x1F {
        let mut number: u32 = 0;
        loop {
            let b = *src.get(p).filter(|_| p < end).ok_or_else(|| DecodeError::new(ErrorKind::Truncated("tag"), p))?;
            p += 1;
            if number > 0x0001_FFFF {
                return Err(DecodeError::new(ErrorKind::TagTooLarge, start));
            }
            number = (number << 7) | u32::from(b & 0x7F);
            if b & 0x80 == 0 {
                break;
            }
        }
        Tag((u32::from(first) << 24) | number)
    } else {
        Tag(u32::from(first))
    };
    let lb = *src.get(p).filter(|_| p < end).ok_or_else(|| DecodeError::new(ErrorKind::Truncated("length"), p))?;
    p += 1;
    if lb == 0x80 {
        // Indefinite form: constructed only; content runs to the matching end-of-contents.
        if !tag.constructed() {
            return Err(DecodeError::new(ErrorKind::IndefinitePrimitive, start));
        }
        if depth + 1 > MAX_DEPTH {
            return Err(DecodeError::new(ErrorKind::TooDeep, start));
        }
        let content_start = p;
        let mut q = p;
        loop {
            if q + 2 <= end && src[q] == 0 && src[q + 1] == 0 {
                return Ok(Tlv { tag, start, content_start, content_end: q, end: q + 2 });
            }
            if q >= end {
                return Err(DecodeError::new(ErrorKind::MissingEndOfContents, start));
            }
            let inner = read_tlv(src, q, end, depth + 1)?;
            q = inner.end;
        }
    }
    let len = if lb & 0x80 == 0 {
        usize::from(lb)
    } else {
        let n = usize::from(lb & 0x7F);
        if n > 4 {
            return Err(DecodeError::new(ErrorKind::LengthTooLong(n), p - 1));
        }
        if p + n > end {
            return Err(DecodeError::new(ErrorKind::Truncated("length"), p));
        }
        let mut l = 0usize;
        for &b in &src[p..p + n] {
            l = (l << 8) | usize::from(b);
        }
        p += n;
        l
    };
    let available = end - p;
    if len > available {
        return Err(DecodeError::new(ErrorKind::LengthPastEnd { length: len, available }, start));
    }
    Ok(Tlv { tag, start, content_start: p, content_end: p + len, end: p + len })
}

/// Decode a two's-complement integer of 1..=8 octets.
pub fn parse_integer(c: &[u8]) -> Option<i64> {
    if c.is_empty() || c.len() > 8 {
        return None;
    }
    let mut v: i64 = if c[0] & 0x80 != 0 { -1 } else { 0 };
    for &b in c {
        v = (v << 8) | i64::from(b);
    }
    Some(v)
}

/// A validated IA5String (7-bit ASCII) held as zero-copy bytes: device numbers and digit strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ia5(Bytes);

impl Ia5 {
    /// `None` if any byte is outside 0..=0x7F.
    pub fn new(b: Bytes) -> Option<Ia5> {
        if b.iter().all(|c| *c < 0x80) { Some(Ia5(b)) } else { None }
    }
    pub fn from_static(s: &'static str) -> Ia5 {
        Ia5::new(Bytes::from_static(s.as_bytes())).unwrap_or_else(|| Ia5(Bytes::new()))
    }
    pub fn as_str(&self) -> &str {
        // Checked 7-bit at construction, so always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl TryFrom<&str> for Ia5 {
    type Error = ();
    fn try_from(s: &str) -> std::result::Result<Ia5, ()> {
        Ia5::new(Bytes::copy_from_slice(s.as_bytes())).ok_or(())
    }
}

impl std::fmt::Debug for Ia5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}
impl std::fmt::Display for Ia5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Canonical BER writer over a growable buffer.
///
/// Constructed values are written in place: a one-octet length placeholder is reserved and, if
/// the content turns out longer than 127 octets, the content is shifted to make room for the
/// long form. No intermediate buffers.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }

    fn put_tag(&mut self, tag: Tag) {
        if tag.0 <= 0xFF {
            self.buf.push(tag.0 as u8);
        } else {
            self.buf.push((tag.0 >> 24) as u8);
            let n = tag.number();
            let mut groups = [0u8; 5];
            let mut k = 0;
            let mut v = n;
            loop {
                groups[k] = (v & 0x7F) as u8;
                k += 1;
                v >>= 7;
                if v == 0 {
                    break;
                }
            }
            for i in (0..k).rev() {
                self.buf.push(groups[i] | if i > 0 { 0x80 } else { 0 });
            }
        }
    }

    fn put_len(&mut self, len: usize) {
        if len < 0x80 {
            self.buf.push(len as u8);
        } else {
            let bytes = (usize::BITS / 8) as usize - (len.leading_zeros() / 8) as usize;
            self.buf.push(0x80 | bytes as u8);
            for i in (0..bytes).rev() {
                self.buf.push((len >> (8 * i)) as u8);
            }
        }
    }

    /// A primitive TLV with the given content.
    pub fn primitive(&mut self, tag: Tag, content: &[u8]) {
        self.put_tag(tag);
        self.put_len(content.len());
        self.buf.extend_from_slice(content);
    }

    /// Already-encoded bytes, copied verbatim (kept unknown fields, private data).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A constructed TLV whose content `f` writes.
    pub fn constructed(&mut self, tag: Tag, f: impl FnOnce(&mut Writer<'_>)) {
        self.put_tag(tag);
        let len_pos = self.buf.len();
        self.buf.push(0);
        let content_start = self.buf.len();
        f(&mut Writer { buf: self.buf });
        let len = self.buf.len() - content_start;
        if len < 0x80 {
            self.buf[len_pos] = len as u8;
        } else {
            let extra = (usize::BITS / 8) as usize - (len.leading_zeros() / 8) as usize;
            self.buf[len_pos] = 0x80 | extra as u8;
            let header: Vec<u8> = (0..extra).rev().map(|i| (len >> (8 * i)) as u8).collect();
            self.buf.splice(content_start..content_start, header);
        }
    }

    /// A minimal two's-complement INTEGER/ENUMERATED content under `tag`.
    pub fn integer(&mut self, tag: Tag, v: i64) {
        let bytes = v.to_be_bytes();
        let mut i = 0;
        while i < 7 {
            let (b, next) = (bytes[i], bytes[i + 1]);
            if (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0) {
                i += 1;
            } else {
                break;
            }
        }
        self.primitive(tag, &bytes[i..]);
    }

    pub fn null(&mut self, tag: Tag) {
        self.primitive(tag, &[]);
    }
}

/// Encode a dotted OID string's content octets (X.690 §8.19). `None` if it is not a valid OID.
pub fn oid_from_str(s: &str) -> Option<Vec<u8>> {
    let arcs: Vec<u64> = s.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if arcs.len() < 2 || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] > 39) {
        return None;
    }
    let mut out = Vec::new();
    let mut push = |v: u64| {
        let mut groups = Vec::new();
        let mut v = v;
        loop {
            groups.push((v & 0x7F) as u8);
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().enumerate().rev() {
            out.push(g | if i > 0 { 0x80 } else { 0 });
        }
    };
    push(arcs[0] * 40 + arcs[1]);
    for &a in &arcs[2..] {
        push(a);
    }
    Some(out)
}

/// Render OID content octets as a dotted string. `None` if malformed.
pub fn oid_to_string(c: &[u8]) -> Option<String> {
    if c.is_empty() || c[c.len() - 1] & 0x80 != 0 {
        return None;
    }
    let mut arcs = Vec::new();
    let mut v: u64 = 0;
    for &b in c {
        if v > (u64::MAX >> 7) {
            return None;
        }
        v = (v << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    let first = arcs[0];
    let (a, b) = if first < 40 { (0, first) } else if first < 80 { (1, first - 40) } else { (2, first - 80) };
    let mut s = format!("{a}.{b}");
    for x in &arcs[1..] {
        s.push('.');
        s.push_str(&x.to_string());
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(b: &[u8]) -> Result<Vec<Tlv>> {
        let src = Bytes::copy_from_slice(b);
        let mut r = Reader::new(&src);
        let mut v = Vec::new();
        while let Some(t) = r.next()? {
            v.push(t);
        }
        Ok(v)
    }

    #[test]
    fn long_and_indefinite_lengths() {
        let mut buf = Vec::new();
        Writer::new(&mut buf).constructed(Tag::SEQUENCE, |w| w.primitive(Tag::OCTET_STRING, &[7u8; 200]));
        assert_eq!(&buf[..5], &[0x30, 0x81, 203, 0x04, 0x81]);
        assert_eq!(read_all(&buf).unwrap()[0].content_len(), 203);
        // Indefinite length: 30 80 02 01 05 00 00
        let t = read_all(&[0x30, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00]).unwrap();
        assert_eq!((t[0].content_start, t[0].content_end, t[0].end), (2, 5, 7));
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(read_all(&[0x02, 0x05, 0x01]).unwrap_err().kind, ErrorKind::LengthPastEnd { length: 5, available: 1 });
        assert_eq!(read_all(&[0x02, 0x80, 0x00, 0x00]).unwrap_err().kind, ErrorKind::IndefinitePrimitive);
        assert_eq!(read_all(&[0x30, 0x80, 0x02, 0x01, 0x05]).unwrap_err().kind, ErrorKind::MissingEndOfContents);
        assert_eq!(read_all(&[0x30]).unwrap_err().kind, ErrorKind::Truncated("length"));
        assert_eq!(read_all(&[0x02, 0x85, 1, 1, 1, 1, 1]).unwrap_err().kind, ErrorKind::LengthTooLong(5));
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 40).flatten().collect();
        assert_eq!(read_all(&deep).unwrap_err().kind, ErrorKind::TooDeep);
    }

    #[test]
    fn integers_are_minimal() {
        for (v, enc) in [(0i64, vec![0u8]), (127, vec![0x7F]), (128, vec![0, 0x80]), (232, vec![0, 0xE8]), (-1, vec![0xFF]), (-129, vec![0xFF, 0x7F]), (10728, vec![0x29, 0xE8])] {
            let mut buf = Vec::new();
            Writer::new(&mut buf).integer(Tag::INTEGER, v);
            assert_eq!(&buf[2..], &enc[..], "{v}");
            assert_eq!(parse_integer(&enc), Some(v));
        }
    }

    #[test]
    fn oids() {
        let c = oid_from_str("1.3.12.0.218.200").unwrap();
        assert_eq!(c, vec![0x2B, 0x0C, 0x00, 0x81, 0x5A, 0x81, 0x48]);
        assert_eq!(oid_to_string(&c).unwrap(), "1.3.12.0.218.200");
    }

    #[test]
    fn high_tag_numbers_round_trip() {
        let mut buf = Vec::new();
        Writer::new(&mut buf).primitive(Tag((0x9F << 24) | 200), &[1]);
        assert_eq!(buf, vec![0x9F, 0x81, 0x48, 0x01, 0x01]);
        assert_eq!(read_all(&buf).unwrap()[0].tag, Tag((0x9F << 24) | 200));
    }
}
