//! Schema-driven SEQUENCE bodies: the one mechanism that decodes and encodes every CSTA
//! argument, result and event body, and the ACSE APDUs, in both dialects.
//!
//! A body is the ordered list of its members as they were on the wire ([`Field`]s), each named
//! after its ECMA-285 member name ([`FieldName`]). Each ASN.1 type has a [`Form`] per dialect
//! (in `schemas.rs`): the members' tags and kinds, in order. Decoding walks the members in order
//! and matches each to the next schema slot with that tag, exactly as an ASN.1 decoder handles
//! OPTIONAL members; a member that matches no slot (vendor additions, private data, fields of a
//! later edition) is kept verbatim as [`Value::Raw`] in its position rather than failing the
//! message. Encoding writes the fields back in order, so a decoded body re-encodes to the same
//! bytes, and a body built by the gateway is encoded in whichever dialect the PBX speaks (tags
//! come from that dialect's schema).

use bytes::Bytes;
use serde::Serialize;

use super::acse_values::{Authentication, UserInformation};
use super::ber::{DecodeError, ErrorKind, Ia5, Reader, Result, Tag, Tlv, Writer};
use super::values::{ConnectionId, DeviceId, DeviceRef, Dialect};

macro_rules! field_names {
    ($($v:ident => $s:literal),* $(,)?) => {
        /// ECMA-285 (or X.227 for ACSE) member names. Phase II members carry the Phase III
        /// name of the member with the same meaning, so both dialects read alike.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum FieldName { $(#[serde(rename = $s)] $v,)* }
        impl FieldName {
            pub fn as_str(self) -> &'static str { match self { $(FieldName::$v => $s,)* } }
        }
    };
}

field_names! {
    Unknown => "unknown",
    Value => "value",
    // devices and connections
    MonitorObject => "monitorObject", CallingDevice => "callingDevice", CalledDirectoryNumber => "calledDirectoryNumber",
    CalledDevice => "calledDevice", AlertingDevice => "alertingDevice", AnsweringDevice => "answeringDevice",
    InitiatingDevice => "initiatingDevice", ReleasingDevice => "releasingDevice", FailingDevice => "failingDevice",
    HoldingDevice => "holdingDevice", RetrievingDevice => "retrievingDevice", NetworkInterfaceUsed => "networkInterfaceUsed",
    LastRedirectionDevice => "lastRedirectionDevice", OriginatingDevice => "originatingDevice",
    TransferringDevice => "transferringDevice", TransferredToDevice => "transferredToDevice",
    ConferencingDevice => "conferencingDevice", AddedParty => "addedParty", DivertingDevice => "divertingDevice",
    NewDestination => "newDestination", NetworkCallingDevice => "networkCallingDevice", NetworkCalledDevice => "networkCalledDevice",
    AssociatedCallingDevice => "associatedCallingDevice", AssociatedCalledDevice => "associatedCalledDevice",
    SnapshotObject => "snapshotObject",
    Connection => "connection", InitiatedConnection => "initiatedConnection", OriginatedConnection => "originatedConnection",
    OutboundConnection => "outboundConnection", EstablishedConnection => "establishedConnection",
    DroppedConnection => "droppedConnection", FailedConnection => "failedConnection", HeldConnection => "heldConnection",
    RetrievedConnection => "retrievedConnection", ClearedCall => "clearedCall", PrimaryOldCall => "primaryOldCall",
    SecondaryOldCall => "secondaryOldCall", OriginatingNidConnection => "originatingNIDConnection",
    ConnectionToBeCleared => "connectionToBeCleared", ConnectionToSendDigits => "connectionToSendDigits",
    // other members
    CrossRefIdentifier => "crossRefIdentifier", LocalConnectionInfo => "localConnectionInfo", Cause => "cause",
    CorrelatorData => "correlatorData", UserData => "userData", Extensions => "extensions", AccountCode => "accountCode",
    AuthCode => "authCode", AutoOriginate => "autoOriginate", MonitorFilter => "requestedMonitorFilter",
    ActualMonitorFilter => "actualMonitorFilter", MonitorType => "monitorType", MonitorMediaClass => "requestedMonitorMediaClass",
    ActualMonitorMediaClass => "actualMonitorMediaClass", MonitorExistingCalls => "monitorExistingCalls",
    DigitMode => "digitMode", CharactersToSend => "charactersToSend", ToneDuration => "toneDuration",
    PulseRate => "pulseRate", PauseDuration => "pauseDuration", DigitsGeneratedList => "digitGeneratedList",
    SysStatRegisterId => "sysStatRegisterID", SystemStatus => "systemStatus", EscapeRegisterId => "escapeRegisterID",
    Security => "security", PrivateData => "privateData", SnapshotData => "snapshotData",
    ConnectionList => "connectionList", ChargingInfo => "chargingInfo", ServicesPermitted => "servicesPermitted",
    MediaCallCharacteristics => "mediaCallCharacteristics", CallCharacteristics => "callCharacteristics",
    ConnectionInfo => "connectionInfo", CallLinkageData => "callLinkageData", NetworkCapability => "networkCapability",
    Reason => "reason", NoData => "noData",
    // ACSE (X.227)
    ProtocolVersion => "protocolVersion", ApplicationContextName => "applicationContextName",
    SenderAcseRequirements => "senderAcseRequirements", MechanismName => "mechanismName",
    CallingAuthenticationValue => "callingAuthenticationValue", UserInformation => "userInformation",
    Result => "result", ResultSourceDiagnostic => "resultSourceDiagnostic",
    ResponderAcseRequirements => "responderAcseRequirements", RespondingAuthenticationValue => "respondingAuthenticationValue",
    AbortSource => "abortSource",
}

/// A decoded member value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Connection(ConnectionId),
    /// A device in a role (`CallingDeviceID`, `SubjectDeviceID`, ...).
    Device(DeviceRef),
    /// A plain `DeviceID` (MakeCall's devices, MonitorStart's object).
    DeviceId(DeviceId),
    /// INTEGER or ENUMERATED (cause, local connection state, system status, ...).
    Int(i64),
    Octets(Bytes),
    Text(Ia5),
    Null,
    /// An OBJECT IDENTIFIER's content octets.
    Oid(Bytes),
    /// AARE result-source-diagnostic: source (1 service-user, 2 service-provider) and value.
    Diagnostic { source: u8, value: i64 },
    Auth(Authentication),
    UserInfo(UserInformation),
    /// The whole TLV, kept verbatim: unknown members, private data, filters, lists.
    Raw(Bytes),
}

/// How a slot's value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connection,
    Device,
    DeviceId,
    Int,
    Octets,
    Text,
    Null,
    /// OID under an explicit context tag (`A1 { 06 .. }`).
    ExplicitOid,
    /// OID under an implicit tag.
    Oid,
    /// INTEGER under an explicit context tag (`A2 { 02 .. }`).
    ExplicitInt,
    Diagnostic,
    Auth,
    UserInfo,
    Raw,
}

/// One member position of a SEQUENCE schema.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub name: FieldName,
    /// Tags accepted for this member; the first is used when encoding a value built locally.
    pub tags: &'static [u8],
    pub kind: Kind,
    pub required: bool,
}

/// The `extensions CSTACommonArguments OPTIONAL` member that ends most CSTA SEQUENCEs.
pub const EXTENSIONS: Slot = opt(FieldName::Extensions, &[0x7E], Kind::Raw);

/// The `noData NULL` alternative of a result without data, as a member of its wrapped form.
const NO_DATA: Slot = opt(FieldName::NoData, &[0x05], Kind::Null);

/// Optional member.
pub const fn opt(name: FieldName, tags: &'static [u8], kind: Kind) -> Slot {
    Slot { name, tags, kind, required: false }
}
/// Mandatory member: decoding fails when it is missing.
pub const fn req(name: FieldName, tags: &'static [u8], kind: Kind) -> Slot {
    Slot { name, tags, kind, required: true }
}

/// The shape of an ASN.1 type in one dialect.
#[derive(Debug, Clone, Copy)]
pub enum Form {
    /// A SEQUENCE (tag `30`, or another tag when implicitly tagged).
    Sequence(&'static [Slot]),
    /// A Phase II value that Phase I defines as a bare type (systemStatus's ENUMERATED,
    /// makeCall's ConnectionID, ...) and that ECMA-218 may wrap as `SEQUENCE { value,
    /// extensions CSTACommonArguments OPTIONAL }`: no text or frame tells which (asn1/README.md
    /// P8), so both are accepted, and the one that came is kept ([`Body::wrapping`]).
    Bare(Slot),
    /// `CHOICE { extensions CSTACommonArguments, noData NULL }` results; in Phase II also
    /// `SEQUENCE { noData NULL OPTIONAL, extensions OPTIONAL }`, the P8 wrapping of "nothing".
    ExtensionsOrNull,
    /// Vendor-defined content (escape services' private data): any single value, kept verbatim
    /// under the given name.
    Opaque(FieldName),
}

/// A member as found on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: FieldName,
    /// The tag it had on the wire; `None` for a field built locally (the dialect's schema
    /// supplies the tag).
    pub tag: Option<Tag>,
    pub value: Value,
}

/// An ordered list of members; `null` when the value on the wire was `NULL` (results without
/// data).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Body {
    pub fields: Vec<Field>,
    pub null: bool,
    /// The Phase II form of a [`Form::Bare`] or [`Form::ExtensionsOrNull`] value: how it came on
    /// the wire, so it re-encodes byte for byte; `None` for a body built locally, which goes out
    /// bare (today's form) unless its sender says otherwise ([`super::Apdu::shaped`]).
    pub wrapping: Option<Wrapping>,
}

/// The two wire forms of a Phase II value whose shape no available standard text confirms
/// (asn1/README.md P8): the bare Phase I type, or `SEQUENCE { value, extensions OPTIONAL }`.
/// Also the per-PBX setting `phase2_results` and `sim-pbx --phase2-results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wrapping {
    /// The Phase I type alone (what OXE is known to send, and what we send by default).
    #[default]
    Bare,
    /// `SEQUENCE { value, extensions CSTACommonArguments OPTIONAL }`.
    Wrapped,
}

impl std::str::FromStr for Wrapping {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bare" => Ok(Wrapping::Bare),
            "wrapped" => Ok(Wrapping::Wrapped),
            _ => Err(format!("{s:?} is neither \"bare\" nor \"wrapped\"")),
        }
    }
}

impl Body {
    pub fn new() -> Self {
        Body::default()
    }
    /// The `NULL` result.
    pub fn null() -> Self {
        Body { fields: Vec::new(), null: true, wrapping: None }
    }
    /// Add a member (builder style, for bodies the gateway sends).
    #[must_use]
    pub fn with(mut self, name: FieldName, value: Value) -> Self {
        self.fields.push(Field { name, tag: None, value });
        self
    }
    pub fn get(&self, name: FieldName) -> Option<&Value> {
        self.fields.iter().find(|f| f.name == name).map(|f| &f.value)
    }
    pub fn device(&self, name: FieldName) -> Option<&DeviceRef> {
        match self.get(name)? {
            Value::Device(d) => Some(d),
            _ => None,
        }
    }
    pub fn device_id(&self, name: FieldName) -> Option<&DeviceId> {
        match self.get(name)? {
            Value::DeviceId(d) => Some(d),
            Value::Device(DeviceRef::Id(d)) => Some(d),
            _ => None,
        }
    }
    /// Digits of a device member, whichever way it is typed.
    pub fn digits(&self, name: FieldName) -> Option<String> {
        self.device_id(name).and_then(DeviceId::digits)
    }
    pub fn connection(&self, name: FieldName) -> Option<&ConnectionId> {
        match self.get(name)? {
            Value::Connection(c) => Some(c),
            _ => None,
        }
    }
    /// The first connection member: the event's own connection (every call event starts with it).
    pub fn first_connection(&self) -> Option<&ConnectionId> {
        self.fields.iter().find_map(|f| match &f.value {
            Value::Connection(c) => Some(c),
            _ => None,
        })
    }
    pub fn int(&self, name: FieldName) -> Option<i64> {
        match self.get(name)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn octets(&self, name: FieldName) -> Option<&Bytes> {
        match self.get(name)? {
            Value::Octets(b) => Some(b),
            _ => None,
        }
    }
    pub fn text(&self, name: FieldName) -> Option<&Ia5> {
        match self.get(name)? {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Decode a value of `form` from the TLV `t`.
    pub fn decode(r: &Reader<'_>, t: &Tlv, form: Form, dialect: Dialect, what: &'static str) -> Result<Body> {
        Self::decode_inner(r, t, form, dialect).map_err(|e| e.within(what))
    }

    fn decode_inner(r: &Reader<'_>, t: &Tlv, form: Form, dialect: Dialect) -> Result<Body> {
        match form {
            Form::ExtensionsOrNull => {
                if t.tag == Tag::NULL {
                    r.null(t, "NULL")?;
                    return Ok(Body::null());
                }
                if t.tag == Tag::SEQUENCE && dialect == Dialect::Phase2 {
                    return Ok(decode_members(r, t, &[NO_DATA, EXTENSIONS], dialect)?.wrapped(Wrapping::Wrapped));
                }
                t.expect(Tag(0x7E), "extensions or NULL")?;
                Ok(Body { fields: vec![Field { name: FieldName::Extensions, tag: Some(t.tag), value: Value::Raw(r.raw(t)) }], ..Body::default() })
            }
            Form::Opaque(name) => Ok(Body { fields: vec![Field { name, tag: Some(t.tag), value: Value::Raw(r.raw(t)) }], ..Body::default() }),
            Form::Bare(slot) => {
                if t.tag == Tag::SEQUENCE && !slot.tags.contains(&0x30) {
                    return Ok(decode_members(r, t, &[slot, EXTENSIONS], dialect)?.wrapped(Wrapping::Wrapped));
                }
                if t.tag == Tag::NULL && !slot.tags.contains(&0x05) {
                    r.null(t, "NULL")?;
                    return Ok(Body::null());
                }
                if !slot_accepts(&slot, t.tag) {
                    return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: slot.name.as_str(), found: t.tag }, t.start));
                }
                let value = decode_value(r, t, slot.kind, dialect)?;
                Ok(Body { fields: vec![Field { name: slot.name, tag: Some(t.tag), value }], null: false, wrapping: Some(Wrapping::Bare) })
            }
            Form::Sequence(slots) => {
                if t.tag == Tag::NULL {
                    r.null(t, "NULL")?;
                    return Ok(Body::null());
                }
                decode_members(r, t, slots, dialect)
            }
        }
    }

    fn wrapped(mut self, w: Wrapping) -> Body {
        self.wrapping = Some(w);
        self
    }

    /// Encode as `form` in `dialect`, under `outer` instead of the SEQUENCE tag when the type is
    /// implicitly tagged (Phase III event bodies).
    pub fn encode(&self, w: &mut Writer<'_>, form: Form, dialect: Dialect, outer: Option<Tag>) {
        if self.null {
            w.null(Tag::NULL);
            return;
        }
        let wrapped = self.wrapping == Some(Wrapping::Wrapped);
        match form {
            Form::ExtensionsOrNull if wrapped => self.encode_members(w, &[NO_DATA, EXTENSIONS], dialect, Tag::SEQUENCE),
            Form::ExtensionsOrNull | Form::Opaque(_) => match self.fields.first() {
                Some(Field { value: Value::Raw(b), .. }) => w.raw(b),
                _ => w.null(Tag::NULL),
            },
            Form::Bare(slot) if wrapped => self.encode_members(w, &[slot, EXTENSIONS], dialect, Tag::SEQUENCE),
            Form::Bare(slot) => match self.fields.iter().find(|f| f.name == slot.name) {
                Some(f) => encode_field(w, f, &slot, dialect),
                None => w.null(Tag::NULL),
            },
            Form::Sequence(slots) => self.encode_members(w, slots, dialect, outer.unwrap_or(Tag::SEQUENCE)),
        }
    }

    /// The members under `tag`, in schema order.
    fn encode_members(&self, w: &mut Writer<'_>, slots: &[Slot], dialect: Dialect, tag: Tag) {
        w.constructed(tag, |w| {
            // Members go out in schema order. A decoded body already is in that order (the
            // decoder matches slots monotonically) and keeps its unknown members where they
            // were: each sorts just after the member before it.
            let mut order: Vec<(usize, &Field)> = Vec::with_capacity(self.fields.len());
            let mut last = 0;
            for f in &self.fields {
                if f.name != FieldName::Unknown {
                    if let Some(i) = slots.iter().position(|s| s.name == f.name) {
                        last = i;
                    }
                }
                order.push((last, f));
            }
            order.sort_by_key(|(i, _)| *i);
            for f in order.into_iter().map(|(_, f)| f) {
                if let Value::Raw(b) = &f.value {
                    if f.name == FieldName::Unknown || !slots.iter().any(|s| s.name == f.name) {
                        w.raw(b);
                        continue;
                    }
                }
                // A member this dialect has no slot for cannot be expressed: it is left out.
                if let Some(slot) = slots.iter().find(|s| s.name == f.name) {
                    encode_field(w, f, slot, dialect);
                }
            }
        });
    }
}

/// The members of a SEQUENCE `t` (any tag: implicitly tagged types have their own), matched to
/// `slots` in order; members no slot takes are kept verbatim in their position.
fn decode_members(r: &Reader<'_>, t: &Tlv, slots: &[Slot], dialect: Dialect) -> Result<Body> {
    t.constructed("SEQUENCE")?;
    let mut inner = r.enter(t)?;
    let mut fields = Vec::with_capacity(slots.len().min(12));
    let mut next_slot = 0;
    let mut seen = 0u64; // bit per slot index (schemas have < 64 slots)
    while let Some(m) = inner.next()? {
        match slots[next_slot..].iter().position(|s| slot_accepts(s, m.tag)) {
            Some(k) => {
                let i = next_slot + k;
                let value = decode_value(&inner, &m, slots[i].kind, dialect).map_err(|e| e.within(slots[i].name.as_str()))?;
                fields.push(Field { name: slots[i].name, tag: Some(m.tag), value });
                seen |= 1 << i;
                next_slot = i + 1;
            }
            None => {
                // A known member with the constructed bit flipped is malformed, not an unknown
                // addition.
                let flipped = Tag(m.tag.0 ^ 0x20);
                if m.tag.0 <= 0xFF && slots[next_slot..].iter().any(|s| !s.tags.is_empty() && slot_accepts(s, flipped)) {
                    let kind = if m.tag.constructed() { ErrorKind::MustBePrimitive("member") } else { ErrorKind::MustBeConstructed("member") };
                    return Err(DecodeError::new(kind, m.start));
                }
                fields.push(Field { name: FieldName::Unknown, tag: Some(m.tag), value: Value::Raw(inner.raw(&m)) });
            }
        }
    }
    if let Some((_, s)) = slots.iter().enumerate().find(|(i, s)| s.required && seen & (1 << i) == 0) {
        return Err(DecodeError::new(ErrorKind::Missing(s.name.as_str()), t.content_end));
    }
    Ok(Body { fields, null: false, wrapping: None })
}

fn slot_accepts(s: &Slot, tag: Tag) -> bool {
    match s.kind {
        // A bare Phase II DeviceID is a CHOICE: any of its alternatives' tags.
        Kind::DeviceId if s.tags.is_empty() => DeviceId::bare_choice(tag),
        // An ASN.1 ANY, kept verbatim.
        Kind::Raw if s.tags.is_empty() => true,
        _ => tag.0 <= 0xFF && s.tags.contains(&(tag.0 as u8)),
    }
}

fn decode_value(r: &Reader<'_>, t: &Tlv, kind: Kind, dialect: Dialect) -> Result<Value> {
    const W: &str = "member";
    Ok(match kind {
        Kind::Connection => Value::Connection(ConnectionId::decode(r, t, dialect)?),
        Kind::Device => Value::Device(DeviceRef::decode(r, t, dialect)?),
        Kind::DeviceId => Value::DeviceId(DeviceId::decode(r, t, dialect)?),
        Kind::Int => Value::Int(r.integer(t, W)?),
        Kind::Octets => Value::Octets(r.octets(t, W)?),
        Kind::Text => Value::Text(r.ia5(t, W)?),
        Kind::Null => {
            r.null(t, W)?;
            Value::Null
        }
        Kind::Oid => Value::Oid(oid_content(r, t)?),
        Kind::ExplicitOid => {
            let inner_t = single_inner(r, t)?;
            inner_t.1.expect(Tag::OID, "OBJECT IDENTIFIER")?;
            Value::Oid(oid_content(&inner_t.0, &inner_t.1)?)
        }
        Kind::ExplicitInt => {
            let (inner, v) = single_inner(r, t)?;
            v.expect(Tag::INTEGER, "INTEGER")?;
            Value::Int(inner.integer(&v, W)?)
        }
        Kind::Diagnostic => {
            let (inner, choice) = single_inner(r, t)?;
            let source = match choice.tag.0 {
                0xA1 => 1,
                0xA2 => 2,
                _ => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "service-user [1] or service-provider [2]", found: choice.tag }, choice.start)),
            };
            let (inner2, v) = single_inner(&inner, &choice)?;
            v.expect(Tag::INTEGER, "INTEGER")?;
            Value::Diagnostic { source, value: inner2.integer(&v, W)? }
        }
        Kind::Auth => Value::Auth(Authentication::decode(r, t)?),
        Kind::UserInfo => Value::UserInfo(UserInformation::decode(r, t)?),
        Kind::Raw => Value::Raw(r.raw(t)),
    })
}

fn oid_content(r: &Reader<'_>, t: &Tlv) -> Result<Bytes> {
    let c = r.octets(t, "OBJECT IDENTIFIER")?;
    if super::ber::oid_to_string(&c).is_none() {
        return Err(DecodeError::new(ErrorKind::BadValue("OBJECT IDENTIFIER"), t.start));
    }
    Ok(c)
}

/// The single TLV inside an explicitly tagged value.
fn single_inner<'a>(r: &Reader<'a>, t: &Tlv) -> Result<(Reader<'a>, Tlv)> {
    t.constructed("explicit tag")?;
    let mut inner = r.enter(t)?;
    let v = inner.required("tagged value")?;
    inner.finish()?;
    Ok((inner, v))
}

fn encode_field(w: &mut Writer<'_>, f: &Field, slot: &Slot, dialect: Dialect) {
    let tag = match f.tag {
        Some(t) if slot_accepts(slot, t) => t,
        _ => Tag(u32::from(slot.tags.first().copied().unwrap_or(0x30))),
    };
    match &f.value {
        Value::Connection(c) => c.encode(w, dialect),
        Value::Device(d) => d.encode(w, tag, dialect),
        Value::DeviceId(d) => match slot.kind {
            // A DeviceID member under an explicit role tag.
            Kind::Device => DeviceRef::Id(d.clone()).encode(w, tag, dialect),
            _ => d.encode(w, dialect),
        },
        Value::Int(i) => match slot.kind {
            Kind::ExplicitInt => w.constructed(tag, |w| w.integer(Tag::INTEGER, *i)),
            _ => w.integer(tag, *i),
        },
        Value::Octets(b) => w.primitive(tag, b),
        Value::Text(t) => w.primitive(tag, t.as_bytes()),
        Value::Null => w.null(tag),
        Value::Oid(c) => match slot.kind {
            Kind::ExplicitOid => w.constructed(tag, |w| w.primitive(Tag::OID, c)),
            _ => w.primitive(tag, c),
        },
        Value::Diagnostic { source, value } => w.constructed(tag, |w| {
            w.constructed(Tag(0xA0 + u32::from(*source)), |w| w.integer(Tag::INTEGER, *value))
        }),
        Value::Auth(a) => a.encode(w, tag),
        Value::UserInfo(u) => u.encode(w, tag),
        Value::Raw(b) => w.raw(b),
    }
}
