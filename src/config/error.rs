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
    Syntax(String),
    Invalid(String),
}

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

    pub(super) fn syntax(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: error.span().map(|span| position(text, span.start)),
            kind: Kind::Syntax(error.message().to_owned()),
        }
    }

    pub(super) fn invalid(origin: &str, text: &str, invalid: Invalid) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            position: Some(position(text, invalid.span.start)),
            kind: Kind::Invalid(invalid.message),
        }
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
            Kind::Syntax(message) => write!(f, "invalid TOML: {message}"),
            Kind::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Read(error) => Some(error),
            Kind::Syntax(_) | Kind::Invalid(_) => None,
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
