//! The IVR's words, one table per spoken language. The dialogue (the association engine) picks
//! a prompt id and the values it needs (the account, the tenant...); the text is the table's, in
//! the language of the call's PBX (`[[pbx]] language`, BCP 47, `en-US` by default).
//!
//! English (`en-US`) and French (`fr-FR`) are shipped, each with every prompt id. The
//! configuration's `[prompts."<language>"]` tables override texts by id, or add a language (then
//! with every id). Each text is checked when the configuration is loaded ([`Prompts::configured`]):
//! a known id, at most [`MAX_TEXT`] characters, only the placeholders its prompt has, and those it
//! must say (the confirmation names the account, its tenant and the keys to press: an operator's
//! text cannot drop the anti-phishing part).
//!
//! Placeholders are `{name}`; values are put in once, never read again as a template (an account
//! called `{tenant}` is said as written).

use std::collections::{BTreeMap, HashMap};

/// The language of PBXs that name none, and of calls not yet tied to a PBX when the PBXs do not
/// share one.
pub const DEFAULT_LANGUAGE: &str = "en-US";
/// Longest text of a prompt, in characters (the longest shipped one is under 200).
pub const MAX_TEXT: usize = 500;
/// Longest language tag accepted (BCP 47's own advice for buffers is 35).
pub const MAX_TAG: usize = 35;
/// Languages a configuration may define at most.
pub const MAX_LANGUAGES: usize = 64;

/// A prompt id of the dialogue: the placeholders its text may hold, and those it must hold.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub id: &'static str,
    pub may: &'static [&'static str],
    pub must: &'static [&'static str],
}

const CONFIRM: &[&str] = &["account", "tenant", "named", "confirm_key", "refuse_key"];

/// Every prompt id the dialogue says (`src/association/ivr.rs`). `account_name` is not said
/// alone: it is `{named}` in `confirm_account` when the tenant gave the account a display name.
pub const SPECS: &[Spec] = &[
    Spec { id: "enter_context", may: &[], must: &[] },
    Spec { id: "unknown_context", may: &[], must: &[] },
    Spec { id: "unknown_context_bye", may: &[], must: &[] },
    Spec { id: "busy", may: &[], must: &[] },
    Spec { id: "not_linked", may: &[], must: &[] },
    Spec { id: "no_longer_valid", may: &[], must: &[] },
    Spec { id: "goodbye", may: &[], must: &[] },
    Spec { id: "confirm_account", may: CONFIRM, must: CONFIRM },
    Spec { id: "account_name", may: &["tenant", "name"], must: &["tenant", "name"] },
    Spec { id: "enter_code", may: &[], must: &[] },
    Spec { id: "refused", may: &["account", "tenant"], must: &[] },
    Spec { id: "code_expired", may: &[], must: &[] },
    Spec { id: "bound", may: &["account", "tenant"], must: &[] },
    Spec { id: "locked_out", may: &[], must: &[] },
    Spec { id: "attempts_exhausted", may: &[], must: &[] },
    Spec { id: "wrong_code_bye", may: &[], must: &[] },
    Spec { id: "wrong_code", may: &[], must: &[] },
];

/// `en-US`, shipped.
pub const EN_US: &[(&str, &str)] = &[
    ("enter_context", "Please enter the number shown in your app, then the hash key."),
    ("unknown_context", "This number is not known. Please enter the number shown in your app, then the hash key."),
    ("unknown_context_bye", "This number is not known. Goodbye."),
    ("busy", "The service is busy. Please try again later. Goodbye."),
    ("not_linked", "Nothing was linked. Goodbye."),
    ("no_longer_valid", "This request is no longer valid. Goodbye."),
    ("goodbye", "Goodbye."),
    ("confirm_account", "The account {account} of {tenant} asks to link this phone.{named} If you asked for this, press {confirm_key}. If you did not, press {refuse_key}."),
    ("account_name", "{tenant} gives its name as: {name}."),
    ("enter_code", "Please enter the code shown in your app, then the hash key."),
    ("refused", "Thank you. Nothing was linked, and this account may not ask for this phone again for now. Goodbye."),
    ("code_expired", "This code has expired. Please request a new code in the app. Goodbye."),
    ("bound", "Thank you. This phone is now linked to the account {account}. Goodbye."),
    ("locked_out", "Too many wrong codes. This phone cannot be linked for now. Goodbye."),
    ("attempts_exhausted", "Too many wrong codes. Please request a new code in the app. Goodbye."),
    ("wrong_code_bye", "The code is not correct. You can try again from the app. Goodbye."),
    ("wrong_code", "The code is not correct. Please try again, then the hash key."),
];

/// `fr-FR`, shipped.
pub const FR_FR: &[(&str, &str)] = &[
    ("enter_context", "Veuillez saisir le numéro affiché dans votre application, puis la touche dièse."),
    ("unknown_context", "Ce numéro est inconnu. Veuillez saisir le numéro affiché dans votre application, puis la touche dièse."),
    ("unknown_context_bye", "Ce numéro est inconnu. Au revoir."),
    ("busy", "Le service est occupé. Veuillez réessayer plus tard. Au revoir."),
    ("not_linked", "Ce téléphone n'a pas été relié. Au revoir."),
    ("no_longer_valid", "Cette demande n'est plus valable. Au revoir."),
    ("goodbye", "Au revoir."),
    ("confirm_account", "Le compte {account} de {tenant} demande à relier ce téléphone.{named} Si vous êtes à l'origine de cette demande, appuyez sur {confirm_key}. Sinon, appuyez sur {refuse_key}."),
    ("account_name", "Selon {tenant}, il s'agit de : {name}."),
    ("enter_code", "Veuillez saisir le code affiché dans votre application, puis la touche dièse."),
    ("refused", "Merci. Ce téléphone n'a pas été relié, et ce compte ne pourra pas le redemander pour le moment. Au revoir."),
    ("code_expired", "Ce code a expiré. Veuillez demander un nouveau code dans l'application. Au revoir."),
    ("bound", "Merci. Ce téléphone est désormais relié au compte {account}. Au revoir."),
    ("locked_out", "Trop de codes erronés. Ce téléphone ne peut pas être relié pour le moment. Au revoir."),
    ("attempts_exhausted", "Trop de codes erronés. Veuillez demander un nouveau code dans l'application. Au revoir."),
    ("wrong_code_bye", "Le code est incorrect. Vous pourrez réessayer depuis l'application. Au revoir."),
    ("wrong_code", "Le code est incorrect. Veuillez le saisir de nouveau, puis la touche dièse."),
];

/// The shipped languages and their tables.
pub const SHIPPED: &[(&str, &[(&str, &str)])] = &[("en-US", EN_US), ("fr-FR", FR_FR)];

/// Why a `[prompts."<language>"]` table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("`{0}` is not a BCP 47 language tag (a primary subtag of 2 or 3 letters, then subtags of 1 to 8 letters or digits, joined by '-', {MAX_TAG} characters at most)")]
    BadTag(String),
    #[error("more than {MAX_LANGUAGES} languages")]
    TooMany,
    #[error("`{id}` is not a prompt id (the ids: {})", ids().collect::<Vec<_>>().join(", "))]
    UnknownId { language: String, id: String },
    #[error("`{id}` is missing: a language that is not shipped (en-US, fr-FR) must give every prompt id")]
    Missing { language: String, id: &'static str },
    #[error("is the language of another [prompts] table too (tags ignore case)")]
    Twice(String),
    #[error("`{id}` {why}")]
    Text { language: String, id: &'static str, why: String },
}

impl PromptError {
    /// The language whose table is at fault (the tag as written).
    pub fn language(&self) -> &str {
        match self {
            PromptError::BadTag(l) | PromptError::Twice(l) | PromptError::UnknownId { language: l, .. } | PromptError::Missing { language: l, .. } | PromptError::Text { language: l, .. } => l,
            PromptError::TooMany => "*",
        }
    }
}

/// The prompt ids, in the dialogue's order.
pub fn ids() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.id)
}

fn spec(id: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.id == id)
}

/// A BCP 47 tag, checked for form and written in the usual case (`fr-fr` → `fr-FR`, `zh-hant` →
/// `zh-Hant`): a primary subtag of 2 or 3 letters, then subtags of 1 to 8 letters or digits.
/// `None`: not such a tag. Tags are compared in this form (BCP 47 tags ignore case).
pub fn canonical_tag(tag: &str) -> Option<String> {
    if tag.is_empty() || tag.len() > MAX_TAG {
        return None;
    }
    let mut out = Vec::new();
    for (i, sub) in tag.split('-').enumerate() {
        let alpha = sub.bytes().all(|b| b.is_ascii_alphabetic());
        if sub.is_empty() || sub.len() > 8 || !sub.bytes().all(|b| b.is_ascii_alphanumeric()) || (i == 0 && !(alpha && (2..=3).contains(&sub.len()))) {
            return None;
        }
        out.push(match (i, sub.len()) {
            (1.., 2) if alpha => sub.to_ascii_uppercase(),
            (1.., 4) if alpha => sub[..1].to_ascii_uppercase() + &sub[1..].to_ascii_lowercase(),
            _ => sub.to_ascii_lowercase(),
        });
    }
    Some(out.join("-"))
}

/// One piece of a template: text as written, or a placeholder's name.
enum Piece<'a> {
    Text(&'a str),
    Slot(&'a str),
}

/// Split a template into text and `{name}` placeholders. `Err`: a brace that opens no
/// placeholder, or closes none.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        if rest[i..].starts_with('}') {
            return Err("has a `}` that closes no placeholder".into());
        }
        out.push(Piece::Text(&rest[..i]));
        let after = &rest[i + 1..];
        let end = after.find('}').ok_or("has a `{` that is not closed")?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(format!("has `{{{name}}}`, which is not a placeholder (`{{account}}`, lower-case letters and `_`)"));
        }
        out.push(Piece::Slot(name));
        rest = &after[end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Check one text of the prompt `spec`.
fn check(spec: &Spec, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("is empty".into());
    }
    if text.chars().count() > MAX_TEXT {
        return Err(format!("is longer than {MAX_TEXT} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("has a control character".into());
    }
    let slots: Vec<&str> = pieces(text)?.into_iter().filter_map(|p| if let Piece::Slot(s) = p { Some(s) } else { None }).collect();
    let has = |list: &[&str]| if list.is_empty() { "none".to_owned() } else { list.iter().map(|s| format!("{{{s}}}")).collect::<Vec<_>>().join(", ") };
    if let Some(bad) = slots.iter().find(|s| !spec.may.contains(s)) {
        return Err(format!("has the placeholder {{{bad}}}, which this prompt does not have (it has: {})", has(spec.may)));
    }
    if let Some(missing) = spec.must.iter().find(|m| !slots.contains(m)) {
        return Err(format!("must say {{{missing}}} (this prompt must say: {})", has(spec.must)));
    }
    Ok(())
}

/// The texts of every language known to the gateway: the shipped ones with the configuration's
/// overrides, and the languages it adds. Every table holds every prompt id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts {
    tables: BTreeMap<String, BTreeMap<&'static str, String>>,
}

impl Default for Prompts {
    fn default() -> Self {
        Prompts::shipped()
    }
}

impl Prompts {
    /// English and French as shipped.
    pub fn shipped() -> Prompts {
        let tables = SHIPPED
            .iter()
            .map(|(lang, table)| ((*lang).to_owned(), table.iter().filter_map(|(id, text)| Some((spec(id)?.id, (*text).to_owned()))).collect()))
            .collect();
        Prompts { tables }
    }

    /// The shipped catalogue, built once (for an engine without policies).
    pub fn shipped_ref() -> &'static Prompts {
        static SHIPPED_PROMPTS: std::sync::OnceLock<Prompts> = std::sync::OnceLock::new();
        SHIPPED_PROMPTS.get_or_init(Prompts::shipped)
    }

    /// The shipped languages with `overrides` (`[prompts."<language>"]`: text by prompt id).
    ///
    /// # Errors
    /// A tag that is not BCP 47, an unknown id, a new language without every id, or a text that
    /// is empty, too long, or has a placeholder its prompt does not have (or lacks one it must).
    pub fn configured(overrides: &HashMap<String, HashMap<String, String>>) -> Result<Prompts, PromptError> {
        let mut out = Prompts::shipped();
        if overrides.len() > MAX_LANGUAGES {
            return Err(PromptError::TooMany);
        }
        // Sorted: the same file always names the same fault first.
        let sorted: BTreeMap<&String, BTreeMap<&String, &String>> = overrides.iter().map(|(l, t)| (l, t.iter().collect())).collect();
        let mut seen = std::collections::BTreeSet::new();
        for (written, table) in sorted {
            let language = canonical_tag(written).ok_or_else(|| PromptError::BadTag(written.clone()))?;
            if !seen.insert(language.clone()) {
                return Err(PromptError::Twice(written.clone()));
            }
            let shipped = out.tables.contains_key(&language);
            let mut texts = out.tables.remove(&language).unwrap_or_default();
            for (id, text) in table {
                let spec = spec(id).ok_or_else(|| PromptError::UnknownId { language: written.clone(), id: id.clone() })?;
                check(spec, text).map_err(|why| PromptError::Text { language: written.clone(), id: spec.id, why })?;
                texts.insert(spec.id, text.clone());
            }
            if !shipped {
                if let Some(missing) = ids().find(|id| !texts.contains_key(id)) {
                    return Err(PromptError::Missing { language: written.clone(), id: missing });
                }
            }
            out.tables.insert(language, texts);
        }
        Ok(out)
    }

    /// The language as the catalogue spells it, if it has it (`fr-fr` → `fr-FR`).
    pub fn language(&self, tag: &str) -> Option<&str> {
        let tag = canonical_tag(tag)?;
        self.tables.get_key_value(&tag).map(|(k, _)| k.as_str())
    }

    /// The languages known, sorted.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// The text of `id` in `language` with `values` put in its placeholders (a placeholder
    /// without a value is said as nothing). A language the catalogue does not have is spoken as
    /// [`DEFAULT_LANGUAGE`] (the configuration refuses a PBX language it does not know, so this
    /// is for callers that pass a tag by hand).
    pub fn render(&self, language: &str, id: &str, values: &[(&str, &str)]) -> String {
        let table = self.tables.get(language).or_else(|| self.tables.get(DEFAULT_LANGUAGE));
        let Some(text) = table.and_then(|t| t.get(id)) else { return String::new() };
        // Checked at load; a shipped text that did not parse would be caught by the tests.
        let Ok(pieces) = pieces(text) else { return text.clone() };
        pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => *t,
                Piece::Slot(s) => values.iter().find(|(k, _)| k == s).map_or("", |(_, v)| v),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_language_has_exactly_the_dialogues_ids_and_valid_texts() {
        let want: Vec<&str> = ids().collect();
        for (lang, table) in SHIPPED {
            let mut got: Vec<&str> = table.iter().map(|(id, _)| *id).collect();
            assert_eq!(got.len(), want.len(), "{lang}: an id twice or missing");
            got.sort_unstable();
            let mut sorted = want.clone();
            sorted.sort_unstable();
            assert_eq!(got, sorted, "{lang} must have every prompt id, and only those");
            for (id, text) in *table {
                check(spec(id).unwrap(), text).unwrap_or_else(|why| panic!("{lang} {id} {why}"));
            }
            assert_eq!(canonical_tag(lang).as_deref(), Some(*lang));
        }
        let p = Prompts::shipped();
        assert_eq!(p.languages().collect::<Vec<_>>(), ["en-US", "fr-FR"]);
    }

    #[test]
    fn texts_are_rendered_once_with_their_values() {
        let p = Prompts::shipped();
        let named = p.render("fr-FR", "account_name", &[("tenant", "acme"), ("name", "Alice")]);
        assert_eq!(named, "Selon acme, il s'agit de : Alice.");
        let v = [("account", "{tenant}"), ("tenant", "acme"), ("named", ""), ("confirm_key", "1"), ("refuse_key", "9")];
        assert_eq!(p.render("en-US", "confirm_account", &v), "The account {tenant} of acme asks to link this phone. If you asked for this, press 1. If you did not, press 9.");
        assert_eq!(p.render("xx-YY", "goodbye", &[]), "Goodbye.", "an unknown language is the default");
        assert_eq!(p.render("fr-FR", "nope", &[]), "");
    }

    #[test]
    fn tags_are_checked_and_written_the_usual_way() {
        for (tag, canon) in [("fr-FR", "fr-FR"), ("fr-fr", "fr-FR"), ("EN", "en"), ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419"), ("de-CH-1996", "de-CH-1996"), ("yue-HK", "yue-HK")] {
            assert_eq!(canonical_tag(tag).as_deref(), Some(canon), "{tag}");
        }
        for bad in ["", "f", "fr_FR", "french", "fr-", "-fr", "fr--FR", "1f-FR", "fr-FRANCEXYZ", "fr-F R", "fr-Fé", &"a-".repeat(20)] {
            assert_eq!(canonical_tag(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn overrides_replace_texts_and_new_languages_need_every_id() {
        let over = |lang: &str, pairs: &[(&str, &str)]| HashMap::from([(lang.to_owned(), pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>())]);
        let p = Prompts::configured(&over("fr-fr", &[("goodbye", "À bientôt.")])).unwrap();
        assert_eq!((p.render("fr-FR", "goodbye", &[]), p.render("fr-FR", "busy", &[]).as_str()), ("À bientôt.".to_owned(), FR_FR[3].1));
        let all: Vec<(&str, &str)> = EN_US.to_vec();
        let p = Prompts::configured(&over("de-DE", &all)).unwrap();
        assert_eq!(p.language("de-de"), Some("de-DE"));
        let e = Prompts::configured(&over("de-DE", &all[1..])).unwrap_err();
        assert_eq!(e, PromptError::Missing { language: "de-DE".into(), id: "enter_context" });
        let e = Prompts::configured(&over("fr-FR", &[("welcome", "Bonjour")])).unwrap_err();
        assert!(matches!(&e, PromptError::UnknownId { id, .. } if id == "welcome"), "{e}");
        assert!(matches!(Prompts::configured(&over("fr_FR", &[])), Err(PromptError::BadTag(_))));
        let mut twice = over("fr-FR", &[]);
        twice.insert("fr-fr".into(), HashMap::new());
        assert!(matches!(Prompts::configured(&twice), Err(PromptError::Twice(_))));
        for (id, text, why) in [
            ("bound", "Relié au compte {acount}.", "{acount}, which this prompt does not have"),
            ("goodbye", "Au revoir {account}.", "{account}, which this prompt does not have"),
            ("confirm_account", "Appuyez sur {confirm_key}.", "must say {account}"),
            ("bound", "Relié {account", "not closed"),
            ("bound", "Relié }", "closes no placeholder"),
            ("bound", "{Account}", "not a placeholder"),
            ("goodbye", "  ", "empty"),
            ("goodbye", &"a".repeat(MAX_TEXT + 1), "longer than"),
        ] {
            let e = Prompts::configured(&over("fr-FR", &[(id, text)])).unwrap_err();
            assert!(matches!(&e, PromptError::Text { id: i, .. } if *i == id) && e.to_string().contains(why), "{id} {text}: {e}");
        }
    }
}
