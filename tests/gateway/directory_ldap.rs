//! The directory's LDAP source against a real OpenLDAP `slapd`, started here with a throwaway
//! database (`slapadd` loads the entries before it starts): names with accents found by their
//! plain and German spellings, a number `ldap_extension_regex` does not match skipped, an
//! extension outside the PBX's ranges never listed, more entries than one page, the server
//! stopped after a first refresh (the last good copy is served and `GET /v1/pbx` shows the
//! source failing), another tenant's token (404) and the admin's, a refused bind whose error
//! holds no password. Mandatory in CI (`CSTAGATE_REQUIRE_SLAPD=1`); skipped with a notice where
//! `slapd` is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{local_secrets, Http, LocalGateway, LocalOptions};
use serde_json::Value;

use crate::common::require_external;

const SUFFIX: &str = "dc=example,dc=com";
const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
const ROOT_PW: &str = "ldap-root-pw-7f3a9c";
/// The environment variable the gateway reads the bind password from (set once, same value, by
/// every test of this file).
const PW_ENV: &str = "CSTAGATE_TEST_LDAP_PASSWORD";

fn have_slapd() -> bool {
    // `slapadd` comes with `slapd` (it takes no version flag without a configuration).
    require_external("OpenLDAP slapd", "CSTAGATE_REQUIRE_SLAPD", &["slapd", "-VV"], "apt-get install slapd ldap-utils")
}

/// A `slapd` on a loopback port with a throwaway database; killed on drop.
struct Slapd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Slapd {
    /// Write the configuration, load `people` (name, telephone number) with `slapadd`, start it,
    /// and wait until it takes connections (30 s at most).
    fn start(people: &[(String, String)]) -> Slapd {
        let dir = std::env::temp_dir().join(format!("cstagate-slapd-{}-{}", std::process::id(), cstagate::random::id()));
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let schema = "/etc/ldap/schema";
        let conf = format!(
            "include {schema}/core.schema\ninclude {schema}/cosine.schema\ninclude {schema}/inetorgperson.schema\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {d}/slapd.pid\n\
             database mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\nrootdn \"{ROOT_DN}\"\nrootpw {ROOT_PW}\ndirectory {d}/db\n",
            d = dir.display()
        );
        std::fs::write(dir.join("slapd.conf"), conf).unwrap();
        // Values with non-ASCII characters are base64 (`attr:: ...`), as LDIF requires.
        let value = |attr: &str, v: &str| if v.is_ascii() { format!("{attr}: {v}\n") } else { format!("{attr}:: {}\n", base64::engine::general_purpose::STANDARD.encode(v)) };
        let mut ldif = format!("dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\ndn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n");
        for (i, (name, number)) in people.iter().enumerate() {
            ldif.push_str(&format!("dn: uid=u{i},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: u{i}\n{}sn: x\n{}\n", value("cn", name), value("telephoneNumber", number)));
        }
        std::fs::write(dir.join("data.ldif"), ldif).unwrap();
        let out = Command::new("slapadd").arg("-f").arg(dir.join("slapd.conf")).arg("-l").arg(dir.join("data.ldif")).output().unwrap();
        assert!(out.status.success(), "slapadd: {}", String::from_utf8_lossy(&out.stderr));
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            // `-d 0`: in the foreground, so that the test owns the process and kills it.
            let mut child = Command::new("slapd")
                .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0", "-f"])
                .arg(dir.join("slapd.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Slapd { child, port, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20)); // polling a process's state, not synchronising
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("slapd did not start in {}", dir.display());
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pbx_lines(url: &str, extra: &str) -> String {
    format!(
        "extensions = [\"2000-2099\"]\nldap_url = \"{url}\"\nldap_base = \"ou=people,{SUFFIX}\"\nldap_bind_dn = \"{ROOT_DN}\"\nldap_password_env = \"{PW_ENV}\"\n\
         ldap_extension_regex = '(\\d{{4}})$'\nldap_refresh = \"1s\"\nldap_page_size = 5\n{extra}"
    )
}

async fn names(http: &Http, token: &str, query: &str) -> (u16, Vec<(String, String, u64)>) {
    let (s, v) = http.json("GET", &format!("/v1/directory/paris?name={query}"), token, None).await.unwrap();
    let found = v.as_array().map(|a| a.iter().map(|m| (m["extension"].as_str().unwrap_or("").to_owned(), m["name"].as_str().unwrap_or("").to_owned(), m["score"].as_u64().unwrap_or(0))).collect()).unwrap_or_default();
    (s, found)
}

/// The LDAP source's state in `GET /v1/pbx`, once `until` holds of it (60 s at most).
async fn ldap_state(http: &Http, admin: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = http.json("GET", "/v1/pbx", admin, None).await.unwrap();
        let source = v["pbx"][0]["directory"]["sources"].as_array().and_then(|s| s.iter().find(|s| s["kind"] == "ldap").cloned()).unwrap_or(Value::Null);
        if until(&source) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "the LDAP source never reached the state awaited: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the API's state, not synchronising
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_names_are_found_and_the_last_good_copy_outlives_the_server() {
    if !have_slapd() {
        return;
    }
    // SAFETY: the variable is only ever set to this value, by the tests of this file.
    unsafe { std::env::set_var(PW_ENV, ROOT_PW) };
    let mut people: Vec<(String, String)> = vec![
        ("Jürgen Müller".into(), "+33 1 44 00 20 01".into()),
        ("Élodie Durand".into(), "+33 1 44 00 20 02".into()),
        ("Bob Outside".into(), "+33 1 44 00 99 99".into()),
        ("No Number".into(), "reception".into()),
    ];
    // More entries than two pages of 5.
    people.extend((10..22).map(|i| (format!("Staff Member{i}"), format!("20{i}"))));
    let mut slapd = Slapd::start(&people);
    let sim = SimPbx::start(SimConfig::phase3(&["2001"]), "127.0.0.1:0").await.unwrap();
    let options = LocalOptions { pbx: pbx_lines(&slapd.url(), ""), ..Default::default() };
    let LocalGateway { running, http, tokens, .. } = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();

    // Wait for the first refresh: every entry read (13 of them usable), two skipped.
    let v = ldap_state(&http, &tokens.admin, |s| s["ok"] == true).await;
    let ldap = v["pbx"][0]["directory"]["sources"][0].clone();
    assert_eq!((ldap["entries"].as_u64(), ldap["skipped"].as_u64()), (Some(15), Some(1)), "{v}");
    assert_eq!(v["pbx"][0]["directory"]["entries"], 14, "Bob's 9999 is outside 2000-2099: {v}");

    for query in ["muller", "Mueller", "M%C3%BCller", "j%C3%BCr"] {
        let (s, found) = names(&http, &tokens.tenant, query).await;
        assert_eq!(s, 200);
        assert_eq!(found.first().map(|f| (f.0.as_str(), f.1.as_str())), Some(("2001", "Jürgen Müller")), "{query}");
    }
    assert_eq!(names(&http, &tokens.tenant, "elo").await.1, [("2002".to_owned(), "Élodie Durand".to_owned(), 70)]);
    assert!(names(&http, &tokens.tenant, "bob").await.1.is_empty(), "outside the ranges: never listed");
    assert!(names(&http, &tokens.tenant, "number").await.1.is_empty(), "no extension in its number: skipped");
    // Every page was read: the last entries are there, and at most 10 come back.
    assert_eq!(names(&http, &tokens.tenant, "member21").await.1, [("2021".to_owned(), "Staff Member21".to_owned(), 90)]);
    assert_eq!(names(&http, &tokens.tenant, "staff").await.1.len(), 10);

    // Another tenant does not see this PBX; the admin does.
    assert_eq!(names(&http, &tokens.other_tenant, "muller").await.0, 404);
    assert_eq!(names(&http, &tokens.admin, "muller").await.1.len(), 1);

    // The server goes away: the source says so, the last good copy is still served.
    slapd.stop();
    let v = ldap_state(&http, &tokens.admin, |s| s["ok"] == false).await;
    let ldap = &v["pbx"][0]["directory"]["sources"][0];
    assert!(ldap["error"].as_str().is_some_and(|e| e.contains("connect")), "{v}");
    assert!(ldap["last_refresh"].as_u64().is_some(), "the copy served is dated: {v}");
    assert_eq!(v["pbx"][0]["directory"]["entries"], 14);
    assert_eq!(names(&http, &tokens.tenant, "muller").await.1.len(), 1);
    assert!(!v.to_string().contains(ROOT_PW));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bind_is_shown_without_the_password() {
    if !have_slapd() {
        return;
    }
    // SAFETY: as above; the other variable is this test's alone.
    unsafe { std::env::set_var("CSTAGATE_TEST_LDAP_WRONG_PASSWORD", "wrong-pw-51c0de") };
    let slapd = Slapd::start(&[("Alice Martin".into(), "2005".into())]);
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let lines = pbx_lines(&slapd.url(), "").replace(PW_ENV, "CSTAGATE_TEST_LDAP_WRONG_PASSWORD");
    let LocalGateway { running, http, tokens, .. } = LocalGateway::start(&sim, LocalOptions { pbx: lines, ..Default::default() }, local_secrets()).await.unwrap();
    let v = ldap_state(&http, &tokens.admin, |s| s["error"].is_string()).await;
    let ldap = &v["pbx"][0]["directory"]["sources"][0];
    assert_eq!((ldap["ok"].as_bool(), ldap["last_refresh"].is_null()), (Some(false), true), "{v}");
    assert!(ldap["error"].as_str().is_some_and(|e| e.contains("bind") && !e.contains("wrong-pw-51c0de")), "{v}");
    assert!(names(&http, &tokens.tenant, "alice").await.1.is_empty());
    running.shutdown().await;
}
