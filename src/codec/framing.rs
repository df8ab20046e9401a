//! Framing of APDUs on the TCP stream, per PBX family (protocol brief §1).
//!
//! - `two-byte-length`: a 2-byte big-endian length (not counting itself) before each APDU:
//!   Panasonic, Alcatel OXE/OXO, Ericsson MD110.
//! - `siemens`: the HiPath/OpenScape Business form, `0x26` followed by a 2-byte big-endian
//!   length with its top bit set (so at most 32767 bytes of APDU).
//!
//! - `xml-header`: CSTA XML (ECMA-323) over TCP: `00 00`, a 2-byte big-endian length of the
//!   **whole** message including this 8-byte header, then the invoke id as 4 ASCII digits, then
//!   one UTF-8 XML document. A frame handed out is the 4 id digits and the document (the XML
//!   codec splits them), so the length it writes is the frame's plus 4.
//! - `xml-nul`: XML documents each followed by a NUL byte, no header and no invoke id (some
//!   hosted PBXs). Empty documents (a NUL alone, a keep-alive of some servers) are skipped.
//!
//! Alcatel links also start with a one-byte preamble outside any frame: the client sends `'B'`
//! and the PBX answers `'P'` (§1.2). A [`Framer`] can be told to expect that byte before the
//! first frame.
//!
//! The framer is sans-IO: feed it a `BytesMut` holding whatever the socket delivered (several
//! APDUs, or part of one) and it hands back complete APDUs as zero-copy `Bytes`. It also
//! implements `tokio_util::codec::{Decoder, Encoder}` so the link can use `Framed`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::ber::{DecodeError, ErrorKind};

/// Default cap on one APDU. Real CSTA APDUs are well under 1 KiB; an OXE event with private data
/// is about 250 bytes. A peer announcing more than this is broken or hostile.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024;
/// Cap on one XML message (issue 17: a realistic CSTA XML event is under 2 KiB; 64 KiB leaves
/// room for snapshots and private data, and is all the XML header can express anyway).
pub const MAX_XML_FRAME: usize = 64 * 1024;

/// The Siemens frame marker.
const SIEMENS_MARKER: u8 = 0x26;

/// How APDUs are delimited on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    TwoByteLength,
    Siemens,
    /// ECMA-323 over TCP: `00 00`, total length, 4 ASCII digits of invoke id, the document.
    XmlHeader,
    /// ECMA-323 documents each ended by a NUL byte.
    XmlNul,
}

impl Framing {
    /// Bytes before each frame (for `xml-header`, the 4 bytes before the invoke id digits).
    pub fn header_len(self) -> usize {
        match self {
            Framing::TwoByteLength => 2,
            Framing::Siemens => 3,
            Framing::XmlHeader => 4,
            Framing::XmlNul => 0,
        }
    }

    /// Bytes after each frame (the NUL of `xml-nul`).
    pub fn trailer_len(self) -> usize {
        usize::from(self == Framing::XmlNul)
    }

    /// Whether frames carry CSTA XML (ECMA-323) rather than BER.
    pub fn is_xml(self) -> bool {
        matches!(self, Framing::XmlHeader | Framing::XmlNul)
    }

    /// Largest frame this framing can carry.
    pub fn max_len(self) -> usize {
        match self {
            Framing::TwoByteLength => 0xFFFF,
            Framing::Siemens => 0x7FFF,
            // The 16-bit length counts the 4 header bytes before the frame.
            Framing::XmlHeader => 0xFFFF - 4,
            Framing::XmlNul => MAX_XML_FRAME - 1,
        }
    }

    /// The frame cap a [`Framer`] starts with.
    fn default_max_frame(self) -> usize {
        if self.is_xml() { self.max_len() } else { DEFAULT_MAX_FRAME }
    }

    /// Write the frame header for an APDU of `len` bytes.
    ///
    /// # Errors
    /// `FrameTooLarge` if the framing cannot express `len`.
    pub fn write_header(self, len: usize, out: &mut impl BufMut) -> Result<(), DecodeError> {
        if len > self.max_len() {
            return Err(DecodeError::new(ErrorKind::FrameTooLarge { size: len, cap: self.max_len() }, 0));
        }
        match self {
            Framing::TwoByteLength => out.put_u16(len as u16),
            Framing::Siemens => {
                out.put_u8(SIEMENS_MARKER);
                out.put_u16(0x8000 | len as u16);
            }
            Framing::XmlHeader => {
                out.put_u16(0);
                out.put_u16((len + 4) as u16);
            }
            Framing::XmlNul => {}
        }
        Ok(())
    }

    /// Write what ends a frame (the NUL of `xml-nul`; nothing for the others).
    pub fn write_trailer(self, out: &mut impl BufMut) {
        if self == Framing::XmlNul {
            out.put_u8(0);
        }
    }

    /// Parse a frame header at the start of `buf`: `Ok(None)` if more bytes are needed,
    /// otherwise the APDU length.
    fn read_header(self, buf: &[u8]) -> Result<Option<usize>, ErrorKind> {
        match self {
            Framing::TwoByteLength => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                Ok(Some(usize::from(u16::from_be_bytes([buf[0], buf[1]]))))
            }
            Framing::Siemens => {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != SIEMENS_MARKER {
                    return Err(ErrorKind::BadFrameHeader("Siemens frame must start with 0x26"));
                }
                if buf.len() < 3 {
                    return Ok(None);
                }
                if buf[1] & 0x80 == 0 {
                    return Err(ErrorKind::BadFrameHeader("Siemens length must have its top bit set"));
                }
                Ok(Some(usize::from(u16::from_be_bytes([buf[1] & 0x7F, buf[2]]))))
            }
            Framing::XmlHeader => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                if buf[0] != 0 || buf[1] != 0 {
                    return Err(ErrorKind::BadFrameHeader("CSTA XML header must start with 00 00"));
                }
                let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                // The length counts the whole message: the 8 header bytes at least.
                if total < 8 {
                    return Err(ErrorKind::BadFrameHeader("CSTA XML length shorter than its 8-byte header"));
                }
                if buf.len() >= 8 && !buf[4..8].iter().all(u8::is_ascii_digit) {
                    return Err(ErrorKind::BadFrameHeader("CSTA XML invoke id must be 4 ASCII digits"));
                }
                Ok(Some(total - 4))
            }
            // Handled by the framer's scan for the NUL.
            Framing::XmlNul => Ok(None),
        }
    }

    /// Frame one APDU into a new buffer.
    ///
    /// # Errors
    /// `FrameTooLarge` if the framing cannot express the APDU's length.
    pub fn frame(self, apdu: &[u8]) -> Result<Bytes, DecodeError> {
        let mut out = BytesMut::with_capacity(apdu.len() + self.header_len() + self.trailer_len());
        self.write_header(apdu.len(), &mut out)?;
        out.extend_from_slice(apdu);
        self.write_trailer(&mut out);
        Ok(out.freeze())
    }
}

/// Splits a byte stream into APDUs.
#[derive(Debug, Clone)]
pub struct Framer {
    framing: Framing,
    max_frame: usize,
    /// A single byte expected before the first frame (`'P'` from an Alcatel PBX, `'B'` from an
    /// Alcatel client).
    preamble: Option<u8>,
    /// Bytes consumed so far, so errors can name a stream offset.
    consumed: usize,
}

impl Framer {
    pub fn new(framing: Framing) -> Self {
        Framer { framing, max_frame: framing.default_max_frame(), preamble: None, consumed: 0 }
    }
    #[must_use]
    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
        self
    }
    #[must_use]
    pub fn expect_preamble(mut self, byte: u8) -> Self {
        self.preamble = Some(byte);
        self
    }
    pub fn framing(&self) -> Framing {
        self.framing
    }
    /// Whether the preamble byte is still awaited.
    pub fn awaiting_preamble(&self) -> bool {
        self.preamble.is_some()
    }

    /// Take the next complete APDU (without its header) off the front of `buf`.
    ///
    /// # Errors
    /// A bad preamble, a bad Siemens header, an empty frame, or a frame over the cap. The stream
    /// cannot be resynchronised after any of these: the caller must drop the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if let Some(p) = self.preamble {
            let Some(&b) = buf.first() else { return Ok(None) };
            if b != p {
                return Err(DecodeError::new(ErrorKind::BadFrameHeader("unexpected byte instead of the session preamble"), self.consumed));
            }
            buf.advance(1);
            self.consumed += 1;
            self.preamble = None;
        }
        if self.framing == Framing::XmlNul {
            return self.decode_nul(buf);
        }
        let len = match self.framing.read_header(buf) {
            Ok(None) => return Ok(None),
            Ok(Some(len)) => len,
            Err(kind) => return Err(DecodeError::new(kind, self.consumed)),
        };
        if len == 0 {
            return Err(DecodeError::new(ErrorKind::BadFrameHeader("empty frame"), self.consumed));
        }
        if len > self.max_frame {
            return Err(DecodeError::new(ErrorKind::FrameTooLarge { size: len, cap: self.max_frame }, self.consumed));
        }
        let total = self.framing.header_len() + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(self.framing.header_len());
        self.consumed += total;
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// `xml-nul`: the document before the next NUL; NULs alone (empty documents) are skipped.
    fn decode_nul(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        loop {
            let Some(end) = buf.iter().position(|&b| b == 0) else {
                if buf.len() > self.max_frame {
                    return Err(DecodeError::new(ErrorKind::FrameTooLarge { size: buf.len(), cap: self.max_frame }, self.consumed));
                }
                return Ok(None);
            };
            if end > self.max_frame {
                return Err(DecodeError::new(ErrorKind::FrameTooLarge { size: end, cap: self.max_frame }, self.consumed));
            }
            let doc = buf.split_to(end).freeze();
            buf.advance(1);
            self.consumed += end + 1;
            if !doc.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(doc));
            }
        }
    }
}

impl tokio_util::codec::Decoder for Framer {
    type Item = Bytes;
    type Error = FrameIoError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameIoError> {
        Framer::decode(self, src).map_err(FrameIoError::Frame)
    }
}

impl tokio_util::codec::Encoder<&[u8]> for Framer {
    type Error = FrameIoError;
    fn encode(&mut self, apdu: &[u8], dst: &mut BytesMut) -> Result<(), FrameIoError> {
        dst.reserve(apdu.len() + self.framing.header_len() + self.framing.trailer_len());
        self.framing.write_header(apdu.len(), dst).map_err(FrameIoError::Frame)?;
        dst.extend_from_slice(apdu);
        self.framing.write_trailer(dst);
        Ok(())
    }
}

/// Errors of the framed transport: a framing violation or the socket itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameIoError {
    #[error("framing: {0}")]
    Frame(DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_apdus_in_one_read_and_one_split_across_reads() {
        let mut f = Framer::new(Framing::TwoByteLength);
        let mut buf = BytesMut::from(&[0x00, 0x02, 0xA1, 0x00, 0x00, 0x01, 0x05, 0x00][..]);
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), &[0xA1, 0x00]);
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), &[0x05]);
        assert_eq!(f.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0x03, 0xAA]);
        assert_eq!(f.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0xBB, 0xCC]);
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), &[0xAA, 0xBB, 0xCC]);
        assert!(buf.is_empty());
    }

    #[test]
    fn siemens_header_and_preamble() {
        let mut f = Framer::new(Framing::Siemens).expect_preamble(b'P');
        let mut buf = BytesMut::from(&b"P\x26\x80\x02\x05\x00"[..]);
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), &[0x05, 0x00]);
        let mut f = Framer::new(Framing::Siemens);
        let err = f.decode(&mut BytesMut::from(&[0x26, 0x00, 0x02, 0x05, 0x00][..])).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::BadFrameHeader(_)));
        let err = Framer::new(Framing::TwoByteLength).expect_preamble(b'P').decode(&mut BytesMut::from(&[0x00][..])).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::BadFrameHeader(_)));
        assert_eq!(Framing::Siemens.frame(&[0x05, 0x00]).unwrap().as_ref(), &[0x26, 0x80, 0x02, 0x05, 0x00]);
    }

    #[test]
    fn oversize_and_empty_frames_are_errors() {
        let mut f = Framer::new(Framing::TwoByteLength).with_max_frame(100);
        let err = f.decode(&mut BytesMut::from(&[0x01, 0x00][..])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::FrameTooLarge { size: 256, cap: 100 });
        let err = Framer::new(Framing::TwoByteLength).decode(&mut BytesMut::from(&[0x00, 0x00][..])).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::BadFrameHeader(_)));
        assert!(Framing::Siemens.frame(&vec![0u8; 0x8000]).is_err());
    }

    #[test]
    fn xml_header_frames_carry_the_invoke_digits_and_count_the_whole_message() {
        let framed = Framing::XmlHeader.frame(b"0042<a/>").unwrap();
        assert_eq!(framed.as_ref(), b"\x00\x00\x00\x0c0042<a/>");
        let mut f = Framer::new(Framing::XmlHeader);
        let mut buf = BytesMut::from(&framed[..5]);
        assert_eq!(f.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&framed[5..]);
        buf.extend_from_slice(&framed);
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), b"0042<a/>");
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), b"0042<a/>");
        assert!(buf.is_empty());
        for (bad, why) in [(&b"\x01\x00\x00\x0c0042<a/>"[..], "00 00"), (b"\x00\x00\x00\x070042", "shorter"), (b"\x00\x00\x00\x0c00x2<a/>", "digits")] {
            let err = Framer::new(Framing::XmlHeader).decode(&mut BytesMut::from(bad)).unwrap_err();
            assert!(matches!(err.kind, ErrorKind::BadFrameHeader(m) if m.contains(why)), "{err}");
        }
        assert!(Framing::XmlHeader.frame(&vec![b'x'; MAX_XML_FRAME - 4]).is_err(), "the length counts the 8 header bytes");
        assert!(Framing::XmlHeader.frame(&vec![b'x'; MAX_XML_FRAME - 5]).is_ok());
    }

    #[test]
    fn xml_nul_frames_end_at_each_nul_and_skip_empty_ones() {
        assert_eq!(Framing::XmlNul.frame(b"<a/>").unwrap().as_ref(), b"<a/>\x00");
        let mut f = Framer::new(Framing::XmlNul);
        let mut buf = BytesMut::from(&b"\x00<a/>\x00\n\x00<b"[..]);
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), b"<a/>");
        assert_eq!(f.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"/>\x00");
        assert_eq!(f.decode(&mut buf).unwrap().unwrap().as_ref(), b"<b/>");
        let mut f = Framer::new(Framing::XmlNul).with_max_frame(8);
        let err = f.decode(&mut BytesMut::from(&b"<aaaaaaaaa"[..])).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::FrameTooLarge { .. }), "{err}");
    }
}
