//! The LDAP source: a simple bind, a paged subtree search under `ldap_base` with `ldap_filter`,
//! the name and number attributes of each entry, the extension taken out of the number by
//! `ldap_extension_regex`. Refreshed every `ldap_refresh`; a refresh that fails (server down,
//! bind refused, timeout) leaves the last good copy in use and says why in the source's state.
//!
//! `ldaps://` and `ldap_starttls` use the project's rustls client (the ring provider, TLS 1.2
//! and 1.3, `ldap_ca` or the public roots). Plain `ldap://` is taken only to a loopback address
//! unless `ldap_allow_plain` says the network is the operator's (the configuration checks it):
//! the bind password and the staff list would otherwise cross the network in clear.

use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::PagedResults;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use regex::Regex;

use super::{clean_name, is_dial_string, Entry, Loaded, PbxDirectory, SourceKind, MAX_ENTRIES};
use crate::codec::values::Secret;

/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one refresh (bind, every page of the search) may take in all.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(120);

/// An LDAP source, its secrets read and its TLS client built
/// ([`crate::config::PbxConfig::directory_settings`]).
#[derive(Clone)]
pub struct LdapSettings {
    pub url: String,
    pub base: String,
    pub filter: String,
    /// The bind DN and its password; anonymous without.
    pub bind: Option<(String, Secret)>,
    pub name_attr: String,
    pub number_attr: String,
    /// Takes the extension out of a number: its first capture group, or the whole match.
    pub extension: Regex,
    pub refresh: Duration,
    pub page_size: i32,
    /// For `ldaps://` and StartTLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub starttls: bool,
}

// No derive: the password must never be printed (Secret's Debug hides it; the TLS client's
// Debug is long and says nothing).
impl std::fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("filter", &self.filter)
            .field("bind_dn", &self.bind.as_ref().map(|b| &b.0))
            .field("refresh", &self.refresh)
            .field("starttls", &self.starttls)
            .finish_non_exhaustive()
    }
}

/// The extension in `number` (its spaces, dots, dashes, slashes and parentheses removed first:
/// `+33 (0)1 44-00-20-05` is read `+330144002005`), by `re`: its first capture group, or the
/// whole match; `None` when `re` does not match or what it takes is not a dial string.
pub fn extension_of(re: &Regex, number: &str) -> Option<String> {
    let compact: String = number.chars().filter(|c| !matches!(c, ' ' | '.' | '-' | '/' | '(' | ')' | '\u{a0}')).collect();
    let caps = re.captures(&compact)?;
    let m = caps.get(1).or_else(|| caps.get(0))?;
    is_dial_string(m.as_str()).then(|| m.as_str().to_owned())
}

/// Refresh `dir`'s LDAP copy now and every `s.refresh`, until aborted.
pub(super) async fn refresh(pbx: String, s: LdapSettings, dir: Arc<PbxDirectory>) {
    let mut failing: Option<String> = None;
    loop {
        let result = match tokio::time::timeout(REFRESH_TIMEOUT, fetch(&s)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete answer within {REFRESH_TIMEOUT:?}")),
        };
        match result {
            Ok(l) => {
                if l.skipped > 0 {
                    tracing::info!(pbx, skipped = l.skipped, first = ?l.problems, "LDAP directory: entries skipped");
                }
                if failing.take().is_some() {
                    tracing::info!(pbx, url = %s.url, "LDAP directory reachable again");
                }
                tracing::debug!(pbx, entries = l.entries.len(), "LDAP directory refreshed");
                dir.loaded(SourceKind::Ldap, l);
            }
            Err(why) => {
                if failing.as_ref() != Some(&why) {
                    tracing::warn!(pbx, url = %s.url, error = %why, "LDAP directory refresh failed: the last good copy stays in use");
                }
                failing = Some(why.clone());
                dir.failed(SourceKind::Ldap, why);
            }
        }
        tokio::time::sleep(s.refresh).await;
    }
}

/// One refresh: connect, bind, page through the search.
///
/// # Errors
/// What went wrong, in words, never with the password (ldap3's errors carry the server's result
/// code and message, not the request).
pub async fn fetch(s: &LdapSettings) -> Result<Loaded, String> {
    let mut settings = LdapConnSettings::new().set_conn_timeout(CONNECT_TIMEOUT).set_starttls(s.starttls);
    if let Some(tls) = &s.tls {
        settings = settings.set_config(tls.clone());
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &s.url).await.map_err(|e| format!("cannot connect: {e}"))?;
    ldap3::drive!(conn);
    if let Some((dn, password)) = &s.bind {
        let password = String::from_utf8_lossy(password.expose());
        ldap.simple_bind(dn, &password).await.and_then(|r| r.success()).map_err(|e| format!("bind as {dn} refused: {e}"))?;
    }
    let attrs = vec![s.name_attr.as_str(), s.number_attr.as_str()];
    let mut stream = ldap.streaming_search_with(PagedResults::new(s.page_size), &s.base, Scope::Subtree, &s.filter, attrs).await.map_err(|e| format!("search failed: {e}"))?;
    let mut out = Loaded::default();
    while let Some(entry) = stream.next().await.map_err(|e| format!("search failed: {e}"))? {
        let entry = SearchEntry::construct(entry);
        add(&mut out, s, &entry);
        if out.entries.len() > MAX_ENTRIES {
            let _ = ldap.unbind().await;
            return Err(format!("more than {MAX_ENTRIES} entries: narrow ldap_base or ldap_filter"));
        }
    }
    stream.finish().await.success().map_err(|e| format!("search failed: {e}"))?;
    let _ = ldap.unbind().await;
    Ok(out)
}

/// The entries of one LDAP entry: its name with each of its numbers whose extension
/// `ldap_extension_regex` finds. Attribute names are matched without regard to case, as LDAP
/// does.
fn add(out: &mut Loaded, s: &LdapSettings, entry: &SearchEntry) {
    let values = |attr: &str| entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).map(|(_, v)| v.as_slice()).unwrap_or_default();
    let Some(name) = values(&s.name_attr).iter().find_map(|n| clean_name(n)) else {
        out.skip(format!("{}: no usable {}", entry.dn, s.name_attr));
        return;
    };
    let mut any = false;
    for number in values(&s.number_attr) {
        if let Some(extension) = extension_of(&s.extension, number) {
            any = true;
            out.entries.push(Entry { extension, name: name.clone() });
        }
    }
    if !any {
        out.skip(format!("{}: no {} that ldap_extension_regex matches", entry.dn, s.number_attr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_out_of_numbers() {
        let last4 = Regex::new(r"(\d{4})$").unwrap();
        assert_eq!(extension_of(&last4, "+33 (0)1 44-00-20-05").as_deref(), Some("2005"));
        assert_eq!(extension_of(&last4, "x12"), None);
        let whole = Regex::new(r"^[0-9*#]+$").unwrap();
        assert_eq!(extension_of(&whole, "2005").as_deref(), Some("2005"));
        assert_eq!(extension_of(&whole, "+332005"), None);
        // What the regex takes must still be a dial string.
        assert_eq!(extension_of(&Regex::new(r"ext\s*(\w+)").unwrap(), "ext abc"), None);
    }
}
