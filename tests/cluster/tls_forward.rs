//! Requests forwarded between instances over HTTPS (`advertise = "https://..."`): they carry the
//! callers' tokens and the cluster's internal token, so a hop that leaves the machine must be
//! encrypted and the owner's certificate checked. Two real instances whose APIs serve HTTPS
//! with certificates of a private CA (drawn at test time): trusting it with
//! `[cluster] advertise_ca`, a create sent to the instance that does not own the PBX is served by
//! its owner; an instance that trusts only the public roots refuses to forward (503 with
//! `Retry-After`, nothing created), never falling back to clear text.

use std::time::Duration;

use cstagate::http_client::Http;
use serde_json::json;

use super::processes::{knows_owner, extension, leases_until, per_owner, place, sims, start_instance_tls, InstanceTls, Place, TTL};
use crate::tls_common::{client_config, install, tmp, Ca};

/// `pbx{i}`'s `[[pbx]]` table, as `processes::instance` writes it.
fn pbx_tables(sims: &[cstagate::sim::SimPbx]) -> String {
    sims.iter().enumerate().map(|(i, sim)| format!("\n[[pbx]]\nid = \"pbx{i}\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"{}\"]\nivr_number = \"08001002{i:02}\"\nreconnect_min = \"20ms\"\n", sim.addr(), extension(i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_over_https_to_an_owner_whose_ca_is_trusted_and_never_in_clear() {
    let Some(Place { s, db, url, dir, tokens }) = place("tlsforward") else { return };
    let sims = sims(2, None).await;
    let ca = Ca::new("cluster CA");
    let ca_file = dir.join("cluster-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let leaf = ca.server("gateway");
    let tls = |trust: bool| InstanceTls { gateway_lines: install(&tmp("tlsforward"), &leaf), advertise_ca: trust.then(|| ca_file.clone()) };
    let pbxs = pbx_tables(&sims);
    // gw-a trusts the private CA; gw-b only the public roots.
    let (tls_a, tls_b) = (tls(true), tls(false));
    let a = start_instance_tls("gw-a", &url, &pbxs, TTL, &dir, &tokens, Some(&tls_a)).await;
    let b = start_instance_tls("gw-b", &url, &pbxs, TTL, &dir, &tokens, Some(&tls_b)).await;
    let leases = leases_until(s, &db, "one PBX each", |l| l.len() == 2 && per_owner(l).len() == 2).await;
    let owned_by = |id: &str| leases.iter().find(|(_, (o, _))| o == id).map(|(p, _)| p.clone()).unwrap();
    let https = |api: &str| Http::with_tls(&format!("https://{api}"), Duration::from_secs(5), Duration::from_secs(30), Some(client_config(&ca, None)));
    let (at_a, at_b) = (https(&a.api), https(&b.api));
    let create = |pbx: &str| json!({ "account": format!("acct-{pbx}"), "extension": extension(pbx.trim_start_matches("pbx").parse().unwrap()), "pbx": pbx });

    // At gw-a, for gw-b's PBX: forwarded over HTTPS (gw-b's certificate checked against the
    // private CA), served by gw-b.
    let theirs = owned_by("gw-b");
    knows_owner(&at_a, &tokens, &theirs, "gw-b").await;
    let (status, v) = at_a.json("POST", "/v1/associations", &tokens.tenant, Some(create(&theirs))).await.unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, seen) = at_b.json("GET", &format!("/v1/associations/{}", v["id"].as_str().unwrap()), &tokens.tenant, None).await.unwrap();
    assert_eq!((status, seen["pbx"].as_str()), (200, Some(theirs.as_str())), "{seen}");

    // At gw-b, for gw-a's PBX: gw-a's certificate is of a CA gw-b does not trust. Refused with
    // 503 and Retry-After, nothing created, nothing sent in clear.
    let mine = owned_by("gw-a");
    knows_owner(&at_b, &tokens, &mine, "gw-a").await;
    let before = s.psql(&db, "SELECT count(*) FROM associations").unwrap();
    let (status, v) = at_b.json("POST", "/v1/associations", &tokens.tenant, Some(create(&mine))).await.unwrap();
    assert_eq!((status, v["code"].as_str()), (503, Some("pbx_not_served")), "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("could not be reached"), "refused for the owner's certificate, not for want of an owner: {v}");
    assert_eq!(s.psql(&db, "SELECT count(*) FROM associations").unwrap(), before, "nothing created through an untrusted hop");
    let _ = std::fs::remove_dir_all(&dir);
}
