//! `message_format` templates such as `{time} <{nick}> {text}`.
//!
//! The template is parsed once when the config is loaded, so a typo in a placeholder is a config
//! error with a clear message instead of a surprise at the first chat line, and rendering a line
//! is a walk over pre-split pieces with no parsing on the hot path.

use std::fmt::Write;

/// The values a chat line can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Time,
    Nick,
    Addr,
    Text,
    Seq,
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "time" => Field::Time,
            "nick" => Field::Nick,
            "addr" => Field::Addr,
            "text" => Field::Text,
            "seq" => Field::Seq,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(Field),
}

/// A parsed `message_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// What a rendered line is made of.
pub struct Values<'a> {
    pub time: &'a str,
    pub nick: &'a str,
    pub addr: &'a str,
    pub text: &'a str,
    pub seq: u64,
}

impl Template {
    /// Parses `{name}` placeholders; `{{` and `}}` stand for literal braces.
    pub fn parse(format: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed placeholder '{{{name}'")),
                        }
                    }
                    let field = Field::from_name(&name).ok_or_else(|| {
                        format!(
                            "unknown placeholder '{{{name}}}' (known: {{time}} {{nick}} {{addr}} {{text}} {{seq}})"
                        )
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => return Err("unmatched '}' (write '}}' for a literal brace)".to_string()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        if !pieces.contains(&Piece::Field(Field::Text)) {
            return Err("the format must contain {text}".to_string());
        }
        Ok(Template { pieces })
    }

    /// Appends the rendered line (without line ending) to `out`.
    pub fn render_into(&self, values: &Values<'_>, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Field(Field::Time) => out.push_str(values.time),
                Piece::Field(Field::Nick) => out.push_str(values.nick),
                Piece::Field(Field::Addr) => out.push_str(values.addr),
                Piece::Field(Field::Text) => out.push_str(values.text),
                Piece::Field(Field::Seq) => {
                    let _ = write!(out, "{}", values.seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values { time: "12:00:01", nick: "alice", addr: "127.0.0.1:4000", text: "hello", seq: 7 }
    }

    fn render(format: &str) -> String {
        let mut out = String::new();
        Template::parse(format).unwrap().render_into(&values(), &mut out);
        out
    }

    #[test]
    fn default_format() {
        assert_eq!(render("{time} <{nick}> {text}"), "12:00:01 <alice> hello");
    }

    #[test]
    fn seed_format_and_seq() {
        assert_eq!(
            render("{time} From {addr}. msg={text}"),
            "12:00:01 From 127.0.0.1:4000. msg=hello"
        );
        assert_eq!(render("#{seq} {text}"), "#7 hello");
    }

    #[test]
    fn escaped_braces() {
        assert_eq!(render("{{{nick}}} {text}"), "{alice} hello");
    }

    #[test]
    fn errors() {
        assert!(Template::parse("{time} {bogus}").unwrap_err().contains("{bogus}"));
        assert!(Template::parse("{text").unwrap_err().contains("unclosed"));
        assert!(Template::parse("{text} }").unwrap_err().contains("unmatched"));
        assert!(Template::parse("{nick}").unwrap_err().contains("{text}"));
    }
}
