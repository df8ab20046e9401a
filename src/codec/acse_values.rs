//! The two ACSE members with an inner structure, as [`Value`](super::body::Value)s of an ACSE
//! [`Body`](super::body::Body): the authentication value (whose password is a [`Secret`]) and
//! the CSTA user information.
//!
//! They live apart from the APDU schemas of `acse.rs` because `body.rs` decodes and encodes them
//! while `acse.rs` builds on `body.rs`: here, both can use them and the codec's imports stay
//! one-way (`acse` → `body` → `acse_values`). `acse` re-exports them under their usual path.

use bytes::Bytes;

use super::ber::{oid_from_str, DecodeError, ErrorKind, Reader, Result, Tag, Tlv, Writer};
use super::values::Secret;

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
