//! `cstagate decode`: an admin's view of a PBX trace, one line per APDU, readable or JSON.
//!
//! The JSON object of an APDU has `n`, `dir`, `kind`, `invoke_id`, `operation` (ECMA name or
//! `op<N>`), `opcode`, `event`, `xref` (hex), `call_id` (hex), `fields` (the members of the
//! argument, result or event body by ECMA name: devices as digits, connections as
//! `{call, device, dynamic}`, enumerations as numbers), named `cause` and `local_state`, and
//! `error` (`{reason, offset}`) for an APDU that does not decode.

use bytes::Bytes;
use serde_json::{json, Map, Value as Json};

use crate::capture::CapturedFrame;
use crate::codec::acse::{diagnostic_name, result_name, Authentication, UserInformation};
use crate::codec::apdu::{ErrorParameter, Event};
use crate::codec::body::{Body, FieldName, Value};
use crate::codec::framing::Framing;
use crate::codec::values::{ConnectionId, DeviceId, DeviceIdentifier, DeviceRef, Dialect, LocalDevice};
use crate::codec::{names, Apdu, Argument, DecodeError};

/// Decode one framed APDU.
pub fn decode_frame(frame: &CapturedFrame, framing: Framing, dialect: Dialect) -> Result<Apdu, DecodeError> {
    let framed = frame.framed.clone()?;
    let apdu = crate::capture::unframe(framing, &framed)?;
    // Offsets in errors count from the start of the APDU, after the frame header.
    Apdu::decode(&apdu, dialect)
}

/// The JSON object for one APDU (see the module docs).
pub fn to_json(n: usize, frame: &CapturedFrame, result: &Result<Apdu, DecodeError>, dialect: Dialect) -> Json {
    let mut o = Map::new();
    o.insert("n".into(), json!(n));
    if let Some(d) = frame.dir {
        o.insert("dir".into(), json!(d));
    }
    match result {
        Err(e) => {
            o.insert("error".into(), json!({"reason": e.to_string(), "offset": e.offset}));
        }
        Ok(apdu) => describe(apdu, dialect, &mut o),
    }
    Json::Object(o)
}

fn hexs(b: &Bytes) -> Json {
    json!(hex::encode(b))
}

/// The decode view of one event report received on a monitor (no invoke id: it is the link's
/// business), as `cstagate probe` and the API's server-sent events show it.
pub fn event_json(report: &crate::codec::EventReport, dialect: Dialect) -> Map<String, Json> {
    let mut o = Map::new();
    describe(&Apdu::event(0, report.clone()), dialect, &mut o);
    o.remove("invoke_id");
    o
}

/// Fill `o` with the description of a decoded APDU.
pub fn describe(apdu: &Apdu, d: Dialect, o: &mut Map<String, Json>) {
    o.insert("kind".into(), json!(apdu.kind_name()));
    if let Some(id) = apdu.invoke_id() {
        o.insert("invoke_id".into(), json!(id));
    }
    let body_of = |op_name: String, code: Option<i64>, arg: &Argument, o: &mut Map<String, Json>| {
        o.insert("operation".into(), json!(op_name));
        if let Some(c) = code {
            o.insert("opcode".into(), json!(c));
        }
        match arg {
            Argument::Body(b) => describe_body(b, o),
            Argument::Event(ev) => {
                o.insert("xref".into(), hexs(&ev.xref));
                match &ev.event {
                    Event::Call { kind, body } => {
                        o.insert("event".into(), json!(kind.name()));
                        describe_body(body, o);
                    }
                    Event::Other { group, alternative, raw } => {
                        o.insert("event".into(), json!("other"));
                        o.insert("event_group".into(), json!(group));
                        o.insert("event_alternative".into(), json!(alternative));
                        o.insert("raw".into(), hexs(raw));
                    }
                }
            }
            Argument::Opaque(b) => {
                o.insert("raw".into(), hexs(b));
            }
            Argument::Absent => {}
        }
    };
    match apdu {
        Apdu::Invoke(i) => body_of(i.op.name(d), i.op.code(d).ok().and_then(|c| c.local()), &i.argument, o),
        Apdu::Result(r) => {
            if let Some((op, arg)) = &r.result {
                body_of(op.name(d), op.code(d).ok().and_then(|c| c.local()), arg, o);
            }
        }
        Apdu::Error(e) => {
            o.insert("opcode".into(), json!(e.code.local()));
            match &e.parameter {
                Some(ErrorParameter::UniversalFailure(u)) => {
                    o.insert(
                        "failure".into(),
                        json!({
                            "category": u.category.name(),
                            "value": u.value,
                            "name": u.value.and_then(|v| names::universal_failure(u.category, v)),
                        }),
                    );
                }
                Some(ErrorParameter::Opaque(b)) => {
                    o.insert("raw".into(), hexs(b));
                }
                None => {}
            }
        }
        Apdu::Reject(r) => {
            let kind = ["general", "invoke", "returnResult", "returnError"][usize::from(r.problem.tag_number())];
            o.insert("problem".into(), json!({"kind": kind, "value": r.problem.value(), "name": names::reject_problem(r.problem)}));
        }
        Apdu::Aarq(b) | Apdu::Aare(b) | Apdu::Rlrq(b) | Apdu::Rlre(b) | Apdu::Abrt(b) => describe_acse(b, o),
    }
}

fn describe_acse(b: &Body, o: &mut Map<String, Json>) {
    for f in &b.fields {
        match (&f.name, &f.value) {
            (FieldName::ApplicationContextName, Value::Oid(c)) => {
                o.insert("context".into(), json!(crate::codec::ber::oid_to_string(c)));
            }
            (FieldName::Result, Value::Int(r)) => {
                o.insert("result".into(), json!(r));
                o.insert("result_name".into(), json!(result_name(r)));
            }
            (FieldName::ResultSourceDiagnostic, Value::Diagnostic { source, value }) => {
                o.insert("diagnostic".into(), json!([source, value]));
                o.insert("diagnostic_name".into(), json!(diagnostic_name(&Some((*source, *value)))));
            }
            (FieldName::CallingAuthenticationValue, Value::Auth(a)) => {
                // Never the password: only whether there is one.
                o.insert("user".into(), json!(a.user().map(|u| String::from_utf8_lossy(u).into_owned())));
                o.insert("has_password".into(), json!(!matches!(a, Authentication::Opaque(_))));
            }
            (FieldName::UserInformation, Value::UserInfo(UserInformation::Csta(u))) => {
                o.insert("csta_versions".into(), json!(u.versions()));
            }
            (FieldName::Reason, Value::Int(r)) => {
                o.insert("reason".into(), json!(r));
            }
            (FieldName::AbortSource, Value::Int(s)) => {
                o.insert("source".into(), json!(s));
            }
            _ => {}
        }
    }
}

/// Project a body's members into `fields`, plus the convenience keys `call_id`, `cause`,
/// `local_state`.
fn describe_body(b: &Body, o: &mut Map<String, Json>) {
    if let Some(c) = b.first_connection().and_then(|c| c.call.as_ref()) {
        o.insert("call_id".into(), hexs(c));
    }
    if let Some(c) = b.int(FieldName::Cause) {
        o.insert("cause".into(), json!(names::event_cause(c).map_or_else(|| c.to_string(), str::to_owned)));
    }
    if let Some(s) = b.int(FieldName::LocalConnectionInfo) {
        o.insert("local_state".into(), json!(names::local_connection_state(s)));
    }
    if let Some(s) = b.int(FieldName::SystemStatus) {
        o.insert("system_status".into(), json!(names::system_status(s)));
    }
    o.insert("fields".into(), Json::Object(project_fields(b)));
}

/// The members of a body by ECMA name, each projected to JSON (see the module docs); members
/// without a scalar meaning (extensions, filters, lists, unknown members) are left out.
pub fn project_fields(b: &Body) -> Map<String, Json> {
    let mut m = Map::new();
    for f in &b.fields {
        if f.name == FieldName::Unknown {
            continue;
        }
        if let Some(v) = project_value(&f.value) {
            m.entry(f.name.as_str().to_owned()).or_insert(v);
        }
    }
    m
}

pub fn project_value(v: &Value) -> Option<Json> {
    Some(match v {
        Value::Connection(c) => project_connection(c),
        Value::Device(d) => project_device_ref(d),
        Value::DeviceId(d) => project_device(d),
        Value::Int(i) => json!(i),
        Value::Octets(b) => hexs(b),
        Value::Text(t) => json!(t.as_str()),
        _ => return None,
    })
}

fn project_device(d: &DeviceId) -> Json {
    match &d.ident {
        DeviceIdentifier::Other(b) => hexs(b),
        other => json!(other.digits()),
    }
}

fn project_device_ref(d: &DeviceRef) -> Json {
    match d {
        DeviceRef::Id(id) => project_device(id),
        other => json!(other.absent_name()),
    }
}

fn project_connection(c: &ConnectionId) -> Json {
    let (device, dynamic) = match &c.device {
        Some(LocalDevice::Static(d)) => (project_device(d), Json::Null),
        Some(LocalDevice::Dynamic(b)) => (Json::Null, hexs(b)),
        None => (Json::Null, Json::Null),
    };
    json!({"call": c.call.as_ref().map(|b| hex::encode(b)), "device": device, "dynamic": dynamic})
}

/// One readable line for an APDU.
pub fn to_line(j: &Json) -> String {
    let g = |k: &str| j.get(k).filter(|v| !v.is_null());
    let mut s = format!("#{}", g("n").map_or(String::new(), ToString::to_string));
    if let Some(d) = g("dir").and_then(Json::as_str) {
        s.push(' ');
        s.push_str(d);
    }
    if let Some(e) = g("error") {
        s.push_str(&format!(" ERROR {} ", e["reason"].as_str().unwrap_or("")));
        return s;
    }
    for k in ["kind", "operation", "event"] {
        if let Some(v) = g(k).and_then(Json::as_str) {
            s.push(' ');
            s.push_str(v);
        }
    }
    if let Some(id) = g("invoke_id") {
        s.push_str(&format!(" id={id}"));
    }
    for k in ["xref", "context", "user", "result_name", "diagnostic_name", "cause", "local_state", "system_status"] {
        if let Some(v) = g(k) {
            s.push_str(&format!(" {k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
        }
    }
    if let Some(f) = g("failure") {
        s.push_str(&format!(" failure={}/{}", f["category"].as_str().unwrap_or(""), f["name"].as_str().map_or_else(|| f["value"].to_string(), str::to_owned)));
    }
    if let Some(p) = g("problem") {
        s.push_str(&format!(" problem={}/{}", p["kind"].as_str().unwrap_or(""), p["name"].as_str().map_or_else(|| p["value"].to_string(), str::to_owned)));
    }
    if let Some(Json::Object(fields)) = g("fields") {
        for (k, v) in fields {
            if matches!(k.as_str(), "cause" | "localConnectionInfo" | "systemStatus") {
                continue;
            }
            let shown = match v {
                Json::Object(c) => {
                    let part = |k: &str| c.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
                    format!("{}/{}{}", part("call"), part("device"), part("dynamic"))
                }
                Json::String(t) => t.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!(" {k}={shown}"));
        }
    }
    s
}
