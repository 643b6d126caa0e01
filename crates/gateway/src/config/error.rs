//! Errors in a configuration file, located at a file, line, column and key.

use std::{error::Error, fmt, ops::Range};

/// A configuration file that was refused: where (file, line, column, the key) and why.
///
/// Its `Display` reads `gateway.toml:23:12: routes[1].upstream: no upstream group "userz"`,
/// the form editors and terminals link to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFileError {
    file: String,
    line: usize,
    column: usize,
    key: String,
    message: String,
}

impl ConfigFileError {
    /// An error at byte range `span` of `text` (the file `file`), with `message`.
    pub(crate) fn at(
        file: &str,
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let offset = span.map_or(0, |s| s.start.min(text.len()));
        let (line, column) = line_column(text, offset);
        Self {
            file: file.to_owned(),
            line,
            column,
            key: key_at(text, offset),
            message: message.into(),
        }
    }

    /// An error about the file as a whole (it could not be read), at line 1.
    pub(crate) fn whole(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 1,
            column: 1,
            key: String::new(),
            message: message.into(),
        }
    }

    /// The same error naming `key` as the key at fault.
    pub(crate) fn with_key(mut self, key: String) -> Self {
        self.key = key;
        self
    }

    /// The file's name as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line, from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column, from 1 (in characters).
    pub fn column(&self) -> usize {
        self.column
    }

    /// The key at fault as a path (`routes[1].upstream`), empty when none applies.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl Error for ConfigFileError {}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted path of the key at `offset`: the table the line sits in (`routes[1]` for the
/// second `[[routes]]`, also when `offset` is on that header), the keys on the line whose value
/// holds the offset (`retry.attempts` in `retry = { attempts = 0 }`) and the key that starts at
/// the offset, if any (an unknown key is reported there).
fn key_at(text: &str, offset: usize) -> String {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let mut table = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let this_line = &text[line_start..line_end];
    // The headers above the offset, and the offset's own line when it is a header.
    let this_header = this_line.trim_start().starts_with('[').then_some(this_line);
    for line in text[..line_start].lines().chain(this_header) {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = match arrays.iter_mut().find(|(a, _)| *a == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    arrays.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{n}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            let name = name.trim();
            // A sub-table of the last array element (`[routes.request]`) stays under it.
            table = match arrays
                .iter()
                .find(|(a, _)| name.starts_with(&format!("{a}.")))
            {
                Some((a, n)) => format!("{a}[{n}]{}", &name[a.len()..]),
                None => name.to_owned(),
            };
        }
    }
    let mut keys = if this_header.is_some() {
        Vec::new()
    } else {
        keys_before(&text[line_start..offset])
    };
    keys.extend(key_starting(&text[offset..line_end]));
    let mut path = table;
    for key in keys {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&key);
    }
    path
}

/// The keys whose values are still open at the end of `line` (the start of a line up to an
/// offset): `a = { b = 1, c = [1, ` gives `a`, `c`; a finished `b = 1` is left out.
fn keys_before(line: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    // Per open `{` or `[`: whether it is an inline table, and how many keys were open then.
    let mut open: Vec<(bool, usize)> = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '"' && d == '\\' {
                        escaped = true;
                        continue;
                    } else if d == c {
                        break;
                    }
                    word.push(d);
                }
            }
            '=' => keys.push(std::mem::take(&mut word).trim().to_owned()),
            '{' | '[' => {
                open.push((c == '{', keys.len()));
                word.clear();
            }
            '}' | ']' => {
                if let Some((_, n)) = open.pop() {
                    keys.truncate(n);
                }
                word.clear();
            }
            ',' => {
                if let Some(&(true, n)) = open.last() {
                    keys.truncate(n);
                }
                word.clear();
            }
            '#' => break,
            c => word.push(c),
        }
    }
    keys.retain(|k| !k.is_empty());
    keys
}

/// The key that `rest` (a line from an offset on) starts with, when a `=` follows it.
fn key_starting(rest: &str) -> Option<String> {
    let (key, after) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        (&quoted[..end], &quoted[end + 1..])
    } else {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(rest.len());
        (&rest[..end], &rest[end..])
    };
    let after = after.trim_start();
    (!key.is_empty() && after.starts_with('=') && !after.starts_with("==")).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_columns_and_keys() {
        let text = "[server]\nlisten = \"x\"\n\n[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\nupstream = \"userz\"\nretry = { attempts = 0 }\n";
        let at = |needle: &str| {
            let offset = text.find(needle).unwrap();
            ConfigFileError::at("gw.toml", text, Some(offset..offset + 1), "bad")
        };
        let e = at("\"x\"");
        assert_eq!((e.line(), e.column(), e.key()), (2, 10, "server.listen"));
        let e = at("\"userz\"");
        assert_eq!((e.line(), e.key()), (8, "routes[1].upstream"));
        assert_eq!(e.to_string(), "gw.toml:8:12: routes[1].upstream: bad");
        let e = at("0 }");
        assert_eq!(e.key(), "routes[1].retry.attempts");
        let e = at("[[routes]]\nname = \"b\"");
        assert_eq!(
            (e.line(), e.key()),
            (6, "routes[1]"),
            "an offset on a header"
        );
        let e = at("retry");
        assert_eq!(
            e.key(),
            "routes[1].retry",
            "the key that starts at the offset"
        );
        let e = ConfigFileError::at("gw.toml", text, None, "whole");
        assert_eq!((e.line(), e.column()), (1, 1));
        let line = r#"h = { "a,b" = "x=}", c = [1, { d = 2 }], e = { f = 3 }, g = 4 }"#;
        let key = |needle: &str| key_at(line, line.find(needle).unwrap());
        assert_eq!(key("2 }"), "h.c.d");
        assert_eq!(key("3 }"), "h.e.f");
        assert_eq!(key("4 }"), "h.g");
        assert_eq!(key("g ="), "h.g");
        let e = ConfigFileError::at("gw.toml", "é", Some(1..2), "inside a character");
        assert_eq!(e.line(), 1);
    }
}
