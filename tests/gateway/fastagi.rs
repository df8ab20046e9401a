//! The FastAGI adapter against a faithful stand-in for Asterisk's side of the protocol: the
//! association bound through ANSWER / GET DATA / STREAM FILE / HANGUP; the caller hanging up
//! mid-dialogue (`200 result=-1` and a bare `HANGUP` line); garbage and a client that stops
//! mid-line get the connection closed with nothing changed; a peer outside `fastagi_allow` is
//! closed unread and counted; a caller guessing context ids gets goodbye once the adapter has
//! heard `ivr_guesses_per_minute` unknown ones, and `/metrics` counts both.

use std::time::Duration;

use cstagate::testkit::{local_secrets, Http, LocalGateway, LocalOptions, Tokens};
use cstagate::sim::{IvrSignal, SimConfig, SimPbx};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

struct Env {
    sim: SimPbx,
    ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    http: Http,
    agi: std::net::SocketAddr,
    _running: cstagate::server::Running,
    tokens: Tokens,
}

async fn env() -> Env {
    env_with("fastagi_prompts = { enter_code = \"cstagate/enter-code\" }\n").await
}

/// The gateway with FastAGI on an ephemeral port and `gateway` as more `[gateway]` lines.
async fn env_with(gateway: &str) -> Env {
    env_for(gateway, "").await
}

/// As [`env_with`], with `pbx` as more lines of the `[[pbx]]` table.
async fn env_for(gateway: &str, pbx: &str) -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    sim.config().extensions[0].behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
    let ivr = sim.take_ivr().unwrap();
    let options = LocalOptions {
        gateway: format!("fastagi_listen = \"127.0.0.1:0\"\n{gateway}"),
        pbx: format!("extensions = [\"2005\"]\nnames = {{ \"2005\" = \"Alice Martin\" }}\n{pbx}"),
        ..Default::default()
    };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    Env { sim, ivr, agi: gw.running.fastagi_addr.unwrap(), http: gw.http, _running: gw.running, tokens: gw.tokens }
}

/// Asterisk's side: the header, then one reply per command, from a script of answers to GET DATA.
struct Asterisk {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    commands: Vec<String>,
}

impl Asterisk {
    /// The phone's owner through the whole dialogue, as Asterisk runs it: the context digits
    /// dialled after the IVR number (`ctx`, `*…#`), 1, then `code`, each answer to the next GET
    /// DATA (Asterisk answers with the keyed digits, without the `#` terminator), until the
    /// gateway hangs up. Every scripted answer must be asked for.
    async fn owner_dialogue(&mut self, ctx: &str, code: &str) {
        let mut answers = vec![ctx.trim_start_matches('*').trim_end_matches('#').to_owned(), "1".into(), code.to_owned()].into_iter();
        while let Some(cmd) = self.next_command().await {
            if cmd == "ANSWER" {
                self.reply("200 result=0").await;
            } else if cmd.starts_with("GET DATA") {
                let d = answers.next().unwrap_or_else(|| panic!("a GET DATA beyond the script: {:?}", self.commands));
                self.reply(&format!("200 result={d}")).await;
            } else if cmd.starts_with("STREAM FILE") {
                self.reply("200 result=0 endpos=16000").await;
            } else if cmd == "HANGUP" {
                self.reply("200 result=1").await;
                break;
            } else {
                self.reply("510 Invalid or unknown command").await;
            }
        }
        assert_eq!(answers.len(), 0, "every scripted answer was asked for: {:?}", self.commands);
    }
    async fn connect(addr: std::net::SocketAddr, uniqueid: &str) -> Asterisk {
        let (rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let header = format!(
            "agi_network: yes\nagi_network_script: associate\nagi_request: agi://127.0.0.1/associate\nagi_channel: SIP/trunk-0000001\nagi_language: en\nagi_type: SIP\nagi_uniqueid: {uniqueid}\nagi_version: 18.0.0\nagi_callerid: +33144002005\nagi_calleridname: unknown\nagi_dnid: 0800100200\nagi_context: from-trunk\nagi_extension: 0800100200\nagi_priority: 1\n\n"
        );
        wr.write_all(header.as_bytes()).await.unwrap();
        Asterisk { rd: BufReader::new(rd), wr, commands: Vec::new() }
    }
    async fn next_command(&mut self) -> Option<String> {
        let mut l = String::new();
        match tokio::time::timeout(LIMIT, self.rd.read_line(&mut l)).await.unwrap() {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let c = l.trim_end().to_owned();
                self.commands.push(c.clone());
                Some(c)
            }
        }
    }
    async fn reply(&mut self, r: &str) {
        self.wr.write_all(format!("{r}\n").as_bytes()).await.unwrap();
    }
}

/// Read until the gateway closes `s`: it must close it within [`LIMIT`], cleanly or with a reset
/// (data left unread makes the close a reset), and send nothing back.
async fn closed_silently(s: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await.unwrap_or_else(|_| panic!("{what}: the gateway closes the connection within {LIMIT:?}"));
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
    }
    assert!(got.is_empty(), "{what}: nothing is sent back, got {:?}", String::from_utf8_lossy(&got));
}

async fn connected(e: &mut Env) -> String {
    loop {
        if let IvrSignal::Digits { digits, .. } = tokio::time::timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() {
            return digits;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_is_bound_through_fastagi() {
    let mut e = env().await;
    let (_, v) = e.http.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    let code = v["code"].as_str().unwrap().to_owned();
    let ctx = connected(&mut e).await; // dialled after the IVR number: "*<context>#"
    let mut a = Asterisk::connect(e.agi, "1700000000.1").await;
    a.owner_dialogue(&ctx, &code).await;
    assert_eq!(a.commands[0], "ANSWER");
    assert!(a.commands.iter().any(|c| c.starts_with("GET DATA cstagate/enter-code 8000 6")), "{:?}", a.commands);
    assert!(a.commands.iter().any(|c| c.starts_with("GET DATA cstagate/tts ")), "fallback file for prompts without one");
    let (s, b) = e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.tenant, None).await.unwrap();
    assert_eq!((s, b["did"].as_str()), (200, Some("+33144002005")), "agi_callerid is the calling number");
    drop(e.sim);
}

/// A French PBX (`language = "fr-FR"`): each prompt's file is the French table's, else the one
/// for every language, else the English table's (said once in the log), else the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_french_pbx_plays_the_french_files() {
    let prompts = "fastagi_prompts = { enter_context = \"all/enter-context\", enter_code = \"all/enter-code\", \"fr-FR\" = { confirm_account = \"fr/confirm\", enter_code = \"fr/enter-code\" }, \"en-US\" = { confirm_account = \"en/confirm\", bound = \"en/bound\" } }\n";
    let mut e = env_for(prompts, "language = \"fr-FR\"\n").await;
    let (_, v) = e.http.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    let code = v["code"].as_str().unwrap().to_owned();
    let ctx = connected(&mut e).await;
    let mut a = Asterisk::connect(e.agi, "1700000000.50").await;
    a.owner_dialogue(&ctx, &code).await;
    let played: Vec<&str> = a.commands.iter().filter_map(|c| c.strip_prefix("GET DATA ").or_else(|| c.strip_prefix("STREAM FILE "))).filter_map(|c| c.split(' ').next()).collect();
    assert_eq!(played, ["all/enter-context", "fr/confirm", "fr/enter-code", "en/bound"], "{:?}", a.commands);
    let (s, _) = e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 200, "bound");
    drop(e.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangups_and_garbage_end_the_dialogue_with_nothing_bound() {
    let mut e = env().await;
    let (_, v) = e.http.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let ctx = connected(&mut e).await;
    let ctx = ctx.trim_start_matches('*').trim_end_matches('#').to_owned();

    // Garbage header: closed without a command.
    let mut g = TcpStream::connect(e.agi).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    closed_silently(&mut g, "a garbage header").await;

    // A line longer than the limit: closed.
    let mut g = TcpStream::connect(e.agi).await.unwrap();
    let _ = g.write_all(&vec![b'a'; 10_000]).await; // may meet the close already
    closed_silently(&mut g, "a line over the limit").await;

    // The caller hangs up at the confirm prompt: `200 result=-1`.
    let mut a = Asterisk::connect(e.agi, "1700000000.2").await;
    let mut step = 0;
    while let Some(cmd) = a.next_command().await {
        match (cmd.as_str(), step) {
            ("ANSWER", _) => a.reply("200 result=0").await,
            (c, 0) if c.starts_with("GET DATA") => {
                step = 1;
                a.reply(&format!("200 result={ctx}")).await;
            }
            (c, 1) if c.starts_with("GET DATA") => {
                a.reply("HANGUP").await;
                break;
            }
            _ => a.reply("200 result=0").await,
        }
    }
    let wait_state = |want: &'static str| {
        let http = e.http.clone();
        let id = id.clone();
        let token = e.tokens.tenant.clone();
        async move {
            loop {
                let (_, v) = http.json("GET", &format!("/v1/associations/{id}"), &token, None).await.unwrap();
                if v["reason"] == want {
                    return v;
                }
                tokio::task::yield_now().await;
            }
        }
    };
    let v = tokio::time::timeout(LIMIT, wait_state("call_cleared")).await.expect("the hang-up ends the attempt");
    assert_eq!(v["state"], "failed");
    let (s, _) = e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 404);
    drop(e.sim);
}

/// One counter's value from `/metrics` (the whole line's name with its labels).
use crate::common::metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_fastagi_allow_is_closed_unread_and_counted() {
    let e = env_with("fastagi_allow = [\"127.0.0.1/32\"]\n").await;
    assert_eq!(metric(&e.http, "cstagate_fastagi_refused_total").await, 0);
    // From 127.0.0.2 (loopback, but outside the list): closed, nothing sent back, no command.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(e.agi).await.unwrap();
    let _ = s.write_all(b"agi_network: yes\nagi_network_script: associate\nagi_uniqueid: 1700000000.9\n\n").await;
    // The end of the stream or a reset (the header was left unread): either way, nothing.
    closed_silently(&mut s, "a refused peer").await;
    let counted = async {
        while metric(&e.http, "cstagate_fastagi_refused_total").await != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(LIMIT, counted).await.expect("the refusal is counted");
    // From 127.0.0.1: served.
    let mut a = Asterisk::connect(e.agi, "1700000000.10").await;
    assert_eq!(a.next_command().await.as_deref(), Some("ANSWER"));
    a.reply("HANGUP").await;
    assert_eq!(metric(&e.http, "cstagate_fastagi_refused_total").await, 1);
    drop(e.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_guesser_gets_goodbye_after_30_unknown_ids_and_is_counted() {
    let prompts = "fastagi_prompts = { enter_context = \"p/enter-context\", unknown_context = \"p/unknown\", unknown_context_bye = \"p/unknown-bye\", busy = \"p/busy\" }\n";
    let e = env_with(prompts).await;
    // Which prompt answered each guess, in order: 100 guesses over as many calls as it takes
    // (the engine ends a call after three unknown ids; the guesser calls again).
    let mut answers: Vec<&str> = Vec::new();
    let mut calls = 0;
    while answers.len() < 100 {
        calls += 1;
        let mut a = Asterisk::connect(e.agi, &format!("1700000100.{calls}")).await;
        let mut guessed = false;
        while let Some(cmd) = a.next_command().await {
            if cmd == "ANSWER" {
                a.reply("200 result=0").await;
            } else if let Some(rest) = cmd.strip_prefix("GET DATA ") {
                if guessed {
                    answers.push(if rest.starts_with("p/unknown ") { "unknown" } else { "other" });
                }
                if answers.len() == 100 {
                    a.reply("HANGUP").await;
                    break;
                }
                guessed = true;
                // A 12-digit number no association has (context ids are drawn at random).
                a.reply(&format!("200 result={:012}", 900_000_000_000u64 + answers.len() as u64)).await;
            } else if let Some(rest) = cmd.strip_prefix("STREAM FILE ") {
                answers.push(if rest.starts_with("p/unknown-bye ") { "unknown" } else if rest.starts_with("p/busy ") { "busy" } else { "other" });
                a.reply("200 result=0 endpos=100").await;
            } else if cmd == "HANGUP" {
                a.reply("200 result=1").await;
                break;
            } else {
                a.reply("510 Invalid or unknown command").await;
            }
        }
    }
    assert!(answers[..30].iter().all(|a| *a == "unknown"), "the first 30 guesses reach the engine: {answers:?}");
    assert!(answers[30..].iter().all(|a| *a == "busy"), "beyond 30, goodbye without the engine: {answers:?}");
    assert_eq!(calls, 10 + 70, "three guesses a call, then one (refused) a call");
    assert_eq!(metric(&e.http, "cstagate_ivr_unknown_context_total{adapter=\"fastagi\"}").await, 30);
    assert_eq!(metric(&e.http, "cstagate_ivr_guesses_refused_total{adapter=\"fastagi\"}").await, 70);
    assert_eq!(metric(&e.http, "cstagate_ivr_unknown_context_total{adapter=\"webhook\"}").await, 0);
    drop(e.sim);
}
