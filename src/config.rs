//! The gateway's configuration: one typed value read from TOML, passed down, no globals.
//!
//! Each `[[pbx]]` table describes one PBX link. `dialect` picks a preset (port, framing,
//! preamble, ACSE context and CSTA phase) that the other keys may override. Secrets are never
//! written in the file: the ACSE password is read from the environment variable or the file the
//! config names. Unknown keys and bad values are rejected at start-up with the key's name (a wrong
//! type with its full path, `pbx[0].ring_timeout`); so are secrets that are missing or empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::codec::acse::{AarqParams, CstaUserInfo, UserInformation};
use crate::codec::body::Wrapping;
use crate::codec::framing::Framing;
use crate::codec::values::{Dialect, Secret};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub tenant: Vec<TenantConfig>,
    #[serde(default)]
    pub pbx: Vec<PbxConfig>,
}

/// `[gateway]`: the HTTP API, the database and the secrets that guard them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Environment variable holding the admin API token.
    pub admin_token_env: Option<String>,
    /// Environment variable holding the IVR webhook's HMAC secret.
    pub ivr_secret_env: Option<String>,
    /// Address of the Asterisk FastAGI server (`0.0.0.0:4573`); none when absent.
    pub fastagi_listen: Option<String>,
    /// FastAGI prompt files by prompt id.
    #[serde(default)]
    pub fastagi_prompts: std::collections::HashMap<String, String>,
    /// FastAGI file for prompts without their own (e.g. a text-to-speech prompt).
    pub fastagi_fallback: Option<String>,
    /// API connections open at once at most; more wait in the listen queue until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also while a kept-alive connection waits).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: std::time::Duration,
    /// Networks whose peers may use the FastAGI server (`["10.1.2.0/24", "2001:db8::7"]`);
    /// connections from others are closed unread. Loopback only by default.
    #[serde(default = "default_fastagi_allow")]
    pub fastagi_allow: Vec<String>,
    /// Unknown context ids each IVR adapter (webhook, FastAGI) hears per minute at most, across
    /// all its calls; beyond, a context entry gets goodbye.
    #[serde(default = "default_ivr_guesses_per_minute")]
    pub ivr_guesses_per_minute: u32,
    /// At shutdown (SIGTERM, Ctrl-C), how long requests and FastAGI sessions in progress have to
    /// finish once no new connection is accepted; those still open then are closed.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: std::time::Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: default_listen(),
            database: default_database(),
            admin_token_env: None,
            ivr_secret_env: None,
            fastagi_listen: None,
            fastagi_prompts: Default::default(),
            fastagi_fallback: None,
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
            fastagi_allow: default_fastagi_allow(),
            ivr_guesses_per_minute: default_ivr_guesses_per_minute(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

impl GatewaySettings {
    /// `fastagi_allow` parsed.
    ///
    /// # Errors
    /// An entry that is not an IP network, or an empty list.
    pub fn fastagi_allow_networks(&self) -> Result<Vec<crate::ivr::Cidr>, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid { at: "[gateway]".into(), key: "fastagi_allow", why };
        if self.fastagi_allow.is_empty() {
            return Err(invalid("must name at least one network (it is loopback only when absent)".into()));
        }
        self.fastagi_allow.iter().map(|s| s.parse().map_err(invalid)).collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.fastagi_allow_networks()?;
        if !(1..=100_000).contains(&self.ivr_guesses_per_minute) {
            return Err(ConfigError::Invalid { at: "[gateway]".into(), key: "ivr_guesses_per_minute", why: "must be 1 to 100000".into() });
        }
        // A service manager kills a process that takes longer than its own stop timeout (90 s
        // by default for systemd): the grace period must leave time for the rest of the stop.
        if self.shutdown_grace > MAX_SHUTDOWN_GRACE {
            return Err(ConfigError::Invalid { at: "[gateway]".into(), key: "shutdown_grace", why: "must be at most 60s".into() });
        }
        Ok(())
    }
}

fn default_fastagi_allow() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
/// The longest `shutdown_grace`.
pub const MAX_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn default_shutdown_grace() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}
fn default_ivr_guesses_per_minute() -> u32 {
    crate::ivr::GUESSES_PER_MINUTE
}

fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_database() -> PathBuf {
    PathBuf::from("cstagate.db")
}

/// `[[tenant]]`: a company whose cloud service calls the API for its accounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Environment variable holding this tenant's API token.
    pub token_env: String,
    /// Where account notifications are POSTed (`http://host:port/path`).
    pub notify_url: Option<String>,
    /// Environment variable holding the HMAC key of the notifications (required with
    /// `notify_url`).
    pub notify_secret_env: Option<String>,
}

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
    // The association policy of this PBX, keys of the same table. (Not a `#[serde(flatten)]`ed
    // struct: through a flatten a wrong type is reported against `pbx[0]`, not the key.)
    /// The tenant whose accounts may bind extensions of this PBX; a `[[tenant]]` must define it.
    pub tenant: Option<String>,
    /// Directory: numbers and ranges (`["2000-2099", "3000"]`).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Display names of extensions.
    #[serde(default)]
    pub names: std::collections::HashMap<String, String>,
    pub ivr_number: Option<String>,
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
}

/// The longest a proof call may ring: past this the user has walked away, and the extension's
/// line is held for nothing.
pub const MAX_RING_TIMEOUT: Duration = Duration::from_secs(300);
/// The most proof calls per extension an hour may set: each rings a person's desk phone.
pub const MAX_PROOF_CALLS_PER_HOUR: usize = 20;

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

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// TOML syntax, an unknown key or a wrong type. `key` is the full path of the key at fault
    /// (`pbx[0].ring_timeout`), when there is one.
    #[error("{}{message}", .key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse { key: Option<String>, message: String },
    /// A value of the right type that would hurt. `at` is the table (`pbx `paris``,
    /// `[gateway]`, `tenant `acme``).
    #[error("{at}: `{key}` {why}")]
    Invalid { at: String, key: &'static str, why: String },
    /// A secret the configuration points to is missing or empty. `from` names the environment
    /// variable or file; the value is never part of the error.
    #[error("{at}: `{key}`: {from} {why}")]
    Secret { at: String, key: &'static str, from: String, why: String },
}

/// Where the configuration says a secret is: never the secret itself.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    Env(&'a str),
    /// A file whose trailing newline is not part of the secret.
    File(&'a Path),
}

/// Read a secret for the key `key` of table `at`, refusing one that is missing or empty (or only
/// white space): an empty token, HMAC key or password would let anyone through — an empty
/// `IVR_SECRET` made the webhook accept requests signed with the empty key.
///
/// # Errors
/// [`ConfigError::Secret`], naming the variable or file.
pub fn read_secret(at: &str, key: &'static str, from: SecretSource<'_>) -> Result<String, ConfigError> {
    let (name, value) = match from {
        SecretSource::Env(var) => (
            format!("environment variable {var}"),
            std::env::var(var).map_err(|e| match e {
                std::env::VarError::NotPresent => "is not set".to_owned(),
                std::env::VarError::NotUnicode(_) => "is not UTF-8".to_owned(),
            }),
        ),
        SecretSource::File(path) => (
            format!("file {}", path.display()),
            std::fs::read_to_string(path).map(|s| s.trim_end_matches(['\r', '\n']).to_owned()).map_err(|e| format!("cannot be read: {e}")),
        ),
    };
    let secret = |why: String| ConfigError::Secret { at: at.to_owned(), key, from: name.clone(), why };
    match value {
        Ok(v) if v.trim().is_empty() => Err(secret("is empty".into())),
        Ok(v) => Ok(v),
        Err(why) => Err(secret(why)),
    }
}

impl Config {
    /// Read and validate a configuration file.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, unknown keys, wrong types, or invalid values (with the key).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text)
    }

    /// Parse and validate configuration text.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Parse { key: None, message: e.to_string() };
        let c: Config = serde_path_to_error::deserialize(toml::Deserializer::parse(text).map_err(syntax)?).map_err(|e| {
            let key = e.path().iter().next().is_some().then(|| e.path().to_string());
            ConfigError::Parse { key, message: e.into_inner().to_string() }
        })?;
        c.validate()?;
        Ok(c)
    }

    /// The checks types cannot make, each naming its key.
    fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let gateway = |key, why: &str| Err(ConfigError::Invalid { at: "[gateway]".into(), key, why: why.into() });
        if g.max_connections == 0 {
            return gateway("max_connections", "must be at least 1 (with 0 the API would accept no connection)");
        }
        if g.header_timeout.is_zero() {
            return gateway("header_timeout", "must be longer than zero");
        }
        g.validate()?;
        let mut tenants = std::collections::HashSet::new();
        for t in &self.tenant {
            let tenant = |key, why: &str| Err(ConfigError::Invalid { at: format!("tenant `{}`", t.id), key, why: why.into() });
            if t.id.is_empty() {
                return tenant("id", "is empty");
            }
            if !tenants.insert(t.id.as_str()) {
                return tenant("id", "is used by another [[tenant]]");
            }
            if t.notify_url.is_some() && t.notify_secret_env.is_none() {
                return tenant("notify_secret_env", "is required with notify_url (notifications are signed)");
            }
        }
        let mut pbxs = std::collections::HashSet::new();
        for p in &self.pbx {
            if !pbxs.insert(p.id.as_str()) {
                return Err(p.invalid("id", "is used by another [[pbx]]"));
            }
            p.validate()?;
            if let Some(t) = p.tenant.as_deref().filter(|t| !tenants.contains(t)) {
                return Err(p.invalid("tenant", format!("names `{t}`, which no [[tenant]] defines")));
            }
        }
        Ok(())
    }

    pub fn pbx(&self, id: &str) -> Option<&PbxConfig> {
        self.pbx.iter().find(|p| p.id == id)
    }

    /// The association policy of every PBX that names a tenant.
    ///
    /// # Errors
    /// A bad directory entry or a missing IVR number.
    pub fn policies(&self) -> Result<std::collections::HashMap<String, crate::association::Policy>, ConfigError> {
        let mut out = std::collections::HashMap::new();
        for p in &self.pbx {
            let Some(tenant) = &p.tenant else { continue };
            let ivr = p.ivr_number.as_deref().ok_or_else(|| p.invalid("ivr_number", "is required when `tenant` is set"))?;
            let mut pol = crate::association::Policy::new(tenant, ivr);
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
            // Ranges are checked by `Config::parse`.
            if let Some(n) = p.code_digits {
                pol.code_digits = n;
            }
            if let Some(t) = p.code_ttl {
                pol.code_ttl = t;
            }
            if let Some(t) = p.ring_timeout {
                pol.ring_timeout = t;
            }
            if let Some(t) = p.ivr_timeout {
                pol.ivr_timeout = t;
            }
            if let Some(n) = p.proof_calls_per_hour {
                pol.proof_calls_per_hour = n;
            }
            if let Some(n) = p.lockout_after {
                pol.lockout_after = n;
            }
            pol.did_prefix = p.did_prefix.clone();
            if let Some(n) = p.context_digits {
                pol.context_digits = n;
            }
            if let Some(t) = p.ivr_claim_window {
                pol.ivr_claim_window = t;
            }
            if let Some(t) = p.owner_block {
                pol.owner_block = t;
            }
            out.insert(p.id.clone(), pol);
        }
        Ok(out)
    }
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
}

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
        }
    }
}

impl PbxConfig {
    fn at(&self) -> String {
        format!("pbx `{}`", self.id)
    }

    fn invalid(&self, key: &'static str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { at: self.at(), key, why: why.into() }
    }

    fn validate(&self) -> Result<(), ConfigError> {
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
        if self.tenant.is_some() && self.context_delivery == Some(crate::association::ContextDelivery::None) && self.did_prefix.is_none() {
            return Err(self.invalid("context_delivery", "\"none\" needs did_prefix: without a context id only the extension's DID can name the proof call"));
        }
        Ok(())
    }

    /// Apply the preset and read the password.
    ///
    /// # Errors
    /// The password's environment variable or file is missing or empty.
    pub fn profile(&self) -> Result<LinkProfile, ConfigError> {
        let (port, framing, dialect, preamble, context, versions): (u16, Framing, Dialect, bool, &str, Vec<u32>) = match self.dialect {
            // OXE: ECMA-180 context; CSTA versions one and two (brief §3.3).
            Preset::Oxe => (2555, Framing::TwoByteLength, Dialect::Phase2, true, "1.3.12.0.180", vec![0, 1]),
            Preset::Hipath => (7001, Framing::Siemens, Dialect::Phase3, false, "1.3.12.0.218", vec![3]),
            Preset::Phase3 => (33333, Framing::TwoByteLength, Dialect::Phase3, false, "1.3.12.0.218", vec![4]),
        };
        let address = if self.address.contains(':') { self.address.clone() } else { format!("{}:{port}", self.address) };
        let password = match (&self.acse_password_env, &self.acse_password_file) {
            (Some(var), _) => Some(read_secret(&self.at(), "acse_password_env", SecretSource::Env(var))?),
            (_, Some(file)) => Some(read_secret(&self.at(), "acse_password_file", SecretSource::File(file))?),
            _ => None,
        };
        let context = self.acse_context.as_deref().unwrap_or(context);
        let acse = (context != "none").then(|| AarqParams {
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
        })
    }
}

/// The most numbers a directory list may expand to.
pub const MAX_DIRECTORY: usize = 100_000;

/// A directory list that does not parse, naming the item at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("bad number {0:?}")]
    BadNumber(String),
    /// Reversed, wider than [`MAX_DIRECTORY`], or with ends of different lengths.
    #[error("bad range {0:?}")]
    BadRange(String),
    #[error("more than {MAX_DIRECTORY} extensions")]
    TooMany,
}

/// Parse a directory list such as `2000-2010,3000`: the `extensions` key of a `[[pbx]]` table
/// (its items joined with commas) and `cstagate sim-pbx --extensions`. A range keeps its ends'
/// width (`0100-0102` is `0100`, `0101`, `0102`); single numbers may hold `*` and `#`.
///
/// # Errors
/// A malformed item, a reversed range, or more than [`MAX_DIRECTORY`] numbers.
pub fn parse_directory(spec: &str) -> Result<Vec<String>, DirectoryError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let number = |n: &str| n.parse::<u64>().map_err(|_| DirectoryError::BadNumber(n.to_owned()));
                let (x, y) = (number(a)?, number(b)?);
                if y < x || y - x > MAX_DIRECTORY as u64 || a.len() != b.len() {
                    return Err(DirectoryError::BadRange(item.to_owned()));
                }
                out.extend((x..=y).map(|n| format!("{n:0width$}", width = a.len())));
            }
            None if item.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') => out.push(item.to_owned()),
            None => return Err(DirectoryError::BadNumber(item.to_owned())),
        }
        if out.len() > MAX_DIRECTORY {
            return Err(DirectoryError::TooMany);
        }
    }
    Ok(out)
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
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::parse("[[pbx]]\nid='a'\naddress='x'\ndialect='oxe'\nkeep_alive='1s'\n").unwrap_err().to_string();
        assert!(e.contains("keep_alive"), "{e}");
        let e = Config::parse("[[pbx]]\nid='a'\naddress='x'\ndialect='oxe'\nmax_requests_per_second=0\n").unwrap_err().to_string();
        assert!(e.contains("max_requests_per_second"), "{e}");
        let e = Config::parse("[[pbx]]\nid='a'\naddress='x'\ndialect='avaya'\n").unwrap_err().to_string();
        assert!(e.contains("avaya") || e.contains("dialect"), "{e}");
        let e = Config::parse("[[pbx]]\nid='a'\naddress='x'\ndialect='oxe'\nkeepalive='soon'\n").unwrap_err().to_string();
        assert!(e.contains("keepalive"), "{e}");
        let e = Config::parse("[[pbx]]\nid='a'\naddress='x'\ndialect='oxe'\nacse_password_env='P'\n").unwrap_err().to_string();
        assert!(e.contains("acse_user"), "{e}");
        let e = Config::parse("[[pbx]]\nid='a'\naddress='x'\ndialect='oxe'\nphase2_results='boxed'\n").unwrap_err().to_string();
        assert!(e.contains("phase2_results") || e.contains("boxed"), "{e}");
        for (bad, key) in [
            ("fastagi_allow = ['10.0.0.5/8']", "fastagi_allow"),
            ("fastagi_allow = ['asterisk.local']", "fastagi_allow"),
            ("fastagi_allow = []", "fastagi_allow"),
            ("fastagi_allow = '10.0.0.0/8'", "fastagi_allow"),
            ("ivr_guesses_per_minute = 0", "ivr_guesses_per_minute"),
            ("ivr_guesses_per_minute = -1", "ivr_guesses_per_minute"),
            ("ivr_guesses_per_minute = 'many'", "ivr_guesses_per_minute"),
            ("ivr_guesses = 10", "ivr_guesses"),
            ("shutdown_grace = '61s'", "shutdown_grace"),
            ("shutdown_grace = 5", "shutdown_grace"),
        ] {
            let e = Config::parse(&format!("[gateway]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn fastagi_is_loopback_only_and_guesses_30_a_minute_by_default() {
        let c = Config::parse("").unwrap();
        let nets = c.gateway.fastagi_allow_networks().unwrap();
        assert_eq!(nets.iter().map(ToString::to_string).collect::<Vec<_>>(), ["127.0.0.0/8", "::1/128"]);
        assert_eq!(c.gateway.ivr_guesses_per_minute, 30);
        let c = Config::parse("[gateway]\nfastagi_allow = ['10.1.2.0/24', '2001:db8::7']\nivr_guesses_per_minute = 5\n").unwrap();
        assert_eq!(c.gateway.fastagi_allow_networks().unwrap().len(), 2);
        assert_eq!(c.gateway.ivr_guesses_per_minute, 5);
    }

    #[test]
    fn directories_expand_ranges_and_name_the_bad_item() {
        assert_eq!(parse_directory("2000-2002, 3000,*66#").unwrap(), ["2000", "2001", "2002", "3000", "*66#"]);
        assert_eq!(parse_directory("0100-0101").unwrap(), ["0100", "0101"]);
        assert_eq!(parse_directory("2010-2000"), Err(DirectoryError::BadRange("2010-2000".into())));
        assert_eq!(parse_directory("200-2000"), Err(DirectoryError::BadRange("200-2000".into())));
        assert_eq!(parse_directory("20a0"), Err(DirectoryError::BadNumber("20a0".into())));
        assert_eq!(parse_directory("1-x"), Err(DirectoryError::BadNumber("x".into())));
        assert_eq!(parse_directory("100000-199999,200000-200001"), Err(DirectoryError::TooMany));
        assert_eq!(parse_directory("").unwrap(), Vec::<String>::new());
    }
}

/// The secrets the API checks, read from the environment at start-up.
#[derive(Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<String>,
    /// Tenant id → token.
    pub tenant_tokens: std::collections::HashMap<String, String>,
    /// HMAC-SHA256 key of the IVR webhook.
    pub ivr_secret: Option<String>,
    /// Tenant id → where to send its accounts' notifications.
    pub notify: std::collections::HashMap<String, crate::notify::Target>,
}
