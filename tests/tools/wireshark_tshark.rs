//! The Wireshark dissector (`contrib/wireshark/cstagate.lua`) run by a real tshark: every APDU
//! (and CSTA XML message) of every pcap in `captures/`, and of pcaps written here from the `.frames.tsv` files (APDUs
//! coalesced and split across TCP segments, the Alcatel preamble, a port reached only through
//! Decode As), gets the same kind, operation, event, invoke id, cross-reference id, call id and
//! devices as `cstagate decode --json`; malformed frames are marked as expert info, never a Lua
//! error; and whatever it marks malformed, the codec refuses too.
//!
//! Needs `tshark` (Debian `tshark`): skipped with a notice without it, mandatory in CI
//! (`CSTAGATE_REQUIRE_TSHARK=1`, `.ci/run`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cstagate::capture::{self, Direction};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common;

fn tshark_present() -> bool {
    common::require_external("tshark (Wireshark)", "CSTAGATE_REQUIRE_TSHARK", &["tshark", "--version"], "apt-get install tshark")
}

fn script() -> PathBuf {
    common::path("contrib/wireshark/cstagate.lua")
}

fn scratch(name: &str) -> PathBuf {
    let dir = common::path("target/tools-wireshark");
    std::fs::create_dir_all(&dir).expect("target/tools-wireshark");
    dir.join(name)
}

/// What tshark showed of one pcap: the dissector's items (one per APDU or preamble or bad
/// frame, in order), and the whole JSON text.
struct Tshark {
    items: Vec<Value>,
    text: String,
}

/// Run tshark with the dissector on `pcap` (JSON output, duplicate keys merged into arrays so
/// that several APDUs of one segment are all kept).
fn tshark(pcap: &Path, extra: &[&str]) -> Tshark {
    let lua = format!("lua_script:{}", script().display());
    let mut command = Command::new("tshark");
    command.args(["-n", "-X", &lua, "-r"]).arg(pcap).args(["-T", "json", "--no-duplicate-keys"]).args(extra).env("LC_ALL", "C");
    let out = output_within(command, std::time::Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed on {}: {stderr}", pcap.display());
    // A script that does not load is only a message on stderr: tshark goes on without it.
    assert!(!stderr.contains("Lua") && !stderr.contains("lua"), "the dissector did not load cleanly: {stderr}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for bad in ["Lua Error", "_ws.lua.error", "cstagate.bug"] {
        assert!(!text.contains(bad), "{bad} in tshark's output for {}:\n{}", pcap.display(), excerpt(&text, bad));
    }
    let packets: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("tshark's JSON for {}: {e}", pcap.display()));
    let mut items = Vec::new();
    for p in &packets {
        match &p["_source"]["layers"]["cstagate"] {
            Value::Array(a) => items.extend(a.iter().cloned()),
            Value::Null => {}
            one => items.push(one.clone()),
        }
    }
    Tshark { items, text }
}

/// Run a command to its end, failing the test if it has not ended within `limit` (a dissector
/// stuck in a loop must fail the test, not hang it): the process is waited for on a thread and
/// killed when the limit passes.
fn output_within(mut command: Command, limit: std::time::Duration) -> std::process::Output {
    use std::process::Stdio;
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("tshark runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("tshark's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("tshark did not end within {limit:?} (a dissector loop?): killed");
        }
    }
}

fn excerpt(text: &str, what: &str) -> String {
    let at = text.find(what).unwrap_or(0);
    let start = text[..at].char_indices().rev().nth(600).map_or(0, |(i, _)| i);
    text[start..].chars().take(1200).collect()
}

/// `cstagate decode --json` of a file, one object per APDU.
fn decode(path: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_cstagate")).arg("decode").arg("--json").args(extra).arg(path).output().expect("cstagate decode runs");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("decode --json line {l:?}: {e}"))).collect()
}

/// A field of a dissector item as one string (tshark shows every value as a string; bytes
/// with colons, which are dropped).
fn field(item: &Value, name: &str) -> Option<String> {
    let v = match item.get(name)? {
        Value::Array(a) => a.first()?.clone(),
        v => v.clone(),
    };
    v.as_str().map(|s| if name == "cstagate.xref" || name == "cstagate.call_id" { s.replace(':', "") } else { s.to_owned() })
}

fn all(item: &Value, name: &str) -> Vec<String> {
    match item.get(name) {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![],
    }
}

fn malformed(item: &Value) -> bool {
    item.to_string().contains("cstagate.malformed")
}

/// Every string anywhere in a JSON value.
fn strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The dissector's APDUs against `cstagate decode --json`'s, one by one.
fn compare(what: &str, shown: &Tshark, decoded: &[Value]) -> usize {
    let phase2 = what.starts_with("oxe");
    // CSTA XML: the dissector reads the root element and the ids, not the members.
    let xml = what.starts_with("xml");
    let apdus: Vec<&Value> = shown.items.iter().filter(|i| i.get("cstagate.kind").is_some() || malformed(i)).collect();
    assert_eq!(apdus.len(), decoded.len(), "{what}: tshark shows {} APDUs, cstagate decode {}", apdus.len(), decoded.len());
    for (n, (item, d)) in apdus.iter().zip(decoded).enumerate() {
        let at = format!("{what}: APDU {} ({})", n + 1, d);
        assert!(d.get("error").is_none(), "{at}: the codec refuses a capture APDU");
        assert!(!malformed(item), "{at}: the dissector marks it malformed: {item}");
        let s = |k: &str| d.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        assert_eq!(field(item, "cstagate.kind"), s("kind"), "{at}: kind");
        assert_eq!(field(item, "cstagate.operation"), s("operation"), "{at}: operation");
        assert_eq!(field(item, "cstagate.event"), s("event"), "{at}: event");
        assert_eq!(field(item, "cstagate.invoke_id"), s("invoke_id"), "{at}: invoke id");
        assert_eq!(field(item, "cstagate.xref"), s("xref"), "{at}: cross-reference id");
        assert_eq!(field(item, "cstagate.call_id"), s("call_id"), "{at}: call id");
        if d.get("opcode").is_some_and(|o| !o.is_null()) {
            assert_eq!(field(item, "cstagate.opcode"), s("opcode"), "{at}: opcode");
        }
        if let Some(f) = d.get("failure") {
            let name = f["name"].as_str().map_or_else(|| f["value"].to_string(), str::to_owned);
            assert_eq!(field(item, "cstagate.failure"), Some(format!("{}/{name}", f["category"].as_str().unwrap_or(""))), "{at}: universalFailure");
        }
        if let Some(p) = d.get("problem") {
            assert_eq!(field(item, "cstagate.problem.kind").as_deref(), p["kind"].as_str(), "{at}: reject kind");
            assert_eq!(field(item, "cstagate.problem"), Some(p["name"].as_str().map_or_else(|| p["value"].to_string(), str::to_owned)), "{at}: reject problem");
        }
        // Devices: each device member the codec names (a `...Device`/`...Object` member holding
        // digits) the dissector shows; and each the dissector shows is one the codec decoded,
        // where the codec decoded the whole body (not an `other` event kept raw, nor Phase II
        // connection lists, whose members the codec skips).
        let mut decoded_strings = BTreeSet::new();
        strings(d.get("fields").unwrap_or(&Value::Null), &mut decoded_strings);
        let devices: BTreeSet<String> = all(item, "cstagate.device").into_iter().collect();
        if xml {
            continue;
        }
        if d.get("raw").is_none() && !phase2 {
            for dev in &devices {
                assert!(decoded_strings.contains(dev), "{at}: the dissector shows device {dev}, the codec has {decoded_strings:?}");
            }
        }
        if let Some(Value::Object(fields)) = d.get("fields") {
            for (k, v) in fields {
                if let Some(digits) = v.as_str().filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit())) {
                    if k.ends_with("Device") || k.ends_with("Object") {
                        assert!(devices.contains(digits), "{at}: the codec's {k} = {digits} is not among the dissector's devices {devices:?}");
                    }
                }
            }
        }
    }
    apdus.len()
}

// ---- writing pcaps -------------------------------------------------------------------------

/// One TCP connection between the application (192.0.2.10) and the PBX (192.0.2.20).
struct Conn {
    client_port: u16,
    pbx_port: u16,
    /// Payloads in the order sent, each one TCP segment.
    segments: Vec<(Direction, Vec<u8>)>,
}

/// A classic pcap (Ethernet, IPv4, TCP) of the connections, one after another, each with its
/// handshake.
fn write_pcap(path: &Path, conns: &[Conn]) {
    use etherparse::PacketBuilder;
    let mut out = Vec::new();
    out.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let (app, pbx) = ([192, 0, 2, 10], [192, 0, 2, 20]);
    let (app_mac, pbx_mac) = ([2, 0, 0, 0, 0, 10], [2, 0, 0, 0, 0, 20]);
    let mut t = 0u32;
    for c in conns {
        let (mut cseq, mut sseq) = (1000u32, 5000u32);
        let mut packet = |from_app: bool, seq: u32, ack: u32, syn: bool, payload: &[u8]| {
            let b = if from_app { PacketBuilder::ethernet2(app_mac, pbx_mac).ipv4(app, pbx, 64).tcp(c.client_port, c.pbx_port, seq, 65535) } else { PacketBuilder::ethernet2(pbx_mac, app_mac).ipv4(pbx, app, 64).tcp(c.pbx_port, c.client_port, seq, 65535) };
            let b = match (syn, ack) {
                (true, 0) => b.syn(),
                (true, a) => b.syn().ack(a),
                (false, a) => b.ack(a).psh(),
            };
            let mut frame = Vec::new();
            b.write(&mut frame, payload).expect("packet");
            t += 1;
            out.extend_from_slice(&(t / 1000).to_le_bytes());
            out.extend_from_slice(&((t % 1000) * 1000).to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            out.extend_from_slice(&frame);
        };
        packet(true, cseq, 0, true, &[]);
        packet(false, sseq, cseq + 1, true, &[]);
        cseq += 1;
        sseq += 1;
        packet(true, cseq, sseq, false, &[]);
        for (dir, payload) in &c.segments {
            match dir {
                Direction::C2P => {
                    packet(true, cseq, sseq, false, payload);
                    cseq = cseq.wrapping_add(payload.len() as u32);
                }
                Direction::P2C => {
                    packet(false, sseq, cseq, false, payload);
                    sseq = sseq.wrapping_add(payload.len() as u32);
                }
            }
        }
    }
    std::fs::write(path, out).expect("write pcap");
}

/// The framed APDUs of a `.frames.tsv`, with their direction.
fn tsv_frames(name: &str) -> Vec<(Direction, Vec<u8>)> {
    capture::read_file(&common::path(&format!("captures/{name}")), None, None)
        .expect("readable")
        .into_iter()
        .map(|f| (f.dir.expect("direction"), f.framed.expect("framed").to_vec()))
        .collect()
}

fn pbx_port(name: &str) -> u16 {
    if name.starts_with("hipath") {
        7001
    } else if name.starts_with("oxe") {
        2555
    } else {
        33333
    }
}

/// Two connections from one trace: its APDUs coalesced (consecutive ones of one direction up to
/// three to a segment), and each APDU split in three segments (the first holding its first
/// byte only, inside the frame header). OXE sessions start with the Alcatel preamble.
fn conns_of(frames: &[(Direction, Vec<u8>)], port: u16, preamble: bool) -> Vec<Conn> {
    let start = |c: &mut Vec<(Direction, Vec<u8>)>| {
        if preamble {
            c.push((Direction::C2P, b"B".to_vec()));
            c.push((Direction::P2C, b"P".to_vec()));
        }
    };
    let mut coalesced = Vec::new();
    start(&mut coalesced);
    let mut run: Option<(Direction, Vec<u8>, usize)> = None;
    for (dir, f) in frames {
        match &mut run {
            Some((d, buf, n)) if d == dir && *n < 3 => {
                buf.extend_from_slice(f);
                *n += 1;
            }
            _ => {
                if let Some((d, buf, _)) = run.take() {
                    coalesced.push((d, buf));
                }
                run = Some((*dir, f.clone(), 1));
            }
        }
    }
    if let Some((d, buf, _)) = run {
        coalesced.push((d, buf));
    }
    let mut split = Vec::new();
    start(&mut split);
    for (dir, f) in frames {
        let mid = 1 + (f.len() - 1) / 2;
        split.push((*dir, f[..1].to_vec()));
        split.push((*dir, f[1..mid].to_vec()));
        if mid < f.len() {
            split.push((*dir, f[mid..].to_vec()));
        }
    }
    vec![Conn { client_port: 41000, pbx_port: port, segments: coalesced }, Conn { client_port: 41001, pbx_port: port, segments: split }]
}

// ---- the tests -----------------------------------------------------------------------------

#[test]
fn every_capture_apdu_gets_the_codecs_kind_operation_and_event() {
    if !tshark_present() {
        return;
    }
    let dir = common::path("captures");
    let mut names: Vec<String> = std::fs::read_dir(&dir).expect("captures/").filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).filter(|n| n.ends_with(".pcap")).collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    let mut compared = 0;
    for name in &names {
        let path = dir.join(name);
        let shown = tshark(&path, &[]);
        compared += compare(name, &shown, &decode(&path, &[]));
    }
    assert!(compared >= 200, "only {compared} APDUs compared");
}

#[test]
fn pcaps_written_from_the_frames_files_decode_alike_coalesced_split_and_preambled() {
    if !tshark_present() {
        return;
    }
    let mut names: Vec<String> = std::fs::read_dir(common::path("captures")).expect("captures/").filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).filter(|n| n.ends_with(".frames.tsv")).collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in &names {
        let frames = tsv_frames(name);
        let pcap = scratch(&name.replace(".frames.tsv", ".written.pcap"));
        write_pcap(&pcap, &conns_of(&frames, pbx_port(name), name.starts_with("oxe")));
        let shown = tshark(&pcap, &[]);
        let decoded = decode(&pcap, &[]);
        assert_eq!(decoded.len(), 2 * frames.len(), "{name}: cstagate decode reads every APDU of both connections");
        compare(name, &shown, &decoded);
        // The text trace itself decodes to the same APDUs (the pcap lost nothing).
        let from_tsv = decode(&common::path(&format!("captures/{name}")), &[]);
        for (a, b) in from_tsv.iter().zip(&decoded) {
            for k in ["kind", "operation", "event", "invoke_id"] {
                assert_eq!(a.get(k), b.get(k), "{name}: {k} of {a} and {b}");
            }
        }
        if name.starts_with("oxe") {
            let preambles: Vec<String> = shown.items.iter().filter_map(|i| field(i, "cstagate.preamble")).collect();
            assert_eq!(preambles, ["B", "P", "B", "P"], "{name}: the Alcatel preamble of each connection");
            assert!(!shown.text.contains("cstagate.preamble.unexpected"), "{name}: a preamble at the start of a stream is expected");
        }
    }
}

#[test]
fn another_port_is_dissected_through_decode_as_only() {
    if !tshark_present() {
        return;
    }
    let name = "panasonic-csta3-makecall-20160727.frames.tsv";
    let frames = tsv_frames(name);
    let pcap = scratch("decode-as-40333.pcap");
    write_pcap(&pcap, &[Conn { client_port: 41000, pbx_port: 40333, segments: frames.clone() }]);
    // Not a CSTA port: the heuristic leaves it alone.
    assert!(tshark(&pcap, &[]).items.is_empty(), "the heuristic took a stream on port 40333");
    let shown = tshark(&pcap, &["-d", "tcp.port==40333,cstagate"]);
    let decoded = decode(&pcap, &["--port", "40333"]);
    assert_eq!(decoded.len(), frames.len());
    compare("Decode As tcp.port 40333", &shown, &decoded);
}

/// A valid frame, so that the heuristic takes the stream, then the bad one.
const GOOD: &str = "000ea10c020101020200d330030a0102";

#[test]
fn malformed_frames_are_expert_info_never_a_lua_error() {
    if !tshark_present() {
        return;
    }
    let deep = format!("{}{}", "a180".repeat(40), "0000".repeat(40));
    // (what, PBX port, bytes after the good frame)
    let cases: Vec<(&str, u16, String)> = vec![
        ("INTEGER past its SEQUENCE", 33333, "0005a103020501".into()),
        ("long-form length past the end", 33333, "0006a184ffffffff".into()),
        ("5-octet length field", 33333, "0007a1850102030405".into()),
        ("indefinite length without end-of-contents", 33333, "0005a180020101".into()),
        ("indefinite length on a primitive", 33333, "0007a1050280010000".into()),
        ("nesting deeper than the codec's limit", 33333, format!("{:04x}{deep}", deep.len() / 2)),
        ("trailing byte after the APDU", 33333, "0009a40602010180010000".into()),
        ("not an ACSE or ROSE tag", 33333, "0003300100".into()),
        ("event report without its event", 33333, "000da10b020101020115300355010a".into()),
        ("invoke without an opcode", 33333, "0005a103020101".into()),
        ("empty frame", 33333, "0000".into()),
        ("frame over the cap", 33333, format!("7fff{}", "a1".repeat(16))),
        ("Siemens length without its top bit", 7001, "260005a103020101".into()),
        ("garbage", 2555, "ff13a7c3d9e0017f55aa55aa01020304".into()),
    ];
    let hipath_good = "26800ea10c020101020200d330030a0102";
    let conns: Vec<Conn> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, port, bad))| {
            let good = if *port == 7001 { hipath_good } else { GOOD };
            Conn { client_port: 42000 + i as u16, pbx_port: *port, segments: vec![(Direction::P2C, hex::decode(good).expect("hex")), (Direction::P2C, hex::decode(bad).expect("hex"))] }
        })
        .collect();
    let pcap = scratch("malformed.pcap");
    write_pcap(&pcap, &conns);
    let shown = tshark(&pcap, &[]);
    let decoded = decode(&pcap, &[]);
    for (i, (what, port, _)) in cases.iter().enumerate() {
        let client = 42000 + i as u16;
        // The packets of this case's connection: its tcp.stream is its index.
        let packets: Vec<Value> = serde_json::from_str::<Vec<Value>>(&shown.text).expect("json").into_iter().filter(|p| p["_source"]["layers"]["tcp"]["tcp.stream"] == Value::String(i.to_string())).collect();
        assert!(!packets.is_empty(), "{what}: no packets of stream {i}");
        let marked = packets.iter().any(|p| p["_source"]["layers"]["cstagate"].to_string().contains("cstagate.malformed"));
        assert!(marked, "{what} (port {port}, client port {client}): not marked malformed:\n{}", serde_json::to_string_pretty(&packets).unwrap_or_default());
    }
    // The codec refuses each of them too (one error per connection).
    let errors = decoded.iter().filter(|d| d.get("error").is_some()).count();
    assert_eq!(errors, cases.len(), "cstagate decode: {decoded:?}");
    // Without TCP reassembly a frame cut short by the end of the data is malformed too.
    let cut = scratch("cut.pcap");
    write_pcap(&cut, &[Conn { client_port: 43000, pbx_port: 33333, segments: vec![(Direction::P2C, hex::decode(format!("{GOOD}0040a13e0201")).expect("hex"))] }]);
    let shown = tshark(&cut, &["-o", "tcp.desegment_tcp_streams:FALSE"]);
    assert!(shown.items.iter().any(malformed), "a cut frame without reassembly: {:?}", shown.items);
}

/// Capture APDUs with random damage (bytes changed, inserted, removed), each re-framed so the
/// stream stays in step: tshark never fails, the dissector never raises a Lua error, and every
/// APDU it marks malformed the codec refuses as well (the dissector checks less than the codec,
/// never more).
#[test]
fn damaged_apdus_never_break_the_dissector_and_its_malformed_marks_are_the_codecs() {
    if !tshark_present() {
        return;
    }
    let seed = common::test_seed("wireshark damaged APDUs");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut apdus: Vec<Vec<u8>> = Vec::new();
    for name in ["panasonic-csta3-makecall-20160727.frames.tsv", "panasonic-csta3-rejects-20161101.frames.tsv"] {
        apdus.extend(tsv_frames(name).into_iter().map(|(_, f)| f[2..].to_vec()));
    }
    let mut segments = vec![(Direction::P2C, hex::decode(GOOD).expect("hex"))];
    let mut damaged = 0;
    // One change per APDU, mostly a byte replaced (which often keeps the structure and so
    // reaches the member checks), sometimes several or a byte inserted or removed.
    for _ in 0..1000 {
        let mut a = apdus[rng.random_range(0..apdus.len())].clone();
        let changes = if rng.random_bool(0.8) { 1 } else { rng.random_range(2..4) };
        for _ in 0..changes {
            let at = rng.random_range(0..a.len());
            match rng.random_range(0..5) {
                0..=2 => a[at] = rng.random(),
                3 => a.insert(at, rng.random()),
                _ if a.len() > 1 => {
                    a.remove(at);
                }
                _ => {}
            }
        }
        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&a);
        segments.push((Direction::P2C, framed));
        damaged += 1;
    }
    let pcap = scratch("damaged.pcap");
    write_pcap(&pcap, &[Conn { client_port: 44000, pbx_port: 33333, segments }]);
    let shown = tshark(&pcap, &[]);
    let decoded = decode(&pcap, &[]);
    let apdus: Vec<&Value> = shown.items.iter().filter(|i| i.get("cstagate.kind").is_some() || malformed(i)).collect();
    assert_eq!(apdus.len(), damaged + 1, "one item per frame");
    assert_eq!(decoded.len(), damaged + 1);
    let mut marked = 0;
    for (item, d) in apdus.iter().zip(&decoded) {
        if malformed(item) {
            marked += 1;
            assert!(d.get("error").is_some(), "the dissector marks malformed what the codec decodes: {d}\n{item}");
        }
    }
    assert!(marked > 0, "{damaged} damaged APDUs and none marked malformed");
    let accepted = decoded.iter().filter(|d| d.get("error").is_none()).count();
    assert!(accepted > damaged / 10, "only {accepted} of {damaged} damaged APDUs decode: too few reach the member checks");
}

/// The README's tshark example: its command, run here, prints the lines the README shows (its
/// `...` ends them).
#[test]
fn the_readmes_tshark_example_is_what_tshark_prints() {
    if !tshark_present() {
        return;
    }
    let readme = std::fs::read_to_string(common::path("README.md")).expect("README.md");
    let block = readme.split("```\n").find(|b| b.starts_with("tshark -n -X lua_script:contrib/wireshark/cstagate.lua")).expect("the README's tshark example");
    let mut lines = block.lines();
    let command: Vec<&str> = lines.next().expect("command").split_whitespace().collect();
    let shown: Vec<&str> = lines.take_while(|l| *l != "...").collect();
    assert!(shown.len() >= 5, "{shown:?}");
    let out = Command::new(command[0]).args(&command[1..]).current_dir(common::root()).env("LC_ALL", "C.UTF-8").output().expect("tshark runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    let printed: Vec<&str> = printed.lines().take(shown.len()).collect();
    assert_eq!(printed, shown, "the README's tshark example (README.md, Tools, Wireshark)");
}

/// Values the captures do not hold, each framed on one connection: invoke ids of 1 to 8 octets
/// and negative, a linked id, a global operation code, universalFailure in both taggings (named,
/// unnamed, NULL), reject problems, and a bad ENUMERATED. Each gets what `cstagate decode` shows,
/// and the bad one is malformed for both.
#[test]
fn edge_values_match_the_codec() {
    if !tshark_present() {
        return;
    }
    let apdus = [
        "a11102067fffffffffff020200d330030a0102",
        "a10c0201ff020200d330030a0102",
        "a11302088000000000000001020200d330030a0102",
        "a113020105800104020147300830068004 32303035",
        "a10a020107 06032b0c00 0500",
        "a30b020102020101 a0030a0103",
        "a309020103020101 810103",
        "a30b020104020101 a2030a017f",
        "a30a020105020101 a6020500",
        "a30a020106020101 a7020500",
        "a30b020107020101 a5030a0102",
        "a406020108 810101",
        "a407020109 83020004",
        "a405 0500 800102",
        "a30a020101020101 a0020a00",
    ];
    let mut segments = Vec::new();
    for a in apdus {
        let a = hex::decode(a.replace(' ', "")).unwrap_or_else(|e| panic!("{a}: {e}"));
        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&a);
        segments.push((Direction::P2C, framed));
    }
    let pcap = scratch("edge-values.pcap");
    write_pcap(&pcap, &[Conn { client_port: 45000, pbx_port: 33333, segments }]);
    let shown = tshark(&pcap, &[]);
    let decoded = decode(&pcap, &[]);
    assert_eq!(decoded.len(), apdus.len());
    let (bad, good): (Vec<usize>, Vec<usize>) = (0..apdus.len()).partition(|&i| decoded[i].get("error").is_some());
    assert_eq!(bad.len(), 1, "the codec refuses only the bad ENUMERATED: {decoded:?}");
    let items: Vec<&Value> = shown.items.iter().filter(|i| i.get("cstagate.kind").is_some() || malformed(i)).collect();
    assert_eq!(items.len(), apdus.len());
    assert!(malformed(items[bad[0]]), "the bad ENUMERATED is not marked: {}", items[bad[0]]);
    let good_items = Tshark { items: good.iter().map(|&i| items[i].clone()).collect(), text: String::new() };
    let good_decoded: Vec<Value> = good.iter().map(|&i| decoded[i].clone()).collect();
    compare("edge values", &good_items, &good_decoded);
}

/// The Dialect preference overrides the automatic choice: the Panasonic (Phase III) capture read
/// as Phase II names its operations and events as `cstagate decode --dialect oxe` does (systemStatus
/// 211 is no Phase II operation), for every APDU the codec decodes that way.
#[test]
fn the_dialect_preference_forces_the_names() {
    if !tshark_present() {
        return;
    }
    let path = common::path("captures/panasonic-csta3-makecall-20160727.synth.pcap");
    let shown = tshark(&path, &["-o", "cstagate.dialect:Phase II (ECMA-217/218, Alcatel OXE)"]);
    let decoded = decode(&path, &["--dialect", "oxe"]);
    let items: Vec<&Value> = shown.items.iter().filter(|i| i.get("cstagate.kind").is_some()).collect();
    assert_eq!(items.len(), decoded.len());
    let mut compared = 0;
    for (item, d) in items.iter().zip(&decoded) {
        if d.get("error").is_some() {
            continue;
        }
        let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
        for k in ["kind", "operation", "event"] {
            assert_eq!(field(item, &format!("cstagate.{k}")), s(k), "{k} of {d}");
        }
        compared += 1;
    }
    assert!(compared >= 10 && items.iter().any(|i| field(i, "cstagate.operation").as_deref() == Some("op211")), "{compared} compared");
}

/// CSTA XML ended by NULs (no header, no invoke id), the documents of the synthetic XML trace
/// split across segments with an empty keep-alive document between two: each named as
/// `cstagate decode` names it.
#[test]
fn nul_ended_csta_xml_decodes_alike() {
    if !tshark_present() {
        return;
    }
    let frames = capture::read_file(&common::path("captures/xml-openscape-makecall.synth.hex"), None, None).expect("the XML trace");
    let mut stream = Vec::new();
    for f in &frames {
        let framed = f.framed.as_ref().expect("framed");
        // The 8-byte header off: the document, then its NUL.
        stream.extend_from_slice(&framed[8..]);
        stream.push(0);
        if stream.len() < 600 {
            stream.push(0);
        }
    }
    let segments: Vec<(Direction, Vec<u8>)> = stream.chunks(97).map(|c| (Direction::P2C, c.to_vec())).collect();
    let pcap = scratch("xml-nul.pcap");
    write_pcap(&pcap, &[Conn { client_port: 46000, pbx_port: 8800, segments }]);
    let shown = tshark(&pcap, &[]);
    let decoded = decode(&pcap, &[]);
    assert_eq!(decoded.len(), frames.len(), "{decoded:?}");
    assert!(decoded.iter().all(|d| d.get("invoke_id").is_none()), "no invoke id without the header");
    compare("xml-nul", &shown, &decoded);
}
