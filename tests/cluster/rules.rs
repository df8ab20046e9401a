//! The account-wide rules across instances, on real `cstagate run` processes sharing the private
//! PostgreSQL (see `processes.rs`): one live association per account whichever instances the
//! creates reach; an account's failures on one instance lock it out on the others; and an
//! instance that takes a PBX back reads what its other owner changed meanwhile. Each request
//! goes to the instance that owns the PBX (as `GET /v1/pbx` and the lease table say).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{Http, Ivr, IvrCall, Tokens};
use serde_json::{json, Value};
use tokio::time::timeout;

use super::processes::{place, Place, instance_with, ivr_number, ivr_step, leases_until, oracle, per_owner, Instance, LIMIT};

/// PBX `i`'s one extension.
fn extension(i: usize) -> String {
    format!("3{i}05")
}

/// `n` simulated PBXs and their `[[pbx]]` tables: codes asked for with "I'm at my phone"
/// (`require_completion`), locked out after two wrong codes.
async fn pbxs(n: usize) -> (Vec<SimPbx>, String) {
    let (mut sims, mut toml) = (Vec::new(), String::new());
    for i in 0..n {
        let mut c = SimConfig::phase3(&[&extension(i)]);
        c.ivr_number = Some(ivr_number(i));
        let sim = SimPbx::start(c, "127.0.0.1:0").await.unwrap();
        toml += &format!(
            "\n[[pbx]]\nid = \"pbx{i}\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"{}\"]\nivr_number = \"{}\"\nreconnect_min = \"20ms\"\nrequire_completion = true\nlockout_after = 2\n",
            sim.addr(),
            extension(i),
            ivr_number(i)
        );
        sims.push(sim);
    }
    (sims, toml)
}

fn http(i: &Instance) -> Http {
    Http::new(&format!("http://{}", i.api))
}

/// The instance owning `pbx` in `leases`.
fn owner<'a>(instances: &'a [Instance], leases: &BTreeMap<String, (String, i64)>, pbx: &str) -> &'a Instance {
    instances.iter().find(|i| i.id == leases[pbx].0).unwrap()
}

/// `GET /v1/pbx` at each instance lists exactly the PBXs `leases` gives it, with their links up:
/// each instance acts for its PBXs now.
async fn serving(instances: &[Instance], leases: &BTreeMap<String, (String, i64)>, tokens: &Tokens) {
    for inst in instances {
        let mine: Vec<&str> = leases.iter().filter(|(_, (o, _))| *o == inst.id).map(|(p, _)| p.as_str()).collect();
        let start = Instant::now();
        loop {
            let (status, list) = http(inst).json("GET", "/v1/pbx", &tokens.admin, None).await.unwrap();
            assert_eq!(status, 200, "{list}");
            let up: Vec<&str> = list["pbx"].as_array().unwrap().iter().filter(|p| p["state"]["state"] == "up").filter_map(|p| p["id"].as_str()).collect();
            if up == mine {
                break;
            }
            assert!(start.elapsed() < LIMIT, "{}: links {list}, expected {mine:?} up", inst.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn create(inst: &Instance, tokens: &Tokens, account: &str, i: usize) -> (u16, Value) {
    http(inst).json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": account, "extension": extension(i), "pbx": format!("pbx{i}") }))).await.unwrap()
}

/// Create an association for `account` on PBX `i` at its owner and carry it through its proof
/// call to the IVR's code prompt: `(association, code, the IVR call)`.
async fn at_code_prompt(inst: &Instance, tokens: &Tokens, ivr: &mut Ivr, account: &str, i: usize) -> (String, String, IvrCall) {
    let (status, created) = create(inst, tokens, account, i).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let code = created["code"].as_str().unwrap().to_owned();
    let (status, v) = http(inst).json("POST", &format!("/v1/associations/{id}/complete"), &tokens.tenant, None).await.unwrap();
    assert_eq!(status, 202, "{v}");
    let call = timeout(LIMIT, ivr.next_call()).await.expect("the proof call reaches the IVR").unwrap();
    for digits in [None, Some(call.context.as_str()), Some("1")] {
        let (status, r) = ivr_step(&http(inst), &tokens.ivr, &call.call, &call.from, &ivr_number(i), digits).await;
        assert_eq!(status, 200, "{r}");
    }
    (id, code, call)
}

/// Two instances racing to create associations for one account on two PBXs they own: exactly
/// one 201, the other 409 `account_busy`, round after round; once the first ends, the other
/// may create. Then wrong codes on one PBX's owner, up to the account's limit, lock the account
/// out on the other instance too (423), until the admin resets its counters at a third instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_has_one_live_association_and_one_failure_count_across_instances() {
    let Some(Place { s, db, url, dir, tokens }) = place("rules") else { return };
    let (mut sims, toml) = pbxs(3).await;
    let mut instances = Vec::new();
    for id in ["gw-a", "gw-b", "gw-c"] {
        instances.push(instance_with(id, &url, &toml, &dir, &tokens).await);
    }
    let spread = leases_until(s, &db, "one PBX per instance", |l| l.len() == 3 && per_owner(l).len() == 3).await;
    serving(&instances, &spread, &tokens).await;
    let (a, b) = (owner(&instances, &spread, "pbx0"), owner(&instances, &spread, "pbx1"));
    let c = instances.iter().find(|i| i.id != a.id && i.id != b.id).unwrap();
    assert_ne!(a.id, b.id);

    for round in 0..6 {
        let account = format!("erin{round}");
        let ((sa, va), (sb, vb)) = tokio::join!(create(a, &tokens, &account, 0), create(b, &tokens, &account, 1));
        let mut statuses = [sa, sb];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}: {va} {vb}");
        let (won, lost, view, refused) = if sa == 201 { (a, (b, 1), va, vb) } else { (b, (a, 0), vb, va) };
        assert_eq!(refused["code"], "account_busy", "{refused}");
        let id = view["id"].as_str().unwrap();
        // Still busy while the winner lives, at any instance.
        let (status, again) = create(lost.0, &tokens, &account, lost.1).await;
        assert_eq!((status, again["code"].as_str()), (409, Some("account_busy")), "{again}");
        let (status, v) = http(won).json("DELETE", &format!("/v1/associations/{id}"), &tokens.tenant, None).await.unwrap();
        assert_eq!(status, 200, "{v}");
        // Ended: the account is free for the other PBX's owner.
        let (status, v) = create(lost.0, &tokens, &account, lost.1).await;
        assert_eq!(status, 201, "round {round}: after the end of the first: {v}");
        let (status, v) = http(lost.0).json("DELETE", &format!("/v1/associations/{}", v["id"].as_str().unwrap()), &tokens.tenant, None).await.unwrap();
        assert_eq!(status, 200, "{v}");
    }

    // Two wrong codes for frank on pbx0, at its owner: locked out (lockout_after = 2).
    let mut ivr = Ivr::of(&mut sims[0]).unwrap();
    let (id, code, call) = at_code_prompt(a, &tokens, &mut ivr, "frank", 0).await;
    let wrong: Vec<String> = ["000000", "000001", "000002"].iter().filter(|w| **w != code).take(2).map(|w| (*w).to_owned()).collect();
    for w in &wrong {
        let (status, r) = ivr_step(&http(a), &tokens.ivr, &call.call, &call.from, &ivr_number(0), Some(w)).await;
        assert_eq!(status, 200, "{r}");
    }
    ivr.line.hangup(&call.call);
    let (_, v) = http(a).json("GET", &format!("/v1/associations/{id}"), &tokens.tenant, None).await.unwrap();
    assert_eq!((v["state"].as_str(), v["reason"].as_str()), (Some("failed"), Some("locked_out")), "{v}");
    // Its counter in the database counts both, added by the owner of pbx0.
    assert_eq!(s.psql(&db, "SELECT value FROM counters WHERE key = 'acc\u{1f}acme\u{1f}frank'").unwrap(), "2");
    // On pbx1, at another instance, which never saw frank fail: locked out too.
    let (status, v) = create(b, &tokens, "frank", 1).await;
    assert_eq!((status, v["code"].as_str()), (423, Some("locked_out")), "{v}");
    // Reset by the admin at the third instance, which never saw frank at all: free again.
    let (status, v) = http(c).json("POST", "/v1/admin/counters/reset", &tokens.admin, Some(json!({ "account": "frank", "tenant": "acme" }))).await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.psql(&db, "SELECT value FROM counters WHERE key = 'acc\u{1f}acme\u{1f}frank'").unwrap(), "0");
    let (status, v) = create(b, &tokens, "frank", 1).await;
    assert_eq!(status, 201, "after the reset: {v}");
    oracle(&sims);
    stop(&mut instances).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PBX that leaves an instance and comes back: what its other owner changed meanwhile (a
/// binding ended, another made through the real proof call) is what the first instance serves
/// once it owns the PBX again, not what it remembered; and an account's bindings read at any
/// instance come from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_taking_a_pbx_back_serves_what_the_other_owner_changed() {
    let Some(Place { s, db, url, dir, tokens }) = place("takeback") else { return };
    let (mut sims, toml) = pbxs(2).await;
    // carol's bindings on both PBXs, there before any instance starts (every one reads them).
    {
        use cstagate::store::Store;
        let mut store = cstagate::store::PostgresStore::open(&cstagate::store::postgres::PgTarget::parse(&s.url(&db), None).unwrap(), Some(s.password().to_owned())).unwrap();
        let bind = |i: usize| cstagate::association::StoreWrite::Bind(cstagate::association::Binding { tenant: "acme".into(), account: "carol".into(), pbx: format!("pbx{i}").into(), extension: extension(i).into(), did: None, did_verified: false, bound_at: 1 });
        store.apply(&[bind(0), bind(1)]).unwrap();
    }
    let a = instance_with("gw-a", &url, &toml, &dir, &tokens).await;
    leases_until(s, &db, "gw-a owns both PBXs", |l| l.len() == 2 && per_owner(l).get("gw-a") == Some(&2)).await;
    // gw-b starts: gw-a hands one PBX over.
    let b = instance_with("gw-b", &url, &toml, &dir, &tokens).await;
    let spread = leases_until(s, &db, "one PBX each", |l| l.len() == 2 && per_owner(l).len() == 2).await;
    let mut instances = vec![a, b];
    serving(&instances, &spread, &tokens).await;
    let moved = spread.iter().find(|(_, (o, _))| o == "gw-b").map(|(p, _)| p.clone()).unwrap();
    let i: usize = moved.trim_start_matches("pbx").parse().unwrap();
    let (a, b) = (&instances[0], &instances[1]);
    // At gw-b, the PBX's owner now: carol's binding there ends, and dave binds the extension
    // through the proof call.
    let (status, v) = http(b).json("DELETE", &format!("/v1/bindings/{moved}/{}?account=carol", extension(i)), &tokens.tenant, None).await.unwrap();
    assert_eq!(status, 204, "{v}");
    let mut ivr = Ivr::of(&mut sims[i]).unwrap();
    let (_, code, call) = at_code_prompt(b, &tokens, &mut ivr, "dave", i).await;
    let (status, r) = ivr_step(&http(b), &tokens.ivr, &call.call, &call.from, &ivr_number(i), Some(&code)).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["say"].as_str().unwrap_or_default().contains("now linked"), "{r}");
    ivr.line.hangup(&call.call);
    // Read at gw-a, which does not own that PBX: carol's bindings as the database holds them.
    let accounts = |inst: &Instance, account: &str| {
        let http = http(inst);
        let (token, account) = (tokens.tenant.clone(), account.to_owned());
        async move {
            let (status, v) = http.json("GET", &format!("/v1/bindings?account={account}"), &token, None).await.unwrap();
            assert_eq!(status, 200, "{v}");
            let mut pbxs: Vec<String> = v["bindings"].as_array().unwrap().iter().map(|b| b["pbx"].as_str().unwrap().to_owned()).collect();
            pbxs.sort();
            pbxs
        }
    };
    let other = format!("pbx{}", 1 - i);
    assert_eq!(accounts(a, "carol").await, [other.as_str()]);
    assert_eq!(accounts(a, "dave").await, [moved.as_str()]);
    // gw-b stops cleanly: gw-a takes the PBX back.
    let epoch = spread[&moved].1;
    stop(&mut instances[1..]).await;
    leases_until(s, &db, "gw-a owns the PBX again", |l| l.get(&moved).is_some_and(|(o, e)| o == "gw-a" && *e > epoch)).await;
    let a = &instances[0];
    let start = Instant::now();
    loop {
        let (status, v) = http(a).json("GET", &format!("/v1/bindings/{moved}/{}", extension(i)), &tokens.tenant, None).await.unwrap();
        if status == 200 && v["account"] == "dave" {
            break;
        }
        assert!(start.elapsed() < LIMIT, "gw-a serves {moved} again with {status} {v}, not dave's binding");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And carol's binding on the PBX it kept is still served.
    let (status, v) = http(a).json("GET", &format!("/v1/bindings/{other}/{}", extension(1 - i)), &tokens.tenant, None).await.unwrap();
    assert_eq!((status, v["account"].as_str()), (200, Some("carol")), "{v}");
    oracle(&sims);
    stop(&mut instances).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stop each still running instance cleanly (SIGTERM), waiting for it to exit.
async fn stop(instances: &mut [Instance]) {
    for i in instances {
        let Some(pid) = i.child.id() else { continue };
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        let _ = timeout(LIMIT, i.child.wait()).await;
    }
}

