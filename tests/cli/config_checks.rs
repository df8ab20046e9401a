//! A configuration that would hurt stops the start with the key's name: values of the right type
//! that make no sense (table-driven over `Config::parse`), wrong types named by their full key
//! path, and secrets that are missing or empty — through `PbxConfig::profile` for files and
//! through the real `cstagate run` for environment variables, whose value never shows.

use std::path::PathBuf;
use std::time::Duration;

use cstagate::config::Config;

/// A valid configuration with one tenant and one PBX bound to it, with lines added to its
/// `[gateway]`, `[[tenant]]` and `[[pbx]]` tables (the PBX's `tenant` key is in `pbx`).
fn config(gateway: &str, tenant: &str, pbx: &str) -> String {
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n{gateway}\n\
         [[tenant]]\nid = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n{tenant}\n\
         [[pbx]]\nid = \"paris\"\naddress = \"127.0.0.1\"\ndialect = \"phase3\"\nivr_number = \"0800100200\"\nextensions = [\"2000-2009\"]\n{pbx}\n"
    )
}

const BOUND: &str = "tenant = \"acme\"\n";

#[test]
fn each_refused_value_names_its_key() {
    let second_pbx = "tenant = \"acme\"\n[[pbx]]\nid = \"lyon\"\naddress = \"h\"\ndialect = \"oxe\"\nkeepalive = 30\n";
    // (what is wrong, the configuration, what the error must name)
    let cases: Vec<(&str, String, &str)> = vec![
        ("a tenant no [[tenant]] defines", config("", "", "tenant = \"acme-corp\"\n"), "`tenant`"),
        ("no API connection at all", config("max_connections = 0", "", BOUND), "`max_connections`"),
        ("no time to send headers", config("header_timeout = \"0s\"", "", BOUND), "`header_timeout`"),
        ("a proof call that never rings", config("", "", "tenant = \"acme\"\nring_timeout = \"0s\"\n"), "`ring_timeout`"),
        ("a proof call ringing over 5 minutes", config("", "", "tenant = \"acme\"\nring_timeout = \"301s\"\n"), "`ring_timeout`"),
        ("no proof call allowed", config("", "", "tenant = \"acme\"\nproof_calls_per_hour = 0\n"), "`proof_calls_per_hour`"),
        ("more than 20 proof calls an hour", config("", "", "tenant = \"acme\"\nproof_calls_per_hour = 21\n"), "`proof_calls_per_hour`"),
        ("two tenants with one id", format!("{}[[tenant]]\nid = \"acme\"\ntoken_env = \"OTHER\"\n", config("", "", BOUND)), "`id`"),
        ("notifications nobody can check", config("", "notify_url = \"https://app/events\"", BOUND), "`notify_secret_env`"),
        // Wrong types: the full path of the key, not only its table.
        ("a duration without its unit", config("", "", "tenant = \"acme\"\nring_timeout = 5\n"), "pbx[0].ring_timeout"),
        ("a count in words", config("max_connections = \"many\"", "", BOUND), "gateway.max_connections"),
        ("a count in quotes", config("", "", "tenant = \"acme\"\nproof_calls_per_hour = \"3\"\n"), "pbx[0].proof_calls_per_hour"),
        ("a list as a number", config("", "", "tenant = \"acme\"\nextensions = 2005\n").replace("extensions = [\"2000-2009\"]\n", ""), "pbx[0].extensions"),
        ("a name as a number", config("", "", "tenant = \"acme\"\nnames = { \"2005\" = 5 }\n"), "pbx[0].names.2005"),
        ("a variable name as a number", config("", "token_env = 5", BOUND).replace("token_env = \"ACME_TOKEN\"\n", ""), "tenant[0].token_env"),
        ("the second PBX's key", config("", "", second_pbx), "pbx[1].keepalive"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(what, text, key)| refused_naming(what, text, key))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The limits themselves are allowed.
    for pbx in ["tenant = \"acme\"\nring_timeout = \"5m\"\nproof_calls_per_hour = 20\n", "tenant = \"acme\"\nring_timeout = \"1s\"\nproof_calls_per_hour = 1\n", ""] {
        let text = config("max_connections = 1", "", pbx);
        assert!(Config::parse(&text).is_ok(), "{text}");
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-config-checks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_or_empty_password_file_names_the_file() {
    let dir = tmp("file");
    let file = dir.join("paris-password");
    let text = config("", "", &format!("acse_user = \"CTI\"\nacse_password_file = \"{}\"\n", file.display()));
    let c = Config::parse(&text).unwrap();
    for content in [None, Some(""), Some("\n"), Some("\r\n")] {
        if let Some(content) = content {
            std::fs::write(&file, content).unwrap();
        }
        let e = c.pbx("paris").unwrap().profile().unwrap_err().to_string();
        assert!(e.contains("acse_password_file") && e.contains(&file.display().to_string()), "{content:?}: {e}");
    }
    std::fs::write(&file, "s3cret\n").unwrap();
    assert!(c.pbx("paris").unwrap().profile().is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cstagate run --config` with these environment variables (and no other `*_TOKEN`-like ones):
/// exit code and stderr.
async fn run(name: &str, text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tmp(name);
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text.replace("[gateway]\n", &format!("[gateway]\ndatabase = \"{}\"\n", dir.join("gw.db").display()))).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cstagate"));
    cmd.arg("run").arg("--config").arg(&path).env_remove("RUST_LOG").kill_on_drop(true);
    for var in ["ADMIN_TOKEN", "IVR_SECRET", "ACME_TOKEN", "GLOBEX_TOKEN", "ACME_NOTIFY", "PARIS_PASSWORD"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    // Every case is refused before anything is served, so the process ends by itself; a
    // gateway that started anyway is killed and fails the case.
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.map_err(|_| format!("{name}: the gateway started")).unwrap().expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn cstagate_run_refuses_missing_or_empty_secrets_naming_the_variable() {
    let gateway = "admin_token_env = \"ADMIN_TOKEN\"\nivr_secret_env = \"IVR_SECRET\"";
    let tenant = "notify_url = \"http://127.0.0.1:9/events\"\nnotify_secret_env = \"ACME_NOTIFY\"\nallow_plain_http = true";
    let pbx = "tenant = \"acme\"\nacse_user = \"CTI\"\nacse_password_env = \"PARIS_PASSWORD\"\n";
    let text = format!("{}[[tenant]]\nid = \"globex\"\ntoken_env = \"GLOBEX_TOKEN\"\n", config(gateway, tenant, pbx));
    let good = [
        ("ADMIN_TOKEN", "admin-token-1"),
        ("IVR_SECRET", "ivr-secret-2"),
        ("ACME_TOKEN", "acme-token-3"),
        ("GLOBEX_TOKEN", "globex-token-4"),
        ("ACME_NOTIFY", "notify-secret-5"),
        ("PARIS_PASSWORD", "paris-password-6"),
    ];
    for (i, (var, _)) in good.iter().enumerate() {
        for (case, value) in [("missing", None), ("empty", Some("")), ("blank", Some(" \n"))] {
            let env: Vec<(&str, &str)> = good.iter().filter(|(v, _)| v != var).copied().chain(value.map(|v| (*var, v))).collect();
            let (code, err) = run(&format!("{i}-{case}"), &text, &env).await;
            assert_eq!(code, Some(5), "{var} {case}: {err}");
            assert!(err.contains(var), "{var} {case}: the error does not name the variable: {err}");
            for (_, secret) in &good {
                assert!(!err.contains(secret), "{var} {case}: a secret is in the error: {err}");
            }
        }
    }
    // Two principals with one token: the API could not tell them apart.
    let env: Vec<(&str, &str)> = good.iter().map(|&(v, s)| if v == "GLOBEX_TOKEN" { (v, "acme-token-3") } else { (v, s) }).collect();
    let (code, err) = run("same-token", &text, &env).await;
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("GLOBEX_TOKEN") && err.contains("ACME_TOKEN") && !err.contains("acme-token-3"), "{err}");
}

/// SIGTERM (a service manager's stop, `kill`) stops `cstagate run` cleanly, exit code 0, as Ctrl-C
/// does; without a handler the process died of the signal.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_gateway_cleanly() {
    use tokio::io::AsyncBufReadExt;
    let dir = tmp("sigterm");
    let path = dir.join("gateway.toml");
    let text = config("", "", BOUND).replace("[gateway]\n", &format!("[gateway]\ndatabase = \"{}\"\n", dir.join("gw.db").display()));
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cstagate"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("ACME_TOKEN", "acme-token")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let up = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("the gateway starts").unwrap().unwrap_or_default();
    assert!(up.contains("gateway API on"), "{up}");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("it stops").unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `[[pbx]]` TLS keys: refused combinations name their key at parse time; the files are read
/// when the link's profile is built (as `cstagate run` and `probe` do before anything starts),
/// and a missing or wrong one names its key and its path.
#[test]
fn the_tls_keys_are_checked_and_their_files_read_naming_key_and_path() {
    let pki = crate::csta_tls_pki::Pki::new("config");
    let cases = [
        ("a CA without tls", "tls_ca = \"/x/ca.pem\"\n", "`tls_ca`"),
        ("a server name without tls", "tls_server_name = \"pbx.example\"\n", "`tls_server_name`"),
        ("a client certificate without tls", "tls_cert = \"/x/c.pem\"\ntls_key = \"/x/c.key\"\n", "`tls_cert`"),
        ("a client certificate without its key", "tls = true\ntls_cert = \"/x/c.pem\"\n", "`tls_key`"),
        ("a key without its certificate", "tls = true\ntls_key = \"/x/c.key\"\n", "`tls_cert`"),
        ("a server name that is not one", "tls = true\ntls_server_name = \"not a name\"\n", "`tls_server_name`"),
        ("tls as a word", "tls = \"yes\"\n", "pbx[0].tls"),
    ];
    for (what, lines, key) in cases {
        let e = Config::parse(&config("", "", lines)).map(|_| ()).expect_err(what).to_string();
        assert!(e.contains(key), "{what}: the error does not name {key}: {e}");
    }

    let missing = pki.dir.join("nothing.pem");
    let d = |p: &std::path::Path| p.display().to_string();
    let files = [
        ("a CA file that is not there", format!("tls = true\ntls_ca = \"{}\"\n", d(&missing)), "`tls_ca`", d(&missing)),
        ("a CA file without a certificate", format!("tls = true\ntls_ca = \"{}\"\n", d(&pki.client_key)), "`tls_ca`", d(&pki.client_key)),
        ("a key file without a key", pki.pbx_lines(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", d(&pki.client_cert), d(&pki.client_cert))), "`tls_key`", d(&pki.client_cert)),
        ("a key of another certificate", pki.pbx_lines(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", d(&pki.client_cert), d(&pki.other_client_key))), "`tls_key`", d(&pki.other_client_key)),
        ("a client certificate file that is not there", pki.pbx_lines(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", d(&missing), d(&pki.client_key))), "`tls_cert`", d(&missing)),
    ];
    for (what, lines, key, path) in files {
        let c = Config::parse(&config("", "", &lines)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let e = c.pbx("paris").unwrap().profile().map(|_| ()).expect_err(what).to_string();
        assert!(e.contains(key) && e.contains(&path), "{what}: {e}");
        assert!(!e.contains("PRIVATE KEY"), "{what}: no key material in the error: {e}");
    }

    // Valid: the server name is the host of `address` by default (an IP address here), or named.
    let c = Config::parse(&config("", "", &pki.pbx_lines(&pki.client_lines()))).unwrap();
    let p = c.pbx("paris").unwrap().profile().unwrap();
    let tls = p.tls.expect("a TLS link");
    assert_eq!((tls.name(), tls.client_cert, p.address.as_str()), ("127.0.0.1".to_owned(), true, "127.0.0.1:33333"), "the preset's port stays the plain one");
    let c = Config::parse(&config("", "", &pki.pbx_lines("tls_server_name = \"pbx.example\"\n"))).unwrap();
    assert_eq!(c.pbx("paris").unwrap().profile().unwrap().tls.map(|t| (t.name(), t.client_cert)), Some(("pbx.example".to_owned(), false)));
    // No TLS by default.
    assert!(Config::parse(&config("", "", "")).unwrap().pbx("paris").unwrap().profile().unwrap().tls.is_none());
}

/// Notifications travel encrypted unless the tenant says otherwise, and the code out of band
/// only over HTTPS: each refusal names its key; `notify_ca` is read and checked at load.
#[test]
fn plain_http_notifications_need_allow_plain_http_and_the_code_out_of_band_needs_https() {
    let dir = std::env::temp_dir().join(format!("cstagate-notify-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&ca, p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let missing = dir.join("missing.pem");
    let signed = "notify_secret_env = \"ACME_NOTIFY\"\n";
    let tenant = |lines: &str| config("", &format!("{signed}{lines}"), BOUND);
    let refused: Vec<(&str, String, &str)> = vec![
        ("plain http by default", tenant("notify_url = \"http://app/events\""), "`notify_url`"),
        ("plain http, explicitly not allowed", tenant("notify_url = \"http://app/events\"\nallow_plain_http = false"), "`notify_url`"),
        ("another scheme", tenant("notify_url = \"ftp://app/events\""), "`notify_url`"),
        ("no host", tenant("notify_url = \"https:///events\""), "`notify_url`"),
        ("the code in clear", tenant("notify_url = \"http://app/events\"\nallow_plain_http = true\ncode_delivery = \"notify\""), "`code_delivery`"),
        ("the code to nowhere", config("", "code_delivery = \"notify\"", BOUND), "`code_delivery`"),
        ("an unknown way", tenant("notify_url = \"https://app/events\"\ncode_delivery = \"sms\""), "tenant[0].code_delivery"),
        ("a CA file that is not there", tenant(&format!("notify_url = \"https://app/events\"\nnotify_ca = \"{}\"", missing.display())), "`notify_ca`"),
        ("a CA file that is not PEM", tenant(&format!("notify_url = \"https://app/events\"\nnotify_ca = \"{}\"", not_pem.display())), "`notify_ca`"),
        ("a CA without notifications", config("", &format!("notify_ca = \"{}\"", ca.display()), BOUND), "`notify_ca`"),
    ];
    let accepted = [
        ("https", tenant("notify_url = \"https://app.example.com/events\"")),
        ("plain http allowed", tenant("notify_url = \"http://127.0.0.1:9000/events\"\nallow_plain_http = true")),
        ("the code out of band over https, with a CA file", tenant(&format!("notify_url = \"https://app/events\"\nnotify_ca = \"{}\"\ncode_delivery = \"notify\"", ca.display()))),
        ("the code in the answer, said", tenant("notify_url = \"https://app/events\"\ncode_delivery = \"api\"")),
    ];
    let mut wrong: Vec<String> = refused
        .iter()
        .filter_map(|(what, text, key)| refused_naming(what, text, key))
        .collect();
    for (what, text) in &accepted {
        if let Err(e) = Config::parse(text) {
            wrong.push(format!("{what}: refused: {e}"));
        }
    }
    // The tenant's way reaches the engine's policy.
    let c = Config::parse(&accepted[2].1).unwrap();
    assert_eq!(c.policies().unwrap()["paris"].code_delivery, cstagate::association::CodeDelivery::Notify);
    assert_eq!(Config::parse(&accepted[0].1).unwrap().policies().unwrap()["paris"].code_delivery, cstagate::association::CodeDelivery::Api);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A file that must be refused with an error naming `key`: what is wrong with how it was
/// handled, or `None`.
fn refused_naming(what: &str, text: &str, key: &str) -> Option<String> {
    match Config::parse(text) {
        Ok(_) => Some(format!("{what}: accepted")),
        Err(e) if !e.to_string().contains(key) => Some(format!("{what}: the error does not name {key}: {e}")),
        Err(_) => None,
    }
}
