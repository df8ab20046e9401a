//! Directory lists (`2000-2099,3000`): the `extensions` key of a `[[pbx]]` table and
//! `cstagate sim-pbx --extensions`. Apart from the configuration's types because the simulator
//! uses it without a configuration file.

/// The most numbers a directory list may expand to.
pub const MAX_DIRECTORY: usize = 100_000;

/// A directory list that does not parse, naming the item at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("bad number {0:?}")]
    BadNumber(String),
    /// Reversed, wider than [`MAX_DIRECTORY`], or with ends of different lengths.
    #[error("bad range {0:?}")]
    BadRange(String),
    #[error("more than {MAX_DIRECTORY} extensions")]
    TooMany,
}

/// Parse a directory list such as `2000-2010,3000`: the `extensions` key of a `[[pbx]]` table
/// (its items joined with commas) and `cstagate sim-pbx --extensions`. A range keeps its ends'
/// width (`0100-0102` is `0100`, `0101`, `0102`); single numbers may hold `*` and `#`.
///
/// # Errors
/// A malformed item, a reversed range, or more than [`MAX_DIRECTORY`] numbers.
pub fn parse_directory(spec: &str) -> Result<Vec<String>, DirectoryError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let number = |n: &str| n.parse::<u64>().map_err(|_| DirectoryError::BadNumber(n.to_owned()));
                let (x, y) = (number(a)?, number(b)?);
                if y < x || y - x > MAX_DIRECTORY as u64 || a.len() != b.len() {
                    return Err(DirectoryError::BadRange(item.to_owned()));
                }
                out.extend((x..=y).map(|n| format!("{n:0width$}", width = a.len())));
            }
            None if item.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') => out.push(item.to_owned()),
            None => return Err(DirectoryError::BadNumber(item.to_owned())),
        }
        if out.len() > MAX_DIRECTORY {
            return Err(DirectoryError::TooMany);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_expand_ranges_and_name_the_bad_item() {
        assert_eq!(parse_directory("2000-2002, 3000,*66#").unwrap(), ["2000", "2001", "2002", "3000", "*66#"]);
        assert_eq!(parse_directory("0100-0101").unwrap(), ["0100", "0101"]);
        assert_eq!(parse_directory("2010-2000"), Err(DirectoryError::BadRange("2010-2000".into())));
        assert_eq!(parse_directory("200-2000"), Err(DirectoryError::BadRange("200-2000".into())));
        assert_eq!(parse_directory("20a0"), Err(DirectoryError::BadNumber("20a0".into())));
        assert_eq!(parse_directory("1-x"), Err(DirectoryError::BadNumber("x".into())));
        assert_eq!(parse_directory("100000-199999,200000-200001"), Err(DirectoryError::TooMany));
        assert_eq!(parse_directory("").unwrap(), Vec::<String>::new());
    }
}
