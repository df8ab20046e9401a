//! CSTA messages in XML ↔ the dialect-neutral model: requests, responses, `CSTAErrorCode` and
//! events, with their members looked up by element name in the Phase III member tables.

use bytes::Bytes;

use super::names::{category_element, category_of, element, enumeration, error_values, name_of, value_of};
use super::tree::Element;
use super::{ProtocolVersion, Writer, XmlEncodeError};
use crate::codec::apdu::{Argument, ErrorCategory, ErrorParameter, Event, EventReport, Invoke, Op, RejectProblem, ReturnError, ReturnResult, UniversalFailure};
use crate::codec::ber::{DecodeError, ErrorKind, Ia5};
use crate::codec::body::{Body, Field, FieldName, Form, Kind, Value};
use crate::codec::operation::{Code, Operation, TABLE};
use crate::codec::schemas::{self, EventKind};
use crate::codec::values::{ConnectionId, DeviceId, DeviceIdentifier, DeviceRef, Dialect, LocalDevice};
use crate::codec::Apdu;

pub use crate::codec::values::dialable;

/// ECMA-323 is ECMA-269 Phase III in XML: its member tables and operation names.
const D: Dialect = Dialect::Phase3;

/// `makeCall` → `MakeCall`.
fn capitalized(name: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(name.len() + suffix.len());
    let mut c = name.chars();
    if let Some(f) = c.next() {
        s.extend(f.to_uppercase());
        s.push_str(c.as_str());
    }
    s.push_str(suffix);
    s
}

/// Compare `name` with the capitalized form of `lower` + `suffix` without allocating.
fn names_match(name: &str, lower: &str, suffix: &str) -> bool {
    let Some(stem) = name.strip_suffix(suffix) else { return false };
    stem.len() == lower.len() && stem.get(..1).is_some_and(|a| lower.get(..1).is_some_and(|b| a.eq_ignore_ascii_case(b))) && stem.get(1..) == lower.get(1..)
}

/// The operation a request (or, with `Response`, a response) element names.
fn operation(name: &str, suffix: &str) -> Option<Operation> {
    TABLE.iter().find(|(op, (p3, code), _)| code.is_some() && *op != Operation::EventReport && names_match(name, p3, suffix)).map(|e| e.0)
}

fn event_kind(name: &str) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|k| names_match(name, k.name(), "Event"))
}

/// The root element name of an APDU's XML form.
pub(super) fn root_name(a: &Apdu) -> String {
    match a {
        Apdu::Invoke(Invoke { argument: Argument::Event(ev), .. }) => match &ev.event {
            Event::Call { kind, .. } => capitalized(kind.name(), "Event"),
            Event::Other { .. } => "Event".into(),
        },
        Apdu::Invoke(i) => i.op.known().map_or_else(|| "?".into(), |o| capitalized(o.name(D), "")),
        Apdu::Result(r) => r.result.as_ref().and_then(|(op, _)| op.known()).map_or_else(|| "?Response".into(), |o| capitalized(o.name(D), "Response")),
        Apdu::Error(_) | Apdu::Reject(_) => "CSTAErrorCode".into(),
        other => other.kind_name().into(),
    }
}

fn missing(what: &'static str, at: &Element<'_>) -> DecodeError {
    DecodeError::new(ErrorKind::Missing(what), at.span.start)
}

/// Decode a CSTA document; `Ok(None)` when the root names no CSTA message this codec knows.
pub(super) fn decode(root: &Element<'_>, doc: &Bytes, invoke_id: Option<i64>) -> Result<Option<Apdu>, DecodeError> {
    let name = root.name;
    if name == "CSTAErrorCode" {
        return Ok(Some(Apdu::Error(ReturnError { invoke_id, code: Code::Local(1), parameter: Some(error_parameter(root, doc)) })));
    }
    if let Some(kind) = event_kind(name) {
        let xref = xref(root)?;
        let body = body(root, kind.form(D), doc, kind.name(), true)?;
        return Ok(Some(Apdu::event_with_id(invoke_id, EventReport { xref, event: Event::Call { kind, body }, extensions: None })));
    }
    if name.ends_with("Event") && root.child("monitorCrossRefID").is_some() {
        // An event this codec does not follow (device features, agent states, vendor events):
        // routed by its cross-reference id, kept verbatim.
        let xref = xref(root)?;
        return Ok(Some(Apdu::event_with_id(invoke_id, EventReport { xref, event: Event::Other { group: 0, alternative: None, raw: doc.clone() }, extensions: None })));
    }
    if let Some(op) = operation(name, "Response") {
        let arg = match schemas::result(op, D) {
            Some(form) => Argument::Body(body(root, form, doc, op.name(D), false)?),
            None => Argument::Opaque(doc.clone()),
        };
        return Ok(Some(Apdu::Result(ReturnResult { invoke_id, result: Some((Op::Known(op), arg)) })));
    }
    if let Some(op) = operation(name, "") {
        let argument = match schemas::argument(op, D) {
            Some(form) => Argument::Body(body(root, form, doc, op.name(D), false)?),
            None => Argument::Opaque(doc.clone()),
        };
        return Ok(Some(Apdu::Invoke(Invoke { invoke_id, linked_id: None, op: Op::Known(op), argument })));
    }
    Ok(None)
}

fn xref(root: &Element<'_>) -> Result<Bytes, DecodeError> {
    root.child_text("monitorCrossRefID").map(|t| Bytes::copy_from_slice(t.as_bytes())).ok_or_else(|| missing("monitorCrossRefID", root))
}

fn raw(e: &Element<'_>, doc: &Bytes) -> Value {
    Value::Raw(e.verbatim(doc))
}

/// The members of `root` by `form`. `event`: the cross-reference id is the report's, not a
/// member.
fn body(root: &Element<'_>, form: Form, doc: &Bytes, what: &'static str, event: bool) -> Result<Body, DecodeError> {
    // One allocation for the members, not one per doubling.
    let mut b = Body { fields: Vec::with_capacity(root.children.len()), ..Body::new() };
    match form {
        Form::Sequence(slots) => {
            for c in &root.children {
                if event && c.name == "monitorCrossRefID" {
                    continue;
                }
                let field = match slots.iter().find(|s| element(s.name) == c.name) {
                    Some(slot) => Field { name: slot.name, tag: None, value: value(c, slot.name, slot.kind, doc) },
                    None => Field { name: if c.name == "extensions" { FieldName::Extensions } else { FieldName::Unknown }, tag: None, value: raw(c, doc) },
                };
                b.fields.push(field);
            }
            for s in slots.iter().filter(|s| s.required) {
                if !b.fields.iter().any(|f| f.name == s.name && !matches!(f.value, Value::Raw(_))) {
                    return Err(missing(s.name.as_str(), root).within(what));
                }
            }
        }
        Form::ExtensionsOrNull | Form::Bare(_) => {
            for c in &root.children {
                b.fields.push(Field { name: if c.name == "extensions" { FieldName::Extensions } else { FieldName::Unknown }, tag: None, value: raw(c, doc) });
            }
        }
        Form::Opaque(name) => {
            for c in &root.children {
                b.fields.push(Field { name, tag: None, value: raw(c, doc) });
            }
        }
    }
    Ok(b)
}

/// A member's value by its kind; a member whose content does not have the expected shape is
/// kept verbatim (so it re-encodes as it came), and lookups of it find nothing.
fn value(e: &Element<'_>, name: FieldName, kind: Kind, doc: &Bytes) -> Value {
    let v = match (name, kind) {
        (FieldName::MonitorObject, _) => match e.children.first() {
            Some(d) if d.name == "deviceObject" => device_id(d).map(Value::DeviceId),
            Some(c) if c.name == "callObject" => connection(c).map(Value::Connection),
            _ => None,
        },
        (_, Kind::DeviceId) => device_id(e).map(Value::DeviceId),
        (_, Kind::Device) => device_ref(e).map(Value::Device),
        (_, Kind::Connection) => connection(e).map(Value::Connection),
        (_, Kind::Int | Kind::ExplicitInt) if e.children.is_empty() => match enumeration(name) {
            Some(table) => value_of(table, &e.text),
            None => e.text.parse().ok(),
        }
        .map(Value::Int),
        (_, Kind::Octets) if e.children.is_empty() => Some(Value::Octets(Bytes::copy_from_slice(e.text.as_bytes()))),
        (_, Kind::Text) if e.children.is_empty() => Ia5::try_from(e.text.as_ref()).ok().map(Value::Text),
        (_, Kind::Null) if e.children.is_empty() && e.text.is_empty() => Some(Value::Null),
        _ => None,
    };
    v.unwrap_or_else(|| raw(e, doc))
}

/// A device as text, its attributes kept (`typeOfNumber`, `mediaClass`, ...).
fn device_id(e: &Element<'_>) -> Option<DeviceId> {
    if !e.children.is_empty() {
        return None;
    }
    let text = e.text.as_ref();
    let ident = match Ia5::try_from(text) {
        Ok(d) => DeviceIdentifier::Dialing(d),
        Err(()) => DeviceIdentifier::Other(Bytes::copy_from_slice(text.as_bytes())),
    };
    Some(DeviceId { ident, rest: Bytes::copy_from_slice(e.kept_attrs().as_bytes()) })
}

fn device_ref(e: &Element<'_>) -> Option<DeviceRef> {
    match e.children.as_slice() {
        [] if !e.text.is_empty() => device_id(e).map(DeviceRef::Id),
        [c] => match c.name {
            "deviceIdentifier" => device_id(c).map(DeviceRef::Id),
            "notKnown" => Some(DeviceRef::NotKnown),
            "restricted" => Some(DeviceRef::Restricted),
            "notRequired" => Some(DeviceRef::NotRequired),
            "notSpecified" => Some(DeviceRef::NotSpecified),
            _ => None,
        },
        _ => None,
    }
}

/// A connection's `callID` and device; `None` (the member kept verbatim) for anything else in it,
/// or a second call or device: which one counts would be a guess, and re-encoding would drop the
/// other.
fn connection(e: &Element<'_>) -> Option<ConnectionId> {
    let mut c = ConnectionId::default();
    for m in &e.children {
        match m.name {
            "callID" if m.children.is_empty() && c.call.is_none() => c.call = Some(Bytes::copy_from_slice(m.text.as_bytes())),
            "deviceID" | "staticID" if c.device.is_none() => {
                let d = match m.children.as_slice() {
                    [s] if s.name == "staticID" => device_id(s)?,
                    _ => device_id(m)?,
                };
                c.device = Some(LocalDevice::Static(d));
            }
            "dynamicID" if m.children.is_empty() && c.device.is_none() => c.device = Some(LocalDevice::Dynamic(Bytes::copy_from_slice(m.text.as_bytes()))),
            _ => return None,
        }
    }
    Some(c)
}

fn error_parameter(root: &Element<'_>, doc: &Bytes) -> ErrorParameter {
    let Some(c) = root.children.first() else { return ErrorParameter::Opaque(Bytes::new()) };
    let known = category_of(c.name).and_then(|category| {
        let value = match category {
            ErrorCategory::Unspecified => None,
            _ => Some(value_of(error_values(category), &c.text)?),
        };
        Some(UniversalFailure { category, value, explicit: None })
    });
    match known {
        Some(u) if c.children.is_empty() => ErrorParameter::UniversalFailure(u),
        _ => ErrorParameter::Opaque(c.verbatim(doc)),
    }
}

// ---- encoding ------------------------------------------------------------------------------

/// Verbatim bytes are written only when they are XML (a fragment decoded from XML); BER bytes
/// of another wire have no place in a document and are left out.
/// A byte-order mark may lead (a whole document kept as it came: an unknown event, an opaque
/// argument; fuzz regression `bom-before-an-unknown-event-did-not-encode`).
fn is_xml(raw: &[u8]) -> bool {
    let raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
    raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<') && std::str::from_utf8(raw).is_ok()
}

pub(super) fn encode(a: &Apdu, version: ProtocolVersion, out: &mut Vec<u8>) -> Result<(), XmlEncodeError> {
    let ns = version.namespace();
    let mut w = Writer::new(out);
    match a {
        Apdu::Invoke(Invoke { argument: Argument::Event(ev), .. }) => match &ev.event {
            Event::Call { kind, body } => {
                let root = capitalized(kind.name(), "Event");
                w.open_root(&root, ns);
                w.leaf(element(FieldName::CrossRefIdentifier), &String::from_utf8_lossy(&ev.xref));
                fields(&mut w, body);
                w.close_root(&root);
            }
            Event::Other { raw, .. } if is_xml(raw) => w.raw(raw),
            Event::Other { .. } => return Err(XmlEncodeError::NoXmlForm("a BER event")),
        },
        Apdu::Invoke(i) => {
            let op = i.op.known().filter(|o| o.code(D).is_some()).ok_or(XmlEncodeError::NoXmlForm("an operation without an ECMA-323 name"))?;
            document(&mut w, &capitalized(op.name(D), ""), ns, &i.argument)?;
        }
        Apdu::Result(r) => {
            let (op, arg) = r.result.as_ref().ok_or(XmlEncodeError::NoXmlForm("a result without its operation"))?;
            let op = op.known().filter(|o| o.code(D).is_some()).ok_or(XmlEncodeError::NoXmlForm("an operation without an ECMA-323 name"))?;
            document(&mut w, &capitalized(op.name(D), "Response"), ns, arg)?;
        }
        Apdu::Error(e) => {
            w.open_root("CSTAErrorCode", ns);
            match &e.parameter {
                Some(ErrorParameter::UniversalFailure(u)) => {
                    let cat = category_element(u.category);
                    match u.value {
                        Some(v) => w.leaf(cat, &name_of(error_values(u.category), v).map_or_else(|| v.to_string(), str::to_owned)),
                        None => w.empty(cat),
                    }
                }
                Some(ErrorParameter::Opaque(raw)) if is_xml(raw) => w.raw(raw),
                // A `CSTAErrorCode` that came empty goes out empty: writing a reason it did not
                // give would change the message (fuzz finding 8).
                Some(ErrorParameter::Opaque(raw)) if raw.is_empty() => {}
                _ => w.leaf("operation", "generic"),
            }
            w.close_root("CSTAErrorCode");
        }
        // ECMA-323 has no reject: a request we cannot serve gets a CSTAErrorCode.
        Apdu::Reject(rj) => {
            w.open_root("CSTAErrorCode", ns);
            w.leaf("operation", if matches!(rj.problem, RejectProblem::Invoke(_)) { "serviceNotSupported" } else { "generic" });
            w.close_root("CSTAErrorCode");
        }
        Apdu::Aarq(_) | Apdu::Aare(_) | Apdu::Rlrq(_) | Apdu::Rlre(_) | Apdu::Abrt(_) => return Err(XmlEncodeError::NoXmlForm("an ACSE APDU (XML links open with StartApplicationSession)")),
    }
    Ok(())
}

fn document(w: &mut Writer<'_>, root: &str, ns: &str, arg: &Argument) -> Result<(), XmlEncodeError> {
    match arg {
        Argument::Opaque(raw) if is_xml(raw) => w.raw(raw),
        Argument::Opaque(_) => return Err(XmlEncodeError::NoXmlForm("a BER value")),
        Argument::Event(_) => return Err(XmlEncodeError::NoXmlForm("an event outside an event report")),
        Argument::Absent => {
            w.open_root(root, ns);
            w.close_root(root);
        }
        Argument::Body(b) => {
            w.open_root(root, ns);
            fields(w, b);
            w.close_root(root);
        }
    }
    Ok(())
}

fn fields(w: &mut Writer<'_>, b: &Body) {
    for f in &b.fields {
        let name = element(f.name);
        match &f.value {
            Value::Raw(raw) => {
                if is_xml(raw) {
                    w.raw(raw);
                }
            }
            Value::DeviceId(d) if f.name == FieldName::MonitorObject => {
                w.open(name);
                device(w, "deviceObject", d);
                w.close(name);
            }
            Value::Connection(c) if f.name == FieldName::MonitorObject => {
                w.open(name);
                w.open("callObject");
                connection_members(w, c);
                w.close("callObject");
                w.close(name);
            }
            Value::DeviceId(d) => device(w, name, d),
            Value::Device(r) => {
                w.open(name);
                match r {
                    DeviceRef::Id(d) => device(w, "deviceIdentifier", d),
                    other => w.empty(other.absent_name().unwrap_or("notKnown")),
                }
                w.close(name);
            }
            Value::Connection(c) => {
                w.open(name);
                connection_members(w, c);
                w.close(name);
            }
            Value::Int(v) => match enumeration(f.name).and_then(|t| name_of(t, *v)) {
                Some(n) => w.leaf(name, n),
                None => w.leaf(name, &v.to_string()),
            },
            Value::Octets(o) => w.leaf(name, &String::from_utf8_lossy(o)),
            Value::Text(t) => w.leaf(name, t.as_str()),
            Value::Null => w.empty(name),
            // ACSE values have no place in a CSTA document.
            Value::Oid(_) | Value::Diagnostic { .. } | Value::Auth(_) | Value::UserInfo(_) => {}
        }
    }
}

/// A device's text with the attributes it came with (only XML attributes: a BER device's
/// further members have no XML form).
fn device(w: &mut Writer<'_>, name: &str, d: &DeviceId) {
    let attrs = std::str::from_utf8(&d.rest).ok().filter(|a| a.starts_with(|c: char| c.is_ascii_whitespace())).unwrap_or("");
    let text = match &d.ident {
        DeviceIdentifier::Other(b) => String::from_utf8_lossy(b).into_owned(),
        DeviceIdentifier::DeviceNumber(n) => n.to_string(),
        DeviceIdentifier::Dialing(t) | DeviceIdentifier::ImplicitPublic(t) | DeviceIdentifier::ImplicitPrivate(t) | DeviceIdentifier::ExplicitPublic { digits: t, .. } | DeviceIdentifier::ExplicitPrivate { digits: t, .. } => t.as_str().to_owned(),
    };
    w.leaf_with(name, attrs, &text);
}

fn connection_members(w: &mut Writer<'_>, c: &ConnectionId) {
    if let Some(call) = &c.call {
        w.leaf("callID", &String::from_utf8_lossy(call));
    }
    match &c.device {
        Some(LocalDevice::Static(d)) => device(w, "deviceID", d),
        Some(LocalDevice::Dynamic(b)) => w.leaf("dynamicID", &String::from_utf8_lossy(b)),
        None => {}
    }
}

