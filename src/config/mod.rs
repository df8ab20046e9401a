//! The gateway's configuration: one typed value read from TOML, passed down, no globals.
//!
//! Each `[[pbx]]` table describes one PBX link. `dialect` picks a preset (port, framing,
//! preamble, ACSE context and CSTA phase) that the other keys may override. Secrets are never
//! written in the file: the ACSE password is read from the environment variable or the file the
//! config names. Unknown keys and bad values are rejected at start-up with the key's name (a wrong
//! type with its full path, `pbx[0].ring_timeout`); so are secrets that are missing or empty.
//!
//! Here: the file's shape, `[gateway]` and `[[tenant]]`, loading and the checks across tables.
//! The `[[pbx]]` tables, their presets and what becomes of them (link profile, association
//! policy) are in `pbx.rs`; reading secrets in `secrets.rs`; directory lists in `directory.rs`.
//! Their types are re-exported here, so every path stays `crate::config::…`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod directory;
mod languages;
mod pbx;
mod secrets;

pub use directory::{parse_directory, DirectoryError, MAX_DIRECTORY};
pub use languages::{FastAgiFiles, PromptFiles};
pub use pbx::{LinkProfile, PbxConfig, Preset, XmlFraming, XmlProfile, XmlSession, DEFAULT_SESSION_DURATION, MAX_PROOF_CALLS_PER_HOUR, MAX_RING_TIMEOUT};
pub use secrets::{read_secret, SecretSource, Secrets};

/// The files of `[gateway]` that make the API speak HTTPS (read by [`crate::api_tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate, then any intermediate certificates (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to (mutual TLS); none: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

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
    /// `[cluster]`: this gateway is one of several sharing one PostgreSQL database; absent, it
    /// serves every PBX alone, as always.
    pub cluster: Option<ClusterSettings>,
    /// `[prompts."fr-FR"]`: the IVR's texts by prompt id, over the shipped ones or for a language
    /// of its own (`languages.rs`).
    #[serde(default)]
    pub prompts: std::collections::HashMap<String, std::collections::HashMap<String, String>>,
}

/// `[cluster]`: several `cstagate run` processes share one PostgreSQL database and split the
/// PBXs between them; each PBX's CSTA link is held by the one instance that owns its lease
/// ([`crate::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This instance's name, unique in the cluster (the lease rows' `owner`): letters, digits,
    /// `-`, `_` and `.`, at most 64.
    pub instance_id: String,
    /// This instance's internal base URL (`http://10.0.0.5:8080`), where the other instances
    /// reach it; shown as each PBX's owner's address.
    pub advertise: String,
    /// How long a lease lasts without renewal: its owner renews every third of it, and gives the
    /// PBX up when its last renewal is two thirds old; another instance takes the PBX over once
    /// the lease has expired. 10 s by default, 3 s at least.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: std::time::Duration,
    /// Environment variable holding the secret the instances present to each other.
    pub internal_token_env: Option<String>,
    /// PEM CA certificates trusted for the other instances' `https://` advertise URLs besides
    /// the public roots (a company CA): requests forwarded between instances carry the callers'
    /// tokens, so a hop that leaves the machine is HTTPS. Read and checked at load.
    pub advertise_ca: Option<PathBuf>,
}

/// The default `lease_ttl`.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// The shortest `lease_ttl`: an owner must be able to renew (a database round trip) well within
/// a third of it, on a loaded machine too.
pub const MIN_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3);

fn default_lease_ttl() -> std::time::Duration {
    DEFAULT_LEASE_TTL
}

impl ClusterSettings {
    /// The TLS client configuration of the requests forwarded to other instances: the public
    /// roots and `advertise_ca`.
    ///
    /// # Errors
    /// `advertise_ca` cannot be read or holds no usable CA certificate (the error names the key).
    pub fn forward_tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid { at: "[cluster]".into(), key: "advertise_ca", why };
        let extra = match &self.advertise_ca {
            Some(path) => crate::tls::read_ca_file(path).map_err(invalid)?,
            None => Vec::new(),
        };
        crate::http_client::client_config(&extra).map_err(invalid)
    }

    fn validate(&self, gateway: &GatewaySettings) -> Result<(), ConfigError> {
        let invalid = |key, why: &str| Err(ConfigError::Invalid { at: "[cluster]".into(), key, why: why.into() });
        if self.instance_id.is_empty() || self.instance_id.len() > 64 || !self.instance_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return invalid("instance_id", "must be 1 to 64 letters, digits, `-`, `_` or `.`");
        }
        let rest = self.advertise.strip_prefix("https://").or_else(|| self.advertise.strip_prefix("http://"));
        if rest.is_none_or(|r| r.split('/').next().is_none_or(str::is_empty)) || self.advertise.contains(['?', '#']) || self.advertise.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("advertise", "must be http(s)://host[:port] (this instance's internal base URL)");
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return invalid("lease_ttl", "must be at least 3s (the owner renews every third of it)");
        }
        if self.lease_ttl > std::time::Duration::from_secs(3600) {
            return invalid("lease_ttl", "must be at most 1h (a dead owner's PBXs wait that long)");
        }
        self.forward_tls()?;
        if !matches!(gateway.database_backend()?, crate::store::Backend::Postgres(_)) {
            return invalid("instance_id", "needs a postgres:// [gateway] database: the instances share their state and leases there (SQLite serves one process)");
        }
        Ok(())
    }
}

/// `[gateway]`: the HTTP API, the database and the secrets that guard them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A SQLite file (the default, `cstagate.db`), or a PostgreSQL database:
    /// `postgres://user@host:port/db[?sslmode=verify-full|require|disable]` (no password in it).
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Environment variable holding the PostgreSQL password (with a `postgres://` `database`).
    pub database_password_env: Option<String>,
    /// PEM CA certificates trusted for the PostgreSQL server besides the public roots (a
    /// company CA). Read and checked at load.
    pub database_ca: Option<PathBuf>,
    /// Environment variable holding the admin API token.
    pub admin_token_env: Option<String>,
    /// Environment variable holding the IVR webhook's HMAC secret.
    pub ivr_secret_env: Option<String>,
    /// The externally visible base URL of the API (`https://gw.example.com`): the TwiML
    /// adapter's signatures cover it and its `action` URLs start with it. A proxy in front of the
    /// gateway changes the URL the gateway sees, never this one.
    pub public_url: Option<String>,
    /// Environment variable holding the TwiML platform's auth token (the HMAC-SHA1 key of
    /// `X-Twilio-Signature`); with `public_url`, it enables `POST /v1/ivr/twiml`.
    pub twiml_auth_token_env: Option<String>,
    /// TwiML `<Say voice=..>` per language (`{ "fr-FR" = "Polly.Lea" }`); the platform's default
    /// voice for the others.
    #[serde(default)]
    pub twiml_voices: std::collections::HashMap<String, String>,
    /// Address of the Asterisk FastAGI server (`0.0.0.0:4573`); none when absent.
    pub fastagi_listen: Option<String>,
    /// FastAGI prompt files by prompt id, for every language; a language's own files in a table
    /// under its tag (`"fr-FR" = { enter_code = "fr/enter-code" }`).
    #[serde(default)]
    pub fastagi_prompts: std::collections::HashMap<String, PromptFiles>,
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
    /// PEM certificate (its chain may follow) of the API listener: with `tls_key`, the API and
    /// the IVR webhook speak HTTPS only, since bearer tokens and webhook signatures must not
    /// cross the network in clear. Read at start and again when the file changes or on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, only clients with a certificate signed by one of them
    /// complete the handshake (mutual TLS), for deployments where the cloud services and the
    /// IVR platform hold client certificates.
    pub tls_client_ca: Option<PathBuf>,
    /// `/readyz` answers 200 only with at least this many PBX links up; all of them when absent
    /// (0: the links do not count, only the store).
    pub ready_min_links: Option<usize>,
    /// How `cstagate run` writes its log lines on stderr: `text` or `json` (one object a line).
    #[serde(default)]
    pub log_format: LogFormat,
}

/// `log_format`: readable lines, or one JSON object per line for a log collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: default_listen(),
            database: default_database(),
            database_password_env: None,
            database_ca: None,
            admin_token_env: None,
            ivr_secret_env: None,
            public_url: None,
            twiml_auth_token_env: None,
            twiml_voices: Default::default(),
            fastagi_listen: None,
            fastagi_prompts: Default::default(),
            fastagi_fallback: None,
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
            fastagi_allow: default_fastagi_allow(),
            ivr_guesses_per_minute: default_ivr_guesses_per_minute(),
            shutdown_grace: default_shutdown_grace(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            ready_min_links: None,
            log_format: LogFormat::Text,
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

    /// The API's TLS files, when `tls_cert` and `tls_key` are set (`Config::parse` made sure
    /// they come together); the files themselves are read at start ([`crate::api_tls`]).
    pub fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() }),
            _ => None,
        }
    }

    /// Where the state is kept: a SQLite file or a PostgreSQL database, checked (the URL, its
    /// `sslmode`, `database_ca`); the password is read at start from `database_password_env`.
    ///
    /// # Errors
    /// A bad `postgres://` URL, a password in it, `database_ca` or `database_password_env`
    /// without such a URL: the error names the key.
    pub fn database_backend(&self) -> Result<crate::store::Backend, ConfigError> {
        let backend = crate::store::Backend::from_settings(&self.database, self.database_ca.as_deref()).map_err(|(key, why)| ConfigError::Invalid { at: "[gateway]".into(), key, why })?;
        if self.database_password_env.is_some() && matches!(backend, crate::store::Backend::Sqlite(_)) {
            return Err(ConfigError::Invalid { at: "[gateway]".into(), key: "database_password_env", why: "is only for a postgres:// database".into() });
        }
        Ok(backend)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.fastagi_allow_networks()?;
        self.database_backend()?;
        let invalid = |key, why: &str| Err(ConfigError::Invalid { at: "[gateway]".into(), key, why: why.into() });
        // One without the other would leave the API in clear while the operator believes it is
        // not, or name a key nobody uses.
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return invalid("tls_key", "is required with tls_cert (the certificate's private key)"),
            (None, Some(_)) => return invalid("tls_cert", "is required with tls_key (the key's certificate)"),
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid("tls_client_ca", "needs tls_cert and tls_key (client certificates are asked for in a TLS handshake)");
        }
        for (key, path) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key), ("tls_client_ca", &self.tls_client_ca)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return invalid(key, "is empty (a PEM file's path)");
            }
        }
        if let Some(url) = &self.public_url {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.split('/').next().is_none_or(str::is_empty)) || url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return invalid("public_url", "must be http(s)://host[:port][/path], without a query (the base URL the IVR platform calls)");
            }
        }
        if self.twiml_auth_token_env.is_some() && self.public_url.is_none() {
            return invalid("public_url", "is required with twiml_auth_token_env (the TwiML signature covers the URL the platform calls)");
        }
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
    /// Where account notifications are POSTed (`https://host[:port]/path`; `http://` only with
    /// `allow_plain_http`).
    pub notify_url: Option<String>,
    /// Environment variable holding the HMAC key of the notifications (required with
    /// `notify_url`).
    pub notify_secret_env: Option<String>,
    /// PEM file of CA certificates trusted for `notify_url` besides the public roots (a
    /// company CA). Read and checked at load.
    pub notify_ca: Option<PathBuf>,
    /// Accept an `http://` `notify_url`. Off by default: notifications say who bound which
    /// phone, and with `code_delivery = "notify"` carry the code, so they travel encrypted
    /// unless the operator says the network is theirs (loopback, a test bench).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Where the one-time code goes: `api` (the answer to `POST /v1/associations`, default) or
    /// `notify` (only the `code_issued` notification to `notify_url`, which must be `https://`).
    #[serde(default)]
    pub code_delivery: crate::association::CodeDelivery,
}

impl TenantConfig {
    fn invalid(&self, key: &'static str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { at: format!("tenant `{}`", self.id), key, why: why.into() }
    }

    /// The checks of the notification keys: the URL's scheme, the CA file, the code's way.
    fn validate_notify(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.notify_url {
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                return Err(self.invalid("notify_url", "must be https://host[:port]/path (or http:// with allow_plain_http = true)"));
            }
            if url.split_once("://").is_none_or(|(_, rest)| rest.split('/').next().is_none_or(str::is_empty)) {
                return Err(self.invalid("notify_url", "has no host"));
            }
            if !https && !self.allow_plain_http {
                return Err(self.invalid("notify_url", "is plain http://: notifications would travel unencrypted; use https:// or set allow_plain_http = true"));
            }
            if !https && self.code_delivery == crate::association::CodeDelivery::Notify {
                return Err(self.invalid("code_delivery", "= \"notify\" needs an https:// notify_url (the code must not travel in clear), even with allow_plain_http"));
            }
        } else if self.code_delivery == crate::association::CodeDelivery::Notify {
            return Err(self.invalid("code_delivery", "= \"notify\" needs a notify_url to send the code to"));
        }
        if let Some(ca) = &self.notify_ca {
            if self.notify_url.is_none() {
                return Err(self.invalid("notify_ca", "is set without notify_url"));
            }
            crate::tls::read_ca_file(ca).map_err(|e| self.invalid("notify_ca", e))?;
        }
        Ok(())
    }

    /// The notification target of this tenant, with `secret` (read by the caller) and the CA
    /// file read again; `None` without `notify_url`.
    ///
    /// # Errors
    /// The CA file became unreadable since the configuration was loaded.
    pub fn notify_target(&self, secret: String) -> Result<Option<crate::notify::Target>, ConfigError> {
        let Some(url) = &self.notify_url else { return Ok(None) };
        let ca = match &self.notify_ca {
            Some(path) => crate::tls::read_ca_file(path).map_err(|e| self.invalid("notify_ca", e))?,
            None => Vec::new(),
        };
        Ok(Some(crate::notify::Target { url: url.clone(), secret, ca }))
    }
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
    /// A `[prompts."<language>"]` table that would make the IVR say something wrong.
    #[error("[prompts.\"{lang}\"]: {0}", lang = .0.language())]
    Prompts(crate::ivr::prompts::PromptError),
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
            t.validate_notify()?;
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
        self.validate_languages()?;
        // A `To` must name one pool number of one PBX.
        let pools: Vec<(&str, &str)> = self.pbx.iter().flat_map(|p| p.ivr_numbers.iter().map(move |n| (p.id.as_str(), n.as_str()))).collect();
        for (i, (pbx, n)) in pools.iter().enumerate() {
            if let Some((other, o)) = pools[..i].iter().find(|(other, o)| other != pbx && crate::association::pool_number_matches(o, n)) {
                let p = self.pbx.iter().find(|p| p.id == *pbx).ok_or_else(|| ConfigError::Parse { key: None, message: String::new() })?;
                return Err(p.invalid("ivr_numbers", format!("`{n}` is also in the pool of pbx `{other}` (`{o}`)")));
            }
        }
        if let Some(n) = g.ready_min_links.filter(|n| *n > self.pbx.len()) {
            return Err(ConfigError::Invalid { at: "[gateway]".into(), key: "ready_min_links", why: format!("is {n}, but only {} [[pbx]] are configured: /readyz could never be ready", self.pbx.len()) });
        }
        if let Some(c) = &self.cluster {
            c.validate(g)?;
        }
        Ok(())
    }

    /// The `[gateway]` keys that differ between `self` (running) and `new` and that a reload
    /// cannot apply: the listeners, the database, the API's limits, the log format and the
    /// tenants' notification settings take effect at the next start. (The API's TLS files are
    /// read again by the reload itself.)
    pub fn restart_keys(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.gateway, &new.gateway);
        let mut keys = Vec::new();
        let mut differ = |key, changed: bool| {
            if changed {
                keys.push(key);
            }
        };
        differ("listen", a.listen != b.listen);
        differ("database", a.database != b.database);
        differ("fastagi_listen", a.fastagi_listen != b.fastagi_listen);
        differ("fastagi_prompts", a.fastagi_prompts != b.fastagi_prompts);
        differ("fastagi_fallback", a.fastagi_fallback != b.fastagi_fallback);
        differ("fastagi_allow", a.fastagi_allow != b.fastagi_allow);
        differ("max_connections", a.max_connections != b.max_connections);
        differ("header_timeout", a.header_timeout != b.header_timeout);
        differ("ivr_guesses_per_minute", a.ivr_guesses_per_minute != b.ivr_guesses_per_minute);
        differ("shutdown_grace", a.shutdown_grace != b.shutdown_grace);
        differ("tls_cert, tls_key, tls_client_ca (paths)", a.tls_files() != b.tls_files());
        differ("log_format", a.log_format != b.log_format);
        differ("[cluster]", self.cluster != new.cluster);
        let notify = |c: &Config| c.tenant.iter().map(|t| (t.id.clone(), t.notify_url.clone(), t.notify_secret_env.clone(), t.notify_ca.clone(), t.allow_plain_http)).collect::<Vec<_>>();
        differ("[[tenant]] notify_url, notify_secret_env, notify_ca, allow_plain_http", notify(self) != notify(new));
        keys
    }

    pub fn pbx(&self, id: &str) -> Option<&PbxConfig> {
        self.pbx.iter().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("public_url = 'gw.example'", "public_url"),
            ("public_url = 'https://'", "public_url"),
            ("public_url = 'https://gw.example/?a=1'", "public_url"),
            ("twiml_auth_token_env = 'T'", "public_url"),
            ("ready_min_links = 1", "ready_min_links"),
            ("ready_min_links = -1", "ready_min_links"),
            ("log_format = 'xml'", "log_format"),
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
}
