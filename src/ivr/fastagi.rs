//! Asterisk FastAGI adapter: Asterisk connects (`AGI(agi://gateway/associate)` in its dial plan),
//! sends its `agi_*: value` header ended by a blank line, then the gateway drives the call one
//! command at a time — `ANSWER`, `GET DATA <file> <timeout> <max digits>` to play a prompt and
//! collect digits, `STREAM FILE <file> ""` for the last prompt, `HANGUP` — reading each
//! `200 result=...` reply. `200 result= (timeout)`, `200 result=-1` (caller hung up), `511`
//! (dead channel) and a bare `HANGUP` line are handled; the calling number is `agi_callerid`,
//! the called number `agi_dnid` (else `agi_extension`).
//!
//! Prompts are recorded files named per prompt id in the configuration, for every language or
//! per language (the PBX's `language`, see [`FastAgiSettings::file`]), with a fallback file (for
//! example a text-to-speech prompt) for ids without a file. The protocol has no
//! authentication: only peers in [`FastAgiSettings::allow`] (`fastagi_allow`, loopback by
//! default) are served; a connection from any other address is closed before a byte is read,
//! counted (`cstagate_fastagi_refused_total`) and logged with the address (at most every 10 s).
//! Listen on an address only the Asterisk servers reach as well.
//!
//! Context ids are guarded across calls ([`crate::ivr::Guard`]): once the adapter has heard
//! `ivr_guesses_per_minute` unknown context ids in the last minute, a context entry gets the
//! `busy` prompt and a hang-up without reaching the engine. The calling number (`agi_callerid`)
//! is whatever the caller's network claimed: the binding keeps it as an unverified hint.
//!
//! Hostile or broken clients are bounded: at most [`FastAgiSettings::max_sessions`] sessions at
//! once (beyond, a connection is closed at once, unread), lines of at most [`MAX_LINE`] bytes, a
//! header of at most [`MAX_HEADERS`] lines and [`MAX_HEADER_BYTES`] bytes, at most
//! [`MAX_SKIPPED_LINES`] unexpected lines while waiting for a command's reply, and
//! `read_timeout` for each line. Anything else ends the session, and the engine hears the call
//! ended.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::association::IvrInput;
use crate::clock::now_ms;
use crate::gateway::Gateway;
use crate::ivr::{asks_context, names_a_number, Cidr, Guard, IvrGuards, REFUSED_PROMPT};
use crate::log_gate::LogGate;
use crate::shutdown::Shutdown;

/// Longest line accepted from Asterisk.
pub const MAX_LINE: usize = 4096;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 128;
/// Most header bytes accepted (Asterisk sends about 1 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most lines that are not a reply accepted while waiting for one.
pub const MAX_SKIPPED_LINES: usize = 16;
/// Default most sessions at once.
pub const MAX_SESSIONS: usize = 256;

/// FastAGI settings.
#[derive(Debug, Clone)]
pub struct FastAgiSettings {
    /// Prompt id (`enter_code`, `confirm_account`, ...) → sound file name (without extension),
    /// for every language.
    pub prompts: HashMap<String, String>,
    /// Language (as the catalogue spells it: `fr-FR`) → its own files by prompt id.
    pub prompts_by_language: HashMap<String, HashMap<String, String>>,
    /// `language/prompt` pairs already logged as played in English: one line each. Bounded by
    /// the configuration (its languages times the prompt ids).
    pub english_logged: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// File played for prompt ids without a file of their own.
    pub fallback: String,
    /// How long to wait for Asterisk's next line before giving up on the call.
    pub read_timeout: Duration,
    /// Sessions served at once; connections beyond are closed at once.
    pub max_sessions: usize,
    /// Networks whose peers are served (`fastagi_allow`); others are closed unread.
    pub allow: Vec<Cidr>,
    /// Unknown context ids heard per minute before context entries get goodbye (used by
    /// [`serve`]; [`serve_guarded`] takes the guard it is given).
    pub guesses_per_minute: u32,
    /// `[cluster]`: a call dialled to the number of a PBX owned by another instance is served
    /// by that instance, one HTTP request per step ([`ask`]).
    pub cluster: Option<ClusterIvr>,
}

/// `[cluster]`: the API's routing and secrets, through which a FastAGI session asks each step
/// of a call of another instance's PBX at that instance (FastAGI cannot be proxied as HTTP is).
#[derive(Clone)]
pub struct ClusterIvr(pub crate::api::ApiControl);

impl std::fmt::Debug for ClusterIvr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterIvr")
    }
}

impl Default for FastAgiSettings {
    fn default() -> Self {
        FastAgiSettings {
            prompts: HashMap::new(),
            prompts_by_language: HashMap::new(),
            english_logged: Arc::default(),
            fallback: "cstagate/tts".into(),
            read_timeout: Duration::from_secs(60),
            max_sessions: MAX_SESSIONS,
            allow: crate::ivr::loopback(),
            guesses_per_minute: crate::ivr::GUESSES_PER_MINUTE,
            cluster: None,
        }
    }
}

impl FastAgiSettings {
    /// The file of prompt `id` said in `language`: the language's own, else the one for every
    /// language, else the English one (logged once per language and prompt, since the caller
    /// hears another language), else the fallback. Quoted for an AGI command.
    pub fn file(&self, language: &str, id: &str) -> String {
        let english = crate::ivr::prompts::DEFAULT_LANGUAGE;
        let own = |lang: &str| self.prompts_by_language.get(lang).and_then(|t| t.get(id));
        if let Some(f) = own(language).or_else(|| self.prompts.get(id)) {
            return file_name(f);
        }
        if let Some(f) = own(english) {
            let first = self.english_logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(format!("{language}/{id}"));
            if first {
                warn!(language, prompt = id, file = %f, "FastAGI: no prompt file for this language: the English one is played (add it to fastagi_prompts.\"{language}\")");
            }
            return file_name(f);
        }
        file_name(&self.fallback)
    }
}

/// Serve FastAGI connections until the listener fails, with a guard of its own.
pub async fn serve(listener: TcpListener, gw: Gateway, settings: Arc<FastAgiSettings>) {
    let guards = IvrGuards::new(settings.guesses_per_minute);
    serve_guarded(listener, gw, settings, guards).await;
}

/// Serve FastAGI connections until the listener fails, counting into `guards` (its `fastagi`
/// guard and `fastagi_refused`), which `/metrics` reads.
pub async fn serve_guarded(listener: TcpListener, gw: Gateway, settings: Arc<FastAgiSettings>, guards: IvrGuards) {
    serve_until(listener, gw, settings, guards, Shutdown::new()).await;
}

/// As [`serve_guarded`], until `shutdown` begins: then it returns (the listener closes), and
/// the sessions in progress go on until the grace period is over (then they are closed, which
/// Asterisk sees as a hang-up).
pub async fn serve_until(listener: TcpListener, gw: Gateway, settings: Arc<FastAgiSettings>, guards: IvrGuards, shutdown: Shutdown) {
    let sessions = Arc::new(tokio::sync::Semaphore::new(settings.max_sessions));
    let mut refusal_log = LogGate::new(Duration::from_secs(10));
    let mut busy_log = LogGate::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.stopping() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: give connections time to close.
                warn!(error = %e, "FastAGI accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !settings.allow.iter().any(|n| n.contains(peer.ip())) {
            // Closed before a byte is read: nothing of the connection reaches the parser.
            drop(stream);
            let total = guards.fastagi_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(held) = refusal_log.pass() {
                warn!(%peer, refused_total = total, not_logged = held, "FastAGI connection refused: the peer is outside fastagi_allow");
            }
            continue;
        }
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            if let Some(held) = busy_log.pass() {
                warn!(%peer, max = settings.max_sessions, not_logged = held, "FastAGI connection refused: too many sessions");
            }
            drop(stream);
            continue;
        };
        let gw = gw.clone();
        let settings = settings.clone();
        let guard = guards.fastagi.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            tokio::select! {
                r = session(stream, &gw, &settings, &guard) => if let Err(e) = r {
                    debug!(%peer, error = %e, "FastAGI session ended");
                },
                () = stop.closing() => debug!(%peer, "FastAGI session closed: shutdown"),
            }
            drop(permit);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum AgiError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("Asterisk said nothing in time")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("line too long")]
    LineTooLong,
    #[error("malformed AGI: {0}")]
    Malformed(String),
    #[error("the caller hung up")]
    HungUp,
}

struct Agi {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    timeout: Duration,
}

impl Agi {
    async fn line(&mut self) -> Result<String, AgiError> {
        let mut buf = Vec::new();
        loop {
            let chunk = tokio::time::timeout(self.timeout, self.rd.fill_buf()).await.map_err(|_| AgiError::Timeout)??;
            if chunk.is_empty() {
                return Err(AgiError::Closed);
            }
            match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    buf.extend_from_slice(&chunk[..i]);
                    self.rd.consume(i + 1);
                    break;
                }
                None => {
                    let n = chunk.len();
                    buf.extend_from_slice(chunk);
                    self.rd.consume(n);
                }
            }
            if buf.len() > MAX_LINE {
                return Err(AgiError::LineTooLong);
            }
        }
        if buf.len() > MAX_LINE {
            return Err(AgiError::LineTooLong);
        }
        let s = String::from_utf8(buf).map_err(|_| AgiError::Malformed("not UTF-8".into()))?;
        let s = s.trim_end_matches('\r');
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return Err(AgiError::Malformed("control character in a line".into()));
        }
        Ok(s.to_owned())
    }

    /// Send a command and read its `200 result=` value (the text after `result=`).
    async fn command(&mut self, cmd: &str) -> Result<String, AgiError> {
        self.wr.write_all(format!("{cmd}\n").as_bytes()).await?;
        for _ in 0..=MAX_SKIPPED_LINES {
            let l = self.line().await?;
            if l == "HANGUP" {
                return Err(AgiError::HungUp);
            }
            if l.starts_with("511") {
                return Err(AgiError::HungUp);
            }
            if let Some(rest) = l.strip_prefix("200 result=") {
                if rest.trim() == "-1" || rest.starts_with("-1 ") {
                    return Err(AgiError::HungUp);
                }
                return Ok(rest.to_owned());
            }
            if l.starts_with("510") || l.starts_with("520") {
                return Err(AgiError::Malformed(format!("Asterisk refused `{cmd}`: {l}")));
            }
            // Anything else (e.g. the 520 usage continuation lines) is skipped, up to a point.
        }
        Err(AgiError::Malformed(format!("no reply to `{cmd}` among {} lines", MAX_SKIPPED_LINES + 1)))
    }
}

/// `GET DATA` value: digits keyed, empty on timeout; `12 (timeout)` is a partial entry.
fn digits_of(result: &str) -> String {
    result.split_whitespace().next().filter(|d| d.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#')).unwrap_or("").to_owned()
}

/// A calling or called number or call id as the webhook accepts it (at most 64 printable ASCII
/// characters), else empty.
fn party(v: &str) -> String {
    if v.len() <= 64 && v.bytes().all(|b| (0x20..0x7F).contains(&b)) { v.to_owned() } else { String::new() }
}

/// Quote a prompt file name for an AGI command (no spaces or quotes reach Asterisk).
fn file_name(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.')).collect()
}

async fn session(stream: TcpStream, gw: &Gateway, settings: &FastAgiSettings, guard: &Guard) -> Result<(), AgiError> {
    let (rd, wr) = stream.into_split();
    let mut agi = Agi { rd: BufReader::new(rd), wr, timeout: settings.read_timeout };
    let mut header = HashMap::new();
    let mut header_bytes = 0;
    loop {
        let l = agi.line().await?;
        if l.is_empty() {
            break;
        }
        header_bytes += l.len() + 1;
        if header_bytes > MAX_HEADER_BYTES {
            return Err(AgiError::Malformed("header too long".into()));
        }
        if header.len() >= MAX_HEADERS {
            return Err(AgiError::Malformed("too many header lines".into()));
        }
        let Some((k, v)) = l.split_once(':') else { return Err(AgiError::Malformed(format!("header line without ':' ({} bytes)", l.len()))) };
        if !k.starts_with("agi_") {
            return Err(AgiError::Malformed("header key does not start with agi_".into()));
        }
        header.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let script = header.get("agi_network_script").cloned().unwrap_or_default();
    if script.trim_matches('/') != "associate" {
        warn!(%script, "FastAGI request for an unknown script");
        let _ = agi.command("HANGUP").await;
        return Ok(());
    }
    let call = header.get("agi_uniqueid").cloned().filter(|c| party(c) == *c && !c.is_empty()).ok_or_else(|| AgiError::Malformed("no usable agi_uniqueid".into()))?;
    // The calling number comes from the network (and may be spoofed): kept only if it looks
    // like one, as the webhook requires.
    let from = party(header.get("agi_callerid").map_or("", String::as_str));
    let to = party(header.get("agi_dnid").filter(|d| !d.is_empty() && *d != "unknown").or_else(|| header.get("agi_extension")).map_or("", String::as_str));
    let call = format!("agi-{call}");
    let result = dialogue(&mut agi, gw, settings, guard, &call, &from, &to).await;
    if result.is_err() {
        // Whatever broke the dialogue, the engine hears the call ended.
        hang_up(gw, settings, &call, &from, &to).await;
    }
    result
}

/// One step of the dialogue, asked of this gateway's engine or — `[cluster]`, the dialled
/// number's PBX owned by another instance — of that instance: the IVR webhook's request, signed
/// as a platform signs it, on its internal surface. No live owner ends the session, as a
/// stopped engine does (Asterisk hears a hang-up).
async fn ask(gw: &Gateway, settings: &FastAgiSettings, input: IvrInput, hangup: bool) -> Result<Option<crate::association::IvrReply>, AgiError> {
    let routing = settings.cluster.as_ref().and_then(|c| c.0.routing().map(|r| (c, r)));
    let Some((control, routing)) = routing else {
        return local(gw, input, hangup).await;
    };
    match routing.ivr_route(&input.to) {
        crate::api::route::IvrRoute::Here => local(gw, input, hangup).await,
        crate::api::route::IvrRoute::Unavailable => {
            debug!("FastAGI call for a PBX without a live owner: ended");
            Err(AgiError::Closed)
        }
        crate::api::route::IvrRoute::Owner(url) => {
            let mut body = serde_json::json!({ "call": input.call, "from": input.from, "to": input.to, "hangup": hangup });
            if let Some(d) = &input.digits {
                body["digits"] = serde_json::json!(d);
            }
            match routing.ivr_step(&control.0, &url, body.to_string().into_bytes()).await {
                Ok(reply) => Ok((!hangup).then_some(reply)),
                Err(e) => {
                    warn!(error = %e, "FastAGI step not answered by the PBX's owner: call ended");
                    Err(AgiError::Closed)
                }
            }
        }
    }
}

async fn local(gw: &Gateway, input: IvrInput, hangup: bool) -> Result<Option<crate::association::IvrReply>, AgiError> {
    if hangup {
        gw.ivr_hangup(input.call, input.now).await;
        return Ok(None);
    }
    gw.ivr(input).await.map(Some).map_err(|_| AgiError::Closed)
}

/// The call ended: the engine (here or at the PBX's owner) hears it.
async fn hang_up(gw: &Gateway, settings: &FastAgiSettings, call: &str, from: &str, to: &str) {
    let _ = ask(gw, settings, IvrInput { call: call.to_owned(), from: from.to_owned(), to: to.to_owned(), digits: None, now: now_ms() }, true).await;
}

async fn dialogue(agi: &mut Agi, gw: &Gateway, settings: &FastAgiSettings, guard: &Guard, call: &str, from: &str, to: &str) -> Result<(), AgiError> {
    agi.command("ANSWER").await?;
    let mut digits: Option<String> = None;
    // The last prompt asked for a context id: the digits keyed now are a context entry.
    let mut at_context = false;
    loop {
        let now = now_ms();
        let entry = at_context && names_a_number(digits.as_deref());
        if entry && !guard.admit(call, now) {
            // Too many unknown context ids lately: goodbye, without asking the engine.
            let file = settings.file(crate::ivr::prompts::DEFAULT_LANGUAGE, REFUSED_PROMPT);
            agi.command(&format!("STREAM FILE {file} \"\"")).await?;
            let _ = agi.command("HANGUP").await;
            hang_up(gw, settings, call, from, to).await;
            return Ok(());
        }
        let reply = ask(gw, settings, IvrInput { call: call.to_owned(), from: from.to_owned(), to: to.to_owned(), digits: digits.take(), now }, false).await?.ok_or(AgiError::Closed)?;
        if entry {
            guard.answered(call, reply.prompt, now);
        }
        at_context = asks_context(reply.prompt);
        let file = settings.file(&reply.language, reply.prompt);
        match reply.gather {
            Some(g) if !reply.hangup => {
                let r = agi.command(&format!("GET DATA {file} {} {}", g.timeout_ms, g.max_digits)).await?;
                digits = Some(digits_of(&r));
            }
            _ => {
                agi.command(&format!("STREAM FILE {file} \"\"")).await?;
                let _ = agi.command("HANGUP").await;
                hang_up(gw, settings, call, from, to).await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_data_results() {
        assert_eq!(digits_of("1234"), "1234");
        assert_eq!(digits_of(" (timeout)"), "");
        assert_eq!(digits_of("12 (timeout)"), "12");
        assert_eq!(file_name("cstagate/enter code\"; HANGUP"), "cstagate/entercodeHANGUP");
        let s = FastAgiSettings {
            prompts: HashMap::from([("busy".into(), "all/busy".into())]),
            prompts_by_language: HashMap::from([("fr-FR".into(), HashMap::from([("enter_code".into(), "fr/code".into())])), ("en-US".into(), HashMap::from([("enter_code".into(), "en/code".into()), ("bound".into(), "en/bound".into())]))]),
            ..Default::default()
        };
        assert_eq!([s.file("fr-FR", "enter_code"), s.file("en-US", "enter_code"), s.file("fr-FR", "busy"), s.file("fr-FR", "bound"), s.file("fr-FR", "goodbye")], ["fr/code", "en/code", "all/busy", "en/bound", "cstagate/tts"]);
        assert_eq!(s.english_logged.lock().unwrap().len(), 1, "the English file played for French is logged once");
        assert_eq!(party("+33144002005"), "+33144002005");
        for bad in ["+3314\u{202e}4002005", "\u{1F600}", &"1".repeat(65)] {
            assert_eq!(party(bad), "", "{bad:?}");
        }
    }
}
