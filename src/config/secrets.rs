//! Secrets the configuration points to (environment variables, files) and the ones the API
//! checks. Kept apart so that the one place that reads a secret, and refuses an empty one, is
//! easy to find and to review.

use std::path::Path;

use super::ConfigError;

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

/// The secrets the API checks, read from the environment at start-up.
#[derive(Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<String>,
    /// Tenant id → token.
    pub tenant_tokens: std::collections::HashMap<String, String>,
    /// HMAC-SHA256 key of the IVR webhook.
    pub ivr_secret: Option<String>,
    /// The TwiML adapter: the platform's auth token (its HMAC-SHA1 key) with `public_url`.
    pub twiml: Option<crate::ivr::twiml::TwimlSettings>,
    /// Tenant id → where to send its accounts' notifications.
    pub notify: std::collections::HashMap<String, crate::notify::Target>,
    /// `[cluster] internal_token_env`: the secret the instances of a cluster present to each
    /// other (read and checked at start; the calls between instances are not made yet).
    pub internal_token: Option<String>,
}
