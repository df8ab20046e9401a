//! Link benchmarks against the simulator over loopback (figures in BENCHMARKS.md):
//! - `link/events`: events per second through one link, from the simulator's switch to a
//!   subscriber (encode, TCP, framing, decode, routing by cross-reference id, fan-out);
//! - `link/restore-10k`: time from a PBX restart until 10,000 monitors are running again.
//! - before the criterion groups: 100,000 monitored devices across 100 links in this process
//!   (the simulator runs as a separate `cstagate sim-pbx` process so only the gateway is
//!   measured): resident memory and per-device cost.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cstagate::config::LinkProfile;
use cstagate::link::{Link, LinkState, MonitorEvent};
use cstagate::sim::{SimConfig, SimPbx};
use tokio::runtime::Runtime;

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn profile(addr: &str) -> LinkProfile {
    LinkProfile {
        keepalive: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        max_requests_per_second: 1_000_000.0,
        reconnect_min: Duration::from_millis(1),
        reconnect_max: Duration::from_millis(5),
        ..LinkProfile::new("bench", addr, cstagate::codec::Framing::TwoByteLength, cstagate::codec::Dialect::Phase3)
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

struct SimProcess(Child);
impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 100 links × 1,000 monitors against one external simulator process.
fn many_monitors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(39999);
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_cstagate"))
        .args(["sim-pbx", "--listen", &addr, "--extensions", "100000-100999"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim-pbx starts");
    let _sim = SimProcess(child);
    let rt = rt();
    rt.block_on(async {
        // Wait until the simulator listens.
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = rss_kib();
        let t0 = Instant::now();
        let mut links = Vec::new();
        for i in 0..100 {
            let mut p = profile(&addr);
            p.id = format!("pbx{i}");
            links.push(Link::spawn(p));
        }
        let mut monitors = Vec::with_capacity(100_000);
        for l in &links {
            l.wait_for(|s| *s == LinkState::Up).await;
        }
        let mut tasks = Vec::new();
        for l in links.iter().cloned() {
            tasks.push(tokio::spawn(async move {
                let mut ms = Vec::with_capacity(1000);
                for n in 100_000..101_000 {
                    ms.push(l.monitor(&n.to_string()).await.expect("monitor"));
                }
                ms
            }));
        }
        for t in tasks {
            monitors.extend(t.await.expect("task"));
        }
        let took = t0.elapsed();
        let after = rss_kib();
        let total: u64 = links.iter().map(|l| l.stats().monitors).sum();
        eprintln!(
            "link/100k-monitors: {total} monitors on {} links started in {:.2} s; RSS {} KiB before, {} KiB after: {:.1} MiB for all, {:.0} bytes per monitored device",
            links.len(),
            took.as_secs_f64(),
            before,
            after,
            (after.saturating_sub(before)) as f64 / 1024.0,
            (after.saturating_sub(before) * 1024) as f64 / total.max(1) as f64
        );
        drop(monitors);
        for l in &links {
            l.shutdown().await;
        }
    });
}

/// Deliver `iters` events flooded by `sim` for device 2005 through `link` to `mon`; the time it
/// took. Windows of at most 512 events in flight (half the subscriber buffer), so the figure is
/// delivered events, not events dropped for a slow reader.
fn flood(rt: &tokio::runtime::Runtime, sim: &SimPbx, link: &Link, mon: &mut cstagate::link::Monitor, iters: u64) -> Duration {
    rt.block_on(async {
        let dropped0 = link.stats().events_dropped;
        let t0 = Instant::now();
        let mut batch = Vec::with_capacity(512);
        let mut left = iters;
        while left > 0 {
            let window = left.min(512);
            sim.flood_events("2005", window);
            let mut got = 0u64;
            let seen = link.stats().events_dropped;
            while got + (link.stats().events_dropped - seen) < window {
                batch.clear();
                match tokio::time::timeout(Duration::from_millis(500), mon.next_many(&mut batch, 512)).await {
                    Ok(0) => break,
                    Ok(_) => got += batch.iter().filter(|e| matches!(e, MonitorEvent::Event(_))).count() as u64,
                    Err(_) => {}
                }
            }
            left -= window;
        }
        assert_eq!(link.stats().events_dropped, dropped0, "no event may be dropped within a window");
        t0.elapsed()
    })
}

/// A simulator speaking `cfg`'s wire, a link to it with `profile`, device 2005 monitored.
fn monitored(rt: &tokio::runtime::Runtime, cfg: SimConfig, profile: impl FnOnce(&str) -> LinkProfile) -> (SimPbx, Link, cstagate::link::Monitor) {
    rt.block_on(async {
        let sim = SimPbx::start(cfg, "127.0.0.1:0").await.expect("sim");
        let link = Link::spawn(profile(&sim.addr().to_string()));
        link.wait_for(|s| *s == LinkState::Up).await;
        let m = link.monitor("2005").await.expect("monitor");
        (sim, link, m)
    })
}

fn bench(c: &mut Criterion) {
    many_monitors();
    let rt = rt();
    let (sim, link, mut mon) = monitored(&rt, SimConfig::phase3(&["2005"]), profile);
    // The same through a CSTA XML link (ECMA-323 documents with the 8-byte header, a session).
    let (xsim, xlink, mut xmon) = monitored(&rt, SimConfig::xml(&["2005"], cstagate::codec::Framing::XmlHeader), |addr| LinkProfile { xml: Some(cstagate::config::XmlProfile::new()), acse: None, framing: cstagate::codec::Framing::XmlHeader, ..profile(addr) });
    let mut g = c.benchmark_group("link");
    g.throughput(Throughput::Elements(1));
    g.bench_function("events", |b| b.iter_custom(|iters| flood(&rt, &sim, &link, &mut mon, iters)));
    g.bench_function("events-xml", |b| b.iter_custom(|iters| flood(&rt, &xsim, &xlink, &mut xmon, iters)));
    g.finish();

    // 10,000 monitors on one link, restored after each PBX restart.
    let numbers: Vec<String> = (300_000..310_000).map(|n| n.to_string()).collect();
    let (sim2, link2, _mons) = rt.block_on(async {
        let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
        let mut cfg = SimConfig::phase3(&refs);
        cfg.keepalive = None;
        let sim = SimPbx::start(cfg, "127.0.0.1:0").await.expect("sim");
        let link = Link::spawn(profile(&sim.addr().to_string()));
        link.wait_for(|s| *s == LinkState::Up).await;
        let mut ms = Vec::new();
        for n in &numbers {
            ms.push(link.monitor(n).await.expect("monitor"));
        }
        (sim, link, ms)
    });
    let mut g = c.benchmark_group("link");
    g.sample_size(10);
    g.bench_function("restore-10k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Watch from before the restart: a link that is down and up again before
                    // this task looks must not be missed (the state only changes when it drops).
                    let mut st = link2.watch_state();
                    st.borrow_and_update();
                    let t0 = Instant::now();
                    sim2.restart();
                    let _ = st.changed().await;
                    loop {
                        if link2.state() == LinkState::Up && link2.stats().monitors == 10_000 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    total += t0.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
