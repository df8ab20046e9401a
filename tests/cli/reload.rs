//! `cstagate run` as its own process, reconfigured by SIGHUP: PBX links added, removed (an
//! association in flight on it fails `pbx_removed` and its call is cleared) and restarted, the
//! untouched link keeping its very TCP connection (the simulated PBX accepted one connection in
//! all and received no release), a policy change seen by a new association, tenants added and
//! removed; and a new file that does not validate, refused while the old configuration runs on,
//! logged and counted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cstagate::sim::{Behaviour, SimConfig, SimPbx};
use cstagate::testkit::{Http, Tokens, IVR_NUMBER};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::shutdown::{line_with, lines};

const LIMIT: Duration = Duration::from_secs(60);

/// A `cstagate run` child, its API, its stdout and stderr lines.
pub(crate) struct Gateway {
    pub(crate) child: tokio::process::Child,
    pub(crate) http: Http,
    pub(crate) log: mpsc::UnboundedReceiver<String>,
    pub(crate) seen_log: Vec<String>,
}

impl Gateway {
    /// Start `cstagate run` on `config` with `env`, and wait for its API address.
    pub(crate) async fn start(config: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cstagate"));
        child.args(["run", "--config"]).arg(config).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        for (k, v) in env {
            child.env(k, v);
        }
        let mut child = child.spawn().unwrap();
        let mut out = lines(child.stdout.take().unwrap());
        let log = lines(child.stderr.take().unwrap());
        let api = line_with(&mut out, "cstagate gateway API on http://", &mut Vec::new()).await.rsplit("http://").next().unwrap().to_owned();
        Gateway { child, http: Http::new(&format!("http://{api}")), log, seen_log: Vec::new() }
    }

    /// Send SIGHUP (what `systemctl reload` does).
    pub(crate) async fn hangup(&self) {
        let pid = self.child.id().expect("running").to_string();
        assert!(tokio::process::Command::new("kill").args(["-HUP", &pid]).status().await.unwrap().success());
    }

    /// The next log line holding `needle`.
    pub(crate) async fn logged(&mut self, needle: &str) -> String {
        line_with(&mut self.log, needle, &mut self.seen_log).await
    }

    /// Wait until `/healthz` shows each of `up` up (each poll a round trip to the other process).
    pub(crate) async fn links_up(&self, up: &[&str]) -> Value {
        timeout(LIMIT, async {
            loop {
                if let Ok((200, h)) = self.http.send("GET", "/healthz", &[], None).await {
                    if up.iter().all(|id| h["links"][id]["state"] == "up") {
                        return h;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("links {up:?} up"))
    }
}

fn pbx(id: &str, sim: &SimPbx, tenant: &str, extensions: &str, extra: &str) -> String {
    format!("[[pbx]]\nid = \"{id}\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"{tenant}\"\nextensions = [{extensions}]\nivr_number = \"{IVR_NUMBER}\"\nreconnect_min = \"20ms\"\n{extra}\n", sim.addr())
}

fn gateway_table(dir: &Path) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\nadmin_token_env = \"ADMIN_TOKEN\"\nivr_secret_env = \"IVR_SECRET\"\n\n", dir.join("gateway.db").display())
}

fn tenant_table(id: &str, var: &str) -> String {
    format!("[[tenant]]\nid = \"{id}\"\ntoken_env = \"{var}\"\n\n")
}

async fn sim(extensions: &[&str]) -> SimPbx {
    let mut cfg = SimConfig::phase3(extensions);
    cfg.ivr_number = Some(IVR_NUMBER.into());
    SimPbx::start(cfg, "127.0.0.1:0").await.unwrap()
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-{what}-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_restarts_links_and_swaps_policies_and_tenants() {
    // paris: untouched link (its policy changes); lyon: removed with an association ringing;
    // nice: its link settings change; berlin: added.
    let paris = sim(&["2005", "2100"]).await;
    let mut lyon_cfg = SimConfig::phase3(&["3005"]);
    lyon_cfg.ivr_number = Some(IVR_NUMBER.into());
    lyon_cfg.extensions[0].behaviour = Behaviour::NeverAnswer;
    let lyon = SimPbx::start(lyon_cfg, "127.0.0.1:0").await.unwrap();
    let nice = sim(&["4005"]).await;
    let berlin = sim(&["5005"]).await;
    let dir = temp_dir("reload");
    let config = dir.join("gateway.toml");
    let before = [
        gateway_table(&dir),
        tenant_table("acme", "ACME_TOKEN"),
        tenant_table("initech", "INITECH_TOKEN"),
        pbx("paris", &paris, "acme", "\"2005\"", ""),
        pbx("lyon", &lyon, "acme", "\"3005\"", ""),
        pbx("nice", &nice, "acme", "\"4005\"", "keepalive = \"30s\""),
    ]
    .concat();
    std::fs::write(&config, &before).unwrap();
    let tokens = Tokens::random();
    let (initech, globex) = (cstagate::random::id(), cstagate::random::id());
    let env = [("ACME_TOKEN", tokens.tenant.as_str()), ("ADMIN_TOKEN", &tokens.admin), ("IVR_SECRET", &tokens.ivr), ("INITECH_TOKEN", &initech), ("GLOBEX_TOKEN", &globex), ("RUST_LOG", "cstagate=info")];
    let mut gw = Gateway::start(&config, &env).await;
    gw.links_up(&["paris", "lyon", "nice"]).await;
    let tenant = tokens.tenant.as_str();

    // Before: 2100 is not in paris's directory; an association rings on lyon.
    let (s, v) = gw.http.json("POST", "/v1/associations", tenant, Some(json!({ "account": "bob", "extension": "2100" }))).await.unwrap();
    assert_eq!((s, v["code"].as_str()), (404, Some("unknown_extension")), "{v}");
    let (s, v) = gw.http.json("POST", "/v1/associations", tenant, Some(json!({ "account": "alice", "extension": "3005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let ringing = v["id"].as_str().unwrap().to_owned();
    wait_state(&gw.http, tenant, &ringing, |v| v["state"] == "ringing").await;
    assert_eq!(lyon.stats().live_calls, 1, "the proof call rings on lyon");
    let (s, _) = gw.http.json("GET", "/v1/bindings?account=x", &initech, None).await.unwrap();
    assert_eq!(s, 200, "initech's token works before the reload");

    // The new file: lyon and initech gone, globex and berlin new, nice's keep-alive changed,
    // paris's directory larger (its link keys unchanged).
    let after = [
        gateway_table(&dir),
        tenant_table("acme", "ACME_TOKEN"),
        tenant_table("globex", "GLOBEX_TOKEN"),
        pbx("paris", &paris, "acme", "\"2005\", \"2100\"", ""),
        pbx("nice", &nice, "acme", "\"4005\"", "keepalive = \"20s\""),
        pbx("berlin", &berlin, "globex", "\"5005\"", ""),
    ]
    .concat();
    std::fs::write(&config, &after).unwrap();
    gw.hangup().await;
    let done = gw.logged("configuration reloaded").await;
    assert!(done.contains("berlin") && done.contains("lyon") && done.contains("nice"), "{done}");
    let health = gw.links_up(&["paris", "nice", "berlin"]).await;
    assert!(health["links"].get("lyon").is_none(), "lyon is gone: {health}");

    // Removed: the association in flight failed pbx_removed, its call was cleared through the
    // old link, which was then released.
    let v = wait_state(&gw.http, tenant, &ringing, |v| v["state"] == "failed").await;
    assert_eq!((v["reason"].as_str(), v["retryable"].as_bool()), (Some("pbx_removed"), Some(false)), "{v}");
    timeout(LIMIT, lyon.wait_stats(|s| s.live_calls == 0 && s.releases == 1)).await.expect("lyon's call cleared and its link released");
    // Restarted: nice's old link was released and a new connection made.
    let stats = timeout(LIMIT, nice.wait_stats(|s| s.releases == 1 && s.connections == 2)).await.expect("nice's link restarted");
    assert_eq!((stats.connections, stats.releases), (2, 1));
    // Untouched: paris kept its one connection (the PBX accepted no other and saw no release).
    let stats = paris.stats();
    assert_eq!((stats.connections, stats.releases), (1, 0), "paris's link kept its TCP connection");
    assert_eq!(berlin.stats().connections, 1);

    // The new policy for new associations: 2100 is in the directory now.
    let (s, v) = gw.http.json("POST", "/v1/associations", tenant, Some(json!({ "account": "bob", "extension": "2100" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    // Tenants: initech's token is refused, globex's works, on its own PBX.
    let (s, _) = gw.http.json("GET", "/v1/bindings?account=x", &initech, None).await.unwrap();
    assert_eq!(s, 401, "initech was removed");
    let (s, v) = gw.http.json("POST", "/v1/associations", &globex, Some(json!({ "account": "carol", "extension": "5005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    assert_eq!(crate::common::metric(&gw.http, "cstagate_config_reloads_total").await, 1);
    assert_eq!(crate::common::metric(&gw.http, "cstagate_config_reload_failures_total").await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_does_not_validate_is_refused_on_sighup_and_the_old_one_runs_on() {
    let paris = sim(&["2005"]).await;
    let dir = temp_dir("reload-bad");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, format!("{}{}{}", gateway_table(&dir), tenant_table("acme", "ACME_TOKEN"), pbx("paris", &paris, "acme", "\"2005\"", ""))).unwrap();
    let tokens = Tokens::random();
    let env = [("ACME_TOKEN", tokens.tenant.as_str()), ("ADMIN_TOKEN", &tokens.admin), ("IVR_SECRET", &tokens.ivr), ("RUST_LOG", "cstagate=info")];
    let mut gw = Gateway::start(&config, &env).await;
    gw.links_up(&["paris"]).await;
    // A reference to a tenant nobody defines, and paris's link settings changed: nothing of it
    // may be applied.
    std::fs::write(&config, format!("{}{}{}", gateway_table(&dir), tenant_table("acme", "ACME_TOKEN"), pbx("paris", &paris, "acme-corp", "\"2005\"", "keepalive = \"5s\""))).unwrap();
    gw.hangup().await;
    let refused = gw.logged("configuration reload failed").await;
    assert!(refused.contains("acme-corp") && refused.contains("tenant"), "the error names the key: {refused}");
    assert_eq!(crate::common::metric(&gw.http, "cstagate_config_reload_failures_total").await, 1);
    assert_eq!(crate::common::metric(&gw.http, "cstagate_config_reloads_total").await, 0);
    // The old configuration runs on: same connection, the tenant's requests served.
    gw.links_up(&["paris"]).await;
    assert_eq!((paris.stats().connections, paris.stats().releases), (1, 0));
    let (s, v) = gw.http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Poll the association until `done` holds (each poll a round trip to the gateway).
async fn wait_state(http: &Http, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    timeout(LIMIT, async {
        loop {
            let (s, v) = http.json("GET", &format!("/v1/associations/{id}"), token, None).await.unwrap();
            assert_eq!(s, 200, "{v}");
            if done(&v) {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("association {id} did not reach the state in time"))
}
