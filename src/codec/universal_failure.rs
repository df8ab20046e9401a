//! CSTA universalFailure (brief §4.8), the parameter of a ReturnError with error code local 1:
//! its categories and their two taggings, Phase III's explicit `[0]`..`[7] { ENUMERATED }` and
//! Phase II's implicit `[1]`..`[6] ENUMERATED` without security and private data.
//!
//! Apart from `apdu.rs` because it is a table of its own that differs per dialect, while the
//! ROSE APDUs around it do not; `apdu` re-exports the types under their usual path.

use bytes::Bytes;

use super::ber::{Reader, Result, Tag, Tlv, Writer};
use super::values::Dialect;

/// ReturnError parameter: CSTA's universalFailure (error code local 1), or verbatim bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorParameter {
    UniversalFailure(UniversalFailure),
    Opaque(Bytes),
}

/// CSTA universalFailure (brief §4.8), the same whichever dialect's tagging carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniversalFailure {
    pub category: ErrorCategory,
    /// The ENUMERATED value; `None` for unspecified (NULL).
    pub value: Option<i64>,
    /// How it was tagged on the wire (`Some(true)`: Phase III explicit `[n] {ENUMERATED}`;
    /// `Some(false)`: Phase II implicit), so a decoded error re-encodes as it came; `None` for
    /// errors built locally, which take the dialect's tagging.
    pub explicit: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    Operation,
    Security,
    StateIncompatibility,
    SystemResourceAvailability,
    SubscribedResourceAvailability,
    PerformanceManagement,
    PrivateData,
    Unspecified,
}

impl ErrorCategory {
    /// Phase III: explicit `[0]`..`[7]`; Phase II: implicit `[1]`..`[6]` without security and
    /// private data.
    pub fn tag_number(self, d: Dialect) -> Option<u8> {
        use ErrorCategory as C;
        match d {
            Dialect::Phase3 => Some(match self {
                C::Operation => 0,
                C::Security => 1,
                C::StateIncompatibility => 2,
                C::SystemResourceAvailability => 3,
                C::SubscribedResourceAvailability => 4,
                C::PerformanceManagement => 5,
                C::PrivateData => 6,
                C::Unspecified => 7,
            }),
            Dialect::Phase2 => match self {
                C::Operation => Some(1),
                C::StateIncompatibility => Some(2),
                C::SystemResourceAvailability => Some(3),
                C::SubscribedResourceAvailability => Some(4),
                C::PerformanceManagement => Some(5),
                C::Unspecified => Some(6),
                C::Security | C::PrivateData => None,
            },
        }
    }
    fn from_tag_number(n: u32, d: Dialect) -> Option<Self> {
        use ErrorCategory as C;
        [C::Operation, C::Security, C::StateIncompatibility, C::SystemResourceAvailability, C::SubscribedResourceAvailability, C::PerformanceManagement, C::PrivateData, C::Unspecified]
            .into_iter()
            .find(|c| c.tag_number(d).map(u32::from) == Some(n))
    }
    pub fn name(self) -> &'static str {
        use ErrorCategory as C;
        match self {
            C::Operation => "operation",
            C::Security => "security",
            C::StateIncompatibility => "stateIncompatibility",
            C::SystemResourceAvailability => "systemResourceAvailability",
            C::SubscribedResourceAvailability => "subscribedResourceAvailability",
            C::PerformanceManagement => "performanceManagement",
            C::PrivateData => "privateData",
            C::Unspecified => "unspecified",
        }
    }
}

/// Accepts both taggings whatever the dialect: explicit `[n] { ENUMERATED }` is Phase III's,
/// implicit `[n] ENUMERATED` Phase II's (brief §4.8: decode errors tolerantly).
pub(super) fn decode_universal_failure(r: &Reader<'_>, p: &Tlv) -> Result<ErrorParameter> {
    const W: &str = "universalFailure";
    if p.tag.class() != 2 {
        return Ok(ErrorParameter::Opaque(r.raw(p)));
    }
    let n = p.tag.number();
    let explicit = p.tag.constructed();
    let (category, value) = if explicit {
        let mut inner = r.enter(p)?;
        let v = inner.required(W)?;
        inner.finish()?;
        let value = if v.tag == Tag::NULL {
            inner.null(&v, W)?;
            None
        } else {
            v.expect(Tag::ENUMERATED, "ENUMERATED")?;
            Some(inner.integer(&v, W)?)
        };
        (ErrorCategory::from_tag_number(n, Dialect::Phase3), value)
    } else {
        let value = if p.content_len() == 0 { None } else { Some(r.integer(p, W)?) };
        (ErrorCategory::from_tag_number(n, Dialect::Phase2), value)
    };
    match category {
        Some(category) => Ok(ErrorParameter::UniversalFailure(UniversalFailure { category, value, explicit: Some(explicit) })),
        None => Ok(ErrorParameter::Opaque(r.raw(p))),
    }
}

pub(super) fn encode_universal_failure(w: &mut Writer<'_>, u: &UniversalFailure, d: Dialect) {
    let explicit = u.explicit.unwrap_or(d == Dialect::Phase3);
    if explicit {
        let n = u.category.tag_number(Dialect::Phase3).unwrap_or(7);
        w.constructed(Tag::context(n, true), |w| match u.value {
            Some(v) => w.integer(Tag::ENUMERATED, v),
            None => w.null(Tag::NULL),
        });
    } else {
        match u.category.tag_number(Dialect::Phase2) {
            Some(n) => match u.value {
                Some(v) => w.integer(Tag::context(n, false), v),
                None => w.null(Tag::context(n, false)),
            },
            // Security and private-data failures do not exist in Phase II: unspecified.
            None => w.null(Tag::context(6, false)),
        }
    }
}
