//! End-to-end association throughput and code-to-binding latency against the simulator, with
//! durable commits (SQLite WAL, synchronous=FULL) — figures in BENCHMARKS.md.
//!
//! Each association: POST /v1/associations, MonitorStart and MakeCall over CSTA to the simulated
//! PBX, its events, four signed IVR webhook requests (context, confirm, code) and then the
//! round's settlement (unbind or cancel). 100 extensions in parallel per round.
//!
//! Then the same on PostgreSQL (`database = "postgres://…"`): a private server started by the
//! test kit (`fsync=on`, the store's `synchronous_commit=on`), over its Unix socket; skipped with
//! a notice where PostgreSQL is not installed.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cstagate::testkit::{drive_many, local_secrets, Ivr, LocalGateway, LocalOptions};
use cstagate::sim::{SimConfig, SimPbx};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    run(&rt, "association", None);
    match cstagate::testkit::postgres::shared() {
        Some(server) => run(&rt, "association/postgres", Some(server.socket_url(&server.database("bench")))),
        None => eprintln!("association/postgres: SKIPPED (no PostgreSQL found)"),
    }
    let _ = c;
}

/// The runs of one backend: `database` is the `[gateway] database` (a fresh SQLite file when
/// `None`); `label` prefixes the figures.
fn run(rt: &tokio::runtime::Runtime, label: &str, database: Option<String>) {
    let exts: Vec<String> = (3000..3100).map(|n| n.to_string()).collect();
    let (mut sim, http, tokens, _running) = rt.block_on(async {
        let refs: Vec<&str> = exts.iter().map(String::as_str).collect();
        let mut cfg = SimConfig::phase3(&refs);
        for e in &mut cfg.extensions {
            e.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::ZERO };
        }
        let sim = SimPbx::start(cfg, "127.0.0.1:0").await.expect("sim");
        let options = LocalOptions { pbx: "extensions = [\"3000-3099\"]\nmax_requests_per_second = 1000000\n".into(), proof_calls_per_hour: Some(1_000_000), db: database.map(Into::into), ..Default::default() };
        let LocalGateway { running, http, tokens, .. } = LocalGateway::start(&sim, options, local_secrets()).await.expect("gateway");
        (sim, http, tokens, running)
    });
    // Throughput: 100 extensions at a time, 20 rounds.
    let mut ivr = Ivr::of(&mut sim).expect("IVR endpoint");
    let report = rt.block_on(drive_many(&http, &mut ivr, &tokens.ivr, &tokens.tenant, &exts, 20)).expect("load");
    eprintln!(
        "{label}/throughput: {} associations in {:.2} s = {:.0} associations/s (100 concurrent; half bound then unbound, half three wrong codes then cancelled)",
        report.outcomes.len(),
        report.elapsed.as_secs_f64(),
        report.outcomes.len() as f64 / report.elapsed.as_secs_f64(),
    );
    let show = |what: &str, lat: &mut Vec<Duration>| {
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        eprintln!("{label}/{what}: code digits → committed binding over {} bindings: p50 {:?}, p99 {:?}, max {:?}", lat.len(), pct(0.50), pct(0.99), lat.last().copied().unwrap_or_default());
    };
    show("latency-under-load", &mut report.code_to_binding.clone());
    // Latency at a moderate load: 10 extensions at a time.
    let report = rt.block_on(drive_many(&http, &mut ivr, &tokens.ivr, &tokens.tenant, &exts[..10], 40)).expect("load");
    show("latency-10-concurrent", &mut report.code_to_binding.clone());
    let report = rt.block_on(drive_many(&http, &mut ivr, &tokens.ivr, &tokens.tenant, &exts[..1], 200)).expect("load");
    show("latency-sequential", &mut report.code_to_binding.clone());
    drop(sim);
    rt.block_on(_running.shutdown());
}

fn configure(c: &mut Criterion) {
    let _ = Throughput::Elements(1);
    bench(c);
}

criterion_group!(benches, configure);
criterion_main!(benches);
