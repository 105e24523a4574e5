//! Reading the parsed TOML tree one table at a time, with the source position of every key and
//! value at hand, so each complaint can point at the exact spot and use our own wording.

use std::fmt::Display;
use std::ops::{Range, RangeInclusive};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::duration;
use super::error::Invalid;

pub(super) type Result<T> = std::result::Result<T, Invalid>;

/// One TOML table and the keys it may contain. Creating it rejects any other key, so the getters
/// only ever see known keys, and a typo is reported even when its value would be fine.
pub(super) struct Section<'t> {
    /// Dotted path for messages: `""` for the document, `"server"`, `"chat.rate_limit"`.
    path: String,
    /// Where the table is (or its parent, when it is absent); the fallback position of errors.
    span: Range<usize>,
    table: Option<&'t DeTable<'t>>,
    keys: &'static [&'static str],
}

impl<'t> Section<'t> {
    /// The whole document, whose keys are the tables.
    pub(super) fn root(
        doc: &'t Spanned<DeTable<'t>>,
        keys: &'static [&'static str],
    ) -> Result<Section<'t>> {
        Section::new(String::new(), doc.span(), Some(doc.get_ref()), keys)
    }

    fn new(
        path: String,
        span: Range<usize>,
        table: Option<&'t DeTable<'t>>,
        keys: &'static [&'static str],
    ) -> Result<Section<'t>> {
        let section = Section { path, span, table, keys };
        section.reject_unknown_keys()?;
        Ok(section)
    }

    /// Reports the first unknown key in file order, which is what a reader fixes first.
    fn reject_unknown_keys(&self) -> Result<()> {
        let Some(table) = self.table else { return Ok(()) };
        let unknown = table
            .iter()
            .filter(|(key, _)| !self.keys.contains(&key.get_ref().as_ref()))
            .min_by_key(|(key, _)| key.span().start);
        let Some((key, value)) = unknown else { return Ok(()) };
        let name = cut(key.get_ref());
        let message = if !self.path.is_empty() {
            let place = if self.path.contains('.') {
                self.path.clone()
            } else {
                format!("[{}]", self.path)
            };
            format!("unknown key '{name}' in {place} (expected one of: {})", self.keys.join(", "))
        } else {
            let tables: Vec<String> = self.keys.iter().map(|key| format!("[{key}]")).collect();
            let what = if matches!(value.get_ref(), DeValue::Table(_)) { "table" } else { "key" };
            format!("unknown {what} '{name}' (expected one of the tables: {})", tables.join(", "))
        };
        Err(Invalid { span: key.span(), message })
    }

    /// The sub-table `key`; an absent one reads as empty, so every key takes its default.
    pub(super) fn table(
        &self,
        key: &'static str,
        keys: &'static [&'static str],
    ) -> Result<Section<'t>> {
        let path = self.key_path(key);
        match self.get(key) {
            None => Section::new(path, self.span.clone(), None, keys),
            Some(value) => match value.get_ref() {
                DeValue::Table(table) => Section::new(path, value.span(), Some(table), keys),
                _ => Err(self.expected(key, value, "a table")),
            },
        }
    }

    /// The raw value of `key`, for settings with a shape of their own.
    pub(super) fn get(&self, key: &'static str) -> Option<&'t Spanned<DeValue<'t>>> {
        debug_assert!(self.keys.contains(&key), "'{key}' is missing from the key list");
        self.table?.get(key)
    }

    /// Where the first of `keys` present in the file is, else where the table is: the place to
    /// point at when a combination of keys is wrong.
    pub(super) fn span_of(&self, keys: &[&'static str]) -> Range<usize> {
        keys.iter().find_map(|key| self.get(key)).map_or_else(|| self.span.clone(), Spanned::span)
    }

    /// An error about `key` at `span`, prefixed with the key's full dotted name.
    pub(super) fn invalid(&self, key: &str, span: Range<usize>, problem: impl Display) -> Invalid {
        Invalid { span, message: format!("{}: {problem}", self.key_path(key)) }
    }

    /// "expected WHAT, found VALUE", at the value.
    pub(super) fn expected(&self, key: &str, value: &Spanned<DeValue<'_>>, what: &str) -> Invalid {
        self.invalid(
            key,
            value.span(),
            format!("expected {what}, found {}", found(value.get_ref())),
        )
    }

    pub(super) fn bool(&self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => match value.get_ref() {
                DeValue::Boolean(b) => Ok(*b),
                _ => Err(self.expected(key, value, "true or false")),
            },
        }
    }

    pub(super) fn int<T>(
        &self,
        key: &'static str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T>
    where
        T: TryFrom<i128> + PartialOrd + Display,
    {
        let Some(value) = self.get(key) else { return Ok(default) };
        integer(value.get_ref()).filter(|n| range.contains(n)).ok_or_else(|| {
            let what = format!("an integer from {} to {}", range.start(), range.end());
            self.expected(key, value, &what)
        })
    }

    /// A string setting turned into a value by `parse`, whose error message says what is expected.
    pub(super) fn parsed<T>(
        &self,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Result<T> {
        self.string_or(key, default, parse, |value| self.expected(key, value, "a string"))
    }

    /// A duration setting (see `duration.rs`) turned into a value by `parse`. A bare number is
    /// the likely mistake, so its message shows the same number with a unit.
    pub(super) fn duration<T>(
        &self,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Result<T> {
        self.string_or(key, default, parse, |value| match value.get_ref() {
            DeValue::Integer(_) if integer::<u64>(value.get_ref()).is_some() => {
                let what = format!(
                    r#"a duration in quotes with a unit like "{}s" ({})"#,
                    found(value.get_ref()),
                    duration::UNITS
                );
                self.expected(key, value, &what)
            }
            _ => self.expected(key, value, duration::FORMS),
        })
    }

    /// A string setting parsed by `parse`; any other kind of value is refused with `not_string`.
    fn string_or<T>(
        &self,
        key: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
        not_string: impl FnOnce(&Spanned<DeValue<'_>>) -> Invalid,
    ) -> Result<T> {
        let Some(value) = self.get(key) else { return Ok(default) };
        match value.get_ref() {
            DeValue::String(text) => parse(text).map_err(|e| self.invalid(key, value.span(), e)),
            _ => Err(not_string(value)),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }
}

/// The value of a TOML integer as a `T`, if it is one and fits.
pub(super) fn integer<T: TryFrom<i128>>(value: &DeValue<'_>) -> Option<T> {
    let DeValue::Integer(n) = value else { return None };
    let n = i128::from_str_radix(n.as_str(), n.radix()).ok()?;
    T::try_from(n).ok()
}

/// How a wrong value is shown in "found ...": scalars as written (cut short), containers by kind.
pub(super) fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => quoted(s),
        DeValue::Integer(n) => cut(&n.to_string()),
        DeValue::Float(x) => cut(&x.to_string()),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// The most characters of a value that a message repeats.
const SHOWN_CHARS: usize = 60;

/// A string value as messages show it: in quotes, control characters escaped, cut short.
pub(super) fn quoted(text: &str) -> String {
    format!("\"{}\"", cut(text))
}

/// `text` with control characters escaped, cut to [`SHOWN_CHARS`] with a `…`: a message should
/// neither echo a huge value back nor send a terminal escape sequence from the file.
pub(super) fn cut(text: &str) -> String {
    let mut shown = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == SHOWN_CHARS {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}
