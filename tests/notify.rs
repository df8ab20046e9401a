//! Account notifications reach the tenant's URL, signed; the receiver here is a real HTTP server.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use cstagate::api::{sign, Secrets};
use cstagate::config::Config;
use cstagate::demo::Http;
use cstagate::sim::{SimConfig, SimPbx};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_posted_signed_to_the_tenant() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
    let app = axum::Router::new().route(
        "/hooks/cstagate",
        post(move |h: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let sig = h.get("x-cstagate-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let ok = sig == sign("notify-key", &body);
                let _ = tx.send((if ok { "signed".into() } else { "BAD".into() }, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.ok() });

    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let dir = std::env::temp_dir().join(format!("cstagate-notify-{}", cstagate::gateway::random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n[[tenant]]\nid = \"acme\"\ntoken_env = \"X\"\nnotify_url = \"http://{hook}/hooks/cstagate\"\nnotify_secret_env = \"Y\"\n[[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"2005\"]\nivr_number = \"0800100200\"\nrequire_completion = true\n",
        dir.join("gw.db").display(),
        sim.addr()
    );
    let config = Config::parse(&toml).unwrap();
    let mut secrets = Secrets::default();
    secrets.tenant_tokens.insert("acme".into(), "t".into());
    secrets.notify.insert("acme".into(), cstagate::notify::Target { url: config.tenant[0].notify_url.clone().unwrap(), secret: "notify-key".into() });
    let running = cstagate::server::start(&config, secrets).await.unwrap();
    let http = Http::new(&format!("http://{}", running.addr));
    let (s, v) = http.json("POST", "/v1/associations", "t", Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201);
    let id = v["id"].as_str().unwrap();
    assert_eq!(http.json("DELETE", &format!("/v1/associations/{id}"), "t", None).await.unwrap().0, 200);
    let (sig, n) = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("notified").unwrap();
    assert_eq!(sig, "signed");
    assert_eq!((n["event"].as_str(), n["account"].as_str(), n["association"].as_str()), (Some("cancelled"), Some("alice"), Some(id)));
    running.shutdown().await;
}
