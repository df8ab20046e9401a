//! The API's extractors: who calls ([`Caller`], [`AdminCaller`]), and the strict readers of the
//! path ([`StrictPath`]), the query string ([`StrictQuery`]) and the body ([`StrictJson`]).
//!
//! Axum runs the extractors of a handler in the order of its arguments, the body last; handlers
//! list the caller first, so the token is checked before anything else and an unauthenticated
//! caller learns nothing but 401. Path and query values are percent-decoded strictly (a `%` must
//! be followed by two hex digits, the result must be UTF-8) from the raw URI — axum's own
//! decoding passes a lone `%` through — and checked by name against each field's alphabet and
//! length.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::HttpError;
use super::AppState;
use crate::association::Principal;
use crate::config::Secrets;

/// The configured tokens as SHA-256 digests, computed once when the router is built.
pub(crate) struct Tokens {
    admin: Option<[u8; 32]>,
    tenants: Vec<(String, [u8; 32])>,
}

impl Tokens {
    /// An empty configured token is left out: it matches nothing (the start refuses one; this is
    /// the last guard).
    pub(crate) fn new(secrets: &Secrets) -> Tokens {
        let digest = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
        Tokens {
            admin: secrets.admin_token.as_deref().filter(|t| !t.is_empty()).map(digest),
            tenants: secrets.tenant_tokens.iter().filter(|(_, t)| !t.is_empty()).map(|(id, t)| (id.clone(), digest(t))).collect(),
        }
    }

    /// Whose token this is. Tokens are compared as SHA-256 digests in constant time: digests
    /// have one length, so neither a configured token's length nor how much of it a guess got
    /// right shows in the time taken. Every token is compared, so timing does not tell which
    /// tenant's was close either.
    pub(crate) fn principal(&self, token: &str) -> Option<Principal> {
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.admin.is_some_and(|a| bool::from(a.ct_eq(&given))) {
            return Some(Principal::Admin);
        }
        let mut found = None;
        for (tenant, t) in &self.tenants {
            if bool::from(t.ct_eq(&given)) {
                found = Some(tenant.clone());
            }
        }
        found.map(|t| Principal::Tenant(t.into()))
    }
}

/// The caller, from its bearer token: a tenant or the admin. 401 otherwise.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Caller, HttpError> {
        let unauthorized = || HttpError::unauthorized("missing or wrong bearer token");
        let token = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(unauthorized)?;
        st.control.auth().tokens.principal(token).map(Caller).ok_or_else(unauthorized)
    }
}

/// The admin: 401 without a known token, 403 with a tenant's.
pub struct AdminCaller;

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<AdminCaller, HttpError> {
        match Caller::from_request_parts(parts, st).await?.0 {
            Principal::Admin => Ok(AdminCaller),
            Principal::Tenant(_) => Err(HttpError::new(StatusCode::FORBIDDEN, "admin token required")),
        }
    }
}

/// Decode one percent-encoded component strictly: a `%` must be followed by two hex digits and
/// the result must be UTF-8. In query strings `+` is a space.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).and_then(|c| char::from(*c).to_digit(16))?;
                let lo = b.get(i + 2).and_then(|c| char::from(*c).to_digit(16))?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The path parameters of the matched route, in the order of its template (e.g.
/// `/v1/bindings/{pbx}/{extension}` gives `[pbx, extension]`), decoded strictly and checked by
/// name: `id` an association id, `pbx` an identifier, `extension` a dial string, `call` a hex
/// call id.
pub struct StrictPath<const N: usize>(pub [String; N]);

impl<const N: usize> FromRequestParts<AppState> for StrictPath<N> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<StrictPath<N>, HttpError> {
        let no_route = || HttpError::new(StatusCode::NOT_FOUND, "no such endpoint");
        let template = parts.extensions.get::<MatchedPath>().ok_or_else(no_route)?;
        path_params(parts.uri.path(), template.as_str()).map(StrictPath)
    }
}

fn path_params<const N: usize>(path: &str, template: &str) -> Result<[String; N], HttpError> {
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    let mut n = 0;
    for (t, raw) in template.split('/').zip(path.split('/')) {
        let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else { continue };
        let Some(v) = percent_decode(raw, false) else {
            return Err(HttpError::bad(name, format!("`{name}` is not valid percent-encoded UTF-8")));
        };
        match name {
            "id" => {
                if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(HttpError::bad("id", "`id` must be an association id (letters and digits, at most 64)"));
                }
            }
            "extension" => check_number(name, &v)?,
            "call" => {
                if v.is_empty() || v.len() > 64 || v.len() % 2 != 0 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(HttpError::bad("call", "`call` must be a hex call id (at most 64 digits)"));
                }
            }
            _ => check_id(name, &v, 64)?,
        }
        if let Some(slot) = out.get_mut(n) {
            *slot = v;
        }
        n += 1;
    }
    if n != N {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "no such endpoint"));
    }
    Ok(out)
}

/// A query string's shape: the parameters it allows, and how the checked values make it.
pub trait QueryParams: Sized {
    const ALLOWED: &'static [&'static str];
    /// Build from the checked values (each allowed name at most once).
    fn from_params(params: HashMap<&'static str, String>) -> Result<Self, HttpError>;
}

/// The query string as `T`: parameters decoded strictly and checked by name (`account` an
/// identifier, `extension` a dial string, `limit` 1 to 10000, `name` a person's name); unknown or
/// repeated parameters are refused.
pub struct StrictQuery<T>(pub T);

impl<T: QueryParams> FromRequestParts<AppState> for StrictQuery<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<StrictQuery<T>, HttpError> {
        T::from_params(query_params(parts.uri.query(), T::ALLOWED)?).map(StrictQuery)
    }
}

/// No query parameter at all.
pub struct NoQuery;

impl QueryParams for NoQuery {
    const ALLOWED: &'static [&'static str] = &[];
    fn from_params(_: HashMap<&'static str, String>) -> Result<NoQuery, HttpError> {
        Ok(NoQuery)
    }
}

/// `?account=`, required.
pub struct AccountQuery {
    pub account: String,
}

impl QueryParams for AccountQuery {
    const ALLOWED: &'static [&'static str] = &["account"];
    fn from_params(mut q: HashMap<&'static str, String>) -> Result<AccountQuery, HttpError> {
        let account = q.remove("account").ok_or_else(|| HttpError::bad("account", "`account` is required"))?;
        Ok(AccountQuery { account })
    }
}

/// `?account=`, optional.
pub struct MaybeAccountQuery {
    pub account: Option<String>,
}

impl QueryParams for MaybeAccountQuery {
    const ALLOWED: &'static [&'static str] = &["account"];
    fn from_params(mut q: HashMap<&'static str, String>) -> Result<MaybeAccountQuery, HttpError> {
        Ok(MaybeAccountQuery { account: q.remove("account") })
    }
}

fn query_params(raw: Option<&str>, allowed: &[&'static str]) -> Result<HashMap<&'static str, String>, HttpError> {
    let mut out = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(k) = percent_decode(k, true) else { return Err(HttpError::bad("query", "a query parameter name is not valid percent-encoded UTF-8")) };
        let Some(name) = allowed.iter().copied().find(|a| *a == k) else {
            let shown: String = k.chars().take(64).collect();
            let expected = if allowed.is_empty() { "none".to_owned() } else { format!("one of {}", allowed.join(", ")) };
            return Err(HttpError::bad(&shown, format!("unknown query parameter `{shown}` (expected {expected})")));
        };
        let Some(v) = percent_decode(v, true) else { return Err(HttpError::bad(name, format!("`{name}` is not valid percent-encoded UTF-8"))) };
        match name {
            "extension" => check_number(name, &v)?,
            "limit" => {
                if !v.parse::<usize>().is_ok_and(|n| (1..=10_000).contains(&n)) {
                    return Err(HttpError::bad("limit", "`limit` must be an integer from 1 to 10000"));
                }
            }
            // A person's name, in any script (the directory search).
            "name" => check_text(name, &v, crate::directory::matcher::MAX_QUERY_CHARS)?,
            _ => check_id(name, &v, 128)?,
        }
        if out.insert(name, v).is_some() {
            return Err(HttpError::bad(name, format!("`{name}` is given twice")));
        }
    }
    Ok(out)
}

/// A request body's own checks beyond its JSON shape (alphabets and lengths of its fields).
pub trait Validate {
    fn validate(&self) -> Result<(), HttpError>;
}

/// A JSON body read strictly (one object, each member once, nothing after it, no unknown
/// member) and then validated. Bodies over the router's limit are refused (413) before this.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned + Validate> FromRequest<AppState> for StrictJson<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, st: &AppState) -> Result<StrictJson<T>, HttpError> {
        // Too large (413) or unreadable: the framework's status and message.
        let body = Bytes::from_request(req, st).await.map_err(|e| if e.status() == StatusCode::PAYLOAD_TOO_LARGE { HttpError::too_large() } else { HttpError::new(e.status(), e.body_text()) })?;
        let v: T = parse(&body)?;
        v.validate()?;
        Ok(StrictJson(v))
    }
}

/// Parse a JSON body strictly, naming the field at fault: one JSON object (not an array, which
/// serde would take for a struct), each member once, nothing after it.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(HttpError::bad_request("invalid request body: expected one JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // The path names the member being read; serde names unknown, missing and repeated
        // members in its message.
        let field = if !path.is_empty() && path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            Some(path)
        } else if inner.is_data() {
            msg.split('`').nth(1).map(str::to_owned)
        } else {
            None
        };
        let mut e = HttpError::bad_request(format!("invalid request body: {msg}"));
        e.body.field = field;
        e
    })?;
    de.end().map_err(|e| HttpError::bad_request(format!("invalid request body: {e} (after the JSON object)")))?;
    Ok(v)
}

/// A name shown to people (`display_name`): 1 to `max` characters of any script, without
/// control, formatting or pictograph characters.
pub(crate) fn check_text(field: &str, v: &str, max: usize) -> Result<(), HttpError> {
    if !crate::text::is_display_name(v, max) {
        return Err(HttpError::bad(field, format!("`{field}` must be 1 to {max} characters without control, formatting or pictograph characters")));
    }
    Ok(())
}

/// An identifier (`account`, `pbx`, a call id): 1 to `max` printable ASCII characters.
pub(crate) fn check_id(field: &str, v: &str, max: usize) -> Result<(), HttpError> {
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Err(HttpError::bad(field, format!("`{field}` must be 1 to {max} printable ASCII characters")));
    }
    Ok(())
}

/// A dial string: digits, `*`, `#`, `+`; at most 32.
pub(crate) fn check_number(field: &str, v: &str) -> Result<(), HttpError> {
    if v.is_empty() || v.len() > 32 || !v.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#' || c == '+') {
        return Err(HttpError::bad(field, format!("`{field}` must be a dial string (digits, *, #, +; at most 32)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding() {
        assert_eq!(percent_decode("a%20b+c", true).as_deref(), Some("a b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%F0%9F%98%80", false).as_deref(), Some("\u{1F600}"));
        for bad in ["%", "%4", "%zz", "%FF", "%C3%28", "a%g1"] {
            assert_eq!(percent_decode(bad, true), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_accepted_exactly() {
        let secrets = Secrets {
            admin_token: Some("admin-0123456789abcdef".into()),
            tenant_tokens: HashMap::from([("acme".into(), "acme-0123456789abcdef".into()), ("blank".into(), String::new())]),
            ..Default::default()
        };
        let tokens = Tokens::new(&secrets);
        assert_eq!(tokens.principal("admin-0123456789abcdef"), Some(Principal::Admin));
        assert_eq!(tokens.principal("acme-0123456789abcdef"), Some(Principal::Tenant("acme".into())));
        // Same length, last character wrong; shorter; longer; a prefix; empty (which an empty
        // configured token must not match).
        for wrong in ["acme-0123456789abcdeg", "acme-0123", "acme-0123456789abcdef0", "acme-0123456789abcde", "", "admin-0123456789abcdeF"] {
            assert_eq!(tokens.principal(wrong), None, "{wrong:?}");
        }
    }
}
