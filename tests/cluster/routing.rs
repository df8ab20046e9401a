//! Any instance serves any request: real `cstagate run` processes with `[cluster]` on the
//! private PostgreSQL. A request for a PBX owned by another instance is forwarded to the owner
//! (which alone writes for it: the database fences every other instance's writes); while a PBX
//! has no live owner the answer is 503 with `Retry-After`; the internal surface wants the
//! cluster's token and never forwards twice; and a request for another instance's PBX no longer
//! takes this instance's own associations down (the DoS this routing fixes). Skipped with a
//! notice where PostgreSQL is not installed (mandatory with `CSTAGATE_REQUIRE_POSTGRES=1`).

use std::time::{Duration, Instant};

use cstagate::testkit::{Http, Ivr};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use super::processes::{knows_owner, place, Place, ivr_step, audit_until, every_link_up_once, extension, instance, ivr_number, leases, leases_until, oracle, per_owner, sims, Instance, INTERNAL_TOKEN, LIMIT};

fn http(i: &Instance) -> Http {
    Http::new(&format!("http://{}", i.api))
}

/// An event stream read from its raw HTTP/1.1 response (`Connection: close`, so that the end of
/// the stream is the end of the connection).
struct Events {
    lines: tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
    status: String,
}

impl Events {
    async fn open(api: &str, path: &str, token: &str) -> Events {
        let mut tcp = tokio::net::TcpStream::connect(api).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut lines = BufReader::new(tcp).lines();
        let status = timeout(LIMIT, lines.next_line()).await.expect("the stream's head").unwrap().unwrap_or_default();
        Events { lines, status }
    }

    /// The next `data:` of the stream, `None` once it has ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let line = timeout(LIMIT, self.lines.next_line()).await.expect("an event or the end of the stream").ok()??;
            if let Some(d) = line.strip_prefix("data:") {
                return Some(serde_json::from_str(d.trim()).unwrap_or(Value::Null));
            }
        }
    }
}

/// Whether instance `i` logged that a write batch of its was fenced (it wrote for a PBX it does
/// not own), among the lines it has logged so far.
fn fenced_logged(i: &mut Instance) -> bool {
    let mut found = false;
    while let Ok(l) = i.log.try_recv() {
        found |= l.contains("fenced");
    }
    found
}

async fn stop_all(instances: &mut [Instance]) {
    for x in instances {
        let _ = x.child.start_kill();
        let _ = x.child.wait().await;
    }
}

/// Each kind of request — create, get, the IVR webhook's steps to the binding, the binding
/// read, the account's bindings, CTI (a call placed and cleared), an event stream, unbind, cancel, complete — sent to an instance
/// that does not own the PBX is answered as the owner answers it, and the owner does the work:
/// no write batch of the other instance is fenced, the binding is stored (only the owner can
/// write for its PBX), and the event stream, streamed through, carries the PBX's events and
/// ends when the owner ends it (the binding gone). And a FastAGI session at the non-owner: each
/// step asked of the owner over HTTP, to the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_request_at_an_instance_that_does_not_own_the_pbx_is_served_by_its_owner() {
    let Some(Place { s, db, url, dir, tokens }) = place("routing") else { return };
    let mut sims = sims(3, None).await;
    let mut instances = Vec::new();
    for id in ["gw-a", "gw-b", "gw-c"] {
        instances.push(instance(id, &url, &sims, &dir, &tokens).await);
    }
    let spread = leases_until(s, &db, "one PBX each", |l| l.len() == 3 && per_owner(l).len() == 3).await;
    every_link_up_once(&sims).await;
    let owner_id = spread["pbx0"].0.clone();
    let owner = instances.iter().position(|i| i.id == owner_id).unwrap();
    let other = (owner + 1) % 3;
    let (at, at_owner) = (http(&instances[other]), http(&instances[owner]));
    knows_owner(&at, &tokens, "pbx0", &owner_id).await;
    let mut ivr = Ivr::of(&mut sims[0]).unwrap();
    let ext = extension(0);
    let t = &tokens.tenant;

    // Create (the PBX resolved from the tenant's directory), then get, at the non-owner.
    let (status, created) = at.json("POST", "/v1/associations", t, Some(json!({ "account": "alice", "extension": ext }))).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let code = created["code"].as_str().unwrap().to_owned();
    let (status, got) = at.json("GET", &format!("/v1/associations/{id}"), t, None).await.unwrap();
    assert_eq!((status, got["id"].as_str(), got["pbx"].as_str()), (200, Some(id.as_str()), Some("pbx0")), "{got}");

    // The proof call reaches the IVR; every step of the dialogue through the non-owner.
    let call = timeout(LIMIT, ivr.next_call()).await.expect("the proof call reaches the IVR").unwrap();
    let mut last = Value::Null;
    for d in [None, Some(call.context.as_str()), Some("1"), Some(code.as_str())] {
        let (status, reply) = ivr_step(&at, &tokens.ivr, &call.call, &call.from, &ivr_number(0), d).await;
        assert_eq!(status, 200, "{reply}");
        last = reply;
    }
    assert!(last["say"].as_str().unwrap_or_default().contains("now linked"), "{last}");
    ivr.line.hangup(&call.call);
    audit_until(s, &db, &id, |a| a.lines().any(|l| l.starts_with("bound|"))).await;
    let (status, bound) = at.json("GET", &format!("/v1/bindings/pbx0/{ext}"), t, None).await.unwrap();
    assert_eq!((status, bound["account"].as_str()), (200, Some("alice")), "{bound}");
    // The account's bindings, listed at an instance that holds none of them: read from the store
    // (the non-owner's memory never saw this binding).
    for i in &instances {
        let (status, list) = http(i).json("GET", "/v1/bindings?account=alice", t, None).await.unwrap();
        assert_eq!(status, 200, "{list}");
        let listed: Vec<(&str, &str)> = list["bindings"].as_array().unwrap().iter().map(|b| (b["pbx"].as_str().unwrap_or_default(), b["extension"].as_str().unwrap_or_default())).collect();
        assert_eq!(listed, [("pbx0", ext.as_str())], "at {}: {list}", i.id);
    }

    // An event stream at the non-owner, streamed from the owner: a call placed (CTI, through the
    // non-owner too) shows on it; the unbind (through the non-owner) ends it.
    let mut events = Events::open(&instances[other].api, &format!("/v1/extensions/pbx0/{ext}/events?account=alice"), t).await;
    assert!(events.status.contains(" 200 "), "{}", events.status);
    let (status, placed) = at.json("POST", &format!("/v1/extensions/pbx0/{ext}/calls"), t, Some(json!({ "account": "alice", "to": "0612345678" }))).await.unwrap();
    assert_eq!(status, 201, "{placed}");
    let first = events.next().await.expect("an event of the call placed");
    assert!(first.get("binding").is_none(), "{first}");
    // The call cleared (CTI, through the non-owner): the phone is free for the next proof calls.
    let placed_call = placed["call"].as_str().expect("the PBX named the call").to_owned();
    let (status, v) = at.json("DELETE", &format!("/v1/extensions/pbx0/{ext}/calls/{placed_call}?account=alice"), t, None).await.unwrap();
    assert_eq!(status, 204, "{v}");
    timeout(LIMIT, sims[0].wait_stats(|st| st.live_calls == 0)).await.expect("the call placed is cleared");
    let (status, _) = at.json("DELETE", &format!("/v1/bindings/pbx0/{ext}?account=alice"), t, None).await.unwrap();
    assert_eq!(status, 204);
    let mut tail = Vec::new();
    while let Some(ev) = events.next().await {
        tail.push(ev);
    }
    assert_eq!(tail.last(), Some(&json!({ "binding": "ended" })), "the stream ends with the binding: {tail:?}");

    // Cancel through the non-owner; then complete, refused alike at both instances.
    let (status, created) = at.json("POST", "/v1/associations", t, Some(json!({ "account": "bob", "extension": ext, "pbx": "pbx0" }))).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id2 = created["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = at.json("DELETE", &format!("/v1/associations/{id2}"), t, None).await.unwrap();
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("cancelled")), "{cancelled}");
    let here = at.json("POST", &format!("/v1/associations/{id2}/complete"), t, None).await.unwrap();
    let there = at_owner.json("POST", &format!("/v1/associations/{id2}/complete"), t, None).await.unwrap();
    assert_eq!(here, there);
    assert_eq!(here.0, 409, "{}", here.1);

    // A FastAGI session at the non-owner (Asterisk sends the call to any instance): each step
    // asked of the owner over HTTP, to the binding.
    let (status, created) = at_owner.json("POST", "/v1/associations", t, Some(json!({ "account": "carol", "extension": ext }))).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let code = created["code"].as_str().unwrap().to_owned();
    let call = timeout(LIMIT, ivr.next_call()).await.expect("the proof call reaches the IVR").unwrap();
    let commands = asterisk(&instances[other].agi, &call.call, &call.from, &ivr_number(0), &[&call.context, "1", &code]).await;
    assert_eq!(commands.first().map(String::as_str), Some("ANSWER"), "{commands:?}");
    assert_eq!(commands.iter().filter(|c| c.starts_with("GET DATA")).count(), 3, "{commands:?}");
    assert_eq!(commands.last().map(String::as_str), Some("HANGUP"), "{commands:?}");
    ivr.line.hangup(&call.call);
    let (status, bound) = at.json("GET", &format!("/v1/bindings/pbx0/{ext}"), t, None).await.unwrap();
    assert_eq!((status, bound["account"].as_str()), (200, Some("carol")), "{bound}");

    // Nothing of this was written by the non-owner: none of its batches was fenced.
    assert!(!fenced_logged(&mut instances[other]), "the non-owner wrote for pbx0");
    oracle(&sims);
    stop_all(&mut instances).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The DoS regression: at an instance with one of its own associations in flight, a create
/// naming a PBX owned elsewhere is forwarded (201, made by the owner), and the instance's own
/// association is unaffected: still in flight, then bound. Also: a third instance starting
/// meanwhile does not end the others' associations in flight; the internal surface refuses a
/// missing or wrong token (401) and does not forward a forwarded request again (503 +
/// `Retry-After`); and once the owner is SIGKILLed, requests for its PBX get 503 with
/// `Retry-After` (or, once the survivor has taken it over, the right answer), never a 5xx without
/// it, never a success from an instance that does not own the PBX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_owners_pbx_leaves_this_instances_associations_alone_and_no_owner_is_503_retry_after() {
    let Some(Place { s, db, url, dir, tokens }) = place("dos") else { return };
    let mut sims = sims(2, None).await;
    let mut instances = Vec::new();
    for id in ["gw-a", "gw-b"] {
        instances.push(instance(id, &url, &sims, &dir, &tokens).await);
    }
    let spread = leases_until(s, &db, "one PBX each", |l| l.len() == 2 && per_owner(l).len() == 2).await;
    every_link_up_once(&sims).await;
    // `a` owns PBX `mine`; `b` owns PBX `theirs`.
    let a_id = spread["pbx0"].0.clone();
    let a = instances.iter().position(|i| i.id == a_id).unwrap();
    let b = 1 - a;
    let b_id = instances[b].id.clone();
    let (mine, theirs) = (0usize, 1usize);
    let at_a = http(&instances[a]);
    knows_owner(&at_a, &tokens, "pbx1", &b_id).await;
    let t = &tokens.tenant;
    let mut ivr = Ivr::of(&mut sims[mine]).unwrap();

    // a's own association, in flight (its proof call on the way to the IVR).
    let (status, own) = at_a.json("POST", "/v1/associations", t, Some(json!({ "account": "own", "extension": extension(mine) }))).await.unwrap();
    assert_eq!(status, 201, "{own}");
    let own_id = own["id"].as_str().unwrap().to_owned();
    let own_code = own["code"].as_str().unwrap().to_owned();
    // A third instance starts meanwhile: it owns nothing yet (two PBXs, three instances: one
    // each at most) and must not end the others' associations in flight.
    instances.push(instance("gw-c", &url, &sims, &dir, &tokens).await);
    knows_owner(&http(&instances[2]), &tokens, "pbx0", &a_id).await;

    // At a, a create naming b's PBX: forwarded, made by b.
    let (status, other) = at_a.json("POST", "/v1/associations", t, Some(json!({ "account": "other", "extension": extension(theirs), "pbx": "pbx1" }))).await.unwrap();
    // a's own association is unaffected: in flight still, and it binds.
    let (own_status, still) = at_a.json("GET", &format!("/v1/associations/{own_id}"), t, None).await.unwrap();
    assert_eq!(own_status, 200, "{still}");
    assert!(!["failed", "cancelled", "expired"].contains(&still["state"].as_str().unwrap_or_default()), "a's own association was ended: {still}");
    assert_eq!((status, other["pbx"].as_str()), (201, Some("pbx1")), "{other}");
    let call = timeout(LIMIT, ivr.next_call()).await.expect("a's proof call reaches the IVR").unwrap();
    let mut last = Value::Null;
    for d in [None, Some(call.context.as_str()), Some("1"), Some(own_code.as_str())] {
        let (status, reply) = ivr_step(&at_a, &tokens.ivr, &call.call, &call.from, &ivr_number(mine), d).await;
        assert_eq!(status, 200, "{reply}");
        last = reply;
    }
    assert!(last["say"].as_str().unwrap_or_default().contains("now linked"), "{last}");
    ivr.line.hangup(&call.call);
    let audit = audit_until(s, &db, &own_id, |a| a.lines().any(|l| l.starts_with("bound|"))).await;
    assert!(!audit.contains("gateway_restarted") && !audit.contains("failed|"), "{audit}");
    assert!(!fenced_logged(&mut instances[a]), "a wrote for b's PBX");

    // The internal surface: the token is required, and a forwarded request is not forwarded
    // again (b does not own pbx0: 503 with Retry-After, nothing created).
    let at_b = http(&instances[b]);
    let body = json!({ "account": "twice", "extension": extension(mine), "pbx": "pbx0" }).to_string().into_bytes();
    let auth = format!("Bearer {t}");
    for token in [None, Some("wrong"), Some(&INTERNAL_TOKEN[1..])] {
        let mut h = vec![("authorization", auth.as_str())];
        if let Some(x) = token {
            h.push(("cstagate-internal-token", x));
        }
        let (status, v) = at_b.send("POST", "/internal/v1/forward/v1/associations", &h, Some(body.clone())).await.unwrap();
        assert_eq!(status, 401, "token {token:?}: {v}");
    }
    let (status, head, v) = raw_with_head(&instances[b].api, "/internal/v1/forward/v1/associations", &[("authorization", &auth), ("cstagate-internal-token", INTERNAL_TOKEN)], &body).await;
    assert_eq!((status, v["code"].as_str()), (503, Some("pbx_not_served")), "{v}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(s.psql(&db, "SELECT count(*) FROM associations WHERE view->>'account' = 'twice'").unwrap(), "0");

    // b dies: at a, requests for pbx1 are 503 + Retry-After until a (or c) has taken pbx1 over,
    // then served by its new owner. Never another 5xx, never a success before that.
    let victim_epoch = spread["pbx1"].1;
    instances[b].child.start_kill().unwrap();
    instances[b].child.wait().await.unwrap();
    let killed = Instant::now();
    let mut refused = 0;
    let mut n = 0;
    loop {
        n += 1;
        let body = json!({ "account": format!("late{n}"), "extension": extension(theirs), "pbx": "pbx1" }).to_string().into_bytes();
        let (status, head, v) = raw_with_head(&instances[a].api, "/v1/associations", &[("authorization", &auth)], &body).await;
        match status {
            503 => {
                assert!(head.contains("retry-after: "), "503 without Retry-After: {head} {v}");
                refused += 1;
            }
            // Served: by the new owner of pbx1, which took it over with a higher epoch. (b's
            // association "other" on pbx1 was ended by the new owner, freeing the extension.)
            201 | 409 => {
                let owner = leases(s, &db).get("pbx1").cloned();
                assert!(owner.as_ref().is_some_and(|(o, e)| *o != b_id && *e > victim_epoch), "served while pbx1's lease is {owner:?}: {v}");
                if status == 201 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {head} {v}"),
        }
        assert!(killed.elapsed() < LIMIT, "pbx1 not served again within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("pbx1 without an owner: {refused} requests answered 503 + Retry-After, then served again {:?} after the kill", killed.elapsed());
    oracle(&sims);
    stop_all(&mut instances).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Asterisk's side of a FastAGI session at `agi` for `call` from `from` dialled to `to`: the
/// header, then a reply to each command, `answers` for the GET DATAs in turn; the commands heard.
async fn asterisk(agi: &str, call: &str, from: &str, to: &str, answers: &[&str]) -> Vec<String> {
    let (rd, mut wr) = tokio::net::TcpStream::connect(agi).await.unwrap().into_split();
    let header = format!("agi_network: yes\nagi_network_script: associate\nagi_request: agi://127.0.0.1/associate\nagi_uniqueid: {call}\nagi_callerid: {from}\nagi_dnid: {to}\nagi_extension: {to}\n\n");
    wr.write_all(header.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(rd).lines();
    let mut answers = answers.iter();
    let mut heard = Vec::new();
    while let Some(cmd) = timeout(LIMIT, lines.next_line()).await.expect("the gateway's next command").unwrap() {
        let reply = if cmd.starts_with("GET DATA") {
            format!("200 result={}\n", answers.next().expect("more GET DATA than answers"))
        } else if cmd == "HANGUP" {
            "200 result=1\n".to_owned()
        } else {
            "200 result=0\n".to_owned()
        };
        heard.push(cmd.clone());
        if wr.write_all(reply.as_bytes()).await.is_err() || cmd == "HANGUP" {
            break;
        }
    }
    heard
}

/// A POST over raw HTTP/1.1 (`Connection: close`): the status, the head (lowercase) and the JSON
/// body.
async fn raw_with_head(api: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Value) {
    let mut tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut out = Vec::new();
    timeout(LIMIT, tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut out)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // The body may be chunked: the JSON object is between its first `{` and last `}`.
    let json = rest.find('{').zip(rest.rfind('}')).map_or(Value::Null, |(i, j)| serde_json::from_str(&rest[i..=j]).unwrap_or(Value::Null));
    (status, head.to_ascii_lowercase(), json)
}
