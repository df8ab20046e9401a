//! The dialect-neutral CSTA value types (ECMA-285 §9 device and call identifiers) and their two
//! wire forms: Phase III (ECMA-285: `DeviceID` is a SEQUENCE, `ConnectionID` a CHOICE) and
//! Phase II (ECMA-217/218 as Alcatel OXE speaks it: `DeviceID` is a bare CHOICE,
//! `ConnectionID` an IMPLICIT SEQUENCE { call [2], device }). See the brief §4.1 and §4.10.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ber::{DecodeError, ErrorKind, Ia5, Reader, Result, Tag, Tlv, Writer};

/// Which CSTA generation a PBX speaks. Chosen per PBX in its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// ECMA-285 (CSTA Phase III): Panasonic, Siemens HiPath/OpenScape.
    Phase3,
    /// ECMA-217/218 (CSTA Phase II) as Alcatel OXE speaks it.
    Phase2,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Phase3 => "phase3",
            Dialect::Phase2 => "phase2",
        }
    }
}

/// A device number in one of the numbering forms of ECMA-285 `DeviceID.deviceIdentifier`
/// (Phase II spreads the same alternatives over `DeviceID` and `ExtendedDeviceID`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceIdentifier {
    /// `[0]` dialingNumber: the directory number, what CSTA clients send.
    Dialing(Ia5),
    /// `[1]` deviceNumber.
    DeviceNumber(i64),
    /// `[2]` implicitPublic (OXE uses it for external numbers).
    ImplicitPublic(Ia5),
    /// `[3]` explicitPublic: type of number (0 unknown .. 5 abbreviated) and digits.
    ExplicitPublic { ton: u8, digits: Ia5 },
    /// `[4]` implicitPrivate (OXE uses it for internal numbers).
    ImplicitPrivate(Ia5),
    /// `[5]` explicitPrivate.
    ExplicitPrivate { ton: u8, digits: Ia5 },
    /// `[6]` other: opaque.
    Other(Bytes),
}

impl DeviceIdentifier {
    /// The number as a string: the digits (the dialable part of a written form such as
    /// `N<302118840100>;noa=nk`, see [`dialable`]), or the decimal device number; `None` for
    /// `other`.
    pub fn digits(&self) -> Option<String> {
        match self {
            DeviceIdentifier::Dialing(d)
            | DeviceIdentifier::ImplicitPublic(d)
            | DeviceIdentifier::ImplicitPrivate(d)
            | DeviceIdentifier::ExplicitPublic { digits: d, .. }
            | DeviceIdentifier::ExplicitPrivate { digits: d, .. } => Some(dialable(d.as_str()).to_owned()),
            DeviceIdentifier::DeviceNumber(n) => Some(n.to_string()),
            DeviceIdentifier::Other(_) => None,
        }
    }

    fn decode(r: &Reader<'_>, t: &Tlv) -> Result<Self> {
        const W: &str = "DeviceID";
        Ok(match t.tag.0 {
            0x80 => DeviceIdentifier::Dialing(r.ia5(t, W)?),
            0x81 => DeviceIdentifier::DeviceNumber(r.integer(t, W)?),
            0x82 => DeviceIdentifier::ImplicitPublic(r.ia5(t, W)?),
            0x84 => DeviceIdentifier::ImplicitPrivate(r.ia5(t, W)?),
            0x86 => DeviceIdentifier::Other(r.octets(t, W)?),
            0xA3 | 0xA5 => {
                let mut inner = r.enter(t)?;
                let n = inner.required("type of number")?;
                inner.finish()?;
                let ton = (n.tag.0 as u8).wrapping_sub(0x80);
                if n.tag.0 < 0x80 || n.tag.0 > 0x86 {
                    return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "type of number [0..6]", found: n.tag }, n.start));
                }
                let digits = inner.ia5(&n, W)?;
                if t.tag.0 == 0xA3 {
                    DeviceIdentifier::ExplicitPublic { ton, digits }
                } else {
                    DeviceIdentifier::ExplicitPrivate { ton, digits }
                }
            }
            _ => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "DeviceID", found: t.tag }, t.start)),
        })
    }

    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            DeviceIdentifier::Dialing(d) => w.primitive(Tag(0x80), d.as_bytes()),
            DeviceIdentifier::DeviceNumber(n) => w.integer(Tag(0x81), *n),
            DeviceIdentifier::ImplicitPublic(d) => w.primitive(Tag(0x82), d.as_bytes()),
            DeviceIdentifier::ImplicitPrivate(d) => w.primitive(Tag(0x84), d.as_bytes()),
            DeviceIdentifier::Other(b) => w.primitive(Tag(0x86), b),
            DeviceIdentifier::ExplicitPublic { ton, digits } => {
                w.constructed(Tag(0xA3), |w| w.primitive(Tag(0x80 + u32::from(*ton)), digits.as_bytes()))
            }
            DeviceIdentifier::ExplicitPrivate { ton, digits } => {
                w.constructed(Tag(0xA5), |w| w.primitive(Tag(0x80 + u32::from(*ton)), digits.as_bytes()))
            }
        }
    }

    fn is_choice_tag(tag: Tag) -> bool {
        matches!(tag.0, 0x80 | 0x81 | 0x82 | 0x84 | 0x86 | 0xA3 | 0xA5)
    }
}

/// The number a device identifier dials, out of the written forms PBXs use (CSTA XML above all,
/// issue 17): `N<302118840100>;noa=nk` → `302118840100`, `tel:+4989123;phone-context=x` →
/// `+4989123`, `sip:2005@pbx.example` → `2005`; a plain number is itself. The raw form is what
/// goes back to the PBX; this is what a person or a directory compares.
pub fn dialable(raw: &str) -> &str {
    let s = raw.trim();
    if let (Some(open), Some(close)) = (s.find('<'), s.find('>')) {
        if open < close {
            return &s[open + 1..close];
        }
    }
    let s = s.strip_prefix("tel:").or_else(|| s.strip_prefix("sips:")).or_else(|| s.strip_prefix("sip:")).unwrap_or(s);
    let end = s.find([';', '@']).unwrap_or(s.len());
    &s[..end]
}

/// A device: its identifier plus, in Phase III, any further members of the `DeviceID` SEQUENCE
/// (privateNumber, privateName, mediaCallCharacteristics), kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId {
    pub ident: DeviceIdentifier,
    /// Encoded TLVs that followed the identifier inside a Phase III `DeviceID`.
    pub rest: Bytes,
}

impl DeviceId {
    /// A dialing number (`[0]`), the form CSTA clients use for extensions and destinations.
    ///
    /// # Errors
    /// If `digits` is not 7-bit ASCII.
    pub fn dialing(digits: &str) -> std::result::Result<DeviceId, InvalidDigits> {
        Ok(DeviceId { ident: DeviceIdentifier::Dialing(Ia5::try_from(digits).map_err(|()| InvalidDigits)?), rest: Bytes::new() })
    }
    pub fn digits(&self) -> Option<String> {
        self.ident.digits()
    }

    /// Decode the dialect's form: Phase III `30 {choice ...}`, Phase II a bare choice. The
    /// other dialect's form is an error: it could not be re-encoded faithfully (found by the
    /// `apdu_phase2` fuzz target).
    pub fn decode(r: &Reader<'_>, t: &Tlv, dialect: Dialect) -> Result<Self> {
        match (dialect, t.tag == Tag::SEQUENCE) {
            (Dialect::Phase3, false) => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "DeviceID SEQUENCE (Phase III)", found: t.tag }, t.start)),
            (Dialect::Phase2, true) => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "DeviceID CHOICE (Phase II)", found: t.tag }, t.start)),
            _ => {}
        }
        if t.tag == Tag::SEQUENCE {
            let mut inner = r.enter(t)?;
            let first = inner.required("DeviceID.deviceIdentifier")?;
            let ident = DeviceIdentifier::decode(&inner, &first)?;
            let rest_start = inner.position();
            while inner.next()?.is_some() {}
            let rest = r.source().slice(rest_start..t.content_end);
            Ok(DeviceId { ident, rest })
        } else {
            Ok(DeviceId { ident: DeviceIdentifier::decode(r, t)?, rest: Bytes::new() })
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>, dialect: Dialect) {
        match dialect {
            Dialect::Phase3 => w.constructed(Tag::SEQUENCE, |w| {
                self.ident.encode(w);
                w.raw(&self.rest);
            }),
            Dialect::Phase2 => self.ident.encode(w),
        }
    }

    /// Tags a bare (Phase II) `DeviceID` can start with.
    pub fn bare_choice(tag: Tag) -> bool {
        DeviceIdentifier::is_choice_tag(tag)
    }
}

/// The string given for a device number was not 7-bit ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("device numbers must be 7-bit ASCII")]
pub struct InvalidDigits;

/// A device in a role (`CallingDeviceID`, `CalledDeviceID`, `SubjectDeviceID`,
/// `RedirectionDeviceID`, ...): an identifier, or the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    Id(DeviceId),
    /// `[7]` the PBX knows the device exists but cannot name it.
    NotKnown,
    /// Phase III `[8]` (`[10]` in RedirectionDeviceID): withheld for privacy.
    Restricted,
    /// `[8]` in Phase II and in Phase III RedirectionDeviceID.
    NotRequired,
    /// `[9]` in RedirectionDeviceID.
    NotSpecified,
}

impl DeviceRef {
    pub fn digits(&self) -> Option<String> {
        match self {
            DeviceRef::Id(d) => d.digits(),
            _ => None,
        }
    }
    pub fn id(&self) -> Option<&DeviceId> {
        match self {
            DeviceRef::Id(d) => Some(d),
            _ => None,
        }
    }
    /// ECMA name of the alternative when there is no identifier.
    pub fn absent_name(&self) -> Option<&'static str> {
        Some(match self {
            DeviceRef::Id(_) => return None,
            DeviceRef::NotKnown => "notKnown",
            DeviceRef::Restricted => "restricted",
            DeviceRef::NotRequired => "notRequired",
            DeviceRef::NotSpecified => "notSpecified",
        })
    }

    /// Decode the content of a role TLV (`61`..`6A`). `[APPLICATION 4]` is RedirectionDeviceID,
    /// whose null alternatives are numbered differently in Phase III.
    pub fn decode(r: &Reader<'_>, t: &Tlv, dialect: Dialect) -> Result<Self> {
        t.constructed("device role")?;
        let mut inner = r.enter(t)?;
        let v = inner.required("device")?;
        inner.finish()?;
        let redirection = t.tag == Tag(0x64);
        let absent = |v: &Tlv, d: DeviceRef| -> Result<DeviceRef> {
            inner.null(v, "device")?;
            Ok(d)
        };
        match (v.tag.0, dialect, redirection) {
            (0x87, ..) => absent(&v, DeviceRef::NotKnown),
            (0x88, Dialect::Phase3, false) => absent(&v, DeviceRef::Restricted),
            (0x88, ..) => absent(&v, DeviceRef::NotRequired),
            (0x89, _, true) => absent(&v, DeviceRef::NotSpecified),
            (0x8A, Dialect::Phase3, true) => absent(&v, DeviceRef::Restricted),
            _ => Ok(DeviceRef::Id(DeviceId::decode(&inner, &v, dialect)?)),
        }
    }

    /// Encode under the role tag. A value the dialect cannot express (Restricted in Phase II)
    /// is sent as notKnown, the nearest meaning.
    pub fn encode(&self, w: &mut Writer<'_>, tag: Tag, dialect: Dialect) {
        let redirection = tag == Tag(0x64);
        w.constructed(tag, |w| match (self, dialect, redirection) {
            (DeviceRef::Id(d), ..) => d.encode(w, dialect),
            (DeviceRef::NotKnown, ..) | (DeviceRef::Restricted, Dialect::Phase2, _) => w.null(Tag(0x87)),
            (DeviceRef::Restricted, Dialect::Phase3, false) => w.null(Tag(0x88)),
            (DeviceRef::Restricted, Dialect::Phase3, true) => w.null(Tag(0x8A)),
            (DeviceRef::NotRequired, ..) => w.null(Tag(0x88)),
            (DeviceRef::NotSpecified, ..) => w.null(Tag(0x89)),
        });
    }
}

/// The device part of a connection (`LocalDeviceID`): a static directory number or the PBX's
/// dynamic identifier (opaque bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalDevice {
    Static(DeviceId),
    Dynamic(Bytes),
}

/// A connection: the call it belongs to (opaque call id) and the device in it (ECMA-269 §6.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ConnectionId {
    pub call: Option<Bytes>,
    pub device: Option<LocalDevice>,
}

impl ConnectionId {
    pub fn device_digits(&self) -> Option<String> {
        match &self.device {
            Some(LocalDevice::Static(d)) => d.digits(),
            _ => None,
        }
    }

    /// Decode the content of a `6B` TLV in the given dialect.
    pub fn decode(r: &Reader<'_>, t: &Tlv, dialect: Dialect) -> Result<Self> {
        const W: &str = "ConnectionID";
        t.constructed(W)?;
        let mut inner = r.enter(t)?;
        let mut c = ConnectionId::default();
        match dialect {
            Dialect::Phase3 => {
                let v = inner.required(W)?;
                match v.tag.0 {
                    0x80 => c.call = Some(inner.octets(&v, W)?),
                    0xA1 => c.device = Some(Self::decode_local_device(&inner, &v, dialect)?),
                    0x30 => {
                        let mut both = inner.enter(&v)?;
                        let call = both.required("ConnectionID.both.callID")?;
                        call.expect(Tag(0x80), "callID [0]")?;
                        c.call = Some(both.octets(&call, W)?);
                        let dev = both.required("ConnectionID.both.deviceID")?;
                        dev.expect(Tag(0xA1), "deviceID [1]")?;
                        c.device = Some(Self::decode_local_device(&both, &dev, dialect)?);
                        both.finish()?;
                    }
                    _ => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: W, found: v.tag }, v.start)),
                }
            }
            Dialect::Phase2 => {
                let mut next = inner.next()?;
                if let Some(v) = next.filter(|v| v.tag == Tag(0x82)) {
                    c.call = Some(inner.octets(&v, W)?);
                    next = inner.next()?;
                }
                if let Some(v) = next {
                    c.device = Some(if v.tag == Tag(0x83) {
                        LocalDevice::Dynamic(inner.octets(&v, W)?)
                    } else {
                        LocalDevice::Static(DeviceId::decode(&inner, &v, dialect)?)
                    });
                }
            }
        }
        inner.finish()?;
        Ok(c)
    }

    fn decode_local_device(r: &Reader<'_>, t: &Tlv, dialect: Dialect) -> Result<LocalDevice> {
        t.constructed("LocalDeviceID")?;
        let mut inner = r.enter(t)?;
        let v = inner.required("LocalDeviceID")?;
        inner.finish()?;
        if v.tag == Tag(0x83) {
            Ok(LocalDevice::Dynamic(inner.octets(&v, "dynamicID")?))
        } else {
            Ok(LocalDevice::Static(DeviceId::decode(&inner, &v, dialect)?))
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>, dialect: Dialect) {
        let tag = Tag(0x6B);
        match dialect {
            Dialect::Phase3 => w.constructed(tag, |w| {
                let local = |w: &mut Writer<'_>, d: &LocalDevice| {
                    w.constructed(Tag(0xA1), |w| match d {
                        LocalDevice::Static(s) => s.encode(w, dialect),
                        LocalDevice::Dynamic(b) => w.primitive(Tag(0x83), b),
                    })
                };
                match (&self.call, &self.device) {
                    (Some(c), Some(d)) => w.constructed(Tag::SEQUENCE, |w| {
                        w.primitive(Tag(0x80), c);
                        local(w, d);
                    }),
                    (Some(c), None) => w.primitive(Tag(0x80), c),
                    (None, Some(d)) => local(w, d),
                    // Not expressible in Phase III; an empty callID is the nearest valid form.
                    (None, None) => w.primitive(Tag(0x80), &[]),
                }
            }),
            Dialect::Phase2 => w.constructed(tag, |w| {
                if let Some(c) = &self.call {
                    w.primitive(Tag(0x82), c);
                }
                match &self.device {
                    Some(LocalDevice::Static(s)) => s.encode(w, dialect),
                    Some(LocalDevice::Dynamic(b)) => w.primitive(Tag(0x83), b),
                    None => {}
                }
            }),
        }
    }
}

/// An ACSE or CSTA secret (password, authentication value). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Bytes);

impl Secret {
    pub fn new(b: Bytes) -> Self {
        Secret(b)
    }
    /// The secret bytes, for encoding or constant-time comparison only.
    pub fn expose(&self) -> &Bytes {
        &self.0
    }
}

/// A secret written by a person (a password from the environment or a file, a test's login).
impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(Bytes::from(s))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
