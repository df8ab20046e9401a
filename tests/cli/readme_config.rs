//! The configuration shown in the README parses and yields the documented policy (so the
//! README stays true).

use cstagate::association::ContextDelivery;
use cstagate::config::{Config, Preset};

#[test]
fn the_readme_configuration_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
    let c = Config::parse(block).unwrap_or_else(|e| panic!("README config: {e}"));
    assert_eq!(c.gateway.fastagi_listen.as_deref(), Some("10.0.0.2:4573"));
    let p = c.pbx("paris").unwrap();
    assert_eq!(p.dialect, Preset::Oxe);
    let pol = &c.policies().unwrap()["paris"];
    assert_eq!((pol.tenant.as_str(), pol.context_delivery, pol.code_digits, pol.lockout_after), ("acme", ContextDelivery::DialSuffix, 6, 100));
    assert_eq!(pol.directory.len(), 101);
    assert_eq!(pol.directory["2005"].as_deref(), Some("Alice Martin"));
    assert_eq!(pol.language, "fr-FR");
    // The languages block (IVR adapters): a French PBX, an override, FastAGI files per language.
    let lang = readme.split("```toml\n").filter_map(|b| b.split("```").next()).find(|b| b.contains("[prompts.\"fr-FR\"]")).expect("the languages block");
    let text = format!("[[tenant]]\nid = \"acme\"\ntoken_env = \"T\"\n{lang}");
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("README languages block: {e}"));
    let pol = &c.policies().unwrap()["lyon"];
    assert_eq!(pol.prompts.render(&pol.language, "bound", &[("account", "alice")]), "C'est fait : ce téléphone est relié au compte alice. Au revoir.");
    let files = c.fastagi_files(&c.prompts().unwrap()).unwrap();
    assert_eq!((files.all.len(), files.by_language["fr-FR"]["enter_code"].as_str()), (1, "fr/enter-code"));
    // The second block: link settings, valid inside a [[pbx]] table.
    let link = readme.split("```toml\n").nth(2).and_then(|b| b.split("```").next()).expect("link settings block");
    let text = format!("[[pbx]]\nid = \"x\"\naddress = \"h\"\ndialect = \"phase3\"\n{link}");
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("README link settings: {e}"));
    assert_eq!(c.pbx[0].max_requests_per_second, 2.0);
    // The third block: a CSTA XML PBX.
    let xml = readme.split("```toml\n").nth(3).and_then(|b| b.split("```").next()).expect("CSTA XML block");
    let c = Config::parse(xml).unwrap_or_else(|e| panic!("README CSTA XML block: {e}"));
    let p = c.pbx("munich").unwrap();
    assert_eq!(p.dialect, Preset::Mxone);
    assert_eq!(p.acse_password_env.as_deref(), Some("MUNICH_CTI_PASSWORD"));
    // The password from a file instead (no process-wide environment change in a test).
    let dir = std::env::temp_dir().join(format!("cstagate-readme-xml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), "pw\n").unwrap();
    let mut p = p.clone();
    p.acse_password_env = None;
    p.acse_password_file = Some(dir.join("pw"));
    let prof = p.profile().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((prof.address.as_str(), prof.framing, prof.acse.is_none()), ("10.0.0.7:8882", cstagate::codec::Framing::XmlHeader, true));
    let x = prof.xml.expect("an XML profile");
    assert_eq!((x.application_id.as_str(), x.session_duration.as_secs(), x.session), ("cstagate", 180, true));
    assert_eq!(x.login.map(|l| (l.user, l.password.expose().clone())), Some(("cti".into(), bytes::Bytes::from_static(b"pw"))));
    // The fourth block: CSTA over TLS (its files are read only when the profile is built).
    let tls = readme.split("```toml\n").nth(4).and_then(|b| b.split("```").next()).expect("CSTA over TLS block");
    let c = Config::parse(tls).unwrap_or_else(|e| panic!("README CSTA over TLS block: {e}"));
    let p = c.pbx("munich").unwrap();
    assert!(p.tls && p.tls_cert.is_some() && p.tls_key.is_some(), "{p:?}");
    assert_eq!((p.address.as_str(), p.tls_server_name.as_deref()), ("pbx.example:8883", Some("pbx.example")));
    let e = p.profile().map(|_| ()).expect_err("the README's files are not on this machine").to_string();
    assert!(e.contains("tls_ca") && e.contains("/etc/cstagate/pbx-ca.pem"), "{e}");
}
