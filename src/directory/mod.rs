//! Finding the extension by name (the patent's optional step S1): `GET /v1/directory/{pbx}`
//! matches a typed name against the PBX's directory, so that a user who does not know their
//! extension number can pick it.
//!
//! A PBX's directory merges up to three sources, by extension, in a fixed precedence: the
//! `names` of its `[[pbx]]` table (what the operator wrote wins), then the `directory_csv` file,
//! then the LDAP directory (`ldap_url`). It never lists an extension outside the PBX's
//! `extensions` ranges, whatever a source says: the directory only helps to find a number that
//! an association could be asked for.
//!
//! The files: [`matcher`] folds, scores and ranks (sans-IO); [`csv`] reads the file's rows
//! (sans-IO); [`ldap`] fetches the LDAP entries. This one holds the entries of each source with
//! their state (what `GET /v1/pbx` shows), the merge, and the thin tokio shell: one task per
//! CSV file that re-reads it when its size or modification time changes, one per LDAP source
//! that refreshes it every `ldap_refresh`. A source that fails keeps serving its last good copy,
//! and says so in its state.
//!
//! Bounds: at most [`MAX_ENTRIES`] entries per source, names of at most [`MAX_NAME_CHARS`]
//! characters, queries of at most [`matcher::MAX_QUERY_CHARS`] characters and
//! [`matcher::MAX_QUERY_WORDS`] words, [`matcher::MAX_RESULTS`] results.

pub mod csv;
pub mod ldap;
pub mod matcher;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use crate::association::Millis;
use crate::clock::now_ms;
use crate::config::{parse_directory, Config, ConfigError, MAX_DIRECTORY};
use matcher::{Folded, Indexed, Match};

/// The most entries one source may give (the most numbers a PBX's `extensions` may hold).
pub const MAX_ENTRIES: usize = MAX_DIRECTORY;
/// The longest name kept, in characters (the API's `display_name` limit).
pub const MAX_NAME_CHARS: usize = 128;
/// How often a `directory_csv` file's size and modification time are looked at.
pub const CSV_POLL: Duration = Duration::from_secs(1);
/// Problems of one read written to the log; the rest are counted only.
const LOGGED_PROBLEMS: usize = 5;

/// One name of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub extension: String,
    pub name: String,
}

/// What one read of a source gave: its entries, and the rows or entries skipped, with the first
/// few reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub entries: Vec<Entry>,
    pub skipped: usize,
    /// At most [`LOGGED_PROBLEMS`] of the reasons.
    pub problems: Vec<String>,
}

impl Loaded {
    fn skip(&mut self, why: String) {
        self.skipped += 1;
        if self.problems.len() < LOGGED_PROBLEMS {
            self.problems.push(why);
        }
    }
}

/// A dial string a directory may list: 1 to 32 digits, `*` or `#`.
pub(crate) fn is_dial_string(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

/// A name as a source gave it, trimmed, if the API would take it as a `display_name` (no
/// control, formatting or pictograph characters, at most [`MAX_NAME_CHARS`]): names are shown
/// to people and read aloud, and a right-to-left override in a directory must not reorder what
/// a user reads.
pub(crate) fn clean_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    crate::text::is_display_name(name, MAX_NAME_CHARS).then(|| name.to_owned())
}

/// Where a source's names come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The `names` of the `[[pbx]]` table.
    Config,
    /// The `directory_csv` file.
    Csv,
    /// The LDAP directory of `ldap_url`.
    Ldap,
}

/// One source's state, as `GET /v1/pbx` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SourceStatus {
    pub kind: SourceKind,
    /// The last read or refresh succeeded. When it did not, the last good copy is served.
    pub ok: bool,
    /// Entries of the copy served (before the `extensions` ranges are applied).
    pub entries: usize,
    /// Rows or entries of that copy that were skipped (malformed, no usable name, a number
    /// `ldap_extension_regex` does not match).
    pub skipped: usize,
    /// When the copy served was read (ms since the epoch); `null` before the first success.
    #[schema(required = true)]
    pub last_refresh: Option<Millis>,
    /// Why the last read or refresh failed; `null` when it succeeded.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// A PBX's directory state: entries listed (merged, inside the `extensions` ranges) and its
/// sources in precedence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DirectoryStatus {
    pub entries: usize,
    pub sources: Vec<SourceStatus>,
}

/// One PBX's directory: its sources and their merge.
pub struct PbxDirectory {
    tenant: Option<String>,
    ranges: HashSet<String>,
    /// In precedence order (config, CSV, LDAP): each source's state and the copy it serves. One
    /// lock, held while the merge is rebuilt, so that two sources refreshed at once cannot leave
    /// an older merge in place.
    sources: Mutex<Vec<(SourceStatus, Arc<Vec<Entry>>)>>,
    merged: RwLock<Arc<Vec<Indexed>>>,
}

impl PbxDirectory {
    fn new(tenant: Option<String>, ranges: HashSet<String>, kinds: &[SourceKind]) -> PbxDirectory {
        let sources = kinds.iter().map(|&kind| (SourceStatus { kind, ok: false, entries: 0, skipped: 0, last_refresh: None, error: None }, Arc::new(Vec::new()))).collect();
        PbxDirectory { tenant, ranges, sources: Mutex::new(sources), merged: RwLock::default() }
    }

    /// The tenant whose accounts may search it (`None`: the admin only).
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The best matches of `query` (folded), best first.
    pub fn search(&self, query: &Folded) -> Vec<Match> {
        let merged = self.merged.read().map(|m| m.clone()).unwrap_or_default();
        matcher::search(merged.iter(), query)
    }

    /// What `GET /v1/pbx` shows.
    pub fn status(&self) -> DirectoryStatus {
        let entries = self.merged.read().map(|m| m.len()).unwrap_or_default();
        let sources = self.sources.lock().map(|s| s.iter().map(|(st, _)| st.clone()).collect()).unwrap_or_default();
        DirectoryStatus { entries, sources }
    }

    /// A successful read of source `kind`: its copy is replaced and the merge rebuilt.
    pub(crate) fn loaded(&self, kind: SourceKind, l: Loaded) {
        let Ok(mut sources) = self.sources.lock() else { return };
        if let Some(s) = sources.iter_mut().find(|s| s.0.kind == kind) {
            s.0 = SourceStatus { kind, ok: true, entries: l.entries.len(), skipped: l.skipped, last_refresh: Some(now_ms()), error: None };
            s.1 = Arc::new(l.entries);
        }
        // For each extension inside the ranges, the name of the first source that has one.
        let mut seen = HashSet::new();
        let mut merged = Vec::new();
        for e in sources.iter().flat_map(|s| s.1.iter()) {
            if self.ranges.contains(&e.extension) && seen.insert(e.extension.as_str()) {
                merged.push(Indexed::new(e.extension.clone(), e.name.clone()));
            }
        }
        if let Ok(mut m) = self.merged.write() {
            *m = Arc::new(merged);
        }
    }

    /// A failed read of source `kind`: its last good copy stays, its state says why.
    pub(crate) fn failed(&self, kind: SourceKind, why: String) {
        let Ok(mut sources) = self.sources.lock() else { return };
        if let Some(s) = sources.iter_mut().find(|s| s.0.kind == kind) {
            s.0.ok = false;
            s.0.error = Some(why);
        }
    }
}

/// Every PBX's directory, by PBX id, with the tasks that keep the CSV and LDAP sources fresh.
/// Cheap to clone; [`Directories::reload`] replaces the set in place (the tasks of the old one
/// stop).
#[derive(Clone, Default)]
pub struct Directories {
    set: Arc<RwLock<Arc<Set>>>,
}

#[derive(Default)]
struct Set {
    pbx: HashMap<String, Arc<PbxDirectory>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Set {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a PBX's directory is built from: its sources' settings, read from its `[[pbx]]` table
/// by [`crate::config::PbxConfig::directory_settings`].
#[derive(Debug, Clone, Default)]
pub struct DirectorySettings {
    pub names: Vec<Entry>,
    pub csv: Option<PathBuf>,
    pub ldap: Option<ldap::LdapSettings>,
}

impl Directories {
    /// Build every PBX's directory from `config` and start its refresh tasks (within a tokio
    /// runtime). The one call a configuration reload makes too ([`Directories::reload`]).
    ///
    /// # Errors
    /// An `extensions` list that does not parse, an LDAP password that is missing, an `ldap_ca`
    /// that cannot be read (the error names the key).
    pub fn start(config: &Config) -> Result<Directories, ConfigError> {
        Ok(Directories { set: Arc::new(RwLock::new(Arc::new(build(config)?))) })
    }

    /// Replace every directory with those of `config` (SIGHUP): the old tasks stop, the new
    /// ones read their sources at once. On error the directories in use are kept.
    ///
    /// # Errors
    /// As [`Directories::start`].
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let set = Arc::new(build(config)?);
        if let Ok(mut s) = self.set.write() {
            *s = set;
        }
        Ok(())
    }

    /// The directory of PBX `id`.
    pub fn get(&self, id: &str) -> Option<Arc<PbxDirectory>> {
        self.set.read().ok().and_then(|s| s.pbx.get(id).cloned())
    }
}

fn build(config: &Config) -> Result<Set, ConfigError> {
    let mut set = Set::default();
    for p in &config.pbx {
        let settings = p.directory_settings()?;
        let ranges: HashSet<String> = parse_directory(&p.extensions.join(",")).map_err(|e| p.invalid("extensions", e.to_string()))?.into_iter().collect();
        let mut kinds = Vec::new();
        if !settings.names.is_empty() {
            kinds.push(SourceKind::Config);
        }
        if settings.csv.is_some() {
            kinds.push(SourceKind::Csv);
        }
        if settings.ldap.is_some() {
            kinds.push(SourceKind::Ldap);
        }
        let dir = Arc::new(PbxDirectory::new(p.tenant.clone(), ranges, &kinds));
        if !settings.names.is_empty() {
            dir.loaded(SourceKind::Config, Loaded { entries: settings.names, ..Default::default() });
        }
        if let Some(path) = settings.csv {
            set.tasks.push(tokio::spawn(watch_csv(p.id.clone(), path, dir.clone())).abort_handle());
        }
        if let Some(l) = settings.ldap {
            set.tasks.push(tokio::spawn(ldap::refresh(p.id.clone(), l, dir.clone())).abort_handle());
        }
        set.pbx.insert(p.id.clone(), dir);
    }
    Ok(set)
}

/// Re-read the CSV file whenever its size or modification time changes (looked at every
/// [`CSV_POLL`]). A file that cannot be read or is refused leaves the last good copy in use.
async fn watch_csv(pbx: String, path: PathBuf, dir: Arc<PbxDirectory>) {
    let mut seen: Option<(u64, Option<std::time::SystemTime>)> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(CSV_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stamp = std::fs::metadata(&path).map(|m| (m.len(), m.modified().ok()));
        let result = match stamp {
            Ok(s) if seen == Some(s) => continue,
            Ok(s) => {
                seen = Some(s);
                let p = path.clone();
                tokio::task::spawn_blocking(move || read_csv(&p, s.0)).await.unwrap_or_else(|e| Err(format!("reading stopped: {e}")))
            }
            Err(e) => {
                seen = None;
                Err(format!("cannot read {}: {e}", path.display()))
            }
        };
        match result {
            Ok(l) => {
                if l.skipped > 0 {
                    tracing::warn!(pbx, file = %path.display(), skipped = l.skipped, first = ?l.problems, "directory file: rows skipped");
                }
                tracing::info!(pbx, file = %path.display(), entries = l.entries.len(), "directory file read");
                last_error = None;
                dir.loaded(SourceKind::Csv, l);
            }
            Err(why) => {
                if last_error.as_ref() != Some(&why) {
                    tracing::error!(pbx, file = %path.display(), error = %why, "directory file refused: the last good copy stays in use");
                }
                last_error = Some(why.clone());
                dir.failed(SourceKind::Csv, why);
            }
        }
    }
}

/// Read and parse the file, without reading more than [`csv::MAX_CSV_BYTES`] of it (it may
/// have grown since `len` was seen).
fn read_csv(path: &std::path::Path, len: u64) -> Result<Loaded, String> {
    use std::io::Read;
    if len > csv::MAX_CSV_BYTES {
        return Err(csv::CsvError::TooBig(len).to_string());
    }
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    file.take(csv::MAX_CSV_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    csv::parse(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_precedence_and_the_ranges() {
        let ranges: HashSet<String> = ["2001", "2002", "2003"].into_iter().map(String::from).collect();
        let dir = PbxDirectory::new(None, ranges, &[SourceKind::Config, SourceKind::Csv, SourceKind::Ldap]);
        let e = |x: &str, n: &str| Entry { extension: x.into(), name: n.into() };
        dir.loaded(SourceKind::Ldap, Loaded { entries: vec![e("2001", "LDAP One"), e("2003", "LDAP Three"), e("9999", "Outside")], ..Default::default() });
        dir.loaded(SourceKind::Csv, Loaded { entries: vec![e("2001", "CSV One"), e("2002", "CSV Two")], ..Default::default() });
        dir.loaded(SourceKind::Config, Loaded { entries: vec![e("2002", "Config Two")], ..Default::default() });
        let all = |q: &str| dir.search(&matcher::fold(q, 8)).into_iter().map(|m| (m.extension, m.name)).collect::<Vec<_>>();
        assert_eq!(all("one"), [("2001".into(), "CSV One".into())]);
        assert_eq!(all("two"), [("2002".into(), "Config Two".into())]);
        assert_eq!(all("three"), [("2003".into(), "LDAP Three".into())]);
        assert!(all("outside").is_empty());
        assert_eq!(dir.status().entries, 3);
        dir.failed(SourceKind::Ldap, "down".into());
        let ldap = dir.status().sources[2].clone();
        assert_eq!((ldap.ok, ldap.entries, ldap.error.as_deref()), (false, 3, Some("down")));
        assert_eq!(all("three").len(), 1, "the last good copy is served");
    }
}
