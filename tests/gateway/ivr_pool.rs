//! The IVR number pool (`context_delivery = "number_pool"`) end to end: the real gateway next to
//! the simulated PBX, the test playing a TwiML platform on the pool's numbers. Each live proof
//! call holds one number from its attempt's start to its end and dials it without context
//! digits; the IVR finds the attempt by the number reached (`To`), and the proof-call rules still
//! decide. An exhausted pool refuses creates with 503 `ivr_pool_exhausted` and `Retry-After`;
//! numbers come back after a binding, no answer, a hang-up and a link loss. Attacks on the pool
//! (a free number called, a held number called by a second call, a call from another number)
//! bind nothing.

use std::collections::HashSet;

use cstagate::sim::{Behaviour, SimConfig};
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::sim_env::{SimEnv, LIMIT};
const POOL: [&str; 3] = ["0800100201", "0800100202", "0800100203"];
const EXTENSIONS: [&str; 4] = ["2001", "2002", "2003", "2004"];

type Env = SimEnv;

async fn env(pool: &[&str], extra: &str) -> Env {
    let mut cfg = SimConfig::phase3(&EXTENSIONS);
    cfg.ivr_pool = pool.iter().map(|n| (*n).to_owned()).collect();
    let numbers = pool.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    SimEnv::start(cfg, format!("extensions = [\"2001-2004\"]\ncontext_delivery = \"number_pool\"\nivr_numbers = [{numbers}]\nreconnect_min = \"20ms\"\ndid_prefix = \"+3314400\"\n{extra}")).await
}

fn did(ext: &str) -> String {
    format!("+3314400{ext}")
}

impl SimEnv {
    /// A create refused because every pool number is held: 503, the code, `Retry-After`.
    async fn refused_pool_exhausted(&self, account: &str, ext: &str) {
        // Over a plain socket, to read the headers as a client sees them.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = json!({ "account": account, "extension": ext }).to_string();
        let req = format!("POST /v1/associations HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", self.gw.tokens.tenant, body.len());
        let mut sock = tokio::net::TcpStream::connect(self.gw.running.addr).await.unwrap();
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        timeout(LIMIT, sock.read_to_string(&mut resp)).await.unwrap().unwrap();
        let (head, json) = resp.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 503") && head.contains("\r\nretry-after: 30\r\n"), "{head}");
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["code"], "ivr_pool_exhausted", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_many_parallel_associations_as_pool_numbers_all_bind_and_one_more_is_refused() {
    let mut e = env(&POOL, "").await;
    let mut codes = std::collections::HashMap::new();
    for (i, ext) in EXTENSIONS[..3].iter().enumerate() {
        let (id, code) = e.created(&format!("acct{i}"), ext).await;
        codes.insert(did(ext), (id, code));
    }
    // The pool is exhausted while the three attempts live.
    e.refused_pool_exhausted("acct9", "2004").await;
    // Three proof calls, each on a number of its own, none twice, no context digits.
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(e.connected().await);
    }
    let dialled: HashSet<&str> = calls.iter().map(|(_, _, to)| to.as_str()).collect();
    assert_eq!(dialled, POOL.into_iter().collect::<HashSet<_>>(), "each number held once: {calls:?}");
    // The platform reports the pool number reached in `To` (as Twilio does, in E.164 here): that
    // names the attempt; the dialogue starts at the account's name.
    for (call, from, to) in &calls {
        let to = format!("+33{}", &to[1..]);
        let r = e.twiml(call, from, &to, "ringing", None).await;
        assert!(r.contains("press 1"), "{r}");
        assert!(e.twiml(call, from, &to, "in-progress", Some("1")).await.contains("enter the code"));
        let (id, code) = &codes[from];
        assert!(e.twiml(call, from, &to, "in-progress", Some(code)).await.contains("now linked"));
        e.wait(id, |v| v["state"] == "bound").await;
    }
    for ext in &EXTENSIONS[..3] {
        assert_eq!(e.binding(ext).await, 200);
    }
    // Bound: the numbers are back.
    let (id, _) = e.created("acct9", "2004").await;
    e.wait(&id, |v| v["state"] == "in_ivr").await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_comes_back_after_no_answer_hang_up_and_link_loss() {
    let mut e = env(&POOL[..1], "ring_timeout = \"1s\"\n").await;
    // No answer.
    e.sim.config().extensions[0].behaviour = Behaviour::NeverAnswer;
    let (id1, _) = e.created("a1", "2001").await;
    e.wait(&id1, |v| v["state"] == "ringing").await;
    e.refused_pool_exhausted("a2", "2002").await;
    let v = e.wait(&id1, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "no_answer");
    // Hang-up in the IVR (the platform's status callback).
    let (id2, _) = e.created("a2", "2002").await;
    let (call, from, to) = loop {
        let c = e.connected().await;
        if c.1 == did("2002") {
            break c;
        }
    };
    assert_eq!(to, POOL[0]);
    assert!(e.twiml(&call, &from, &to, "in-progress", None).await.contains("press 1"));
    e.refused_pool_exhausted("a3", "2003").await;
    e.twiml(&call, &from, &to, "completed", None).await;
    let v = e.wait(&id2, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "call_cleared");
    // Link loss while the call is in the IVR.
    let (id3, _) = e.created("a3", "2003").await;
    e.wait(&id3, |v| v["state"] == "in_ivr").await;
    e.refused_pool_exhausted("a4", "2004").await;
    e.sim.drop_links();
    let v = e.wait(&id3, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "link_down");
    let link = e.gw.link();
    timeout(LIMIT, link.wait_for(|s| *s == cstagate::link::LinkState::Up)).await.unwrap();
    let (id4, _) = e.created("a4", "2004").await;
    e.wait(&id4, |v| v["state"] == "in_ivr").await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_pool_number_a_second_call_to_a_held_one_and_another_calling_number_bind_nothing() {
    let mut e = env(&POOL[..2], "proof_calls_per_hour = 6\n").await;
    let (id, code) = e.created("alice", "2001").await;
    let (call, from, to) = e.connected().await;
    e.wait(&id, |v| v["state"] == "in_ivr").await;
    let free = POOL[..2].iter().find(|n| **n != to).unwrap();
    // A call to the number no attempt holds: goodbye, nothing moves.
    let r = e.twiml("evil-1", "+33612345678", free, "ringing", None).await;
    assert!(r.contains("<Hangup/>") && !r.contains("<Gather"), "{r}");
    assert_eq!(e.assoc(&id).await["state"], "in_ivr");
    // The proof call claims its number; a second call to the same number while it is up fails
    // the attempt as a suspected attack, and the code keyed on it binds nothing.
    assert!(e.twiml(&call, &from, &to, "in-progress", None).await.contains("press 1"));
    let r = e.twiml("evil-2", &from, &to, "ringing", None).await;
    assert!(r.contains("<Hangup/>"), "{r}");
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "ivr_call_mismatch");
    assert!(e.twiml(&call, &from, &to, "in-progress", Some("1")).await.contains("<Hangup/>"));
    assert!(!e.twiml("evil-2", &from, &to, "in-progress", Some(&code)).await.contains("now linked"));
    assert_eq!(e.binding("2001").await, 404);
    // Retry: a call from another number to the held number is not the proof call either.
    let (s, _) = e.http().json("POST", &format!("/v1/associations/{id}/complete"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 202);
    let (call, from, to) = e.connected().await;
    e.wait(&id, |v| v["state"] == "in_ivr").await;
    let r = e.twiml("evil-3", "+33612345678", &to, "ringing", None).await;
    assert!(r.contains("<Hangup/>"), "{r}");
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "ivr_call_mismatch");
    assert_eq!(e.binding("2001").await, 404);
    e.sim.ivr_hangup(&call);
    let _ = from;
    // The owner's next proof call binds.
    let (s, _) = e.http().json("POST", &format!("/v1/associations/{id}/complete"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 202);
    let (call, from, to) = e.connected().await;
    assert!(e.twiml(&call, &from, &to, "in-progress", None).await.contains("press 1"));
    assert!(e.twiml(&call, &from, &to, "in-progress", Some("1")).await.contains("enter the code"));
    assert!(e.twiml(&call, &from, &to, "in-progress", Some(&code)).await.contains("now linked"));
    assert_eq!(e.binding("2001").await, 200);
    e.gw.running.shutdown().await;
}
