//! ACSE (X.227) association APDUs as CSTA uses them (protocol brief §3): AARQ/AARE to open the
//! association (application context, optional authentication, CSTA user information with the
//! version and functionality bitmaps, ECMA-285 `CSTA-application-context-information-csta3`),
//! RLRQ/RLRE to release it, ABRT to abort.
//!
//! The APDUs themselves are [`Body`]s with the schemas below. The two values with an inner
//! structure, the authentication value (whose password is a [`Secret`]) and the CSTA user
//! information, are defined in `acse_values.rs` (so that `body.rs` can decode them without
//! importing this module) and re-exported here.

use bytes::Bytes;

use super::ber::{oid_from_str, Reader, Result, Tag};
use super::body::{opt, req, Body, FieldName as F, Form, Kind, Slot, Value};
use super::values::Secret;

pub use super::acse_values::{Authentication, CstaUserInfo, UserInformation};

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
pub(crate) fn mask_dtmf_suffixes(apdu: &[u8]) -> std::borrow::Cow<'_, [u8]> {
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
