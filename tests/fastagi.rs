//! The FastAGI adapter against a faithful stand-in for Asterisk's side of the protocol: the
//! association bound through ANSWER / GET DATA / STREAM FILE / HANGUP; the caller hanging up
//! mid-dialogue (`200 result=-1` and a bare `HANGUP` line); garbage and a client that stops
//! mid-line get the connection closed with nothing changed.

use std::time::Duration;

use cstagate::demo::{local_secrets, Http, LocalGateway, LocalOptions, TENANT_TOKEN};
use cstagate::sim::{IvrSignal, SimConfig, SimPbx};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

struct Env {
    sim: SimPbx,
    ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    http: Http,
    agi: std::net::SocketAddr,
    _running: cstagate::server::Running,
}

async fn env() -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    sim.config().extensions[0].behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
    let ivr = sim.take_ivr().unwrap();
    let options = LocalOptions {
        gateway: "fastagi_listen = \"127.0.0.1:0\"\nfastagi_prompts = { enter_code = \"cstagate/enter-code\" }\n".into(),
        pbx: "extensions = [\"2005\"]\nnames = { \"2005\" = \"Alice Martin\" }\n".into(),
        ..Default::default()
    };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    Env { sim, ivr, agi: gw.running.fastagi_addr.unwrap(), http: gw.http, _running: gw.running }
}

/// Asterisk's side: the header, then one reply per command, from a script of answers to GET DATA.
struct Asterisk {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    commands: Vec<String>,
}

impl Asterisk {
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
    let (_, v) = e.http.json("POST", "/v1/associations", TENANT_TOKEN, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    let code = v["code"].as_str().unwrap().to_owned();
    let ctx = connected(&mut e).await; // dialled after the IVR number: "*<context>#"
    let mut a = Asterisk::connect(e.agi, "1700000000.1").await;
    let mut answers = vec![ctx.trim_start_matches('*').trim_end_matches('#').to_owned(), "1".into(), code.clone()].into_iter();
    while let Some(cmd) = a.next_command().await {
        if cmd == "ANSWER" {
            a.reply("200 result=0").await;
        } else if cmd.starts_with("GET DATA") {
            // Asterisk answers with the keyed digits (the '#' terminator is not included).
            let d = answers.next().unwrap_or_default();
            a.reply(&format!("200 result={d}")).await;
        } else if cmd.starts_with("STREAM FILE") {
            a.reply("200 result=0 endpos=16000").await;
        } else if cmd == "HANGUP" {
            a.reply("200 result=1").await;
            break;
        } else {
            a.reply("510 Invalid or unknown command").await;
        }
    }
    assert_eq!(a.commands[0], "ANSWER");
    assert!(a.commands.iter().any(|c| c.starts_with("GET DATA cstagate/enter-code 8000 6")), "{:?}", a.commands);
    assert!(a.commands.iter().any(|c| c.starts_with("GET DATA cstagate/tts ")), "fallback file for prompts without one");
    let (s, b) = e.http.json("GET", "/v1/bindings/paris/2005", TENANT_TOKEN, None).await.unwrap();
    assert_eq!((s, b["did"].as_str()), (200, Some("+33144002005")), "agi_callerid is the calling number");
    drop(e.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangups_and_garbage_end_the_dialogue_with_nothing_bound() {
    let mut e = env().await;
    let (_, v) = e.http.json("POST", "/v1/associations", TENANT_TOKEN, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let ctx = connected(&mut e).await;
    let ctx = ctx.trim_start_matches('*').trim_end_matches('#').to_owned();

    // Garbage header: closed without a command.
    let mut g = TcpStream::connect(e.agi).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let n = tokio::time::timeout(LIMIT, g.read_to_end(&mut sink)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "nothing sent back to garbage");

    // A line longer than the limit: closed.
    let mut g = TcpStream::connect(e.agi).await.unwrap();
    let _ = g.write_all(&vec![b'a'; 10_000]).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(LIMIT, g.read_to_end(&mut sink)).await.unwrap();

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
        async move {
            loop {
                let (_, v) = http.json("GET", &format!("/v1/associations/{id}"), TENANT_TOKEN, None).await.unwrap();
                if v["reason"] == want {
                    return v;
                }
                tokio::task::yield_now().await;
            }
        }
    };
    let v = tokio::time::timeout(LIMIT, wait_state("call_cleared")).await.expect("the hang-up ends the attempt");
    assert_eq!(v["state"], "failed");
    let (s, _) = e.http.json("GET", "/v1/bindings/paris/2005", TENANT_TOKEN, None).await.unwrap();
    assert_eq!(s, 404);
    drop(e.sim);
}
