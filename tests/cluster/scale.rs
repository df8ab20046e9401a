//! The big cluster test of issue 12: three real `cstagate run` instances on the private
//! PostgreSQL, 30 simulated PBXs, 1,000 associations (`CSTAGATE_SCALE_ASSOCIATIONS`), each on
//! its own extension and account, driven to `bound` through each PBX's simulated IVR (32 at
//! once), each API call and IVR webhook sent to a random live instance, and the owner of `pbx0` SIGKILLed once 400 of them have been created. Associations hit
//! by the kill may fail (`gateway_restarted`, `link_down`, ...) and are retried as an app would;
//! the test asserts what must hold whatever the timing:
//! - every association in the database is final;
//! - each success is stored once: one binding row and one `bound` audit record per bound
//!   association, no binding without one, no second `bound`;
//! - no call is left up on any simulated PBX;
//! - the dead instance's PBXs are re-owned by the survivors with a higher epoch (the time from
//!   the kill is printed, not asserted: timing targets are in BENCHMARKS.md);
//! - the split-brain oracle: no PBX ever saw two CSTA associations open at once.
//!
//! The `#[ignore]`d tests below are the hand-run measurements of BENCHMARKS.md, "Several
//! gateways" (throughput and code→binding latency on three instances, failover time over ten
//! kills, lease traffic): `cargo test --release --locked --test cluster bench_ -- --ignored --nocapture --test-threads 1`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cstagate::sim::{Extension, SimConfig, SimPbx};
use cstagate::testkit::postgres::{self as pg, PgServer};
use cstagate::testkit::{Http, Ivr, IvrCall, Tokens};
use serde_json::json;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::timeout;

use super::processes::{place, Place, ivr_number, ivr_step, leases, leases_until, oracle, per_owner, start_instance, Instance, LIMIT};

/// Simulated PBXs in every run here.
const PBXS: usize = 30;
/// Attempts of one extension's association before the app gives up on it.
const ATTEMPTS: usize = 5;
/// The bound of one association from its creation to its end (the gateway's own timeouts end it
/// well before: ring 45 s, IVR 60 s), and of one slot's attempts to create one.
const END_LIMIT: Duration = Duration::from_secs(150);

/// PBX `i`'s extension number `k` (five digits: each PBX its own hundred).
fn ext(i: usize, k: usize) -> String {
    (10_000 + i * 100 + k).to_string()
}

/// The cluster under test: `PBXS` simulated PBXs, their IVR endpoints, and the instances.
struct Rig {
    s: &'static PgServer,
    db: String,
    url: String,
    dir: std::path::PathBuf,
    tokens: Tokens,
    sims: Arc<Vec<SimPbx>>,
    /// The IVR endpoints, until a drive takes them.
    ivrs: Option<Vec<Ivr>>,
    /// The `[[pbx]]` tables every instance gets.
    pbxs: String,
    ttl: &'static str,
    instances: Vec<Instance>,
    /// Each request to any live instance at random (`false`: to the PBX's owner).
    random: bool,
}

impl Rig {
    /// `per_pbx` extensions on each PBX, answering `answer` after ringing; the PBXs' tables for
    /// the instances (no rate limit that a load would hit: the requests per second of a link,
    /// the proof calls per extension an hour at their highest).
    async fn new(s: &'static PgServer, hint: &str, per_pbx: usize, answer: Duration, ttl: &'static str) -> Rig {
        let Place { db, url, dir, tokens, .. } = place(hint).expect("PostgreSQL");
        let (mut sims, mut ivrs, mut pbxs) = (Vec::new(), Vec::new(), String::new());
        for i in 0..PBXS {
            let numbers: Vec<String> = (0..per_pbx).map(|k| ext(i, k)).collect();
            let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
            let mut c = SimConfig::phase3(&refs);
            c.extensions = numbers.iter().map(|n| Extension::answering(n, answer)).collect();
            c.ivr_number = Some(ivr_number(i));
            let mut sim = SimPbx::start(c, "127.0.0.1:0").await.unwrap();
            ivrs.push(Ivr::of(&mut sim).unwrap());
            pbxs += &format!(
                "\n[[pbx]]\nid = \"pbx{i}\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"{}-{}\"]\nivr_number = \"{}\"\nreconnect_min = \"20ms\"\nmax_requests_per_second = 100000\nproof_calls_per_hour = 20\n",
                sim.addr(),
                ext(i, 0),
                ext(i, per_pbx - 1),
                ivr_number(i)
            );
            sims.push(sim);
        }
        Rig { s, db, url, dir, tokens, sims: Arc::new(sims), ivrs: Some(ivrs), pbxs, ttl, instances: Vec::new(), random: false }
    }

    /// Start instance `id` (`gw-a`, ...).
    async fn start(&mut self, id: &str) {
        let i = start_instance(id, &self.url, &self.pbxs, self.ttl, &self.dir, &self.tokens).await;
        self.instances.push(i);
    }

    /// Wait until the live leases are spread evenly over `n` instances, every link up once.
    async fn spread(&self, n: usize) -> BTreeMap<String, (String, i64)> {
        let share = PBXS.div_ceil(n);
        let l = leases_until(self.s, &self.db, "the PBXs spread over the instances", |l| l.len() == PBXS && per_owner(l).len() == n && per_owner(l).values().all(|c| *c == share)).await;
        for (i, sim) in self.sims.iter().enumerate() {
            timeout(LIMIT, sim.wait_stats(|s| s.associated == 1)).await.unwrap_or_else(|_| panic!("pbx{i}: no link up: {:?}", sim.stats()));
        }
        l
    }

    /// The owners to send requests to, as the instances report them.
    fn owners(&self) -> Arc<Owners> {
        Arc::new(Owners { admin: self.tokens.admin.clone(), random: self.random, apis: Mutex::new(self.instances.iter().map(|i| (i.id.clone(), Http::with_timeouts(&format!("http://{}", i.api), Duration::from_secs(5), Duration::from_secs(30)))).collect()), map: Mutex::new((None, BTreeMap::new())) })
    }

    /// SIGKILL instance `id` and reap it; its API is forgotten by `owners`.
    async fn kill(&mut self, id: &str, owners: &Owners) -> Instant {
        let at = self.instances.iter().position(|i| i.id == id).unwrap();
        let mut v = self.instances.remove(at);
        let killed = Instant::now();
        v.child.start_kill().unwrap();
        v.child.wait().await.unwrap();
        owners.apis.lock().unwrap().remove(id);
        killed
    }

    async fn stop(mut self) {
        for x in &mut self.instances {
            let _ = x.child.start_kill();
            let _ = x.child.wait().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the app sends each PBX's requests.
struct Owners {
    admin: String,
    /// Any live instance for each request, at random (the test), rather than the owner.
    random: bool,
    /// The live instances' APIs by instance id.
    apis: Mutex<BTreeMap<String, Http>>,
    /// PBX → owner, as last read from `GET /v1/pbx` (live leases only), and when.
    map: Mutex<(Option<Instant>, BTreeMap<String, String>)>,
}

impl Owners {
    /// The instance to send `pbx`'s API calls and IVR webhooks to: with `random`, any live
    /// instance (it forwards to the owner, or answers 503 with `Retry-After` while the PBX has
    /// none); else its current owner as `GET /v1/pbx` reports it, re-read when a tenth of a
    /// second old or after a failure (a dead owner's PBX has none until its lease expires), to
    /// measure the gateways without the forwarding hop.
    async fn instance_for(&self, pbx: &str) -> Option<Http> {
        if self.random {
            let apis = self.apis.lock().unwrap();
            let n = apis.len();
            return (n > 0).then(|| apis.values().nth(rand::random_range(0..n))).flatten().cloned();
        }
        let fresh = self.map.lock().unwrap().0.is_some_and(|at| at.elapsed() < Duration::from_millis(100));
        if !fresh {
            self.refresh().await;
        }
        let owner = self.map.lock().unwrap().1.get(pbx).cloned()?;
        self.apis.lock().unwrap().get(&owner).cloned()
    }

    /// A request failed: read the owners again before the next.
    fn stale(&self) {
        self.map.lock().unwrap().0 = None;
    }

    async fn refresh(&self) {
        let apis: Vec<Http> = self.apis.lock().unwrap().values().cloned().collect();
        for http in apis {
            if let Ok((200, list)) = http.json("GET", "/v1/pbx", &self.admin, None).await {
                let live: BTreeSet<String> = self.apis.lock().unwrap().keys().cloned().collect();
                let map = list["leases"].as_array().into_iter().flatten().filter(|r| r["live"] == true && r["owner"].as_str().is_some_and(|o| live.contains(o))).map(|r| (r["pbx"].as_str().unwrap_or_default().to_owned(), r["owner"].as_str().unwrap_or_default().to_owned())).collect();
                *self.map.lock().unwrap() = (Some(Instant::now()), map);
                return;
            }
        }
    }
}

/// The codes the app shows, by extension, for the simulated users at the phones: taken once by
/// the IVR dialogue of the call from that extension.
#[derive(Default)]
struct Codes {
    codes: Mutex<HashMap<String, String>>,
    added: Notify,
    /// By extension: told when the IVR answered "now linked", so that the app reads the end at
    /// once rather than at its next poll.
    linked: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Codes {
    fn insert(&self, ext: &str, code: &str) {
        self.codes.lock().unwrap().insert(ext.to_owned(), code.to_owned());
        self.added.notify_waiters();
    }

    fn remove(&self, ext: &str) {
        self.codes.lock().unwrap().remove(ext);
    }

    /// What tells `ext`'s app that its association is linked.
    fn linked(&self, ext: &str) -> Arc<Notify> {
        self.linked.lock().unwrap().entry(ext.to_owned()).or_default().clone()
    }

    /// The code of `ext`'s association; `None` when none comes within `bound` (the app's
    /// answer never arrived: its instance died).
    async fn take(&self, ext: &str, bound: Duration) -> Option<String> {
        timeout(bound, async {
            loop {
                let notified = self.added.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(c) = self.codes.lock().unwrap().remove(ext) {
                    return c;
                }
                notified.await;
            }
        })
        .await
        .ok()
    }
}

/// What a drive saw.
#[derive(Debug, Default)]
struct Drive {
    /// Every association the app created: id → (pbx, extension, account, final state, reason).
    created: BTreeMap<String, (String, String, String, String, String)>,
    /// Code digits sent → the IVR's "now linked" answer (the binding is durable by then).
    code_to_binding: Vec<Duration>,
    /// Extensions given up (after [`ATTEMPTS`], or refused for good), with why.
    given_up: Vec<(String, String)>,
    elapsed: Duration,
}

/// The app and the IVR platforms of a drive.
struct App {
    owners: Arc<Owners>,
    ivrs: Vec<Ivr>,
    tenant: String,
    ivr_secret: String,
    db: tokio_postgres::Client,
}

impl Rig {
    /// The app of a drive (the IVR endpoints taken; [`Rig::give_back`] returns them).
    async fn app(&mut self) -> App {
        let (client, conn) = tokio_postgres::Config::new().host("127.0.0.1").port(self.s.port()).user("cstagate").password(self.s.password()).dbname(&self.db).connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        App { owners: self.owners(), ivrs: self.ivrs.take().expect("IVR endpoints"), tenant: self.tokens.tenant.clone(), ivr_secret: self.tokens.ivr.clone(), db: client }
    }

    fn give_back(&mut self, ivrs: Vec<Ivr>) {
        self.ivrs = Some(ivrs);
    }
}

/// Drive one association per extension of `slots` ((PBX index, extension)), `concurrency` at a
/// time, each to its end and retried while it fails, as an app would; `created` counts those
/// created so far. Returns what it saw and the IVR endpoints.
async fn drive(app: App, slots: Vec<(usize, String)>, concurrency: usize, created: watch::Sender<usize>) -> (Drive, Vec<Ivr>) {
    let App { owners, ivrs, tenant, ivr_secret, db } = app;
    let codes = Arc::new(Codes::default());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    // The IVR platform of each PBX: each call's dialogue with the PBX's owner, then hung up.
    let (stop, stopped) = watch::channel(false);
    let mut platforms = Vec::new();
    for (i, mut ivr) in ivrs.into_iter().enumerate() {
        let (owners, codes, latencies, secret, mut stopped) = (owners.clone(), codes.clone(), latencies.clone(), ivr_secret.clone(), stopped.clone());
        platforms.push(tokio::spawn(async move {
            let pbx = format!("pbx{i}");
            loop {
                let call = tokio::select! {
                    c = ivr.next_call() => c,
                    _ = stopped.wait_for(|s| *s) => None,
                };
                let Some(call) = call else { break };
                let (owners, codes, latencies, secret, line, pbx) = (owners.clone(), codes.clone(), latencies.clone(), secret.clone(), ivr.line.clone(), pbx.clone());
                tokio::spawn(async move {
                    if let Some(code) = codes.take(&call.extension, Duration::from_secs(30)).await {
                        if let Some(d) = dialogue(&owners, &pbx, &secret, &call, &code).await {
                            latencies.lock().unwrap().push(d);
                            codes.linked(&call.extension).notify_one();
                        }
                    }
                    line.hangup(&call.call);
                });
            }
            ivr
        }));
    }
    let db = Arc::new(db);
    let gate = Arc::new(Semaphore::new(concurrency));
    let count = Arc::new(created);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (n, (i, e)) in slots.into_iter().enumerate() {
        let (owners, codes, db, gate, count, token) = (owners.clone(), codes.clone(), db.clone(), gate.clone(), count.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let (pbx, account) = (format!("pbx{i}"), format!("acct{n}"));
            let mut ended: Vec<(String, (String, String, String, String, String))> = Vec::new();
            // The association being tried, its code, and the failures of it already handled.
            let mut current: Option<(String, String, i64)> = None;
            // Why each attempt ended (for the report of one given up).
            let mut reasons: Vec<String> = Vec::new();
            for attempt in 1..=ATTEMPTS {
                let (id, code, failures) = match current.take() {
                    Some(c) => c,
                    None => match create(&owners, &pbx, &token, &account, &e).await {
                        Ok((id, code)) => {
                            count.send_modify(|c| *c += 1);
                            (id, code, 0)
                        }
                        Err(why) => return (ended, Some((e, why))),
                    },
                };
                codes.insert(&e, &code);
                let end = end_of(&db, &id, &e, failures, &codes.linked(&e)).await;
                codes.remove(&e);
                ended.retain(|(x, _)| *x != id);
                ended.push((id.clone(), (pbx.clone(), e.clone(), account.clone(), end.state.clone(), end.reason.clone())));
                reasons.push(format!("{}/{}", end.state, end.reason));
                if end.state == "bound" {
                    return (ended, None);
                }
                if !end.last {
                    // Tried again ("I'm at my phone", the same code) while attempts are left...
                    let retried = attempt < ATTEMPTS && {
                        let state = call_owner(&owners, &pbx, "POST", &format!("/v1/associations/{id}/complete"), &token, 202).await;
                        state != "failed" && !state.starts_with("refused")
                    };
                    if retried {
                        current = Some((id, code, end.failures));
                        continue;
                    }
                    // ... or given up: cancelled, so that it ends (final) and holds nothing.
                    let state = call_owner(&owners, &pbx, "DELETE", &format!("/v1/associations/{id}"), &token, 200).await;
                    ended.pop();
                    ended.push((id, (pbx.clone(), e.clone(), account.clone(), state, String::new())));
                    return (ended, Some((e, format!("given up after attempt {attempt}: {reasons:?}"))));
                }
            }
            (ended, Some((e, format!("{ATTEMPTS} attempts failed"))))
        }));
    }
    let mut out = Drive::default();
    for t in tasks {
        let (ended, gave_up) = t.await.unwrap();
        out.created.extend(ended);
        out.given_up.extend(gave_up);
    }
    out.elapsed = t0.elapsed();
    out.code_to_binding = std::mem::take(&mut *latencies.lock().unwrap());
    stop.send_replace(true);
    let mut ivrs = Vec::new();
    for p in platforms {
        ivrs.push(p.await.unwrap());
    }
    (out, ivrs)
}

/// Create `account`'s association on `pbx`'s extension `e` at the PBX's owner: its id and code.
/// Tried again (the owner read again) while the PBX has no live owner, its owner does not
/// answer, or refuses for now (503; 409 while this account's previous attempt is being ended);
/// `Err` on a lasting refusal (403 blocked, 423 locked out, 429 rate limited) or after
/// [`END_LIMIT`].
async fn create(owners: &Owners, pbx: &str, token: &str, account: &str, e: &str) -> Result<(String, String), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < END_LIMIT {
        if let Some(http) = owners.instance_for(pbx).await {
            match http.json("POST", "/v1/associations", token, Some(json!({ "account": account, "extension": e }))).await {
                Ok((201, v)) => return Ok((v["id"].as_str().unwrap_or_default().to_owned(), v["code"].as_str().unwrap_or_default().to_owned())),
                Ok((s @ (403 | 423 | 429), v)) => return Err(format!("{s} {v}")),
                // This account's earlier create was decided but its answer was lost (the
                // instance relaying it died, or the owner after its commit): the app finds the
                // account's live association and cancels it, then asks again.
                Ok((409, v)) if v["code"] == "account_busy" => {
                    cancel_live(&http, token, account).await;
                    last = format!("409 {v}");
                }
                Ok((s, v)) => last = format!("{s} {v}"),
                Err(err) => last = err,
            }
            owners.stale();
        }
        // An app's pause before it tries again: the PBX's owner is being replaced.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not created within {END_LIMIT:?}: {last}"))
}

/// Cancel `account`'s associations that are not final (as listed by any instance, from the
/// database); the cancel goes to the PBX's owner through `http`.
async fn cancel_live(http: &Http, token: &str, account: &str) {
    let Ok((200, list)) = http.json("GET", &format!("/v1/associations?account={account}"), token, None).await else { return };
    for a in list["associations"].as_array().into_iter().flatten() {
        if !matches!(a["state"].as_str(), Some("bound" | "expired" | "cancelled")) && !(a["state"] == "failed" && a["retryable"] == false) {
            let _ = http.json("DELETE", &format!("/v1/associations/{}", a["id"].as_str().unwrap_or_default()), token, None).await;
        }
    }
}

/// How an attempt of an association ended.
struct End {
    state: String,
    reason: String,
    /// Its `failed` audit records so far.
    failures: i64,
    /// Final: not to be tried again (bound, expired, cancelled, or failed for good).
    last: bool,
}

/// Poll association `id` (on extension `e`) in the database until its attempt has ended: bound,
/// expired, cancelled, or failed more often than the `failures` already handled (a failed one
/// that may be tried again is not final); read again at once when `linked` is told.
async fn end_of(db: &tokio_postgres::Client, id: &str, e: &str, failures: i64, linked: &Notify) -> End {
    let start = Instant::now();
    loop {
        let q = "SELECT state, coalesce(view->>'reason', ''), final, (SELECT count(*) FROM audit WHERE extension = $2 AND association = $1 AND step = 'failed') FROM associations WHERE id = $1";
        if let Ok(Some(r)) = db.query_opt(q, &[&id, &e]).await {
            let end = End { state: r.get(0), reason: r.get(1), last: r.get(2), failures: r.get(3) };
            if end.last || (end.state == "failed" && end.failures > failures) {
                return end;
            }
        }
        if start.elapsed() > END_LIMIT {
            let view = db.query_opt("SELECT view::text FROM associations WHERE id = $1", &[&id]).await.ok().flatten().map(|r| r.get::<_, String>(0));
            panic!("association {id} not ended within {END_LIMIT:?}: {view:?}");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = linked.notified() => {}
        }
    }
}

/// `method path` for `pbx` at its owner, until it answers `ok` (the owner read again after a
/// failure; a refusal ends it too): the association's state in the last answer (`failed` when
/// none came).
async fn call_owner(owners: &Owners, pbx: &str, method: &str, path: &str, token: &str, ok: u16) -> String {
    let start = Instant::now();
    while start.elapsed() < END_LIMIT {
        if let Some(http) = owners.instance_for(pbx).await {
            match http.json(method, path, token, None).await {
                Ok((s, v)) if s == ok => return v["state"].as_str().unwrap_or_default().to_owned(),
                Ok((s @ 400..=499, v)) => return format!("refused: {s} {v}"),
                _ => owners.stale(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    "failed".into()
}

/// One call's webhook dialogue with the PBX's owner: first contact, context id, confirm, the
/// code. The time from sending the code to "now linked", or `None` when a step failed. The call
/// id the webhook names is the IVR platform's own, one platform for every PBX: the simulator's
/// id with the PBX's name before it (each simulator numbers its calls from the same start).
async fn dialogue(owners: &Owners, pbx: &str, secret: &str, call: &IvrCall, code: &str) -> Option<Duration> {
    let steps = [None, Some(call.context.as_str()), Some("1"), Some(code)];
    // The number the proof call dialled: each PBX its own, by which any instance routes the call.
    let number = ivr_number(pbx.trim_start_matches("pbx").parse().unwrap_or_default());
    for (k, d) in steps.into_iter().enumerate() {
        let http = owners.instance_for(pbx).await?;
        let t = Instant::now();
        match ivr_step(&http, secret, &format!("{pbx}-{}", call.call), &call.from, &number, d).await {
            (200, r) if k == 3 => return r["say"].as_str().unwrap_or_default().contains("now linked").then(|| t.elapsed()),
            (200, _) => {}
            _ => {
                owners.stale();
                return None;
            }
        }
    }
    None
}

/// `psql` rows, split into fields.
fn rows(s: &PgServer, db: &str, sql: &str) -> Vec<Vec<String>> {
    s.psql(db, sql).unwrap().lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_owned).collect()).collect()
}

/// `n` extensions to drive, taken round-robin over the PBXs.
fn slots(n: usize) -> Vec<(usize, String)> {
    (0..n).map(|k| (k % PBXS, ext(k % PBXS, k / PBXS))).collect()
}

/// Extensions per PBX for `n` associations.
fn per_pbx(n: usize) -> usize {
    n.div_ceil(PBXS).max(1)
}

/// For each PBX of `pbxs`, the time from `since` until its simulator sees a new application
/// association (the new owner's link), past `connections` (its count of connections then).
async fn relinked(sims: Arc<Vec<SimPbx>>, pbxs: Vec<String>, connections: BTreeMap<String, u64>, since: Instant) -> Vec<Duration> {
    let waits = pbxs.iter().map(|p| {
        let i: usize = p.trim_start_matches("pbx").parse().unwrap();
        let (c, sims) = (connections[p], sims.clone());
        async move {
            timeout(LIMIT, sims[i].wait_stats(|s| s.associated == 1 && s.connections > c)).await.unwrap_or_else(|_| panic!("{p}: not linked again: {:?}", sims[i].stats()));
            since.elapsed()
        }
    });
    futures_util::future::join_all(waits).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_thirty_pbxs_a_thousand_associations_and_a_kill() {
    let Some(s) = pg::shared() else { return };
    let n: usize = std::env::var("CSTAGATE_SCALE_ASSOCIATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    assert!((PBXS..=PBXS * 99).contains(&n), "CSTAGATE_SCALE_ASSOCIATIONS: {PBXS} to {}", PBXS * 99);
    let t0 = Instant::now();
    let mut rig = Rig::new(s, "scale", per_pbx(n), Duration::from_millis(100), "3s").await;
    // Each API call and IVR webhook to any instance: the owner serves it, another forwards it.
    rig.random = true;
    for id in ["gw-a", "gw-b", "gw-c"] {
        rig.start(id).await;
    }
    let before = rig.spread(3).await;
    let victim = before["pbx0"].0.clone();
    let mine: Vec<String> = before.iter().filter(|(_, (o, _))| *o == victim).map(|(p, _)| p.clone()).collect();

    // The load; the kill once two fifths of the associations are created.
    let app = rig.app().await;
    let owners = app.owners.clone();
    let (count_tx, mut count) = watch::channel(0usize);
    let driver = tokio::spawn(drive(app, slots(n), 32, count_tx));
    timeout(END_LIMIT, count.wait_for(|c| *c >= n * 2 / 5)).await.expect("associations created before the kill").unwrap();
    let connections: BTreeMap<String, u64> = mine.iter().map(|p| (p.clone(), rig.sims[p.trim_start_matches("pbx").parse::<usize>().unwrap()].stats().connections)).collect();
    let killed = rig.kill(&victim, &owners).await;
    let at_kill = *count.borrow();
    // The dead instance's PBXs: re-owned in the lease table by a survivor with a higher epoch,
    // and linked again; the times from the kill.
    let links = tokio::spawn(relinked(rig.sims.clone(), mine.clone(), connections, killed));
    let reowned = leases_until(s, &rig.db, "the dead instance's PBXs re-owned", |l| mine.iter().all(|p| l.get(p).is_some_and(|(o, e)| *o != victim && *e > before[p].1))).await;
    let reowned_after = killed.elapsed();
    let mut links = links.await.unwrap();
    links.sort();
    eprintln!("scale: the kill of {victim} after {at_kill} associations created: its {} PBXs re-owned (lease rows) {reowned_after:?} after it, linked again after {:?} (first) to {:?} (last); lease_ttl {}", mine.len(), links[0], links[links.len() - 1], rig.ttl);
    for p in &mine {
        assert_ne!(reowned[p].0, victim);
    }

    let (d, ivrs) = driver.await.unwrap();
    rig.give_back(ivrs);
    let mut by_end: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, _, state, reason) in d.created.values() {
        *by_end.entry(format!("{state}/{reason}")).or_default() += 1;
    }
    eprintln!("scale: {} extensions, {} associations created in {:?} ({:?} in all): {by_end:?}; given up: {:?}", n, d.created.len(), d.elapsed, t0.elapsed(), d.given_up);

    // Every association in the database is final (the survivors ended the dead one's), and
    // every one the app created is there.
    let start = Instant::now();
    loop {
        let open = rows(s, &rig.db, "SELECT id, state FROM associations WHERE NOT final");
        if open.is_empty() {
            break;
        }
        assert!(start.elapsed() < LIMIT, "associations not final: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: BTreeMap<String, Vec<String>> = rows(s, &rig.db, "SELECT id, pbx, extension, account, state FROM associations").into_iter().map(|mut r| (r.remove(0), r)).collect();
    for (id, (pbx, e, account, state, _)) in &d.created {
        assert_eq!(stored.get(id), Some(&vec![pbx.clone(), e.clone(), account.clone(), state.clone()]), "association {id} as the app saw it end");
    }
    // Each success stored once: one `bound` audit record per bound association and none for
    // another, one binding per bound association (its PBX, extension and account) and no other.
    let bound: BTreeSet<(String, String, String)> = stored.values().filter(|r| r[3] == "bound").map(|r| (r[0].clone(), r[1].clone(), r[2].clone())).collect();
    let bound_ids: BTreeSet<&String> = stored.iter().filter(|(_, r)| r[3] == "bound").map(|(id, _)| id).collect();
    assert_eq!(bound.len(), bound_ids.len(), "two bound associations on one extension");
    assert!(!bound.is_empty(), "nothing bound");
    let audits = rows(s, &rig.db, "SELECT association, count(*) FROM audit WHERE step = 'bound' GROUP BY association");
    let audited: BTreeMap<String, String> = audits.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(audited.keys().collect::<BTreeSet<_>>(), bound_ids, "`bound` audit records and bound associations differ");
    assert!(audited.values().all(|c| c == "1"), "a `bound` audit record twice: {audited:?}");
    let bindings: Vec<(String, String, String)> = rows(s, &rig.db, "SELECT pbx, extension, account FROM bindings").into_iter().map(|r| (r[0].clone(), r[1].clone(), r[2].clone())).collect();
    assert_eq!(bindings.len(), bound.len(), "bindings and bound associations differ in number");
    assert_eq!(bindings.into_iter().collect::<BTreeSet<_>>(), bound, "bindings and bound associations differ");
    // No call left up on any PBX (the new owners cleared the dead one's proof calls).
    for (i, sim) in rig.sims.iter().enumerate() {
        timeout(LIMIT, sim.wait_stats(|st| st.live_calls == 0)).await.unwrap_or_else(|_| panic!("pbx{i}: calls left up: {:?}", sim.stats()));
    }
    // Every PBX owned by a survivor; report any survivor's PBX that changed hands (a renewal
    // missed on a busy machine is allowed; a PBX with two links is not).
    let after = leases(s, &rig.db);
    assert_eq!(after.len(), PBXS, "PBXs without a live lease: {after:?}");
    assert!(after.values().all(|(o, _)| *o != victim), "the dead instance owns a lease: {after:?}");
    let moved: Vec<&String> = before.iter().filter(|(p, (o, e))| *o != victim && after[*p] != (o.clone(), *e)).map(|(p, _)| p).collect();
    if !moved.is_empty() {
        eprintln!("scale: survivors' PBXs that changed hands under load: {moved:?}");
    }
    // The lease statements counted (`/metrics`): each survivor took at least the leases it
    // owns now, and renewed.
    for i in &rig.instances {
        let n = lease_statements(&i.api).await;
        let owned = after.values().filter(|(o, _)| *o == i.id).count() as u64;
        assert!(n.get("acquire").copied().unwrap_or(0) >= owned && n.get("renew").copied().unwrap_or(0) > 0 && n.get("heartbeat").copied().unwrap_or(0) > 0, "{}: lease statements {n:?} for {owned} PBXs owned", i.id);
    }
    oracle(&rig.sims);
    rig.stop().await;
}

/// `cstagate_lease_statements_total` of the instance at `api`, by kind.
async fn lease_statements(api: &str) -> BTreeMap<String, u64> {
    let (status, body) = Http::new(&format!("http://{api}")).raw("GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cstagate_lease_statements_total{kind=\"")?;
            let (kind, n) = rest.split_once("\"} ")?;
            Some((kind.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// Median and maximum.
fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

/// p50 and p99 of code → binding.
fn p50_p99(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

/// BENCHMARKS.md "Several gateways", throughput and latency: associations driven to `bound`
/// on one, then three instances (fresh databases), through the PBXs' owners; 2,000 with 100 at
/// a time, then 200 with 10 at a time, then 100 one at a time (each on an extension of its
/// own, spread over the 30 PBXs; extensions answer at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (BENCHMARKS.md)"]
async fn bench_throughput_and_latency_on_one_and_three_instances() {
    let Some(s) = pg::shared() else { return };
    let all = slots_between(0, 2300);
    for instances in [1, 3] {
        let mut rig = Rig::new(s, &format!("bench{instances}"), per_pbx(2300), Duration::ZERO, "10s").await;
        for id in ["gw-a", "gw-b", "gw-c"].into_iter().take(instances) {
            rig.start(id).await;
        }
        rig.spread(instances).await;
        for (what, range, concurrency) in [("100 at a time", 0..2000, 100), ("10 at a time", 2000..2200, 10), ("one at a time", 2200..2300, 1)] {
            let (tx, _) = watch::channel(0);
            let app = rig.app().await;
            let (mut d, ivrs) = drive(app, all[range].to_vec(), concurrency, tx).await;
            rig.give_back(ivrs);
            let bound = d.created.values().filter(|r| r.3 == "bound").count();
            let (p50, p99) = p50_p99(&mut d.code_to_binding);
            eprintln!("bench: {instances} instance(s), {what}: {bound} bound of {} created in {:.2} s = {:.0} associations/s; code → binding over {}: p50 {p50:?}, p99 {p99:?}", d.created.len(), d.elapsed.as_secs_f64(), bound as f64 / d.elapsed.as_secs_f64(), d.code_to_binding.len());
        }
        oracle(&rig.sims);
        rig.stop().await;
    }
}

/// `slots(to)[from..to]`: extensions `from` to `to` in the round-robin order.
fn slots_between(from: usize, to: usize) -> Vec<(usize, String)> {
    slots(to).split_off(from)
}

/// BENCHMARKS.md "Several gateways", failover: three instances, 30 PBXs, `lease_ttl` from
/// `CSTAGATE_BENCH_TTL` (3s unless set); ten times: SIGKILL one instance (in turn), time each
/// of its PBXs until its simulator sees the new owner's link (its application association
/// accepted), then start it again and wait for the even spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (BENCHMARKS.md)"]
async fn bench_failover_over_ten_kills() {
    let Some(s) = pg::shared() else { return };
    let ttl: &'static str = Box::leak(std::env::var("CSTAGATE_BENCH_TTL").unwrap_or_else(|_| "3s".into()).into_boxed_str());
    let mut rig = Rig::new(s, "failover", 1, Duration::ZERO, ttl).await;
    for id in ["gw-a", "gw-b", "gw-c"] {
        rig.start(id).await;
    }
    let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
    for k in 0..10 {
        let spread = rig.spread(3).await;
        let victim = ["gw-a", "gw-b", "gw-c"][k % 3];
        let mine: Vec<String> = spread.iter().filter(|(_, (o, _))| *o == victim).map(|(p, _)| p.clone()).collect();
        let connections: BTreeMap<String, u64> = mine.iter().map(|p| (p.clone(), rig.sims[p.trim_start_matches("pbx").parse::<usize>().unwrap()].stats().connections)).collect();
        let owners = rig.owners();
        let links = tokio::spawn(relinked(rig.sims.clone(), mine.clone(), connections, Instant::now()));
        rig.kill(victim, &owners).await;
        let mut links = links.await.unwrap();
        links.sort();
        eprintln!("bench: kill {k} ({victim}, lease_ttl {ttl}): its {} PBXs linked by the survivors after {:?} (first) to {:?} (last)", links.len(), links[0], links[links.len() - 1]);
        firsts.push(links[0]);
        lasts.push(links[links.len() - 1]);
        rig.start(victim).await;
    }
    let (m1, x1) = median_max(&mut firsts);
    let (m2, x2) = median_max(&mut lasts);
    eprintln!("bench: failover over 10 kills, lease_ttl {ttl}: kill → first PBX linked again: median {m1:?}, max {x1:?}; kill → last of its PBXs: median {m2:?}, max {x2:?}");
    oracle(&rig.sims);
    rig.stop().await;
}

/// BENCHMARKS.md "Several gateways", lease traffic: three instances, 30 PBXs, `lease_ttl` 10 s
/// (the default), idle; the lease statements every instance counts (`/metrics`) over
/// `CSTAGATE_BENCH_LEASE_SECS` (180 unless set) once the PBXs are spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (BENCHMARKS.md)"]
async fn bench_lease_traffic() {
    let Some(s) = pg::shared() else { return };
    let secs: u64 = std::env::var("CSTAGATE_BENCH_LEASE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(180);
    let mut rig = Rig::new(s, "leasetraffic", 1, Duration::ZERO, "10s").await;
    for id in ["gw-a", "gw-b", "gw-c"] {
        rig.start(id).await;
    }
    rig.spread(3).await;
    let read = |apis: Vec<String>| async move {
        let mut sum: BTreeMap<String, u64> = BTreeMap::new();
        for api in apis {
            for (k, n) in lease_statements(&api).await {
                *sum.entry(k).or_default() += n;
            }
        }
        sum
    };
    let apis: Vec<String> = rig.instances.iter().map(|i| i.api.clone()).collect();
    let t0 = Instant::now();
    let a = read(apis.clone()).await;
    // The measurement's interval (not a synchronisation).
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = read(apis).await;
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let mut total = 0.0;
    for (k, n) in &b {
        let per_min = (n - a.get(k).copied().unwrap_or(0)) as f64 / minutes;
        total += per_min;
        eprintln!("bench: lease statements `{k}`: {per_min:.1} a minute in all, {:.2} per PBX a minute", per_min / PBXS as f64);
    }
    eprintln!("bench: lease traffic over {minutes:.2} min, 3 instances, {PBXS} PBXs, lease_ttl 10s: {total:.1} statements a minute in all, {:.2} per PBX a minute", total / PBXS as f64);
    oracle(&rig.sims);
    rig.stop().await;
}
