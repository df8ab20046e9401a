//! The Grafana dashboard (`contrib/grafana/cstagate.json`) uses only metrics that `/metrics`
//! serves: a real gateway next to the simulated PBX binds an extension (so the association
//! families have samples), then every metric name in every panel's PromQL and in the template
//! variables must be one that its `/metrics` lists.

use std::collections::BTreeSet;
use std::time::Duration;

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{drive_many, local_secrets, Ivr, LocalGateway, LocalOptions};
use regex::Regex;
use serde_json::Value;

use crate::common;

/// The panels the issue asks for, by title.
const PANELS: [&str; 6] = ["PBX links up", "Events per second per PBX", "Associations by outcome", "Code to binding latency", "Decode errors", "Notification drops"];

/// The metric names a PromQL expression uses, parsed roughly: string literals, label matchers
/// `{...}`, ranges `[...]` and the label lists of `by`/`without`/`on`/`ignoring`/`group_*` are
/// dropped; of the identifiers left, those followed by `(` are functions or aggregations and the
/// keywords are operators; the rest are metric names. `label_values(metric, label)` (a template
/// variable's query) yields its metric.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let label_values = Regex::new(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)").expect("regex");
    for c in label_values.captures_iter(expr) {
        out.insert(c[1].to_owned());
    }
    let expr = label_values.replace_all(expr, " ");
    let mut s = Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"#).expect("regex").replace_all(&expr, "").into_owned();
    for re in [r"\{[^}]*\}", r"\[[^\]]*\]", r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"] {
        s = Regex::new(re).expect("regex").replace_all(&s, " ").into_owned();
    }
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").expect("regex");
    for m in ident.find_iter(&s) {
        let before = s[..m.start()].chars().next_back();
        // Part of a number (1e3) or of a `$variable`.
        if before.is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '$') {
            continue;
        }
        if s[m.end()..].trim_start().starts_with('(') {
            continue;
        }
        if ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan", "Inf", "NaN"].contains(&m.as_str()) {
            continue;
        }
        out.insert(m.as_str().to_owned());
    }
    out
}

/// The names a scrape serves: every sample's name, and each family's names from its `# TYPE`
/// line (a family with no samples yet, such as a tenant's notifications, still counts):
/// `_total` for counters, `_bucket`/`_sum`/`_count` for histograms.
fn served(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn the_promql_parser_finds_metrics_and_nothing_else() {
    let got = metric_names(r#"histogram_quantile(0.9, sum by (le, pbx) (rate(a_bucket{pbx=~"$pbx", x="y(z)"}[$__rate_interval]))) / on(pbx) group_left b + 1e3 * c offset 5m"#);
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ["a_bucket", "b", "c"]);
    assert_eq!(metric_names("label_values(cstagate_link_up, pbx)").into_iter().collect::<Vec<_>>(), ["cstagate_link_up"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_uses_is_served() {
    let text = std::fs::read_to_string(common::path("contrib/grafana/cstagate.json")).expect("contrib/grafana/cstagate.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // Importable anywhere: the Prometheus data source is an input chosen at import.
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS", "data source input");
    let panels = dash["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in PANELS {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }
    // (where, expression) of every query.
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}'s data source");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("panel {title} has no query"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            exprs.push((format!("panel {title:?}"), expr.to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }

    // A real gateway that has bound an extension (and ended one association otherwise), so
    // that the association families have samples, with account notifications for tenant acme
    // (so that the tenant families exist) to an address where nothing listens.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let url = format!("http://{nowhere}/hooks/cstagate");
    let mut secrets = local_secrets();
    secrets.notify.insert("acme".into(), cstagate::notify::Target { url: url.clone(), secret: "notify-key".into(), ca: Vec::new() });
    let options = LocalOptions {
        tenant: format!("notify_url = \"{url}\"\nnotify_secret_env = \"UNUSED\"\nallow_plain_http = true\n"),
        pbx: "extensions = [\"2005\"]\n".into(),
        ..Default::default()
    };
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.expect("simulated PBX");
    let gw = LocalGateway::start(&sim, options, secrets).await.expect("gateway");
    let mut ivr = Ivr::of(&mut sim).expect("IVR endpoint");
    let report = tokio::time::timeout(Duration::from_secs(120), drive_many(&gw.http, &mut ivr, &gw.tokens.ivr, &gw.tokens.tenant, &["2005".to_owned()], 2)).await.expect("in time").expect("associations run");
    assert!(!report.code_to_binding.is_empty(), "an extension was bound");
    // Ends are counted once committed: wait for the bound one to show in the latency histogram.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = gw.http.raw("GET", "/metrics", &[], None).await.expect("GET /metrics");
        assert_eq!(status, 200);
        let metrics = String::from_utf8_lossy(&body).into_owned();
        let bound = metrics.lines().find_map(|l| l.strip_prefix("cstagate_association_code_to_bound_seconds_count ")).and_then(|v| v.trim().parse::<f64>().ok());
        if bound.is_some_and(|n| n >= 1.0) {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "no binding in cstagate_association_code_to_bound_seconds_count after 30 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let served = served(&metrics);

    let mut used = BTreeSet::new();
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr:?}");
        for n in names {
            assert!(served.contains(&n), "{place} uses {n}, which /metrics does not serve (expression {expr:?}); served: {served:?}");
            used.insert(n);
        }
    }
    // The issue's six subjects are each shown.
    for m in ["cstagate_link_up", "cstagate_link_events_in_total", "cstagate_associations_ended_total", "cstagate_association_code_to_bound_seconds_bucket", "cstagate_link_decode_errors_total", "cstagate_notifications_dropped_total", "cstagate_link_events_dropped_total"] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
    drop(ivr);
    drop(sim);
    gw.running.shutdown().await;
}
