//! `cstagate decode` as an admin runs it: every capture format, JSON output, and a trace with a
//! bad APDU (all others printed, the bad one named with its offset, non-zero exit).

use crate::common;

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> (bool, Vec<String>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cstagate")).args(args).current_dir(common::root()).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn decodes_frame_lists_and_pcaps_with_auto_dialect() {
    for (file, n) in [
        ("captures/panasonic-csta3-makecall-20160727.frames.tsv", 39),
        ("captures/panasonic-csta3-makecall-20160727.synth.pcap", 39),
        ("captures/hipath-csta3-session-20130104.synth.pcap", 74),
        ("captures/oxe-csta2-events-smallf00t.synth.pcap", 13),
    ] {
        let (ok, lines, err) = run(&["decode", "--json", file]);
        assert!(ok, "{file}: {err}");
        assert_eq!(lines.len(), n, "{file}");
        for l in &lines {
            let j: Value = serde_json::from_str(l).expect("json");
            assert!(j.get("error").is_none(), "{file}: {l}");
            assert!(j["kind"].is_string() && j["n"].is_u64(), "{l}");
        }
    }
    let (_, lines, _) = run(&["decode", "--json", "captures/oxe-csta2-events-smallf00t.synth.pcap"]);
    let delivered: Value = serde_json::from_str(&lines[2]).expect("json");
    assert_eq!(delivered["event"], "delivered");
    assert_eq!(delivered["dir"], "P2C");
    assert_eq!(delivered["operation"], "cSTAEventReport");
    assert_eq!(delivered["xref"], "013a9c03");
    assert_eq!(delivered["call_id"], "2b91");
    assert_eq!(delivered["cause"], "newCall");
    assert_eq!(delivered["fields"]["callingDevice"], "24105");
    assert_eq!(delivered["fields"]["alertingDevice"], "24650");
}

#[test]
fn a_bad_apdu_is_reported_with_its_offset_after_all_the_others() {
    let dir = std::env::temp_dir().join(format!("cstagate-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let f = dir.join("trace.hex");
    std::fs::write(
        &f,
        "# a hex trace: one framed APDU per line\n\
         000ea10c020101020200d330030a0102\n\
         000ea10c020101020200d330030a01\n\
         0008a40602010581 0101\n",
    )
    .expect("write");
    let (ok, lines, err) = run(&["decode", "--json", "--dialect", "phase3", f.to_str().expect("utf-8")]);
    assert!(!ok, "a bad APDU must fail the run");
    assert!(err.contains("1 APDU"), "{err}");
    assert_eq!(lines.len(), 3);
    let bad: Value = serde_json::from_str(&lines[1]).expect("json");
    assert!(bad["error"]["reason"].as_str().expect("reason").contains("frame"), "{bad}");
    let reject: Value = serde_json::from_str(&lines[2]).expect("json");
    assert_eq!(reject["problem"]["name"], "unrecognizedOperation");
    // A frame whose APDU is malformed inside: the offset points into the APDU.
    std::fs::write(&f, "000ea10c020101020200d330030a0502\n").expect("write");
    let (ok, lines, _) = run(&["decode", "--json", "--dialect", "phase3", f.to_str().expect("utf-8")]);
    assert!(!ok);
    let bad: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(bad["error"]["offset"], 11, "{bad}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_aarq_login_is_never_printed_decoded_or_not() {
    // "S3cr3t-pw-4711" as the password of a HiPath-style login, in a good AARQ and in one whose
    // authentication value claims one octet more than its parent holds.
    let password = "S3cr3t-pw-4711";
    let good = "603180020780a10706052b0c00815a8a020680ac1ea21ca01aa0180406414d484f5354040e5333637233742d70772d34373131";
    let bad = good.replace("ac1ea21c", "ac1fa21c");
    let dir = std::env::temp_dir().join(format!("cstagate-decode-aarq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let f = dir.join("login.hex");
    std::fs::write(&f, format!("0033{good}\n0033{bad}\n")).expect("write");
    for json in [true, false] {
        let mut args = vec!["decode", "--dialect", "phase3", f.to_str().expect("utf-8")];
        if json {
            args.insert(1, "--json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_cstagate")).args(&args).env("RUST_LOG", "trace").output().expect("runs");
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).to_ascii_lowercase();
        assert!(all.contains("amhost"), "the user is shown: {all}");
        assert!(!all.contains(&password.to_ascii_lowercase()) && !all.contains(&hex::encode(password)), "{all}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
