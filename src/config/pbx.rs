//! The `[[pbx]]` tables: the PBX families' presets, the keys as written, their validation, and
//! what the gateway makes of them: a [`LinkProfile`] for the link (presets applied, password
//! read) and an association [`Policy`](crate::association::Policy) for PBXs that name a tenant.
//!
//! Apart from `mod.rs` because it is the largest section of the file and the only one that knows
//! the codec's and the association's types.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::directory::parse_directory;
use super::secrets::{read_secret, SecretSource};
use super::{Config, ConfigError};
use crate::codec::acse::{AarqParams, CstaUserInfo, UserInformation};
use crate::codec::body::Wrapping;
use crate::codec::framing::Framing;
use crate::codec::values::{Dialect, Secret};
use crate::codec::xml::{Login, LoginStyle, ProtocolVersion};
use crate::link::tls;

/// Presets of the PBX families we know (brief §1, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// ECMA-285 Phase III with 2-byte length framing (Panasonic and most Phase III PBXs).
    Phase3,
    /// Alcatel-Lucent OmniPCX Enterprise: Phase II, 2-byte framing, `'B'`/`'P'` preamble, port 2555.
    Oxe,
    /// Siemens HiPath 3000 / OpenScape Business: Phase III, `0x26` framing, port 7001.
    Hipath,
    /// CSTA XML (ECMA-323) with an ECMA-354 session; `address` must name the port.
    Xml,
    /// Mitel/Ericsson MiVoice MX-ONE: CSTA XML, port 8882 (TLS 8883).
    Mxone,
    /// Unify OpenScape Business: CSTA XML on port 8800 (which also takes BER).
    Openscape,
}

impl Preset {
    /// Whether the preset speaks CSTA XML.
    pub fn is_xml(self) -> bool {
        matches!(self, Preset::Xml | Preset::Mxone | Preset::Openscape)
    }
}

/// `xml_framing`: the 8-byte ECMA-323 header (default) or NUL-terminated documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XmlFraming {
    #[default]
    Header,
    Nul,
}

/// `xml_session`: open an ECMA-354 application session first (default), or send CSTA requests
/// at once (PBXs that take them without a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XmlSession {
    #[default]
    Required,
    None,
}

/// One `[[pbx]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxConfig {
    /// Stable identifier used in the API and logs.
    pub id: String,
    /// `host:port`, or `host` alone to use the preset's port.
    pub address: String,
    pub dialect: Preset,
    /// Overrides of the preset.
    pub framing: Option<Framing>,
    pub phase: Option<Dialect>,
    pub preamble: Option<bool>,
    /// ACSE application context name (dotted OID); `"none"` to skip ACSE.
    pub acse_context: Option<String>,
    /// CSTA version bits requested in the AARQ user information (e.g. `[4]` for ECMA-285 2nd ed.).
    pub csta_versions: Option<Vec<u32>>,
    pub acse_user: Option<String>,
    /// Name of the environment variable holding the ACSE password.
    pub acse_password_env: Option<String>,
    /// File holding the ACSE password (trailing newline ignored).
    pub acse_password_file: Option<PathBuf>,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_rps")]
    pub max_requests_per_second: f64,
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Phase II only: the form of the values whose shape is unverified (asn1/README.md P8) that
    /// the link originates: `bare` (default, what OXE is known to take) or `wrapped`
    /// (`SEQUENCE { value, extensions }`). Both forms are always accepted from the PBX.
    #[serde(default)]
    pub phase2_results: Wrapping,
    // CSTA XML presets only.
    /// ECMA-323 edition of the documents (default ed4).
    pub xml_protocol_version: Option<ProtocolVersion>,
    /// `applicationID` of the session (default `cstagate`).
    pub application_id: Option<String>,
    /// Requested session duration (default 180 s); renewed well before it lapses.
    #[serde(default, with = "humantime_serde")]
    pub session_duration: Option<Duration>,
    /// How the login is written (default `session-login-info` with `acse_user`, else `none`).
    pub xml_login: Option<LoginStyle>,
    pub xml_framing: Option<XmlFraming>,
    pub xml_session: Option<XmlSession>,
    // CSTA over TLS (any dialect: the preamble, ACSE or the XML session go inside TLS).
    /// Speak TLS 1.2 or 1.3 to the PBX. `address` then names the PBX's TLS port (the presets'
    /// ports are the plain ones).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA certificates the PBX's certificate must chain to; without it, the
    /// public roots (`webpki-roots`), which a PBX's certificate rarely chains to.
    pub tls_ca: Option<PathBuf>,
    /// The name the PBX's certificate must carry (a DNS name or an IP address); by default the
    /// host part of `address`.
    pub tls_server_name: Option<String>,
    /// Our client certificate chain (PEM), for a PBX that requires one; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    // The association policy of this PBX, keys of the same table. (Not a `#[serde(flatten)]`ed
    // struct: through a flatten a wrong type is reported against `pbx[0]`, not the key.)
    /// The tenant whose accounts may bind extensions of this PBX; a `[[tenant]]` must define it.
    pub tenant: Option<String>,
    /// Directory: numbers and ranges (`["2000-2099", "3000"]`).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Display names of extensions; also the first source of the directory search.
    #[serde(default)]
    pub names: std::collections::HashMap<String, String>,
    // The directory search (`GET /v1/directory/{pbx}`, `crate::directory`): its other sources.
    /// A file of `extension,name` rows, re-read when it changes.
    pub directory_csv: Option<PathBuf>,
    /// An LDAP directory: `ldaps://host[:port]`, or `ldap://` (to loopback, with
    /// `ldap_starttls`, or with `ldap_allow_plain`).
    pub ldap_url: Option<String>,
    /// Where the search starts (`ou=people,dc=example,dc=com`); required with `ldap_url`.
    pub ldap_base: Option<String>,
    /// The search filter (default `(<ldap_number_attr>=*)`).
    pub ldap_filter: Option<String>,
    /// The DN of a simple bind (anonymous without); with `ldap_password_env`.
    pub ldap_bind_dn: Option<String>,
    /// Environment variable holding the bind password.
    pub ldap_password_env: Option<String>,
    /// The attribute holding the name (default `cn`).
    pub ldap_name_attr: Option<String>,
    /// The attribute holding the number (default `telephoneNumber`).
    pub ldap_number_attr: Option<String>,
    /// Takes the extension out of the number (its first capture group, or the whole match);
    /// default `^[0-9*#]+$`, the number as it is.
    pub ldap_extension_regex: Option<String>,
    /// How often the entries are fetched again (default 15 minutes).
    #[serde(default, with = "humantime_serde")]
    pub ldap_refresh: Option<Duration>,
    /// Entries per page of the paged search (default 500).
    pub ldap_page_size: Option<u32>,
    /// PEM CA certificates the LDAP server's certificate must chain to (default: public roots).
    pub ldap_ca: Option<PathBuf>,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub ldap_starttls: bool,
    /// Accept plain `ldap://` to a host that is not loopback (the bind password and the staff
    /// list then cross the network in clear).
    #[serde(default)]
    pub ldap_allow_plain: bool,
    pub ivr_number: Option<String>,
    /// `context_delivery = "number_pool"`: the IVR's numbers, each held by one live proof call.
    #[serde(default)]
    pub ivr_numbers: Vec<String>,
    pub context_delivery: Option<crate::association::ContextDelivery>,
    #[serde(default)]
    pub require_completion: bool,
    pub lock_prefix: Option<String>,
    pub code_digits: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub code_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub ring_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub ivr_timeout: Option<Duration>,
    pub proof_calls_per_hour: Option<usize>,
    pub lockout_after: Option<u32>,
    pub did_prefix: Option<String>,
    /// Digits of each proof call's context id (8..=16).
    pub context_digits: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub ivr_claim_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub owner_block: Option<Duration>,
    /// The language the IVR speaks to this PBX's phones (BCP 47, `en-US` when absent): shipped
    /// (`en-US`, `fr-FR`) or given by a `[prompts."<language>"]` table.
    pub language: Option<String>,
}

/// `ldap_extension_regex` when the file has none: the number is the extension as it is.
pub const DEFAULT_EXTENSION_REGEX: &str = "^[0-9*#]+$";
/// `ldap_refresh` when the file has none.
pub const DEFAULT_LDAP_REFRESH: Duration = Duration::from_secs(15 * 60);
/// `ldap_page_size` when the file has none.
pub const DEFAULT_LDAP_PAGE_SIZE: i32 = 500;

/// The longest a proof call may ring: past this the user has walked away, and the extension's
/// line is held for nothing.
pub const MAX_RING_TIMEOUT: Duration = Duration::from_secs(300);
/// The most proof calls per extension an hour may set: each rings a person's desk phone.
pub const MAX_PROOF_CALLS_PER_HOUR: usize = 20;
/// The most numbers an IVR pool may list (`ivr_numbers`).
pub const MAX_IVR_NUMBERS: usize = 1000;

fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_rps() -> f64 {
    20.0
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}

/// Everything a link needs, presets applied and secrets resolved.
#[derive(Debug, Clone)]
pub struct LinkProfile {
    pub id: String,
    pub address: String,
    pub framing: Framing,
    pub dialect: Dialect,
    pub preamble: bool,
    pub acse: Option<AarqParams>,
    pub keepalive: Duration,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_requests_per_second: f64,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The Phase II form of the unverified-shape values the link originates.
    pub phase2_results: Wrapping,
    /// CSTA XML (the framing is then `xml-header` or `xml-nul`, and `acse` is `None`): the
    /// session to open. `None` for BER links.
    pub xml: Option<XmlProfile>,
    /// CSTA over TLS (`tls = true`): the client configuration and the name the PBX's
    /// certificate must carry. `None`: plain TCP.
    pub tls: Option<crate::link::tls::LinkTls>,
}

/// What a CSTA XML link needs beyond its framing.
#[derive(Debug, Clone, PartialEq)]
pub struct XmlProfile {
    pub protocol_version: ProtocolVersion,
    pub application_id: String,
    pub session_duration: Duration,
    pub login: Option<Login>,
    /// Open an ECMA-354 session before any CSTA request (`xml_session = "required"`).
    pub session: bool,
}

impl XmlProfile {
    /// The defaults: ed4, `cstagate`, 180 s, no login, a session.
    pub fn new() -> XmlProfile {
        XmlProfile { protocol_version: ProtocolVersion::Ed4, application_id: "cstagate".into(), session_duration: DEFAULT_SESSION_DURATION, login: None, session: true }
    }
}

impl Default for XmlProfile {
    fn default() -> Self {
        XmlProfile::new()
    }
}

/// The session duration requested when the file names none.
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(180);

impl LinkProfile {
    /// A profile with the configuration file's defaults: ACSE context 1.3.12.0.218 without
    /// login, no preamble, keep-alive 30 s, request and connect timeouts 5 s, 20 requests/s,
    /// reconnect backoff 0.5–60 s. For tools and tests that build a link without a file.
    pub fn new(id: &str, address: &str, framing: Framing, dialect: Dialect) -> LinkProfile {
        LinkProfile {
            id: id.to_owned(),
            address: address.to_owned(),
            framing,
            dialect,
            preamble: false,
            acse: Some(AarqParams { context: "1.3.12.0.218".into(), credentials: None, user_information: None }),
            keepalive: default_keepalive(),
            request_timeout: default_request_timeout(),
            connect_timeout: default_connect_timeout(),
            max_requests_per_second: default_rps(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            phase2_results: Wrapping::Bare,
            xml: None,
            tls: None,
        }
    }

    /// A CSTA XML profile with the defaults of [`LinkProfile::new`] and [`XmlProfile::new`].
    pub fn xml(id: &str, address: &str, framing: Framing) -> LinkProfile {
        LinkProfile { acse: None, xml: Some(XmlProfile::new()), ..LinkProfile::new(id, address, framing, Dialect::Phase3) }
    }
}

impl PbxConfig {
    fn at(&self) -> String {
        format!("pbx `{}`", self.id)
    }

    pub(crate) fn invalid(&self, key: &'static str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { at: self.at(), key, why: why.into() }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_empty() || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(self.invalid("id", "must be letters, digits, '-' or '_'"));
        }
        if self.address.is_empty() {
            return Err(self.invalid("address", "is empty"));
        }
        if !(self.max_requests_per_second > 0.0 && self.max_requests_per_second.is_finite()) {
            return Err(self.invalid("max_requests_per_second", "must be a positive number"));
        }
        for (key, d) in [("keepalive", self.keepalive), ("request_timeout", self.request_timeout), ("connect_timeout", self.connect_timeout), ("reconnect_min", self.reconnect_min)] {
            if d.is_zero() {
                return Err(self.invalid(key, "must be longer than zero"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(self.invalid("reconnect_max", "must not be shorter than reconnect_min"));
        }
        if let Some(ctx) = &self.acse_context {
            if ctx != "none" && crate::codec::ber::oid_from_str(ctx).is_none() {
                return Err(self.invalid("acse_context", "is not a dotted OID (or \"none\")"));
            }
        }
        if self.acse_password_env.is_some() && self.acse_password_file.is_some() {
            return Err(self.invalid("acse_password_env", "and acse_password_file are exclusive"));
        }
        if (self.acse_password_env.is_some() || self.acse_password_file.is_some()) && self.acse_user.is_none() {
            return Err(self.invalid("acse_user", "is required when a password is configured"));
        }
        self.validate_tls()?;
        let xml_keys = [
            ("xml_protocol_version", self.xml_protocol_version.is_some()),
            ("application_id", self.application_id.is_some()),
            ("session_duration", self.session_duration.is_some()),
            ("xml_login", self.xml_login.is_some()),
            ("xml_framing", self.xml_framing.is_some()),
            ("xml_session", self.xml_session.is_some()),
        ];
        if !self.dialect.is_xml() {
            if let Some((key, _)) = xml_keys.iter().find(|(_, set)| *set) {
                return Err(self.invalid(key, "applies to the CSTA XML dialects only (xml, mxone, openscape)"));
            }
        } else {
            for (key, set) in [("framing", self.framing.is_some()), ("phase", self.phase.is_some()), ("preamble", self.preamble.is_some()), ("acse_context", self.acse_context.is_some()), ("csta_versions", self.csta_versions.is_some())] {
                if set {
                    return Err(self.invalid(key, "applies to the BER dialects only; CSTA XML has xml_framing and xml_session"));
                }
            }
            if self.dialect == Preset::Xml && !self.address.contains(':') {
                return Err(self.invalid("address", "must name the port (host:port) with dialect \"xml\""));
            }
            if self.session_duration.is_some_and(|d| d < Duration::from_secs(10) || d > Duration::from_secs(86_400)) {
                return Err(self.invalid("session_duration", "must be 10 s to 24 h"));
            }
            if self.application_id.as_ref().is_some_and(|a| a.is_empty() || a.len() > 64) {
                return Err(self.invalid("application_id", "must be 1 to 64 characters"));
            }
            if self.xml_login.is_some_and(|l| l != LoginStyle::None) && self.acse_user.is_none() {
                return Err(self.invalid("xml_login", "needs acse_user (and its password) for the login"));
            }
        }
        if self.code_digits.is_some_and(|n| !(6..=12).contains(&n)) {
            return Err(self.invalid("code_digits", "must be 6 to 12 (NIST SP 800-63B: at least 6)"));
        }
        if self.code_ttl.is_some_and(|t| t.is_zero() || t > Duration::from_secs(600)) {
            return Err(self.invalid("code_ttl", "must be more than 0 and at most 10 minutes"));
        }
        if self.ring_timeout.is_some_and(|t| t.is_zero() || t > MAX_RING_TIMEOUT) {
            return Err(self.invalid("ring_timeout", "must be more than 0 and at most 5 minutes"));
        }
        if self.ivr_timeout.is_some_and(|t| t.is_zero()) {
            return Err(self.invalid("ivr_timeout", "must be more than 0"));
        }
        if self.proof_calls_per_hour.is_some_and(|n| !(1..=MAX_PROOF_CALLS_PER_HOUR).contains(&n)) {
            return Err(self.invalid("proof_calls_per_hour", format!("must be 1 to {MAX_PROOF_CALLS_PER_HOUR} (each rings a person's phone)")));
        }
        if self.lockout_after.is_some_and(|n| n == 0 || n > 100) {
            return Err(self.invalid("lockout_after", "must be 1 to 100"));
        }
        if self.context_digits.is_some_and(|n| !(8..=16).contains(&n)) {
            return Err(self.invalid("context_digits", "must be 8 to 16"));
        }
        if self.ivr_claim_window.is_some_and(|t| t.is_zero() || t > Duration::from_secs(120)) {
            return Err(self.invalid("ivr_claim_window", "must be more than 0 and at most 2 minutes"));
        }
        if self.owner_block.is_some_and(|t| t.is_zero() || t > Duration::from_secs(30 * 86_400)) {
            return Err(self.invalid("owner_block", "must be more than 0 and at most 30 days"));
        }
        let pool = self.context_delivery == Some(crate::association::ContextDelivery::NumberPool);
        if pool && self.ivr_numbers.is_empty() {
            return Err(self.invalid("ivr_numbers", "must list the IVR's numbers with context_delivery = \"number_pool\" (one per proof call at once)"));
        }
        if !pool && !self.ivr_numbers.is_empty() {
            return Err(self.invalid("ivr_numbers", "applies only with context_delivery = \"number_pool\" (use ivr_number otherwise)"));
        }
        if self.ivr_numbers.len() > MAX_IVR_NUMBERS {
            return Err(self.invalid("ivr_numbers", format!("lists more than {MAX_IVR_NUMBERS} numbers")));
        }
        for (i, n) in self.ivr_numbers.iter().enumerate() {
            if n.is_empty() || n.len() > 32 || !n.chars().all(|c| c.is_ascii_digit() || c == '+') {
                return Err(self.invalid("ivr_numbers", format!("`{n}` is not a number to dial (digits, a leading +)")));
            }
            if n.chars().filter(char::is_ascii_digit).collect::<String>().trim_start_matches('0').len() < crate::association::POOL_MATCH_DIGITS {
                return Err(self.invalid("ivr_numbers", format!("`{n}` is too short to be told apart at the IVR (at least {} digits after the leading zeros)", crate::association::POOL_MATCH_DIGITS)));
            }
            if let Some(other) = self.ivr_numbers[..i].iter().find(|o| crate::association::pool_number_matches(o, n)) {
                return Err(self.invalid("ivr_numbers", format!("`{n}` and `{other}` would be the same number at the IVR")));
            }
        }
        if self.tenant.is_some() && self.context_delivery == Some(crate::association::ContextDelivery::None) && self.did_prefix.is_none() {
            return Err(self.invalid("context_delivery", "\"none\" needs did_prefix: without a context id only the extension's DID can name the proof call"));
        }
        self.validate_directory()
    }

    /// The directory keys without reading their files or secrets (that is
    /// [`PbxConfig::directory_settings`]'s).
    fn validate_directory(&self) -> Result<(), ConfigError> {
        if self.directory_csv.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(self.invalid("directory_csv", "is empty (a file's path)"));
        }
        if (self.directory_csv.is_some() || self.ldap_url.is_some()) && self.extensions.is_empty() {
            let key = if self.directory_csv.is_some() { "directory_csv" } else { "ldap_url" };
            return Err(self.invalid(key, "needs `extensions`: the directory lists only extensions inside them"));
        }
        let ldap_keys = [
            ("ldap_base", self.ldap_base.is_some()),
            ("ldap_filter", self.ldap_filter.is_some()),
            ("ldap_bind_dn", self.ldap_bind_dn.is_some()),
            ("ldap_password_env", self.ldap_password_env.is_some()),
            ("ldap_name_attr", self.ldap_name_attr.is_some()),
            ("ldap_number_attr", self.ldap_number_attr.is_some()),
            ("ldap_extension_regex", self.ldap_extension_regex.is_some()),
            ("ldap_refresh", self.ldap_refresh.is_some()),
            ("ldap_page_size", self.ldap_page_size.is_some()),
            ("ldap_ca", self.ldap_ca.is_some()),
            ("ldap_starttls", self.ldap_starttls),
            ("ldap_allow_plain", self.ldap_allow_plain),
        ];
        let Some(url) = &self.ldap_url else {
            return match ldap_keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(self.invalid(key, "applies only with ldap_url")),
                None => Ok(()),
            };
        };
        let (tls, rest) = match url.split_once("://") {
            Some(("ldaps", rest)) => (true, rest),
            Some(("ldap", rest)) => (false, rest),
            _ => return Err(self.invalid("ldap_url", "must be ldaps://host[:port] or ldap://host[:port]")),
        };
        let host = tls::host_of(rest.split(['/', '?']).next().unwrap_or_default());
        if host.is_empty() {
            return Err(self.invalid("ldap_url", "has no host"));
        }
        if tls && self.ldap_starttls {
            return Err(self.invalid("ldap_starttls", "applies to ldap:// only (ldaps:// is TLS from the start)"));
        }
        let encrypted = tls || self.ldap_starttls;
        if !encrypted && self.ldap_ca.is_some() {
            return Err(self.invalid("ldap_ca", "applies only with ldaps:// or ldap_starttls"));
        }
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !encrypted && !loopback && !self.ldap_allow_plain {
            return Err(self.invalid("ldap_url", "is plain ldap:// to another machine: the bind password and the names would cross the network in clear; use ldaps://, ldap_starttls = true, or set ldap_allow_plain = true"));
        }
        if self.ldap_base.as_ref().is_none_or(|b| b.trim().is_empty()) {
            return Err(self.invalid("ldap_base", "is required with ldap_url (where the search starts)"));
        }
        if self.ldap_filter.as_ref().is_some_and(|f| ldap3::parse_filter(f).is_err()) {
            return Err(self.invalid("ldap_filter", "is not an LDAP filter (RFC 4515, e.g. `(&(objectClass=person)(telephoneNumber=*))`)"));
        }
        match (&self.ldap_bind_dn, &self.ldap_password_env) {
            (Some(_), None) => return Err(self.invalid("ldap_password_env", "is required with ldap_bind_dn")),
            (None, Some(_)) => return Err(self.invalid("ldap_bind_dn", "is required with ldap_password_env")),
            _ => {}
        }
        for (key, attr) in [("ldap_name_attr", &self.ldap_name_attr), ("ldap_number_attr", &self.ldap_number_attr)] {
            if attr.as_ref().is_some_and(|a| a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';' || b == b'.')) {
                return Err(self.invalid(key, "must be an attribute name (letters, digits, '-', at most 64)"));
            }
        }
        if let Some(re) = &self.ldap_extension_regex {
            self.extension_regex(re)?;
        }
        if self.ldap_refresh.is_some_and(|d| d < Duration::from_secs(1) || d > Duration::from_secs(86_400)) {
            return Err(self.invalid("ldap_refresh", "must be 1 s to 24 h"));
        }
        if self.ldap_page_size.is_some_and(|n| !(1..=10_000).contains(&n)) {
            return Err(self.invalid("ldap_page_size", "must be 1 to 10000"));
        }
        Ok(())
    }

    fn extension_regex(&self, re: &str) -> Result<regex::Regex, ConfigError> {
        regex::RegexBuilder::new(re).size_limit(1 << 20).build().map_err(|e| self.invalid("ldap_extension_regex", format!("is not a regular expression: {e}")))
    }

    /// The directory's sources: the `names` (as entries), the CSV file's path, and the LDAP
    /// settings with the bind password read and the TLS client built.
    ///
    /// # Errors
    /// The password's variable is missing or empty, or `ldap_ca` cannot be read (the error
    /// names the key, never the password).
    pub fn directory_settings(&self) -> Result<crate::directory::DirectorySettings, ConfigError> {
        let mut names: Vec<crate::directory::Entry> = self.names.iter().filter_map(|(x, n)| Some(crate::directory::Entry { extension: x.clone(), name: crate::directory::clean_name(n)? })).collect();
        names.sort_by(|a, b| a.extension.cmp(&b.extension));
        let ldap = match &self.ldap_url {
            None => None,
            Some(url) => {
                let bind = match (&self.ldap_bind_dn, &self.ldap_password_env) {
                    (Some(dn), Some(var)) => Some((dn.clone(), Secret::from(read_secret(&self.at(), "ldap_password_env", SecretSource::Env(var))?))),
                    _ => None,
                };
                let encrypted = url.starts_with("ldaps://") || self.ldap_starttls;
                let tls = if encrypted {
                    let ca = match &self.ldap_ca {
                        Some(p) => Some(tls::read_certs(p).map_err(|w| self.invalid("ldap_ca", format!("file {}: {w}", p.display())))?),
                        None => None,
                    };
                    Some(std::sync::Arc::new(tls::client_config(ca, None).map_err(|e| self.invalid("ldap_ca", e.why))?))
                } else {
                    None
                };
                let number_attr = self.ldap_number_attr.clone().unwrap_or_else(|| "telephoneNumber".into());
                Some(crate::directory::ldap::LdapSettings {
                    url: url.clone(),
                    base: self.ldap_base.clone().unwrap_or_default(),
                    filter: self.ldap_filter.clone().unwrap_or_else(|| format!("({number_attr}=*)")),
                    bind,
                    name_attr: self.ldap_name_attr.clone().unwrap_or_else(|| "cn".into()),
                    number_attr,
                    extension: self.extension_regex(self.ldap_extension_regex.as_deref().unwrap_or(DEFAULT_EXTENSION_REGEX))?,
                    refresh: self.ldap_refresh.unwrap_or(DEFAULT_LDAP_REFRESH),
                    page_size: self.ldap_page_size.map_or(DEFAULT_LDAP_PAGE_SIZE, |n| n as i32),
                    tls,
                    starttls: self.ldap_starttls,
                })
            }
        };
        Ok(crate::directory::DirectorySettings { names, csv: self.directory_csv.clone(), ldap })
    }

    /// The `tls*` keys without reading their files (that is [`PbxConfig::profile`]'s).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let keys = [("tls_ca", self.tls_ca.is_some()), ("tls_server_name", self.tls_server_name.is_some()), ("tls_cert", self.tls_cert.is_some()), ("tls_key", self.tls_key.is_some())];
        if !self.tls {
            if let Some((key, _)) = keys.iter().find(|(_, set)| *set) {
                return Err(self.invalid(key, "applies only with tls = true"));
            }
            return Ok(());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(self.invalid("tls_key", "is required with tls_cert (the client certificate's private key)")),
            (None, Some(_)) => return Err(self.invalid("tls_cert", "is required with tls_key (the client certificate)")),
            _ => {}
        }
        match &self.tls_server_name {
            Some(n) if tls::parse_server_name(n).is_none() => Err(self.invalid("tls_server_name", "is not a DNS name or an IP address")),
            Some(_) => Ok(()),
            None if tls::parse_server_name(tls::host_of(&self.address)).is_none() => {
                Err(self.invalid("address", "has a host that is not a TLS server name: set tls_server_name"))
            }
            None => Ok(()),
        }
    }

    /// The link's TLS client: the CA, the client certificate and key read from their files now
    /// (so a missing or wrong file stops the start, naming its key and path), and the server
    /// name (`tls_server_name`, or the host of `address`).
    fn link_tls(&self, address: &str) -> Result<tls::LinkTls, ConfigError> {
        let file = |key: &'static str, path: Option<&PathBuf>, why: String| match path {
            Some(p) => self.invalid(key, format!("file {}: {why}", p.display())),
            None => self.invalid(key, why),
        };
        let ca = match &self.tls_ca {
            Some(p) => Some(tls::read_certs(p).map_err(|w| file("tls_ca", Some(p), w))?),
            None => None,
        };
        let client = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((tls::read_certs(c).map_err(|w| file("tls_cert", Some(c), w))?, tls::read_key(k).map_err(|w| file("tls_key", Some(k), w))?)),
            _ => None,
        };
        let client_cert = client.is_some();
        let config = tls::client_config(ca, client).map_err(|e| match e.input {
            "key" => file("tls_key", self.tls_key.as_ref(), e.why),
            "cert" => file("tls_cert", self.tls_cert.as_ref(), e.why),
            _ => file("tls_ca", self.tls_ca.as_ref(), e.why),
        })?;
        let name = self.tls_server_name.as_deref().unwrap_or_else(|| tls::host_of(address));
        let server_name = tls::parse_server_name(name).ok_or_else(|| self.invalid("tls_server_name", format!("`{name}` is not a DNS name or an IP address")))?;
        Ok(tls::LinkTls { config: std::sync::Arc::new(config), server_name, client_cert })
    }

    /// Apply the preset, read the password and the TLS files.
    ///
    /// # Errors
    /// The password's environment variable or file is missing or empty; a TLS file cannot be
    /// read or does not hold what its key needs (the error names the key and the path).
    pub fn profile(&self) -> Result<LinkProfile, ConfigError> {
        let (port, framing, dialect, preamble, context, versions): (u16, Framing, Dialect, bool, &str, Vec<u32>) = match self.dialect {
            // OXE: ECMA-180 context; CSTA versions one and two (brief §3.3).
            Preset::Oxe => (2555, Framing::TwoByteLength, Dialect::Phase2, true, "1.3.12.0.180", vec![0, 1]),
            Preset::Hipath => (7001, Framing::Siemens, Dialect::Phase3, false, "1.3.12.0.218", vec![3]),
            Preset::Phase3 => (33333, Framing::TwoByteLength, Dialect::Phase3, false, "1.3.12.0.218", vec![4]),
            // CSTA XML: no ACSE (`context` "none"); the session is `xml` below.
            Preset::Mxone => (8882, self.xml_framing(), Dialect::Phase3, false, "none", vec![]),
            Preset::Openscape => (8800, self.xml_framing(), Dialect::Phase3, false, "none", vec![]),
            Preset::Xml => (0, self.xml_framing(), Dialect::Phase3, false, "none", vec![]),
        };
        let address = if self.address.contains(':') { self.address.clone() } else { format!("{}:{port}", self.address) };
        let password = match (&self.acse_password_env, &self.acse_password_file) {
            (Some(var), _) => Some(read_secret(&self.at(), "acse_password_env", SecretSource::Env(var))?),
            (_, Some(file)) => Some(read_secret(&self.at(), "acse_password_file", SecretSource::File(file))?),
            _ => None,
        };
        let tls = if self.tls { Some(self.link_tls(&address)?) } else { None };
        let context = self.acse_context.as_deref().unwrap_or(context);
        let acse = (context != "none" && !self.dialect.is_xml()).then(|| AarqParams {
            context: context.to_owned(),
            credentials: self.acse_user.clone().map(|u| (u, Secret::new(bytes::Bytes::from(password.clone().unwrap_or_default())))),
            user_information: Some(UserInformation::Csta(CstaUserInfo::with_versions(
                None,
                self.csta_versions.as_deref().unwrap_or(&versions),
                self.dialect != Preset::Oxe,
            ))),
        });
        Ok(LinkProfile {
            id: self.id.clone(),
            address,
            framing: self.framing.unwrap_or(framing),
            dialect: self.phase.unwrap_or(dialect),
            preamble: self.preamble.unwrap_or(preamble),
            acse,
            keepalive: self.keepalive,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            max_requests_per_second: self.max_requests_per_second,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            phase2_results: self.phase2_results,
            xml: self.dialect.is_xml().then(|| XmlProfile {
                protocol_version: self.xml_protocol_version.unwrap_or_default(),
                application_id: self.application_id.clone().unwrap_or_else(|| "cstagate".into()),
                session_duration: self.session_duration.unwrap_or(DEFAULT_SESSION_DURATION),
                login: self.acse_user.clone().and_then(|user| {
                    let style = self.xml_login.unwrap_or(LoginStyle::SessionLoginInfo);
                    (style != LoginStyle::None).then(|| Login { style, user, password: Secret::new(bytes::Bytes::from(password.clone().unwrap_or_default())) })
                }),
                session: self.xml_session.unwrap_or_default() == XmlSession::Required,
            }),
            tls,
        })
    }

    fn xml_framing(&self) -> Framing {
        match self.xml_framing.unwrap_or_default() {
            XmlFraming::Header => Framing::XmlHeader,
            XmlFraming::Nul => Framing::XmlNul,
        }
    }
}

impl PbxConfig {
    /// The link's own keys (everything but the association policy's), written out to compare:
    /// a reload restarts the link only when these differ. Names of variables and files, never
    /// the secrets they hold.
    pub fn link_settings(&self) -> String {
        format!(
            "{:?}",
            (
                (&self.address, &self.dialect, &self.framing, &self.phase, &self.preamble, &self.acse_context, &self.csta_versions),
                (&self.acse_user, &self.acse_password_env, &self.acse_password_file),
                (self.keepalive, self.request_timeout, self.connect_timeout, self.max_requests_per_second, self.reconnect_min, self.reconnect_max, &self.phase2_results),
                (&self.xml_protocol_version, &self.application_id, self.session_duration, &self.xml_login, &self.xml_framing, &self.xml_session),
                (self.tls, &self.tls_ca, &self.tls_server_name, &self.tls_cert, &self.tls_key),
            )
        )
    }
}

impl Config {
    /// The association policy of every PBX that names a tenant.
    ///
    /// # Errors
    /// A bad directory entry or a missing IVR number.
    pub fn policies(&self) -> Result<std::collections::HashMap<String, crate::association::Policy>, ConfigError> {
        let mut out = std::collections::HashMap::new();
        let prompts = std::sync::Arc::new(self.prompts()?);
        for p in &self.pbx {
            let Some(tenant) = &p.tenant else { continue };
            // With a pool, its numbers are the IVR's; `ivr_number` is not needed.
            let ivr = match (p.ivr_number.as_deref(), p.ivr_numbers.first()) {
                (Some(n), _) => n,
                (None, Some(first)) => first.as_str(),
                (None, None) => return Err(p.invalid("ivr_number", "is required when `tenant` is set")),
            };
            let mut pol = crate::association::Policy::new(tenant, ivr);
            pol.ivr_numbers = p.ivr_numbers.clone();
            let numbers = parse_directory(&p.extensions.join(",")).map_err(|e| p.invalid("extensions", e.to_string()))?;
            for n in numbers {
                let name = p.names.get(&n).cloned();
                pol.directory.insert(n, name);
            }
            if let Some(d) = p.context_delivery {
                pol.context_delivery = d;
            }
            pol.require_completion = p.require_completion;
            pol.lock_prefix = p.lock_prefix.clone();
            // Ranges are checked by `Config::parse`; what the file leaves out keeps the default.
            pol.code_digits = p.code_digits.unwrap_or(pol.code_digits);
            pol.code_ttl = p.code_ttl.unwrap_or(pol.code_ttl);
            pol.ring_timeout = p.ring_timeout.unwrap_or(pol.ring_timeout);
            pol.ivr_timeout = p.ivr_timeout.unwrap_or(pol.ivr_timeout);
            pol.proof_calls_per_hour = p.proof_calls_per_hour.unwrap_or(pol.proof_calls_per_hour);
            pol.lockout_after = p.lockout_after.unwrap_or(pol.lockout_after);
            pol.did_prefix = p.did_prefix.clone();
            pol.context_digits = p.context_digits.unwrap_or(pol.context_digits);
            pol.ivr_claim_window = p.ivr_claim_window.unwrap_or(pol.ivr_claim_window);
            pol.owner_block = p.owner_block.unwrap_or(pol.owner_block);
            pol.language = super::languages::pbx_language(p, &prompts)?;
            pol.prompts = prompts.clone();
            // `validate` checked that the tenant exists; the code's way is the tenant's.
            pol.code_delivery = self.tenant.iter().find(|t| t.id == *tenant).map(|t| t.code_delivery).unwrap_or_default();
            out.insert(p.id.clone(), pol);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_overrides() {
        let c = Config::parse(
            r#"
            [[pbx]]
            id = "paris"
            address = "10.0.0.5"
            dialect = "oxe"
            keepalive = "10s"
            phase2_results = "wrapped"

            [[pbx]]
            id = "berlin"
            address = "pbx.example:8800"
            dialect = "hipath"
            acse_user = "AMHOST"
            acse_password_file = "/nonexistent/cstagate-password"
            max_requests_per_second = 2
            "#,
        )
        .unwrap();
        let p = c.pbx("paris").unwrap().profile().unwrap();
        assert_eq!((p.address.as_str(), p.framing, p.dialect, p.preamble), ("10.0.0.5:2555", Framing::TwoByteLength, Dialect::Phase2, true));
        assert_eq!(p.keepalive, Duration::from_secs(10));
        assert_eq!(p.acse.unwrap().context, "1.3.12.0.180");
        assert_eq!(p.phase2_results, Wrapping::Wrapped);
        assert_eq!(c.pbx("berlin").unwrap().phase2_results, Wrapping::Bare, "today's form by default");
        let err = c.pbx("berlin").unwrap().profile().unwrap_err().to_string();
        assert!(err.contains("acse_password_file"), "{err}");
    }

    #[test]
    fn directory_keys_are_checked_by_name() {
        let base = "[[pbx]]\nid = \"p\"\naddress = \"h\"\ndialect = \"phase3\"\n";
        let ok = format!("{base}extensions = [\"2000-2099\"]\ndirectory_csv = \"/tmp/d.csv\"\nldap_url = \"ldap://127.0.0.1:3389\"\nldap_base = \"dc=example,dc=com\"\nldap_refresh = \"30s\"\n");
        let c = Config::parse(&ok).unwrap();
        let s = c.pbx("p").unwrap().directory_settings().unwrap();
        let l = s.ldap.unwrap();
        assert_eq!((l.filter.as_str(), l.name_attr.as_str(), l.refresh, l.page_size), ("(telephoneNumber=*)", "cn", Duration::from_secs(30), 500));
        assert!(Config::parse(&format!("{base}extensions = [\"2000\"]\nldap_url = \"ldaps://ldap.example\"\nldap_base = \"o=x\"\n")).is_ok());
        for (table, key) in [
            ("directory_csv = \"/tmp/d.csv\"", "directory_csv"),
            ("extensions = [\"2000\"]\nldap_base = \"o=x\"", "ldap_base"),
            ("extensions = [\"2000\"]\nldap_url = \"http://h\"\nldap_base = \"o=x\"", "ldap_url"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://ldap.example\"\nldap_base = \"o=x\"", "ldap_url"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"", "ldap_base"),
            ("extensions = [\"2000\"]\nldap_url = \"ldaps://h\"\nldap_base = \"o=x\"\nldap_starttls = true", "ldap_starttls"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_ca = \"/ca.pem\"", "ldap_ca"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_filter = \"(cn=\"", "ldap_filter"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_bind_dn = \"cn=a\"", "ldap_password_env"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_extension_regex = \"(\"", "ldap_extension_regex"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_refresh = \"0s\"", "ldap_refresh"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_page_size = 0", "ldap_page_size"),
            ("extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_name_attr = \"c n\"", "ldap_name_attr"),
        ] {
            let err = Config::parse(&format!("{base}{table}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
        // Plain ldap:// to another machine, when the operator says the network is theirs.
        assert!(Config::parse(&format!("{base}extensions = [\"2000\"]\nldap_url = \"ldap://ldap.example\"\nldap_base = \"o=x\"\nldap_allow_plain = true\n")).is_ok());
        // The password's variable is read when the directory is built, and named when missing.
        let c = Config::parse(&format!("{base}extensions = [\"2000\"]\nldap_url = \"ldap://127.0.0.1\"\nldap_base = \"o=x\"\nldap_bind_dn = \"cn=a\"\nldap_password_env = \"CSTAGATE_TEST_NO_SUCH_VAR\"\n")).unwrap();
        let err = c.pbx("p").unwrap().directory_settings().unwrap_err().to_string();
        assert!(err.contains("ldap_password_env") && err.contains("CSTAGATE_TEST_NO_SUCH_VAR"), "{err}");
    }

    #[test]
    fn xml_presets_their_ports_and_keys() {
        let c = Config::parse(
            r#"
            [[pbx]]
            id = "mx"
            address = "10.0.0.7"
            dialect = "mxone"

            [[pbx]]
            id = "osbiz"
            address = "10.0.0.8"
            dialect = "openscape"
            xml_framing = "nul"
            xml_session = "none"
            xml_protocol_version = "ed6"
            session_duration = "10m"

            [[pbx]]
            id = "soft"
            address = "soft.example:9000"
            dialect = "xml"
            "#,
        )
        .unwrap();
        let p = c.pbx("mx").unwrap().profile().unwrap();
        assert_eq!((p.address.as_str(), p.framing, p.acse.is_none()), ("10.0.0.7:8882", Framing::XmlHeader, true));
        assert_eq!(p.xml, Some(XmlProfile::new()), "the defaults, no login without acse_user");
        let p = c.pbx("osbiz").unwrap().profile().unwrap();
        assert_eq!((p.address.as_str(), p.framing), ("10.0.0.8:8800", Framing::XmlNul));
        let x = p.xml.unwrap();
        assert_eq!((x.session, x.protocol_version, x.session_duration), (false, ProtocolVersion::Ed6, Duration::from_secs(600)));
        assert_eq!(c.pbx("soft").unwrap().profile().unwrap().address, "soft.example:9000");

        for (table, key) in [
            ("dialect = \"xml\"\naddress = \"h\"", "address"),
            ("dialect = \"mxone\"\naddress = \"h\"\nframing = \"siemens\"", "framing"),
            ("dialect = \"mxone\"\naddress = \"h\"\nacse_context = \"none\"", "acse_context"),
            ("dialect = \"phase3\"\naddress = \"h\"\nxml_framing = \"nul\"", "xml_framing"),
            ("dialect = \"mxone\"\naddress = \"h\"\nsession_duration = \"5s\"", "session_duration"),
            ("dialect = \"mxone\"\naddress = \"h\"\nxml_login = \"user-password\"", "xml_login"),
            ("dialect = \"mxone\"\naddress = \"h\"\napplication_id = \"\"", "application_id"),
        ] {
            let err = Config::parse(&format!("[[pbx]]\nid = \"p\"\n{table}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
    }

    #[test]
    fn a_pool_is_checked_and_its_numbers_are_told_apart_at_the_ivr() {
        use crate::association::pool_number_matches;
        assert!(pool_number_matches("0800100201", "+33800100201") && pool_number_matches("0800100201", "0800100201"));
        assert!(!pool_number_matches("0800100201", "+33800100202") && !pool_number_matches("0800100201", "") && !pool_number_matches("12", "0012"));
        let table = |extra: &str| format!("[[tenant]]\nid = \"t\"\ntoken_env = \"T\"\n[[pbx]]\nid = \"p\"\naddress = \"10.0.0.1\"\ndialect = \"oxe\"\ntenant = \"t\"\nextensions = [\"2000\"]\n{extra}\n");
        let c = Config::parse(&table("context_delivery = \"number_pool\"\nivr_numbers = [\"0800100201\", \"0800100202\"]")).unwrap();
        let pol = &c.policies().unwrap()["p"];
        assert_eq!((pol.ivr_numbers.len(), pol.context_delivery), (2, crate::association::ContextDelivery::NumberPool));
        for (extra, why) in [
            ("context_delivery = \"number_pool\"", "must list"),
            ("ivr_number = \"0800100200\"\nivr_numbers = [\"0800100201\"]", "applies only"),
            ("context_delivery = \"number_pool\"\nivr_numbers = [\"0800-100\"]", "not a number"),
            ("context_delivery = \"number_pool\"\nivr_numbers = [\"00012\"]", "too short"),
            ("context_delivery = \"number_pool\"\nivr_numbers = [\"0800100201\", \"+33800100201\"]", "same number"),
        ] {
            let err = Config::parse(&table(extra)).unwrap_err().to_string();
            assert!(err.contains("ivr_numbers") && err.contains(why), "{extra}: {err}");
        }
        let two = format!("{}[[pbx]]\nid = \"q\"\naddress = \"10.0.0.2\"\ndialect = \"oxe\"\ntenant = \"t\"\nextensions = [\"2000\"]\ncontext_delivery = \"number_pool\"\nivr_numbers = [\"+33800100201\"]\n", table("context_delivery = \"number_pool\"\nivr_numbers = [\"0800100201\"]"));
        let err = Config::parse(&two).unwrap_err().to_string();
        assert!(err.contains("pool of pbx `p`"), "{err}");
    }
}
