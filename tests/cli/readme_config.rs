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
    // The second block: link settings, valid inside a [[pbx]] table.
    let link = readme.split("```toml\n").nth(2).and_then(|b| b.split("```").next()).expect("link settings block");
    let text = format!("[[pbx]]\nid = \"x\"\naddress = \"h\"\ndialect = \"phase3\"\n{link}");
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("README link settings: {e}"));
    assert_eq!(c.pbx[0].max_requests_per_second, 2.0);
}
