//! Real `cstagate run` processes with `[cluster]` on the private PostgreSQL, and simulated PBXs
//! in the test process: the PBXs are spread evenly, each held by exactly one instance; a
//! SIGKILLed instance's PBXs are re-owned by the others with a higher epoch and their links come
//! back; and the split-brain oracle — each simulated PBX's high-water mark of application
//! associations open at once — never exceeds 1. Skipped with a notice where PostgreSQL is not
//! installed (mandatory with `CSTAGATE_REQUIRE_POSTGRES=1`, as in CI).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::postgres::{self as pg, PgServer};
use cstagate::testkit::{post_webhook, Http, Tokens};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

/// The bound of every wait: a failure bound, never a synchronisation.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);
pub(crate) const TTL: &str = "3s";

pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) child: tokio::process::Child,
    /// The API's `host:port`.
    pub(crate) api: String,
    /// Its log lines (stderr), as they come.
    pub(crate) log: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Its FastAGI server's `host:port`.
    pub(crate) agi: String,
}

/// The cluster's internal token (`[cluster] internal_token_env`), the same for every instance.
pub(crate) const INTERNAL_TOKEN: &str = "internal-token-of-the-test-cluster";

/// Start `cstagate run` as instance `id` of the cluster on `url`, serving `sims`.
pub(crate) async fn instance(id: &str, url: &str, sims: &[SimPbx], dir: &std::path::Path, tokens: &Tokens) -> Instance {
    let mut pbxs = String::new();
    for (i, sim) in sims.iter().enumerate() {
        pbxs += &format!("\n[[pbx]]\nid = \"pbx{i}\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"{}\"]\nivr_number = \"08001002{i:02}\"\nreconnect_min = \"20ms\"\n", sim.addr(), extension(i));
    }
    instance_with(id, url, &pbxs, dir, tokens).await
}

/// Start `cstagate run` as instance `id` of the cluster on `url`, with these `[[pbx]]` tables
/// (tenant `acme`).
pub(crate) async fn instance_with(id: &str, url: &str, pbxs: &str, dir: &std::path::Path, tokens: &Tokens) -> Instance {
    start_instance(id, url, pbxs, TTL, dir, tokens).await
}

/// Start `cstagate run` as instance `id` of the cluster on `url` with `lease_ttl = ttl`, serving
/// the PBXs of `pbxs` (its `[[pbx]]` tables, tenant `acme`); once its API listens.
pub(crate) async fn start_instance(id: &str, url: &str, pbxs: &str, ttl: &str, dir: &std::path::Path, tokens: &Tokens) -> Instance {
    start_instance_tls(id, url, pbxs, ttl, dir, tokens, None).await
}

/// The TLS of an instance's API: its `[gateway]` `tls_cert`/`tls_key` lines, and the CA file the
/// other instances trust for it (`[cluster] advertise_ca`), or `None` to trust the public roots
/// only.
pub(crate) struct InstanceTls {
    pub(crate) gateway_lines: String,
    pub(crate) advertise_ca: Option<std::path::PathBuf>,
}

/// As [`start_instance`], its API over HTTPS with `tls` (advertised as `https://`).
pub(crate) async fn start_instance_tls(id: &str, url: &str, pbxs: &str, ttl: &str, dir: &std::path::Path, tokens: &Tokens, tls: Option<&InstanceTls>) -> Instance {
    let (scheme, tls_lines, ca_line) = match tls {
        None => ("http", String::new(), String::new()),
        Some(t) => ("https", t.gateway_lines.clone(), t.advertise_ca.as_ref().map(|p| format!("advertise_ca = \"{}\"\n", p.display())).unwrap_or_default()),
    };
    let password = pg::shared().map(|s| s.password().to_owned()).unwrap_or_default();
    // It listens on ports picked free just before, the API's advertised to the others (requests
    // for its PBXs are forwarded there). Another test's process may take a port in between:
    // then `run` exits 6 (cannot start) and the instance starts again on new ports.
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
    for attempt in 1..=3 {
        let (port, agi) = (free(), free());
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{url}\"\ndatabase_password_env = \"CSTAGATE_DB_PASSWORD\"\nadmin_token_env = \"ADMIN_TOKEN\"\nivr_secret_env = \"IVR_SECRET\"\nfastagi_listen = \"127.0.0.1:{agi}\"\n{tls_lines}\n[cluster]\ninstance_id = \"{id}\"\nadvertise = \"{scheme}://127.0.0.1:{port}\"\nlease_ttl = \"{ttl}\"\ninternal_token_env = \"CLUSTER_TOKEN\"\n{ca_line}\n[[tenant]]\nid = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n{pbxs}"
        );
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, text).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cstagate"))
            .args(["run", "--config"])
            .arg(&config)
            .env("ACME_TOKEN", &tokens.tenant)
            .env("CSTAGATE_DB_PASSWORD", &password)
            .env("ADMIN_TOKEN", &tokens.admin)
            .env("IVR_SECRET", &tokens.ivr)
            .env("CLUSTER_TOKEN", INTERNAL_TOKEN)
            .env("RUST_LOG", "cstagate=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let (log_tx, mut log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = err.next_line().await {
                let _ = log_tx.send(l);
            }
        });
        let api = timeout(LIMIT, async {
            while let Ok(Some(l)) = out.next_line().await {
                if l.contains("gateway API on http") {
                    return Some(l.rsplit("://").next().unwrap_or_default().to_owned());
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("{id} not listening in time"));
        let Some(api) = api else {
            let code = timeout(LIMIT, child.wait()).await.ok().and_then(Result::ok).and_then(|s| s.code());
            if code == Some(6) && attempt < 3 {
                continue;
            }
            let mut lines = Vec::new();
            while let Ok(l) = log.try_recv() {
                lines.push(l);
            }
            panic!("{id} ended before listening (exit {code:?}):\n{}", lines.join("\n"));
        };
        // Keep reading its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        return Instance { id: id.to_owned(), child, api, log, agi: format!("127.0.0.1:{agi}") };
    }
    unreachable!("the last attempt returns or panics")
}

/// A cluster test's place: its own database on the shared private PostgreSQL (and its URL over
/// the server's Unix socket), a temporary directory for the instances' files, and the tokens the
/// instances share.
pub(crate) struct Place {
    pub(crate) s: &'static PgServer,
    pub(crate) db: String,
    pub(crate) url: String,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) tokens: Tokens,
}

/// The place of a test named `hint`; `None` without PostgreSQL (the test is skipped, with a
/// notice; mandatory with `CSTAGATE_REQUIRE_POSTGRES=1`).
pub(crate) fn place(hint: &str) -> Option<Place> {
    let s = pg::shared()?;
    let db = s.database(hint);
    let url = s.socket_url(&db);
    let dir = std::env::temp_dir().join(format!("cstagate-{hint}-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Some(Place { s, db, url, dir, tokens: Tokens::random() })
}

/// PBX `i`'s one extension (each PBX its own, so that an extension names its PBX).
pub(crate) fn extension(i: usize) -> String {
    format!("2{i}05")
}

/// The simulated PBXs, `n` of them, with keep-alives every `keepalive` when given (two unanswered
/// and the PBX drops the connection, as real PBXs do with a silent peer).
pub(crate) async fn sims(n: usize, keepalive: Option<Duration>) -> Vec<SimPbx> {
    let mut v = Vec::new();
    for i in 0..n {
        let mut c = SimConfig::phase3(&[&extension(i)]);
        c.keepalive = keepalive;
        c.ivr_number = Some(ivr_number(i));
        v.push(SimPbx::start(c, "127.0.0.1:0").await.unwrap());
    }
    v
}

/// One signed IVR webhook request on `call`, dialled to `to`: the status and the answer, or
/// status 0 and the transport's error (the instance is gone).
pub(crate) async fn ivr_step(at: &Http, secret: &str, call: &str, from: &str, to: &str, digits: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "call": call, "from": from, "to": to });
    if let Some(d) = digits {
        body["digits"] = json!(d);
    }
    post_webhook(at, secret, body.to_string().into_bytes()).await.unwrap_or_else(|e| (0, json!({ "transport_error": e })))
}

/// Wait until instance `at` knows `pbx`'s live owner is `owner` (its lease round read it): from
/// then on it routes requests for `pbx` there.
pub(crate) async fn knows_owner(at: &Http, tokens: &Tokens, pbx: &str, owner: &str) {
    let start = Instant::now();
    loop {
        let (status, list) = at.json("GET", "/v1/pbx", &tokens.admin, None).await.unwrap();
        assert_eq!(status, 200, "{list}");
        if list["leases"].as_array().into_iter().flatten().any(|r| r["pbx"] == pbx && r["owner"] == owner && r["live"] == true) {
            return;
        }
        assert!(start.elapsed() < LIMIT, "the instance does not know {pbx}'s owner {owner}: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PBX `i`'s IVR number, its own (the IVR requests are routed by it).
pub(crate) fn ivr_number(i: usize) -> String {
    format!("08001002{i:02}")
}

/// The live leases: PBX → (owner, epoch).
pub(crate) fn leases(s: &PgServer, db: &str) -> BTreeMap<String, (String, i64)> {
    s.psql(db, "SELECT pbx, owner, epoch FROM pbx_leases WHERE expires_at > now() ORDER BY pbx")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            Some((f.next()?.to_owned(), (f.next()?.to_owned(), f.next()?.parse().ok()?)))
        })
        .collect()
}

/// Poll the leases until `pred` holds (each poll a query to the server), within [`LIMIT`].
pub(crate) async fn leases_until(s: &PgServer, db: &str, what: &str, pred: impl Fn(&BTreeMap<String, (String, i64)>) -> bool) -> BTreeMap<String, (String, i64)> {
    let start = Instant::now();
    loop {
        let l = leases(s, db);
        if pred(&l) {
            return l;
        }
        assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}; leases: {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn per_owner(l: &BTreeMap<String, (String, i64)>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for (owner, _) in l.values() {
        *n.entry(owner.clone()).or_insert(0) += 1;
    }
    n
}

/// Every simulated PBX has exactly one association open (its owner's link is up).
pub(crate) async fn every_link_up_once(sims: &[SimPbx]) {
    for (i, sim) in sims.iter().enumerate() {
        timeout(LIMIT, sim.wait_stats(|s| s.associated == 1)).await.unwrap_or_else(|_| panic!("pbx{i}: no link up: {:?}", sim.stats()));
    }
}

pub(crate) fn oracle(sims: &[SimPbx]) {
    for (i, sim) in sims.iter().enumerate() {
        let s = sim.stats();
        assert!(s.associated_max <= 1, "split brain: pbx{i} saw {} CSTA associations open at once", s.associated_max);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_six_pbxs_and_a_killed_ones_pbxs_are_reowned_without_two_links() {
    let Some(Place { s, db, url, dir, tokens }) = place("cluster") else { return };
    let sims = sims(6, None).await;
    let mut instances = Vec::new();
    for id in ["gw-a", "gw-b", "gw-c"] {
        instances.push(instance(id, &url, &sims, &dir, &tokens).await);
    }
    // Spread evenly: two each (ceil(6/3)), each PBX owned once, its link up once.
    let spread = leases_until(s, &db, "two PBXs per instance", |l| l.len() == 6 && per_owner(l).values().all(|n| *n == 2) && per_owner(l).len() == 3).await;
    every_link_up_once(&sims).await;
    oracle(&sims);
    // GET /v1/pbx, at each instance: its own links with owner and epoch, and every PBX's live
    // lease as of its last round (polled until that round has seen the spread).
    for inst in &instances {
        let http = Http::new(&format!("http://{}", inst.api));
        let expected: Vec<(String, String, i64)> = spread.iter().filter(|(_, (o, _))| *o == inst.id).map(|(p, (o, e))| (p.clone(), o.clone(), *e)).collect();
        let start = Instant::now();
        loop {
            let (status, list) = http.json("GET", "/v1/pbx", &tokens.admin, None).await.unwrap();
            assert_eq!(status, 200, "{list}");
            let links: Vec<(String, String, i64)> = list["pbx"].as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap_or_default().to_owned(), p["owner"].as_str().unwrap_or_default().to_owned(), p["epoch"].as_i64().unwrap_or_default())).collect();
            let leases: BTreeMap<String, (String, i64)> = list["leases"].as_array().into_iter().flatten().filter(|r| r["live"] == true).map(|r| (r["pbx"].as_str().unwrap_or_default().to_owned(), (r["owner"].as_str().unwrap_or_default().to_owned(), r["epoch"].as_i64().unwrap_or_default()))).collect();
            if links == expected && leases == spread {
                break;
            }
            assert!(start.elapsed() < LIMIT, "{}: GET /v1/pbx {list}, expected links {expected:?} and leases {spread:?}", inst.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // SIGKILL the owner of pbx0.
    let victim = spread["pbx0"].0.clone();
    let mine: Vec<String> = spread.iter().filter(|(_, (o, _))| *o == victim).map(|(p, _)| p.clone()).collect();
    // An association in flight on pbx0 at its owner, its proof call ringing on the PBX.
    let (id, audit) = associate(s, &db, &instances.iter().find(|i| i.id == victim).unwrap().api, &tokens, 0).await;
    timeout(LIMIT, sims[0].wait_stats(|st| st.live_calls == 1)).await.expect("the proof call rings");
    let v = instances.iter_mut().find(|i| i.id == victim).unwrap();
    let killed = Instant::now();
    v.child.start_kill().unwrap();
    v.child.wait().await.unwrap();
    // Its PBXs are re-owned by the survivors with a higher epoch, three each, their links up.
    let after = leases_until(s, &db, "the dead instance's PBXs re-owned", |l| l.len() == 6 && !per_owner(l).contains_key(&victim) && per_owner(l).values().all(|n| *n == 3)).await;
    for p in &mine {
        assert!(after[p].1 > spread[p].1, "{p}: epoch {} not above {}", after[p].1, spread[p].1);
    }
    every_link_up_once(&sims).await;
    // The new owner of pbx0 ended the dead owner's association and cleared its proof call.
    let ended = audit_until(s, &db, &id, |a| a.ends_with("failed|gateway_restarted")).await;
    assert_eq!(ended, format!("{audit}\nfailed|gateway_restarted"));
    timeout(LIMIT, sims[0].wait_stats(|st| st.live_calls == 0)).await.expect("the dead owner's proof call cleared by the new owner");
    eprintln!("failover: the dead instance's {} PBXs re-owned and linked {:?} after the kill (lease_ttl {TTL})", mine.len(), killed.elapsed());
    // The survivors' PBXs kept their epoch: nothing was taken from a live owner.
    for (p, (o, e)) in &spread {
        if *o != victim {
            assert_eq!(&after[p], &(o.clone(), *e), "{p} changed hands although its owner lives");
        }
    }
    oracle(&sims);
    // A clean stop hands the leases back at once.
    for i in &mut instances {
        if i.id != victim {
            let pid = i.child.id().unwrap().to_string();
            assert!(tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
            assert!(timeout(LIMIT, i.child.wait()).await.unwrap().unwrap().success());
        }
    }
    assert!(leases(s, &db).is_empty(), "leases still live after a clean stop: {:?}", leases(s, &db));
    oracle(&sims);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Create an association for PBX `i`'s extension at the instance at `api`; once it is stored,
/// its id and its audit so far (`step|result` lines).
pub(crate) async fn associate(s: &PgServer, db: &str, api: &str, tokens: &Tokens, i: usize) -> (String, String) {
    let http = Http::new(&format!("http://{api}"));
    let (status, created) = http.json("POST", "/v1/associations", &tokens.tenant, Some(serde_json::json!({ "account": format!("acct{i}"), "extension": extension(i) }))).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let audit = audit_until(s, db, &id, |a| a.ends_with("ringing|ok")).await;
    (id, audit)
}

/// Poll `id`'s audit (`step|result` lines) until `pred` holds, within [`LIMIT`].
pub(crate) async fn audit_until(s: &PgServer, db: &str, id: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let a = s.psql(db, &format!("SELECT step, result FROM audit WHERE association = '{id}' ORDER BY seq")).unwrap();
        if pred(&a) {
            return a;
        }
        assert!(start.elapsed() < LIMIT, "association {id}: audit {a:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A paused instance (SIGSTOP past its lease, then SIGCONT) must not write with its old epoch:
/// the other instance takes its PBX with a higher epoch and ends the association the paused one
/// had in flight there (`gateway_restarted`); once resumed, the paused one drops the PBX (its
/// link is gone from `GET /v1/pbx`) and what it then writes for it — its own end of that
/// association, `pbx_removed` — is refused by the database. The simulated PBXs drop a silent peer after two unanswered
/// keep-alives (1 s here, before the 3 s lease can expire), so the oracle holds here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_does_not_write_with_its_old_epoch() {
    let Some(Place { s, db, url, dir, tokens }) = place("paused") else { return };
    let sims = sims(2, Some(Duration::from_millis(500))).await;
    let mut instances = Vec::new();
    for id in ["gw-a", "gw-b"] {
        instances.push(instance(id, &url, &sims, &dir, &tokens).await);
    }
    let spread = leases_until(s, &db, "one PBX each", |l| l.len() == 2 && per_owner(l).len() == 2).await;
    every_link_up_once(&sims).await;
    let (pbx, (victim, epoch)) = spread.iter().next().map(|(p, o)| (p.clone(), o.clone())).unwrap();
    let i: usize = pbx.trim_start_matches("pbx").parse().unwrap();
    let v = instances.iter().position(|x| x.id == victim).unwrap();
    // An association in flight on that PBX, at its owner.
    let http = Http::new(&format!("http://{}", instances[v].api));
    let (id, audit_before) = associate(s, &db, &instances[v].api, &tokens, i).await;

    let pid = instances[v].child.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill").args(["-STOP", &pid]).status().await.unwrap().success());
    // The other instance takes the PBX with a higher epoch, and links it.
    let taken = leases_until(s, &db, "the paused instance's PBX taken over", |l| l.get(&pbx).is_some_and(|(o, e)| *o != victim && *e > epoch)).await;
    timeout(LIMIT, sims[i].wait_stats(|st| st.associated == 1 && st.connections >= 2)).await.expect("the new owner's link");
    assert!(tokio::process::Command::new("kill").args(["-CONT", &pid]).status().await.unwrap().success());
    // Resumed: it drops the PBX (no link to it any more).
    let admin = tokens.admin.clone();
    timeout(LIMIT, async {
        loop {
            if let Ok((200, l)) = http.json("GET", "/v1/pbx", &admin, None).await {
                if l["pbx"].as_array().is_some_and(|a| a.iter().all(|p| p["id"] != pbx.as_str())) {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the resumed instance drops the PBX it lost");
    // It tried to write for that PBX (the end of its association there) and was refused.
    let log = &mut instances[v].log;
    timeout(LIMIT, async {
        while let Some(l) = log.recv().await {
            if l.contains("a write batch was fenced") && l.contains(pbx.as_str()) {
                return;
            }
        }
        panic!("the log ended");
    })
    .await
    .expect("the resumed instance's write for the lost PBX refused (fenced)");
    // Nothing it wrote for that PBX with its old epoch got in: the association was ended once,
    // by the new owner (`gateway_restarted`), never by the paused one (`pbx_removed`).
    let ended = audit_until(s, &db, &id, |a| a.ends_with("failed|gateway_restarted")).await;
    assert_eq!(ended, format!("{audit_before}\nfailed|gateway_restarted"));
    assert_eq!(s.psql(&db, &format!("SELECT state, view->>'reason' FROM associations WHERE id = '{id}'")).unwrap(), "failed|gateway_restarted");
    assert_eq!(leases(s, &db)[&pbx], taken[&pbx], "the new owner keeps the lease");
    oracle(&sims);
    for x in &mut instances {
        let _ = x.child.start_kill();
        let _ = x.child.wait().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy to `target` that can be cut: once cut, it forwards nothing more, in either
/// direction, and holds its connections (old and new) open — a network partition, not a reset.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut client, mut server) = (client, server);
                    if !*cut.borrow() {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    }
                    // Cut: hold both ends open, silent, until the test ends.
                    std::future::pending::<()>().await;
                    drop((client, server));
                });
            }
        });
        Proxy { addr, cut }
    }
}

/// Partition: the instance reaching PostgreSQL through a proxy that is cut, while it still
/// reaches its PBX, releases its link (RLRQ) before the other instance, which takes the PBX
/// over once the lease has expired, opens its own: the oracle holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_postgresql_drops_its_links_before_another_opens_one() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("partition");
    let dir = std::env::temp_dir().join(format!("cstagate-partition-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], s.port()).into()).await;
    let sims = sims(2, None).await;
    let tokens = Tokens::random();
    let mut a = instance("gw-a", &format!("postgres://cstagate@{}/{db}", proxy.addr), &sims, &dir, &tokens).await;
    let mut b = instance("gw-b", &s.socket_url(&db), &sims, &dir, &tokens).await;
    let spread = leases_until(s, &db, "one PBX each", |l| l.len() == 2 && per_owner(l).len() == 2).await;
    every_link_up_once(&sims).await;
    let (pbx, (_, epoch)) = spread.iter().find(|(_, (o, _))| o == "gw-a").map(|(p, o)| (p.clone(), o.clone())).unwrap();
    let i: usize = pbx.trim_start_matches("pbx").parse().unwrap();
    let releases = sims[i].stats().releases;
    proxy.cut.send_replace(true);
    // gw-b takes the PBX over (a higher epoch) and links it; gw-a released its link first.
    leases_until(s, &db, "the cut-off instance's PBX taken over", |l| l.get(&pbx).is_some_and(|(o, e)| o == "gw-b" && *e > epoch)).await;
    timeout(LIMIT, sims[i].wait_stats(|st| st.associated == 1 && st.connections >= 2)).await.expect("gw-b's link");
    assert!(sims[i].stats().releases > releases, "gw-a did not release its link (RLRQ): {:?}", sims[i].stats());
    oracle(&sims);
    for x in [&mut a, &mut b] {
        let _ = x.child.start_kill();
        let _ = x.child.wait().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
