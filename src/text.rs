//! What text shown to people, or read aloud by the IVR, may hold: one rule for the API's
//! `display_name` and for the names a directory source gives.

/// Control characters, and the invisible formatting characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width characters, the byte-order mark).
fn hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Pictographs and their modifiers: a name is read aloud by the IVR.
fn pictograph(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27BF}' | '\u{FE00}'..='\u{FE0F}' | '\u{1F000}'..='\u{1FAFF}' | '\u{E0000}'..='\u{E007F}')
}

/// A name shown to people: 1 to `max` characters of any script, without control, formatting
/// or pictograph characters.
pub(crate) fn is_display_name(v: &str, max: usize) -> bool {
    !v.is_empty() && v.chars().count() <= max && !v.chars().any(|c| hidden(c) || pictograph(c))
}
