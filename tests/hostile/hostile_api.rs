//! Hostile input on the HTTP API, over real sockets against the real gateway
//! (`testkit::LocalGateway` next to the simulated PBX): table-driven, every endpoint that takes
//! input × bad values — missing and wrong tokens, malformed JSON, unknown fields, wrong types,
//! huge bodies, strings just under and just over their limits, control characters, NUL, RTL
//! override, zero-width and emoji characters, invalid percent-encoding and invalid UTF-8 in path
//! segments and query strings, unknown and repeated query parameters, another tenant's ids.
//!
//! What it proves: each is refused with the right 4xx and a JSON `{"error", "field"?}` naming the
//! field where there is one, and the store does not change — the audit log (admin view), the
//! binding and the association views are the same before and after.

use std::time::Duration;

use cstagate::testkit::{local_secrets, post_webhook, Http, LocalGateway, LocalOptions, Tokens};
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

struct Env {
    _sim: SimPbx,
    gw: LocalGateway,
    /// acme's association on 2006, ringing (nobody answers).
    pending: String,
}

/// A gateway where acme's `alice` is bound to 2005 and acme's `bob` has an association ringing
/// on 2006.
async fn env() -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005", "2006"]), "127.0.0.1:0").await.unwrap();
    sim.config().extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
    sim.config().extensions[1].behaviour = Behaviour::NeverAnswer;
    let mut ivr = sim.take_ivr().unwrap();
    let options = LocalOptions { pbx: "extensions = [\"2005-2006\"]\nring_timeout = \"120s\"\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let h = &gw.http;
    let (s, v) = h.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let (id, code) = (v["id"].as_str().unwrap().to_owned(), v["code"].as_str().unwrap().to_owned());
    let (call, ctx) = loop {
        match tokio::time::timeout(LIMIT, ivr.recv()).await.unwrap().unwrap() {
            IvrSignal::Connected { call, .. } => match tokio::time::timeout(LIMIT, ivr.recv()).await.unwrap().unwrap() {
                IvrSignal::Digits { digits, .. } => break (call, digits),
                other => panic!("{other:?}"),
            },
            _ => {}
        }
    };
    for d in [Some(ctx.as_str()), Some("1"), Some(code.as_str())] {
        let body = json!({ "call": call, "from": "+33144002005", "to": "0800100200", "digits": d });
        let (s, r) = post_webhook(h, &gw.tokens.ivr, body.to_string().into_bytes()).await.unwrap();
        assert_eq!(s, 200, "{r}");
    }
    let (_, v) = h.json("GET", &format!("/v1/associations/{id}"), &gw.tokens.tenant, None).await.unwrap();
    assert_eq!(v["state"], "bound", "{v}");
    let (s, v) = h.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "bob", "extension": "2006" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let pending = v["id"].as_str().unwrap().to_owned();
    // Settled: the phone rings and nobody answers for the whole test.
    tokio::time::timeout(LIMIT, async {
        loop {
            let (_, v) = h.json("GET", &format!("/v1/associations/{pending}"), &gw.tokens.tenant, None).await.unwrap();
            if v["state"] == "ringing" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the association reaches ringing");
    Env { _sim: sim, gw, pending }
}

/// What the store shows: the whole audit log (admin), alice's binding and both association views.
async fn store_view(h: &Http, tokens: &Tokens, pending: &str) -> Value {
    let (_, audit) = h.json("GET", "/v1/audit?limit=10000", &tokens.admin, None).await.unwrap();
    let (_, binding) = h.json("GET", "/v1/bindings/paris/2005", &tokens.admin, None).await.unwrap();
    let (_, bindings) = h.json("GET", "/v1/bindings?account=alice", &tokens.tenant, None).await.unwrap();
    let (_, other) = h.json("GET", "/v1/bindings/paris/2006", &tokens.admin, None).await.unwrap();
    let (_, assoc) = h.json("GET", &format!("/v1/associations/{pending}"), &tokens.admin, None).await.unwrap();
    assert!(audit["records"].as_array().is_some_and(|r| !r.is_empty()), "{audit}");
    json!({ "audit": audit, "binding": binding, "bindings": bindings, "other": other, "pending": assoc })
}

/// One request of the table.
struct Case {
    what: String,
    method: &'static str,
    path: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
    status: u16,
    /// The field the error must name (`None`: the error must not be about a field).
    field: Option<&'static str>,
}

fn case(what: impl Into<String>, method: &'static str, path: impl Into<String>, token: Option<&str>, body: Option<Vec<u8>>, status: u16, field: Option<&'static str>) -> Case {
    Case { what: what.into(), method, path: path.into(), token: token.map(str::to_owned), body, status, field }
}

async fn run(h: &Http, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let auth = c.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, v) = h.send(c.method, &c.path, &headers, c.body.clone()).await.unwrap_or_else(|e| panic!("{} {} ({}): {e}", c.method, c.path, c.what));
        let field = v["field"].as_str();
        if status != c.status || !v["error"].is_string() || field != c.field {
            failures.push(format!("{} {} ({}): expected {} field {:?}, got {status} {v}", c.method, c.path, c.what, c.status, c.field));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Every authenticated endpoint, with a valid path and (where it takes one) a valid body.
fn endpoints(pending: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("POST", "/v1/associations".into(), Some(json!({ "account": "carol", "extension": "2005" }))),
        ("GET", format!("/v1/associations/{pending}"), None),
        ("DELETE", format!("/v1/associations/{pending}"), None),
        ("POST", format!("/v1/associations/{pending}/complete"), None),
        ("GET", "/v1/bindings?account=alice".into(), None),
        ("GET", "/v1/bindings/paris/2005".into(), None),
        ("DELETE", "/v1/bindings/paris/2005?account=alice".into(), None),
        ("POST", "/v1/extensions/paris/2005/calls".into(), Some(json!({ "account": "alice", "to": "2006" }))),
        ("DELETE", "/v1/extensions/paris/2005/calls/0a0b?account=alice".into(), None),
        ("GET", "/v1/extensions/paris/2005/events?account=alice".into(), None),
        ("GET", "/v1/pbx".into(), None),
        ("GET", "/v1/audit".into(), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_are_refused_on_every_authenticated_endpoint() {
    let e = env().await;
    let h = &e.gw.http;
    let before = store_view(h, &e.gw.tokens, &e.pending).await;
    let mut cases = Vec::new();
    for (method, path, body) in endpoints(&e.pending) {
        let body = body.map(|b| b.to_string().into_bytes());
        cases.push(case("no token", method, &path, None, body.clone(), 401, None));
        for (what, token) in [("wrong token", "nope"), ("a token's prefix", &e.gw.tokens.tenant[..5]), ("the token twice", &e.gw.tokens.tenant.repeat(2)), ("empty", "")] {
            cases.push(case(what, method, &path, Some(token), body.clone(), 401, None));
        }
        // A malformed body does not tell an unauthenticated caller anything either.
        if body.is_some() {
            cases.push(case("no token, bad body", method, &path, Some("nope"), Some(b"{oops".to_vec()), 401, None));
        }
    }
    cases.push(case("tenant on an admin endpoint", "GET", "/v1/pbx", Some(&e.gw.tokens.tenant), None, 403, None));
    run(h, &cases).await;
    // Other schemes and spellings of the header.
    let t = &e.gw.tokens.tenant;
    for value in ["Basic ZGVtbzpkZW1v".to_owned(), format!("Bearer  {t}"), format!("Bearer {t}\tx"), format!("Token {t}"), t.clone()] {
        let (s, v) = h.send("GET", "/v1/audit", &[("authorization", &value)], None).await.unwrap();
        assert_eq!((s, v["error"].is_string()), (401, true), "{value:?}: {v}");
    }
    assert_eq!(store_view(h, &e.gw.tokens, &e.pending).await, before, "refused requests change nothing");
}

/// Values every string body field must refuse, with what they are.
fn bad_strings(max: usize) -> Vec<(String, Value)> {
    vec![
        ("number".into(), json!(2005)),
        ("bool".into(), json!(true)),
        ("array".into(), json!(["a"])),
        ("object".into(), json!({ "a": 1 })),
        ("empty".into(), json!("")),
        ("NUL".into(), json!("a\u{0}b")),
        ("newline".into(), json!("a\nb")),
        ("escape".into(), json!("a\u{1b}[2Jb")),
        ("DEL".into(), json!("a\u{7f}")),
        ("RTL override".into(), json!("alice\u{202e}ecila")),
        ("zero-width space".into(), json!("ali\u{200b}ce")),
        ("byte-order mark".into(), json!("\u{feff}alice")),
        ("emoji".into(), json!("alice\u{1F600}")),
        (format!("{} characters", max + 1), json!("7".repeat(max + 1))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_naming_the_field() {
    let e = env().await;
    let h = &e.gw.http;
    let before = store_view(h, &e.gw.tokens, &e.pending).await;
    let create = json!({ "account": "carol", "extension": "2005", "display_name": "Carol", "pbx": "paris" });
    let call = json!({ "account": "alice", "to": "2006" });
    let mut cases = Vec::new();
    for (path, valid, fields) in [
        ("/v1/associations", &create, vec![("account", 128), ("extension", 32), ("display_name", 128), ("pbx", 64)]),
        ("/v1/extensions/paris/2005/calls", &call, vec![("account", 128), ("to", 32)]),
    ] {
        for (field, max) in fields {
            for (what, bad) in bad_strings(max) {
                // A display name may be in any script, but not hidden characters or pictographs.
                let mut body = valid.clone();
                body[field] = bad;
                cases.push(case(format!("{field}: {what}"), "POST", path, Some(&e.gw.tokens.tenant), Some(body.to_string().into_bytes()), 400, Some(field)));
            }
            if !["display_name", "pbx"].contains(&field) {
                let mut body = valid.clone();
                body.as_object_mut().unwrap().remove(field);
                cases.push(case(format!("{field}: missing"), "POST", path, Some(&e.gw.tokens.tenant), Some(body.to_string().into_bytes()), 400, Some(field)));
            }
            let mut body = valid.to_string();
            body.insert_str(1, &format!("\"{field}\":\"x\","));
            cases.push(case(format!("{field}: given twice"), "POST", path, Some(&e.gw.tokens.tenant), Some(body.into_bytes()), 400, Some(field)));
        }
        // Dial strings take digits, *, # and + only.
        let number = if path == "/v1/associations" { "extension" } else { "to" };
        for bad in ["20 05", "2005a", "٢٠٠٥", "2005;", "-1"] {
            let mut body = valid.clone();
            body[number] = json!(bad);
            cases.push(case(format!("{number}: {bad:?}"), "POST", path, Some(&e.gw.tokens.tenant), Some(body.to_string().into_bytes()), 400, Some(number)));
        }
        let mut body = valid.clone();
        body["colour"] = json!("red");
        cases.push(case("unknown field", "POST", path, Some(&e.gw.tokens.tenant), Some(body.to_string().into_bytes()), 400, Some("colour")));
        // Not JSON, or not an object; the error names no field.
        let mut malformed: Vec<(&str, Vec<u8>)> = vec![
            ("empty body", b"".to_vec()),
            ("truncated", b"{\"account\":".to_vec()),
            ("not an object", b"[1,2]".to_vec()),
            ("null", b"null".to_vec()),
            ("trailing garbage", format!("{valid} x").into_bytes()),
            ("single quotes", b"{'account':'a'}".to_vec()),
            ("nested 8000 deep", format!("{{\"account\":{}{}}}", "[".repeat(8000), "]".repeat(8000)).into_bytes()),
        ];
        malformed.push(("invalid UTF-8", b"{\"account\":\"\xff\xfe\",\"extension\":\"2005\"}".to_vec()));
        for (what, body) in malformed {
            let field = if ["invalid UTF-8", "truncated", "nested 8000 deep"].contains(&what) { Some("account") } else { None };
            cases.push(case(what, "POST", path, Some(&e.gw.tokens.tenant), Some(body), 400, field));
        }
        // A lone surrogate escape is not a string.
        cases.push(case("lone surrogate", "POST", path, Some(&e.gw.tokens.tenant), Some(br#"{"account":"\ud800","extension":"2005"}"#.to_vec()), 400, Some("account")));
        // Huge: over 16 KiB is 413 before anything is parsed; just under, the field is too long.
        let huge = json!({ "account": "a".repeat(17 * 1024), "extension": "2005" });
        cases.push(case("17 KiB body", "POST", path, Some(&e.gw.tokens.tenant), Some(huge.to_string().into_bytes()), 413, None));
        let mut big = valid.clone();
        big["account"] = json!("a".repeat(16 * 1024 - 160));
        assert!(big.to_string().len() < 16 * 1024);
        cases.push(case("16 KiB body, over-long account", "POST", path, Some(&e.gw.tokens.tenant), Some(big.to_string().into_bytes()), 400, Some("account")));
        cases.push(case("1 MiB body", "POST", path, Some(&e.gw.tokens.tenant), Some(vec![b' '; 1 << 20]), 413, None));
    }
    // Just under the limits is accepted by the parser: the refusal is about the PBX's directory
    // (404), not the shape of the request.
    let under = json!({ "account": "a".repeat(128), "extension": "9".repeat(32), "display_name": "É".repeat(128), "pbx": "p".repeat(64) });
    cases.push(case("every field at its limit", "POST", "/v1/associations", Some(&e.gw.tokens.tenant), Some(under.to_string().into_bytes()), 404, None));
    run(h, &cases).await;
    assert_eq!(store_view(h, &e.gw.tokens, &e.pending).await, before, "refused requests change nothing");
}

/// Values every path segment and query value must refuse (percent-encoded as sent).
const BAD_COMPONENTS: &[(&str, &str)] = &[
    ("NUL", "a%00b"),
    ("newline", "a%0Ab"),
    ("RTL override", "a%E2%80%AEb"),
    ("zero-width space", "a%E2%80%8Bb"),
    ("emoji", "a%F0%9F%98%80"),
    ("truncated escape", "a%4"),
    ("escape without hex", "a%zz"),
    ("invalid UTF-8", "a%FF"),
    ("overlong UTF-8", "%C0%AF"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_path_segments_and_query_strings_are_refused_naming_the_field() {
    let e = env().await;
    let h = &e.gw.http;
    let before = store_view(h, &e.gw.tokens, &e.pending).await;
    let p = &e.pending;
    let t = Some(e.gw.tokens.tenant.as_str());
    let mut cases = Vec::new();
    // Every path parameter of every endpoint, with every bad value and one over its length.
    let templates: Vec<(&str, String)> = vec![
        ("GET", "/v1/associations/{id}".into()),
        ("DELETE", "/v1/associations/{id}".into()),
        ("POST", "/v1/associations/{id}/complete".into()),
        ("GET", "/v1/bindings/{pbx}/{extension}".into()),
        ("DELETE", "/v1/bindings/{pbx}/{extension}?account=alice".into()),
        ("POST", "/v1/extensions/{pbx}/{extension}/calls".into()),
        ("DELETE", "/v1/extensions/{pbx}/{extension}/calls/{call}?account=alice".into()),
        ("GET", "/v1/extensions/{pbx}/{extension}/events?account=alice".into()),
    ];
    let good = |name: &str| match name {
        "id" => p.clone(),
        "pbx" => "paris".to_owned(),
        "extension" => "2005".to_owned(),
        _ => "0a0b".to_owned(),
    };
    let too_long = |name: &str| match name {
        "id" => "a".repeat(65),
        "pbx" => "p".repeat(65),
        "extension" => "1".repeat(33),
        _ => "ab".repeat(33),
    };
    for (method, template) in &templates {
        let names: Vec<&str> = ["id", "pbx", "extension", "call"].into_iter().filter(|n| template.contains(&format!("{{{n}}}"))).collect();
        for bad_name in &names {
            let body = (*method == "POST" && template.ends_with("/calls")).then(|| json!({ "account": "alice", "to": "2006" }).to_string().into_bytes());
            let mut values: Vec<(String, String)> = BAD_COMPONENTS.iter().map(|(w, v)| ((*w).to_owned(), (*v).to_owned())).collect();
            values.push(("over-long".into(), too_long(bad_name)));
            values.push(("space".into(), "a%20b".into()));
            for (what, v) in values {
                let mut path = template.clone();
                for n in &names {
                    path = path.replace(&format!("{{{n}}}"), &if n == bad_name { v.clone() } else { good(n) });
                }
                let field = ["id", "pbx", "extension", "call"].into_iter().find(|n| n == bad_name);
                // A space is a printable character: a PBX id may not hold one, but it is only unknown.
                let status = if what == "space" && *bad_name == "pbx" { 404 } else { 400 };
                cases.push(case(format!("{bad_name}: {what}"), method, path, t, body.clone(), status, if status == 400 { field } else { None }));
            }
        }
    }
    // Every query parameter of every endpoint.
    let queries: Vec<(&str, &str, &str, Option<&str>)> = vec![
        ("GET", "/v1/bindings", "account", t),
        ("DELETE", "/v1/bindings/paris/2005", "account", t),
        ("DELETE", "/v1/extensions/paris/2005/calls/0a0b", "account", t),
        ("GET", "/v1/extensions/paris/2005/events", "account", t),
        ("GET", "/v1/audit", "account", Some(&e.gw.tokens.admin)),
        ("GET", "/v1/audit", "extension", Some(&e.gw.tokens.admin)),
    ];
    for (method, path, name, token) in &queries {
        let mut values: Vec<(String, String)> = BAD_COMPONENTS.iter().map(|(w, v)| ((*w).to_owned(), (*v).to_owned())).collect();
        values.push(("over-long".into(), if *name == "extension" { "1".repeat(33) } else { "a".repeat(129) }));
        for (what, v) in values {
            let field = ["account", "extension"].into_iter().find(|n| n == name);
            cases.push(case(format!("?{name}: {what}"), method, format!("{path}?{name}={v}"), *token, None, 400, field));
        }
        let valid = if *name == "extension" { "2005" } else { "alice" };
        cases.push(case("unknown parameter", method, format!("{path}?{name}={valid}&colour=red"), *token, None, 400, Some("colour")));
        cases.push(case("repeated parameter", method, format!("{path}?{name}=2005&{name}=2006"), *token, None, 400, ["account", "extension"].into_iter().find(|n| n == name)));
        cases.push(case("bad escape in a name", method, format!("{path}?a%zz=1"), *token, None, 400, Some("query")));
    }
    // Endpoints without query parameters take none.
    let create = Some(json!({ "account": "carol", "extension": "2005" }).to_string().into_bytes());
    let call = Some(json!({ "account": "alice", "to": "2006" }).to_string().into_bytes());
    for (method, path, token, body) in [
        ("POST", "/v1/associations".to_owned(), t, create),
        ("GET", format!("/v1/associations/{p}"), t, None),
        ("DELETE", format!("/v1/associations/{p}"), t, None),
        ("POST", format!("/v1/associations/{p}/complete"), t, None),
        ("GET", "/v1/bindings/paris/2005".to_owned(), t, None),
        ("POST", "/v1/extensions/paris/2005/calls".to_owned(), t, call),
        ("GET", "/v1/pbx".to_owned(), Some(&e.gw.tokens.admin), None),
    ] {
        cases.push(case("a query parameter where none is taken", method, format!("{path}?colour=red"), token, body, 400, Some("colour")));
    }
    for (what, v) in [("not a number", "ten"), ("negative", "-1"), ("zero", "0"), ("one over", "10001"), ("huge", "99999999999999999999999"), ("fraction", "1.5")] {
        cases.push(case(format!("?limit: {what}"), "GET", format!("/v1/audit?limit={v}"), Some(&e.gw.tokens.admin), None, 400, Some("limit")));
    }
    // `account` is required where it names who acts.
    for (method, path) in [("GET", "/v1/bindings"), ("DELETE", "/v1/extensions/paris/2005/calls/0a0b"), ("GET", "/v1/extensions/paris/2005/events")] {
        cases.push(case("no account", method, path, t, None, 400, Some("account")));
    }
    // Unknown endpoints and methods are JSON refusals too.
    cases.push(case("unknown endpoint", "GET", "/v1/nothing", t, None, 404, None));
    cases.push(case("wrong method", "PUT", "/v1/associations", t, Some(b"{}".to_vec()), 405, None));
    // Just under the limits: well-formed, only unknown.
    cases.push(case("id at its limit", "GET", format!("/v1/associations/{}", "a".repeat(64)), t, None, 404, None));
    cases.push(case("pbx and extension at their limits", "GET", format!("/v1/bindings/{}/{}", "p".repeat(64), "1".repeat(32)), t, None, 404, None));
    run(h, &cases).await;
    // Just under the limits in query strings: accepted.
    for path in [format!("/v1/audit?limit=10000&account={}&extension={}", "a".repeat(128), "1".repeat(32)), format!("/v1/bindings?account={}", "a".repeat(128))] {
        let token = if path.starts_with("/v1/audit") { &e.gw.tokens.admin } else { &e.gw.tokens.tenant };
        let (s, v) = h.json("GET", &path, token, None).await.unwrap();
        assert_eq!(s, 200, "{path}: {v}");
    }
    assert_eq!(store_view(h, &e.gw.tokens, &e.pending).await, before, "refused requests change nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_not_found_on_every_endpoint_taking_one() {
    let e = env().await;
    let h = &e.gw.http;
    let before = store_view(h, &e.gw.tokens, &e.pending).await;
    let p = &e.pending;
    let o = Some(e.gw.tokens.other_tenant.as_str());
    let call = Some(json!({ "account": "alice", "to": "2006" }).to_string().into_bytes());
    let create = Some(json!({ "account": "alice", "extension": "2006", "pbx": "paris" }).to_string().into_bytes());
    let cases = vec![
        case("association", "GET", format!("/v1/associations/{p}"), o, None, 404, None),
        case("cancel", "DELETE", format!("/v1/associations/{p}"), o, None, 404, None),
        case("complete", "POST", format!("/v1/associations/{p}/complete"), o, None, 404, None),
        case("binding", "GET", "/v1/bindings/paris/2005", o, None, 404, None),
        case("unbind", "DELETE", "/v1/bindings/paris/2005?account=alice", o, None, 404, None),
        case("unbind without account", "DELETE", "/v1/bindings/paris/2005", o, None, 404, None),
        case("make call", "POST", "/v1/extensions/paris/2005/calls", o, call.clone(), 404, None),
        case("clear call", "DELETE", "/v1/extensions/paris/2005/calls/0a0b?account=alice", o, None, 404, None),
        case("events", "GET", "/v1/extensions/paris/2005/events?account=alice", o, None, 404, None),
        case("another tenant's PBX", "POST", "/v1/associations", o, create, 404, None),
        // Within acme, another account of the same tenant cannot drive alice's extension.
        case("another account", "POST", "/v1/extensions/paris/2005/calls", Some(&e.gw.tokens.tenant), Some(json!({ "account": "bob", "to": "2006" }).to_string().into_bytes()), 404, None),
        case("another account clears", "DELETE", "/v1/extensions/paris/2005/calls/0a0b?account=bob", Some(&e.gw.tokens.tenant), None, 404, None),
        case("another account unbinds", "DELETE", "/v1/bindings/paris/2005?account=bob", Some(&e.gw.tokens.tenant), None, 404, None),
    ];
    run(h, &cases).await;
    // Lists show nothing of acme's to globex.
    let (s, v) = h.json("GET", "/v1/bindings?account=alice", &e.gw.tokens.other_tenant, None).await.unwrap();
    assert_eq!((s, v["bindings"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let (s, v) = h.json("GET", "/v1/audit?extension=2005", &e.gw.tokens.other_tenant, None).await.unwrap();
    assert_eq!((s, v["records"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    assert_eq!(store_view(h, &e.gw.tokens, &e.pending).await, before, "refused requests change nothing");
}

/// Clients that connect and say nothing, or dribble their headers, are cut off after
/// `header_timeout`; a connection beyond `max_connections` waits until a slot frees up and is
/// then served — idle clients cannot hold the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_excess_connections_do_not_hold_the_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let options = LocalOptions { gateway: "max_connections = 3\nheader_timeout = \"2s\"\n".into(), pbx: "extensions = [\"2005\"]\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let addr = gw.running.addr;
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(LIMIT, s.read_to_end(&mut buf)).await.expect("the gateway ends the connection").map(|_| buf).unwrap_or_default()
    };
    // Three silent connections take every slot; a fourth client's request waits for a slot.
    let t0 = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await.unwrap();
    let answer = read_all(waiting).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
    assert!(t0.elapsed() >= HEADER_TIMEOUT - Duration::from_millis(100), "served only once the silent ones were cut off ({:?})", t0.elapsed());
    // The silent ones were cut off (with nothing or a 408).
    for s in silent {
        let r = read_all(s).await;
        assert!(r.is_empty() || r.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&r));
    }
    // One that sends its headers a byte at a time, slower than the timeout allows, is cut off.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let dribble = async {
        for b in b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // the attack's pace
        }
        false
    };
    assert!(tokio::time::timeout(LIMIT, dribble).await.unwrap(), "a header dribbled over 4.5 s is cut off");
    let (s, v) = gw.http.send("GET", "/healthz", &[], None).await.unwrap();
    assert_eq!(s, 200, "{v}");
    gw.running.shutdown().await;
}

/// A tenant holds at most `MAX_EVENT_STREAMS_PER_TENANT` event streams; one more is refused with
/// 429, and a stream the client closes gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_tenant() {
    use cstagate::api::MAX_EVENT_STREAMS_PER_TENANT;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env().await;
    let addr = e.gw.running.addr;
    let token = e.gw.tokens.tenant.as_str();
    // Open a stream on alice's bound extension; the status line of the answer.
    let open = || async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /v1/extensions/paris/2005/events?account=alice HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 12];
        tokio::time::timeout(LIMIT, s.read_exact(&mut head)).await.expect("an answer").unwrap();
        (String::from_utf8_lossy(&head).into_owned(), s)
    };
    let mut streams = Vec::new();
    for _ in 0..MAX_EVENT_STREAMS_PER_TENANT {
        let (status, s) = open().await;
        assert_eq!(status, "HTTP/1.1 200");
        streams.push(s);
    }
    let (status, _) = open().await;
    assert_eq!(status, "HTTP/1.1 429", "one stream too many");
    // Another tenant is not affected by acme's streams (it has no binding: 404, not 429).
    let (s, _) = e.gw.http.json("GET", "/v1/extensions/paris/2005/events?account=alice", &e.gw.tokens.other_tenant, None).await.unwrap();
    assert_eq!(s, 404);
    // Closing one gives its place back (once the gateway has seen the close).
    drop(streams.pop());
    tokio::time::timeout(LIMIT, async {
        loop {
            let (status, s) = open().await;
            if status == "HTTP/1.1 200" {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // the gateway notices the close
        }
    })
    .await
    .expect("the closed stream's place is given back");
}
