//! `[cluster]`: its keys checked at load, each refusal naming its key; refused without a
//! `postgres://` database; absent, nothing changes.

use std::time::Duration;

use cstagate::config::Config;

const PG: &str = "[gateway]\ndatabase = \"postgres://cstagate@127.0.0.1:5432/gw\"\n";

fn cluster(gateway: &str, keys: &str) -> String {
    format!("{gateway}[cluster]\n{keys}\n")
}

#[test]
fn the_cluster_keys_are_read_with_a_ten_second_lease_by_default() {
    let c = Config::parse(&cluster(PG, "instance_id = \"gw-a\"\nadvertise = \"http://10.0.0.5:8080\"\ninternal_token_env = \"CLUSTER_TOKEN\"")).unwrap();
    let k = c.cluster.unwrap();
    assert_eq!((k.instance_id.as_str(), k.advertise.as_str(), k.lease_ttl, k.internal_token_env.as_deref()), ("gw-a", "http://10.0.0.5:8080", Duration::from_secs(10), Some("CLUSTER_TOKEN")));
    let c = Config::parse(&cluster(PG, "instance_id = \"gw-b\"\nadvertise = \"https://gw-b.internal\"\nlease_ttl = \"4s\"")).unwrap();
    assert_eq!(c.cluster.unwrap().lease_ttl, Duration::from_secs(4));
    // Without [cluster]: none, on SQLite as on PostgreSQL.
    assert!(Config::parse(PG).unwrap().cluster.is_none());
    assert!(Config::parse("").unwrap().cluster.is_none());
}

#[test]
fn each_refused_cluster_value_names_its_key() {
    let ok = "instance_id = \"gw-a\"\nadvertise = \"http://10.0.0.5:8080\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("a cluster on SQLite", cluster("", ok), "postgres://"),
        ("a cluster on a SQLite file named", cluster("[gateway]\ndatabase = \"/var/lib/cstagate/gw.db\"\n", ok), "postgres://"),
        ("no instance id", cluster(PG, "advertise = \"http://10.0.0.5:8080\""), "instance_id"),
        ("an empty instance id", cluster(PG, "instance_id = \"\"\nadvertise = \"http://h:1\""), "`instance_id`"),
        ("an instance id with a space", cluster(PG, "instance_id = \"gw a\"\nadvertise = \"http://h:1\""), "`instance_id`"),
        ("no advertised URL", cluster(PG, "instance_id = \"gw-a\""), "advertise"),
        ("an advertised address without scheme", cluster(PG, "instance_id = \"gw-a\"\nadvertise = \"10.0.0.5:8080\""), "`advertise`"),
        ("an advertised URL without host", cluster(PG, "instance_id = \"gw-a\"\nadvertise = \"http://\""), "`advertise`"),
        ("a lease too short to renew", cluster(PG, &format!("{ok}lease_ttl = \"2s\"")), "`lease_ttl`"),
        ("a lease of a day", cluster(PG, &format!("{ok}lease_ttl = \"1day\"")), "`lease_ttl`"),
        ("a lease without unit", cluster(PG, &format!("{ok}lease_ttl = 10")), "cluster.lease_ttl"),
        ("an unknown key", cluster(PG, &format!("{ok}peers = []")), "peers"),
        ("a CA file that is not there", cluster(PG, &format!("{ok}advertise_ca = \"/nonexistent/cluster-ca.pem\"")), "`advertise_ca`"),
        ("a CA file without a certificate", cluster(PG, &format!("{ok}advertise_ca = \"{}\"", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))), "`advertise_ca`"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(what, text, key)| match Config::parse(text) {
            Ok(_) => Some(format!("{what}: accepted")),
            Err(e) if !e.to_string().contains(key) => Some(format!("{what}: the error does not name {key}: {e}")),
            Err(_) => None,
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_changed_cluster_table_needs_a_restart() {
    let a = Config::parse(&cluster(PG, "instance_id = \"gw-a\"\nadvertise = \"http://h:1\"")).unwrap();
    let b = Config::parse(&cluster(PG, "instance_id = \"gw-b\"\nadvertise = \"http://h:1\"")).unwrap();
    assert_eq!(a.restart_keys(&b), vec!["[cluster]"]);
    assert!(a.restart_keys(&a.clone()).is_empty());
}

/// The README's `[cluster]` example parses, with the keys it documents.
#[test]
fn the_readme_cluster_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("```toml\n").filter_map(|b| b.split("```").next()).find(|b| b.contains("[cluster]")).expect("the [cluster] example");
    let c = Config::parse(block).unwrap_or_else(|e| panic!("README [cluster] example: {e}"));
    let k = c.cluster.expect("[cluster]");
    assert_eq!((k.instance_id.as_str(), k.advertise.as_str(), k.lease_ttl, k.internal_token_env.as_deref()), ("gw-a", "http://10.0.0.5:8080", Duration::from_secs(10), Some("CSTAGATE_CLUSTER_TOKEN")));
}
