//! The `directory_csv` file (sans-IO): rows of `extension,name`, read liberally.
//!
//! Accepted: a UTF-8 file (with or without a byte-order mark) or, when it is not UTF-8, Windows
//! Latin-1 as spreadsheets export it; `,`, `;` or a tab between the fields (the first of them on
//! the first row decides); fields in double quotes (`"Martin, Alice"`, `""` for a quote); a
//! header row (a first row whose first field is not a dial string); blank lines and lines
//! starting with `#`; columns after the second (ignored). A row without a name, with an
//! extension that is not a dial string, or with a name the API would refuse (control,
//! formatting or pictograph characters, more than [`MAX_NAME_CHARS`](super::MAX_NAME_CHARS)) is
//! skipped and reported by its line number; the rest of the file is used.

use super::{clean_name, is_dial_string, Entry, Loaded, MAX_ENTRIES};

/// The largest directory file read; a larger one is refused whole (the previous copy stays).
pub const MAX_CSV_BYTES: u64 = 8 * 1024 * 1024;

/// Why a whole file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("the file is {0} bytes, more than the {MAX_CSV_BYTES} a directory file may hold")]
    TooBig(u64),
    #[error("the file has more than {MAX_ENTRIES} rows")]
    TooManyRows,
}

/// The entries of a directory file, and the rows skipped (`line: why`).
///
/// # Errors
/// The file is larger than [`MAX_CSV_BYTES`] or has more than [`MAX_ENTRIES`] rows.
pub fn parse(bytes: &[u8]) -> Result<Loaded, CsvError> {
    if bytes.len() as u64 > MAX_CSV_BYTES {
        return Err(CsvError::TooBig(bytes.len() as u64));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.to_owned(),
        // Latin-1: every byte is the character of that number.
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    };
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    let mut out = Loaded::default();
    let mut separator = None;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sep = *separator.get_or_insert_with(|| pick_separator(line));
        let fields = match split(line, sep) {
            Some(f) => f,
            None => {
                out.skip(format!("line {line_no}: unbalanced quotes"));
                continue;
            }
        };
        let was_first = std::mem::replace(&mut first, false);
        let extension = fields.first().map(|f| f.trim()).unwrap_or_default();
        if !is_dial_string(extension) {
            if !was_first {
                out.skip(format!("line {line_no}: the extension is not a dial string (digits, * and #)"));
            }
            continue;
        }
        let Some(name) = fields.get(1).and_then(|n| clean_name(n)) else {
            out.skip(format!("line {line_no}: no usable name (empty, too long, or with control, formatting or pictograph characters)"));
            continue;
        };
        if out.entries.len() >= MAX_ENTRIES {
            return Err(CsvError::TooManyRows);
        }
        out.entries.push(Entry { extension: extension.to_owned(), name });
    }
    Ok(out)
}

fn pick_separator(line: &str) -> char {
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' | ';' | '\t' if !quoted => return c,
            _ => {}
        }
    }
    ','
}

/// The fields of one row; `None` when a quote is left open.
fn split(line: &str, sep: char) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == sep && !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(l: &Loaded) -> Vec<(&str, &str)> {
        l.entries.iter().map(|e| (e.extension.as_str(), e.name.as_str())).collect()
    }

    #[test]
    fn liberal_rows_and_skipped_ones_by_line() {
        let text = "\u{FEFF}extension;name\n2001;Alice Martin\n\n# a comment\n2002;\"Müller; Jürgen\";desk 3\n20x3;Bad Number\n2004;\n2005;\"open quote\n2006 ; Zoë \n";
        let l = parse(text.as_bytes()).unwrap();
        assert_eq!(entries(&l), [("2001", "Alice Martin"), ("2002", "Müller; Jürgen"), ("2006", "Zoë")]);
        assert_eq!(l.skipped, 3);
        assert!(l.problems[0].starts_with("line 6:") && l.problems[1].starts_with("line 7:") && l.problems[2].starts_with("line 8:"), "{:?}", l.problems);
        // Latin-1 (a spreadsheet's export), no header, commas.
        let l = parse(b"2001,M\xfcller\r\n2002,\"Martin, Alice\"\r\n").unwrap();
        assert_eq!(entries(&l), [("2001", "Müller"), ("2002", "Martin, Alice")]);
        // Control and bidirectional characters are refused, as the API refuses them.
        let l = parse("2001,Eve\u{202E}nilraM\n2002,Bell\u{7}\n".as_bytes()).unwrap();
        assert_eq!((l.entries.len(), l.skipped), (0, 2));
    }

    #[test]
    fn too_big_or_too_many_rows_refused_whole() {
        assert_eq!(parse(&vec![b'#'; MAX_CSV_BYTES as usize + 1]), Err(CsvError::TooBig(MAX_CSV_BYTES + 1)));
        let rows: String = (0..=MAX_ENTRIES).map(|i| format!("{i},N\n")).collect();
        assert_eq!(parse(rows.as_bytes()), Err(CsvError::TooManyRows));
    }
}
