//! Hostile input on the IVR side, over real sockets against the real gateway
//! (`testkit::LocalGateway` next to the simulated PBX): webhook requests with bad, missing or stale
//! signatures and timestamps, verbatim replays, unknown and stale context ids (an association
//! that has ended), digit floods (over-long digit strings, non-DTMF characters, many requests on
//! one call), bad values in every webhook field, and FastAGI clients that stop mid-line, flood the
//! header, send junk instead of replies or open more sessions than allowed.
//!
//! What it proves: each is refused with a clear error (401 / 409 / 400 naming the field for the
//! webhook; the connection closed for FastAGI), memory stays bounded (the replay cache holds one
//! entry per accepted request, FastAGI sessions are capped), a replay moves nothing in the
//! dialogue, and the store does not change (audit log, bindings, association views).

use std::sync::Arc;
use std::time::Duration;

use cstagate::webhook::{sign, sign_webhook, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_WINDOW_SECS};
use cstagate::testkit::{local_secrets, post_webhook, Http, LocalGateway, LocalOptions, Tokens};
use cstagate::ivr::fastagi::{FastAgiSettings, MAX_SKIPPED_LINES};
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

struct Env {
    sim: SimPbx,
    ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    gw: LocalGateway,
}

async fn env() -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005", "2006"]), "127.0.0.1:0").await.unwrap();
    for e in &mut sim.config().extensions {
        e.behaviour = Behaviour::Answer { after: Duration::from_millis(5) };
    }
    let ivr = sim.take_ivr().unwrap();
    let options = LocalOptions { pbx: "extensions = [\"2005-2006\"]\nnames = { \"2005\" = \"Alice Martin\" }\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    Env { sim, ivr, gw }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A webhook request with the headers given (`None`: header absent).
async fn post(h: &Http, body: &[u8], ts: Option<&str>, sig: Option<&str>) -> (u16, Value) {
    let mut headers = Vec::new();
    if let Some(ts) = ts {
        headers.push((TIMESTAMP_HEADER, ts));
    }
    if let Some(sig) = sig {
        headers.push((SIGNATURE_HEADER, sig));
    }
    h.send("POST", "/v1/ivr/webhook", &headers, Some(body.to_vec())).await.unwrap()
}

/// A request signed at `ts`, kept so that it can be sent again verbatim.
struct Signed {
    body: Vec<u8>,
    ts: String,
    sig: String,
}

impl Signed {
    fn new(key: &str, body: &Value, ts: u64) -> Signed {
        let body = body.to_string().into_bytes();
        Signed { sig: sign_webhook(key, ts, &body), ts: ts.to_string(), body }
    }
    async fn send(&self, h: &Http) -> (u16, Value) {
        post(h, &self.body, Some(&self.ts), Some(&self.sig)).await
    }
}

/// The audit log less the records of unknown context ids (those are audited by design: a guess
/// is worth a line, and the adapters limit them).
async fn audit(h: &Http, tokens: &Tokens) -> Vec<Value> {
    audit_all(h, tokens).await.into_iter().filter(|r| r["step"] != "ivr_unknown_context").collect()
}

async fn audit_all(h: &Http, tokens: &Tokens) -> Vec<Value> {
    let (s, v) = h.json("GET", "/v1/audit?limit=10000", &tokens.admin, None).await.unwrap();
    assert_eq!(s, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

/// The replay cache's size, from `/metrics` (Prometheus text).
async fn replay_cache_entries(e: &Env) -> u64 {
    let mut c = TcpStream::connect(e.gw.running.addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).await.unwrap();
    text.lines().find_map(|l| l.strip_prefix("cstagate_webhook_replay_cache_entries ")).expect("the gauge is exported").trim().parse().unwrap()
}

/// Create an association and wait for its proof call to reach the IVR: (id, code, call, context).
async fn to_ivr(e: &mut Env, account: &str, ext: &str) -> (String, String, String, String) {
    let (s, v) = e.gw.http.json("POST", "/v1/associations", &e.gw.tokens.tenant, Some(json!({ "account": account, "extension": ext }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    loop {
        if let IvrSignal::Connected { call, .. } = timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() {
            let IvrSignal::Digits { digits, .. } = timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() else { panic!("context digits") };
            return (v["id"].as_str().unwrap().to_owned(), v["code"].as_str().unwrap().to_owned(), call, digits);
        }
    }
}

#[test]
fn the_readme_signing_recipe_matches() {
    // README: printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac "$IVR_SECRET"
    assert_eq!(sign_webhook("k", 1_700_000_000, br#"{"a":1}"#), "sha256=1b6ad1bc9bf48c52ce01939866d5877c6cc4e87ddad27e16673cb8c4964394a3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_must_cover_a_fresh_timestamp_and_replays_are_refused() {
    let e = env().await;
    let h = &e.gw.http;
    let before = audit(h, &e.gw.tokens).await;
    let body = json!({ "call": "c-sig", "from": "+33144002005", "to": "0800100200" });
    let raw = body.to_string().into_bytes();
    let t = now();
    let good = sign_webhook(&e.gw.tokens.ivr, t, &raw);
    let ts = t.to_string();
    // A few seconds past the window, so that a clock tick during the test does not matter.
    let stale = t - WEBHOOK_WINDOW_SECS - 5;
    let early = t + WEBHOOK_WINDOW_SECS + 5;
    let other_body = json!({ "call": "c-sig", "from": "+33144002006", "to": "0800100200" }).to_string().into_bytes();
    let refusals: Vec<(&str, Option<String>, Option<String>)> = vec![
        ("no headers", None, None),
        ("the old body-only signature", None, Some(sign(&e.gw.tokens.ivr, &raw))),
        ("no timestamp", None, Some(good.clone())),
        ("no signature", Some(ts.clone()), None),
        ("timestamp not a number", Some("yesterday".into()), Some(good.clone())),
        ("negative timestamp", Some(format!("-{t}")), Some(good.clone())),
        ("timestamp with a sign", Some(format!("+{t}")), Some(sign_webhook(&e.gw.tokens.ivr, t, &raw))),
        ("exponent timestamp", Some("1.7e9".into()), Some(good.clone())),
        ("13-digit timestamp", Some(format!("{t}000")), Some(sign_webhook(&e.gw.tokens.ivr, t * 1000, &raw))),
        ("stale, correctly signed", Some(stale.to_string()), Some(sign_webhook(&e.gw.tokens.ivr, stale, &raw))),
        ("from the future, correctly signed", Some(early.to_string()), Some(sign_webhook(&e.gw.tokens.ivr, early, &raw))),
        ("timestamp changed after signing", Some((t - 1).to_string()), Some(good.clone())),
        ("another body's signature", Some(ts.clone()), Some(sign_webhook(&e.gw.tokens.ivr, t, &other_body))),
        ("another secret", Some(ts.clone()), Some(sign_webhook("not-the-secret", t, &raw))),
        ("another algorithm", Some(ts.clone()), Some(good.replace("sha256=", "sha1="))),
        ("not hex", Some(ts.clone()), Some(format!("sha256={}", "zz".repeat(32)))),
        ("truncated", Some(ts.clone()), Some(good[..good.len() - 2].to_owned())),
        ("empty", Some(ts.clone()), Some(String::new())),
    ];
    for (what, ts, sig) in &refusals {
        let (s, v) = post(h, &raw, ts.as_deref(), sig.as_deref()).await;
        assert_eq!((s, v["error"].is_string()), (401, true), "{what}: {v}");
        if what.contains("correctly signed") {
            assert!(v["error"].as_str().unwrap().contains("300 s"), "{what}: {v}");
        }
    }
    assert_eq!(replay_cache_entries(&e).await, 0, "refused requests are not remembered");
    // Within the window, either side, it is accepted once.
    let inside = Signed::new(&e.gw.tokens.ivr, &body, t - WEBHOOK_WINDOW_SECS + 5);
    let (s, v) = inside.send(h).await;
    assert_eq!(s, 200, "{v}");
    let first = Signed { body: raw.clone(), ts: ts.clone(), sig: good.clone() };
    let (s, v) = first.send(h).await;
    assert_eq!(s, 200, "{v}");
    // Verbatim again: refused, every time.
    for _ in 0..3 {
        let (s, v) = first.send(h).await;
        assert_eq!((s, v["error"].as_str().map(|m| m.contains("replayed"))), (409, Some(true)), "{v}");
    }
    // Upper-case hex is the same signature, so the same replay.
    let (s, _) = post(h, &raw, Some(&ts), Some(&good.to_uppercase().replace("SHA256=", "sha256="))).await;
    assert_eq!(s, 409);
    // A platform's retry signs again with a new timestamp: a new request.
    let (s, v) = Signed::new(&e.gw.tokens.ivr, &body, t + 1).send(h).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(replay_cache_entries(&e).await, 3, "one entry per accepted request");
    assert_eq!(audit(h, &e.gw.tokens).await, before, "nothing in the store changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_moves_nothing_in_the_dialogue() {
    let mut e = env().await;
    let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
    let h = e.gw.http.clone();
    let req = |digits: &str, ts: u64| Signed::new(&e.gw.tokens.ivr, &json!({ "call": call, "from": "+33144002005", "to": "0800100200", "digits": digits }), ts);
    let t = now();
    let (s, r) = req(&ctx, t).send(&h).await;
    assert!(s == 200 && r["say"].as_str().unwrap().contains("press 1"), "{r}");
    let confirm = req("1", t);
    let (s, r) = confirm.send(&h).await;
    assert!(s == 200 && r["say"].as_str().unwrap().contains("code"), "{r}");
    assert_eq!(confirm.send(&h).await.0, 409);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let wrong = req(wrong, t);
    let (s, r) = wrong.send(&h).await;
    assert!(s == 200 && r["say"].as_str().unwrap().contains("not correct"), "{r}");
    let audit_after_one = audit(&h, &e.gw.tokens).await;
    // Five replays of the wrong code: refused, and not counted as wrong codes.
    for _ in 0..5 {
        assert_eq!(wrong.send(&h).await.0, 409);
    }
    assert_eq!(audit(&h, &e.gw.tokens).await, audit_after_one, "replays are not wrong codes");
    let right = req(&code, t);
    let (s, r) = right.send(&h).await;
    assert!(s == 200 && r["say"].as_str().unwrap().contains("now linked"), "{r}");
    let bound = audit(&h, &e.gw.tokens).await;
    assert_eq!(right.send(&h).await.0, 409);
    let (_, v) = h.json("GET", &format!("/v1/associations/{id}"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(v["state"], "bound");
    assert_eq!(audit(&h, &e.gw.tokens).await, bound, "a replayed success records nothing");
    e.sim.ivr_hangup(&call);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_stale_context_ids_and_digit_floods_change_nothing() {
    let mut e = env().await;
    // An association that has ended: its context id is stale.
    let (id, _, call, stale_ctx) = to_ivr(&mut e, "alice", "2005").await;
    let h = e.gw.http.clone();
    let (s, v) = h.json("DELETE", &format!("/v1/associations/{id}"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    e.sim.ivr_hangup(&call);
    let ended = h.json("GET", &format!("/v1/associations/{id}"), &e.gw.tokens.tenant, None).await.unwrap().1;
    let before = audit(&h, &e.gw.tokens).await;
    let ivr = |call: &str, digits: Option<&str>| {
        let mut b = json!({ "call": call, "from": "+33144002005", "to": "0800100200" });
        if let Some(d) = digits {
            b["digits"] = json!(d);
        }
        post_webhook(&h, &e.gw.tokens.ivr, b.to_string().into_bytes())
    };
    let stale = stale_ctx.trim_start_matches('*').trim_end_matches('#').to_owned();
    // The ended attempt's own context: no longer valid, at once (and not counted as a guess).
    let (s, r) = ivr("c-stale", Some(&stale)).await.unwrap();
    assert_eq!((s, r["hangup"].as_bool()), (200, Some(true)), "{r}");
    assert!(r["say"].as_str().unwrap().contains("no longer valid"), "{r}");
    for i in 0..200 {
        let (s, r) = ivr("c-stale", Some(&i.to_string())).await.unwrap();
        assert_eq!((s, r["hangup"].as_bool()), (200, Some(true)), "{r}");
    }
    for (call, ctx) in [("c-near-stale", stale.as_str()), ("c-unknown", "12345678901234567890123456789012"), ("c-64", &"7".repeat(64))] {
        // Three tries, then the IVR hangs up. (Each request differs: byte-identical requests
        // signed in the same second are one request, and the second is refused as a replay.)
        for i in 0..3 {
            let last = ctx.chars().last().and_then(|c| c.to_digit(10)).unwrap();
            // Never the stale context itself (that one is above): the next digits instead.
            let entered = format!("{}{}", &ctx[..ctx.len() - 1], (last + i + 1) % 10);
            let (s, r) = ivr(call, Some(&entered)).await.unwrap();
            assert_eq!(s, 200, "{r}");
            assert!(r["say"].as_str().unwrap().contains("not known"), "{call} try {i}: {r}");
            assert_eq!(r["hangup"].as_bool().unwrap_or(false), i == 2, "{r}");
        }
        // The platform keeps going: 200 more requests on the same call, each told goodbye.
        for i in 0..200 {
            let (s, r) = ivr(call, Some(&i.to_string())).await.unwrap();
            assert_eq!((s, r["hangup"].as_bool()), (200, Some(true)), "{r}");
        }
    }
    // Over-long or non-DTMF digits: 400 naming the field.
    for bad in ["7".repeat(65), "12a".into(), "١٢٣".into(), "12\u{0}3".into(), "1\u{1F600}".into(), "1 2".into(), "+12".into()] {
        let (s, v) = ivr("c-bad", Some(&bad)).await.unwrap();
        assert_eq!((s, v["field"].as_str()), (400, Some("digits")), "{bad:?}: {v}");
    }
    assert_eq!(audit(&h, &e.gw.tokens).await, before, "nothing in the store changed");
    let guesses = audit_all(&h, &e.gw.tokens).await.into_iter().filter(|r| r["step"] == "ivr_unknown_context").count();
    assert!(guesses >= 3, "unknown context ids are audited: {guesses}");
    assert_eq!(h.json("GET", &format!("/v1/associations/{id}"), &e.gw.tokens.tenant, None).await.unwrap().1, ended);
    assert_eq!(h.json("GET", "/v1/bindings/paris/2005", &e.gw.tokens.admin, None).await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_in_every_webhook_field_are_refused_naming_it() {
    let e = env().await;
    let h = &e.gw.http;
    let before = audit(h, &e.gw.tokens).await;
    let valid = json!({ "call": "c-f", "from": "+33144002005", "to": "0800100200", "digits": "1", "hangup": false });
    let mut cases: Vec<(String, Vec<u8>, u16, Option<&str>)> = Vec::new();
    for (field, max) in [("call", 128), ("from", 64), ("to", 64)] {
        for (what, bad) in [
            ("number", json!(1)),
            ("null", Value::Null),
            ("array", json!(["a"])),
            ("NUL", json!("a\u{0}b")),
            ("newline", json!("a\nb")),
            ("RTL override", json!("a\u{202e}b")),
            ("emoji", json!("a\u{1F600}")),
            ("accented", json!("é")),
            ("over-long", json!("1".repeat(max + 1))),
        ] {
            let mut b = valid.clone();
            b[field] = bad;
            cases.push((format!("{field}: {what}"), b.to_string().into_bytes(), 400, Some(field)));
        }
        let mut b = valid.clone();
        b.as_object_mut().unwrap().remove(field);
        cases.push((format!("{field}: missing"), b.to_string().into_bytes(), 400, Some(field)));
    }
    let mut b = valid.clone();
    b["call"] = json!("");
    cases.push(("call: empty".into(), b.to_string().into_bytes(), 400, Some("call")));
    for (what, bad) in [("number", json!(1)), ("array", json!(["1"]))] {
        let mut b = valid.clone();
        b["digits"] = bad;
        cases.push((format!("digits: {what}"), b.to_string().into_bytes(), 400, Some("digits")));
    }
    for (what, bad) in [("string", json!("yes")), ("number", json!(1)), ("null", Value::Null)] {
        let mut b = valid.clone();
        b["hangup"] = bad;
        cases.push((format!("hangup: {what}"), b.to_string().into_bytes(), 400, Some("hangup")));
    }
    let mut b = valid.clone();
    b["colour"] = json!("red");
    cases.push(("unknown field".into(), b.to_string().into_bytes(), 400, Some("colour")));
    cases.push(("trailing garbage".into(), format!("{valid}{valid}").into_bytes(), 400, None));
    cases.push(("an array".into(), b"[\"c\",\"f\",\"t\"]".to_vec(), 400, None));
    cases.push(("not JSON".into(), b"call=c&from=f".to_vec(), 400, None));
    cases.push(("17 KiB".into(), json!({ "call": "x".repeat(17 * 1024), "from": "", "to": "" }).to_string().into_bytes(), 413, None));
    let mut failures = Vec::new();
    for (what, body, status, field) in &cases {
        let (s, v) = post_webhook(h, &e.gw.tokens.ivr, body.clone()).await.unwrap();
        if s != *status || !v["error"].is_string() || v["field"].as_str() != *field {
            failures.push(format!("{what}: expected {status} {field:?}, got {s} {v}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    // Empty calling and called numbers (withheld) are fine.
    let (s, v) = post_webhook(h, &e.gw.tokens.ivr, json!({ "call": "c-ok", "from": "", "to": "" }).to_string().into_bytes()).await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(audit(h, &e.gw.tokens).await, before, "nothing in the store changed");
}

/// A FastAGI server of the gateway with its own settings.
async fn fastagi(e: &Env, settings: FastAgiSettings) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cstagate::ivr::fastagi::serve(l, e.gw.running.gateway.clone(), Arc::new(settings)));
    addr
}

fn header(uniqueid: &str) -> String {
    format!("agi_network: yes\nagi_network_script: associate\nagi_uniqueid: {uniqueid}\nagi_callerid: +33144002005\nagi_dnid: 0800100200\nagi_extension: 0800100200\n\n")
}

/// Everything the server sends until it closes, within `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut sink = Vec::new();
    match timeout(within, c.read_to_end(&mut sink)).await {
        Ok(_) => sink,
        Err(_) => panic!("the server did not close the connection within {within:?}; it sent {:?}", String::from_utf8_lossy(&sink)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastagi_clients_that_stall_flood_or_babble_are_cut_off_and_sessions_are_capped() {
    let e = env().await;
    let h = &e.gw.http;
    let before = audit(h, &e.gw.tokens).await;
    let quick = fastagi(&e, FastAgiSettings { read_timeout: Duration::from_millis(300), ..Default::default() }).await;

    // Stops mid-line: cut off after the read timeout, nothing sent.
    let mut c = TcpStream::connect(quick).await.unwrap();
    c.write_all(b"agi_network: yes\nagi_netw").await.unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(5)).await.is_empty());
    // Stops mid-dialogue, in the middle of a reply line.
    let mut c = TcpStream::connect(quick).await.unwrap();
    c.write_all(header("hostile-1").as_bytes()).await.unwrap();
    let mut rd = BufReader::new(&mut c);
    let mut l = String::new();
    timeout(LIMIT, rd.read_line(&mut l)).await.unwrap().unwrap();
    assert_eq!(l.trim_end(), "ANSWER");
    c.write_all(b"200 res").await.unwrap();
    closed_within(&mut c, Duration::from_secs(5)).await;

    // Header floods and bytes that are not text: closed at once (long before this server's
    // read timeout), nothing sent.
    let patient = fastagi(&e, FastAgiSettings { read_timeout: Duration::from_secs(60), ..Default::default() }).await;
    let mut too_many = String::new();
    for i in 0..200 {
        too_many.push_str(&format!("agi_arg_{i}: x\n"));
    }
    let mut too_big = String::new();
    for i in 0..100 {
        too_big.push_str(&format!("agi_arg_{i}: {}\n", "x".repeat(200)));
    }
    too_big.push('\n');
    for (what, bytes) in [
        ("200 header lines", too_many.into_bytes()),
        ("20 KB of header", too_big.into_bytes()),
        ("NUL in a line", b"agi_network: y\0es\nagi_x\xff\xfe: 1\n\n".to_vec()),
        ("invalid UTF-8", b"agi_network: \xff\xfe\n\n".to_vec()),
        ("a 1 MB line", vec![b'a'; 1 << 20]),
    ] {
        let mut c = TcpStream::connect(patient).await.unwrap();
        let _ = c.write_all(&bytes).await;
        let sent = closed_within(&mut c, Duration::from_secs(5)).await;
        assert!(sent.is_empty(), "{what}: {:?}", String::from_utf8_lossy(&sent));
    }

    // Junk instead of a reply: at most MAX_SKIPPED_LINES lines are skipped, then closed.
    let mut c = TcpStream::connect(patient).await.unwrap();
    c.write_all(header("hostile-2").as_bytes()).await.unwrap();
    let mut rd = BufReader::new(&mut c);
    let mut l = String::new();
    timeout(LIMIT, rd.read_line(&mut l)).await.unwrap().unwrap();
    assert_eq!(l.trim_end(), "ANSWER");
    let junk = "520-Invalid command syntax.\n".repeat(MAX_SKIPPED_LINES + 1);
    c.write_all(junk.as_bytes()).await.unwrap();
    let sent = closed_within(&mut c, Duration::from_secs(5)).await;
    assert!(sent.is_empty(), "nothing after ANSWER: {:?}", String::from_utf8_lossy(&sent));

    // At most `max_sessions` at once: beyond, closed at once (well before the read timeout).
    let capped = fastagi(&e, FastAgiSettings { read_timeout: Duration::from_secs(60), max_sessions: 4, ..Default::default() }).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(capped).await.unwrap();
        c.write_all(b"agi_network: yes\n").await.unwrap();
        held.push(c);
    }
    for _ in 0..3 {
        let mut c = TcpStream::connect(capped).await.unwrap();
        let _ = c.write_all(header("over-the-cap").as_bytes()).await;
        assert!(closed_within(&mut c, Duration::from_secs(5)).await.is_empty());
    }
    // One leaves: a new session is served again (its first command is ANSWER).
    drop(held.pop());
    let served = timeout(LIMIT, async {
        loop {
            let mut c = TcpStream::connect(capped).await.unwrap();
            c.write_all(header("after-one-left").as_bytes()).await.unwrap();
            let mut l = String::new();
            if BufReader::new(&mut c).read_line(&mut l).await.is_ok_and(|n| n > 0) {
                return l;
            }
        }
    })
    .await
    .expect("a session is served once one has left");
    assert_eq!(served.trim_end(), "ANSWER");
    assert_eq!(audit(h, &e.gw.tokens).await, before, "nothing in the store changed");
}
