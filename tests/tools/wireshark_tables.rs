//! The Lua dissector's name tables are generated from the codec's own tables, so that Wireshark
//! and `cstagate decode` name every operation, event, universalFailure and reject problem the
//! same way: this test writes the block between the GENERATED markers of
//! `contrib/wireshark/cstagate.lua` from the Rust tables and fails when the file's block differs.
//! `CSTAGATE_WRITE_LUA=1 cargo test --test tools wireshark_tables` rewrites it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cstagate::codec::apdu::{ErrorCategory, RejectProblem};
use cstagate::codec::{ber, framing, names, operation, Dialect, EventKind};

use crate::common;

const BEGIN: &str = "-- BEGIN GENERATED TABLES\n";
const END: &str = "-- END GENERATED TABLES\n";

/// Every universalFailure category. The match makes this fail to compile when a category is
/// added to the codec, so the list cannot fall behind.
fn categories() -> [ErrorCategory; 8] {
    use ErrorCategory as C;
    let all = [C::Operation, C::Security, C::StateIncompatibility, C::SystemResourceAvailability, C::SubscribedResourceAvailability, C::PerformanceManagement, C::PrivateData, C::Unspecified];
    for c in all {
        match c {
            C::Operation | C::Security | C::StateIncompatibility | C::SystemResourceAvailability | C::SubscribedResourceAvailability | C::PerformanceManagement | C::PrivateData | C::Unspecified => {}
        }
    }
    all
}

fn lua_map<K: std::fmt::Display>(out: &mut String, indent: &str, entries: &BTreeMap<K, String>, quote_keys: bool) {
    out.push_str("{\n");
    for (k, v) in entries {
        if quote_keys {
            let _ = writeln!(out, "{indent}    [\"{k}\"] = \"{v}\",");
        } else {
            let _ = writeln!(out, "{indent}    [{k}] = \"{v}\",");
        }
    }
    let _ = write!(out, "{indent}}}");
}

fn dialect_key(d: Dialect) -> &'static str {
    match d {
        Dialect::Phase3 => "phase3",
        Dialect::Phase2 => "phase2",
    }
}

/// The generated block, from the codec's tables.
pub fn generated() -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push_str("-- Written by `CSTAGATE_WRITE_LUA=1 cargo test --test tools wireshark_tables` from the Rust\n-- codec's tables; do not edit by hand (the test fails when this block differs from them).\n");
    let dialects = [Dialect::Phase3, Dialect::Phase2];

    out.push_str("-- Local operation codes (src/codec/operation.rs).\nlocal OPERATIONS = {\n");
    for d in dialects {
        let mut m = BTreeMap::new();
        for (op, _, _) in operation::TABLE {
            if let Some(code) = op.code(d) {
                m.insert(code, op.name(d).to_owned());
            }
        }
        let _ = write!(out, "    {} = ", dialect_key(d));
        lua_map(&mut out, "    ", &m, false);
        out.push_str(",\n");
    }
    out.push_str("}\n");

    out.push_str("-- Event kinds by \"group:alternative\" tag numbers of EventSpecificInfo (src/codec/schemas.rs);\n-- any other is \"other\".\nlocal EVENTS = {\n");
    for d in dialects {
        let mut m = BTreeMap::new();
        for k in EventKind::ALL {
            if let Some((g, a)) = k.position(d) {
                m.insert(format!("{g}:{a}"), k.name().to_owned());
            }
        }
        let _ = write!(out, "    {} = ", dialect_key(d));
        lua_map(&mut out, "    ", &m, true);
        out.push_str(",\n");
    }
    out.push_str("}\n");

    out.push_str("-- universalFailure categories by tag number: explicit [n] { ENUMERATED } (Phase III) and\n-- implicit [n] ENUMERATED (Phase II) (src/codec/universal_failure.rs).\nlocal FAILURE_CATEGORIES = {\n");
    for (key, d) in [("explicit", Dialect::Phase3), ("implicit", Dialect::Phase2)] {
        let m: BTreeMap<u8, String> = categories().into_iter().filter_map(|c| c.tag_number(d).map(|n| (n, c.name().to_owned()))).collect();
        let _ = write!(out, "    {key} = ");
        lua_map(&mut out, "    ", &m, false);
        out.push_str(",\n");
    }
    out.push_str("}\n");

    out.push_str("-- universalFailure values per category (src/codec/names.rs).\nlocal UNIVERSAL_FAILURES = {\n");
    for c in categories() {
        let m: BTreeMap<i64, String> = (-1..=255).filter_map(|v| names::universal_failure(c, v).map(|n| (v, n.to_owned()))).collect();
        if m.is_empty() {
            continue;
        }
        let _ = write!(out, "    {} = ", c.name());
        lua_map(&mut out, "    ", &m, false);
        out.push_str(",\n");
    }
    out.push_str("}\n");

    out.push_str("-- X.880 reject problems by problem tag number, then value (src/codec/names.rs).\nlocal REJECT_PROBLEMS = {\n");
    let problems: [fn(i64) -> RejectProblem; 4] = [RejectProblem::General, RejectProblem::Invoke, RejectProblem::ReturnResult, RejectProblem::ReturnError];
    for (n, make) in problems.iter().enumerate() {
        let m: BTreeMap<i64, String> = (0..=63).filter_map(|v| names::reject_problem(make(v)).map(|s| (v, s.to_owned()))).collect();
        let _ = write!(out, "    [{n}] = ");
        lua_map(&mut out, "    ", &m, false);
        out.push_str(",\n");
    }
    out.push_str("}\n");

    let simple = |out: &mut String, title: &str, name: &str, f: fn(i64) -> Option<&'static str>| {
        let m: BTreeMap<i64, String> = (0..=255).filter_map(|v| f(v).map(|s| (v, s.to_owned()))).collect();
        let _ = write!(out, "-- {title} (src/codec/names.rs).\nlocal {name} = ");
        lua_map(out, "", &m, false);
        out.push('\n');
    };
    simple(&mut out, "EventCause", "EVENT_CAUSES", names::event_cause);
    simple(&mut out, "LocalConnectionState", "LOCAL_STATES", names::local_connection_state);

    let _ = writeln!(out, "-- The codec's frame cap (src/codec/framing.rs) and BER nesting limit (src/codec/ber.rs).");
    let _ = writeln!(out, "local MAX_FRAME = {}", framing::DEFAULT_MAX_FRAME);
    let _ = writeln!(out, "local MAX_DEPTH = {}", ber::MAX_DEPTH);
    out.push_str(END);
    out
}

#[test]
fn the_lua_name_tables_are_the_codecs() {
    let path = common::path("contrib/wireshark/cstagate.lua");
    let lua = std::fs::read_to_string(&path).expect("contrib/wireshark/cstagate.lua");
    let (Some(start), Some(end)) = (lua.find(BEGIN), lua.find(END)) else { panic!("{}: no GENERATED markers", path.display()) };
    assert!(start < end, "markers out of order");
    let block = &lua[start..end + END.len()];
    let want = generated();
    if std::env::var("CSTAGATE_WRITE_LUA").as_deref() == Ok("1") {
        let new = format!("{}{}{}", &lua[..start], want, &lua[end + END.len()..]);
        std::fs::write(&path, new).expect("write cstagate.lua");
        return;
    }
    assert!(
        block == want,
        "contrib/wireshark/cstagate.lua's name tables differ from the codec's: rewrite them with `CSTAGATE_WRITE_LUA=1 cargo test --test tools wireshark_tables`\n--- file\n{block}\n--- codec\n{want}"
    );
    // The tables name what the codec names: spot checks of each table against the codec.
    for (code, d, name) in [(211, Dialect::Phase3, "systemStatus"), (52, Dialect::Phase2, "systemStatus"), (19, Dialect::Phase2, "sendDTMFTones")] {
        assert_eq!(operation::Operation::from_code(code, d).map(|o| o.name(d)), Some(name));
        assert!(want.contains(&format!("[{code}] = \"{name}\"")), "{code} {name}");
    }
}
