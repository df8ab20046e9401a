//! The spoken languages: `[prompts."<language>"]` (prompt texts by id, over the shipped English
//! and French, or a language of its own), `[[pbx]] language` (BCP 47, `en-US` by default; a
//! shipped or configured language) and `fastagi_prompts` (one table of files for all languages,
//! and tables per language).

use std::collections::HashMap;

use serde::Deserialize;

use super::{Config, ConfigError};
use crate::ivr::prompts::{canonical_tag, ids, Prompts, DEFAULT_LANGUAGE};

/// A value of `fastagi_prompts`: a prompt id's file for every language (`enter_code =
/// "cstagate/enter-code"`), or a language's own files (`"fr-FR" = { enter_code = "..." }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PromptFiles {
    File(String),
    Language(HashMap<String, String>),
}

/// `fastagi_prompts` read: files for every language, and files per language (keyed by the
/// catalogue's spelling of the language).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastAgiFiles {
    pub all: HashMap<String, String>,
    pub by_language: HashMap<String, HashMap<String, String>>,
}

impl Config {
    /// The prompt catalogue: the shipped languages with `[prompts]`.
    ///
    /// # Errors
    /// A bad language tag, an unknown prompt id, a new language without every id, a bad text.
    pub fn prompts(&self) -> Result<Prompts, ConfigError> {
        Prompts::configured(&self.prompts).map_err(ConfigError::Prompts)
    }

    /// The languages' checks: `[prompts]`, each `[[pbx]] language`, `fastagi_prompts`.
    pub(super) fn validate_languages(&self) -> Result<(), ConfigError> {
        let prompts = self.prompts()?;
        for p in &self.pbx {
            pbx_language(p, &prompts)?;
        }
        self.fastagi_files(&prompts)?;
        self.twiml_voices(&prompts)?;
        Ok(())
    }

    /// `twiml_voices` keyed by the catalogue's spelling of each language, as replies name it.
    ///
    /// # Errors
    /// A key that is not a language of the gateway (its voice would never be used).
    pub fn twiml_voices(&self, prompts: &Prompts) -> Result<HashMap<String, String>, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid { at: "[gateway]".into(), key: "twiml_voices", why };
        self.gateway
            .twiml_voices
            .iter()
            .map(|(tag, voice)| match prompts.language(tag) {
                Some(l) => Ok((l.to_owned(), voice.clone())),
                None => Err(invalid(format!("`{tag}` is not a language of the gateway (shipped: en-US, fr-FR; or one of [prompts])"))),
            })
            .collect()
    }

    /// `fastagi_prompts`, checked against the catalogue's prompt ids and languages.
    ///
    /// # Errors
    /// A key that is neither a prompt id (with a file) nor a known language (with a table of
    /// files by prompt id), or a language's table with an unknown prompt id.
    pub fn fastagi_files(&self, prompts: &Prompts) -> Result<FastAgiFiles, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid { at: "[gateway]".into(), key: "fastagi_prompts", why };
        let known = |id: &str| ids().any(|i| i == id);
        let mut out = FastAgiFiles::default();
        for (key, value) in &self.gateway.fastagi_prompts {
            match value {
                PromptFiles::File(file) if known(key) => {
                    out.all.insert(key.clone(), file.clone());
                }
                PromptFiles::File(_) => return Err(invalid(format!("`{key}` is not a prompt id (a language's files are a table: `\"fr-FR\" = {{ enter_code = \"...\" }}`)"))),
                PromptFiles::Language(files) => {
                    let language = prompts.language(key).ok_or_else(|| invalid(format!("`{key}` is not a language of the gateway (shipped: en-US, fr-FR; or one of [prompts])")))?;
                    if let Some(bad) = files.keys().find(|id| !known(id)) {
                        return Err(invalid(format!("`{key}`: `{bad}` is not a prompt id")));
                    }
                    out.by_language.insert(language.to_owned(), files.clone());
                }
            }
        }
        Ok(out)
    }
}

/// The language of a PBX as the catalogue spells it (`en-US` when it names none).
pub(super) fn pbx_language(p: &super::PbxConfig, prompts: &Prompts) -> Result<String, ConfigError> {
    let Some(tag) = &p.language else { return Ok(DEFAULT_LANGUAGE.to_owned()) };
    if canonical_tag(tag).is_none() {
        return Err(p.invalid("language", format!("`{tag}` is not a BCP 47 language tag (a primary subtag of 2 or 3 letters, then subtags of 1 to 8 letters or digits joined by '-', e.g. fr-FR)")));
    }
    prompts.language(tag).map(str::to_owned).ok_or_else(|| p.invalid("language", format!("names `{tag}`, which is neither shipped (en-US, fr-FR) nor given by a [prompts.\"{tag}\"] table")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pbx: &str, rest: &str) -> String {
        format!("[[tenant]]\nid = \"t\"\ntoken_env = \"T\"\n[[pbx]]\nid = \"p\"\naddress = \"10.0.0.1\"\ndialect = \"oxe\"\ntenant = \"t\"\nextensions = [\"2000\"]\nivr_number = \"0800100200\"\n{pbx}\n{rest}")
    }

    #[test]
    fn a_pbx_speaks_a_shipped_or_configured_language_english_by_default() {
        let c = Config::parse(&with("", "")).unwrap();
        assert_eq!(c.policies().unwrap()["p"].language, "en-US", "the default, as before languages");
        let c = Config::parse(&with("language = \"fr-fr\"", "")).unwrap();
        let pol = &c.policies().unwrap()["p"];
        assert_eq!(pol.language, "fr-FR", "tags ignore case; the catalogue's spelling is kept");
        assert_eq!(pol.prompts.render(&pol.language, "goodbye", &[]), "Au revoir.");
        let mut de = String::from("[prompts.\"de-DE\"]\n");
        for (id, text) in crate::ivr::prompts::EN_US {
            de.push_str(&format!("{id} = \"{text}\"\n"));
        }
        let c = Config::parse(&with("language = \"de-DE\"", &de)).unwrap();
        assert_eq!(c.policies().unwrap()["p"].language, "de-DE");
    }

    #[test]
    fn language_errors_name_the_language_and_the_key_or_id() {
        for (pbx, rest, want) in [
            ("language = \"french\"", "", "pbx `p`: `language` `french` is not a BCP 47"),
            ("language = \"fr_FR\"", "", "`language` `fr_FR` is not a BCP 47"),
            ("language = \"de-DE\"", "", "`language` names `de-DE`, which is neither shipped"),
            ("", "[prompts.\"de-DE\"]\ngoodbye = \"Auf Wiedersehen.\"\n", "[prompts.\"de-DE\"]: `enter_context` is missing"),
            ("", "[prompts.\"fr-FR\"]\nwelcome = \"Bonjour\"\n", "[prompts.\"fr-FR\"]: `welcome` is not a prompt id"),
            ("", "[prompts.\"fr-FR\"]\nbound = \"Relié au compte {compte}.\"\n", "[prompts.\"fr-FR\"]: `bound` has the placeholder {compte}, which this prompt does not have"),
            ("", "[prompts.\"français\"]\ngoodbye = \"Au revoir\"\n", "[prompts.\"français\"]: `français` is not a BCP 47"),
            ("", "[gateway]\nfastagi_prompts = { welcome = \"x\" }\n", "`fastagi_prompts` `welcome` is not a prompt id"),
            ("", "[gateway]\ntwiml_voices = { \"de-DE\" = \"Polly.Marlene\" }\n", "`twiml_voices` `de-DE` is not a language"),
            ("", "[gateway]\nfastagi_prompts = { \"de-DE\" = { enter_code = \"x\" } }\n", "`fastagi_prompts` `de-DE` is not a language"),
            ("", "[gateway]\nfastagi_prompts = { \"fr-FR\" = { welcome = \"x\" } }\n", "`fastagi_prompts` `fr-FR`: `welcome` is not a prompt id"),
        ] {
            let e = Config::parse(&with(pbx, rest)).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(want), "{pbx} {rest}: {e}");
        }
    }

    #[test]
    fn fastagi_prompts_take_files_for_all_languages_and_per_language() {
        let c = Config::parse(&with("", "[gateway]\nfastagi_prompts = { enter_code = \"all/code\", \"fr-fr\" = { enter_code = \"fr/code\" } }\n")).unwrap();
        let f = c.fastagi_files(&c.prompts().unwrap()).unwrap();
        assert_eq!(f.all["enter_code"], "all/code");
        assert_eq!(f.by_language["fr-FR"]["enter_code"], "fr/code", "keyed by the catalogue's spelling, as replies name it");
        let c = Config::parse(&with("", "[gateway]\ntwiml_voices = { \"fr-fr\" = \"Polly.Lea\" }\n")).unwrap();
        assert_eq!(c.twiml_voices(&c.prompts().unwrap()).unwrap()["fr-FR"], "Polly.Lea");
    }
}
