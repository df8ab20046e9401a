//! Framing of APDUs on the TCP stream, per PBX family (protocol brief §1).
//!
//! - `two-byte-length`: a 2-byte big-endian length (not counting itself) before each APDU:
//!   Panasonic, Alcatel OXE/OXO, Ericsson MD110.
//! - `siemens`: the HiPath/OpenScape Business form, `0x26` followed by a 2-byte big-endian
//!   length with its top bit set (so at most 32767 bytes of APDU).
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

/// The Siemens frame marker.
const SIEMENS_MARKER: u8 = 0x26;

/// How APDUs are delimited on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    TwoByteLength,
    Siemens,
}

impl Framing {
    pub fn header_len(self) -> usize {
        match self {
            Framing::TwoByteLength => 2,
            Framing::Siemens => 3,
        }
    }

    /// Largest APDU this framing can carry.
    pub fn max_len(self) -> usize {
        match self {
            Framing::TwoByteLength => 0xFFFF,
            Framing::Siemens => 0x7FFF,
        }
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
        }
        Ok(())
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
        }
    }

    /// Frame one APDU into a new buffer.
    ///
    /// # Errors
    /// `FrameTooLarge` if the framing cannot express the APDU's length.
    pub fn frame(self, apdu: &[u8]) -> Result<Bytes, DecodeError> {
        let mut out = BytesMut::with_capacity(apdu.len() + self.header_len());
        self.write_header(apdu.len(), &mut out)?;
        out.extend_from_slice(apdu);
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
        Framer { framing, max_frame: DEFAULT_MAX_FRAME, preamble: None, consumed: 0 }
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
        dst.reserve(apdu.len() + self.framing.header_len());
        self.framing.write_header(apdu.len(), dst).map_err(FrameIoError::Frame)?;
        dst.extend_from_slice(apdu);
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
}
