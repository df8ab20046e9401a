//! `cstagate run` as its own process, stopped by SIGTERM while a request is in progress: no new
//! connection is accepted (API and FastAGI), the request in progress still gets its answer, the
//! PBX link is released (the simulated PBX receives an RLRQ), the log says it stopped and the
//! process exits 0.

use std::process::Stdio;
use std::time::Duration;

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{Http, Tokens, IVR_NUMBER};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

/// Lines of a child's output, as they come.
pub(crate) fn lines(out: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line containing `needle` (the lines before it are kept in `seen`).
pub(crate) async fn line_with(rx: &mut mpsc::UnboundedReceiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    timeout(LIMIT, async {
        while let Some(l) = rx.recv().await {
            seen.push(l.clone());
            if l.contains(needle) {
                return l;
            }
        }
        panic!("the output ended without {needle:?}: {seen:#?}")
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in time: {seen:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_lets_the_request_in_progress_finish_and_releases_the_link() {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.ivr_number = Some(IVR_NUMBER.into());
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let dir = std::env::temp_dir().join(format!("cstagate-sigterm-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\nadmin_token_env = \"ADMIN_TOKEN\"\nivr_secret_env = \"IVR_SECRET\"\nfastagi_listen = \"127.0.0.1:0\"\nshutdown_grace = \"60s\"\n\n[[tenant]]\nid = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\n[[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"2005\"]\nivr_number = \"{IVR_NUMBER}\"\nreconnect_min = \"20ms\"\n",
            dir.join("gateway.db").display(),
            sim.addr()
        ),
    )
    .unwrap();
    let tokens = Tokens::random();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cstagate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("ACME_TOKEN", &tokens.tenant)
        .env("ADMIN_TOKEN", &tokens.admin)
        .env("IVR_SECRET", &tokens.ivr)
        .env("RUST_LOG", "cstagate=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = lines(child.stdout.take().unwrap());
    let mut log = lines(child.stderr.take().unwrap());
    let (mut seen_out, mut seen_log) = (Vec::new(), Vec::new());
    let api = line_with(&mut out, "cstagate gateway API on http://", &mut seen_out).await.rsplit("http://").next().unwrap().to_owned();
    let agi = line_with(&mut out, "cstagate FastAGI on ", &mut seen_out).await.rsplit(' ').next().unwrap().to_owned();
    // The PBX link is up (each poll a real round trip to the other process).
    let http = Http::new(&format!("http://{api}"));
    timeout(LIMIT, async {
        loop {
            if let Ok((200, h)) = http.send("GET", "/healthz", &[], None).await {
                if h["links"]["paris"]["state"] == "up" {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the link comes up");

    // A webhook request in progress: its headers are sent and the handler is reading its body
    // (the server said `100 Continue`), the body is not sent yet.
    let body = br#"{"call":"c1","from":"+33144002005","to":"0800100200"}"#.to_vec();
    let [(tk, tv), (sk, sv)] = cstagate::webhook::webhook_headers(&tokens.ivr, &body);
    let mut held = TcpStream::connect(&api).await.unwrap();
    let head = format!("POST /v1/ivr/webhook HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nexpect: 100-continue\r\n{tk}: {tv}\r\n{sk}: {sv}\r\ncontent-length: {}\r\n\r\n", body.len());
    held.write_all(head.as_bytes()).await.unwrap();
    let mut cont = vec![0u8; "HTTP/1.1 100 Continue\r\n\r\n".len()];
    timeout(LIMIT, held.read_exact(&mut cont)).await.expect("100 Continue").unwrap();
    assert_eq!(String::from_utf8_lossy(&cont), "HTTP/1.1 100 Continue\r\n\r\n");

    // SIGTERM, as a service manager sends it.
    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    line_with(&mut log, "stop requested", &mut seen_log).await;
    line_with(&mut log, "stopped accepting connections", &mut seen_log).await;
    // No new connection, on either server.
    for addr in [&api, &agi] {
        let e = TcpStream::connect(addr.as_str()).await.expect_err("the listener is closed");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}: {e}");
    }
    // The request in progress is answered, then its connection closes.
    held.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    timeout(LIMIT, held.read_to_end(&mut answer)).await.expect("the answer, then the close").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"say\""), "{answer}");

    // The gateway stops, then the link is released, and the process exits 0.
    let status = timeout(LIMIT, child.wait()).await.expect("the process exits").unwrap();
    assert!(status.success(), "{status}");
    let stats = timeout(LIMIT, sim.wait_stats(|s| s.releases >= 1)).await.expect("the PBX saw the RLRQ");
    assert_eq!(stats.releases, 1);
    // The rest of the log (it ends with the process).
    let _ = timeout(LIMIT, async {
        while let Some(l) = log.recv().await {
            seen_log.push(l);
        }
    })
    .await;
    let order: Vec<usize> = ["gateway stopped", "PBX links released; stopped"].iter().map(|n| seen_log.iter().position(|l| l.contains(n)).unwrap_or_else(|| panic!("{n:?} not logged: {seen_log:#?}"))).collect();
    assert!(order[0] < order[1], "the gateway stops before the links are released: {seen_log:#?}");
    line_with(&mut out, "cstagate gateway stopped", &mut seen_out).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request still in progress when the grace period is over is cut off: its connection is
/// closed without an answer, and the shutdown goes on (gateway stopped, link released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_open_after_the_grace_period_is_closed_and_the_shutdown_completes() {
    use cstagate::testkit::{local_secrets, LocalGateway, LocalOptions};
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let options = LocalOptions { gateway: "shutdown_grace = \"100ms\"\n".into(), pbx: "extensions = [\"2005\"]\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let addr = gw.running.addr;
    // Headers sent, the body never comes.
    let mut held = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /v1/associations HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\nexpect: 100-continue\r\ncontent-length: 50\r\n\r\n", gw.tokens.tenant);
    held.write_all(head.as_bytes()).await.unwrap();
    let mut cont = vec![0u8; "HTTP/1.1 100 Continue\r\n\r\n".len()];
    timeout(LIMIT, held.read_exact(&mut cont)).await.expect("100 Continue").unwrap();
    timeout(LIMIT, gw.running.shutdown()).await.expect("the shutdown completes");
    let mut rest = Vec::new();
    let read = timeout(LIMIT, held.read_to_end(&mut rest)).await.expect("the connection is closed");
    assert!(read.is_err() || rest.is_empty(), "closed without an answer: {}", String::from_utf8_lossy(&rest));
    let e = TcpStream::connect(addr).await.expect_err("the listener is closed");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert_eq!(sim.stats().releases, 1, "the link was released before shutdown returned");
    assert_eq!(sim.stats().requests.get("MakeCall"), None, "the unfinished request created nothing");
}
