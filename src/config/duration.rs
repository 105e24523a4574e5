//! Durations written the way operators write them: `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"1m30s"`.
//!
//! A bare number would leave the unit to guesswork (seconds? milliseconds?), so every part carries
//! its unit; the only exception is `"0"`, which means the same in every unit.

use std::time::Duration;

use super::reader::quoted;

/// What the parser accepts, for error messages.
pub(super) const FORMS: &str =
    r#"a duration like "500ms", "5s", "2m", "1h", "1d" or "1m30s" (units: ms, s, m, h, d)"#;
/// The units, for messages that give an example of their own.
pub(super) const UNITS: &str = "units: ms, s, m, h, d";

/// The longest duration any setting accepts. Everything downstream adds durations to `Instant`s,
/// which panics on overflow; a year is far beyond any sensible timeout and far from overflow.
pub(super) const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `text` and checks it against [`MAX`]; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let duration =
        parse_unbounded(text).ok_or_else(|| format!("expected {FORMS}, found {}", quoted(text)))?;
    if duration > MAX {
        return Err(format!("{} is too long: at most 365d", quoted(text)));
    }
    Ok(duration)
}

/// A duration as a log line shows it: `250ms` below a second, `5.9s` above (never the
/// nanoseconds of `{:?}`).
pub fn display(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// How long something has lasted, to the coarsest two units: `42s`, `5m07s`, `1h02m`, `3d04h`.
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A sequence of `NUMBER UNIT` parts, summed. Huge numbers saturate so that [`parse`] reports
/// them as too long rather than as malformed.
fn parse_unbounded(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if number.is_empty() {
            return None;
        }
        // Only overflow can fail here: `number` is a non-empty run of ASCII digits.
        let n = number.parse::<u64>().unwrap_or(u64::MAX);
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(24 * 3600)),
            _ => return None,
        };
        total = total.saturating_add(part);
        rest = tail;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h2m3s4ms"), Ok(Duration::from_millis(3_723_004)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn malformed() {
        for bad in
            ["", "5", "s", "5 s", " 5s", "5s ", "5 parsecs", "1.5s", "-1s", "5S", "1m30", "ms5"]
        {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("expected a duration like"), "{bad:?}: {err}");
            assert!(err.contains(&format!("found \"{bad}\"")), "{bad:?}: {err}");
        }
    }

    #[test]
    fn upper_bound() {
        assert_eq!(parse("365d"), Ok(MAX));
        assert!(parse("366d").unwrap_err().contains("at most 365d"));
        assert!(parse("99999999999999999999999h").unwrap_err().contains("too long"));
    }

    #[test]
    fn display_is_short() {
        assert_eq!(display(Duration::from_nanos(5_965_601_633)), "6.0s");
        assert_eq!(display(Duration::from_millis(250)), "250ms");
        assert_eq!(display(Duration::from_secs(10)), "10.0s");
    }

    #[test]
    fn span_keeps_two_units() {
        assert_eq!(span(Duration::from_millis(42_900)), "42s");
        assert_eq!(span(Duration::from_secs(307)), "5m07s");
        assert_eq!(span(Duration::from_secs(3720)), "1h02m");
        assert_eq!(span(Duration::from_secs(3 * 86400 + 4 * 3600 + 59)), "3d04h");
    }
}
