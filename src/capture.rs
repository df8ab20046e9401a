//! Readers for PBX traces, for `cstagate decode` and the capture-driven tests:
//! - `.frames.tsv` (the format of `captures/`): one framed APDU per line with direction and label;
//! - plain hex files: one framed APDU per line, `#` comments, whitespace ignored;
//! - pcap and pcapng: TCP payload reassembled per connection and direction, then split into
//!   APDUs by the framer (BER or CSTA XML framing, guessed per stream from its first bytes);
//! - plain CSTA XML logs: documents one after another, pretty-printed or not, with log text
//!   between them, each maybe preceded by its 4-digit invoke id.

use std::collections::HashMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use crate::codec::ber::{DecodeError, ErrorKind};
use crate::codec::framing::{Framer, Framing, MAX_XML_FRAME};

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
    /// The framing the reader found the frame in, when it knows it (a pcap stream's framer, an
    /// XML log); `None` for hex lines, whose framing the caller chooses. Per frame, because one
    /// pcap can hold a BER and an XML link, and an XML log documents with and without invoke id.
    pub framing: Option<Framing>,
}

/// Problems reading a trace file itself (as opposed to a bad APDU inside it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a pcap/pcapng file: {reason}")]
    Pcap { path: String, reason: String },
    /// `--port` names a port no TCP segment of the capture uses.
    #[error("{path}: no TCP segment to or from port {port}; ports seen: {}", list_ports(.seen))]
    NoSuchPort { path: String, port: u16, seen: Vec<u16> },
    /// Neither pcap/pcapng, nor a CSTA XML log, nor hex lines.
    #[error("{path}: unknown format: expected a pcap or pcapng capture, a .frames.tsv or hex-lines trace (one framed APDU per line), or a CSTA XML log")]
    UnknownFormat { path: String },
}

/// Ports seen in a capture, at most 20 of them shown.
fn list_ports(seen: &[u16]) -> String {
    if seen.is_empty() {
        return "none (no TCP in this capture)".into();
    }
    let shown: Vec<String> = seen.iter().take(20).map(u16::to_string).collect();
    format!("{}{}", shown.join(", "), if seen.len() > 20 { format!(" and {} more", seen.len() - 20) } else { String::new() })
}

/// Read any supported trace file, choosing the reader by content (pcap magic, XML markup, else
/// hex lines). `framing` splits pcap streams; `None` guesses it per TCP stream from its first
/// bytes ([`stream_framing`]). Text traces hold framed APDUs one per line and need no framing to
/// be read; XML logs are split by their documents' root elements.
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
        _ if is_xml_log(&data) => Ok(read_xml_log(&name, &data)),
        _ => {
            // Binary that is no capture, or text with no hex line in it: one line naming the
            // formats, not one error per line.
            let text = std::str::from_utf8(&data).map_err(|_| CaptureError::UnknownFormat { path: name.clone() })?;
            let frames = read_text(&name, text);
            // Mostly lines that are no hex at all: some other text (a PBX's own log, say), not a
            // hex trace with a few damaged lines.
            let not_hex = frames.iter().filter(|f| f.framed.as_ref().is_err_and(|e| matches!(e.kind, ErrorKind::BadValue("hex text")))).count();
            if not_hex > 0 && not_hex * 2 > frames.len() {
                return Err(CaptureError::UnknownFormat { path: name });
            }
            Ok(frames)
        }
    }
}

/// Guess the framing of a text trace from its first frame ([`stream_framing`]).
pub fn guess_framing(frames: &[CapturedFrame]) -> Framing {
    frames.iter().find_map(|f| f.framed.as_ref().ok()).and_then(|b| stream_framing(b)).unwrap_or(Framing::TwoByteLength)
}

/// The framing a stream (or a framed frame) shows in its first bytes, `None` while they are too
/// few to tell:
/// - `26` is the Siemens marker (as a 2-byte length, `26 8x` would announce a 9.7 KB APDU);
/// - `00 00` is the CSTA XML header (as a 2-byte length it would be an empty APDU, never sent);
/// - `<` (or a UTF-8 byte-order mark) is a bare XML document, so NUL-ended documents;
/// - anything else is a 2-byte length.
pub fn stream_framing(start: &[u8]) -> Option<Framing> {
    Some(match start {
        [] | [0] => return None,
        [0x26, ..] => Framing::Siemens,
        [0, 0, ..] => Framing::XmlHeader,
        [b'<', ..] | [0xEF, 0xBB, 0xBF, ..] => Framing::XmlNul,
        _ => Framing::TwoByteLength,
    })
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
        out.push(CapturedFrame { dir, framed, label, origin, framing: None });
    }
    out
}

/// Whether a text file is a CSTA XML log rather than hex lines: a line that is not a `#` comment
/// holds markup (`<` then a name or `?`). Hex and `.frames.tsv` lines never do; their comments
/// may (`<TAB>`).
fn is_xml_log(data: &[u8]) -> bool {
    data.split(|&b| b == b'\n').filter(|l| l.trim_ascii_start().first() != Some(&b'#')).any(|l| {
        l.windows(2).any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'?'))
    })
}

/// A CSTA XML log: each document (from its `<?xml` declaration or root start tag to the end of
/// its root element) becomes one frame, in the `xml-header` form when 4 digits (its invoke id)
/// stand right before it, else in the `xml-nul` form; the text between documents is skipped.
/// A document that does not end (the file ends, another declaration starts, or
/// [`MAX_XML_FRAME`] bytes pass first) is one error at its line, and reading goes on after it.
/// The bytes are taken as they are (no lossy UTF-8), so that a non-UTF-8 document is reported
/// by the XML codec with its offset.
fn read_xml_log(name: &str, data: &[u8]) -> Vec<CapturedFrame> {
    let mut out = Vec::new();
    let (mut line, mut counted) = (1usize, 0usize);
    let mut at = 0;
    while let Some(start) = next_document(data, at) {
        line += data[counted..start].iter().filter(|&&b| b == b'\n').count();
        counted = start;
        let origin = format!("{name}:{line}");
        let invoke_id = start.checked_sub(4).map(|i| &data[i..start]).filter(|d| d.iter().all(u8::is_ascii_digit) && (start < 5 || !data[start - 5].is_ascii_digit()));
        let (framing, framed, next) = match document_end(data, start) {
            Ok(end) => {
                let doc = &data[start..end];
                let (framing, framed) = match invoke_id {
                    Some(id) => (Framing::XmlHeader, Framing::XmlHeader.frame(&[id, doc].concat())),
                    None => (Framing::XmlNul, Framing::XmlNul.frame(doc)),
                };
                (framing, framed, end)
            }
            Err((kind, next)) => (Framing::XmlNul, Err(DecodeError::new(kind, 0)), next),
        };
        out.push(CapturedFrame { dir: None, framed, label: None, origin, framing: Some(framing) });
        at = next;
    }
    out
}

/// The start of the next document at or after `from`: an XML declaration or a start tag.
fn next_document(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let lt = i + data.get(i..)?.iter().position(|&b| b == b'<')?;
        match data.get(lt + 1) {
            Some(b) if b.is_ascii_alphabetic() || *b == b'_' => return Some(lt),
            Some(b'?') if data[lt..].starts_with(b"<?xml") => return Some(lt),
            None => return None,
            _ => i = lt + 1,
        }
    }
}

/// Where the document starting at `start` ends (just after its root's end tag), scanning at most
/// [`MAX_XML_FRAME`] bytes and counting only element depth (comments, CDATA, processing
/// instructions and quoted attribute values skipped). A well-formedness check is the codec's
/// business; this only has to find the end.
///
/// # Errors
/// Why no end was found, and where reading should go on: the next XML declaration (which no
/// document contains) after `start`, else the end of what was scanned.
fn document_end(data: &[u8], start: usize) -> Result<usize, (ErrorKind, usize)> {
    let limit = data.len().min(start + MAX_XML_FRAME);
    let scanned = &data[..limit];
    let find = |from: usize, pat: &[u8]| scanned.get(from..).and_then(|r| r.windows(pat.len()).position(|w| w == pat)).map(|p| from + p + pat.len());
    let resume = |upto: usize| find(start + 1, b"<?xml").map_or(upto, |p| p - 5);
    let mut depth = 0usize;
    let mut i = start;
    while let Some(lt) = scanned.get(i..).and_then(|r| r.iter().position(|&b| b == b'<')).map(|p| i + p) {
        let rest = &scanned[lt..];
        let after = if rest.starts_with(b"<?xml") && lt > start {
            return Err((unended("another XML declaration starts before the root element ends"), lt));
        } else if rest.starts_with(b"<!--") {
            find(lt + 4, b"-->")
        } else if rest.starts_with(b"<![CDATA[") {
            find(lt + 9, b"]]>")
        } else if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            find(lt + 2, if rest[1] == b'?' { b"?>" } else { b">" })
        } else if rest.starts_with(b"</") {
            let end = find(lt + 2, b">");
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return end.ok_or_else(|| (unended("the file ends inside the root end tag"), resume(limit)));
            }
            end
        } else {
            let end = tag_end(scanned, lt + 1);
            if let Some(e) = end {
                if scanned[e - 2] != b'/' {
                    depth += 1;
                } else if depth == 0 {
                    return Ok(e);
                }
            }
            end
        };
        let Some(next) = after else { break };
        i = next;
    }
    if limit < data.len() {
        Err((unended("no end of the root element within the 64 KiB cap"), resume(limit)))
    } else {
        Err((unended("the file ends before the root element does"), resume(limit)))
    }
}

fn unended(why: &str) -> ErrorKind {
    ErrorKind::XmlSyntax(format!("document does not end: {why}"))
}

/// Just after the `>` that ends a tag whose name starts at `from`, quotes respected.
fn tag_end(data: &[u8], from: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in data.get(from..)?.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Some(from + i + 1),
            _ => {}
        }
    }
    None
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
    let mut ports = std::collections::BTreeSet::new();
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
                        ports.extend([seg.src.1, seg.dst.1]);
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
    if let Some(port) = port.filter(|p| !ports.contains(p)) {
        return Err(CaptureError::NoSuchPort { path: name.to_owned(), port, seen: ports.into_iter().collect() });
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

/// Well-known CSTA ports (OXE/OXO, HiPath 3000, OpenScape Business and Voice, MX-ONE CSTA XML,
/// Panasonic as seen in traces).
const CSTA_PORTS: [u16; 5] = [2555, 7001, 8800, 8882, 33333];

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
        if matches!(framing, None | Some(Framing::TwoByteLength)) && matches!(flow.buf.first(), Some(b'B' | b'P')) {
            bytes::Buf::advance(&mut flow.buf, 1);
        }
    }
    let framer = match &mut flow.framer {
        Some(f) => f,
        None => {
            // Bounded wait: at most the one byte `stream_framing` needs more.
            let Some(guessed) = stream_framing(&flow.buf) else { return };
            flow.framer.insert(Framer::new(guessed))
        }
    };
    let framing = framer.framing();
    loop {
        match framer.decode(&mut flow.buf) {
            Ok(Some(apdu)) => {
                // Re-attach the header (and the NUL of `xml-nul`) so every reader yields framed
                // APDUs; the framer's cap is within what the framing can express.
                let framed = framing.frame(&apdu);
                out.push(CapturedFrame { dir: flow.dir, framed, label: None, origin: origin.to_owned(), framing: Some(framing) });
            }
            Ok(None) => break,
            Err(e) => {
                out.push(CapturedFrame { dir: flow.dir, framed: Err(e), label: None, origin: origin.to_owned(), framing: Some(framing) });
                // The stream cannot be resynchronised: drop what is buffered.
                flow.buf.clear();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Origin, framed bytes or error text, framing.
    type Doc = (String, Result<Vec<u8>, String>, Option<Framing>);

    fn docs(log: &[u8]) -> Vec<Doc> {
        read_xml_log("t", log).into_iter().map(|f| (f.origin, f.framed.map(|b| b.to_vec()).map_err(|e| e.to_string()), f.framing)).collect()
    }

    #[test]
    fn a_log_is_split_at_root_ends_whatever_the_markup_inside() {
        let log = b"x <a k='>' j=\"</a>\"><!-- </a> --><![CDATA[</a>]]><?pi </a>?><b/><c>t</c></a> tail\n\
                    12345<d/>\n0042<?xml version=\"1.0\"?>\n<e>\n</e>\n";
        let got = docs(log);
        assert_eq!(got.len(), 3, "{got:?}");
        let first = got[0].1.as_ref().expect("first");
        assert!(first.starts_with(b"<a k=") && first.ends_with(b"</c></a>\0"), "{}", String::from_utf8_lossy(first));
        assert_eq!((got[1].0.as_str(), got[1].1.as_deref(), got[1].2), ("t:2", Ok(&b"<d/>\0"[..]), Some(Framing::XmlNul)), "five digits are no invoke id");
        let e = got[2].1.as_ref().expect("e");
        assert_eq!((got[2].0.as_str(), got[2].2), ("t:3", Some(Framing::XmlHeader)));
        assert!(e.starts_with(b"\0\0\0") && e[8..].starts_with(b"<?xml") && &e[4..8] == b"0042", "{e:?}");
    }

    #[test]
    fn a_document_that_does_not_end_is_one_error_and_reading_goes_on() {
        let mut log = b"<a><b>".to_vec();
        log.extend(std::iter::repeat_n(b'x', MAX_XML_FRAME));
        log.extend_from_slice(b"\n<?xml version=\"1.0\"?><c/>\n<d><e>");
        let got = docs(&log);
        assert_eq!(got.len(), 3, "{:?}", got.iter().map(|g| (&g.0, g.1.is_ok())).collect::<Vec<_>>());
        assert!(got[0].1.as_ref().is_err_and(|e| e.contains("64 KiB")), "{:?}", got[0].1);
        assert_eq!((got[1].0.as_str(), got[1].1.as_deref()), ("t:2", Ok(&b"<?xml version=\"1.0\"?><c/>\0"[..])));
        assert!(got[2].1.as_ref().is_err_and(|e| e.contains("file ends")), "{:?}", got[2].1);
        assert!(docs(b"no markup < here\n").is_empty());
    }

    #[test]
    fn stream_framing_from_the_first_bytes() {
        assert_eq!(stream_framing(&[0]), None);
        assert_eq!(stream_framing(b"\x00\x00\x00\x0c0001<a/>"), Some(Framing::XmlHeader));
        assert_eq!(stream_framing(b"<?xml"), Some(Framing::XmlNul));
        assert_eq!(stream_framing(&[0x26, 0x80]), Some(Framing::Siemens));
        assert_eq!(stream_framing(&[0x00, 0x0e, 0xa1]), Some(Framing::TwoByteLength));
        assert!(is_xml_log(b"# columns: a<TAB>b\n<a/>") && !is_xml_log(b"# a<TAB>b\n000ea10c\n"));
    }
}
