//! Matching a typed name against directory names (sans-IO): folding, scoring, ranking.
//!
//! **Folding.** Names and queries are compared folded: lower case, accents stripped (canonical
//! decomposition, combining marks dropped), letters that do not decompose spelled out (`ß` →
//! `ss`, `æ` → `ae`, `ø` → `o`, `ł` → `l`, ...), and split into words at anything that is not a
//! letter or a digit (spaces, hyphens, apostrophes, dots). German writes `ü` as `ue` when it has
//! no umlaut at hand, so every text is folded two ways: *plain* (`Müller` → `muller`) and
//! *German* (`Müller` → `mueller`), and a query matches a name when one of its foldings matches
//! one of the name's. So `muller` and `mueller` both find `Müller`, and `Müller` finds `Mueller`.
//!
//! **Score** (0 to 100, higher first; the best of the foldings counts):
//! - **100** the query is the whole name (`alice martin` → `Alice Martin`);
//! - **90** every query word is a whole word of the name, in any order (`martin` → `Alice Martin`);
//! - **70** the query words begin the name's first words in order (`ali mar`, `al` → `Alice Martin`);
//! - **50** every query word begins a different word of the name (`mar` → `Alice Martin`).
//!
//! Anything else does not match. Equal scores are ranked by the plain-folded name, then the
//! extension: the order never depends on the order the sources gave.

use std::cmp::Ordering;

use unicode_normalization::char::{decompose_canonical, is_combining_mark};

/// The longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 64;
/// The most words of a query.
pub const MAX_QUERY_WORDS: usize = 8;
/// Words of a name that take part in matching; the rest are ignored (a name of more than 16
/// words is not a person's).
pub const MAX_NAME_WORDS: usize = 16;
/// The most matches one search returns.
pub const MAX_RESULTS: usize = 10;

/// The foldings of a text: its words folded plain and folded German (the same when the text has
/// no umlaut).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Folded {
    pub plain: Vec<String>,
    pub german: Vec<String>,
}

/// Fold `text` both ways (see the module's documentation), keeping at most `max_words` words.
pub fn fold(text: &str, max_words: usize) -> Folded {
    Folded { plain: words(text, false, max_words), german: words(text, true, max_words) }
}

fn words(text: &str, german: bool, max_words: usize) -> Vec<String> {
    let mut folded = String::with_capacity(text.len());
    for c in text.chars() {
        fold_char(c, german, &mut folded);
    }
    folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).take(max_words).map(str::to_owned).collect()
}

/// One character folded into `out`: lower case, without accents; German umlauts as `ae`, `oe`,
/// `ue` when `german`.
fn fold_char(c: char, german: bool, out: &mut String) {
    let spelled = match c {
        'ä' | 'Ä' if german => "ae",
        'ö' | 'Ö' if german => "oe",
        'ü' | 'Ü' if german => "ue",
        'ß' | 'ẞ' => "ss",
        'æ' | 'Æ' => "ae",
        'œ' | 'Œ' => "oe",
        'ø' | 'Ø' => "o",
        'đ' | 'Đ' | 'ð' | 'Ð' => "d",
        'ł' | 'Ł' => "l",
        'þ' | 'Þ' => "th",
        'ı' => "i",
        _ => "",
    };
    if !spelled.is_empty() {
        out.push_str(spelled);
        return;
    }
    decompose_canonical(c, |d| {
        if !is_combining_mark(d) {
            out.extend(d.to_lowercase());
        }
    });
}

/// How well `query` matches `name` (see the module's documentation), `None` when it does not.
pub fn score(query: &Folded, name: &Folded) -> Option<u8> {
    let mut best = None;
    for q in [&query.plain, &query.german] {
        for n in [&name.plain, &name.german] {
            best = best.max(score_words(q, n));
        }
    }
    best
}

fn score_words(query: &[String], name: &[String]) -> Option<u8> {
    if query.is_empty() || query.len() > name.len() {
        return None;
    }
    if query == name {
        return Some(100);
    }
    if assign(query, name, 0, &mut vec![false; name.len()], |q, n| q == n) {
        return Some(90);
    }
    if query.iter().zip(name).all(|(q, n)| n.starts_with(q.as_str())) {
        return Some(70);
    }
    assign(query, name, 0, &mut vec![false; name.len()], |q, n| n.starts_with(q)).then_some(50)
}

/// Whether each query word from `i` on can be given a different, unused name word that `fits`
/// (a small backtracking search: at most [`MAX_QUERY_WORDS`] against [`MAX_NAME_WORDS`]).
fn assign(query: &[String], name: &[String], i: usize, used: &mut Vec<bool>, fits: fn(&str, &str) -> bool) -> bool {
    let Some(q) = query.get(i) else { return true };
    for (j, n) in name.iter().enumerate() {
        if !used[j] && fits(q, n) {
            used[j] = true;
            if assign(query, name, i + 1, used, fits) {
                return true;
            }
            used[j] = false;
        }
    }
    false
}

/// A directory entry ready for matching: its extension, its name as shown, the name folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub extension: String,
    pub name: String,
    pub folded: Folded,
}

impl Indexed {
    pub fn new(extension: String, name: String) -> Indexed {
        let folded = fold(&name, MAX_NAME_WORDS);
        Indexed { extension, name, folded }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Match {
    pub extension: String,
    pub name: String,
    /// 100 whole name, 90 whole words, 70 the name's beginning, 50 word beginnings.
    pub score: u8,
}

/// The best [`MAX_RESULTS`] entries for `query`, best first (see the module's documentation).
pub fn search<'a>(entries: impl IntoIterator<Item = &'a Indexed>, query: &Folded) -> Vec<Match> {
    let mut hits: Vec<(u8, &Indexed)> = entries.into_iter().filter_map(|e| score(query, &e.folded).map(|s| (s, e))).collect();
    hits.sort_by(|(sa, a), (sb, b)| sb.cmp(sa).then_with(|| cmp_names(a, b)));
    hits.truncate(MAX_RESULTS);
    hits.into_iter().map(|(score, e)| Match { extension: e.extension.clone(), name: e.name.clone(), score }).collect()
}

fn cmp_names(a: &Indexed, b: &Indexed) -> Ordering {
    a.folded.plain.cmp(&b.folded.plain).then_with(|| a.name.cmp(&b.name)).then_with(|| a.extension.cmp(&b.extension))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Folded {
        fold(s, MAX_QUERY_WORDS)
    }

    #[test]
    fn folding_both_ways() {
        assert_eq!(fold("Müller-Lüdenscheidt", 16), Folded { plain: vec!["muller".into(), "ludenscheidt".into()], german: vec!["mueller".into(), "luedenscheidt".into()] });
        assert_eq!(fold("  Zoë O'Brien  ", 16).plain, ["zoe", "o", "brien"]);
        assert_eq!(fold("Łukasz Strauß Ærø", 16).plain, ["lukasz", "strauss", "aero"]);
        assert_eq!(fold("ÉLODIE Ñúñez", 16).plain, ["elodie", "nunez"]);
        assert_eq!(fold("a b c d", 2).plain, ["a", "b"]);
        assert!(fold(" - ' ", 8).plain.is_empty());
    }

    #[test]
    fn scores_by_table() {
        let name = fold("Jürgen Müller", 16);
        for (query, want) in [
            ("jurgen muller", Some(100)),
            ("JÜRGEN MÜLLER", Some(100)),
            ("juergen mueller", Some(100)),
            ("muller", Some(90)),
            ("mueller", Some(90)),
            ("müller jürgen", Some(90)),
            ("jur", Some(70)),
            ("jue mue", Some(70)),
            ("mul", Some(50)),
            ("mül j", Some(50)),
            ("uller", None),
            ("muller muller", None),
            ("jurgen muller x", None),
            ("", None),
        ] {
            assert_eq!(score(&q(query), &name), want, "{query:?}");
        }
        // A German spelling in the name is found by the umlaut in the query.
        assert_eq!(score(&q("Müller"), &fold("Hans Mueller", 16)), Some(90));
        // But a plain u does not become ue.
        assert_eq!(score(&q("muller"), &fold("Hans Mueller", 16)), None);
    }

    #[test]
    fn ranking_is_best_first_then_by_name_and_at_most_ten() {
        let entries: Vec<Indexed> = [("2001", "Marc Martin"), ("2002", "Martine Dupont"), ("2003", "Alice Martin"), ("2004", "Martin"), ("2005", "Anne Marchal"), ("2006", "Alice Martin")]
            .into_iter()
            .map(|(e, n)| Indexed::new(e.into(), n.into()))
            .collect();
        let got: Vec<(String, u8)> = search(&entries, &q("martin")).into_iter().map(|m| (m.extension, m.score)).collect();
        let want = [("2004", 100), ("2003", 90), ("2006", 90), ("2001", 90), ("2002", 70)];
        assert_eq!(got, want.map(|(e, s)| (e.to_owned(), s)));
        // Reversed input, same order.
        let reversed: Vec<Indexed> = entries.iter().rev().cloned().collect();
        assert_eq!(search(&reversed, &q("martin")), search(&entries, &q("martin")));
        let many: Vec<Indexed> = (0..30).map(|i| Indexed::new(format!("{}", 3000 + i), format!("Name{i:02} Smith"))).collect();
        let top = search(&many, &q("smith"));
        assert_eq!(top.len(), MAX_RESULTS);
        assert_eq!(top[0].name, "Name00 Smith");
    }

    proptest::proptest! {
        /// Any beginning of any word of a name finds it, whatever its case; the whole name
        /// scores 100; and the ranking does not depend on the order of the entries.
        #[test]
        fn prefixes_case_and_order(words in proptest::collection::vec("[a-zäöüéèçß]{1,8}", 1..4), pick in 0usize..4, cut in 1usize..9, seed in proptest::prelude::any::<u64>()) {
            let name = words.join(" ");
            let folded = fold(&name, MAX_NAME_WORDS);
            let word = &words[pick % words.len()];
            let prefix: String = word.chars().take(cut).collect();
            proptest::prop_assert!(score(&q(&prefix), &folded).is_some(), "{prefix:?} in {name:?}");
            proptest::prop_assert_eq!(score(&q(&prefix.to_uppercase()), &folded), score(&q(&prefix), &folded));
            proptest::prop_assert_eq!(score(&q(&name), &folded), Some(100));
            let mut entries: Vec<Indexed> = (0..6).map(|i| Indexed::new(format!("{}", 2000 + i), format!("{} {}", words[i % words.len()], i))).collect();
            let before = search(&entries, &q(&prefix));
            entries.rotate_left((seed % 6) as usize);
            proptest::prop_assert_eq!(search(&entries, &q(&prefix)), before);
        }
    }
}
