//! The one error type of config loading, printed the way compilers print theirs
//! (`PATH:LINE:COLUMN: message`) so editors and terminals can jump to the spot.

use std::fmt;
use std::io;
use std::ops::Range;

/// Why a config file was rejected, and where.
#[derive(Debug)]
pub struct ConfigError {
    origin: String,
    /// 1-based line and column (in characters), when the problem has a place in the text.
    position: Option<(usize, usize)>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Read(io::Error),
    /// The path names something that is not a config file to read (a FIFO, too large).
    Unusable(String),
    Syntax(String),
    Invalid(String),
}

/// The longest message printed: a config error must stay readable whatever the file holds, and
/// no message should carry megabytes of the file back to the terminal or the journal.
const MAX_MESSAGE_CHARS: usize = 400;

/// A value that is present but wrong: the byte range it occupies and what is wrong with it.
/// The walker produces these; they become a [`ConfigError`] once the file name is attached.
#[derive(Debug)]
pub(super) struct Invalid {
    pub(super) span: Range<usize>,
    pub(super) message: String,
}

impl ConfigError {
    pub(super) fn read(origin: &str, error: io::Error) -> ConfigError {
        ConfigError { origin: origin.to_owned(), position: None, kind: Kind::Read(error) }
    }

    pub(super) fn unusable(origin: &str, problem: String) -> ConfigError {
        ConfigError { origin: origin.to_owned(), position: None, kind: Kind::Unusable(problem) }
    }

    /// The file is not UTF-8 (TOML must be); `before` is the valid text up to the first bad byte.
    pub(super) fn not_utf8(origin: &str, before: &str) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: Some(position(before, before.len())),
            kind: Kind::Syntax("not valid UTF-8".to_owned()),
        }
    }

    pub(super) fn syntax(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: error.span().map(|span| position(text, span.start)),
            kind: Kind::Syntax(capped(error.message().trim_end())),
        }
    }

    pub(super) fn invalid(origin: &str, text: &str, invalid: Invalid) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: Some(position(text, invalid.span.start)),
            kind: Kind::Invalid(capped(&invalid.message)),
        }
    }

    /// The file does not exist (as opposed to existing and being wrong).
    pub fn is_not_found(&self) -> bool {
        matches!(&self.kind, Kind::Read(e) if e.kind() == io::ErrorKind::NotFound)
    }

    /// TOML could not make sense of the file at all.
    pub fn is_syntax(&self) -> bool {
        matches!(self.kind, Kind::Syntax(_))
    }
}

/// `message`, cut to [`MAX_MESSAGE_CHARS`] with a `…`.
fn capped(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: ", self.origin)?,
            None => write!(f, "{}: ", self.origin)?,
        }
        match &self.kind {
            Kind::Read(error) => write!(f, "cannot read: {error}"),
            Kind::Unusable(problem) => write!(f, "cannot read: the path {problem}"),
            Kind::Syntax(message) => write!(f, "invalid TOML: {message}"),
            Kind::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Read(error) => Some(error),
            Kind::Unusable(_) | Kind::Syntax(_) | Kind::Invalid(_) => None,
        }
    }
}

/// 1-based line and column of byte `offset` in `text`; columns count characters, as editors do.
fn position(text: &str, offset: usize) -> (usize, usize) {
    // Spans come from the parser and are in bounds, but a wrong one must not panic here.
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let text = "a = 1\nbé = 2\r\nc";
        assert_eq!(position(text, 0), (1, 1));
        assert_eq!(position(text, 4), (1, 5));
        assert_eq!(position(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(position(text, 9), (2, 3));
        assert_eq!(position(text, 15), (3, 1));
        // Past the end and inside a character: clamped, never a panic.
        assert_eq!(position(text, 99), (3, 2));
        assert_eq!(position(text, 8), (2, 2));
    }

    #[test]
    fn display() {
        let invalid = Invalid { span: 6..7, message: "bad".to_owned() };
        assert_eq!(
            ConfigError::invalid("f.toml", "a = 1\nb = 2", invalid).to_string(),
            "f.toml:2:1: bad"
        );
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let error = ConfigError::read("/nope.toml", missing);
        assert!(error.to_string().starts_with("/nope.toml: cannot read: "));
        assert!(std::error::Error::source(&error).is_some());
    }
}
