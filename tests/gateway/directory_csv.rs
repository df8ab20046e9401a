//! The directory search with the `names` of the configuration and a `directory_csv` file, on
//! the real gateway: found by name without regard to case and accents, merged with the
//! configuration's names first, never outside the `extensions` ranges, the file re-read when it
//! changes, malformed rows skipped and counted, a file too big refused (with a log line) while
//! the last good copy is served; a tenant reaches its own PBX only, and the query is checked.

use std::time::Duration;

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{local_secrets, Http, LocalGateway, LocalOptions};
use serde_json::Value;

use crate::redaction::Captured;

async fn found(http: &Http, token: &str, query: &str) -> Vec<(String, String)> {
    let (s, v) = http.json("GET", &format!("/v1/directory/paris?name={query}"), token, None).await.unwrap();
    assert_eq!(s, 200, "{query}: {v}");
    v.as_array().unwrap().iter().map(|m| (m["extension"].as_str().unwrap().to_owned(), m["name"].as_str().unwrap().to_owned())).collect()
}

/// Poll the API (60 s at most) until `query` finds what `ok` wants.
async fn await_found(http: &Http, token: &str, query: &str, ok: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let f = found(http, token, query).await;
        if ok(&f) {
            return f;
        }
        assert!(tokio::time::Instant::now() < deadline, "{query}: never found what was awaited; last {f:?}");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the API's state, not synchronising
    }
}

async fn csv_state(http: &Http, admin: &str) -> Value {
    let (_, v) = http.json("GET", "/v1/pbx", admin, None).await.unwrap();
    v["pbx"][0]["directory"]["sources"].as_array().unwrap().iter().find(|s| s["kind"] == "csv").cloned().unwrap()
}

fn pair(e: &str, n: &str) -> (String, String) {
    (e.to_owned(), n.to_owned())
}

// One thread: the directory's tasks log where the thread-local subscriber is.
#[tokio::test]
async fn csv_names_are_found_merged_and_reread_when_the_file_changes() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_ansi(false).with_writer(logs.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = std::env::temp_dir().join(format!("cstagate-dircsv-{}-{}", std::process::id(), cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("directory.csv");
    std::fs::write(&file, "extension;name\n2001;Jürgen Müller\n2002;Alice Martin\n2003;CSV Carol\nnot-a-number;Broken Row\n3001;Outside Range\n").unwrap();
    let sim = SimPbx::start(SimConfig::phase3(&["2001"]), "127.0.0.1:0").await.unwrap();
    let pbx = format!("extensions = [\"2000-2099\"]\nnames = {{ \"2003\" = \"Carol Config\" }}\ndirectory_csv = \"{}\"\n", file.display());
    let LocalGateway { running, http, tokens, .. } = LocalGateway::start(&sim, LocalOptions { pbx, ..Default::default() }, local_secrets()).await.unwrap();

    assert_eq!(await_found(&http, &tokens.tenant, "muller", |f| !f.is_empty()).await, [pair("2001", "Jürgen Müller")]);
    assert_eq!(found(&http, &tokens.tenant, "MUELLER").await, [pair("2001", "Jürgen Müller")]);
    assert_eq!(found(&http, &tokens.tenant, "ali%20mar").await, [pair("2002", "Alice Martin")]);
    // The configuration's name wins over the file's; 3001 is outside the ranges.
    assert_eq!(found(&http, &tokens.tenant, "carol").await, [pair("2003", "Carol Config")]);
    assert!(found(&http, &tokens.tenant, "outside").await.is_empty());
    let csv = csv_state(&http, &tokens.admin).await;
    assert_eq!((csv["ok"].as_bool(), csv["entries"].as_u64(), csv["skipped"].as_u64()), (Some(true), Some(4), Some(1)), "{csv}");
    assert!(logs.text().contains("line 5"), "the malformed row is logged by its line: {}", logs.text());

    // Another tenant, an unknown PBX: 404 alike. Bad queries: 400 naming `name`.
    assert_eq!(http.json("GET", "/v1/directory/paris?name=muller", &tokens.other_tenant, None).await.unwrap().0, 404);
    assert_eq!(http.json("GET", "/v1/directory/lyon?name=muller", &tokens.admin, None).await.unwrap().0, 404);
    for bad in ["", "?name=", "?name=%E2%80%AEx", "?name=-%20-", "?name=a&name=b", "?who=x", &format!("?name={}", "a".repeat(65))] {
        let (s, v) = http.json("GET", &format!("/v1/directory/paris{bad}"), &tokens.tenant, None).await.unwrap();
        assert_eq!((s, v["field"].as_str().is_some()), (400, true), "{bad}: {v}");
    }

    // The file changes: the new name is found, the removed one is gone.
    std::fs::write(&file, "2001,Jürgen Müller\n2004,Zoë Weiß\n").unwrap();
    assert_eq!(await_found(&http, &tokens.tenant, "weiss", |f| !f.is_empty()).await, [pair("2004", "Zoë Weiß")]);
    assert!(found(&http, &tokens.tenant, "alice").await.is_empty());

    // Too big: refused whole, said in the log and in /v1/pbx; the last good copy stays.
    let big = vec![b'#'; cstagate::directory::csv::MAX_CSV_BYTES as usize + 1];
    std::fs::write(&file, big).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let csv = loop {
        let csv = csv_state(&http, &tokens.admin).await;
        if csv["ok"] == false {
            break csv;
        }
        assert!(tokio::time::Instant::now() < deadline, "the big file was never refused: {csv}");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the API's state, not synchronising
    };
    assert!(csv["error"].as_str().is_some_and(|e| e.contains("more than")), "{csv}");
    assert!(logs.text().contains("directory file refused"), "{}", logs.text());
    assert_eq!(found(&http, &tokens.tenant, "zoe").await, [pair("2004", "Zoë Weiß")]);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's directory configuration parses, and its regex takes the extension it says out
/// of the number it shows.
#[test]
fn the_readme_directory_configuration_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("```toml\n").filter_map(|b| b.split("```").next()).find(|b| b.contains("ldap_url")).expect("the directory's toml block");
    let c = cstagate::config::Config::parse(block).unwrap_or_else(|e| panic!("README directory block: {e}"));
    let p = c.pbx("paris").unwrap();
    let re = regex::Regex::new(p.ldap_extension_regex.as_deref().unwrap()).unwrap();
    assert_eq!(cstagate::directory::ldap::extension_of(&re, "+33 1 44 00 20 05").as_deref(), Some("2005"));
    assert_eq!(p.ldap_refresh, Some(Duration::from_secs(900)));
    let l = cstagate::directory::csv::parse("2001,Jürgen Müller\n".as_bytes()).unwrap();
    assert_eq!((l.entries[0].extension.as_str(), l.entries[0].name.as_str()), ("2001", "Jürgen Müller"));
}
