//! `cstagate decode` on CSTA XML (ECMA-323 over TCP, ECMA-354 sessions): framed hex lines, pcaps
//! (messages split across segments, several per segment, both directions, both XML framings)
//! and plain XML logs all give the same view, and that view is the BER one for the same CSTA
//! content. The XML traces in `captures/` are synthetic (no recorded XML trace exists in the
//! team's capture set): they are written by [`write_captures`] from [`MESSAGES`], and a test
//! checks the files are still what it writes (`CSTAGATE_WRITE_CAPTURES=1` rewrites them).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

const ED4: &str = "http://www.ecma-international.org/standards/ecma-323/csta/ed4";
const SESSION_NS: &str = "http://www.ecma-international.org/standards/ecma-354/appl_session";
/// The login password of the synthetic session: it must never appear in any output.
const PASSWORD: &str = "Xml-S3cret-4711";
const CALL: &str = "FF000100000000004A7F8F4F3C0E0000";

/// An OpenScape-Voice-like session: login, monitor, MakeCall 2005 → 2006, its events, a timer
/// reset, a SystemStatus. (`true`: from the application to the PBX.)
fn messages() -> Vec<(bool, &'static str, String)> {
    let decl = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
    let csta = |root: &str, members: &str| format!(r#"{decl}<{root} xmlns="{ED4}">{members}</{root}>"#);
    let sess = |root: &str, members: &str| format!(r#"{decl}<{root} xmlns="{SESSION_NS}">{members}</{root}>"#);
    let conn = |dev: &str| format!("<callID>{CALL}</callID><deviceID>N&lt;30211884{dev}&gt;;noa=nk</deviceID>");
    let xref = "<monitorCrossRefID>1234567</monitorCrossRefID>";
    vec![
        (true, "0001", sess("StartApplicationSession", &format!("<applicationInfo><applicationID>cstagate</applicationID><applicationSpecificInfo><SessionLoginInfo><userName>cti-user</userName><password>{PASSWORD}</password></SessionLoginInfo></applicationSpecificInfo></applicationInfo><requestedProtocolVersions><protocolVersion>{ED4}</protocolVersion></requestedProtocolVersions><requestedSessionDuration>180</requestedSessionDuration>"))),
        (false, "0001", sess("StartApplicationSessionPosResponse", &format!("<sessionID>B7A1C4D2E0F34A5B</sessionID><actualProtocolVersion>{ED4}</actualProtocolVersion><actualSessionDuration>180</actualSessionDuration>"))),
        (true, "0002", csta("MonitorStart", r#"<monitorObject><deviceObject typeOfNumber="explicitPublic:subscriber">2005</deviceObject></monitorObject>"#)),
        (false, "0002", csta("MonitorStartResponse", "<monitorCrossRefID>1234567</monitorCrossRefID><actualMonitorFilter><callcontrol/></actualMonitorFilter>")),
        (true, "0003", csta("MakeCall", r#"<callingDevice typeOfNumber="explicitPublic:subscriber">2005</callingDevice><calledDirectoryNumber>2006</calledDirectoryNumber><autoOriginate>prompt</autoOriginate>"#)),
        (false, "0003", csta("MakeCallResponse", &format!("<callingDevice>{}</callingDevice>", conn("2005")))),
        (false, "9999", csta("ServiceInitiatedEvent", &format!("{xref}<initiatedConnection>{}</initiatedConnection><initiatingDevice><deviceIdentifier>N&lt;302118842005&gt;;noa=nk</deviceIdentifier></initiatingDevice><localConnectionInfo>initiated</localConnectionInfo><cause>makeCall</cause>", conn("2005")))),
        (false, "9999", csta("OriginatedEvent", &format!("{xref}<originatedConnection>{}</originatedConnection><callingDevice><deviceIdentifier>N&lt;302118842005&gt;;noa=nk</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>2006</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>", conn("2005")))),
        (false, "9999", csta("DeliveredEvent", &format!("{xref}<connection>{}</connection><alertingDevice><deviceIdentifier>N&lt;302118842006&gt;;noa=nk</deviceIdentifier></alertingDevice><callingDevice><deviceIdentifier>N&lt;302118842005&gt;;noa=nk</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>2006</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>", conn("2006")))),
        (false, "9999", csta("EstablishedEvent", &format!("{xref}<establishedConnection>{}</establishedConnection><answeringDevice><deviceIdentifier>N&lt;302118842006&gt;;noa=nk</deviceIdentifier></answeringDevice><callingDevice><deviceIdentifier>N&lt;302118842005&gt;;noa=nk</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>2006</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>", conn("2006")))),
        (false, "9999", csta("ConnectionClearedEvent", &format!("{xref}<droppedConnection>{}</droppedConnection><releasingDevice><deviceIdentifier>N&lt;302118842006&gt;;noa=nk</deviceIdentifier></releasingDevice><localConnectionInfo>null</localConnectionInfo><cause>normalClearing</cause>", conn("2006")))),
        (true, "0004", sess("ResetApplicationSessionTimer", "<sessionID>B7A1C4D2E0F34A5B</sessionID><requestedSessionDuration>180</requestedSessionDuration>")),
        (false, "0004", sess("ResetApplicationSessionTimerPosResponse", "<actualSessionDuration>180</actualSessionDuration>")),
        (false, "9999", csta("SystemStatus", "<systemStatus>normal</systemStatus>")),
    ]
}

/// Frame one message with the 8-byte header.
fn header_frame(id: &str, doc: &str) -> Vec<u8> {
    let total = 8 + doc.len();
    let mut v = vec![0, 0, (total >> 8) as u8, total as u8];
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(doc.as_bytes());
    v
}

fn nul_frame(doc: &str) -> Vec<u8> {
    let mut v = doc.as_bytes().to_vec();
    v.push(0);
    v
}

/// A pretty-printed document, as a log shows it (the root at the start of its line).
fn pretty(doc: &str) -> String {
    doc.replace("?><", "?>\u{1}").replace("><", ">\n  <").replace('\u{1}', "\n<")
}

/// A little-endian classic pcap of raw IPv4 (linktype 101) TCP segments between the application
/// (192.0.2.10:40001) and the PBX (192.0.2.20:`port`), with SYNs first so sequence numbers start
/// where the reader expects.
fn pcap(port: u16, segments: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in [0xA1B2_C3D4u32.to_le_bytes().to_vec(), 2u16.to_le_bytes().to_vec(), 4u16.to_le_bytes().to_vec(), vec![0; 8], 65535u32.to_le_bytes().to_vec(), 101u32.to_le_bytes().to_vec()] {
        out.extend_from_slice(&w);
    }
    let (app, pbx) = (([192, 0, 2, 10], 40001u16), ([192, 0, 2, 20], port));
    let mut seq = [1000u32, 5000u32];
    let mut t = 0u32;
    let mut packet = |out: &mut Vec<u8>, c2p: bool, flags: u8, payload: &[u8], seq: u32| {
        let ((src, sport), (dst, dport)) = if c2p { (app, pbx) } else { (pbx, app) };
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        t += 1;
        for w in [1_772_445_300u32 + t / 10, (t % 10) * 100_000, p.len() as u32, p.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&p);
    };
    packet(&mut out, true, 0x02, &[], seq[0] - 1);
    packet(&mut out, false, 0x12, &[], seq[1] - 1);
    for (c2p, payload) in segments {
        let s = &mut seq[usize::from(!c2p)];
        packet(&mut out, *c2p, 0x18, payload, *s);
        *s += payload.len() as u32;
    }
    out
}

/// The XML stream of each direction cut the way a busy link delivers it: the events of the PBX
/// coalesced (three in one segment, then two), every other message split into 3 segments (one
/// cut inside the 8-byte header), directions interleaved as the exchange goes.
fn segments(frame: impl Fn(&str, &str) -> Vec<u8>) -> Vec<(bool, Vec<u8>)> {
    let msgs = messages();
    let mut out = Vec::new();
    let mut i = 0;
    while i < msgs.len() {
        let (c2p, id, doc) = &msgs[i];
        if *id == "9999" && msgs.get(i + 1).is_some_and(|m| m.1 == "9999") {
            let run: Vec<u8> = msgs[i..].iter().take_while(|m| m.1 == "9999").take(3).flat_map(|m| frame(m.1, &m.2)).collect();
            i += msgs[i..].iter().take_while(|m| m.1 == "9999").take(3).count();
            out.push((false, run));
            continue;
        }
        let f = frame(id, doc);
        let (a, rest) = f.split_at(3.min(f.len()));
        let (b, c) = rest.split_at(rest.len() / 2);
        for part in [a, b, c] {
            out.push((*c2p, part.to_vec()));
        }
        i += 1;
    }
    out
}

/// The synthetic traces of `captures/`, by file name.
fn capture_files() -> Vec<(&'static str, Vec<u8>)> {
    let msgs = messages();
    let mut hex = String::from("# Synthetic CSTA XML trace (captures/README.md): one framed message per line, 8-byte header form.\n");
    for (c2p, id, doc) in &msgs {
        let root = doc.split('<').nth(2).and_then(|r| r.split([' ', '>']).next()).unwrap_or("");
        hex.push_str(&format!("# {} {root}\n{}\n", if *c2p { "C2P" } else { "P2C" }, hex::encode(header_frame(id, doc))));
    }
    let mut log = String::new();
    for (n, (c2p, id, doc)) in msgs.iter().enumerate() {
        let what = if *c2p { "[csta-tx] send" } else { "[csta-rx] received" };
        log.push_str(&format!("2026-03-02 10:15:{:02},{:03} INFO  {what} {} bytes\n{id}{}\n", n / 2, (n * 137) % 1000, doc.len() + 8, pretty(doc)));
    }
    vec![
        ("captures/xml-openscape-makecall.synth.hex", hex.into_bytes()),
        ("captures/xml-openscape-makecall.synth.log", log.into_bytes()),
        ("captures/xml-openscape-makecall.synth.pcap", pcap(8800, &segments(header_frame))),
    ]
}

#[test]
fn xml_capture_files_are_what_their_generator_writes() {
    let write = std::env::var_os("CSTAGATE_WRITE_CAPTURES").is_some();
    for (name, bytes) in capture_files() {
        let path = common::root().join(name);
        if write {
            std::fs::write(&path, &bytes).expect("write capture");
        }
        assert!(std::fs::read(&path).expect(name) == bytes, "{name} is not what decode_xml.rs writes (CSTAGATE_WRITE_CAPTURES=1 rewrites it)");
    }
}

fn run(args: &[&str]) -> (bool, Vec<String>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cstagate")).args(args).current_dir(common::root()).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json_lines(args: &[&str]) -> (bool, Vec<Value>, String) {
    let (ok, lines, err) = run(args);
    (ok, lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect(), err)
}

/// A view without what differs between the forms of one trace: the numbering and the direction
/// (only pcaps know it).
fn content(v: &Value) -> Value {
    let mut m = v.as_object().cloned().unwrap_or_default();
    m.remove("n");
    m.remove("dir");
    Value::Object(m)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-decode-xml-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    dir
}

#[test]
fn xml_hex_lines_pcap_and_log_decode_to_one_view() {
    let hex = "captures/xml-openscape-makecall.synth.hex";
    let (ok, reference, err) = json_lines(&["decode", "--json", hex]);
    assert!(ok, "{err}");
    assert_eq!(reference.len(), messages().len());
    let by_op = |op: &str| reference.iter().find(|j| j["operation"] == op || j["event"] == op).unwrap_or_else(|| panic!("no {op}"));
    let make_call = by_op("makeCall");
    assert_eq!((make_call["kind"].as_str(), make_call["invoke_id"].as_i64(), make_call["element"].as_str()), (Some("invoke"), Some(3), Some("MakeCall")));
    assert_eq!(make_call["fields"]["callingDevice"], "2005");
    assert_eq!(make_call["fields"]["calledDirectoryNumber"], "2006");
    let response = &reference[5];
    assert_eq!((response["kind"].as_str(), response["call_id"].as_str()), (Some("result"), Some(CALL)), "{response}");
    let established = by_op("established");
    assert_eq!((established["xref"].as_str(), established["call_id"].as_str(), established["invoke_id"].as_i64()), (Some("1234567"), Some(CALL), Some(9999)));
    assert_eq!((established["cause"].as_str(), established["local_state"].as_str()), (Some("newCall"), Some("connected")));
    // `N<302118842006>;noa=nk` on the wire: the view shows the dialable number, as for BER.
    assert_eq!(established["fields"]["answeringDevice"], "302118842006");
    let login = &reference[0];
    assert_eq!((login["kind"].as_str(), login["operation"].as_str(), login["user"].as_str(), login["has_password"].as_bool()), (Some("session"), Some("StartApplicationSession"), Some("cti-user"), Some(true)));
    assert_eq!(reference[1]["session_id"], "B7A1C4D2E0F34A5B");
    assert_eq!(reference[13]["system_status"], "normal");

    for (file, dirs) in [("captures/xml-openscape-makecall.synth.pcap", true), ("captures/xml-openscape-makecall.synth.log", false)] {
        for dialect in ["auto", "xml"] {
            let (ok, got, err) = json_lines(&["decode", "--json", "--dialect", dialect, file]);
            assert!(ok, "{file} {dialect}: {err}");
            assert_eq!(got.iter().map(content).collect::<Vec<_>>(), reference.iter().map(content).collect::<Vec<_>>(), "{file} {dialect}");
            if dirs {
                let seen: Vec<bool> = got.iter().map(|j| j["dir"] == "C2P").collect();
                assert_eq!(seen, messages().iter().map(|m| m.0).collect::<Vec<_>>(), "{file}: directions");
            }
        }
    }
}

#[test]
fn xml_logins_never_show_their_password() {
    for file in ["captures/xml-openscape-makecall.synth.hex", "captures/xml-openscape-makecall.synth.log", "captures/xml-openscape-makecall.synth.pcap"] {
        for json in [true, false] {
            let mut args = vec!["decode", file];
            if json {
                args.insert(1, "--json");
            }
            let (ok, lines, err) = run(&args);
            let all = format!("{}\n{err}", lines.join("\n"));
            assert!(ok, "{all}");
            assert!(all.contains("cti-user"), "the user is shown: {all}");
            assert!(!all.contains(PASSWORD) && !all.contains(&hex::encode(PASSWORD)), "{all}");
        }
    }
}

#[test]
fn xml_nul_pcaps_and_one_byte_segments_decode_like_the_header_form() {
    let (_, reference, _) = json_lines(&["decode", "--json", "captures/xml-openscape-makecall.synth.hex"]);
    // Without invoke ids, the views differ from the header form only in having none.
    let without_ids: Vec<Value> = reference
        .iter()
        .map(|j| {
            let mut c = content(j);
            c.as_object_mut().map(|m| m.remove("invoke_id"));
            c
        })
        .collect();
    let dir = tmp("nul");
    let nul = dir.join("nul.pcap");
    std::fs::write(&nul, pcap(8800, &segments(|_, doc| nul_frame(doc)))).expect("write");
    // The whole header-form stream of the PBX in one-byte segments, on a port only --port names.
    let bytes: Vec<(bool, Vec<u8>)> = messages().iter().flat_map(|(c2p, id, doc)| header_frame(id, doc).into_iter().map(move |b| (*c2p, vec![b]))).collect();
    let tiny = dir.join("tiny.pcap");
    std::fs::write(&tiny, pcap(9000, &bytes)).expect("write");
    for (file, args, expect) in [(&nul, vec!["--dialect", "auto"], &without_ids), (&nul, vec!["--dialect", "xml-nul"], &without_ids), (&tiny, vec!["--port", "9000"], &reference)] {
        let mut a = vec!["decode", "--json"];
        a.extend(args);
        a.push(file.to_str().expect("utf-8"));
        let (ok, got, err) = json_lines(&a);
        assert!(ok, "{a:?}: {err}");
        let got: Vec<Value> = got.iter().map(content).collect();
        let expect: Vec<Value> = if expect == &reference { reference.iter().map(content).collect() } else { expect.clone() };
        assert_eq!(got, expect, "{a:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same CSTA content as BER (real Panasonic APDUs from captures/) and as XML renders to the
/// same view but for what the wire decides: the invoke id of events (XML events carry 9999),
/// `element`, and how ids are shown (BER octets as hex, XML text as it is: the XML here
/// carries the BER ids' hex as its ids, so the two compare key by key).
#[test]
fn the_same_csta_content_in_ber_and_in_xml_gives_the_same_view() {
    let ber = [
        "001aa11802010302010a301030068004323030353006800432303036",
        "0020a21e020103301902010a30146b123010800430303638a1083006800432303035",
        "0050a14e02010d0201153046550401110004a03ea73c6b123010800430303638a1083006800432303036630830068004323030366108300680043230303562083006800432303036640288004e01030a0116",
    ];
    let xml = [
        header_frame("0003", &format!(r#"<?xml version="1.0" encoding="UTF-8"?><MakeCall xmlns="{ED4}"><callingDevice>2005</callingDevice><calledDirectoryNumber>2006</calledDirectoryNumber></MakeCall>"#)),
        header_frame("0003", &format!(r#"<?xml version="1.0" encoding="UTF-8"?><MakeCallResponse xmlns="{ED4}"><callingDevice><callID>30303638</callID><deviceID>2005</deviceID></callingDevice></MakeCallResponse>"#)),
        header_frame("9999", &format!(r#"<?xml version="1.0" encoding="UTF-8"?><EstablishedEvent xmlns="{ED4}"><monitorCrossRefID>01110004</monitorCrossRefID><establishedConnection><callID>30303638</callID><deviceID>2006</deviceID></establishedConnection><answeringDevice><deviceIdentifier>2006</deviceIdentifier></answeringDevice><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>2006</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause></EstablishedEvent>"#)),
    ];
    let dir = tmp("same");
    let (b, x) = (dir.join("ber.hex"), dir.join("xml.hex"));
    std::fs::write(&b, ber.join("\n")).expect("write");
    std::fs::write(&x, xml.iter().map(hex::encode).collect::<Vec<_>>().join("\n")).expect("write");
    let (ok_b, ber_view, err_b) = json_lines(&["decode", "--json", "--dialect", "phase3", b.to_str().expect("utf-8")]);
    let (ok_x, xml_view, err_x) = json_lines(&["decode", "--json", x.to_str().expect("utf-8")]);
    assert!(ok_b && ok_x, "{err_b} {err_x}");
    assert_eq!(ber_view.len(), 3);
    let strip = |v: &Value, drop: &[&str]| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        for k in drop {
            m.remove(*k);
        }
        m
    };
    for (i, (bv, xv)) in ber_view.iter().zip(&xml_view).enumerate() {
        let wire_specific: &[&str] = if i == 2 { &["element", "invoke_id"] } else { &["element"] };
        assert_eq!(strip(xv, wire_specific), strip(bv, wire_specific), "message {i}");
        assert!(xv["element"].is_string());
    }
    assert_eq!(xml_view[2]["event"], "established", "the comparison is not of two empty views");
    let _ = std::fs::remove_dir_all(&dir);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let f = dir.join(name);
    std::fs::write(&f, bytes).expect("write");
    f.to_str().expect("utf-8").to_owned()
}

#[test]
fn xml_framing_errors_are_named_with_their_offset_and_decoding_goes_on() {
    let dir = tmp("errors");
    let good = header_frame("0005", &format!(r#"<SystemStatus xmlns="{ED4}"><systemStatus>normal</systemStatus></SystemStatus>"#));
    let mut long = good.clone();
    long[3] += 10;
    let mut not_utf8 = good.clone();
    let at = not_utf8.iter().position(|&b| b == b'n').expect("n");
    not_utf8[at] = 0xFF;
    let lines = [
        hex::encode(&good[..3]),                  // header cut short
        hex::encode(&long),                       // length says more than there is
        "000000050005".to_owned(),                // length under the 8 header bytes
        hex::encode(&not_utf8),                   // a byte no UTF-8 allows
        hex::encode(&good),
    ];
    let f = write(&dir, "bad.hex", lines.join("\n").as_bytes());
    let (ok, got, err) = json_lines(&["decode", "--json", "--dialect", "xml", &f]);
    assert!(!ok && err.contains("4 APDU"), "{err}");
    assert_eq!(got.len(), 5);
    let reason = |i: usize| got[i]["error"]["reason"].as_str().unwrap_or_else(|| panic!("no error: {}", got[i])).to_owned();
    assert!(reason(0).contains("frame"), "{}", reason(0));
    assert!(reason(1).contains("frame"), "{}", reason(1));
    assert!(reason(2).contains("shorter than its 8-byte header"), "{}", reason(2));
    assert!(reason(3).contains("not UTF-8"), "{}", reason(3));
    assert_eq!(got[3]["error"]["offset"], at - 4, "counted from the invoke-id digits");
    assert_eq!(got[4]["system_status"], "normal", "and the next message decodes");
    // Readable lines name the reason with its offset and where the message is.
    let (_, text, _) = run(&["decode", "--dialect", "xml", &f]);
    assert!(text[3].contains("ERROR CSTA XML is not UTF-8 at byte") && text[3].contains("bad.hex:4"), "{}", text[3]);

    // A log: a document that does not parse, one that is not UTF-8, one that never ends before
    // the next declaration; each an error at its line, and the documents after them decode.
    let ok_doc = format!(r#"<?xml version="1.0"?><SystemStatus xmlns="{ED4}"><systemStatus>normal</systemStatus></SystemStatus>"#);
    let mut log = Vec::new();
    log.extend_from_slice(format!("10:00:01 rx {ok_doc}\n10:00:02 rx <SystemStatus><systemStatus>normal</systemStatus></Oops></SystemStatus>\n").as_bytes());
    log.extend_from_slice(b"10:00:03 rx <SystemStatus><systemStatus>norm\xFFal</systemStatus></SystemStatus>\n");
    log.extend_from_slice(format!("10:00:04 rx <?xml version=\"1.0\"?><SystemStatus><systemStatus>\n10:00:05 rx 9999{}\n", pretty(&ok_doc)).as_bytes());
    let f = write(&dir, "bad.log", &log);
    let (ok, got, err) = json_lines(&["decode", "--json", &f]);
    assert!(!ok && err.contains("3 APDU"), "{err}");
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0]["system_status"], "normal");
    assert!(got[1]["error"]["reason"].as_str().is_some_and(|r| r.starts_with("XML")), "{}", got[1]);
    assert!(got[2]["error"]["reason"].as_str().is_some_and(|r| r.contains("not UTF-8")), "{}", got[2]);
    assert!(got[3]["error"]["reason"].as_str().is_some_and(|r| r.contains("does not end: another XML declaration")), "{}", got[3]);
    assert_eq!((got[4]["system_status"].as_str(), got[4]["invoke_id"].as_i64()), (Some("normal"), Some(9999)));
    let (_, text, _) = run(&["decode", &f]);
    assert!(text[2].ends_with("bad.log:3]") && text[3].ends_with("bad.log:4]"), "{text:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
