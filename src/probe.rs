//! `cstagate probe`: an admin's check that a PBX profile works. It logs in, starts the
//! monitors, optionally places one MakeCall, and prints link state changes, results and events
//! one per line (JSON with the same names as `cstagate decode --json` when asked). The call it
//! placed is cleared before it exits, unless asked to keep it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::codec::body::{FieldName as F, Value};
use crate::codec::apdu::ErrorCategory;
use crate::codec::{Apdu, Body, ConnectionId, Operation};
use crate::config::Config;
use crate::csta::view::{describe, to_line};
use crate::link::{Link, LinkState, MonitorEvent, RequestError};

pub struct Probe {
    pub config: PathBuf,
    pub pbx: String,
    pub monitors: Vec<String>,
    pub make_call: Option<(String, String)>,
    pub count: Option<usize>,
    pub timeout: Duration,
    pub json: bool,
    /// Leave the call placed with `make_call` up on exit (by default the probe clears it, so a
    /// check leaves no call behind on a production PBX).
    pub keep_call: bool,
}

// The probe's exit codes, from the one table of every command ([`crate::exit::Exit`]).
pub const EXIT_CONNECT: u8 = crate::exit::Exit::Connection as u8;
pub const EXIT_REJECTED: u8 = crate::exit::Exit::Rejected as u8;
pub const EXIT_CSTA_ERROR: u8 = crate::exit::Exit::Protocol as u8;
pub const EXIT_CONFIG: u8 = crate::exit::Exit::Config as u8;

fn print(json_out: bool, o: Map<String, Json>) {
    let j = Json::Object(o);
    if json_out {
        println!("{j}");
    } else if let Some(l) = j.get("link").and_then(Json::as_str) {
        println!("link {l}{}", j.get("reason").and_then(Json::as_str).map(|r| format!(": {r}")).unwrap_or_default());
    } else {
        println!("{}{}", j.get("device").and_then(Json::as_str).map(|d| format!("[{d}] ")).unwrap_or_default(), to_line(&j).trim_start_matches('#').trim_start());
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("cstagate probe: {msg}");
    ExitCode::from(code)
}

pub async fn run(p: Probe) -> ExitCode {
    let cfg = match Config::load(&p.config) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
    };
    let Some(pbx) = cfg.pbx(&p.pbx) else { return fail(EXIT_CONFIG, &format!("no [[pbx]] with id `{}` in {}", p.pbx, p.config.display())) };
    let profile = match pbx.profile() {
        Ok(pr) => pr,
        Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
    };
    let dialect = profile.dialect;
    let deadline = Instant::now() + p.timeout;
    let link = Link::spawn(profile);
    let code = session(&p, &link, deadline, dialect).await;
    link.shutdown().await;
    code
}

async fn session(p: &Probe, link: &Link, deadline: Instant, dialect: crate::codec::Dialect) -> ExitCode {
    let mut state = link.watch_state();
    loop {
        let s = state.borrow_and_update().clone();
        let mut o = Map::new();
        match &s {
            LinkState::Up => {
                o.insert("link".into(), json!("up"));
                print(p.json, o);
                break;
            }
            LinkState::Down { reason } => {
                o.insert("link".into(), json!("down"));
                o.insert("reason".into(), json!(reason));
                print(p.json, o);
                // Refused by the PBX (ACSE or ECMA-354) rather than unreachable.
                let refused = ["AARE rejected", "aborted", "application session refused", "application session terminated"];
                let code = if refused.iter().any(|r| reason.contains(r)) { EXIT_REJECTED } else { EXIT_CONNECT };
                return fail(code, reason);
            }
            other => {
                o.insert("link".into(), serde_json::to_value(other).ok().and_then(|v| v.get("state").cloned()).unwrap_or(Json::Null));
                print(p.json, o);
            }
        }
        tokio::select! {
            r = state.changed() => if r.is_err() { return fail(EXIT_CONNECT, "link task ended") },
            _ = sleep_until(deadline) => return fail(EXIT_CONNECT, "timed out before the link came up"),
        }
    }
    let (tx, mut rx) = mpsc::channel::<(String, MonitorEvent)>(1024);
    for ext in &p.monitors {
        match link.monitor(ext).await {
            Ok(mut m) => {
                let tx = tx.clone();
                let dev = ext.clone();
                tokio::spawn(async move {
                    while let Some(ev) = m.next().await {
                        if tx.send((dev.clone(), ev)).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => return fail(EXIT_CSTA_ERROR, &format!("monitor {ext}: {e}")),
        }
    }
    drop(tx);
    let mut placed = None;
    if let Some((from, to)) = &p.make_call {
        let Ok(body) = crate::csta::make_call(from, to) else { return fail(EXIT_CONFIG, "device numbers must be ASCII") };
        match link.request(Operation::MakeCall, body).await {
            Ok(result) => {
                placed = result.connection(F::CallingDevice).cloned();
                let mut o = Map::new();
                describe(&Apdu::result(0, Operation::MakeCall, result), dialect, &mut o);
                o.remove("invoke_id");
                print(p.json, o);
            }
            Err(e) => return fail(EXIT_CSTA_ERROR, &format!("makeCall {from} → {to}: {e}")),
        }
    }
    print_events(p, &mut rx, deadline, dialect).await;
    match placed {
        Some(conn) if !p.keep_call => clear(p, link, conn, dialect).await,
        _ => ExitCode::SUCCESS,
    }
}

/// Clear the call the probe placed. A call already gone (the far end hung up, the PBX ended it)
/// is not an error; any other refusal is, since the call may still be up.
async fn clear(p: &Probe, link: &Link, conn: ConnectionId, dialect: crate::codec::Dialect) -> ExitCode {
    match link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn))).await {
        Ok(result) => {
            let mut o = Map::new();
            describe(&Apdu::result(0, Operation::ClearConnection, result), dialect, &mut o);
            o.remove("invoke_id");
            print(p.json, o);
            ExitCode::SUCCESS
        }
        // invalidConnectionID: the PBX no longer knows the call.
        Err(RequestError::Failure(u)) if u.category == ErrorCategory::Operation && u.value == Some(13) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_CSTA_ERROR, &format!("clearConnection of the call placed: {e} (it may still be up)")),
    }
}

/// Print events until `count` of them, the deadline, or the end of every monitor.
async fn print_events(p: &Probe, rx: &mut mpsc::Receiver<(String, MonitorEvent)>, deadline: Instant, dialect: crate::codec::Dialect) {
    let mut n = 0usize;
    loop {
        if p.count.is_some_and(|c| n >= c) {
            return;
        }
        tokio::select! {
            ev = rx.recv() => {
                let Some((device, ev)) = ev else { return };
                let mut o = Map::new();
                o.insert("device".into(), json!(device));
                match ev {
                    MonitorEvent::Event(report) => {
                        o.extend(crate::csta::view::event_json(&report, dialect));
                        n += 1;
                    }
                    MonitorEvent::LinkLost => { o.insert("link".into(), json!("lost")); }
                    MonitorEvent::LinkRestored => { o.insert("link".into(), json!("restored")); }
                    MonitorEvent::MonitorFailed(e) => { o.insert("link".into(), json!("monitor failed")); o.insert("reason".into(), json!(e.to_string())); }
                }
                print(p.json, o);
            }
            _ = sleep_until(deadline) => return,
        }
    }
}
