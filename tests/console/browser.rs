//! The browser the console tests drive: chromedriver started as a child process on a free
//! loopback port (killed on drop), and a headless Chromium session with a fresh profile; plus
//! what every console test needs (the gateway with the simulated PBX and IVR, a binding made
//! the real way, screenshots, waits on the page's own state).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cstagate::sim::{Behaviour, SimConfig, SimPbx};
use cstagate::testkit::{ivr_request, local_secrets, Http, Ivr, LocalGateway, LocalOptions};
use fantoccini::{Client, ClientBuilder, Locator};

use crate::common;
use serde_json::{json, Value};

/// The bound of every wait: generous, for a busy 2-core machine (a failure only, never a pace).
pub const WAIT: Duration = Duration::from_secs(60);

/// Whether Chromium and chromedriver are here; a notice and `false` when not (unless CI
/// requires them).
pub fn chromium_present() -> bool {
    common::require_external("Chromium", "CSTAGATE_REQUIRE_CHROMIUM", &["chromium", "--version"], "apt-get install chromium chromium-driver")
        && common::require_external("chromedriver", "CSTAGATE_REQUIRE_CHROMIUM", &["chromedriver", "--version"], "apt-get install chromium chromium-driver")
}

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session over its own chromedriver, with a profile directory of its own
/// (removed on drop).
pub struct Browser {
    pub client: Client,
    _driver: Driver,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A port free on loopback now (the kernel's pick; chromedriver binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Browser {
    /// chromedriver on a free port, once it says it started, and a Chromium session at
    /// 1280x900. The flags keep Chromium off the (closed) network: no background requests,
    /// updates, sync or QUIC.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut child = Command::new("chromedriver").arg(format!("--port={port}")).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("chromedriver starts");
        let out = child.stdout.take().expect("chromedriver's output");
        let driver = Driver(child);
        // Wait for its own word that it listens: a thread reads its output (and keeps reading,
        // so that a full pipe never blocks it).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("chromedriver says it started");
        let profile = std::env::temp_dir().join(format!("cstagate-chromium-{}-{}", std::process::id(), port));
        let _ = std::fs::remove_dir_all(&profile);
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ];
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium_binary(), "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(WAIT, ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")))
            .await
            .expect("a Chromium session in time")
            .expect("a Chromium session");
        Browser { client, _driver: driver, profile }
    }

    /// Wait for the element `css` to be on the page.
    pub async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("waiting for `{css}`: {e}; the page's error region says: {:?}", self.text("#error").await),
        }
    }

    /// Wait for an element matching `css` whose text contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> fantoccini::elements::Element {
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(all) = self.client.find_all(Locator::Css(css)).await {
                for e in all {
                    if e.text().await.is_ok_and(|t| t.contains(text)) {
                        return e;
                    }
                }
            }
            assert!(t0.elapsed() < WAIT, "waiting for `{css}` to say {text:?}; it says {:?}; the error region: {:?}", self.text(css).await, self.text("#error").await);
            // The page's own polling period is a second: look again at its pace.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text of the first element matching `css`, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.ok(),
            Err(_) => None,
        }
    }

    pub async fn click(&self, css: &str) {
        self.wait_css(css).await.click().await.unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    /// Type `value` into the input `css` (emptied first).
    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.wait_css(css).await;
        e.clear().await.unwrap_or_else(|e| panic!("clear `{css}`: {e}"));
        e.send_keys(value).await.unwrap_or_else(|e| panic!("type into `{css}`: {e}"));
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Save the page as `target/console-screenshots/<name>.png`, after checking that nothing
    /// on it reads `null`, `undefined`, `NaN` or `[object …]` (a value the page failed to put
    /// in words).
    pub async fn screenshot(&self, name: &str) {
        let slip = self.js(r"return (document.body.innerText.match(/\b(null|undefined|NaN)\b|\[object /) || [null])[0];").await;
        assert_eq!(slip, Value::Null, "{name}: the page shows a raw value: {:?}", self.text("body").await);
        // Keyboard and screen-reader use: every visible form control has a label, every
        // visible button a name.
        let unlabelled = self.js("return [...document.querySelectorAll('input, select, button')].filter(e => e.offsetParent !== null && (e.tagName === 'BUTTON' ? !e.textContent.trim() : !(e.labels && e.labels.length))).map(e => e.id || e.outerHTML);").await;
        assert_eq!(unlabelled, Value::Array(vec![]), "{name}: controls without a label or name");
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot written");
    }

    /// Log in with `token` on the login page (already open).
    pub async fn log_in(&self, token: &str) {
        self.fill("#token", token).await;
        self.click("#login-button").await;
    }

    /// On a freshly loaded login page, two Tabs from the top (the skip link first) reach the
    /// token field.
    pub async fn tab_to_token(&self) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        use fantoccini::key::Key;
        self.wait_css("#login:not([hidden]) #token").await;
        let tab = char::from(Key::Tab);
        let keys = KeyActions::new("keyboard".into()).then(KeyAction::Down { value: tab }).then(KeyAction::Up { value: tab }).then(KeyAction::Down { value: tab }).then(KeyAction::Up { value: tab });
        self.client.perform_actions(keys).await.expect("Tab, Tab");
        assert_eq!(self.js("return document.activeElement.id;").await, Value::from("token"), "two Tabs from the top reach the token field");
    }

    /// Log in from the keyboard after a refused token: the focus is still in the field, its
    /// text selected, so typing replaces it; Enter submits.
    pub async fn log_in_again_by_keyboard(&self, token: &str) {
        use fantoccini::key::Key;
        assert_eq!(self.js("const e = document.activeElement; return [e.id, e.selectionStart ?? null, e.value !== undefined && e.selectionEnd === e.value.length];").await, serde_json::json!(["token", 0, true]), "after a refusal the field keeps the focus, its text selected");
        self.client.active_element().await.expect("the focused field").send_keys(&format!("{token}{}", char::from(Key::Enter))).await.expect("type the token, Enter");
    }
}

/// Debian's binary (`chromium`), as found on the PATH.
fn chromium_binary() -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("chromium");
        if p.is_file() {
            return p.display().to_string();
        }
    }
    "/usr/bin/chromium".into()
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| common::root().join("target"), PathBuf::from);
    target.join("console-screenshots")
}

/// The real gateway with the simulated PBX (extensions 2005 and 2006, which answer at once;
/// 2005 is "Alice Martin" in the directory) and the simulated IVR platform.
pub struct Site {
    /// Kept for its life: dropping it stops the simulated PBX.
    _sim: SimPbx,
    pub ivr: Ivr,
    pub gw: LocalGateway,
    pub base: String,
}

impl Site {
    pub async fn start() -> Site {
        let mut sim = SimPbx::start(SimConfig::phase3(&["2005", "2006"]), "127.0.0.1:0").await.expect("the simulated PBX");
        for e in &mut sim.config().extensions {
            e.behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
        }
        let ivr = Ivr::of(&mut sim).expect("the simulated IVR");
        let options = LocalOptions { pbx: "extensions = [\"2005-2006\"]\nnames = { \"2005\" = \"Alice Martin\" }\n".into(), ..Default::default() };
        let gw = LocalGateway::start(&sim, options, local_secrets()).await.expect("the gateway");
        let base = format!("http://{}", gw.running.addr);
        Site { _sim: sim, ivr, gw, base }
    }

    pub fn http(&self) -> &Http {
        &self.gw.http
    }

    /// `account` (of acme) asks for `extension`: the association's id and its code.
    pub async fn ask(&self, account: &str, extension: &str) -> (String, String) {
        let (s, v) = self.http().json("POST", "/v1/associations", &self.gw.tokens.tenant, Some(json!({ "account": account, "extension": extension }))).await.expect("POST /v1/associations");
        assert_eq!(s, 201, "{v}");
        (v["id"].as_str().expect("an id").to_owned(), v["code"].as_str().expect("a code").to_owned())
    }

    /// The proof call reaches the IVR; the simulated platform plays the dialogue: the
    /// context, 1 (I asked for this), then `digits` (the code, or a wrong one). The call and
    /// the answer to the last request.
    pub async fn answer_proof_call(&mut self, digits: &str) -> (String, Value) {
        self.play_proof_call(&["1", digits]).await
    }

    /// The proof call reaches the IVR; the platform sends the context, then `keys` one
    /// request each. The call and the answer to the last request.
    pub async fn play_proof_call(&mut self, keys: &[&str]) -> (String, Value) {
        let call = tokio::time::timeout(WAIT, self.ivr.next_call()).await.expect("the proof call reaches the IVR in time").expect("the simulator runs");
        let secret = self.gw.tokens.ivr.clone();
        let mut last = Value::Null;
        let steps = [None, Some(call.context.as_str())].into_iter().chain(keys.iter().map(|k| Some(*k)));
        for d in steps {
            let (s, v) = ivr_request(self.http(), &secret, &call.call, &call.from, d).await.expect("the webhook answers");
            assert_eq!(s, 200, "{v}");
            last = v;
        }
        (call.call, last)
    }

    /// The association as the API shows it to acme.
    pub async fn association(&self, id: &str) -> Value {
        let (s, v) = self.http().json("GET", &format!("/v1/associations/{id}"), &self.gw.tokens.tenant, None).await.expect("GET the association");
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Wait (on the API) until the association is in `state`.
    pub async fn until_state(&self, id: &str, state: &str) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let v = self.association(id).await;
            if v["state"] == state {
                return v;
            }
            assert!(t0.elapsed() < WAIT, "association {id} never reached {state}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Bind `extension` to `account` the real way (the code keyed on the proof call).
    pub async fn bind(&mut self, account: &str, extension: &str) -> String {
        let (id, code) = self.ask(account, extension).await;
        let (call, last) = self.answer_proof_call(&code).await;
        assert!(last["say"].as_str().unwrap_or_default().contains("now linked"), "{last}");
        self.ivr.line.hangup(&call);
        self.until_state(&id, "bound").await;
        id
    }

    /// The raw response to `GET path`: its status line and headers (lower-case names), over a
    /// plain socket so that every header is seen as the gateway sent it.
    pub async fn raw_get(&self, path: &str) -> (String, Vec<(String, String)>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.gw.running.addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("send");
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("an answer in time").expect("read");
        let text = String::from_utf8_lossy(&buf);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_owned();
        let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
        (status, headers)
    }
}
