//! The README's walkthrough ("Running the gateway"), run from the README's own fenced blocks so
//! the README cannot drift: the real `cstagate` binary as `sim-pbx` with the README's command
//! and as `run` with the README's configuration and exports, then every line of the terminal-2
//! blocks — the `curl` steps (done with the crate's HTTP client, so no curl is needed), the
//! `sed` extractions of `$ID`, `$CODE`, `$CALL`, `$FROM`, `$CONTEXT` (applied to the same files:
//! the answers saved with `tee` and the simulator's output, `sim.log`), the `until` waits — and
//! the IVR platform's `ivr` requests, signed here as the README's `ivr` function signs them.
//! The `hangup` typed into the simulator goes to its stdin. It ends at the binding and the CTI
//! call the bound account places and clears.
//!
//! Only the addresses change: the simulator and the gateway listen on ports the system picks
//! (the tests run in parallel with other suites), and `localhost:8080` means the gateway's.
//! A line the test does not understand fails it, naming the line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cstagate::testkit::{post_webhook, Http};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

/// How long any one step may take before the test gives up (a bound, not a synchronisation).
const STEP: Duration = Duration::from_secs(60);
const README_SIM: &str = "127.0.0.1:33333";
const README_API: &str = "127.0.0.1:8080";

/// The fenced blocks of the walkthrough subsection: (language, text).
fn walkthrough() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("### Walkthrough").expect("a ### Walkthrough section in README.md");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").into_iter().chain(rest.find("\n### ")).min().unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if let Some(lang) = l.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            blocks.push((lang.to_owned(), body.join("\n")));
        }
    }
    assert!(blocks.len() >= 5, "the walkthrough's blocks: {blocks:?}");
    blocks
}

/// A shell word or operator, after quote removal and `$VAR` expansion.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Op(&'static str),
}

/// Split a line like bash: single quotes literal, double quotes with `$VAR` and `\"`, `\x`
/// outside quotes, `|`, `;`, `&`, `&&`, an unquoted `#` starting a comment.
fn tokens(line: &str, vars: &HashMap<String, String>) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars().peekable();
    let var = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        let mut name = String::new();
        while let Some(&c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
            name.push(c);
            chars.next();
        }
        assert!(!name.is_empty(), "a lone $ in {line:?}");
        vars.get(&name).cloned().unwrap_or_else(|| panic!("${name} is not set at {line:?}"))
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = cur.take() {
                    out.push(Tok::Word(w));
                }
            }
            '#' if cur.is_none() => break,
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                for c in chars.by_ref().take_while(|c| *c != '\'') {
                    w.push(c);
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if chars.peek().is_some_and(|n| matches!(n, '"' | '\\' | '$')) => w.push(chars.next().unwrap_or_default()),
                        '$' => w.push_str(&var(&mut chars)),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).extend(chars.next()),
            '$' => {
                let v = var(&mut chars);
                cur.get_or_insert_with(String::new).push_str(&v);
            }
            '|' | ';' | '&' => {
                if let Some(w) = cur.take() {
                    out.push(Tok::Word(w));
                }
                out.push(Tok::Op(match (c, chars.peek()) {
                    ('&', Some('&')) => {
                        chars.next();
                        "&&"
                    }
                    ('|', _) => "|",
                    (';', _) => ";",
                    _ => "&",
                }));
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur.map(Tok::Word));
    out
}

fn words(toks: &[Tok]) -> Vec<&str> {
    toks.iter().map(|t| match t {
        Tok::Word(w) => w.as_str(),
        Tok::Op(o) => panic!("unexpected `{o}` in {toks:?}"),
    }).collect()
}

/// sed's basic regular expression as a `regex` one: `\(`, `\)` group; `(`, `)`, `{`, `}`, `+`,
/// `?`, `|` are literal.
fn bre(re: &str) -> regex::Regex {
    let mut out = String::new();
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('(') => out.push('('),
                Some(')') => out.push(')'),
                Some(c) => {
                    out.push('\\');
                    out.push(c);
                }
                None => out.push_str("\\\\"),
            },
            '(' | ')' | '{' | '}' | '+' | '?' | '|' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    regex::Regex::new(&out).unwrap_or_else(|e| panic!("sed expression {re:?}: {e}"))
}

/// `sed -n 's/RE/\1/p'` over `input`.
fn sed(script: &str, input: &str) -> String {
    let body = script.strip_prefix("s/").and_then(|s| s.strip_suffix("/p")).unwrap_or_else(|| panic!("only s/RE/\\1/p is understood: {script:?}"));
    let (re, repl) = body.rsplit_once('/').unwrap_or_else(|| panic!("{script:?}"));
    assert_eq!(repl, "\\1", "{script:?}");
    let re = bre(re);
    let mut out = String::new();
    for line in input.lines() {
        if let Some(c) = re.captures(line) {
            let (m, g) = (c.get(0).map_or(0..0, |m| m.range()), c.get(1).map_or("", |g| g.as_str()));
            out.push_str(&format!("{}{g}{}\n", &line[..m.start], &line[m.end..]));
        }
    }
    out
}

/// The simulator as the README starts it; its output goes to `sim.log` (the README's `tee`).
struct Sim {
    _child: Child,
    stdin: ChildStdin,
    lines: watch::Receiver<Vec<String>>,
}

struct Walk {
    dir: PathBuf,
    vars: HashMap<String, String>,
    sim: Option<Sim>,
    sim_addr: Option<String>,
    gateway: Option<Child>,
    http: Option<Http>,
    /// The IVR platform's `to`, from the README's `ivr` function.
    ivr_to: Option<String>,
    last_ivr: Option<Value>,
}

impl Walk {
    fn http(&self) -> &Http {
        self.http.as_ref().expect("the gateway was started before this step")
    }

    async fn block(&mut self, lang: &str, text: &str) {
        match lang {
            "text" => {
                for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    self.typed_into_sim(l).await;
                }
            }
            "sh" => {
                let mut lines = text.lines().map(str::to_owned);
                while let Some(mut line) = lines.next() {
                    while line.ends_with('\\') {
                        line.pop();
                        line.push_str(&lines.next().expect("a continued line"));
                    }
                    if let Some(rest) = line.strip_prefix("cat > ") {
                        let (file, eof) = rest.split_once(" <<").expect("cat > FILE <<'EOF'");
                        let eof = eof.trim_matches('\'');
                        let body: Vec<String> = lines.by_ref().take_while(|l| l != eof).collect();
                        self.write_config(file, &(body.join("\n") + "\n"));
                    } else if line.starts_with("ivr() {") {
                        // The README's IVR platform; `ivr` below does what it does.
                        let body: Vec<String> = lines.by_ref().take_while(|l| l != "}").collect();
                        let body = body.join("\n");
                        assert!(body.contains("/v1/ivr/webhook") && body.contains("X-Cstagate-Signature: sha256="), "{body}");
                        let to = body.split("\\\"to\\\":\\\"").nth(1).and_then(|r| r.split('\\').next()).expect("the IVR number in ivr()");
                        self.ivr_to = Some(to.to_owned());
                    } else {
                        self.line(&line).await;
                    }
                }
            }
            other => panic!("a ```{other} block in the walkthrough: the test does not know what to do with it"),
        }
    }

    async fn line(&mut self, line: &str) {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            return;
        }
        // Getting the binary: the test runs the one cargo built for it, in a directory of its own.
        if t.starts_with("cargo build ") || t.starts_with("export PATH=") || (t.starts_with("mkdir -p ") && t.contains("&& cd ")) {
            return;
        }
        if let Some(rest) = t.strip_prefix("until ") {
            let (cond, tail) = rest.rsplit_once("; do ").unwrap_or_else(|| panic!("until ...; do sleep N; done: {t}"));
            assert!(tail.starts_with("sleep ") && tail.split('#').next().unwrap_or("").trim_end().ends_with("; done"), "{t}");
            return self.until(cond).await;
        }
        if let Some((name, inner)) = t.split_once("=$(").filter(|(n, _)| n.chars().all(|c| c.is_ascii_uppercase())) {
            let inner = inner.strip_suffix(')').unwrap_or_else(|| panic!("NAME=$(...) on one line: {t}"));
            let value = self.pipeline(&tokens(inner, &self.vars), true).await.trim_end().to_owned();
            assert!(!value.is_empty() && !value.contains('\n'), "{name} from `{inner}`: {value:?}");
            self.vars.insert(name.to_owned(), value);
            return;
        }
        let toks = tokens(t, &self.vars);
        match toks.first() {
            Some(Tok::Word(w)) if w == "export" => {
                for kv in words(&toks[1..]) {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("export K=V: {t}"));
                    self.vars.insert(k.to_owned(), v.to_owned());
                }
            }
            Some(Tok::Word(w)) if w == "cstagate" => self.cstagate(&toks).await,
            Some(Tok::Word(w)) if w == "ivr" => {
                let args = words(&toks[1..]);
                assert!(args.len() <= 1, "{t}");
                self.ivr(args.first().copied()).await;
            }
            Some(Tok::Word(w)) if w == "curl" => {
                // `curl ... [| tee FILE] [; echo]`
                let end = toks.iter().position(|t| *t == Tok::Op(";")).unwrap_or(toks.len());
                assert!(toks[end..].iter().skip(1).all(|t| *t == Tok::Word("echo".into())), "{t}");
                self.pipeline(&toks[..end], false).await;
            }
            _ => panic!("README walkthrough line not understood by the test: {t}"),
        }
    }

    /// A pipeline of curl, sed, tail, tee, grep -q; returns its output ("true"/"" for grep -q).
    async fn pipeline(&mut self, toks: &[Tok], wait_for_output: bool) -> String {
        let stages: Vec<Vec<&str>> = toks.split(|t| *t == Tok::Op("|")).map(words).collect();
        // Input from the simulator's output may not be there yet: run again until it is.
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let mut data = String::new();
            let mut from_sim = false;
            for stage in &stages {
                data = match stage[..] {
                    ["curl", ..] => self.curl(&stage[1..]).await,
                    ["sed", "-n", script] => sed(script, &data),
                    ["sed", "-n", script, file] => {
                        from_sim = file == "sim.log";
                        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
                        sed(script, &text)
                    }
                    ["tail", "-1"] => data.lines().last().map(|l| format!("{l}\n")).unwrap_or_default(),
                    ["tee", file] => {
                        std::fs::write(self.dir.join(file), &data).expect("write");
                        data
                    }
                    ["grep", "-q", pat] => if data.contains(pat) { "true".into() } else { String::new() },
                    _ => panic!("pipeline stage not understood by the test: {stage:?}"),
                };
            }
            if !(wait_for_output && from_sim && data.is_empty()) {
                return data;
            }
            let mut lines = self.sim.as_ref().expect("sim-pbx started").lines.clone();
            let seen = lines.borrow_and_update().len();
            if tokio::time::timeout_at(deadline, lines.wait_for(|l| l.len() > seen)).await.is_err() {
                panic!("nothing in sim.log matches {stages:?}:\n{}", lines.borrow().join("\n"));
            }
        }
    }

    /// `until COND; do sleep N; done`: COND again until it holds (or a failed state shows).
    async fn until(&mut self, cond: &str) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let toks = tokens(cond, &self.vars);
            let curl: Vec<Tok> = toks.split(|t| *t == Tok::Op("|")).next().map(<[Tok]>::to_vec).unwrap_or_default();
            let body = self.pipeline(&curl, false).await;
            if !self.pipeline(&toks, false).await.is_empty() {
                return;
            }
            assert!(!body.contains("\"state\":\"failed\""), "until {cond}: {body}");
            assert!(tokio::time::Instant::now() < deadline, "until {cond}: still {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// curl with -s, -N, -X, -H, -d and a `localhost:8080` URL; the answer must be 2xx.
    async fn curl(&self, args: &[&str]) -> String {
        let (mut method, mut headers, mut body, mut url) = (None, Vec::new(), None, None);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match *a {
                "-s" | "-N" | "-sN" => {}
                "-X" => method = it.next().copied(),
                "-H" => headers.push(it.next().and_then(|h| h.split_once(": ")).expect("-H 'K: V'")),
                "-d" => body = it.next().map(|b| b.as_bytes().to_vec()),
                u if !u.starts_with('-') => url = Some(u),
                other => panic!("curl option not understood by the test: {other}"),
            }
        }
        let url = url.expect("a URL");
        let path = url.strip_prefix("localhost:8080").unwrap_or_else(|| panic!("the README's API is localhost:8080, not {url}"));
        let method = method.unwrap_or(if body.is_some() { "POST" } else { "GET" });
        let (status, answer) = self.http().raw(method, path, &headers, body).await.unwrap_or_else(|e| panic!("curl {args:?}: {e}"));
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!((200..300).contains(&status), "curl {args:?}: {status} {answer}");
        answer
    }

    /// One request of the README's `ivr` function: the JSON body it builds, signed.
    async fn ivr(&mut self, digits: Option<&str>) {
        let to = self.ivr_to.clone().expect("ivr() defined before use");
        let digits = digits.filter(|d| !d.is_empty()).map(|d| format!(",\"digits\":\"{d}\"")).unwrap_or_default();
        let body = format!("{{\"call\":\"{}\",\"from\":\"{}\",\"to\":\"{to}\"{digits}}}", self.vars["CALL"], self.vars["FROM"]);
        let (status, reply) = post_webhook(self.http(), &self.vars["IVR_SECRET"], body.clone().into_bytes()).await.expect("webhook");
        assert_eq!(status, 200, "ivr {body}: {reply}");
        self.last_ivr = Some(reply);
    }

    async fn typed_into_sim(&mut self, line: &str) {
        let sim = self.sim.as_mut().expect("sim-pbx started");
        let seen = sim.lines.borrow_and_update().len();
        sim.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("sim-pbx reads its stdin");
        sim.stdin.flush().await.expect("flush");
        // What terminal 1 shows in answer: the simulator has acted on it.
        let shown = tokio::time::timeout(STEP, sim.lines.wait_for(|l| l[seen..].iter().any(|l| l.contains("hung up by the IVR")))).await.is_ok();
        assert!(shown, "sim-pbx did not act on {line:?}: {:?}", sim.lines.borrow());
    }

    fn write_config(&self, file: &str, text: &str) {
        assert!(text.contains(README_SIM) && text.contains(README_API), "the configuration uses the README's addresses: {text}");
        let sim = self.sim_addr.as_deref().expect("sim-pbx started before the configuration is written");
        std::fs::write(self.dir.join(file), text.replace(README_SIM, sim).replace(README_API, "127.0.0.1:0")).expect("write the configuration");
    }

    async fn cstagate(&mut self, toks: &[Tok]) {
        let bin = env!("CARGO_BIN_EXE_cstagate");
        match toks {
            [Tok::Word(_), Tok::Word(sub), args @ .., Tok::Op("|"), Tok::Word(tee), Tok::Word(log)] if sub == "sim-pbx" && tee == "tee" => {
                let mut args: Vec<String> = words(args).into_iter().map(str::to_owned).collect();
                let listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
                assert_eq!(args[listen], README_SIM);
                args[listen] = "127.0.0.1:0".into();
                let mut child = Command::new(bin).arg("sim-pbx").args(&args).current_dir(&self.dir).stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("cstagate sim-pbx");
                let stdin = child.stdin.take().expect("stdin");
                let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
                let (tx, lines) = watch::channel(Vec::new());
                let log = self.dir.join(log);
                tokio::spawn(async move {
                    let mut file = std::fs::File::create(&log).expect("sim.log");
                    while let Ok(Some(l)) = out.next_line().await {
                        use std::io::Write;
                        let _ = writeln!(file, "{l}");
                        tx.send_modify(|v| v.push(l));
                    }
                });
                let mut sim = Sim { _child: child, stdin, lines };
                let first = tokio::time::timeout(STEP, sim.lines.wait_for(|l| !l.is_empty())).await.expect("sim-pbx starts").expect("sim-pbx output")[0].clone();
                self.sim_addr = Some(first.strip_prefix("simulated PBX listening on ").unwrap_or_else(|| panic!("{first}")).to_owned());
                self.sim = Some(sim);
            }
            [Tok::Word(_), Tok::Word(sub), args @ .., Tok::Op("&")] if sub == "run" => {
                let mut child = Command::new(bin).arg("run").args(words(args)).current_dir(&self.dir).envs(&self.vars).stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("cstagate run");
                let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
                let first = tokio::time::timeout(STEP, out.next_line()).await.expect("the gateway starts").ok().flatten().expect("the gateway starts (see its stderr)");
                let addr = first.strip_prefix("cstagate gateway API on ").unwrap_or_else(|| panic!("{first}"));
                self.http = Some(Http::new(addr));
                tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
                self.gateway = Some(child);
            }
            _ => panic!("cstagate command not understood by the test: {toks:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_binds_a_phone_with_the_real_binary() {
    let dir = std::env::temp_dir().join(format!("cstagate-walkthrough-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let mut w = Walk { dir: dir.clone(), vars: HashMap::new(), sim: None, sim_addr: None, gateway: None, http: None, ivr_to: None, last_ivr: None };
    for (lang, text) in walkthrough() {
        w.block(&lang, &text).await;
    }

    // The IVR said goodbye and hung up; the binding is there, for alice; the CTI call that
    // followed was placed (the proof call was over) and cleared.
    let reply = w.last_ivr.clone().expect("the walkthrough plays the IVR");
    assert_eq!(reply["hangup"], true, "{reply}");
    let token = w.vars["ACME_TOKEN"].clone();
    let (s, b) = w.http().json("GET", "/v1/bindings/paris/2005", &token, None).await.expect("GET binding");
    assert_eq!((s, b["account"].as_str()), (200, Some("alice")), "{b}");
    assert!(w.vars.get("CALL").is_some_and(|c| !c.is_empty()));
    let (s, audit) = w.http().json("GET", "/v1/audit?extension=2005", &w.vars["ADMIN_TOKEN"], None).await.expect("audit");
    assert_eq!(s, 200, "{audit}");
    let steps: Vec<&str> = audit["records"].as_array().map(|r| r.iter().filter_map(|r| r["step"].as_str()).collect()).unwrap_or_default();
    assert!(steps.contains(&"bound"), "{steps:?}");
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}
