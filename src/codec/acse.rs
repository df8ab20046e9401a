//! ACSE (X.227) association APDUs as CSTA uses them (protocol brief §3): AARQ/AARE to open the
//! association (application context, optional authentication, CSTA user information with the
//! version and functionality bitmaps, ECMA-285 `CSTA-application-context-information-csta3`),
//! RLRQ/RLRE to release it, ABRT to abort.
//!
//! The APDUs themselves are [`Body`]s with the schemas below; this module adds the two values
//! with an inner structure: the authentication value (whose password is a [`Secret`]) and the
//! CSTA user information.

use bytes::Bytes;

use super::ber::{oid_from_str, DecodeError, ErrorKind, Reader, Result, Tag, Tlv, Writer};
use super::body::{opt, req, Body, FieldName as F, Form, Kind, Slot, Value};
use super::values::Secret;

pub const AARQ: Form = Form::Sequence(&[
    opt(F::ProtocolVersion, &[0x80], Kind::Raw),
    req(F::ApplicationContextName, &[0xA1], Kind::ExplicitOid),
    opt(F::SenderAcseRequirements, &[0x8A], Kind::Raw),
    opt(F::MechanismName, &[0x8B], Kind::Oid),
    opt(F::CallingAuthenticationValue, &[0xAC], Kind::Auth),
    opt(F::UserInformation, &[0xBE], Kind::UserInfo),
]);

pub const AARE: Form = Form::Sequence(&[
    opt(F::ProtocolVersion, &[0x80], Kind::Raw),
    req(F::ApplicationContextName, &[0xA1], Kind::ExplicitOid),
    req(F::Result, &[0xA2], Kind::ExplicitInt),
    opt(F::ResultSourceDiagnostic, &[0xA3], Kind::Diagnostic),
    opt(F::ResponderAcseRequirements, &[0x88], Kind::Raw),
    opt(F::MechanismName, &[0x89], Kind::Oid),
    opt(F::RespondingAuthenticationValue, &[0xAA], Kind::Raw),
    opt(F::UserInformation, &[0xBE], Kind::UserInfo),
]);

const RELEASE_SLOTS: &[Slot] = &[opt(F::Reason, &[0x80], Kind::Int), opt(F::UserInformation, &[0xBE], Kind::UserInfo)];
pub const RLRQ: Form = Form::Sequence(RELEASE_SLOTS);
pub const RLRE: Form = Form::Sequence(RELEASE_SLOTS);
pub const ABRT: Form = Form::Sequence(&[req(F::AbortSource, &[0x80], Kind::Int), opt(F::UserInformation, &[0xBE], Kind::UserInfo)]);

/// `calling-authentication-value` ([12] EXPLICIT Authentication-value).
#[derive(Debug, Clone, PartialEq)]
pub enum Authentication {
    /// `charstring [0]`: a password alone.
    Password(Secret),
    /// `external [2]` whose single-ASN1-type is `[0] { OCTET STRING user, OCTET STRING
    /// password }`: the layout Siemens HiPath and Panasonic use for the CTI login.
    UserPassword { user: Bytes, password: Secret },
    /// Anything else, kept verbatim (and secret: it may hold a credential).
    Opaque(Secret),
}

impl Authentication {
    pub fn user(&self) -> Option<&Bytes> {
        match self {
            Authentication::UserPassword { user, .. } => Some(user),
            _ => None,
        }
    }

    pub(crate) fn decode(r: &Reader<'_>, t: &Tlv) -> Result<Self> {
        t.constructed("Authentication-value")?;
        let mut inner = r.enter(t)?;
        let v = inner.required("Authentication-value")?;
        inner.finish()?;
        if v.tag == Tag(0x80) {
            return Ok(Authentication::Password(Secret::new(inner.octets(&v, "charstring")?)));
        }
        if v.tag == Tag(0xA2) {
            if let Some((user, password)) = Self::user_password(&inner, &v)? {
                return Ok(Authentication::UserPassword { user, password: Secret::new(password) });
            }
        }
        Ok(Authentication::Opaque(Secret::new(inner.raw(&v))))
    }

    /// `A2 { A0 { A0 { 04 user 04 password } } }`, or `None` for another layout.
    fn user_password(r: &Reader<'_>, ext: &Tlv) -> Result<Option<(Bytes, Bytes)>> {
        let mut e = r.enter(ext)?;
        let Some(enc) = e.next()? else { return Ok(None) };
        if enc.tag != Tag(0xA0) || !e.is_empty() {
            return Ok(None);
        }
        let mut single = e.enter(&enc)?;
        let Some(seq) = single.next()? else { return Ok(None) };
        if seq.tag != Tag(0xA0) || !single.is_empty() {
            return Ok(None);
        }
        let mut s = single.enter(&seq)?;
        let (Some(u), Some(p), None) = (s.next()?, s.next()?, s.next()?) else { return Ok(None) };
        if u.tag != Tag::OCTET_STRING || p.tag != Tag::OCTET_STRING {
            return Ok(None);
        }
        Ok(Some((s.octets(&u, "user")?, s.octets(&p, "password")?)))
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>, tag: Tag) {
        w.constructed(tag, |w| match self {
            Authentication::Password(p) => w.primitive(Tag(0x80), p.expose()),
            Authentication::UserPassword { user, password } => w.constructed(Tag(0xA2), |w| {
                w.constructed(Tag(0xA0), |w| {
                    w.constructed(Tag(0xA0), |w| {
                        w.primitive(Tag::OCTET_STRING, user);
                        w.primitive(Tag::OCTET_STRING, password.expose());
                    })
                })
            }),
            Authentication::Opaque(raw) => w.raw(raw.expose()),
        });
    }
}

/// ACSE `user-information` carrying `ACSEUserInformationForCSTA` (brief §3.2).
#[derive(Debug, Clone, PartialEq)]
pub enum UserInformation {
    Csta(CstaUserInfo),
    /// Another layout, kept verbatim (the whole `BE` TLV).
    Other(Bytes),
}

/// The CSTA version and functionality an application asks for or a PBX grants.
#[derive(Debug, Clone, PartialEq)]
pub struct CstaUserInfo {
    /// The EXTERNAL's direct-reference OID content (e.g. 1.3.12.0.218.200), if present.
    pub direct_reference: Option<Bytes>,
    /// `newDefinition [0]` rather than `oldDefinition` (a SEQUENCE).
    pub new_definition: bool,
    /// `cSTAVersion` BIT STRING content (first octet: unused bits).
    pub version: Bytes,
    /// The functionality members after the version, verbatim.
    pub functionality: Bytes,
}

impl CstaUserInfo {
    /// Numbers of the version bits set (0 = versionOne/ECMA-180 ... 4 = versionFive/ECMA-285 2nd
    /// edition ...).
    pub fn versions(&self) -> Vec<u32> {
        let bits = self.version.get(1..).unwrap_or(&[]);
        (0..bits.len() * 8).filter(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0).map(|i| i as u32).collect()
    }

    /// A new-definition user information asking for the given CSTA version bits.
    pub fn with_versions(direct_reference: Option<&str>, versions: &[u32], new_definition: bool) -> Self {
        let max = versions.iter().copied().max().unwrap_or(0) as usize;
        let mut bits = vec![0u8; max / 8 + 1];
        for v in versions {
            bits[*v as usize / 8] |= 0x80 >> (v % 8);
        }
        let mut version = vec![0u8];
        version.extend(bits);
        CstaUserInfo {
            direct_reference: direct_reference.and_then(oid_from_str).map(Bytes::from),
            new_definition,
            version: Bytes::from(version),
            functionality: Bytes::new(),
        }
    }
}

impl UserInformation {
    pub(crate) fn decode(r: &Reader<'_>, t: &Tlv) -> Result<Self> {
        t.constructed("user-information")?;
        match Self::decode_csta(r, t)? {
            Some(c) => Ok(UserInformation::Csta(c)),
            None => Ok(UserInformation::Other(r.raw(t))),
        }
    }

    fn decode_csta(r: &Reader<'_>, t: &Tlv) -> Result<Option<CstaUserInfo>> {
        let mut list = r.enter(t)?;
        let Some(ext) = list.next()? else { return Ok(None) };
        if ext.tag != Tag(0x28) || !list.is_empty() {
            return Ok(None);
        }
        let mut e = list.enter(&ext)?;
        let mut direct_reference = None;
        let mut enc = e.required("EXTERNAL encoding")?;
        if enc.tag == Tag::OID {
            direct_reference = Some(e.octets(&enc, "direct-reference")?);
            enc = e.required("EXTERNAL encoding")?;
        }
        if enc.tag != Tag(0xA0) || !e.is_empty() {
            return Ok(None);
        }
        let mut single = e.enter(&enc)?;
        let def = single.required("ACSEUserInformationForCSTA")?;
        single.finish()?;
        let new_definition = match def.tag.0 {
            0xA0 => true,
            0x30 => false,
            _ => return Ok(None),
        };
        let mut d = single.enter(&def)?;
        let v = d.required("cSTAVersion")?;
        v.expect(Tag::BIT_STRING, "cSTAVersion BIT STRING")?;
        let version = d.octets(&v, "cSTAVersion")?;
        if version.is_empty() || version[0] > 7 {
            return Err(DecodeError::new(ErrorKind::BadValue("cSTAVersion"), v.start));
        }
        let rest_start = d.position();
        while d.next()?.is_some() {}
        let functionality = r.source().slice(rest_start..def.content_end);
        Ok(Some(CstaUserInfo { direct_reference, new_definition, version, functionality }))
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>, tag: Tag) {
        match self {
            UserInformation::Other(raw) => w.raw(raw),
            UserInformation::Csta(c) => w.constructed(tag, |w| {
                w.constructed(Tag(0x28), |w| {
                    if let Some(oid) = &c.direct_reference {
                        w.primitive(Tag::OID, oid);
                    }
                    w.constructed(Tag(0xA0), |w| {
                        w.constructed(Tag(if c.new_definition { 0xA0 } else { 0x30 }), |w| {
                            w.primitive(Tag::BIT_STRING, &c.version);
                            w.raw(&c.functionality);
                        })
                    })
                })
            }),
        }
    }
}

/// What an AARQ asks for: the per-PBX ACSE settings of a profile.
#[derive(Debug, Clone)]
pub struct AarqParams {
    /// Application context name, dotted (e.g. `1.3.12.0.218` for HiPath, `1.3.12.0.180` for OXE).
    pub context: String,
    /// Login, for PBXs that authenticate the CTI application.
    pub credentials: Option<(String, Secret)>,
    pub user_information: Option<UserInformation>,
}

/// Build an AARQ body.
///
/// # Errors
/// If `context` is not a dotted OID.
pub fn aarq(p: &AarqParams) -> std::result::Result<Body, BadOid> {
    let oid = oid_from_str(&p.context).ok_or(BadOid)?;
    let mut b = Body::new().with(F::ProtocolVersion, Value::Raw(Bytes::from_static(&[0x80, 0x02, 0x07, 0x80])));
    b = b.with(F::ApplicationContextName, Value::Oid(Bytes::from(oid)));
    if let Some((user, password)) = &p.credentials {
        // sender-acse-requirements = { authentication }
        b = b.with(F::SenderAcseRequirements, Value::Raw(Bytes::from_static(&[0x8A, 0x02, 0x06, 0x80])));
        b = b.with(
            F::CallingAuthenticationValue,
            Value::Auth(Authentication::UserPassword { user: Bytes::copy_from_slice(user.as_bytes()), password: password.clone() }),
        );
    }
    if let Some(u) = &p.user_information {
        b = b.with(F::UserInformation, Value::UserInfo(u.clone()));
    }
    Ok(b)
}

/// The application context name given was not a dotted OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("application context name is not a dotted OID")]
pub struct BadOid;

/// Why a PBX refused the association (X.227 result and diagnostic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("association rejected ({}): {}", result_name(.result), diagnostic_name(.diagnostic))]
pub struct AareRejection {
    pub result: i64,
    pub diagnostic: Option<(u8, i64)>,
}

/// Check an AARE: the `result` decides (a real Panasonic AARE says accepted with a
/// "no-reason-given" diagnostic, so the diagnostic is only read on rejection).
///
/// # Errors
/// The rejection, with its result and diagnostic.
pub fn aare_outcome(aare: &Body) -> std::result::Result<(), AareRejection> {
    let result = aare.int(F::Result).unwrap_or(-1);
    if result == 0 {
        return Ok(());
    }
    let diagnostic = match aare.get(F::ResultSourceDiagnostic) {
        Some(Value::Diagnostic { source, value }) => Some((*source, *value)),
        _ => None,
    };
    Err(AareRejection { result, diagnostic })
}

pub fn result_name(r: &i64) -> &'static str {
    match r {
        0 => "accepted",
        1 => "rejected-permanent",
        2 => "rejected-transient",
        _ => "unknown result",
    }
}

/// X.227 diagnostic names (service-user and service-provider).
pub fn diagnostic_name(d: &Option<(u8, i64)>) -> &'static str {
    match d {
        None => "no diagnostic",
        Some((1, v)) => match v {
            0 => "null",
            1 => "no-reason-given",
            2 => "application-context-name-not-supported",
            3 => "calling-AP-title-not-recognized",
            4 => "calling-AP-invocation-identifier-not-recognized",
            5 => "calling-AE-qualifier-not-recognized",
            6 => "calling-AE-invocation-identifier-not-recognized",
            7 => "called-AP-title-not-recognized",
            8 => "called-AP-invocation-identifier-not-recognized",
            9 => "called-AE-qualifier-not-recognized",
            10 => "called-AE-invocation-identifier-not-recognized",
            11 => "authentication-mechanism-name-not-recognized",
            12 => "authentication-mechanism-name-required",
            13 => "authentication-failure",
            14 => "authentication-required",
            _ => "service-user reason unknown",
        },
        Some((2, v)) => match v {
            0 => "null",
            1 => "no-reason-given",
            2 => "no-common-acse-version",
            _ => "service-provider reason unknown",
        },
        Some(_) => "unknown diagnostic source",
    }
}

/// Identifier octets of the ACSE APDUs that may carry an authentication value (X.227:
/// AARQ `[APPLICATION 0]`, AARE `[APPLICATION 1]`), and of those values: the AARQ's
/// `calling-authentication-value [12]`, the AARE's `responding-authentication-value [10]`.
const AARQ_TAG: u8 = 0x60;
const AARE_TAG: u8 = 0x61;
const AUTHENTICATION_TAGS: [Tag; 2] = [Tag(0xAC), Tag(0xAA)];

/// An APDU (unframed) as logs show it: the only way APDUs are rendered for a log, so that a CTI
/// login is never printed, whatever the level.
///
/// Hex, except in an AARQ or AARE, whose authentication value (the password of
/// [`Authentication`], or an opaque credential) reads `<redacted>` in place of its whole TLV —
/// not even its length is shown. An APDU whose first octet says AARQ or AARE but whose members
/// cannot be walked is not printed at all: where its password lies cannot be told.
///
/// In every other APDU, digits dialled or sent between `*` and `#` (a proof call's secret
/// context id travels as `<ivr>*<context>#` and as GenerateDigits `*<context>#`) read as `X`
/// (`58` in the hex): the bytes are masked wherever they stand, so no member table is needed.
pub fn for_log(apdu: &[u8]) -> ForLog<'_> {
    ForLog(apdu)
}

/// Shortest and longest run of digits between `*` and `#` that [`for_log`] masks.
const MASKED_DIGITS: std::ops::RangeInclusive<usize> = 4..=32;

/// `apdu` with every `*<digits>#` run's digits replaced by `X`.
fn mask_dtmf_suffixes(apdu: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut out = std::borrow::Cow::Borrowed(apdu);
    let mut i = 0;
    while i < apdu.len() {
        if apdu[i] == b'*' {
            let n = apdu[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if MASKED_DIGITS.contains(&n) && apdu.get(i + 1 + n) == Some(&b'#') {
                out.to_mut()[i + 1..i + 1 + n].fill(b'X');
                i += n + 1;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// See [`for_log`].
pub struct ForLog<'a>(&'a [u8]);

impl std::fmt::Display for ForLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !matches!(self.0.first(), Some(&(AARQ_TAG | AARE_TAG))) {
            return f.write_str(&hex::encode(mask_dtmf_suffixes(self.0)));
        }
        match redacted_acse(&Bytes::copy_from_slice(self.0)) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "<redacted: {} bytes of an ACSE APDU that does not decode>", self.0.len()),
        }
    }
}

/// Hex of an AARQ or AARE with its authentication values replaced by `<redacted>`.
fn redacted_acse(b: &Bytes) -> Result<String> {
    let mut r = Reader::new(b);
    let outer = r.required("ACSE APDU")?;
    outer.constructed("ACSE APDU")?;
    r.finish()?;
    let mut members = r.enter(&outer)?;
    let mut s = hex::encode(&b[..outer.content_start]);
    let mut end = outer.content_start;
    while let Some(t) = members.next()? {
        if AUTHENTICATION_TAGS.contains(&t.tag) {
            s.push_str("<redacted>");
        } else {
            s.push_str(&hex::encode(&b[t.start..t.end]));
        }
        end = t.end;
    }
    // End-of-contents octets of an indefinite length.
    s.push_str(&hex::encode(&b[end..outer.end]));
    Ok(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_digits_are_masked_in_logs_and_nothing_else_is() {
        // MakeCall-like bytes: IA5 "0800100200*12345678#", then "*66" (a lock prefix, no '#').
        let mut apdu = vec![0xA1, 0x20, 0x16, 0x14];
        apdu.extend_from_slice(b"0800100200*12345678#");
        apdu.extend_from_slice(&[0x16, 0x03]);
        apdu.extend_from_slice(b"*66");
        let shown = super::for_log(&apdu).to_string();
        assert!(!shown.contains(&hex::encode(b"12345678")), "{shown}");
        assert!(shown.contains(&hex::encode(b"0800100200*XXXXXXXX#")), "{shown}");
        assert!(shown.ends_with(&hex::encode(b"*66")), "{shown}");
        let short = b"*12#";
        assert_eq!(super::for_log(short).to_string(), hex::encode(short), "too short to be a context id");
    }

    use super::*;
    use crate::codec::{Apdu, Dialect};

    fn aarq_with(password: &str) -> Vec<u8> {
        let p = AarqParams { context: "1.3.12.0.218".into(), credentials: Some(("AMHOST".into(), Secret::new(password.to_owned().into()))), user_information: None };
        Apdu::Aarq(aarq(&p).unwrap()).to_vec(Dialect::Phase3).unwrap()
    }

    #[test]
    fn an_aarq_is_logged_without_its_authentication_value() {
        let bytes = aarq_with("pw-4711");
        let shown = for_log(&bytes).to_string();
        assert!(!shown.contains(&hex::encode("pw-4711")) && !shown.contains("pw-4711"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // Everything else is there: the header, the context name.
        assert!(shown.starts_with("60") && shown.contains("a10706052b0c00815a"), "{shown}");
        // The password alone (charstring) and an opaque value are redacted the same way.
        let mut charstring = hex::decode("6014a10706052b0c00815aac09800770772d34373131").unwrap();
        assert!(!for_log(&charstring).to_string().contains("70772d"), "{}", for_log(&charstring));
        charstring[0] = AARE_TAG;
        assert!(!for_log(&charstring).to_string().contains("70772d"), "{}", for_log(&charstring));
    }

    #[test]
    fn an_acse_apdu_that_does_not_decode_is_not_printed() {
        let bytes = aarq_with("pw-4711");
        for cut in [bytes.len() - 3, 12, 2, 1] {
            let shown = for_log(&bytes[..cut]).to_string();
            assert!(shown.starts_with("<redacted") && !shown.contains("70772d"), "{cut}: {shown}");
        }
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&hex::decode("0407").unwrap());
        assert!(for_log(&trailing).to_string().starts_with("<redacted"));
    }

    #[test]
    fn other_apdus_are_logged_as_hex() {
        let invoke = hex::decode("a10c020101020200d330030a0102").unwrap();
        assert_eq!(for_log(&invoke).to_string(), "a10c020101020200d330030a0102");
    }
}
