//! Readers for PBX traces, for `cstagate decode` and the capture-driven tests:
//! - `.frames.tsv` (the format of `captures/`): one framed APDU per line with direction and label;
//! - plain hex files: one framed APDU per line, `#` comments, whitespace ignored;
//! - pcap and pcapng: TCP payload reassembled per connection and direction, then split into
//!   APDUs by the framer.

use std::collections::HashMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use crate::codec::ber::{DecodeError, ErrorKind};
use crate::codec::framing::{Framer, Framing};

/// Direction of an APDU, where the input says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Direction {
    /// Application (gateway) to PBX.
    C2P,
    /// PBX to application.
    P2C,
}

/// One APDU of a trace, with its frame header still on.
#[derive(Debug, Clone)]
pub struct CapturedFrame {
    pub dir: Option<Direction>,
    /// The framed bytes (header + APDU), or what went wrong reading them.
    pub framed: Result<Bytes, DecodeError>,
    /// The `.frames.tsv` label column, if any.
    pub label: Option<String>,
    /// Where it came from, for messages (`file:line` or `file:packet`).
    pub origin: String,
}

/// Problems reading a trace file itself (as opposed to a bad APDU inside it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a pcap/pcapng file: {reason}")]
    Pcap { path: String, reason: String },
}

/// Read any supported trace file, choosing the reader by content (pcap magic). `framing`
/// splits pcap streams; `None` guesses it per TCP stream from its first byte (`0x26`: Siemens).
/// Text traces hold framed APDUs one per line and need no framing to be read.
///
/// # Errors
/// If the file cannot be read or a pcap is corrupt. Bad hex or bad frames inside a text file are
/// reported per frame, not as an error of the whole file.
pub fn read_file(path: &Path, framing: Option<Framing>, port: Option<u16>) -> Result<Vec<CapturedFrame>, CaptureError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| CaptureError::Io { path: name.clone(), source })?;
    let magic = data.get(..4).map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    match magic {
        Some(0xA1B2_C3D4 | 0xD4C3_B2A1 | 0xA1B2_3C4D | 0x4D3C_B2A1 | 0x0A0D_0D0A) => read_pcap(&name, &data, framing, port),
        _ => Ok(read_text(&name, &String::from_utf8_lossy(&data))),
    }
}

/// Guess the framing of a text trace from its first frame: `26` followed by a byte with the top
/// bit set is the Siemens header (as a 2-byte length it would announce a 9.7 KB APDU).
pub fn guess_framing(frames: &[CapturedFrame]) -> Framing {
    frames
        .iter()
        .find_map(|f| f.framed.as_ref().ok())
        .map_or(Framing::TwoByteLength, |b| if b.len() > 2 && b[0] == 0x26 && b[1] & 0x80 != 0 { Framing::Siemens } else { Framing::TwoByteLength })
}

/// Strip the frame header from one framed APDU, checking that the length matches exactly.
///
/// # Errors
/// A bad header, an incomplete frame, or bytes after the frame.
pub fn unframe(framing: Framing, framed: &Bytes) -> Result<Bytes, DecodeError> {
    let mut buf = BytesMut::from(&framed[..]);
    let apdu = Framer::new(framing).decode(&mut buf)?.ok_or_else(|| DecodeError::new(ErrorKind::Truncated("frame"), framed.len()))?;
    if !buf.is_empty() {
        return Err(DecodeError::new(ErrorKind::TrailingBytes(buf.len()), framed.len() - buf.len()));
    }
    Ok(apdu)
}

/// Text traces: `.frames.tsv` rows (`pdu_no, segment_no, time, dir, framed_hex, label`) or one
/// hex APDU per line.
fn read_text(name: &str, text: &str) -> Vec<CapturedFrame> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let origin = format!("{name}:{}", i + 1);
        let cols: Vec<&str> = line.split('\t').collect();
        let (dir, hex_text, label) = if cols.len() >= 5 {
            let dir = match cols[3] {
                "C2P" => Some(Direction::C2P),
                "P2C" => Some(Direction::P2C),
                _ => None,
            };
            (dir, cols[4].to_owned(), cols.get(5).map(|s| (*s).to_owned()))
        } else {
            (None, line.split('#').next().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect(), None)
        };
        let framed = hex::decode(&hex_text)
            .map(Bytes::from)
            .map_err(|_| DecodeError::new(ErrorKind::BadValue("hex text"), 0));
        out.push(CapturedFrame { dir, framed, label, origin });
    }
    out
}

/// Reassembly state of one TCP direction of one connection.
struct Flow {
    buf: BytesMut,
    next_seq: Option<u32>,
    /// Chosen when the first payload byte is seen, unless given.
    framer: Option<Framer>,
    dir: Option<Direction>,
    started: bool,
}

fn read_pcap(name: &str, data: &[u8], framing: Option<Framing>, port: Option<u16>) -> Result<Vec<CapturedFrame>, CaptureError> {
    use pcap_parser::{Block, PcapBlockOwned, PcapError};

    let err = |reason: String| CaptureError::Pcap { path: name.to_owned(), reason };
    let mut reader = pcap_parser::create_reader(65536, data).map_err(|e| err(format!("{e:?}")))?;
    let mut linktypes: Vec<i32> = Vec::new();
    let mut legacy_linktype = 1;
    let mut flows: HashMap<([u8; 16], u16, [u8; 16], u16), Flow> = HashMap::new();
    let mut out = Vec::new();
    let mut packet_no = 0usize;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                let packet: Option<(i32, Vec<u8>)> = match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy_linktype = h.network.0;
                        None
                    }
                    PcapBlockOwned::Legacy(b) => Some((legacy_linktype, b.data.to_vec())),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        linktypes.push(idb.linktype.0);
                        None
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        Some((linktypes.get(epb.if_id as usize).copied().unwrap_or(1), epb.data.to_vec()))
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => Some((linktypes.first().copied().unwrap_or(1), spb.data.to_vec())),
                    PcapBlockOwned::NG(_) => None,
                };
                reader.consume(offset);
                if let Some((linktype, pkt)) = packet {
                    packet_no += 1;
                    if let Some(seg) = tcp_segment(linktype, &pkt) {
                        feed(&mut flows, seg, framing, port, &format!("{name}:packet {packet_no}"), &mut out);
                    }
                }
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.refill().is_err() {
                    return Err(err("truncated file".into()));
                }
                // A refill that brings nothing new means the file ends inside a block.
                if let Err(PcapError::Incomplete(_)) = reader.next() {
                    return Err(err("truncated block at end of file".into()));
                }
            }
            Err(e) => return Err(err(format!("{e:?}"))),
        }
    }
    Ok(out)
}

struct Segment<'a> {
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    seq: u32,
    payload: &'a [u8],
}

/// Extract the TCP segment of one captured packet (Ethernet, raw IP or Linux cooked capture).
fn tcp_segment(linktype: i32, pkt: &[u8]) -> Option<Segment<'_>> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sliced = match linktype {
        1 => SlicedPacket::from_ethernet(pkt).ok()?,
        101 | 228 | 229 => SlicedPacket::from_ip(pkt).ok()?,
        113 => SlicedPacket::from_linux_sll(pkt).ok()?,
        _ => return None,
    };
    let (src, dst) = match sliced.net? {
        NetSlice::Ipv4(v4) => (v4.header().source_addr().to_ipv6_mapped().octets(), v4.header().destination_addr().to_ipv6_mapped().octets()),
        NetSlice::Ipv6(v6) => (v6.header().source_addr().octets(), v6.header().destination_addr().octets()),
        _ => return None,
    };
    let TransportSlice::Tcp(tcp) = sliced.transport? else { return None };
    Some(Segment { src: (src, tcp.source_port()), dst: (dst, tcp.destination_port()), seq: tcp.sequence_number(), payload: tcp.payload() })
}

/// Well-known CSTA ports (OXE/OXO, HiPath 3000, OpenScape Business, Panasonic as seen in traces).
const CSTA_PORTS: [u16; 4] = [2555, 7001, 8800, 33333];

fn feed(flows: &mut HashMap<([u8; 16], u16, [u8; 16], u16), Flow>, seg: Segment<'_>, framing: Option<Framing>, port: Option<u16>, origin: &str, out: &mut Vec<CapturedFrame>) {
    if let Some(p) = port {
        if seg.src.1 != p && seg.dst.1 != p {
            return;
        }
    }
    let pbx_port = port.or_else(|| [seg.src.1, seg.dst.1].into_iter().find(|p| CSTA_PORTS.contains(p)));
    let dir = pbx_port.map(|p| if seg.src.1 == p { Direction::P2C } else { Direction::C2P });
    let key = (seg.src.0, seg.src.1, seg.dst.0, seg.dst.1);
    let flow = flows.entry(key).or_insert_with(|| Flow { buf: BytesMut::new(), next_seq: None, framer: framing.map(Framer::new), dir, started: false });
    if seg.payload.is_empty() {
        // SYN or pure ACK: the stream starts after the SYN's sequence number.
        flow.next_seq.get_or_insert(seg.seq.wrapping_add(1));
        return;
    }
    let mut payload = seg.payload;
    if let Some(next) = flow.next_seq {
        let ahead = seg.seq.wrapping_sub(next) as i32;
        if ahead < 0 {
            // Retransmission or overlap: keep only the new tail.
            let overlap = (-ahead) as usize;
            if overlap >= payload.len() {
                return;
            }
            payload = &payload[overlap..];
        }
    }
    flow.next_seq = Some(seg.seq.wrapping_add(seg.payload.len() as u32));
    flow.buf.extend_from_slice(payload);
    if !flow.started {
        flow.started = true;
        // The Alcatel session preamble ('B' from the client, 'P' from the PBX) precedes the
        // first frame; as a length byte it would announce an APDU over the frame cap.
        if framing != Some(Framing::Siemens) && matches!(flow.buf.first(), Some(b'B' | b'P')) {
            bytes::Buf::advance(&mut flow.buf, 1);
        }
    }
    let framer = match &mut flow.framer {
        Some(f) => f,
        None => {
            let Some(&first) = flow.buf.first() else { return };
            flow.framer.insert(Framer::new(if first == 0x26 { Framing::Siemens } else { Framing::TwoByteLength }))
        }
    };
    let framing = framer.framing();
    loop {
        match framer.decode(&mut flow.buf) {
            Ok(Some(apdu)) => {
                let mut framed = BytesMut::new();
                // Re-attach the header so every reader yields framed APDUs.
                if framing.write_header(apdu.len(), &mut framed).is_ok() {
                    framed.extend_from_slice(&apdu);
                }
                out.push(CapturedFrame { dir: flow.dir, framed: Ok(framed.freeze()), label: None, origin: origin.to_owned() });
            }
            Ok(None) => break,
            Err(e) => {
                out.push(CapturedFrame { dir: flow.dir, framed: Err(e), label: None, origin: origin.to_owned() });
                // The stream cannot be resynchronised: drop what is buffered.
                flow.buf.clear();
                break;
            }
        }
    }
}
